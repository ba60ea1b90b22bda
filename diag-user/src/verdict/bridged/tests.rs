use std::sync::Arc;

use super::{BridgeEars, Ears};
use crate::{
    model::{clock::Ts, mac::MacAddr, FrameRecord, Record, State},
    registry::Tap,
    verdict::{fixtures::*, Engine, EngineConfig},
};

/// The old node's gateway, the new node's, another VM on the L2.
const X: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x80, 0x00, 0x01]);
const Y: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0x81, 0x00, 0x01]);
const Z: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x09]);
const PEER: &str = "192.168.10.1";

/// A bridge that heard `heard` since the switch-over (or cannot tell: `None`).
struct Bridge(Option<bool>);

impl BridgeEars for Bridge {
    fn heard_since(&self, _: &Tap, _: MacAddr, _: Ts) -> Option<bool> {
        self.0
    }
}

fn engine(heard: Option<bool>) -> Engine {
    let mut e = Engine::new(EngineConfig {
        ears: Ears(Some(Arc::new(Bridge(heard)))),
        ..EngineConfig::default()
    });
    e.apply(&attached(0, "tap0", OLD, "bridged"));
    e.apply(&frame(1000, "tap0", "from_vm", "rarp", BCAST));
    e
}

fn data(ms: i64, from_vm: bool, mac: MacAddr, peer: &str) -> Record {
    let (src_mac, dst_mac) = if from_vm { (GUEST, mac) } else { (mac, GUEST) };
    let (src_ip, dst_ip) = if from_vm {
        ("10.65.0.2", peer)
    } else {
        (peer, "10.65.0.2")
    };
    Record::Frame(FrameRecord {
        ts: at(ms),
        ifname: "tap0".into(),
        direction: named(if from_vm { "from_vm" } else { "to_vm" }),
        kind: named(if from_vm { "dst_mismatch" } else { "inbound" }),
        src_mac,
        dst_mac,
        sender_ip: None,
        target_ip: None,
        src_ip: Some(src_ip.into()),
        dst_ip: Some(dst_ip.into()),
        na_flags: None,
        vlan: None,
        outer_vlan: None,
        dst_mismatch: from_vm,
        len: 98,
        data: Vec::new(),
    })
}

fn state(e: &Engine) -> State {
    e.tap("tap0").unwrap().state
}

/// The guest keeps the old node's gateway X for PEER, whose replies come from Y.
fn stranded(e: &mut Engine) {
    e.apply(&data(1100, true, X, PEER));
    e.apply(&data(1150, false, Y, PEER));
    e.apply(&data(1300, true, X, PEER));
}

#[test]
fn a_guest_on_the_old_nodes_gateway_is_a_blackout_until_it_sends_to_the_new() {
    let mut e = engine(Some(false));
    stranded(&mut e);
    assert_eq!(state(&e), State::Blackout);
    let t = e.tap("tap0").unwrap();
    assert_eq!(
        t.blackout.unwrap().start,
        at(1100),
        "from its first frame to X"
    );
    let d = t.diagnosis(at(1300));
    assert!(
        d.contains(&format!("The guest sends to gateway MAC {X}")),
        "{d}"
    );
    assert!(d.contains(&format!("its traffic comes from {Y}")), "{d}");
    assert!(
        !d.contains("PACKET_OTHERHOST"),
        "nothing is dropped here: {d}"
    );
    e.apply(&data(9300, true, Y, PEER));
    assert_eq!(state(&e), State::Recovered);
    let t = e.tap("tap0").unwrap();
    assert_eq!(t.blackout.unwrap().ms(at(0)), 8200);
    assert!(t.diagnosis(at(9300)).contains("Blackout of 8200 ms"));
}

/// The guest has one entry for its gateway: its frames (sampled) to the new gateway for
/// another peer it sent to the old one end the blackout; for a peer it never sent to the
/// old gateway (a host on its L2 whose MAC is that router's too) they do not.
#[test]
fn another_peer_moved_to_the_new_gateway_ends_it() {
    let other = "192.168.20.7";
    let mut e = engine(Some(false));
    e.apply(&data(1050, true, X, other));
    stranded(&mut e);
    assert_eq!(state(&e), State::Blackout);
    e.apply(&data(4000, true, Y, "10.65.0.9"));
    assert_eq!(state(&e), State::Blackout, "a peer never sent to X");
    e.apply(&data(5000, true, Y, other));
    assert_eq!(state(&e), State::Recovered);
    assert_eq!(e.tap("tap0").unwrap().blackout.unwrap().ms(at(0)), 3900);
}

#[test]
fn a_gateway_heard_since_the_switch_over_is_alive() {
    // Asymmetric routing, VRRP: X answers into the bridge, replies come from Y.
    let mut e = engine(Some(true));
    stranded(&mut e);
    assert_eq!(state(&e), State::Ok);
}

#[test]
fn vms_talking_on_one_l2_are_not_a_blackout() {
    let mut e = engine(Some(false));
    for ms in [1100, 1200, 1300] {
        e.apply(&data(ms, true, Z, "10.65.0.9"));
        e.apply(&data(ms + 10, false, Z, "10.65.0.9"));
    }
    assert_eq!(state(&e), State::Ok);
    assert!(e.tap("tap0").unwrap().peers.finding.is_none());
}

#[test]
fn before_the_switch_over_nothing_is_judged() {
    let mut e = Engine::new(EngineConfig {
        ears: Ears(Some(Arc::new(Bridge(Some(false))))),
        ..EngineConfig::default()
    });
    e.apply(&attached(0, "tap0", OLD, "bridged"));
    stranded(&mut e);
    assert_eq!(state(&e), State::Ok);
}

#[test]
fn without_a_forwarding_table_it_is_a_suspicion_in_words() {
    let mut e = engine(None);
    stranded(&mut e);
    assert_eq!(state(&e), State::Ok);
    let d = e.tap("tap0").unwrap().diagnosis(at(1300));
    assert!(d.contains("may be the old node's"), "{d}");
}
