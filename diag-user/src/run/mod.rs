//! Each command wired from the same parts, once: a pipeline and its outputs, the collector
//! on a thread of its own, the live view or a wait for the end, bundles closed the same
//! way. `main.rs` is only the command line's edge.

pub mod analyze;
pub mod facts;
pub mod lab;
pub mod nudge;
mod outputs;
pub mod serve;
pub mod watch;

use std::{process::ExitCode, sync::Arc, time::Duration};

use diag_user::{
    collect::{
        setns::{self, NetnsChoice},
        Outcome,
    },
    report::{
        bundle::Bundle,
        pipeline::{Ending, Pipeline, Writer},
        text::one_line,
        tui,
    },
};

/// Exit status of a command line that cannot be right (clap's usage errors exit so too).
pub const EXIT_USAGE: u8 = 2;

/// Enters the network namespace `--netns` chose, on the calling thread, before any thread
/// exists (everything made afterwards is the namespace's); says which, or why not.
pub fn enter_netns(choice: &NetnsChoice) -> Result<(), ExitCode> {
    match setns::enter(choice) {
        Ok(Some(path)) => {
            eprintln!("tapwatch: in the network namespace of {path}");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            eprintln!("tapwatch: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}
/// Exit status of a run that did its job but whose bundle is incomplete (a full disk).
pub const EXIT_BUNDLE_INCOMPLETE: u8 = 3;
/// Exit status of a run in which some matching taps could not be watched.
pub const EXIT_UNWATCHED: u8 = 4;

/// How long the end of a run waits for stdout to take the last records.
const STDOUT_CLOSE: Duration = Duration::from_secs(5);
/// How long it waits for a bundle's disk.
const BUNDLE_CLOSE: Duration = Duration::from_secs(60);

/// The engine's settings from the command line: with `--source-facts`, the source host's
/// taps for certain forecasts.
fn engine_config(
    taps: &crate::cli::TapArgs,
    base: diag_user::verdict::EngineConfig,
) -> anyhow::Result<diag_user::verdict::EngineConfig> {
    use anyhow::Context as _;
    let Some(path) = &taps.source_facts else {
        return Ok(base);
    };
    let f = diag_user::offline::facts::read_facts(path)
        .with_context(|| format!("--source-facts {}", path.display()))?;
    Ok(diag_user::verdict::EngineConfig {
        source: diag_user::offline::facts::source_taps(&f),
        ..base
    })
}

/// The run's nudger: on the operator's word always, on its own with `--remediate`.
fn nudger(args: &crate::cli::RemediateArgs) -> anyhow::Result<diag_user::nudge::Nudger> {
    let gateways = diag_user::nudge::Gateways::new(&args.gateway)
        .map_err(|e| anyhow::anyhow!("--gateway: {e}"))?;
    Ok(diag_user::nudge::Nudger::new(
        diag_user::nudge::NudgeConfig {
            gateways,
            remediate: args.remediate,
            ..Default::default()
        },
    ))
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

/// Shows the run in the live view until its producer is done (a quit key calls `stop`);
/// without a view, waits until it is done or `stop_now` says to stop it.
async fn present(
    view: bool,
    pipeline: &Arc<Pipeline>,
    done: impl Fn() -> bool,
    stop: impl Fn(),
    stop_now: &tokio::sync::Notify,
) -> anyhow::Result<Option<Ending>> {
    if view {
        return Ok(Some(tui::show(pipeline.clone(), stop).await?));
    }
    while !done() {
        tokio::select! {
            _ = stop_now.notified() => stop(),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    Ok(None)
}

/// What the live view leaves in the scrollback.
fn print_ending(ending: Option<Ending>) {
    if let Some(ending) = ending {
        // The terminal may be gone (SIGHUP): the bundle is what must survive.
        let _ = tui::print_ending(&ending);
    }
}

/// Closes a bundle's writer and writes its reports from `pipeline`'s registry, saying
/// where it is; `None` when it is complete, else the exit status that says it is not.
fn close_bundle(
    writer: Writer<Bundle>,
    pipeline: &Pipeline,
    what: &str,
) -> anyhow::Result<Option<ExitCode>> {
    let bundle = match writer.close(BUNDLE_CLOSE) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tapwatch: {what} was not finished: {e}");
            return Ok(Some(ExitCode::from(EXIT_BUNDLE_INCOMPLETE)));
        }
    };
    let incomplete = bundle.stopped().map(str::to_string);
    // A copy of the registry's entries: the reports are written without the lock.
    let snap = bundle.snapshot(&pipeline.head().engine);
    let path = bundle.finish(&snap)?;
    Ok(match incomplete {
        None => {
            eprintln!("tapwatch: bundle written to {}", path.display());
            None
        }
        Some(why) => {
            eprintln!(
                "tapwatch: bundle written to {} but incomplete: {} (its summary.md and \
                 host.json cover the whole run)",
                path.display(),
                one_line(&why)
            );
            Some(ExitCode::from(EXIT_BUNDLE_INCOMPLETE))
        }
    })
}

/// Says which matching taps could not be watched; a run with any fails.
fn report_unwatched(outcome: &Outcome, code: ExitCode) -> ExitCode {
    if outcome.unwatched.is_empty() {
        return code;
    }
    for (name, why) in &outcome.unwatched {
        eprintln!(
            "tapwatch: {} was not watched: {}",
            one_line(name),
            one_line(why)
        );
    }
    ExitCode::from(EXIT_UNWATCHED)
}
