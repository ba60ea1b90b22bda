//! `tapwatch watch --json` against the real kernel: each test has its own network
//! namespace and taps it opens through /dev/net/tun, playing the VM.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::*;
use diag_user::{
    lab::{
        frames,
        netns::{Netns, VmTap},
    },
    model::mac::MacAddr,
};

/// `tapwatch watch --json` on eBPF (the default datapath unless `extra` names one).
fn json_watch(ns: &Netns, extra: &[&str]) -> Tapwatch {
    let mut args = vec!["watch", "--json", "--interval", "0.1"];
    if !extra.contains(&"--datapath") {
        args.extend(["--backend", "ebpf"]);
    }
    args.extend_from_slice(extra);
    Tapwatch::start(ns, &args)
}

fn json_watch_with(ns: &Netns, datapath: &str, extra: &[&str]) -> Tapwatch {
    let mut args = vec![
        "watch",
        "--json",
        "--interval",
        "0.1",
        "--datapath",
        datapath,
    ];
    args.extend_from_slice(extra);
    Tapwatch::start(ns, &args)
}

/// The eBPF datapaths report `backend: ebpf`.
fn backend_of(datapath: &str) -> &'static str {
    if datapath == "pcap" {
        "pcap"
    } else {
        "ebpf"
    }
}

/// The core counting tests run against every datapath.
macro_rules! every_datapath {
    ($($name:ident),*) => {$(
        mod $name {
            #[test]
            fn drops() {
                super::$name("drops")
            }
            #[test]
            fn tc() {
                super::$name("tc")
            }
            #[test]
            fn pcap() {
                super::$name("pcap")
            }
        }
    )*};
}

every_datapath!(
    counts_every_kind_exactly,
    mac_change_turns_frames_to_the_old_mac_into_mismatches,
    follows_taps_that_appear_and_disappear,
    traffic_is_untouched,
    inbound_is_timed_from_the_rarp,
    stale_frames_racing_the_interval_stay_with_their_window
);

