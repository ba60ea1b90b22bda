//! 1. Per-frame cost on healthy traffic: frames/s through a tap whose frames the host
//!    accepts (it forwards them), with nothing, an empty tc program (the floor of any
//!    per-frame hook), tapwatch by default (the drop-driven datapath), tapwatch with its
//!    per-frame tc probe, or tcpdump watching; interleaved rounds in one run.

use std::{sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

use crate::{
    floor::{EmptyProgram, FLOOR_NAME, STOLEN},
    load::{Generator, Observer, Running},
    measure::{median, programs_named, programs_of, ProgRun, RunStats, SystemCpu},
    report::Report,
    Settings, GUEST, TAP_MAC,
};

const SECTION: &str = "1 per-frame";

/// Makes the frames of tap `ifname` of `ns` healthy traffic: the host forwards them out of
/// a veth whose egress consumes them (accepted, never dropped, as healthy traffic is). The
/// frame to send, and the program that consumes them (gone when dropped).
pub fn healthy_path(ns: &Netns, ifname: &str) -> Result<(EmptyProgram, Vec<u8>)> {
    ns.ip(&[
        "link", "add", "bsink0", "type", "veth", "peer", "name", "bsink1",
    ])?;
    ns.ip(&["link", "set", "bsink0", "up"])?;
    ns.ip(&["link", "set", "bsink1", "up"])?;
    ns.ip(&["route", "add", "10.98.0.0/24", "dev", "bsink0"])?;
    ns.ip(&[
        "neigh",
        "add",
        "10.98.0.1",
        "lladdr",
        "02:00:00:00:0b:01",
        "dev",
        "bsink0",
        "nud",
        "permanent",
    ])?;
    let sink = EmptyProgram::returning(ns, "bsink0", "bench_sink", STOLEN, &["egress"])?;
    let rp = format!("net.ipv4.conf.{ifname}.rp_filter=0");
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            &rp,
        ],
    )?;
    let f = frames::udp(
        GUEST,
        TAP_MAC,
        "10.99.0.2".parse().unwrap(),
        "10.98.0.1".parse().unwrap(),
        60,
    );
    Ok((sink, f))
}

/// One measurement: frames the interface received and the CPU it took.
struct Sample {
    observer: Observer,
    fps: f64,
    /// System-wide busy CPU seconds per million frames (= microseconds per frame).
    cpu_us: f64,
    /// The observer's own process, per frame.
    observer_us: f64,
}

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    // A tap (the VM side written through /dev/net/tun) whose frames the host forwards out
    // of a veth, whose egress consumes them: accepted, never dropped, as healthy traffic is.
    let ns = Netns::new("twbench-tput")?;
    let tap = Arc::new(VmTap::create(&ns, "btap0", TAP_MAC)?);
    let (_sink, f) = healthy_path(&ns, "btap0")?;
    let (timeline, drops_seen) = rounds(s, &ns, &tap, &f)?;
    summarize(report, &timeline);
    report.info(
        SECTION,
        "healthy traffic: kernel drops on the tap seen by tapwatch (each round)",
        drops_seen.join(", "),
    );
    program_costs(s, report, &ns, &tap, &f)
}

/// Every observer in each of the rounds, each round in another order: every measurement
/// in the order taken, and the kernel drops tapwatch saw on the tap in each round.
fn rounds(
    s: &Settings,
    ns: &Netns,
    tap: &Arc<VmTap>,
    f: &[u8],
) -> Result<(Vec<Sample>, Vec<String>)> {
    let mut timeline: Vec<Sample> = Vec::new();
    let mut drops_seen = Vec::new();
    let all = Observer::ALL;
    for round in 0..s.rounds {
        // Each round starts with another observer, so none always runs first or last.
        for k in 0..all.len() {
            let obs = all[(round + k) % all.len()];
            let running = Running::start(obs, ns, "btap0")?;
            let (sys0, p0, t0) = (SystemCpu::now()?, running.cpu_s(), Instant::now());
            // One writer, as one VM's queue: the other CPUs stay free for the observer, so
            // what the observer costs the datapath is what is measured.
            let gen = Generator::tap(tap, f, 1);
            std::thread::sleep(s.run_time);
            let written = gen.finish();
            let (secs, sys) = (t0.elapsed().as_secs_f64(), SystemCpu::now()?.since(sys0));
            let observer_s = running.cpu_s() - p0;
            let records = running.stop()?;
            if obs == Observer::Tapwatch {
                drops_seen.push(kernel_drops(&records)?);
            }
            let frames = written.max(1) as f64;
            eprintln!(
                "  round {} {:<28} {:>9.0} frames/s  {:.3} us/frame",
                round + 1,
                obs.label(),
                frames / secs,
                sys / frames * 1e6
            );
            timeline.push(Sample {
                observer: obs,
                fps: frames / secs,
                cpu_us: sys / frames * 1e6,
                observer_us: observer_s / frames * 1e6,
            });
        }
    }
    Ok((timeline, drops_seen))
}

