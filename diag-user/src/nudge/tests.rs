use std::net::IpAddr;

use super::{
    plan::{plan, Asked, Refusal},
    GatewayArg, Gateways,
};
use crate::{
    model::{
        mac::MacAddr,
        nudge::{AddrSource, NudgeTrigger},
        Direction, FrameKind, Mode,
    },
    registry::{Blackout, Tap, TapKey},
    verdict::fixtures::at,
};

const TAP: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);
const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
const OLD: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn gw(args: &[&str]) -> Gateways {
    let a: Vec<GatewayArg> = args.iter().map(|s| s.parse().unwrap()).collect();
    Gateways::new(&a).unwrap()
}

/// A routed tap whose guest sends to OLD since 1 s, its frames having said its address.
fn stranded() -> Tap {
    let mut t = Tap::new(TapKey::own(7), "tap0", Some(TAP), Mode::Routed, at(0));
    t.blackout = Some(Blackout {
        start: at(1000),
        end: None,
        stale_mac: OLD,
    });
    t.addrs.mac = Some(GUEST);
    t.addrs.ip = Some(ip("10.65.0.2"));
    t
}

const OPERATOR: Asked = Asked {
    trigger: NudgeTrigger::Operator,
    force: false,
};
const REMEDIATE: Asked = Asked {
    trigger: NudgeTrigger::Remediate,
    force: false,
};

#[test]
fn the_frame_claims_the_gateway_at_the_taps_mac_for_the_guest_only() {
    let p = plan(&stranded(), &gw(&["169.254.1.1"]), OPERATOR, &[]).unwrap();
    assert_eq!(p.gateway, (ip("169.254.1.1"), AddrSource::Flag));
    assert_eq!(p.guest_ip, (ip("10.65.0.2"), AddrSource::StaleFrames));
    let f = &p.frame;
    assert_eq!(&f[0..6], &GUEST.0, "to the guest's MAC, never broadcast");
    assert_eq!(&f[6..12], &TAP.0, "from the tap's MAC");
    let c = diag_common::classify(f, false, Direction::ToVm);
    assert_eq!(c.kind, Some(FrameKind::ArpRequest));
    let arp = diag_common::parse_arp(f, 14).unwrap();
    assert_eq!(arp.sender_mac, TAP.0);
    assert_eq!(arp.sender_ip, [169, 254, 1, 1]);
    assert_eq!(arp.target_ip, [10, 65, 0, 2]);
}

#[test]
fn never_on_a_bridge_never_without_a_window_unless_forced() {
    let mut t = stranded();
    t.mode = Mode::Bridged;
    let g = gw(&["169.254.1.1"]);
    assert!(matches!(
        plan(&t, &g, OPERATOR, &[]),
        Err(Refusal::Bridged(_))
    ));
    let forced = Asked {
        force: true,
        ..OPERATOR
    };
    assert!(
        matches!(plan(&t, &g, forced, &[]), Err(Refusal::Bridged(_))),
        "not even forced"
    );
    let mut t = stranded();
    t.blackout.as_mut().unwrap().end = Some(at(2000));
    assert!(matches!(
        plan(&t, &g, OPERATOR, &[]),
        Err(Refusal::NoStaleWindow(_))
    ));
    assert!(plan(&t, &g, forced, &[]).is_ok());
}

#[test]
fn the_gateway_is_never_guessed() {
    let mut t = stranded();
    let none = Gateways::default();
    let e = plan(&t, &none, OPERATOR, &[]).unwrap_err();
    assert!(e.to_string().contains("give --gateway"), "{e}");
    // The guest's broadcast requests: one address is its gateway…
    t.addrs.asked = vec![ip("169.254.1.1")];
    assert_eq!(
        plan(&t, &none, OPERATOR, &[]).unwrap().gateway.1,
        AddrSource::GuestProbe
    );
    // …two are a doubt, said with both.
    t.addrs.asked.push(ip("10.65.0.9"));
    let e = plan(&t, &none, OPERATOR, &[]).unwrap_err().to_string();
    assert!(e.contains("169.254.1.1, 10.65.0.9"), "{e}");
    // Its unicast probe of the stale entry settles it.
    t.addrs.stale_probe = Some(ip("169.254.1.1"));
    let p = plan(&t, &none, OPERATOR, &[]).unwrap();
    assert_eq!(p.gateway, (ip("169.254.1.1"), AddrSource::GuestProbe));
}

#[test]
fn subnets_pick_the_guests_gateway() {
    let g = gw(&[
        "10.65.0.0/16=10.65.0.1",
        "10.65.7.0/24=10.65.7.1",
        "192.0.2.1",
    ]);
    assert_eq!(g.for_guest(ip("10.65.7.9")), Some(ip("10.65.7.1")));
    assert_eq!(g.for_guest(ip("10.65.8.9")), Some(ip("10.65.0.1")));
    assert_eq!(g.for_guest(ip("172.16.0.5")), Some(ip("192.0.2.1")));
    assert_eq!(
        g.for_guest(ip("2001:db8::5")),
        None,
        "no IPv4 gateway for an IPv6 guest"
    );
    assert!("10.0.0.0/8=2001:db8::1".parse::<GatewayArg>().is_err());
    assert!("nonsense".parse::<GatewayArg>().is_err());
    let two: Vec<GatewayArg> = ["10.0.0.1", "10.0.0.2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(Gateways::new(&two).is_err());
}

#[test]
fn the_guest_ip_from_its_frames_else_the_one_host_route() {
    let mut t = stranded();
    t.addrs.ip = None;
    let g = gw(&["169.254.1.1"]);
    let e = plan(&t, &g, OPERATOR, &[]).unwrap_err();
    assert!(matches!(e, Refusal::NoGuestIp(_)));
    let p = plan(&t, &g, OPERATOR, &[ip("10.65.0.2")]).unwrap();
    assert_eq!(p.guest_ip, (ip("10.65.0.2"), AddrSource::HostRoute));
    let two = [ip("10.65.0.2"), ip("10.65.0.3")];
    assert!(
        plan(&t, &g, OPERATOR, &two).is_err(),
        "two routes: which is not certain"
    );
}

#[test]
fn remediate_acts_only_on_a_merely_stale_cache() {
    let g = gw(&["169.254.1.1"]);
    // OLD is fe: + the guest MAC: libvirt's tap on the source host.
    let mut t = stranded();
    t.vm = Some(crate::model::identity::VmInterface {
        domain: "vm".into(),
        guest_mac: Some(GUEST),
        ..Default::default()
    });
    let p = plan(&t, &g, REMEDIATE, &[]).unwrap();
    assert!(p.evidence.contains("libvirt"), "{}", p.evidence);
    // A MAC this tap had before.
    let mut t = stranded();
    let other = MacAddr([2, 0, 0, 0, 0, 9]);
    t.blackout.as_mut().unwrap().stale_mac = other;
    assert!(matches!(
        plan(&t, &g, REMEDIATE, &[]),
        Err(Refusal::NotMerelyStale { .. })
    ));
    t.mac_history = vec![(at(0), Some(other)), (at(500), Some(TAP))];
    let p = plan(&t, &g, REMEDIATE, &[]).unwrap();
    assert!(p.evidence.contains("this tap had"), "{}", p.evidence);
    // The operator needs no such evidence.
    let mut t = stranded();
    t.blackout.as_mut().unwrap().stale_mac = other;
    assert!(plan(&t, &g, OPERATOR, &[]).is_ok());
}