fn counts_every_kind_exactly(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-kinds").unwrap();
    let tap = VmTap::create(&ns, "tap0a1b2c3d-4e", TAP_LIBVIRT).unwrap();
    let mut tw = json_watch_with(&ns, datapath, &[]);
    let attached = tw.wait_attached(tap.name());
    assert_eq!(attached["mac"], "fe:16:3e:aa:bb:cc");
    assert_eq!(attached["mode"], "routed");
    assert_eq!(attached["backend"], backend_of(datapath));
    assert_eq!(attached["datapath"], datapath);

    let other = Ipv4Addr::new(10, 65, 0, 99);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    sent.extend((0..5).map(|_| frames::rarp_announce(GUEST, None)));
    sent.extend((0..2).map(|_| frames::rarp_announce(GUEST, Some(100))));
    sent.extend((0..2).map(|_| frames::garp(GUEST, VM_IP)));
    sent.push(frames::arp(
        2,
        frames::BROADCAST,
        GUEST,
        VM_IP,
        frames::BROADCAST,
        VM_IP,
        None,
    ));
    sent.extend((0..3).map(|_| frames::arp_request(GUEST, VM_IP, other)));
    // An ARP probe (sender 0.0.0.0) asks; it does not announce.
    sent.push(frames::arp_request(GUEST, Ipv4Addr::UNSPECIFIED, VM_IP));
    sent.push(frames::arp(
        1,
        frames::BROADCAST,
        GUEST,
        VM_IP,
        MacAddr::default(),
        other,
        Some(7),
    ));
    sent.extend((0..4).map(|_| frames::udp(GUEST, TAP_CALICO, VM_IP, other, 98)));
    sent.extend((0..6).map(|_| frames::udp(GUEST, TAP_LIBVIRT, VM_IP, other, 1000)));
    for f in &sent {
        tap.send(f).unwrap();
    }
    let n = sent.len() as u64;
    let bytes: u64 = sent.iter().map(|f| f.len() as u64).sum();
    tw.wait_stats(tap.name(), |t| u(t, "from_vm_frames") == n);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{status:?}");

    let row = summary_row(&recs, tap.name());
    let expect = [
        ("from_vm_frames", n),
        ("from_vm_bytes", bytes),
        ("to_vm_frames", 0),
        ("to_vm_bytes", 0),
        ("dst_mismatch_frames", 4),
        ("rarp_frames", 7),
        ("garp_frames", 3),
        ("arp_requests", 2 + 3 + 1 + 1),
        ("arp_replies", 1),
        ("events_lost", 0),
    ];
    for (field, want) in expect {
        assert_eq!(u(row, field), want, "{field} in {row:#}");
    }

    let rarps = frames(&recs, tap.name(), "rarp");
    assert_eq!(rarps.len(), 7);
    let r = rarps[0];
    assert_eq!(r["direction"], "from_vm");
    assert_eq!(r["src_mac"], "fa:16:3e:aa:bb:cc");
    assert_eq!(r["dst_mac"], "ff:ff:ff:ff:ff:ff");
    assert_eq!(r["sender_ip"], "0.0.0.0");
    assert_eq!(r["target_ip"], "0.0.0.0");
    assert!(r.get("vlan").is_none());
    // On a routed tap without VLAN devices the kernel takes a tag off (and forgets its id)
    // before anything but a per-frame hook sees the frame: the drop-driven datapath counts
    // tagged ARP and RARP, without their VLAN.
    let tagged = if datapath == "drops" { 0 } else { 1 };
    assert_eq!(
        rarps.iter().filter(|r| r["vlan"] == 100).count(),
        2 * tagged
    );

    let garps = frames(&recs, tap.name(), "garp");
    assert_eq!(garps.len(), 3, "a GARP is reported once, as garp");
    assert!(garps
        .iter()
        .all(|g| g["sender_ip"] == "10.65.0.2" && g["target_ip"] == "10.65.0.2"));
    let reqs = frames(&recs, tap.name(), "arp_request");
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs.iter().filter(|r| r["vlan"] == 7).count(), tagged);
    assert_eq!(
        reqs.iter().filter(|r| r["sender_ip"] == "0.0.0.0").count(),
        1
    );
    assert_eq!(
        frames(&recs, tap.name(), "arp_reply").len(),
        0,
        "the GARP reply is a garp"
    );

    // Four mismatches within well under 100 ms: sampled, at least one, at most one per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mism = frames(&recs, tap.name(), "dst_mismatch");
    assert!(
        !mism.is_empty() && mism.len() <= cpus,
        "{} samples",
        mism.len()
    );
    assert_eq!(mism[0]["dst_mac"], "00:61:fe:ed:ca:fe");
    assert_eq!(mism[0]["len"], 98);

    // Timestamps: RFC 3339 UTC with microseconds, frames in kernel order.
    for r in &recs {
        let ts = r["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }
    let frame_ts: Vec<&str> = of_type(&recs, "frame")
        .iter()
        .map(|f| f["ts"].as_str().unwrap())
        .collect();
    assert!(frame_ts.windows(2).all(|w| w[0] <= w[1]), "{frame_ts:?}");
}

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

#[test]
fn joining_a_bridge_is_reported() {
    require_root();
    let ns = Netns::new("tw-bridge").unwrap();
    ns.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    let tap = VmTap::create(&ns, "vnet7", TAP_LIBVIRT).unwrap();
    let mut tw = json_watch(&ns, &[]);
    let att = tw.wait_attached("vnet7");
    assert_eq!(att["mode"], "routed");
    ns.ip(&["link", "set", "vnet7", "master", "br0"]).unwrap();
    let change = tw.wait_for("mode_change", |v| v["type"] == "mode_change");
    assert_eq!(
        (&change["ifname"], &change["old_mode"], &change["new_mode"]),
        (&"vnet7".into(), &"routed".into(), &"bridged".into())
    );
    // Frames to other MACs are ordinary switched traffic now: counted, never a blackout.
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    tw.wait_stats("vnet7", |t| u(t, "dst_mismatch_frames") == 3);
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    let row = summary_row(&recs, "vnet7");
    assert_eq!(
        (&row["mode"], &row["state"]),
        (&"bridged".into(), &"OK".into())
    );
    assert!(of_type(&recs, "verdict")
        .iter()
        .all(|v| v["state"] != "BLACKOUT"));
}

#[test]
fn names_vms_from_libvirt() {
    require_root();
    let ns = Netns::new("tw-virt").unwrap();
    let dir = std::env::temp_dir().join(format!("tw-libvirt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/libvirt/instance-0000002a.xml"
    );
    std::fs::copy(fixture, dir.join("instance-0000002a.xml")).unwrap();
    // The fixture's tap, with the fixed Calico MAC rather than fe:+guest MAC.
    let tap = VmTap::create(&ns, "tap4f1c2a9e-07", TAP_CALICO).unwrap();
    let mut tw = json_watch(
        &ns,
        &["--libvirt-dir", dir.to_str().unwrap(), "--duration", "0.5"],
    );
    tw.wait_attached(tap.name());
    let (status, recs, _) = tw.finish();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success());
    let v = of_type(&recs, "verdict")[0];
    assert_eq!(v["vm"], "web-frontend-3");
    let row = summary_row(&recs, tap.name());
    assert_eq!(row["vm"], "web-frontend-3");
}

fn follows_taps_that_appear_and_disappear(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-churn").unwrap();
    let first = VmTap::create(&ns, "vnet0", TAP_LIBVIRT).unwrap();
    let mut tw = json_watch_with(&ns, datapath, &[]);
    tw.wait_attached("vnet0");
    first.send(&frames::rarp_announce(GUEST, None)).unwrap();

    // A VM migrating in: its tap appears while tapwatch runs.
    let second = VmTap::create(&ns, "tapnew1", TAP_CALICO).unwrap();
    tw.wait_attached("tapnew1");
    // TUNSETIFF gives the tap a random MAC; the MAC Nova sets comes as a change (unless
    // it was set before tapwatch looked).
    if !tw
        .seen
        .iter()
        .any(|v| v["type"] == "attached" && v["mac"] == "00:61:fe:ed:ca:fe")
    {
        tw.wait_for("tapnew1's MAC", |v| {
            v["type"] == "mac_change" && v["new_mac"] == "00:61:fe:ed:ca:fe"
        });
    }
    second.send(&frames::garp(GUEST, VM_IP)).unwrap();
    second
        .send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 60))
        .unwrap();
    tw.wait_stats("tapnew1", |t| u(t, "from_vm_frames") == 2);
    tw.wait_stats("vnet0", |t| u(t, "rarp_frames") == 1);

    // A VM migrating out: its tap is deleted under tapwatch.
    ns.ip(&["link", "del", "vnet0"]).unwrap();
    let det = tw.wait_for("detached", |v| v["type"] == "detached");
    assert_eq!(det["ifname"], "vnet0");
    assert_eq!(det["reason"], "interface removed");
    // Still alive and counting on the other tap.
    second.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("tapnew1", |t| u(t, "garp_frames") == 2);
    let later = tw.wait_for("stats without vnet0", |v| v["type"] == "stats");
    assert!(later["taps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["ifname"] != "vnet0"));

    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    let gone = summary_row(&recs, "vnet0");
    assert_eq!(gone["detached"], true);
    assert_eq!(u(gone, "rarp_frames"), 1);
    assert_eq!(u(gone, "from_vm_frames"), 1);
    let new = summary_row(&recs, "tapnew1");
    assert_eq!(new["detached"], false);
    assert_eq!(
        (u(new, "garp_frames"), u(new, "dst_mismatch_frames")),
        (2, 1)
    );
    assert_eq!(u(new, "from_vm_frames"), 3);
    drop(first);
}

/// The probe observes only: the host answers exactly as without it.
fn traffic_is_untouched(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-ping").unwrap();
    let tap = answering_tap(&ns, "tapping");

    // One round: a ping to the tap's MAC, one to a MAC it does not have, an ARP request.
    let round = |seq: u16| {
        let ping =
            |dst, seq| frames::icmp_echo_request(GUEST, dst, VM_IP, HOST_IP, 7, seq, b"tapwatch");
        let is_reply = |seq: u16| {
            move |f: &[u8]| {
                f.len() >= 42 && f[23] == 1 && f[34] == 0 && f[40..42] == seq.to_be_bytes()
            }
        };
        tap.send(&ping(TAP_LIBVIRT, seq)).unwrap();
        let reply = tap
            .recv_matching(Duration::from_secs(2), is_reply(seq))
            .unwrap()
            .expect("echo reply");
        tap.send(&ping(TAP_CALICO, seq + 1)).unwrap();
        let lost = tap
            .recv_matching(Duration::from_millis(300), is_reply(seq + 1))
            .unwrap();
        tap.send(&frames::arp_request(GUEST, VM_IP, HOST_IP))
            .unwrap();
        let arp = tap
            .recv_matching(Duration::from_secs(2), |f| {
                f.len() >= 22 && f[12..14] == [8, 6] && f[21] == 2
            })
            .unwrap()
            .expect("arp reply");
        (reply, lost, arp)
    };
    let before = round(1);
    let mut tw = json_watch_with(&ns, datapath, &[]);
    tw.wait_attached("tapping");
    let during = round(1);
    tw.wait_stats("tapping", |t| {
        u(t, "from_vm_frames") == 3 && u(t, "to_vm_frames") == 2
    });
    let (status, recs, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    let after = round(1);

    for (name, r) in [("with tapwatch", &during), ("after tapwatch", &after)] {
        // Same addresses, same ICMP reply (IP id and checksum aside).
        assert_eq!(r.0[..18], before.0[..18], "{name}: reply header");
        assert_eq!(r.0[34..], before.0[34..], "{name}: ICMP reply");
        assert!(
            r.1.is_none(),
            "{name}: a frame to a foreign MAC must stay dropped"
        );
        assert_eq!(r.2, before.2, "{name}: ARP reply");
    }
    assert!(before.1.is_none());
    let row = summary_row(&recs, "tapping");
    assert_eq!(u(row, "from_vm_frames"), 3);
    assert_eq!(u(row, "dst_mismatch_frames"), 1);
    assert_eq!(u(row, "arp_requests"), 1);
    assert_eq!(u(row, "to_vm_frames"), 2, "{row:#}");
    assert_eq!(u(row, "arp_replies"), 1);
    let reply = &frames(&recs, "tapping", "arp_reply")[0];
    assert_eq!(reply["direction"], "to_vm");
    assert_eq!(reply["src_mac"], "fe:16:3e:aa:bb:cc");
    assert_eq!(reply["sender_ip"], "10.65.0.1");
}

/// A host with many VMs under a 1024-descriptor soft limit: each tap needs two, so
/// tapwatch lifts its soft limit to the hard one. Here the soft limit (64) is below what
/// 40 taps need.
#[test]
fn many_taps_under_a_low_descriptor_limit() {
    require_root();
    let ns = Netns::new("tw-fds").unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("fdtap{i}")).collect();
    let taps: Vec<VmTap> = names
        .iter()
        .map(|n| VmTap::create(&ns, n, TAP_LIBVIRT).unwrap())
        .collect();
    let mut tw = Tapwatch::start_via(
        &ns,
        &["prlimit", "--nofile=64:4096", "--"],
        &["watch", "--json", "--interval", "0.1", "--iface", "fdtap*"],
    );
    for n in &names {
        tw.wait_attached(n);
    }
    taps[39].send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("fdtap39", |t| u(t, "garp_frames") == 1);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert_eq!(of_type(&recs, "attached").len(), 40, "{err}");
}

/// `tc filter show dev IF ingress|egress`: tapwatch's clsact filters.
fn tc_filters(ns: &Netns, ifname: &str, dir: &str) -> String {
    ns.exec("tc", &["filter", "show", "dev", ifname, dir])
        .unwrap()
}

fn tcx_names(ns: &Netns, ifname: &str) -> Vec<String> {
    let ifname = ifname.to_string();
    ns.enter(move || diag_user::collect::ebpf::tcx_program_names(&ifname).expect("query tcx"))
        .unwrap()
}

#[test]
fn nothing_stays_attached_after_exit() {
    require_root();
    let ns = Netns::new("tw-exit").unwrap();
    let tap = VmTap::create(&ns, "tapexit", TAP_LIBVIRT).unwrap();

    // --duration: ends by itself with a summary and exit code 0.
    let mut tw = json_watch(
        &ns,
        &[
            "--datapath",
            "tc",
            "--attach-mode",
            "tcx",
            "--duration",
            "1",
        ],
    );
    tw.wait_attached("tapexit");
    assert_eq!(tcx_names(&ns, "tapexit"), ["tap_ingress", "tap_egress"]);
    let (status, recs, _) = tw.finish();
    assert!(status.success());
    assert_eq!(of_type(&recs, "summary").len(), 1);
    assert!(tcx_names(&ns, "tapexit").is_empty());

    // SIGTERM.
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "tcx"]);
    tw.wait_attached("tapexit");
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(of_type(&recs, "summary").len(), 1);
    assert!(tcx_names(&ns, "tapexit").is_empty());

    // SIGKILL: TCX links die with their file descriptors.
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "tcx"]);
    tw.wait_attached("tapexit");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(tcx_names(&ns, "tapexit").is_empty());
    drop(tap);
}