/// What the programs themselves cost per run, from the kernel's own statistics
/// (bpf_stats: two clock reads per run, the same for every program, so differences are
/// what counts), and how often tapwatch's programs run for healthy frames.
fn program_costs(
    s: &Settings,
    report: &mut Report,
    ns: &Netns,
    tap: &Arc<VmTap>,
    f: &[u8],
) -> Result<()> {
    let _stats = RunStats::enable()?;
    let mut per_run = Vec::new();
    for obs in [Observer::Floor, Observer::TapwatchTc, Observer::Tapwatch] {
        let running = Running::start(obs, ns, "btap0")?;
        let before = match &running {
            Running::Tapwatch(t) => programs_of(t.pid()),
            _ => programs_named(FLOOR_NAME),
        };
        let gen = Generator::tap(tap, f, 1);
        std::thread::sleep(s.run_time);
        let frames = gen.finish().max(1);
        let after = match &running {
            Running::Tapwatch(t) => programs_of(t.pid()),
            _ => programs_named(FLOOR_NAME),
        };
        running.stop()?;
        let ran = ProgRun::since(&after, &before);
        match obs {
            Observer::Tapwatch => {
                let runs: u64 = ran.iter().map(|r| r.runs).sum();
                report.info(
                    SECTION,
                    "tapwatch (default): its programs' runs per healthy frame (bpf_stats)",
                    format!("{runs} runs for {frames} frames"),
                );
            }
            _ => {
                let main = ran
                    .iter()
                    .find(|r| r.name == FLOOR_NAME || r.name == "tap_ingress")
                    .context("the program's statistics")?;
                per_run.push((obs, main.ns_per_run()));
            }
        }
    }
    if let [(_, floor), (_, tc)] = per_run[..] {
        report.info(
            SECTION,
            "ns per frame, empty program / tapwatch's tc probe (bpf_stats, clock reads included)",
            format!(
                "{floor:.1} / {tc:.1}: the probe's own work {:.1} ns",
                tc - floor
            ),
        );
    }
    Ok(())
}

/// The summary row's `kernel_drops`, as text ("none" when there were none).
fn kernel_drops(records: &[Value]) -> Result<String> {
    let summary = records.last().context("no summary")?;
    let row = summary["taps"]
        .as_array()
        .and_then(|t| t.iter().find(|r| r["ifname"] == "btap0"))
        .context("no summary row")?;
    Ok(match row.get("kernel_drops") {
        Some(d) => d.to_string(),
        None => "none".into(),
    })
}

/// Each measurement as a share of the no-probe measurements taken just before and after
/// it, so that the machine's drift (a shared VM's neighbours) cancels out; medians.
fn kept(timeline: &[Sample], o: Observer) -> f64 {
    if o == Observer::Nothing {
        return 100.0;
    }
    let is_base = |j: &usize| timeline[*j].observer == Observer::Nothing;
    let mut v: Vec<f64> = (0..timeline.len())
        .filter(|&i| timeline[i].observer == o)
        .filter_map(|i| {
            let before = (0..i).rev().find(is_base);
            let after = (i + 1..timeline.len()).find(is_base);
            let around: Vec<f64> = [before, after]
                .into_iter()
                .flatten()
                .map(|j| timeline[j].fps)
                .collect();
            let mean = around.iter().sum::<f64>() / around.len().max(1) as f64;
            (!around.is_empty()).then(|| timeline[i].fps / mean * 100.0)
        })
        .collect();
    median(&mut v)
}

fn summarize(report: &mut Report, timeline: &[Sample]) {
    let med = |o: Observer, f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = timeline.iter().filter(|x| x.observer == o).map(f).collect();
        median(&mut v)
    };
    let base_cpu = med(Observer::Nothing, |x| x.cpu_us);
    for o in Observer::ALL {
        report.info(
            SECTION,
            format!("tap, healthy: {} frames/s (kept)", o.label()),
            format!("{:.0} ({:.1}%)", med(o, |x| x.fps), kept(timeline, o)),
        );
        report.info(
            SECTION,
            format!(
                "tap, healthy: {} CPU s per 1M frames, added (observer process)",
                o.label()
            ),
            format!(
                "{:.3}, {:+.0} ns ({:.3})",
                med(o, |x| x.cpu_us),
                (med(o, |x| x.cpu_us) - base_cpu) * 1e3,
                med(o, |x| x.observer_us)
            ),
        );
    }
    let default = kept(timeline, Observer::Tapwatch);
    report.target(
        SECTION,
        "tap, healthy: tapwatch (default) throughput vs no probe",
        format!("{default:.1}%"),
        ">= 99%",
        default >= 99.0,
    );
    let (floor, tc) = (
        kept(timeline, Observer::Floor),
        kept(timeline, Observer::TapwatchTc),
    );
    report.target(
        SECTION,
        "tap, healthy: tapwatch's tc probe vs the empty program (points below it)",
        format!("{tc:.1}% vs {floor:.1}%: {:.1}", floor - tc),
        "<= 3 points",
        floor - tc <= 3.0,
    );
}
