//! 1. Per-frame cost: frames/s through a tap and through a veth pair with nothing, tapwatch
//!    or tcpdump watching, measured in interleaved rounds in one run.

use std::{sync::Arc, time::Instant};

use anyhow::Result;
use diag_user::{
    lab::{
        frames,
        netns::{Netns, VmTap},
    },
    model::mac::MacAddr,
};

use crate::{
    load::{Generator, Observer, Running},
    measure::{link_stats, median, SystemCpu},
    report::Report,
    Settings, GUEST, TAP_MAC,
};

const SECTION: &str = "1 per-frame";

/// One measurement: frames the interface received and the CPU it took.
struct Sample {
    fps: f64,
    /// System-wide busy CPU seconds per million frames (= microseconds per frame).
    cpu_us: f64,
    /// The observer's own process, per frame.
    observer_us: f64,
}

/// Frames the host drops right after the tc hook (no route), so the numbers are the
/// datapath's cost, not an application's.
fn frame(dst: MacAddr) -> Vec<u8> {
    frames::udp(
        GUEST,
        dst,
        "10.99.0.2".parse().unwrap(),
        "10.98.0.1".parse().unwrap(),
        18,
    )
}

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    // A tap: the VM side written through /dev/net/tun.
    let ns = Netns::new("twbench-tput")?;
    let tap = Arc::new(VmTap::create(&ns, "btap0", TAP_MAC)?);
    let f = frame(TAP_MAC);
    // A write returns once the frame has been through the host's receive path.
    let tap_results = compare(
        s,
        &ns,
        "btap0",
        &|| Ok(Generator::tap(&tap, &f, s.writers)),
        None,
    )?;
    summarize(report, "tap", &tap_results);

    // A veth pair: frames sent out of one end arrive as ingress on the other.
    let peer = MacAddr([0x02, 0, 0, 0, 0x0b, 0x02]);
    ns.ip(&[
        "link", "add", "bveth0", "type", "veth", "peer", "name", "bveth1",
    ])?;
    ns.ip(&["link", "set", "bveth1", "address", &peer.to_string(), "up"])?;
    ns.ip(&["link", "set", "bveth0", "up"])?;
    let f = frame(peer);
    let veth_results = compare(
        s,
        &ns,
        "bveth1",
        &|| Generator::packet_socket(&ns, "bveth0", &f, s.writers),
        // A send only queues the frame for the peer; count what the peer received.
        Some(&|| Ok(link_stats(&ns, "bveth1")?.rx_packets)),
    )?;
    summarize(report, "veth", &veth_results);
    Ok(())
}

/// Runs each observer `s.rounds` times, interleaved so drift hits all alike.
fn compare(
    s: &Settings,
    ns: &Netns,
    ifname: &str,
    generate: &dyn Fn() -> Result<Generator>,
    received: Option<&dyn Fn() -> Result<u64>>,
) -> Result<Vec<(Observer, Vec<Sample>)>> {
    let mut out: Vec<(Observer, Vec<Sample>)> =
        Observer::ALL.iter().map(|&o| (o, Vec::new())).collect();
    for round in 0..s.rounds {
        for (obs, samples) in out.iter_mut() {
            let running = Running::start(*obs, ns, ifname)?;
            let before = received.map(|r| r()).transpose()?;
            let (sys0, p0, t0) = (SystemCpu::now()?, running.cpu_s(), Instant::now());
            let gen = generate()?;
            std::thread::sleep(s.run_time);
            let written = gen.finish();
            let (secs, sys) = (t0.elapsed().as_secs_f64(), SystemCpu::now()?.since(sys0));
            let observer = running.cpu_s() - p0;
            let frames = match (received, before) {
                (Some(r), Some(b)) => r()? - b,
                _ => written,
            };
            running.stop()?;
            let frames = frames.max(1) as f64;
            eprintln!(
                "  {ifname} round {} {:<22} {:>9.0} frames/s  {:.3} us/frame",
                round + 1,
                obs.label(),
                frames / secs,
                sys / frames * 1e6
            );
            samples.push(Sample {
                fps: frames / secs,
                cpu_us: sys / frames * 1e6,
                observer_us: observer / frames * 1e6,
            });
        }
    }
    Ok(out)
}

fn summarize(report: &mut Report, what: &str, results: &[(Observer, Vec<Sample>)]) {
    let med = |o: Observer, f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .find(|(x, _)| *x == o)
            .map(|(_, ss)| ss.iter().map(f).collect())
            .unwrap_or_default();
        median(&mut v)
    };
    for o in Observer::ALL {
        report.info(
            SECTION,
            format!("{what}: {} frames/s", o.label()),
            format!("{:.0}", med(o, |x| x.fps)),
        );
        report.info(
            SECTION,
            format!(
                "{what}: {} CPU s per 1M frames (all CPUs; observer process)",
                o.label()
            ),
            format!(
                "{:.3} ({:.3})",
                med(o, |x| x.cpu_us),
                med(o, |x| x.observer_us)
            ),
        );
    }
    let base = med(Observer::Nothing, |x| x.fps);
    let kept = med(Observer::Tapwatch, |x| x.fps) / base;
    report.target(
        SECTION,
        format!("{what}: tapwatch throughput vs no probe"),
        format!("{:.1}%", kept * 100.0),
        ">= 95%",
        kept >= 0.95,
    );
    let base_cpu = med(Observer::Nothing, |x| x.cpu_us);
    let tw = med(Observer::Tapwatch, |x| x.cpu_us) - base_cpu;
    let td = med(Observer::Tcpdump, |x| x.cpu_us) - base_cpu;
    report.target(
        SECTION,
        format!("{what}: added CPU per frame, tapwatch / tcpdump"),
        format!("{:.0} ns / {:.0} ns = {:.3}", tw * 1e3, td * 1e3, tw / td),
        "<= 0.1",
        tw / td <= 0.1,
    );
}
