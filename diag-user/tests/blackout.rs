//! The blackout's timing under `tapwatch watch --json`, against the real kernel and in
//! every datapath: the window a MAC change opens, the first frame delivered to the VM after
//! its RARP, stale frames racing the stats interval. Each test has its own namespace.

mod common;

use std::time::Duration;

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};

every_datapath!(
    mac_change_turns_frames_to_the_old_mac_into_mismatches,
    inbound_is_timed_from_the_rarp,
    stale_frames_racing_the_interval_stay_with_their_window
);

fn mac_change_turns_frames_to_the_old_mac_into_mismatches(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-mac").unwrap();
    let tap = VmTap::create(&ns, "tapmac0", TAP_LIBVIRT).unwrap();
    let mut tw = json_watch_with(&ns, datapath, &["--libvirt-dir", "/nonexistent"]);
    tw.wait_attached("tapmac0");
    let to = |mac| frames::udp(GUEST, mac, VM_IP, HOST_IP, 80);
    for _ in 0..3 {
        tap.send(&to(TAP_LIBVIRT)).unwrap();
    }
    tw.wait_stats("tapmac0", |t| u(t, "from_vm_frames") == 3);

    ns.ip(&["link", "set", "tapmac0", "address", &TAP_CALICO.to_string()])
        .unwrap();
    let change = tw.wait_for("mac_change", |v| v["type"] == "mac_change");
    assert_eq!(change["ifname"], "tapmac0");
    assert_eq!(change["old_mac"], "fe:16:3e:aa:bb:cc");
    assert_eq!(change["new_mac"], "00:61:fe:ed:ca:fe");

    for _ in 0..5 {
        tap.send(&to(TAP_LIBVIRT)).unwrap();
    }
    // The guest answers the host's ARP request: addressed to the new MAC, but not a sign
    // that its traffic is; the blackout goes on.
    let reply = frames::arp(2, TAP_CALICO, GUEST, VM_IP, TAP_CALICO, HOST_IP, None);
    tap.send(&reply).unwrap();
    for _ in 0..2 {
        tap.send(&to(TAP_CALICO)).unwrap();
    }
    tw.wait_stats("tapmac0", |t| u(t, "from_vm_frames") == 11);
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    let row = summary_row(&recs, "tapmac0");
    assert_eq!(u(row, "dst_mismatch_frames"), 5, "{row:#}");
    assert_eq!(u(row, "from_vm_frames"), 11);
    let history: Vec<&str> = row["mac_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["mac"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["fe:16:3e:aa:bb:cc", "00:61:fe:ed:ca:fe"]);
    let mism = frames(&recs, "tapmac0", "dst_mismatch");
    assert!(!mism.is_empty());
    assert!(mism.iter().all(|m| m["dst_mac"] == "fe:16:3e:aa:bb:cc"));
    assert!(mism[0]["ts"].as_str() > change["ts"].as_str());
    // The first frame to the new MAC ends the window, timed by the kernel; only the first.
    let matched = frames(&recs, "tapmac0", "dst_match");
    assert_eq!(matched.len(), 1, "{matched:#?}");
    assert_eq!(matched[0]["dst_mac"], "00:61:fe:ed:ca:fe");
    assert!(matched[0]["ts"].as_str() > mism.last().unwrap()["ts"].as_str());

    // Verdicts: OK, BLACKOUT at the first mismatch, RECOVERED at the dst_match, with the
    // blackout measured between the two kernel timestamps.
    let verdicts = of_type(&recs, "verdict");
    let states: Vec<&str> = verdicts
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["OK", "BLACKOUT", "RECOVERED"], "{verdicts:#?}");
    assert!(verdicts
        .iter()
        .all(|v| v["ifname"] == "tapmac0" && v["vm"] == "tapmac0"));
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    let expect_ms = ((ms(matched[0]) - ms(mism[0])) / 1000) as u64;
    assert_eq!(verdicts[2]["blackout_ms"], expect_ms);
    assert!(verdicts[1]["diagnosis"]
        .as_str()
        .unwrap()
        .starts_with("VM still sends to fe:16:3e:aa:bb:cc"));
    assert_eq!(row["state"], "RECOVERED");
    assert_eq!(row["blackout_ms"], expect_ms);
    assert_eq!(row["vm"], "tapmac0");
    assert!(row["diagnosis"].as_str().unwrap().contains("Blackout of"));
}