/// Kernels before 6.6 have no TCX, and large hosts choose clsact: forced here.
#[test]
fn clsact_attach_counts_and_cleans_up() {
    require_root();
    let ns = Netns::new("tw-clsact").unwrap();
    let tap = VmTap::create(&ns, "tapcls", TAP_CALICO).unwrap();
    let filters = |dir: &str| tc_filters(&ns, "tapcls", dir);
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "clsact"]);
    tw.wait_attached("tapcls");
    assert!(
        filters("ingress").contains("tap_ingress"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("tap_egress"),
        "{}",
        filters("egress")
    );
    assert!(tcx_names(&ns, "tapcls").is_empty());
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 64))
            .unwrap();
    }
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tw.wait_stats("tapcls", |t| u(t, "from_vm_frames") == 4);
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    let row = summary_row(&recs, "tapcls");
    assert_eq!(
        (u(row, "dst_mismatch_frames"), u(row, "rarp_frames")),
        (3, 1)
    );
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");
}

/// clsact filters outlive their process: a killed run's cleanup helper removes them; if
/// the helper is killed too, the next run removes them before attaching, so nothing is
/// counted twice and nothing is left after it.
#[test]
fn clsact_filters_of_a_killed_run_are_removed() {
    require_root();
    let ns = Netns::new("tw-kill").unwrap();
    let tap = VmTap::create(&ns, "tapkill", TAP_LIBVIRT).unwrap();
    let filters = |dir: &str| tc_filters(&ns, "tapkill", dir);
    let args = ["--datapath", "tc", "--attach-mode", "clsact"];

    // SIGKILL of the run alone: its helper sees the pipe close and removes the filters.
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    assert!(filters("ingress").contains("tap_ingress"));
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    wait_gone(helper);
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");

    // SIGKILL of both (kill -9 of the process group): the filters stay...
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    // SAFETY: kill(2) of a process of this test.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    wait_gone(helper);
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(filters("ingress").contains("tap_ingress"));

    // ...until the next run, which removes them before it attaches.
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    // One filter line per filter ("… handle 0x1 tap_ingress … name tap_ingress …").
    let count = |dir: &str| {
        filters(dir)
            .lines()
            .filter(|l| l.contains(" handle "))
            .count()
    };
    assert_eq!((count("ingress"), count("egress")), (1, 1));
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("tapkill", |t| u(t, "garp_frames") == 1);
    let (status, recs, err) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(err.contains("was killed"), "{err}");
    assert_eq!(u(summary_row(&recs, "tapkill"), "from_vm_frames"), 1);
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");
}

