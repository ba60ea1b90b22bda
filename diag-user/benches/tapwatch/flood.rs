//! 2. A VM flooding frames to the tap's old MAC (the stale-cache blackout at line rate),
//!    watched by default (the drop-driven datapath): are the counters exact, does the
//!    sampling limit hold, what do tapwatch and its view cost, does the view still answer
//!    keys, and what does the drop program cost per dropped frame.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use diag_testkit::tmux::Tmux;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

use crate::{
    load::{Generator, Tapwatch},
    measure::{link_stats, ms, percentile, programs_of, ProcSample, ProgRun, RunStats},
    report::Report,
    Settings, GUEST, STALE_MAC,
};

const SECTION: &str = "2 flood";
const HELP: &str = "help (any key)";

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("twbench-flood")?;
    let tap = Arc::new(VmTap::create(&ns, "bflood0", crate::TAP_MAC)?);
    let tw = Tapwatch::json(&ns, &["--interval", "1", "--iface", "bflood0"])?;
    let view = View::start(&ns, &["watch", "--iface", "bflood0"])?;
    view.wait("the tap's row", |s| s.contains("bflood0"))?;

    let stale = frames::udp(
        GUEST,
        STALE_MAC,
        "10.65.0.2".parse()?,
        "10.65.0.1".parse()?,
        18,
    );
    let kernel0 = link_stats(&ns, "bflood0")?.otherhost;
    let flood = flood_under_view(s, &tap, &stale, &tw, view)?;
    let per_drop = drop_program_cost(s, &tap, &stale, &tw)?;
    let written = flood.frames + per_drop.as_ref().map_or(0, |p| p.sent);
    let kernel = link_stats(&ns, "bflood0")?.otherhost - kernel0;
    let records = tw.stop()?;
    report_counts(s, report, &flood, &records, kernel, written)?;
    if let Some(p) = per_drop {
        report.info(
            SECTION,
            "drop program (tap_drops) per dropped frame (bpf_stats, clock reads included)",
            format!(
                "{:.0} ns ({} runs for {} frames)",
                p.ns_per_run, p.runs, p.sent
            ),
        );
    }
    report_costs(report, flood)
}

/// The flood watched by tapwatch and its live view.
struct Flood {
    /// Frames written.
    frames: u64,
    secs: f64,
    /// CPU seconds tapwatch --json and the live view took over the flood.
    tw_cpu_s: f64,
    view_cpu_s: f64,
    /// Milliseconds from each key pressed in the view to the changed screen.
    keys: Vec<f64>,
}

