//! The command line's edge: parse it, set up logging, and run the command (`run`).

use std::process::ExitCode;

use anyhow::Context as _;
use diag_user::{collect, offline::AnalyzeError, report::text};

mod cli;
mod run;

use cli::{Command, WatchArgs};

fn main() -> ExitCode {
    let mut cli = cli::parse();
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
    // Before any thread exists: every socket and thread made afterwards is the namespace's.
    // `serve` enters it itself, after binding its listeners in tapwatch's own namespace.
    if let Some(Command::Nudge(a)) = &mut cli.command {
        a.find_namespace();
    }
    let netns = match &cli.command {
        Some(Command::Watch(a)) => Some(&a.taps.netns),
        Some(Command::Nudge(a)) => Some(&a.netns),
        _ => None,
    };
    if let Some(Err(code)) = netns.map(run::enter_netns) {
        return code;
    }
    let result = (|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        match cli.command {
            Some(Command::Watch(a)) => runtime.block_on(run::watch::run(a)),
            None => runtime.block_on(run::watch::run(WatchArgs::default())),
            Some(Command::Lab(a)) => runtime.block_on(run::lab::run(a)),
            Some(Command::Serve(a)) => run::serve::run(a),
            Some(Command::Analyze(a)) => run::analyze::run(a),
            Some(Command::Facts(a)) => run::facts::facts(a),
            Some(Command::Preflight(a)) => run::facts::preflight(a),
            Some(Command::Nudge(a)) => run::nudge::run(a),
            Some(Command::CleanupHelper) => collect::ebpf::reaper::run(),
        }
    })();
    match result {
        Ok(code) => code,
        // analyze's errors name their cause in their own words already: the chain would
        // say it twice.
        Err(e) => match e.downcast_ref::<AnalyzeError>() {
            Some(a) => {
                eprintln!("tapwatch: {}", text::one_line(&a.to_string()));
                if a.is_usage() {
                    ExitCode::from(run::EXIT_USAGE)
                } else {
                    ExitCode::FAILURE
                }
            }
            None => {
                eprintln!("tapwatch: {}", text::one_line(&format!("{e:#}")));
                ExitCode::FAILURE
            }
        },
    }
}
