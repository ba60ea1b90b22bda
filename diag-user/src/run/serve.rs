//! `tapwatch serve`: the collector into the pipeline, the metrics and /healthz over HTTP,
//! a log of state changes on stderr, and a bundle per blackout if asked.

use std::{io, process::ExitCode, sync::Arc};

use diag_user::{
    collect::Collecting,
    report::{
        http::{self, HttpServer},
        metrics::{Health, Metrics, MetricsUpdater},
        pipeline::{Feed, Pipeline, Writer},
        recorder::{Recorder, RecorderOptions},
        text::{one_line, ServiceLog},
    },
    verdict::{Engine, EngineConfig},
};

use super::{engine_config, report_unwatched, BUNDLE_CLOSE, EXIT_BUNDLE_INCOMPLETE, STDOUT_CLOSE};
use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    diag_user::memory::limit_arenas();
    // Everything that can be refused is, before anything is attached.
    let listeners = http::bind(&args.listen)?;
    // The endpoint stays where Prometheus reaches it; the taps are the namespace's.
    if let Err(code) = super::enter_netns(&args.taps.netns) {
        return Ok(code);
    }
    let engine = Engine::new(engine_config(
        &args.taps,
        EngineConfig {
            forget_after: Some(args.forget_after),
            ears: diag_user::collect::fdb::FdbEars::here(),
            ..EngineConfig::default()
        },
    )?);
    // The outputs that read the registry themselves are made after the pipeline.
    let pipeline = Pipeline::new(engine, Vec::new());
    pipeline.set_nudger(super::nudger(&args.nudges)?);
    let recorder = match &args.record_dir {
        Some(dir) => Some(Recorder::new(
            RecorderOptions {
                dir: dir.clone(),
                max_bundle_bytes: args.record_max_mb.saturating_mul(1 << 20),
                max_total_bytes: args.record_total_mb.saturating_mul(1 << 20),
                keep: args.record_keep as usize,
            },
            Arc::downgrade(&pipeline),
        )?),
        None => None,
    };
    let metrics = Metrics::new()?;
    let health = Health::new(args.taps.interval);
    let mut opts = args.taps.options(args.duration);
    opts.forget_after = Some(args.forget_after);

    let (log, _) = Writer::spawn("log", ServiceLog::new(io::stderr()), |_| {})?;
    pipeline.add_output(log.pusher());
    let recorder = match recorder {
        Some(r) => {
            let (w, pusher) = Writer::spawn("recorder", r, |e| {
                eprintln!(
                    "tapwatch: blackout bundles stopped: {}",
                    one_line(&e.to_string())
                );
            })?;
            pipeline.add_output(pusher);
            Some(w)
        }
        None => None,
    };
    pipeline.set_metrics(MetricsUpdater::new(metrics.clone(), health.clone()));
    metrics.follow(&pipeline);
    let server = HttpServer::start(listeners, metrics, health.clone())?;
    for addr in server.addrs() {
        eprintln!("tapwatch: serving /metrics and /healthz on http://{addr}");
    }
    // It ends on a signal (or --duration): the service's stop.
    let p = pipeline.clone();
    let result = Collecting::start(opts, Feed(pipeline.clone()), move || p.finish())?.join();
    if let Err(e) = &result {
        health.fail(one_line(&e.to_string()).into_owned());
    }
    server.stop();
    let mut code = ExitCode::SUCCESS;
    if let Some(w) = recorder {
        match w.close(BUNDLE_CLOSE) {
            Ok(r) => r.finish_all(),
            Err(e) => {
                eprintln!("tapwatch: blackout bundles were not finished: {e}");
                code = ExitCode::from(EXIT_BUNDLE_INCOMPLETE);
            }
        }
    }
    let _ = log.close(STDOUT_CLOSE);
    Ok(report_unwatched(&result?, code))
}