/// Floods the tap with `stale` frames for the flood time, opening and closing the view's
/// help meanwhile; the view ends with the flood.
fn flood_under_view(
    s: &Settings,
    tap: &Arc<VmTap>,
    stale: &[u8],
    tw: &Tapwatch,
    view: View,
) -> Result<Flood> {
    let (tw0, view0) = (ProcSample::of(tw.pid())?, ProcSample::of(view.pid)?);
    let t0 = Instant::now();
    let gen = Generator::tap(tap, stale, s.writers);
    let mut keys = Vec::new();
    while t0.elapsed() < s.flood_time {
        keys.extend(view.help_round_trip()?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let frames = gen.finish();
    let secs = t0.elapsed().as_secs_f64();
    let (tw1, view1) = (ProcSample::of(tw.pid())?, ProcSample::of(view.pid)?);
    drop(view);
    Ok(Flood {
        frames,
        secs,
        tw_cpu_s: tw1.cpu_s - tw0.cpu_s,
        view_cpu_s: view1.cpu_s - view0.cpu_s,
        keys,
    })
}

/// The drop program's runs during a second flood.
struct DropCost {
    ns_per_run: f64,
    runs: u64,
    /// Frames written in that flood.
    sent: u64,
}

/// The drop program's own cost per dropped frame, from the kernel's run statistics
/// (taken apart from the flood under the view: they add two clock reads to every program
/// run). None when tapwatch has no drop program.
fn drop_program_cost(
    s: &Settings,
    tap: &Arc<VmTap>,
    stale: &[u8],
    tw: &Tapwatch,
) -> Result<Option<DropCost>> {
    let _stats = RunStats::enable()?;
    let before = programs_of(tw.pid());
    let gen = Generator::tap(tap, stale, s.writers);
    std::thread::sleep(s.run_time);
    let sent = gen.finish();
    let ran = ProgRun::since(&programs_of(tw.pid()), &before);
    Ok(ran
        .into_iter()
        .find(|r| r.name == "tap_drops")
        .map(|r| DropCost {
            ns_per_run: r.ns_per_run(),
            runs: r.runs,
            sent,
        }))
}

/// The counters against the kernel's and the frames written, and the sampling limit.
fn report_counts(
    s: &Settings,
    report: &mut Report,
    flood: &Flood,
    records: &[Value],
    kernel: u64,
    written: u64,
) -> Result<()> {
    let summary = records.last().context("no summary")?;
    let row = summary["taps"]
        .as_array()
        .and_then(|t| t.iter().find(|r| r["ifname"] == "bflood0"))
        .context("no summary row")?;
    let counted = row["dst_mismatch_frames"].as_u64().unwrap_or(0);
    let lost = row["events_lost"].as_u64().unwrap_or(0);
    let samples = records
        .iter()
        .filter(|v| v["type"] == "frame" && v["kind"] == "dst_mismatch")
        .count();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One sample per 100 ms per CPU, plus the first on each, over both floods.
    let secs = flood.secs;
    let flooding = secs + s.run_time.as_secs_f64();
    let limit = cpus * ((flooding / 0.1).ceil() as usize + 2);

    report.info(
        SECTION,
        format!("dst-mismatch flood, {} writers, {secs:.1} s", s.writers),
        format!("{:.0} frames/s", flood.frames as f64 / secs),
    );
    report.target(
        SECTION,
        "tapwatch dst_mismatch_frames vs kernel otherhost",
        format!("{counted} vs {kernel}"),
        "equal",
        counted == kernel && counted == written,
    );
    report.target(
        SECTION,
        "sampled dst_mismatch events",
        format!("{samples}"),
        format!("<= {limit} (1/100 ms/CPU)"),
        samples <= limit && samples > 0,
    );
    report.info(SECTION, "events_lost (summary)", format!("{lost}"));
    Ok(())
}

/// What tapwatch and its view cost during the flood, and how fast the view answered keys.
fn report_costs(report: &mut Report, flood: Flood) -> Result<()> {
    let secs = flood.secs;
    let tw_pct = flood.tw_cpu_s / secs * 100.0;
    report.target(
        SECTION,
        "tapwatch --json process CPU during the flood",
        format!("{tw_pct:.2}% of a core"),
        "< 5%",
        tw_pct < 5.0,
    );
    report.info(
        SECTION,
        "live view process CPU during the flood",
        format!("{:.2}% of a core", flood.view_cpu_s / secs * 100.0),
    );
    let mut keys = flood.keys;
    let n = keys.len();
    let (p50, p99) = (percentile(&mut keys, 50.0), percentile(&mut keys, 99.0));
    report.target(
        SECTION,
        format!("live view: key -> screen changed, p99 ({n} keys, p50 {p50:.0} ms)"),
        format!("{p99:.0} ms"),
        "< 100 ms",
        p99 < 100.0,
    );
    Ok(())
}

/// The live view in a detached tmux terminal inside the namespace.
struct View {
    tmux: Tmux,
    pid: u32,
}

impl View {
    fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        // `exec` so the pane's process is tapwatch itself (`ip netns exec` execs too).
        let cmd = format!(
            "exec ip netns exec {} {} {}",
            ns.name(),
            env!("CARGO_BIN_EXE_tapwatch"),
            args.join(" ")
        );
        let session = format!("twbench-{}", std::process::id());
        let tmux = Tmux::start(&session, 200, 50, &cmd)
            .context("the live view in tmux (scripts/setup.sh installs tmux)")?;
        let pid = tmux.pane_pid()?;
        Ok(Self { tmux, pid })
    }

    /// No sleep between polls: the time to the changed screen is what is measured.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<()> {
        self.tmux
            .wait(what, Duration::from_secs(20), Duration::ZERO, pred)?;
        Ok(())
    }

    /// Opens and closes the help: milliseconds from each key to the changed screen
    /// (including tmux's own capture time, so an upper bound).
    fn help_round_trip(&self) -> Result<[f64; 2]> {
        let t = Instant::now();
        self.tmux.keys("?")?;
        self.wait("the help", |s| s.contains(HELP))?;
        let open = ms(t.elapsed());
        let t = Instant::now();
        self.tmux.keys("x")?;
        self.wait("the help to close", |s| !s.contains(HELP))?;
        Ok([open, ms(t.elapsed())])
    }
}
