//! 5. `tapwatch serve` as a fleet runs it: with 1000 taps, how long a scrape of /metrics
//!    takes and how large it is; then taps churned for the churn time with departed taps
//!    forgotten after a second: memory follows the live taps, not every tap ever seen,
//!    and stays within 10 MB of `watch` on the same live taps.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use diag_testkit::child::Spawned;
use diag_user::{lab::netns::Netns, report::metrics::sample};

use crate::{
    load::Tapwatch,
    measure::{ms, percentile, ProcSample},
    report::Report,
    scale::{all_attached, churn, mb, persistent_taps},
    Settings,
};

const SECTION: &str = "5 serve";
const PORT: u16 = 9464;

fn get(ns: &Netns, path: &'static str) -> Result<String> {
    ns.enter(move || -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (_, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
        Ok(body.to_string())
    })?
}

fn taps(ns: &Netns) -> Option<f64> {
    get(ns, "/metrics")
        .ok()
        .and_then(|m| sample(&m, "tapwatch_taps", &[]))
}

fn wait_taps(ns: &Netns, n: usize, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    while taps(ns) != Some(n as f64) {
        if start.elapsed() > within {
            bail!("tapwatch_taps never reached {n} (last {:?})", taps(ns));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("twbench-serve")?;
    let n = s.scale_taps;
    let batch = std::env::temp_dir().join(format!("twbench-serve-{}.ip", std::process::id()));
    persistent_taps(&ns, "bsv", n, &batch)?;
    let listen = format!("127.0.0.1:{PORT}");
    let mut p = Spawned::start(
        ns.name(),
        &[
            env!("CARGO_BIN_EXE_tapwatch"),
            "serve",
            "--listen",
            &listen,
            "--iface",
            "bsv*",
            "--iface",
            "bch*",
            "--forget-after",
            "1",
        ],
    )?;
    let started = wait_taps(&ns, n, Duration::from_secs(60))?;
    report.info(
        SECTION,
        format!("{n} taps: /metrics says all of them (from exec)"),
        format!("{:.0} ms", ms(started)),
    );
    scrape_times(report, &ns, n)?;
    churn_memory(s, report, &ns, p.pid())?;
    against_watch(report, &ns, n, p.pid())?;
    p.signal(libc::SIGTERM);
    p.wait_timeout(Duration::from_secs(30))?;
    Ok(())
}

/// How long 50 scrapes of /metrics with `n` taps take, and how large one is.
fn scrape_times(report: &mut Report, ns: &Netns, n: usize) -> Result<()> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..50 {
        let t = Instant::now();
        size = get(ns, "/metrics")?.len();
        times.push(ms(t.elapsed()));
    }
    let body = get(ns, "/metrics")?;
    let per_tap = body
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("ifname=\"bsv"))
        .count() as f64
        / n as f64;
    report.info(
        SECTION,
        format!("{n} taps: series per tap in /metrics"),
        format!("{per_tap:.1}"),
    );
    let p50 = percentile(&mut times, 50.0);
    let p99 = percentile(&mut times, 99.0);
    report.target(
        SECTION,
        format!(
            "{n} taps: a scrape of /metrics p50 / p99 ({} KB)",
            size / 1024
        ),
        format!("{p50:.1} / {p99:.1} ms"),
        "p99 < 100 ms",
        p99 < 100.0,
    );
    Ok(())
}

/// The memory and descriptors of serve (process `pid`) over two rounds of churn, the
/// departed taps forgotten after each.
fn churn_memory(s: &Settings, report: &mut Report, ns: &Netns, pid: u32) -> Result<()> {
    let n = s.scale_taps;
    // Two rounds of churn: the first sets the allocator's high-water mark (glibc keeps what
    // it once held, in per-thread arenas), the second shows whether anything of a departed
    // tap stays. Memory bounded by the live taps means the second round adds nothing.
    let before = ProcSample::of(pid)?;
    let mut rounds = Vec::new();
    let mut created = 0;
    for _ in 0..2 {
        created += churn(ns, s, None)?.created;
        // The churned taps are gone: after the grace period, only the first n are known.
        wait_taps(ns, n, Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(3));
        rounds.push(ProcSample::of(pid)?);
    }
    let (first, second) = (&rounds[0], &rounds[1]);
    report.target(
        SECTION,
        format!(
            "churn of {created} taps in two rounds, forgotten 1 s after they went: RSS \
             before / after round 1 / after round 2"
        ),
        format!(
            "{:.1} / {:.1} / {:.1} MB",
            mb(before.rss_kb),
            mb(first.rss_kb),
            mb(second.rss_kb)
        ),
        "round 2 < +10% of before or round 1",
        // serve trims once departed taps are forgotten, so a round's sample lands anywhere
        // between the live taps' need and the round's peak: what would show a leak is
        // round 2 above both earlier samples.
        second.rss_kb as f64 <= first.rss_kb.max(before.rss_kb) as f64 * 1.1,
    );
    report.target(
        SECTION,
        "churn: descriptors before / after round 1 / after round 2",
        format!("{} / {} / {}", before.fds, first.fds, second.fds),
        "round 2: no growth",
        second.fds <= first.fds,
    );
    Ok(())
}

/// serve (process `pid`), after the churn, against `watch --json` started on the same `n`
/// live taps: the figure serve is held to. watch forgets no tap that went (its summary
/// lists them), so it is started after the churn, with the live taps only.
fn against_watch(report: &mut Report, ns: &Netns, n: usize, pid: u32) -> Result<()> {
    let mut watch = Tapwatch::json(ns, &["--iface", "bsv*"])?;
    all_attached(&mut watch, n)?;
    // A few stats intervals, as serve has had.
    for _ in 0..3 {
        watch.wait_for(|v| v["type"] == "stats")?;
    }
    let (sv, w) = (ProcSample::of(pid)?, ProcSample::of(watch.pid())?);
    watch.stop()?;
    report.target(
        SECTION,
        format!("{n} live taps: serve after the churn / watch of the same taps: RSS (peak)"),
        format!(
            "{:.1} / {:.1} MB ({:.1} / {:.1})",
            mb(sv.rss_kb),
            mb(w.rss_kb),
            mb(sv.peak_rss_kb),
            mb(w.peak_rss_kb)
        ),
        "serve within 10 MB of watch",
        mb(sv.rss_kb) <= mb(w.rss_kb) + 10.0,
    );
    Ok(())
}
