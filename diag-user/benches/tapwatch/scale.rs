//! 3. Many VMs: taps present at start all attached, then taps created and deleted at a
//!    steady rate while tapwatch runs (and once without it, for the host's own rate); every
//!    one followed, the rate unchanged, no descriptor or memory growth, a quick exit.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use diag_user::lab::netns::{run as sh, Netns, VmTap};

use crate::{
    load::Tapwatch,
    measure::{ms, ProcSample},
    report::Report,
    Settings,
};

const SECTION: &str = "3 scale";
/// How long each churned tap lives, like a VM that boots and is deleted at once.
const LIFETIME: Duration = Duration::from_secs(1);

/// The default (the drop-driven datapath: attaching is a map update) and the per-frame
/// probe on every tap (clsact); the host's own churn rate first, without tapwatch.
pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("twbench-scale")?;
    let alone = churn(&ns, s, None)?;
    let alone_rate = alone.created as f64 / s.churn_time.as_secs_f64();
    report.info(
        SECTION,
        format!(
            "churn without tapwatch: taps created / deleted in {:.0} s",
            s.churn_time.as_secs_f64()
        ),
        format!("{} / {} ({alone_rate:.0}/s)", alone.created, alone.deleted),
    );
    drop(ns);
    for (label, args) in [
        ("default", &[][..]),
        (
            "tc clsact",
            &["--datapath", "tc", "--attach-mode", "clsact"][..],
        ),
    ] {
        run_mode(s, report, label, args, alone_rate)?;
    }
    Ok(())
}

fn run_mode(
    s: &Settings,
    report: &mut Report,
    mode: &str,
    extra: &[&str],
    alone_rate: f64,
) -> Result<()> {
    let ns = Netns::new("twbench-scale")?;
    let n = s.scale_taps;
    let batch = std::env::temp_dir().join(format!("twbench-{}.ip", std::process::id()));
    persistent_taps(&ns, "bsc", n, &batch)?;

    let mut args = vec!["--interval", "1", "--iface", "bsc*", "--iface", "bch*"];
    args.extend_from_slice(extra);
    let mut tw = Tapwatch::json(&ns, &args)?;
    let all = ms(all_attached(&mut tw, n)?);
    let limit = if mode == "default" { 1000.0 } else { 3000.0 };
    report.target(
        SECTION,
        format!("{mode}: {n} taps present at start: all attached (from exec)"),
        format!("{all:.0} ms"),
        format!("< {limit:.0} ms"),
        all < limit,
    );

    // Let the first stats record and allocations settle before the baseline.
    tw.wait_for(|v| v["type"] == "stats")?;
    let before = ProcSample::of(tw.pid())?;
    let churn = churn(&ns, s, Some(&mut tw))?;
    let after = ProcSample::of(tw.pid())?;
    report_churn(s, report, mode, alone_rate, &churn, &before, &after);

    let (_, exit) = tw.stop_timed()?;
    report.target(
        SECTION,
        format!("{mode}: exit with {n} taps (SIGINT to exit, summary written)"),
        format!("{:.0} ms", ms(exit)),
        "< 1000 ms",
        exit < Duration::from_secs(1),
    );
    Ok(())
}

/// `n` taps `{prefix}0000`… in `ns` that outlive their descriptors (as libvirt's do), set
/// up by one `ip -batch` of the file `batch` (removed after).
pub fn persistent_taps(ns: &Netns, prefix: &'static str, n: usize, batch: &Path) -> Result<()> {
    ns.enter(move || -> Result<()> {
        for i in 0..n {
            VmTap::open(&format!("{prefix}{i:04}"))?.persist()?;
        }
        Ok(())
    })??;
    let lines: String = (0..n)
        .map(|i| format!("link set {prefix}{i:04} up\n"))
        .collect();
    std::fs::write(batch, lines)?;
    let up = sh("ip", &["-n", ns.name(), "-batch", &batch.to_string_lossy()]);
    let _ = std::fs::remove_file(batch);
    up?;
    Ok(())
}

/// Reads tapwatch's records until `n` taps are attached: the time from its exec to the last.
pub fn all_attached(tw: &mut Tapwatch, n: usize) -> Result<Duration> {
    let mut attached = 0;
    let mut last = tw.start;
    while attached < n {
        let (at, v) = tw.next()?;
        if v["type"] == "attached" {
            attached += 1;
            last = at;
        }
    }
    Ok(last - tw.start)
}

