//! Project tasks: `cargo xtask check` (formatting, lints, the packages, all tests),
//! `cargo xtask dist` (the release binary and its .deb, .rpm and .tar.gz) and
//! `cargo xtask bench` (tapwatch's cost and scale against the no-probe baseline and
//! tcpdump; needs root).

mod dist;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};

/// Runs a command to its end; its failure is an error naming it.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The cargo that runs this task.
pub(crate) fn cargo_cmd() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    run(cargo_cmd().args(args))
}

/// The tests and benchmarks that need root and a BPF-capable kernel.
const ROOT_TESTS: &str = "diag-user/root-tests";

/// What CI checks, after `scripts/setup.sh` has installed the toolchain: everything, the
/// kernel tests included (as root).
fn check() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--features",
        ROOT_TESTS,
        "--",
        "-D",
        "warnings",
    ])?;
    // The package test installs what `dist` made into a clean Debian root.
    dist::dist()?;
    cargo(&["test", "--workspace", "--locked", "--features", ROOT_TESTS])
}

/// The harness is a bench target of diag-user (built optimised, with the tapwatch binary it
/// measures); options after `bench` go to it.
fn bench(args: &[String]) -> Result<()> {
    let mut all = vec![
        "bench",
        "-p",
        "diag-user",
        "--features",
        ROOT_TESTS,
        "--bench",
        "tapwatch",
        "--",
    ];
    all.extend(args.iter().map(String::as_str));
    cargo(&all)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("check") => check(),
        Some("bench") => bench(&args[1..]),
        Some("dist") => dist::dist(),
        _ => {
            eprintln!(
                "usage: cargo xtask check\n       cargo xtask dist\n       cargo xtask bench [--quick] [--only throughput,flood,scale,render,latency,serve,nudge,namespaces] [--no-write]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
