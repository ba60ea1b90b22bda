use std::{
    io,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use diag_user::{
    collect::{self, Outcome},
    lab::{self, LabOptions},
    model::{NoticeCode, Record, Sink},
    offline as analyze,
    report::{
        bundle::{Bundle, BundleOptions},
        http::{self, HttpServer},
        json::JsonSink,
        metrics::{Health, Metrics, MetricsUpdater},
        pipeline::{Feed, Pipeline, Pusher, Writer},
        recorder::{Recorder, RecorderOptions},
        text::{self, NoticePrinter, ServiceLog},
        tui,
    },
    verdict::{Engine, EngineConfig},
};
use tokio::sync::Notify;

mod cli;

use cli::{AnalyzeArgs, Command, LabArgs, ServeArgs, WatchArgs};

/// Exit status of a run that did its job but whose bundle is incomplete (a full disk).
const EXIT_BUNDLE_INCOMPLETE: u8 = 3;
/// Exit status of a command line that cannot be right (clap's usage errors exit so too).
const EXIT_USAGE: u8 = 2;
/// Exit status of a run in which some matching taps could not be watched.
const EXIT_UNWATCHED: u8 = 4;

fn main() -> ExitCode {
    let cli = cli::parse();
    // Before anything loads: the kernel programs' log level is set from it at load.
    // tapwatch's own records and its kernel programs' (target `diag`), not its libraries'.
    let default = match cli.verbose {
        0 => "off",
        1 => "warn,netlink_packet_route=error,diag=debug,diag_user=debug,tapwatch=debug",
        _ => "warn,netlink_packet_route=error,diag=trace,diag_user=trace,tapwatch=trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_micros()
        .init();
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        match cli.command {
            Some(Command::Watch(a)) => runtime.block_on(run_watch(a)),
            None => runtime.block_on(run_watch(WatchArgs::default())),
            Some(Command::Lab(a)) => run_lab(a, &runtime),
            Some(Command::Serve(a)) => runtime.block_on(run_serve(a)),
            Some(Command::Analyze(a)) => run_analyze(a),
            Some(Command::CleanupHelper) => collect::ebpf::reaper::run(),
        }
    })();
    match result {
        Ok(code) => code,
        // analyze's errors name their cause in their own words already: the chain would
        // say it twice.
        Err(e) => match e.downcast_ref::<analyze::AnalyzeError>() {
            Some(a) => {
                eprintln!("tapwatch: {a}");
                if a.is_usage() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                }
            }
            None => {
                eprintln!("tapwatch: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_analyze(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    if let [src, dst] = &args.paths[..] {
        return run_merge(src, dst, args.json);
    }
    let path = &args.paths[0];
    let mut out = io::BufWriter::new(io::stdout().lock());
    let a = if args.json {
        // Verdicts as they come, then the summary.
        let mut sink = JsonSink(&mut out);
        let mut print = |r: &Record| match r {
            Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
            _ => Ok(()),
        };
        let a = analyze::analyze_path(path, args.tap_mac, &mut print)?;
        sink.flush()?;
        a
    } else {
        let a = analyze::analyze_path(path, args.tap_mac, &mut |_| Ok(()))?;
        io::Write::write_all(&mut out, text::table(&a).as_bytes())?;
        a
    };
    io::Write::flush(&mut out)?;
    if args.json {
        for n in &a.notes {
            eprintln!("tapwatch: {n}");
        }
    }
    // A damaged capture: the verdicts above cover what came before the damage.
    match a.damaged {
        Some(e) => {
            eprintln!("tapwatch: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `analyze SRC DST`: one `migration` record per VM found in both (NDJSON), then the
/// destination's verdicts and summary; or the same for people.
fn run_merge(src: &std::path::Path, dst: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let merged = analyze::merge::merge(src, dst)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    // A VM not found on the source still gets its record, saying so.
    let found = merged
        .migrations
        .iter()
        .any(|(m, _)| m.src_ifname.is_some());
    if !found {
        eprintln!(
            "tapwatch: no VM of {} is in {}: give the source's bundle first, then the \
             destination's, of the same migration",
            dst.display(),
            src.display()
        );
    }
    if json {
        let mut sink = JsonSink(&mut out);
        for (m, _) in &merged.migrations {
            sink.emit(&Record::Migration(m.clone()))?;
        }
        // The destination's own verdicts and summary, as `analyze DST --json` gives them:
        // its bundle is read again rather than its records kept, so memory stays bounded
        // whatever it holds.
        analyze::analyze_path(dst, None, &mut |r: &Record| match r {
            Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
            _ => Ok(()),
        })?;
        sink.flush()?;
    } else {
        for (m, all) in &merged.migrations {
            io::Write::write_all(&mut out, text::migration_report(m, all).as_bytes())?;
        }
    }
    io::Write::flush(&mut out)?;
    Ok(if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The run's outputs: stdout (NDJSON) and the bundle, each written by its own thread.
struct Outputs {
    stdout: Option<Writer<JsonSink<io::BufWriter<io::Stdout>>>>,
    /// Notices on stderr, when there is no full-screen view to show them.
    notices: Option<Writer<NoticePrinter<io::Stderr>>>,
    /// Why stdout failed, if it did (a closed pipe ends the run quietly).
    stdout_error: Arc<Mutex<Option<io::Error>>>,
    bundle: Option<Writer<Bundle>>,
}

/// How long the end of a run waits for stdout to take the last records.
const STDOUT_CLOSE: Duration = Duration::from_secs(5);
/// How long it waits for the bundle's disk.
const BUNDLE_CLOSE: Duration = Duration::from_secs(60);

impl Outputs {
    /// `json`: NDJSON on stdout. `stop` is notified when stdout fails, ending the run.
    fn start(json: bool, bundle: Option<Bundle>, stop: &Arc<Notify>) -> anyhow::Result<Self> {
        let stdout_error = Arc::new(Mutex::new(None));
        let stdout = if json {
            let (err, stop) = (stdout_error.clone(), stop.clone());
            let sink = JsonSink(io::BufWriter::new(io::stdout()));
            Some(
                Writer::spawn("stdout", sink, move |e| {
                    if let Ok(mut slot) = err.lock() {
                        *slot = Some(io::Error::new(e.kind(), e.to_string()));
                    }
                    stop.notify_one();
                })?
                .0,
            )
        } else {
            None
        };
        let notices = if json {
            Some(Writer::spawn("notices", NoticePrinter(io::stderr()), |_| {})?.0)
        } else {
            None
        };
        let bundle = match bundle {
            Some(b) => {
                let dir = b.dir().display().to_string();
                Some(
                    Writer::spawn("bundle", b, move |e| {
                        // A full disk stops the bundle, never the live output.
                        eprintln!("tapwatch: the bundle in {dir} stopped: {e}");
                    })?
                    .0,
                )
            }
            None => None,
        };
        Ok(Self {
            stdout,
            notices,
            stdout_error,
            bundle,
        })
    }

    fn pushers(&self) -> Vec<Pusher> {
        let mut v = Vec::new();
        if let Some(w) = &self.stdout {
            v.push(w.pusher());
        }
        if let Some(w) = &self.notices {
            v.push(w.pusher());
        }
        if let Some(w) = &self.bundle {
            v.push(w.pusher());
        }
        v
    }

    /// Writes the rest: the bundle (its reports from the run's verdicts) first, then
    /// stdout. Returns the exit status so far.
    fn close(self, pipeline: &Pipeline) -> anyhow::Result<ExitCode> {
        let mut code = ExitCode::SUCCESS;
        if let Some(w) = self.bundle {
            match w.close(BUNDLE_CLOSE) {
                Ok(b) => {
                    let incomplete = b.stopped().map(str::to_string);
                    let path = b.finish(&pipeline.head().engine)?;
                    match incomplete {
                        Some(why) => {
                            eprintln!(
                                "tapwatch: bundle written to {} but incomplete: {why} (its \
                                 summary.md and host.json cover the whole run)",
                                path.display()
                            );
                            code = ExitCode::from(EXIT_BUNDLE_INCOMPLETE);
                        }
                        None => eprintln!("tapwatch: bundle written to {}", path.display()),
                    }
                }
                Err(e) => {
                    eprintln!("tapwatch: the bundle was not finished: {e}");
                    code = ExitCode::from(EXIT_BUNDLE_INCOMPLETE);
                }
            }
        }
        if let Some(w) = self.stdout {
            if let Err(e) = w.close(STDOUT_CLOSE) {
                eprintln!("tapwatch: stdout: {e}");
            }
        }
        if let Some(w) = self.notices {
            let _ = w.close(STDOUT_CLOSE);
        }
        let failed = self.stdout_error.lock().ok().and_then(|mut e| e.take());
        if let Some(e) = failed {
            // `tapwatch … | head`: a reader that has seen enough is not an error.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("tapwatch: cannot write output: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Ok(code)
    }
}

/// Says which matching taps could not be watched; a run with any fails.
fn report_unwatched(outcome: &Outcome, code: ExitCode) -> ExitCode {
    if outcome.unwatched.is_empty() {
        return code;
    }
    for (name, why) in &outcome.unwatched {
        eprintln!("tapwatch: {name} was not watched: {why}");
    }
    ExitCode::from(EXIT_UNWATCHED)
}

fn run_lab(args: LabArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    let opts = LabOptions {
        scenario: args.scenario,
        vms: args.vms as usize,
        reachable: args.reachable_time,
        before: args.before,
        duration: args.duration,
        garp: args.garp,
        interval: args.interval,
        sdn_delay: args.sdn_delay,
    };
    let json = args.json || no_view();
    // --record: a bundle for each hypervisor, the destination's beside the run's outputs,
    // the source's on a pipeline of its own.
    let (dst_bundle, src) = match &args.record {
        Some(dir) => {
            make_record_dir(dir)?;
            let bundle = |side: &str| {
                Bundle::create(BundleOptions {
                    dir: dir.join(side),
                    max_bytes: 100 << 20,
                    pack: false,
                })
            };
            let src_bundle = bundle("src")?;
            let dst_bundle = bundle("dst")?;
            let dir = src_bundle.dir().display().to_string();
            let (writer, _) = Writer::spawn("src bundle", src_bundle, move |e| {
                eprintln!("tapwatch: the bundle in {dir} stopped: {e}");
            })?;
            let pipeline =
                Pipeline::new(Engine::new(EngineConfig::default()), vec![writer.pusher()]);
            (Some(dst_bundle), Some((writer, pipeline)))
        }
        None => (None, None),
    };
    let engine = Engine::new(EngineConfig::default());
    let stop = Arc::new(Notify::new());
    let outputs = Outputs::start(json, dst_bundle, &stop)?;
    let pipeline = Pipeline::new(engine, outputs.pushers());
    let lab = lab::start(
        opts,
        json,
        pipeline.clone(),
        src.as_ref().map(|(_, p)| p.clone()),
    )?;
    let mut stop_lab = Some(lab.stop);
    let shown = if json {
        // A closed stdout ends the output and the lab, not the lab's clean-up.
        runtime.block_on(async {
            while !lab.handle.is_finished() {
                tokio::select! {
                    _ = stop.notified() => {
                        if let Some(s) = stop_lab.take() {
                            let _ = s.send(());
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        None
    } else {
        let quit = Mutex::new(stop_lab.take());
        Some(runtime.block_on(tui::show(pipeline.clone(), || {
            if let Some(s) = quit.lock().ok().and_then(|mut q| q.take()) {
                let _ = s.send(());
            }
        })))
    };
    let joined = lab
        .handle
        .join()
        .map_err(|_| anyhow::anyhow!("the lab thread panicked"));
    if let Some((writer, src_pipeline)) = src {
        match writer.close(BUNDLE_CLOSE) {
            Ok(b) => {
                let path = b.finish(&src_pipeline.head().engine)?;
                eprintln!("tapwatch: bundle written to {}", path.display());
            }
            Err(e) => eprintln!("tapwatch: the source's bundle was not finished: {e}"),
        }
    }
    let code = outputs.close(&pipeline)?;
    if let Some(shown) = shown {
        let ending = shown?;
        let _ = tui::print_ending(&ending);
    }
    joined??;
    Ok(code)
}

/// `lab --record DIR`: DIR is made (0700) when missing; if it exists it must be a
/// directory of the caller's, and its `src/` and `dst/` are checked as any bundle directory
/// is (new or empty, the caller's, no symlink).
fn make_record_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => anyhow::bail!("{}: not a directory", dir.display()),
        // SAFETY: geteuid has no preconditions.
        Ok(m) if m.uid() != unsafe { libc::geteuid() } => anyhow::bail!(
            "{}: owned by uid {}, not by this user: choose a directory of your own",
            dir.display(),
            m.uid()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        Err(e) => Err(e).with_context(|| dir.display().to_string()),
    }
}

/// The live view cannot run here: say so and fall back to NDJSON (as `--json`).
fn no_view() -> bool {
    match tui::unavailable() {
        Some(why) => {
            eprintln!(
                "tapwatch: no terminal for the live view ({why}): writing NDJSON records \
                 instead, as with --json"
            );
            true
        }
        None => false,
    }
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
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
    let engine = Engine::new(EngineConfig::default());
    let stop = Arc::new(Notify::new());
    let outputs = Outputs::start(json, bundle, &stop)?;
    let pipeline = Pipeline::new(engine, outputs.pushers());
    if json && !args.json {
        pipeline.emit(&Record::Notice {
            ts: diag_user::model::clock::Ts(chrono::Utc::now()),
            code: NoticeCode::NoTerminal,
            ifname: None,
            message: "no terminal for the live view: NDJSON records instead".into(),
        });
    }
    let result = if json {
        let s = stop.clone();
        let r = collect::run(opts, &mut Feed(pipeline.clone()), async move {
            s.notified().await
        })
        .await;
        pipeline.finish();
        r.map(|o| (o, None)).map_err(anyhow::Error::from)
    } else {
        tui::run(opts, pipeline.clone(), stop)
            .await
            .map(|(o, ending)| (o, Some(ending)))
            .map_err(anyhow::Error::from)
    };
    // Whatever happened, the bundle is finished and stdout gets what it can take.
    let code = outputs.close(&pipeline)?;
    let (outcome, ending) = result?;
    if let Some(ending) = ending {
        // The terminal may be gone (SIGHUP): the bundle is what must survive.
        let _ = tui::print_ending(&ending);
    }
    Ok(report_unwatched(&outcome, code))
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be refused is, before anything is attached.
    let listeners = http::bind(&args.listen)?;
    let recorder = match &args.record_dir {
        Some(dir) => Some(Recorder::new(RecorderOptions {
            dir: dir.clone(),
            max_bundle_bytes: args.record_max_mb.saturating_mul(1 << 20),
            max_total_bytes: args.record_total_mb.saturating_mul(1 << 20),
            keep: args.record_keep as usize,
        })?),
        None => None,
    };
    let metrics = Metrics::new()?;
    let health = Health::new(args.taps.interval);
    let chosen = Arc::new(std::sync::OnceLock::new());
    let mut opts = args.taps.options(args.duration);
    opts.forget_after = Some(args.forget_after);
    opts.chosen = Some(chosen.clone());

    let (log, _) = Writer::spawn("log", ServiceLog::new(io::stderr()), |_| {})?;
    let recorder = match recorder {
        Some(r) => Some(
            Writer::spawn("recorder", r, |e| {
                eprintln!("tapwatch: blackout bundles stopped: {e}");
            })?
            .0,
        ),
        None => None,
    };
    let mut outputs = vec![log.pusher()];
    outputs.extend(recorder.as_ref().map(Writer::pusher));
    let engine = Engine::new(EngineConfig {
        forget_after: Some(args.forget_after),
        ..EngineConfig::default()
    });
    let pipeline = Pipeline::new(engine, outputs);
    pipeline.set_metrics(MetricsUpdater::new(
        metrics.clone(),
        health.clone(),
        args.forget_after,
        Some(chosen),
    ));
    let server = HttpServer::start(listeners, metrics, health.clone())?;
    for addr in server.addrs() {
        eprintln!("tapwatch: serving /metrics and /healthz on http://{addr}");
    }
    let result = collect::run(
        opts,
        &mut Feed(pipeline.clone()),
        std::future::pending::<()>(),
    )
    .await;
    if let Err(e) = &result {
        health.fail(e.to_string());
    }
    pipeline.finish();
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
