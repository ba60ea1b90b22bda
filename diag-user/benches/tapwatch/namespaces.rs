//! 8. Every network namespace (`--netns all`): N namespaces with a `tap0` each, as N
//!    KubeVirt pods on a node, all there when tapwatch starts. The time from its exec to
//!    every tap attached and from SIGINT to its exit, its memory per namespace, and what
//!    healthy frames through pods' taps cost (program runs per frame).

use std::{os::fd::AsRawFd, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use diag_user::lab::netns::{run as sh, Netns, VmTap};

use crate::{
    load::{Generator, Tapwatch},
    measure::{ms, programs_of, ProcSample, ProgRun, RunStats},
    report::Report,
    scale::{all_attached, mb},
    throughput::healthy_path,
    Settings, TAP_MAC,
};

const SECTION: &str = "8 namespaces";
/// Pods whose taps carry healthy traffic while the program runs are counted.
const BUSY: usize = 4;

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let host = Netns::new("twbench-nsh")?;
    let args = ["--netns", "all", "--iface", "tap0*", "--interval", "1"];
    // The run's memory with no pod, to tell what each namespace adds.
    let mut tw = Tapwatch::json(&host, &args)?;
    tw.wait_for(|v| v["type"] == "stats")?;
    let alone = ProcSample::of(tw.pid())?.rss_kb;
    tw.stop()?;
    let mut sizes = vec![200, s.scale_taps];
    sizes.dedup();
    for &n in &sizes {
        one_size(s, report, &host, &args, n, alone)?;
    }
    for &n in &sizes {
        bridged(report, &host, &args, n)?;
    }
    Ok(())
}

/// KubeVirt's pods: `tap0` on the pod's bridge `k6t-eth0`, so each carries the full probe
/// (clsact filters, made from inside its namespace): attach and exit.
fn bridged(report: &mut Report, host: &Netns, args: &[&str], n: usize) -> Result<()> {
    let pods = Pods::create(n)?;
    pods.bridge()?;
    let mut tw = Tapwatch::json(host, args)?;
    let attach = all_attached(&mut tw, n)?;
    within_2s(
        report,
        format!("{n} pods with a bridged tap0 each (KubeVirt): all attached (from exec)"),
        attach,
    );
    tw.wait_for(|v| v["type"] == "stats")?;
    let (_, exit) = tw.stop_timed()?;
    within_2s(
        report,
        format!("{n} pods with a bridged tap0 each: exit (filters removed, summary written)"),
        exit,
    );
    drop(pods);
    Ok(())
}

fn one_size(
    s: &Settings,
    report: &mut Report,
    host: &Netns,
    args: &[&str],
    n: usize,
    alone_kb: u64,
) -> Result<()> {
    let busy: Vec<Netns> = (0..BUSY)
        .map(|_| Netns::new("twbench-nsbusy"))
        .collect::<Result<_, _>>()?;
    let quiet = Pods::create(n - BUSY)?;
    let mut paths = Vec::new();
    let mut taps = Vec::new();
    for ns in &busy {
        let tap = Arc::new(VmTap::create(ns, "tap0", TAP_MAC)?);
        paths.push(healthy_path(ns, "tap0")?);
        taps.push(tap);
    }

    let mut tw = Tapwatch::json(host, args)?;
    let attach = all_attached(&mut tw, n)?;
    within_2s(
        report,
        format!("{n} namespaces with a tap0 each, there at start: all attached (from exec)"),
        attach,
    );
    tw.wait_for(|v| v["type"] == "stats")?;
    let rss = ProcSample::of(tw.pid())?.rss_kb;
    report.info(
        SECTION,
        format!("{n} namespaces: tapwatch's memory (RSS) per namespace"),
        format!(
            "{:.1} KB ({:.1} MB in all, {:.1} MB with none)",
            rss.saturating_sub(alone_kb) as f64 / n as f64,
            mb(rss),
            mb(alone_kb)
        ),
    );

    // Healthy frames through the busy pods' taps: the drop-driven datapath runs nothing
    // for them, wherever the tap is.
    let _stats = RunStats::enable()?;
    let before = programs_of(tw.pid());
    let mut sent = 0;
    for (tap, (_, frame)) in taps.iter().zip(&paths) {
        let gen = Generator::tap(tap, frame, 1);
        std::thread::sleep(s.run_time / BUSY as u32);
        sent += gen.finish();
    }
    let ran = ProgRun::since(&programs_of(tw.pid()), &before);
    let runs: u64 = ran.iter().map(|p| p.runs).sum();
    report.target(
        SECTION,
        format!("{n} namespaces: program runs per healthy frame through pods' taps"),
        format!(
            "{:.4} ({runs} runs for {sent} frames)",
            runs as f64 / sent.max(1) as f64
        ),
        "~0",
        (runs as f64) < 0.001 * sent as f64,
    );

    let (_, exit) = tw.stop_timed()?;
    within_2s(
        report,
        format!("{n} namespaces: exit (SIGINT to exit, summary written)"),
        exit,
    );
    drop(taps);
    drop(paths);
    drop(busy);
    drop(quiet);
    Ok(())
}

/// A time whose goal is under 2 s (attach, exit).
fn within_2s(report: &mut Report, what: String, took: Duration) {
    report.target(
        SECTION,
        what,
        format!("{:.0} ms", ms(took)),
        "< 2000 ms",
        took < Duration::from_secs(2),
    );
}

/// Namespaces made in bulk (one `ip -batch`), each with a persistent `tap0`; deleted in
/// bulk on drop, their taps with them.
struct Pods {
    names: Vec<String>,
}

impl Pods {
    fn create(n: usize) -> Result<Self> {
        let names: Vec<String> = (0..n)
            .map(|i| format!("twbns-{}-{i}", std::process::id()))
            .collect();
        let pods = Self { names };
        pods.batch("netns add")?;
        let names = pods.names.clone();
        // One thread visits each namespace in turn (setns moves that thread only).
        std::thread::spawn(move || -> Result<()> {
            for name in names {
                let ns = std::fs::File::open(format!("/run/netns/{name}"))?;
                // SAFETY: setns on an open namespace fd; affects this thread only.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("setns");
                }
                VmTap::open("tap0")?.persist()?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread making taps panicked"))??;
        Ok(pods)
    }

    /// Puts each pod's `tap0` on a bridge `k6t-eth0` of its own, as KubeVirt's bridge
    /// binding does.
    fn bridge(&self) -> Result<()> {
        for name in &self.names {
            sh(
                "ip",
                &["-n", name, "link", "add", "k6t-eth0", "type", "bridge"],
            )?;
            sh(
                "ip",
                &["-n", name, "link", "set", "tap0", "master", "k6t-eth0"],
            )?;
        }
        Ok(())
    }

    fn batch(&self, verb: &str) -> Result<()> {
        let file = std::env::temp_dir().join(format!("twbns-{}.ip", std::process::id()));
        let lines: String = self.names.iter().map(|n| format!("{verb} {n}\n")).collect();
        std::fs::write(&file, lines)?;
        let r = sh("ip", &["-force", "-batch", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        r?;
        Ok(())
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let _ = self.batch("netns del");
    }
}
