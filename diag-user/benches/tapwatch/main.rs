//! `cargo xtask bench`: tapwatch's cost and scale on this machine, measured against the
//! no-probe baseline and tcpdump in its own namespaces and taps. Prints a table and writes
//! it into docs/benchmarks.md. Needs root, like the integration tests.
//!
//! Options: `--quick` (short runs, to try the harness), `--only LIST` (comma-separated:
//! throughput, flood, scale, render, latency, serve, nudge, namespaces), `--no-write` (leave
//! the docs alone).

mod flood;
mod floor;
mod latency;
mod load;
mod measure;
mod namespaces;
mod nudge;
mod render;
mod report;
mod scale;
mod serve;
mod throughput;

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use diag_user::model::mac::MacAddr;

pub const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
pub const TAP_MAC: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
/// The MAC the tap had before the migration: where a VM with a stale cache sends.
pub const STALE_MAC: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);

pub struct Settings {
    /// Length of one throughput measurement.
    pub run_time: Duration,
    pub rounds: usize,
    /// Writer threads of a generator: one per CPU.
    pub writers: usize,
    pub flood_time: Duration,
    pub scale_taps: usize,
    pub churn_time: Duration,
    pub churn_per_s: u32,
    pub latency_samples: usize,
}

impl Settings {
    fn new(quick: bool) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        if quick {
            Self {
                run_time: Duration::from_secs(1),
                rounds: 1,
                writers: cpus,
                flood_time: Duration::from_secs(3),
                scale_taps: 200,
                churn_time: Duration::from_secs(5),
                churn_per_s: 200,
                latency_samples: 50,
            }
        } else {
            Self {
                run_time: Duration::from_secs(2),
                rounds: 9,
                writers: cpus,
                flood_time: Duration::from_secs(10),
                scale_taps: 1000,
                churn_time: Duration::from_secs(30),
                churn_per_s: 200,
                latency_samples: 300,
            }
        }
    }
}

const PHASES: [&str; 8] = [
    "throughput",
    "flood",
    "scale",
    "render",
    "latency",
    "serve",
    "nudge",
    "namespaces",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |m| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "{cpus} x {model}, {mem_gib:.0} GiB; Linux {}",
        read("/proc/sys/kernel/osrelease")
    )
}

fn run() -> Result<()> {
    let mut quick = false;
    let mut write = true;
    let mut only: Vec<String> = PHASES.iter().map(|s| s.to_string()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-write" => write = false,
            "--only" => {
                let list = args.next().unwrap_or_default();
                only = list.split(',').map(str::to_string).collect();
                if let Some(bad) = only.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("unknown phase {bad:?}; phases: {}", PHASES.join(", "));
                }
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!(
                "unknown option {other:?}; usage: cargo xtask bench [--quick] [--only {}] [--no-write]",
                PHASES.join(",")
            ),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks create namespaces and taps and load eBPF: run them as root");
    }
    let s = Settings::new(quick);
    let mut report = report::Report::default();
    report.note(format!("machine: {}", machine()));
    report.note(format!(
        "run: {}{}; {} writer threads; tcpdump {}",
        if quick { "--quick, " } else { "" },
        chrono::Utc::now().format("%Y-%m-%d"),
        s.writers,
        std::process::Command::new("tcpdump")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string))
            .unwrap_or_default()
            .trim_start_matches("tcpdump version ")
    ));
    for phase in PHASES.iter().filter(|p| only.iter().any(|o| o == *p)) {
        eprintln!("== {phase}");
        let r = match *phase {
            "throughput" => throughput::run(&s, &mut report),
            "flood" => flood::run(&s, &mut report),
            "scale" => scale::run(&s, &mut report),
            "namespaces" => namespaces::run(&s, &mut report),
            "render" => render::run(&s, &mut report),
            "serve" => serve::run(&s, &mut report),
            "nudge" => nudge::run(&mut report),
            _ => latency::run(&s, &mut report),
        };
        if let Err(e) = r {
            report.note(format!("{phase} failed: {e:#}"));
        }
    }
    report.print();
    if write {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md");
        report::write_into(&path, &report.markdown())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
