//! `tapwatch watch`: the collector into the pipeline, shown live or as NDJSON, with a
//! bundle if asked.

use std::{process::ExitCode, sync::Arc};

use diag_user::{
    collect::Collecting,
    model::{clock::Ts, NoticeCode, Record},
    report::{
        bundle::{Bundle, BundleOptions},
        pipeline::{Feed, Pipeline},
    },
    verdict::{Engine, EngineConfig},
};
use tokio::sync::Notify;

use super::{engine_config, no_view, outputs::Outputs, present, print_ending, report_unwatched};
use crate::cli::WatchArgs;

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let json = args.json || no_view();
    let opts = args.taps.options(args.duration);
    let bundle = match &args.record {
        Some(dir) => Some(Bundle::create(BundleOptions {
            dir: dir.clone(),
            max_bytes: args.record_max_mb.saturating_mul(1 << 20),
            pack: args.pack,
        })?),
        None => None,
    };
    let config = engine_config(
        &args.taps,
        EngineConfig {
            ears: diag_user::collect::fdb::FdbEars::here(),
            ..EngineConfig::default()
        },
    )?;
    let pipeline = Pipeline::new(Engine::new(config), Vec::new());
    pipeline.set_nudger(super::nudger(&args.nudges)?);
    let stdout_failed = Arc::new(Notify::new());
    let outputs = Outputs::start(&pipeline, json, bundle, &stdout_failed)?;
    if json && !args.json {
        pipeline.emit(&Record::Notice {
            ts: Ts(chrono::Utc::now()),
            code: NoticeCode::NoTerminal,
            ifname: None,
            message: "no terminal for the live view: NDJSON records instead".into(),
            probe: None,
        });
    }
    let p = pipeline.clone();
    let collecting = Collecting::start(opts, Feed(pipeline.clone()), move || p.finish())?;
    let shown = present(
        !json,
        &pipeline,
        || collecting.is_finished(),
        collecting.stopper(),
        &stdout_failed,
    )
    .await;
    // The view may have failed on its own (a terminal gone): the collector must still
    // end cleanly, with its summary and nothing left attached.
    collecting.stop();
    let collected = collecting.join();
    // Whatever happened, the bundle is finished and stdout gets what it can take.
    let code = outputs.close(&pipeline)?;
    let outcome = collected?;
    print_ending(shown?);
    Ok(report_unwatched(&outcome, code))
}
