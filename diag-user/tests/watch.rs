//! `tapwatch watch --json` against the real kernel: each test has its own network
//! namespace and taps it opens through /dev/net/tun, playing the VM. Here the counting in
//! every datapath and taps coming, going and changing; the blackout's timing is in
//! blackout.rs, attaching, cleaning up and privileges in attach.rs.

mod common;

use std::{net::Ipv4Addr, time::Duration};

use common::*;
use diag_user::frames;
use diag_user::{
    lab::netns::{Netns, VmTap},
    model::mac::MacAddr,
};

/// The eBPF datapaths report `backend: ebpf`.
fn backend_of(datapath: &str) -> &'static str {
    if datapath == "pcap" {
        "pcap"
    } else {
        "ebpf"
    }
}

every_datapath!(
    counts_every_kind_exactly,
    follows_taps_that_appear_and_disappear,
    traffic_is_untouched
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

    let sent = frames_of_every_kind();
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
    // On a routed tap without VLAN devices the kernel takes a tag off (and forgets its id)
    // before anything but a per-frame hook sees the frame: the drop-driven datapath counts
    // tagged ARP and RARP, without their VLAN.
    let tagged = if datapath == "drops" { 0 } else { 1 };
    assert_announce_and_arp_records(&recs, tap.name(), tagged);
    assert_mismatches_sampled(&recs, tap.name());
    assert_timestamps_in_kernel_order(&recs);
}

/// What counts_every_kind_exactly sends, from the guest: 7 RARP (2 tagged), 2 GARP
/// requests and a GARP reply, 3 ARP requests, an ARP probe and a tagged ARP request, 4
/// frames to a MAC the tap does not have and 6 to its own.
fn frames_of_every_kind() -> Vec<Vec<u8>> {
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
    sent
}

/// The RARP, GARP and ARP frame records of frames_of_every_kind on `ifname`; `tagged` is
/// 1 where the datapath sees VLAN tags, 0 where the kernel took them off first.
fn assert_announce_and_arp_records(recs: &[serde_json::Value], ifname: &str, tagged: usize) {
    let rarps = frames(recs, ifname, "rarp");
    assert_eq!(rarps.len(), 7);
    let r = rarps[0];
    assert_eq!(r["direction"], "from_vm");
    assert_eq!(r["src_mac"], "fa:16:3e:aa:bb:cc");
    assert_eq!(r["dst_mac"], "ff:ff:ff:ff:ff:ff");
    assert_eq!(r["sender_ip"], "0.0.0.0");
    assert_eq!(r["target_ip"], "0.0.0.0");
    assert!(r.get("vlan").is_none());
    assert_eq!(
        rarps.iter().filter(|r| r["vlan"] == 100).count(),
        2 * tagged
    );

    let garps = frames(recs, ifname, "garp");
    assert_eq!(garps.len(), 3, "a GARP is reported once, as garp");
    assert!(garps
        .iter()
        .all(|g| g["sender_ip"] == "10.65.0.2" && g["target_ip"] == "10.65.0.2"));
    let reqs = frames(recs, ifname, "arp_request");
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs.iter().filter(|r| r["vlan"] == 7).count(), tagged);
    assert_eq!(
        reqs.iter().filter(|r| r["sender_ip"] == "0.0.0.0").count(),
        1
    );
    assert_eq!(
        frames(recs, ifname, "arp_reply").len(),
        0,
        "the GARP reply is a garp"
    );
}

/// Four mismatches within well under 100 ms: sampled, at least one, at most one per CPU.
fn assert_mismatches_sampled(recs: &[serde_json::Value], ifname: &str) {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mism = frames(recs, ifname, "dst_mismatch");
    assert!(
        !mism.is_empty() && mism.len() <= cpus,
        "{} samples",
        mism.len()
    );
    assert_eq!(mism[0]["dst_mac"], "00:61:fe:ed:ca:fe");
    assert_eq!(mism[0]["len"], 98);
}

/// Timestamps: RFC 3339 UTC with microseconds, frames in kernel order.
fn assert_timestamps_in_kernel_order(recs: &[serde_json::Value]) {
    for r in recs {
        let ts = r["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");
    }
    let frame_ts: Vec<&str> = of_type(recs, "frame")
        .iter()
        .map(|f| f["ts"].as_str().unwrap())
        .collect();
    assert!(frame_ts.windows(2).all(|w| w[0] <= w[1]), "{frame_ts:?}");
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