/// The whole milliseconds between two records' timestamps as the engine computes them from
/// nanoseconds: the JSON has microseconds, so either neighbour of the truncated value.
fn ms_between(from: &serde_json::Value, to: &serde_json::Value) -> std::ops::RangeInclusive<u64> {
    let us = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
            .unwrap()
            .timestamp_micros()
    };
    let d = (us(to) - us(from)) * 1000;
    ((d - 999).max(0) / 1_000_000) as u64..=((d + 999) / 1_000_000) as u64
}

/// The blackout's anatomy on the kernel's clock: after the VM's RARP, the first data frame
/// delivered to it (not ARP) is reported once as `inbound`, and `inbound_gap_ms` is the
/// time between the two frames' kernel timestamps; data before the RARP and ARP after it do
/// not count.
fn inbound_is_timed_from_the_rarp(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-inb").unwrap();
    let tap = answering_tap(&ns, "tapinb0");
    let is_reply = |seq: u16| {
        move |f: &[u8]| f.len() >= 42 && f[23] == 1 && f[34] == 0 && f[40..42] == seq.to_be_bytes()
    };
    let ping = |seq: u16| {
        tap.send(&frames::icmp_echo_request(
            GUEST,
            TAP_LIBVIRT,
            VM_IP,
            HOST_IP,
            7,
            seq,
            b"tapwatch",
        ))
        .unwrap();
        tap.recv_matching(Duration::from_secs(2), is_reply(seq))
            .unwrap()
            .expect("echo reply");
    };
    let mut tw = json_watch_with(&ns, datapath, &[]);
    tw.wait_attached("tapinb0");
    // Data to the VM before any announce: not a migration's.
    ping(1);
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    // In the drop-driven datapath the RARP brings the per-frame probe that sees frames to
    // the VM; it is on before the RARP's record goes out.
    tw.wait_for("the RARP", |v| v["kind"] == "rarp");
    // The host's ARP reply to the VM is not the network delivering to it.
    tap.send(&frames::arp_request(GUEST, VM_IP, HOST_IP))
        .unwrap();
    tap.recv_matching(Duration::from_secs(2), |f| {
        f.len() >= 22 && f[12..14] == [8, 6] && f[21] == 2
    })
    .unwrap()
    .expect("arp reply");
    ping(2);
    ping(3);
    let inbound = tw.wait_for("inbound", |v| v["kind"] == "inbound");
    tw.wait_stats("tapinb0", |t| u(t, "from_vm_frames") == 5);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{status:?}");

    let all = frames(&recs, "tapinb0", "inbound");
    assert_eq!(all.len(), 1, "reported once: {all:#?}");
    assert_eq!(
        (
            &inbound["direction"],
            &inbound["src_mac"],
            &inbound["dst_mac"]
        ),
        (
            &"to_vm".into(),
            &"fe:16:3e:aa:bb:cc".into(),
            &"fa:16:3e:aa:bb:cc".into()
        )
    );
    assert_eq!(inbound["len"], 50);
    let rarp = &frames(&recs, "tapinb0", "rarp")[0];
    let arp_reply = &frames(&recs, "tapinb0", "arp_reply")[0];
    assert!(
        arp_reply["ts"].as_str() < inbound["ts"].as_str(),
        "{arp_reply} {inbound}"
    );
    let row = summary_row(&recs, "tapinb0");
    assert_eq!(row["switchover_ts"], rarp["ts"]);
    let gap = row["inbound_gap_ms"].as_u64().unwrap();
    assert!(
        ms_between(rarp, &inbound).contains(&gap),
        "inbound_gap_ms {gap} vs {:?}",
        ms_between(rarp, &inbound)
    );
    // No stale frame: the host accepted the VM's frames from the switch-over on.
    assert_eq!(row["outbound_gap_ms"], 0);
}

