//! 2. A VM flooding frames to the tap's old MAC (the stale-cache blackout at line rate):
//!    are the counters exact, does the sampling limit hold, what do tapwatch and its view
//!    cost, does the view still answer keys.

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use diag_user::sandbox::{frames, Netns, VmTap};

use crate::{
    load::{Generator, Tapwatch},
    measure::{link_stats, ms, percentile, ProcSample},
    report::Report,
    Settings, GUEST, STALE_MAC,
};

const SECTION: &str = "2 flood";
const HELP: &str = "help (any key)";

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("twbench-flood")?;
    let tap = Arc::new(VmTap::create(&ns, "bflood0", crate::TAP_MAC)?);
    let tw = Tapwatch::json(&ns, &["--interval", "1", "--iface", "bflood0"])?;
    let view = Tmux::start(&ns, &["watch", "--iface", "bflood0"])?;
    view.wait(|s| s.contains("bflood0"))?;

    let stale = frames::udp(
        GUEST,
        STALE_MAC,
        "10.65.0.2".parse()?,
        "10.65.0.1".parse()?,
        18,
    );
    let kernel0 = link_stats(&ns, "bflood0")?.otherhost;
    let (tw0, view0) = (ProcSample::of(tw.pid())?, ProcSample::of(view.pid)?);
    let t0 = Instant::now();
    let gen = Generator::tap(&tap, &stale, s.writers);
    let mut keys = Vec::new();
    while t0.elapsed() < s.flood_time {
        keys.extend(view.help_round_trip()?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let written = gen.finish();
    let secs = t0.elapsed().as_secs_f64();
    let (tw1, view1) = (ProcSample::of(tw.pid())?, ProcSample::of(view.pid)?);
    let kernel = link_stats(&ns, "bflood0")?.otherhost - kernel0;
    drop(view);
    let records = tw.stop()?;
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
    // One sample per 100 ms per CPU, plus the first on each.
    let limit = cpus * ((secs / 0.1).ceil() as usize + 1);

    report.info(
        SECTION,
        format!("dst-mismatch flood, {} writers, {secs:.1} s", s.writers),
        format!("{:.0} frames/s", written as f64 / secs),
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
    let tw_pct = (tw1.cpu_s - tw0.cpu_s) / secs * 100.0;
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
        format!(
            "{:.2}% of a core",
            (view1.cpu_s - view0.cpu_s) / secs * 100.0
        ),
    );
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
struct Tmux {
    session: String,
    pid: u32,
}

impl Tmux {
    fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let session = format!("twbench-{}", std::process::id());
        // `exec` so the pane's process is tapwatch itself (`ip netns exec` execs too).
        let cmd = format!(
            "exec ip netns exec {} {} {}",
            ns.name(),
            env!("CARGO_BIN_EXE_tapwatch"),
            args.join(" ")
        );
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "200",
                "-y",
                "50",
                &cmd,
            ])
            .status()
            .context("tmux (scripts/setup.sh installs it)")?;
        if !ok.success() {
            bail!("tmux new-session failed");
        }
        let mut t = Self { session, pid: 0 };
        t.pid = t
            .tmux(&["display", "-p", "-t", &t.session, "#{pane_pid}"])?
            .trim()
            .parse()?;
        Ok(t)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux").args(args).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
    }

    /// Polls the screen (a terminal gives no other signal) until `pred` holds.
    fn wait(&self, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.screen()?) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the view did not show what was expected:\n{}",
                    self.screen()?
                );
            }
        }
    }

    /// Opens and closes the help: milliseconds from each key to the changed screen
    /// (including tmux's own capture time, so an upper bound).
    fn help_round_trip(&self) -> Result<[f64; 2]> {
        let t = Instant::now();
        self.tmux(&["send-keys", "-t", &self.session, "?"])?;
        self.wait(|s| s.contains(HELP))?;
        let open = ms(t.elapsed());
        let t = Instant::now();
        self.tmux(&["send-keys", "-t", &self.session, "x"])?;
        self.wait(|s| !s.contains(HELP))?;
        Ok([open, ms(t.elapsed())])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}