/// The churn under tapwatch: the rate against the host's own, every tap followed once,
/// and tapwatch's descriptors, memory and CPU (`before` and `after` the churn).
fn report_churn(
    s: &Settings,
    report: &mut Report,
    mode: &str,
    alone_rate: f64,
    churn: &Churn,
    before: &ProcSample,
    after: &ProcSample,
) {
    let total = churn.created;
    let secs = s.churn_time.as_secs_f64();
    let rate = churn.created as f64 / secs;
    report.target(
        SECTION,
        format!("{mode}: churn: taps created / deleted in {secs:.0} s"),
        format!("{} / {} ({rate:.0}/s)", churn.created, churn.deleted),
        format!(">= 95% of {alone_rate:.0}/s (without tapwatch)"),
        rate >= 0.95 * alone_rate && churn.deleted == churn.created,
    );
    let once = |m: &HashMap<String, u32>| m.values().filter(|&&c| c == 1).count();
    report.target(
        SECTION,
        format!("{mode}: churn: taps attached once / detached once"),
        format!(
            "{} / {} of {total}",
            once(&churn.seen.attached),
            once(&churn.seen.detached)
        ),
        "all",
        once(&churn.seen.attached) == total && once(&churn.seen.detached) == total,
    );
    report.target(
        SECTION,
        format!("{mode}: churn: tapwatch descriptors before / after"),
        format!("{} / {}", before.fds, after.fds),
        "no growth",
        after.fds <= before.fds,
    );
    report.info(
        SECTION,
        format!("{mode}: churn: tapwatch RSS before / after / highest sampled"),
        format!(
            "{:.1} / {:.1} / {:.1} MB",
            mb(before.rss_kb),
            mb(after.rss_kb),
            mb(churn.seen.max_rss_kb)
        ),
    );
    report.target(
        SECTION,
        format!("{mode}: tapwatch peak RSS (VmHWM)"),
        format!("{:.1} MB", mb(after.peak_rss_kb)),
        "< 64 MB",
        mb(after.peak_rss_kb) < 64.0,
    );
    report.info(
        SECTION,
        format!("{mode}: churn: tapwatch CPU"),
        format!(
            "{:.1}% of a core",
            (after.cpu_s - before.cpu_s) / churn.secs * 100.0
        ),
    );
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub struct Churn {
    pub created: usize,
    pub deleted: usize,
    secs: f64,
    seen: Followed,
}

/// What tapwatch said of the churned taps, and its memory meanwhile.
#[derive(Default)]
struct Followed {
    attached: HashMap<String, u32>,
    detached: HashMap<String, u32>,
    max_rss_kb: u64,
}

/// Creates `churn_per_s` taps a second for `churn_time`, each deleted `LIFETIME` later, while
/// reading tapwatch's records and sampling its memory (when it runs).
pub fn churn(ns: &Netns, s: &Settings, tw: Option<&mut Tapwatch>) -> Result<Churn> {
    let total = (s.churn_time.as_secs_f64() * s.churn_per_s as f64) as usize;
    let step = Duration::from_secs_f64(1.0 / s.churn_per_s as f64);
    let (tx, rx) = mpsc::channel::<(Instant, VmTap)>();
    let start = Instant::now();
    let made = Arc::new(AtomicUsize::new(0));
    let made_by_creator = made.clone();
    let end = start + s.churn_time;
    let creator = ns.spawn(move || -> Result<usize> {
        for i in 0..total {
            let due = start + step * i as u32;
            // Creating a tap waits for the kernel's rtnl lock: when the host is slower than
            // the schedule, fewer taps are made, and the rate achieved is reported.
            if due > end || Instant::now() > end {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let tap = VmTap::open(&format!("bch{i:05}"))?;
            made_by_creator.fetch_add(1, Ordering::Relaxed);
            if tx.send((Instant::now() + LIFETIME, tap)).is_err() {
                break;
            }
        }
        Ok(made_by_creator.load(Ordering::Relaxed))
    })?;
    // Closing the last fd deletes a tap (as when QEMU exits).
    let deleter = std::thread::spawn(move || {
        let mut n = 0;
        for (due, tap) in rx {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            drop(tap);
            n += 1;
        }
        n
    });

    let done = || creator.is_finished() && deleter.is_finished();
    let seen = match tw {
        Some(tw) => follow(tw, done, &made)?,
        None => {
            while !done() {
                std::thread::sleep(Duration::from_millis(50));
            }
            Followed::default()
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let created = creator.join().ok().context("creator")???;
    let deleted = deleter.join().ok().context("deleter")?;
    Ok(Churn {
        created,
        deleted,
        secs,
        seen,
    })
}

/// Reads tapwatch's records of the churned taps, sampling its memory, until the churn is
/// `done` and tapwatch has reported as many taps detached as were `made` (or 10 s more
/// have passed).
fn follow(tw: &mut Tapwatch, done: impl Fn() -> bool, made: &AtomicUsize) -> Result<Followed> {
    let mut seen = Followed::default();
    let mut next_sample = Instant::now();
    let mut deadline = None;
    loop {
        if let Some((_, v)) = tw.next_within(Duration::from_millis(50))? {
            let name = v["ifname"].as_str().unwrap_or_default();
            if name.starts_with("bch") {
                match v["type"].as_str() {
                    Some("attached") => *seen.attached.entry(name.into()).or_default() += 1,
                    Some("detached") => *seen.detached.entry(name.into()).or_default() += 1,
                    _ => {}
                }
            }
        }
        if Instant::now() >= next_sample {
            seen.max_rss_kb = seen.max_rss_kb.max(ProcSample::of(tw.pid())?.rss_kb);
            next_sample += Duration::from_millis(250);
        }
        if deadline.is_none() && done() {
            // Everything is gone from the kernel; give tapwatch a moment for the last
            // notifications, ending early once it has reported them all.
            deadline = Some(Instant::now() + Duration::from_secs(10));
        }
        if let Some(d) = deadline {
            if seen.detached.len() >= made.load(Ordering::Relaxed) || Instant::now() > d {
                break;
            }
        }
    }
    Ok(seen)
}
