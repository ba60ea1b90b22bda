//! 4. Detection latency: a RARP written into a tap until its JSON line is read from
//!    tapwatch's stdout, on an idle host and with writers busy on every CPU.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use diag_user::frames;
use diag_user::{
    lab::netns::{Netns, VmTap},
    model::mac::MacAddr,
};

use crate::{
    load::{Generator, Tapwatch},
    measure::{ms, percentile},
    report::Report,
    Settings, GUEST, TAP_MAC,
};

const SECTION: &str = "4 latency";

pub fn run(s: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("twbench-lat")?;
    let tap = VmTap::create(&ns, "blat0", TAP_MAC)?;
    let busy = Arc::new(VmTap::create(&ns, "bbusy0", TAP_MAC)?);
    let mut tw = Tapwatch::json(
        &ns,
        &["--interval", "1", "--iface", "blat0", "--iface", "bbusy0"],
    )?;
    tw.wait_for(|v| v["type"] == "attached" && v["ifname"] == "bbusy0")?;
    let traffic = frames::udp(
        GUEST,
        TAP_MAC,
        "10.99.0.2".parse()?,
        "10.98.0.1".parse()?,
        18,
    );
    for busy_host in [false, true] {
        let load = busy_host.then(|| Generator::tap(&busy, &traffic, s.writers));
        let mut samples = Vec::with_capacity(s.latency_samples);
        for i in 0..s.latency_samples {
            // A distinct guest MAC per announcement tells its line from any other.
            let mac = MacAddr([0x02, 0xbe, 0, 0, (i >> 8) as u8, i as u8]);
            let want = mac.to_string();
            let t0 = Instant::now();
            tap.send(&frames::rarp_announce(mac, None))?;
            let (at, _) = tw.wait_for(|v| {
                v["type"] == "frame" && v["kind"] == "rarp" && v["src_mac"] == want.as_str()
            })?;
            samples.push(ms(at - t0));
            // Paced, so each sample sees an idle ring buffer and output pipe.
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(g) = load {
            g.finish();
        }
        let label = if busy_host {
            format!("{} writer threads busy", s.writers)
        } else {
            "idle host".into()
        };
        let (p50, p99, max) = (
            percentile(&mut samples, 50.0),
            percentile(&mut samples, 99.0),
            percentile(&mut samples, 100.0),
        );
        report.info(
            SECTION,
            format!(
                "frame -> JSON line, {label}: p50 / max ({} samples)",
                samples.len()
            ),
            format!("{p50:.2} ms / {max:.2} ms"),
        );
        report.target(
            SECTION,
            format!("frame -> JSON line, {label}: p99"),
            format!("{p99:.2} ms"),
            "< 50 ms",
            p99 < 50.0,
        );
    }
    tw.stop()?;
    Ok(())
}
