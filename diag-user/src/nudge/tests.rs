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
    assert_eq!(p.frames.len(), 1, "an IPv4 guest: one ARP request");
    assert_eq!(p.first().gateway, (ip("169.254.1.1"), AddrSource::Flag));
    assert_eq!(
        p.first().guest_ip,
        (ip("10.65.0.2"), AddrSource::StaleFrames)
    );
    let f = &p.first().bytes;
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
        plan(&t, &none, OPERATOR, &[]).unwrap().first().gateway.1,
        AddrSource::GuestProbe
    );
    // …two are a doubt, said with both.
    t.addrs.asked.push(ip("10.65.0.9"));
    let e = plan(&t, &none, OPERATOR, &[]).unwrap_err().to_string();
    assert!(e.contains("169.254.1.1, 10.65.0.9"), "{e}");
    // Its unicast probe of the stale entry settles it.
    t.addrs.stale_probe = Some(ip("169.254.1.1"));
    let p = plan(&t, &none, OPERATOR, &[]).unwrap();
    assert_eq!(
        p.first().gateway,
        (ip("169.254.1.1"), AddrSource::GuestProbe)
    );
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
    // One gateway of each family: a dual-stack host's.
    let g = gw(&["10.0.0.1", "fe80::1", "2001:db8:7::/48=fe80::7"]);
    assert_eq!(g.for_guest(ip("10.9.9.9")), Some(ip("10.0.0.1")));
    assert_eq!(g.for_guest(ip("2001:db8:65::2")), Some(ip("fe80::1")));
    assert_eq!(g.for_guest(ip("2001:db8:7::2")), Some(ip("fe80::7")));
    assert!("2001:db8::/32=fe80::1".parse::<GatewayArg>().is_ok());
}