/// Pins the calling thread to one CPU, so that frames it writes are seen on that CPU's
/// counters (the eBPF datapaths sample stale-frame events per CPU).
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on this thread.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A real guest's stale frames race the stats interval: some are counted after the
/// kernel-timed end of their window (sent before the first frame to the tap's MAC, read at
/// the next interval). They are that window's: no BLACKOUT follows the RECOVERED. A stale
/// frame sent after the recovery is a new blackout at its own kernel time, and its end
/// another recovery.
fn stale_frames_racing_the_interval_stay_with_their_window(datapath: &str) {
    require_root();
    pin_to_one_cpu();
    let ns = Netns::new("tw-race").unwrap();
    let tap = VmTap::create(&ns, "taprace0", TAP_CALICO).unwrap();
    // A long interval, so the counts of the stale frames reach a stats record well after
    // the recovery, as with a guest pinging every 100 ms and the default interval.
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "2",
            "--datapath",
            datapath,
            "--libvirt-dir",
            "/nonexistent",
        ],
    );
    tw.wait_attached("taprace0");
    let to = |mac| frames::udp(GUEST, mac, VM_IP, HOST_IP, 80);
    tap.send(&to(TAP_CALICO)).unwrap();
    tw.wait_stats("taprace0", |t| u(t, "from_vm_frames") == 1);

    // Right after an interval: one stale frame (its event brings the drop-driven
    // datapath's probe before its record goes out), three more within the sampling
    // interval (counted, not reported), then the first frame to the tap's MAC.
    tap.send(&to(TAP_LIBVIRT)).unwrap();
    tw.wait_for("the first stale frame", |v| v["kind"] == "dst_mismatch");
    for _ in 0..3 {
        tap.send(&to(TAP_LIBVIRT)).unwrap();
    }
    tap.send(&to(TAP_CALICO)).unwrap();
    tw.wait_for("the recovery", |v| {
        v["type"] == "verdict" && v["state"] == "RECOVERED"
    });
    // The interval after the recovery counts the stale frames sent before it.
    tw.wait_stats("taprace0", |t| {
        u(t, "dst_mismatch_frames") == 4 && u(t, "from_vm_frames") == 6
    });
    tw.wait_stats("taprace0", |_| true);

    // The other side: a stale frame after the recovery is a new blackout.
    tap.send(&to(TAP_LIBVIRT)).unwrap();
    tw.wait_for("the second blackout", |v| {
        v["type"] == "verdict" && v["state"] == "BLACKOUT"
    });
    tap.send(&to(TAP_CALICO)).unwrap();
    tw.wait_stats("taprace0", |t| {
        u(t, "dst_mismatch_frames") == 5 && u(t, "from_vm_frames") == 8
    });
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{status:?}: {err}");

    assert_two_windows_each_kernel_timed(&recs);
}

/// The verdicts of stale_frames_racing_the_interval_stay_with_their_window: two blackouts,
/// each from its first stale frame to the first frame to the tap's MAC after it; the
/// window closed at the end.
fn assert_two_windows_each_kernel_timed(recs: &[serde_json::Value]) {
    let verdicts = of_type(recs, "verdict");
    let states: Vec<&str> = verdicts
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["OK", "BLACKOUT", "RECOVERED", "BLACKOUT", "RECOVERED"],
        "{verdicts:#?}"
    );
    // Each blackout begins at its first stale frame and ends at the first frame to the
    // tap's MAC after it, both kernel-timed.
    let mism = frames(recs, "taprace0", "dst_mismatch");
    let matched = frames(recs, "taprace0", "dst_match");
    assert_eq!(
        (mism.len(), matched.len()),
        (2, 2),
        "{mism:#?} {matched:#?}"
    );
    for (k, (m, d)) in mism.iter().zip(&matched).enumerate() {
        assert_eq!(verdicts[1 + 2 * k]["ts"], m["ts"], "blackout {k}");
        assert_eq!(verdicts[2 + 2 * k]["ts"], d["ts"], "recovery {k}");
    }
    let row = summary_row(recs, "taprace0");
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(u(row, "dst_mismatch_frames"), 5);
    assert_eq!(
        row.get("mismatch_since"),
        Some(&serde_json::Value::Null),
        "the window is closed: {row:#}"
    );
}
