//! The drop-driven datapath (the default) against the real kernel: its counts against the
//! kernel's own counters, drops by reason, the per-frame probe that comes for stale frames
//! and goes after them, its blackout against the tc path's on the same frames, namespaces
//! kept apart, and nothing left after SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

fn watch(ns: &Netns, extra: &[&str]) -> Tapwatch {
    let mut args = vec!["watch", "--json", "--interval", "0.1"];
    args.extend_from_slice(extra);
    Tapwatch::start(ns, &args)
}

/// The kernel's own per-link count of frames dropped as addressed to another host.
fn kernel_otherhost(ns: &Netns, ifname: &str) -> u64 {
    let out = ns.ip(&["-s", "-s", "-j", "link", "show", ifname]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    // Printed once non-zero (Linux >= 6.0 counts it).
    v[0]["stats64"]["rx"]["otherhost"].as_u64().unwrap_or(0)
}

/// tapwatch's clsact filters on `ifname`.
fn filters(ns: &Netns, ifname: &str) -> usize {
    ["ingress", "egress"]
        .iter()
        .map(|dir| {
            ns.exec("tc", &["filter", "show", "dev", ifname, dir])
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" handle ") && l.contains("tap_"))
                .count()
        })
        .sum()
}

fn notices<'a>(recs: &'a [Value], code: &str) -> Vec<&'a Value> {
    of_type(recs, "notice")
        .into_iter()
        .filter(|n| n["code"] == code)
        .collect()
}