#[test]
fn the_guest_ip_from_its_frames_else_the_one_host_route() {
    let mut t = stranded();
    t.addrs.ip = None;
    let g = gw(&["169.254.1.1"]);
    let e = plan(&t, &g, OPERATOR, &[]).unwrap_err();
    assert!(matches!(e, Refusal::NoGuestIp(_)));
    let p = plan(&t, &g, OPERATOR, &[ip("10.65.0.2")]).unwrap();
    assert_eq!(p.first().guest_ip, (ip("10.65.0.2"), AddrSource::HostRoute));
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

mod ipv6 {
    use std::net::Ipv6Addr;

    use diag_common::frame::{NA_FLAG_OVERRIDE, NA_FLAG_ROUTER};
    use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};

    use super::*;
    use crate::{frames::eui64_link_local, model::nudge::NudgeFrame};

    const GUEST6: &str = "2001:db8:65::2";

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// An IPv6-only guest sending to OLD, whose router is the tap's link-local of then.
    fn stranded6() -> Tap {
        let mut t = stranded();
        t.addrs.ip = None;
        t.addrs.ip6 = Some(ip6(GUEST6));
        t.nd.stale.v6 = true;
        t
    }

    /// A frame parsed back: its IPv6 header's hop limit and addresses, its ICMPv6 type,
    /// the four bytes after the checksum and the message's body after them, with the
    /// checksum checked.
    struct Parsed {
        hop_limit: u8,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        icmp_type: u8,
        bytes5to8: [u8; 4],
        body: Vec<u8>,
    }

    fn parse(f: &[u8]) -> Parsed {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv6(ip)) = p.net else {
            panic!("not IPv6: {f:02x?}")
        };
        let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
            panic!("not ICMPv6: {f:02x?}")
        };
        let h = ip.header();
        let want = icmp
            .icmp_type()
            .calc_checksum(h.source(), h.destination(), icmp.payload())
            .unwrap();
        assert_eq!(icmp.checksum(), want, "checksum");
        let Icmpv6Type::Unknown {
            type_u8,
            code_u8,
            bytes5to8,
        } = icmp.icmp_type()
        else {
            panic!("not neighbour discovery: {:?}", icmp.icmp_type())
        };
        assert_eq!(code_u8, 0);
        Parsed {
            hop_limit: h.hop_limit(),
            src: h.source_addr(),
            dst: h.destination_addr(),
            icmp_type: type_u8,
            bytes5to8,
            body: icmp.payload().to_vec(),
        }
    }

    /// A link-layer address option of `kind` (1 source, 2 target) naming the tap's MAC.
    fn lladdr_option(kind: u8) -> Vec<u8> {
        [kind, 1].into_iter().chain(TAP.0).collect()
    }

    #[test]
    fn an_override_na_for_the_router_and_an_ra_from_the_taps_link_local() {
        let p = plan(&stranded6(), &Gateways::default(), OPERATOR, &[]).unwrap();
        let kinds: Vec<NudgeFrame> = p.frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [NudgeFrame::NeighborAdvert, NudgeFrame::RouterAdvert],
            "the router's address went with OLD: an RA too"
        );
        let old_router = eui64_link_local(OLD);
        let new_router = eui64_link_local(TAP);
        let (na, ra) = (&p.frames[0], &p.frames[1]);
        assert_eq!(
            na.gateway,
            (old_router.into(), AddrSource::DerivedFromOldMac)
        );
        assert_eq!(na.guest_ip, (ip(GUEST6), AddrSource::StaleFrames));
        assert_eq!(ra.gateway, (new_router.into(), AddrSource::TapLinkLocal));
        for f in [&na.bytes, &ra.bytes] {
            assert_eq!(&f[0..6], &GUEST.0, "to the guest's MAC, never multicast");
            assert_eq!(&f[6..12], &TAP.0, "from the tap's MAC");
        }
        // The advertisement, as etherparse and the project's classifier read it.
        let a = parse(&na.bytes);
        assert_eq!((a.icmp_type, a.hop_limit), (136, 255));
        assert_eq!((a.src, a.dst), (new_router, ip6(GUEST6)));
        assert_eq!(
            a.bytes5to8[0],
            NA_FLAG_ROUTER | NA_FLAG_OVERRIDE,
            "R, O, not S"
        );
        assert_eq!(
            &a.body[..16],
            &old_router.octets(),
            "its target: the old router"
        );
        assert_eq!(a.body[16..], lladdr_option(2), "target link-layer address");
        let c = diag_common::classify(&na.bytes, false, Direction::ToVm);
        assert_eq!(c.kind, Some(FrameKind::UnsolicitedNa));
        assert!(c.is_announce_na() && c.na_flags & NA_FLAG_ROUTER != 0);
        let nd = diag_common::parse_nd(&na.bytes, 14).unwrap();
        assert_eq!(nd.target, Some(old_router.octets()));
        // The router advertisement.
        let r = parse(&ra.bytes);
        assert_eq!((r.icmp_type, r.hop_limit), (134, 255));
        assert_eq!((r.src, r.dst), (new_router, ip6(GUEST6)));
        let lifetime = u16::from_be_bytes([r.bytes5to8[2], r.bytes5to8[3]]);
        assert_eq!(lifetime, crate::frames::DEFAULT_ROUTER_LIFETIME_S);
        assert_eq!(r.body[8..], lladdr_option(1), "source link-layer address");
        let c = diag_common::classify(&ra.bytes, false, Direction::ToVm);
        assert_eq!(c.kind, Some(FrameKind::RouterAdvert));
    }

    #[test]
    fn where_the_router_came_from() {
        let none = Gateways::default();
        let router = |t: &Tap, g: &Gateways| {
            let p = plan(t, g, OPERATOR, &[]).unwrap();
            (p.first().gateway, p.frames.len())
        };
        // The operator's word; an address that did not go with OLD needs no RA.
        let t = stranded6();
        assert_eq!(
            router(&t, &gw(&["169.254.1.1", "fe80::1"])),
            ((ip("fe80::1"), AddrSource::Flag), 1)
        );
        assert_eq!(
            router(&t, &gw(&["2001:db8:65::/64=fe80::65"])).0,
            (ip("fe80::65"), AddrSource::Flag)
        );
        // Its unicast solicitation of the stale entry…
        let mut t = stranded6();
        t.addrs.stale_probe6 = Some(eui64_link_local(OLD));
        assert_eq!(
            router(&t, &none),
            ((eui64_link_local(OLD).into(), AddrSource::GuestProbe), 2)
        );
        // …or the one address it solicited (its own is not a router)…
        let mut t = stranded6();
        t.addrs.asked6 = vec![ip6(GUEST6), ip6("fe80::9")];
        assert_eq!(
            router(&t, &none),
            ((ip("fe80::9"), AddrSource::GuestProbe), 1)
        );
        // …else the old MAC's link-local, found by router discovery where it solicited.
        let mut t = stranded6();
        t.addrs.solicited_routers = true;
        assert_eq!(router(&t, &none).0 .1, AddrSource::RouterSolicitation);
        // Nothing to derive it from: refused, saying what to give.
        let mut t = stranded6();
        t.blackout = None;
        let forced = Asked {
            force: true,
            ..OPERATOR
        };
        let e = plan(&t, &none, forced, &[]).unwrap_err();
        assert!(matches!(e, Refusal::NoRouter6 { .. }), "{e}");
        assert!(e.to_string().contains("--gateway"), "{e}");
    }

    #[test]
    fn the_guests_address_else_its_route_else_all_nodes() {
        let mut t = stranded6();
        t.addrs.ip6 = None;
        let none = Gateways::default();
        let p = plan(&t, &none, OPERATOR, &[]).unwrap();
        assert_eq!(
            p.first().guest_ip,
            (crate::frames::ALL_NODES.into(), AddrSource::AllNodes)
        );
        let a = parse(&p.first().bytes);
        assert_eq!(a.dst, crate::frames::ALL_NODES);
        assert_eq!(&p.first().bytes[0..6], &GUEST.0, "still to the guest's MAC");
        assert_eq!(
            diag_common::classify(&p.first().bytes, false, Direction::ToVm).kind,
            Some(FrameKind::UnsolicitedNa)
        );
        let p = plan(&t, &none, OPERATOR, &[ip(GUEST6)]).unwrap();
        assert_eq!(p.first().guest_ip, (ip(GUEST6), AddrSource::HostRoute));
    }

    #[test]
    fn a_dual_stack_guest_gets_both_families_frames_in_one_nudge() {
        let mut t = stranded6();
        t.addrs.ip = Some(ip("10.65.0.2"));
        let p = plan(&t, &gw(&["169.254.1.1"]), OPERATOR, &[]).unwrap();
        let kinds: Vec<NudgeFrame> = p.frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                NudgeFrame::Arp,
                NudgeFrame::NeighborAdvert,
                NudgeFrame::RouterAdvert
            ]
        );
        assert_eq!(p.frames[0].gateway.1, AddrSource::Flag);
        assert_eq!(p.frames[1].gateway.1, AddrSource::DerivedFromOldMac);
        // Its first stale frames all IPv4: the host's route to it says it speaks IPv6 too.
        let mut t = stranded();
        let p = plan(&t, &gw(&["169.254.1.1"]), OPERATOR, &[ip(GUEST6)]).unwrap();
        assert_eq!(p.frames.len(), 3, "{:?}", p.frames);
        assert_eq!(p.frames[1].guest_ip, (ip(GUEST6), AddrSource::HostRoute));
        t.addrs.ip6 = Some(ip6(GUEST6));
        // A family that cannot be nudged is said; the other's frame still goes.
        let p = plan(&t, &Gateways::default(), OPERATOR, &[]).unwrap();
        assert_eq!(p.first().kind, NudgeFrame::NeighborAdvert);
        assert!(
            p.evidence.contains("not sent: the gateway IP"),
            "{}",
            p.evidence
        );
    }

    #[test]
    fn remediate_needs_the_same_evidence_for_ipv6() {
        let mut t = stranded6();
        let other = MacAddr([2, 0, 0, 0, 0, 9]);
        t.blackout.as_mut().unwrap().stale_mac = other;
        let none = Gateways::default();
        assert!(matches!(
            plan(&t, &none, REMEDIATE, &[]),
            Err(Refusal::NotMerelyStale { .. })
        ));
        t.mac_history = vec![(at(0), Some(other)), (at(500), Some(TAP))];
        let p = plan(&t, &none, REMEDIATE, &[]).unwrap();
        assert_eq!(p.first().gateway.0, IpAddr::V6(eui64_link_local(other)));
        assert_eq!(p.frames.len(), 2);
    }
}
