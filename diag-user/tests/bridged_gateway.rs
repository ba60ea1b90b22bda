//! The bridged stale gateway on the real kernel, in every datapath: a VM on a Linux bridge
//! (KubeVirt's bridge binding) keeps sending a peer's traffic to the old node's gateway MAC
//! while the peer's traffic reaches it from the new node's, and nothing from the old
//! gateway enters the bridge: a BLACKOUT the host cannot see as drops. The same traffic
//! with the old gateway still answering into the bridge is no blackout. Each test has its
//! own namespace: a bridge with the VM's tap and an uplink tap playing the network.

mod common;

use std::net::Ipv4Addr;

use common::*;
use diag_user::{
    frames,
    lab::netns::{Netns, VmTap},
    model::mac::MacAddr,
};
use serde_json::Value;

every_datapath!(
    old_gateway_with_replies_from_the_new_is_a_blackout,
    old_gateway_still_heard_is_no_blackout
);

const X: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x80, 0x00, 0x01]);
const Y: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x81, 0x00, 0x01]);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);

/// A bridge `br0` with the VM's tap `tapb0` and an uplink `upb0` (frames written into its
/// descriptor enter the bridge from the network).
fn bridge(tag: &str) -> (Netns, VmTap, VmTap) {
    require_root();
    let ns = Netns::new(tag).unwrap();
    ns.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    ns.ip(&["link", "set", "br0", "up"]).unwrap();
    let vm = VmTap::create(&ns, "tapb0", TAP_LIBVIRT).unwrap();
    let up = VmTap::create(&ns, "upb0", MacAddr([2, 0, 0, 0, 0, 0xaa])).unwrap();
    for dev in ["tapb0", "upb0"] {
        ns.ip(&["link", "set", dev, "master", "br0"]).unwrap();
    }
    (ns, vm, up)
}

/// The migrated VM: QEMU's RARP, then the peer's traffic to `to`; the peer's arrives from Y.
/// `x_alive`: the old gateway X speaks into the bridge after the switch-over.
fn play(tw: &mut Tapwatch, vm: &VmTap, up: &VmTap, to: MacAddr, x_alive: bool) {
    vm.send(&frames::rarp_announce(GUEST, None)).unwrap();
    // libpcap sees each direction on a thread of its own: the RARP is seen first.
    tw.wait_for("the RARP", |v| v["type"] == "frame" && v["kind"] == "rarp");
    if x_alive {
        up.send(&frames::arp_request(
            X,
            PEER,
            "192.168.10.77".parse().unwrap(),
        ))
        .unwrap();
    }
    vm.send(&frames::udp(GUEST, to, VM_IP, PEER, 98)).unwrap();
    up.send(&frames::udp(Y, GUEST, PEER, VM_IP, 98)).unwrap();
    tw.wait_for("the first frame delivered to the VM", |v| {
        v["type"] == "frame" && v["kind"] == "inbound"
    });
    // Its frames are sampled (one per 100 ms): a few more, 120 ms apart.
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(120));
        vm.send(&frames::udp(GUEST, to, VM_IP, PEER, 98)).unwrap();
    }
}

fn old_gateway_with_replies_from_the_new_is_a_blackout(datapath: &str) {
    let (ns, vm, up) = bridge("tw-brgw");
    let mut tw = json_watch_with(&ns, datapath, &["--iface", "tapb0"]);
    tw.wait_attached("tapb0");
    play(&mut tw, &vm, &up, X, false);
    let v = tw.wait_for("BLACKOUT", |v| {
        v["type"] == "verdict" && v["state"] == "BLACKOUT"
    });
    let d = v["diagnosis"].as_str().unwrap();
    assert!(
        d.contains(&format!("The guest sends to gateway MAC {X}")),
        "{d}"
    );
    assert!(d.contains(&format!("its traffic comes from {Y}")), "{d}");
    // The guest re-learns its gateway: the new node's (sampled frames: a few).
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(120));
        vm.send(&frames::udp(GUEST, Y, VM_IP, PEER, 98)).unwrap();
    }
    let v = tw.wait_for("RECOVERED", |v| {
        v["type"] == "verdict" && v["state"] == "RECOVERED"
    });
    assert!(v["blackout_ms"].as_u64().unwrap() >= 400, "{v:#}");
    let (_, recs, _) = tw.stop(libc::SIGTERM);
    let blackouts = recs
        .iter()
        .filter(|v: &&Value| v["type"] == "verdict" && v["state"] == "BLACKOUT")
        .count();
    assert_eq!(blackouts, 1);
}

fn old_gateway_still_heard_is_no_blackout(datapath: &str) {
    let (ns, vm, up) = bridge("tw-brok");
    let mut tw = json_watch_with(&ns, datapath, &["--iface", "tapb0"]);
    tw.wait_attached("tapb0");
    // The old gateway is alive on this L2 (a second router, asymmetric return path): it
    // speaks into the bridge after the VM's switch-over.
    play(&mut tw, &vm, &up, X, true);
    tw.wait_stats("tapb0", |t| u(t, "from_vm_frames") >= 6);
    let (_, recs, _) = tw.stop(libc::SIGTERM);
    assert!(
        !recs
            .iter()
            .any(|v| v["type"] == "verdict" && v["state"] == "BLACKOUT"),
        "{recs:#?}"
    );
    let row = summary_row(&recs, "tapb0");
    assert_eq!(row["state"], "OK", "{row:#}");
}