#[test]
fn no_matching_tap_is_not_an_error() {
    require_root();
    let ns = Netns::new("tw-none").unwrap();
    let mut tw = json_watch(&ns, &["--iface", "vm-*"]);
    // Readiness without a tap: the first stats record, with no rows.
    let stats = tw.wait_for("empty stats", |v| v["type"] == "stats");
    assert_eq!(stats["taps"].as_array().unwrap().len(), 0);
    let _ignored = VmTap::create(&ns, "tapother", TAP_LIBVIRT).unwrap();
    let tap = VmTap::create(&ns, "vm-a", TAP_LIBVIRT).unwrap();
    tw.wait_attached("vm-a");
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tw.wait_stats("vm-a", |t| u(t, "rarp_frames") == 1);
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(stderr.contains("no interface matches vm-*"), "{stderr}");
    assert!(of_type(&recs, "attached")
        .iter()
        .all(|a| a["ifname"] == "vm-a"));
}

#[test]
fn missing_privileges_say_what_to_do() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([env!("CARGO_BIN_EXE_tapwatch"), "watch", "--json"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(err.contains("sudo"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `--backend auto` (the default) without the right to load eBPF: libpcap, saying why.
#[test]
fn falls_back_to_libpcap_when_ebpf_cannot_load() {
    require_root();
    let ns = Netns::new("tw-fallback").unwrap();
    let tap = VmTap::create(&ns, "tapfb0", TAP_LIBVIRT).unwrap();
    // Only CAP_NET_RAW: enough for libpcap, not for BPF.
    let drop_to_raw = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_raw",
        "--ambient-caps=-all,+net_raw",
    ];
    let mut tw = Tapwatch::start_via(&ns, &drop_to_raw, &["watch", "--json", "--interval", "0.1"]);
    let att = tw.wait_attached("tapfb0");
    assert_eq!(att["backend"], "pcap");
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 64))
        .unwrap();
    tw.wait_stats("tapfb0", |t| u(t, "from_vm_frames") == 2);
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(
        stderr.contains("eBPF is not available here") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert!(
        stderr.contains("capturing with libpcap instead"),
        "{stderr}"
    );
    let row = summary_row(&recs, "tapfb0");
    assert_eq!(
        (u(row, "rarp_frames"), u(row, "dst_mismatch_frames")),
        (1, 1)
    );
}

/// Another tool's clsact qdisc on the tap is used, not an error.
#[test]
fn clsact_tolerates_an_existing_qdisc() {
    require_root();
    let ns = Netns::new("tw-qdisc").unwrap();
    let _tap = VmTap::create(&ns, "tapqd0", TAP_LIBVIRT).unwrap();
    ns.exec("tc", &["qdisc", "add", "dev", "tapqd0", "clsact"])
        .unwrap();
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "clsact"]);
    tw.wait_attached("tapqd0");
    let (status, _, stderr) = tw.stop(libc::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("cannot"), "{stderr}");
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

    let verdicts = of_type(&recs, "verdict");
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
    let mism = frames(&recs, "taprace0", "dst_mismatch");
    let matched = frames(&recs, "taprace0", "dst_match");
    assert_eq!(
        (mism.len(), matched.len()),
        (2, 2),
        "{mism:#?} {matched:#?}"
    );
    for (k, (m, d)) in mism.iter().zip(&matched).enumerate() {
        assert_eq!(verdicts[1 + 2 * k]["ts"], m["ts"], "blackout {k}");
        assert_eq!(verdicts[2 + 2 * k]["ts"], d["ts"], "recovery {k}");
    }
    let row = summary_row(&recs, "taprace0");
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(u(row, "dst_mismatch_frames"), 5);
    assert_eq!(
        row.get("mismatch_since"),
        Some(&serde_json::Value::Null),
        "the window is closed: {row:#}"
    );
}
