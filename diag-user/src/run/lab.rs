//! `tapwatch lab`: the lab's story into the pipeline (the destination's collector runs in
//! its namespace), shown live or as NDJSON, with a bundle per hypervisor if asked.

use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
};

use diag_user::{
    lab::{self, LabOptions},
    report::{
        bundle::{Bundle, BundleOptions},
        own_dir,
        pipeline::Pipeline,
    },
    verdict::{Engine, EngineConfig},
};
use tokio::sync::Notify;

use super::{
    close_bundle, no_view, outputs::bundle_writer, outputs::Outputs, present, print_ending,
};
use crate::cli::LabArgs;

pub async fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    let opts = LabOptions {
        scenario: args.scenario,
        vms: args.vms as usize,
        reachable: args.reachable_time,
        before: args.before,
        duration: args.duration,
        garp: args.garp,
        interval: args.interval,
        sdn_delay: args.sdn_delay,
        remediate: args.remediate,
        ip: args.ip,
    };
    let json = args.json || no_view();
    // --record DIR: a bundle for each hypervisor, the destination's among the run's
    // outputs, the source's on a pipeline of its own.
    let (dst_bundle, src) = match &args.record {
        Some(dir) => {
            // DIR/src and DIR/dst are checked as any bundle directory is.
            own_dir::ensure(dir, false)?;
            let bundle = |side: &str| {
                Bundle::create(BundleOptions {
                    dir: dir.join(side),
                    max_bytes: 100 << 20,
                    pack: false,
                })
            };
            let src_bundle = bundle("src")?;
            let dst_bundle = bundle("dst")?;
            let writer = bundle_writer("src bundle", src_bundle)?;
            let pipeline =
                Pipeline::new(Engine::new(EngineConfig::default()), vec![writer.pusher()]);
            (Some(dst_bundle), Some((writer, pipeline)))
        }
        None => (None, None),
    };
    let pipeline = Pipeline::new(Engine::new(EngineConfig::default()), Vec::new());
    let stdout_failed = Arc::new(Notify::new());
    let outputs = Outputs::start(&pipeline, json, dst_bundle, &stdout_failed)?;
    let lab = lab::start(
        opts,
        json,
        pipeline.clone(),
        src.as_ref().map(|(_, p)| p.clone()),
    )?;
    // A quit key or a closed stdout ends the story and the output, not the lab's clean-up.
    let stop_lab = Mutex::new(Some(lab.stop));
    let shown = present(
        !json,
        &pipeline,
        || lab.handle.is_finished(),
        || {
            if let Some(s) = stop_lab.lock().ok().and_then(|mut q| q.take()) {
                let _ = s.send(());
            }
        },
        &stdout_failed,
    )
    .await;
    let joined = lab
        .handle
        .join()
        .map_err(|_| anyhow::anyhow!("the lab thread panicked"));
    if let Some((writer, src_pipeline)) = src {
        close_bundle(writer, &src_pipeline, "the source's bundle")?;
    }
    let code = outputs.close(&pipeline)?;
    print_ending(shown?);
    joined??;
    Ok(code)
}