fn ts_micros(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

/// Stale frames counted exactly as the kernel counts them, drops named by reason, frame
/// totals from the link, and no per-frame program on a tap without trouble.
#[test]
fn counts_equal_the_kernels_own() {
    require_root();
    let ns = Netns::new("twd-count").unwrap();
    let tap = VmTap::create(&ns, "tapdc0", TAP_CALICO).unwrap();
    let mut tw = watch(&ns, &[]);
    let att = tw.wait_attached("tapdc0");
    assert_eq!(
        (&att["backend"], &att["datapath"]),
        (&"ebpf".into(), &"drops".into())
    );
    let note = notices(&tw.seen, "datapath");
    assert!(
        note.iter()
            .any(|n| n["message"].as_str().unwrap().starts_with("datapath drops")),
        "{note:?}"
    );
    // Healthy traffic: nothing per frame is attached.
    for _ in 0..20 {
        tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    tw.wait_stats("tapdc0", |t| u(t, "from_vm_frames") == 20);
    assert_eq!(filters(&ns, "tapdc0"), 0);

    let before = kernel_otherhost(&ns, "tapdc0");
    let stale = 37;
    for _ in 0..stale {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    // An ethertype nobody handles, to the tap's own MAC.
    let mut unknown = frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80);
    unknown[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    for _ in 0..2 {
        tap.send(&unknown).unwrap();
    }
    let total = 20 + stale + 2;
    tw.wait_stats("tapdc0", |t| {
        u(t, "from_vm_frames") == total && u(t, "dst_mismatch_frames") == stale
    });
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    let row = summary_row(&recs, "tapdc0");
    assert_eq!(kernel_otherhost(&ns, "tapdc0") - before, stale);
    assert_eq!(u(row, "dst_mismatch_frames"), stale);
    assert_eq!(row["kernel_drops"]["OTHERHOST"], stale);
    assert_eq!(row["kernel_drops"]["UNHANDLED_PROTO"], 2);
    assert_eq!(u(row, "from_vm_frames"), total);
    assert_eq!(u(row, "from_vm_bytes"), total * 80);
}

/// A stale frame gives the tap its per-frame probe before the frame's record goes out; it
/// goes once the tap has been calm for --probe-linger, said both times.
#[test]
fn the_per_frame_probe_comes_with_trouble_and_goes_after_it() {
    require_root();
    let ns = Netns::new("twd-probe").unwrap();
    let tap = VmTap::create(&ns, "tapdp0", TAP_CALICO).unwrap();
    let mut tw = watch(&ns, &["--probe-linger", "0.3"]);
    tw.wait_attached("tapdp0");
    assert_eq!(filters(&ns, "tapdp0"), 0);
    tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
        .unwrap();
    let added = tw.wait_for("probe_added", |v| v["code"] == "probe_added");
    assert_eq!(added["ifname"], "tapdp0");
    assert_eq!(filters(&ns, "tapdp0"), 2, "ingress and egress");
    tw.wait_for("dst_mismatch", |v| v["kind"] == "dst_mismatch");
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
        .unwrap();
    tw.wait_for("dst_match", |v| v["kind"] == "dst_match");
    let removed = tw.wait_for("probe_removed", |v| v["code"] == "probe_removed");
    assert_eq!(removed["ifname"], "tapdp0");
    assert_eq!(filters(&ns, "tapdp0"), 0);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert_eq!(summary_row(&recs, "tapdp0")["state"], "RECOVERED");
}

/// The same frames seen by the tc path and by the drop-driven one side by side: the same
/// counts, and the same blackout to within 10 ms, although the stale frames last only 20
/// ms and nothing tells the VM to wait for the probe.
#[test]
fn the_blackout_matches_the_tc_paths() {
    require_root();
    let ns = Netns::new("twd-same").unwrap();
    let tap = VmTap::create(&ns, "tapds0", TAP_CALICO).unwrap();
    let mut tc = watch(&ns, &["--datapath", "tc"]);
    tc.wait_attached("tapds0");
    let mut drops = watch(&ns, &["--datapath", "drops"]);
    drops.wait_attached("tapds0");
    let pace = |f: &[u8], n: usize| {
        for _ in 0..n {
            tap.send(f).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    pace(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80), 20);
    pace(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80), 100);
    let done = |t: &Value| u(t, "from_vm_frames") == 120;
    tc.wait_stats("tapds0", done);
    drops.wait_stats("tapds0", done);
    let (_, tc_recs, _) = tc.stop(libc::SIGINT);
    let (_, drop_recs, err) = drops.stop(libc::SIGINT);
    let (a, b) = (
        summary_row(&tc_recs, "tapds0"),
        summary_row(&drop_recs, "tapds0"),
    );
    for field in ["from_vm_frames", "dst_mismatch_frames"] {
        assert_eq!(u(a, field), u(b, field), "{field}: {err}");
    }
    assert_eq!(u(b, "dst_mismatch_frames"), 20);
    let blackout = |r: &Value| r["blackout_ms"].as_i64().unwrap();
    assert!(
        (blackout(a) - blackout(b)).abs() <= 10,
        "tc {} ms, drops {} ms",
        blackout(a),
        blackout(b)
    );
    let end = |recs: &[Value]| ts_micros(frames(recs, "tapds0", "dst_match")[0]);
    assert!((end(&tc_recs) - end(&drop_recs)).abs() <= 10_000);
}

/// ifindexes repeat across namespaces and the tracepoint is host-wide: a run counts only
/// the taps of its own namespace.
#[test]
fn another_namespaces_drops_are_not_counted() {
    require_root();
    let mine = Netns::new("twd-mine").unwrap();
    let theirs = Netns::new("twd-theirs").unwrap();
    let tap = VmTap::create(&mine, "tapdn0", TAP_CALICO).unwrap();
    let other = VmTap::create(&theirs, "tapdn0", TAP_CALICO).unwrap();
    let mut tw = watch(&mine, &[]);
    let att = tw.wait_attached("tapdn0");
    let idx = |ns: &Netns| {
        let out = ns.ip(&["-j", "link", "show", "tapdn0"]).unwrap();
        serde_json::from_str::<Value>(&out).unwrap()[0]["ifindex"].as_u64()
    };
    assert_eq!(idx(&mine), idx(&theirs), "the same ifindex on both sides");
    assert_eq!(att["ifindex"].as_u64(), idx(&mine));
    for _ in 0..5 {
        other
            .send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
            .unwrap();
        other.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    assert_eq!(kernel_otherhost(&theirs, "tapdn0"), 5);
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("tapdn0", |t| u(t, "garp_frames") == 1);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    let row = summary_row(&recs, "tapdn0");
    assert_eq!(
        (
            u(row, "dst_mismatch_frames"),
            u(row, "rarp_frames"),
            u(row, "from_vm_frames")
        ),
        (0, 0, 1)
    );
    assert!(row.get("kernel_drops").is_none(), "{row:#}");
}

/// The ids of the BPF programs a process holds, from its descriptors.
fn programs_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf-prog") {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// SIGKILL in the middle of a migration (the tap carries its per-frame probe): the
/// tracepoint, the sockets and the probe all go; no program of the run stays loaded.
#[test]
fn nothing_is_left_after_sigkill() {
    require_root();
    let ns = Netns::new("twd-kill").unwrap();
    let tap = VmTap::create(&ns, "tapdk0", TAP_CALICO).unwrap();
    let mut tw = watch(&ns, &[]);
    tw.wait_attached("tapdk0");
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tw.wait_for("probe_added", |v| v["code"] == "probe_added");
    assert_eq!(filters(&ns, "tapdk0"), 2);
    let ours = programs_of(tw.pid());
    assert!(ours.len() >= 5, "{ours:?}");
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    wait_gone(helper);
    assert_eq!(filters(&ns, "tapdk0"), 0);
    // The kernel frees a tracepoint link's program after an RCU grace period: no event
    // says when, so the check polls, within a bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(|p| p.ok().map(|p| p.id()))
            .collect();
        let left: Vec<&u32> = ours.iter().filter(|id| loaded.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still loaded: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A tap that joins a bridge gets the full probe (its frames to other MACs are switched,
/// not dropped), and loses it when it leaves.
#[test]
fn a_bridged_tap_gets_the_full_probe() {
    require_root();
    let ns = Netns::new("twd-br").unwrap();
    ns.ip(&["link", "add", "brd0", "type", "bridge"]).unwrap();
    let tap = VmTap::create(&ns, "tapdb0", TAP_LIBVIRT).unwrap();
    let mut tw = watch(&ns, &[]);
    assert_eq!(tw.wait_attached("tapdb0")["datapath"], "drops");
    ns.ip(&["link", "set", "tapdb0", "master", "brd0"]).unwrap();
    let added = tw.wait_for("probe_added", |v| v["code"] == "probe_added");
    assert!(
        added["message"].as_str().unwrap().contains("bridge"),
        "{added}"
    );
    assert_eq!(filters(&ns, "tapdb0"), 2);
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    tw.wait_stats("tapdb0", |t| u(t, "dst_mismatch_frames") == 3);
    ns.ip(&["link", "set", "tapdb0", "nomaster"]).unwrap();
    tw.wait_for("probe_removed", |v| v["code"] == "probe_removed");
    assert_eq!(filters(&ns, "tapdb0"), 0);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(of_type(&recs, "verdict")
        .iter()
        .all(|v| v["state"] != "BLACKOUT"));
    // Leaving the bridge is no removal (the bridge's own RTM_DELLINK about its port).
    assert!(of_type(&recs, "detached").is_empty(), "{recs:#?}");
    assert_eq!(u(summary_row(&recs, "tapdb0"), "dst_mismatch_frames"), 3);
    // A tap created on a bridge is attached with the full probe at once.
    let mut tw = watch(&ns, &[]);
    tw.wait_attached("tapdb0");
    ns.ip(&["link", "set", "tapdb0", "master", "brd0"]).unwrap();
    tw.wait_for("probe_added", |v| v["code"] == "probe_added");
    let (_, _, _) = tw.stop(libc::SIGINT);
    let _tap2 = VmTap::create(&ns, "tapdb1", TAP_LIBVIRT).unwrap();
    ns.ip(&["link", "set", "tapdb1", "master", "brd0"]).unwrap();
    let mut tw = watch(&ns, &[]);
    let att = tw.wait_attached("tapdb1");
    assert_eq!(
        (&att["mode"], &att["datapath"]),
        (&"bridged".into(), &"tc".into())
    );
    drop(tap);
}

/// A tap that appears while watched (a VM arriving, perhaps by migration) has its
/// per-frame probe before its `attached` record goes out: the RARP and a frame delivered to
/// the VM a moment later are both kernel-timed, with no time for a probe added on the
/// RARP. Once its VM has sent and been calm for --probe-linger, the probe goes.
#[test]
fn a_tap_that_appears_while_watched_is_timed_from_its_first_frame() {
    require_root();
    let ns = Netns::new("twd-new").unwrap();
    // A tap there from the start: once it is attached, the first look is over.
    let _there = VmTap::create(&ns, "tapdf9", TAP_LIBVIRT).unwrap();
    let mut tw = watch(&ns, &["--probe-linger", "0.3"]);
    tw.wait_attached("tapdf9");
    let tap = answering_tap(&ns, "tapdf0");
    let added = tw.wait_for("probe_added", |v| v["code"] == "probe_added");
    assert_eq!(added["ifname"], "tapdf0");
    let att = tw.wait_attached("tapdf0");
    assert_eq!(att["appeared"], true);
    assert_eq!(filters(&ns, "tapdf0"), 2, "ingress and egress");
    // QEMU's RARP and, at once, a frame the host answers: its reply is the first data
    // delivered to the VM.
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tap.send(&frames::icmp_echo_request(
        GUEST,
        TAP_LIBVIRT,
        VM_IP,
        HOST_IP,
        9,
        1,
        b"tapwatch",
    ))
    .unwrap();
    let inbound = tw.wait_for("inbound", |v| v["kind"] == "inbound");
    let removed = tw.wait_for("probe_removed", |v| v["code"] == "probe_removed");
    assert_eq!(removed["ifname"], "tapdf0");
    assert_eq!(filters(&ns, "tapdf0"), 0);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    let rarp = &frames(&recs, "tapdf0", "rarp")[0];
    let row = summary_row(&recs, "tapdf0");
    assert_eq!(row["switchover_ts"], rarp["ts"]);
    assert_eq!(u(row, "rarp_frames"), 1);
    let gap = row["inbound_gap_ms"].as_u64().unwrap();
    let between = ts_micros(&inbound) - ts_micros(rarp);
    assert!((0..=10_000).contains(&between), "{between} µs");
    assert_eq!(gap, (between / 1000) as u64, "{rarp} {inbound}");
}
