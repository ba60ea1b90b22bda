extern crate std;
use super::*;
use std::vec::Vec;

#[test]
fn header_only_agrees_with_classify() {
    for ethertype in [0x0800u16, 0x86dd, 0x88b5, 0x88cc, 0x0000] {
        assert!(!needs_body(ethertype));
        for vlan in [None, Some(42)] {
            for (foreign, dir) in [
                (false, Direction::FromVm),
                (true, Direction::FromVm),
                (true, Direction::ToVm),
            ] {
                let mut f = eth(TAP_NEW, GUEST, vlan, ethertype);
                f.resize(60, 0);
                let full = classify(&f, foreign, dir);
                let quick = classify_header_only(foreign && dir == Direction::FromVm);
                // Only the bytes say whether it is data (unicast, not neighbour
                // discovery): the header-only path never needs to know.
                assert_eq!(
                    full,
                    Classification {
                        vlan,
                        data: full.data,
                        ..quick
                    }
                );
            }
        }
    }
    for ethertype in [ETH_P_ARP, ETH_P_RARP, ETH_P_8021Q, ETH_P_8021AD] {
        assert!(needs_body(ethertype));
    }
}

const GUEST: [u8; 6] = [0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc];
const TAP_OLD: [u8; 6] = [0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc];
const TAP_NEW: [u8; 6] = [0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe];
const BCAST: [u8; 6] = [0xff; 6];
use crate::{TapCounters, TapWindow, CLASSIFY_LEN};

fn eth(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_body(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut b = std::vec![0, 1, 0x08, 0, 6, 4];
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&tha);
    b.extend_from_slice(&tpa);
    b
}

fn pad60(mut f: Vec<u8>) -> Vec<u8> {
    f.resize(f.len().max(60), 0);
    f
}

fn qemu_rarp(vlan: Option<u16>) -> Vec<u8> {
    let mut f = eth(BCAST, GUEST, vlan, ETH_P_RARP);
    f.extend(arp_body(ARP_OP_RARP_REQUEST, GUEST, [0; 4], GUEST, [0; 4]));
    pad60(f)
}

fn arp(op: u16, dst: [u8; 6], spa: [u8; 4], tpa: [u8; 4], vlan: Option<u16>) -> Vec<u8> {
    let mut f = eth(dst, GUEST, vlan, ETH_P_ARP);
    f.extend(arp_body(op, GUEST, spa, [0; 6], tpa));
    pad60(f)
}

fn ipv4_to(dst: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = eth(dst, GUEST, None, 0x0800);
    f.resize(len, 0x45);
    f
}

#[test]
fn qemu_rarp_announce() {
    let c = classify(&qemu_rarp(None), false, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::Rarp));
    assert!(c.rarp && !c.garp && !c.dst_mismatch);
    assert_eq!(c.arp_op, 0, "a RARP is not an ARP request");
}

#[test]
fn gratuitous_arp_request_and_reply() {
    let ip = [10, 0, 0, 5];
    for op in [ARP_OP_REQUEST, ARP_OP_REPLY] {
        let c = classify(&arp(op, BCAST, ip, ip, None), false, Direction::FromVm);
        assert_eq!(c.kind, Some(FrameKind::Garp));
        assert!(c.garp);
        assert_eq!(c.arp_op, op, "a GARP still counts as request/reply");
    }
}

#[test]
fn plain_arp_request_and_reply() {
    let c = classify(
        &arp(ARP_OP_REQUEST, BCAST, [10, 0, 0, 5], [10, 0, 0, 1], None),
        false,
        Direction::FromVm,
    );
    assert_eq!(
        (c.kind, c.garp, c.arp_op),
        (Some(FrameKind::ArpRequest), false, 1)
    );
    let c = classify(
        &arp(ARP_OP_REPLY, TAP_NEW, [10, 0, 0, 5], [10, 0, 0, 1], None),
        false,
        Direction::ToVm,
    );
    assert_eq!(
        (c.kind, c.garp, c.arp_op),
        (Some(FrameKind::ArpReply), false, 2)
    );
}

#[test]
fn arp_probe_is_not_gratuitous() {
    let c = classify(
        &arp(ARP_OP_REQUEST, BCAST, [0; 4], [10, 0, 0, 5], None),
        false,
        Direction::FromVm,
    );
    assert_eq!(c.kind, Some(FrameKind::ArpRequest));
    assert!(!c.garp);
    // Probe with target 0.0.0.0 too: sender == target, still not an announcement.
    let c = classify(
        &arp(ARP_OP_REQUEST, BCAST, [0; 4], [0; 4], None),
        false,
        Direction::FromVm,
    );
    assert!(!c.garp);
}

#[test]
fn dst_mismatch_only_from_vm() {
    let f = ipv4_to(TAP_OLD, 98);
    let c = classify(&f, true, Direction::FromVm);
    assert_eq!(
        (c.kind, c.dst_mismatch),
        (Some(FrameKind::DstMismatch), true)
    );
    let c = classify(&f, true, Direction::ToVm);
    assert_eq!((c.kind, c.dst_mismatch), (None, false));
    let c = classify(&f, false, Direction::FromVm);
    assert_eq!(
        c,
        Classification {
            data: true,
            ..Classification::default()
        }
    );
}

#[test]
fn unicast_arp_to_stale_mac_is_both() {
    // Linux re-validates a stale neighbour with a unicast request to the cached MAC.
    let f = arp(ARP_OP_REQUEST, TAP_OLD, [10, 0, 0, 5], [10, 0, 0, 1], None);
    assert!(is_foreign_unicast(&f, &TAP_NEW));
    let c = classify(&f, true, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::ArpRequest));
    assert!(c.dst_mismatch);
}

#[test]
fn vlan_tagged_rarp_and_arp() {
    let c = classify(&qemu_rarp(Some(100)), false, Direction::FromVm);
    assert_eq!((c.kind, c.vlan), (Some(FrameKind::Rarp), Some(100)));
    let ip = [192, 168, 1, 9];
    let c = classify(
        &arp(ARP_OP_REQUEST, BCAST, ip, ip, Some(4094)),
        false,
        Direction::ToVm,
    );
    assert_eq!((c.kind, c.vlan), (Some(FrameKind::Garp), Some(4094)));
    // The priority bits of the TCI are not part of the VLAN id.
    let c = classify(&qemu_rarp(Some(0xe000 | 7)), false, Direction::FromVm);
    assert_eq!(c.vlan, Some(7));
}

#[test]
fn qinq_rarp_and_arp() {
    // 802.1ad service tag 300, customer tag 12, QEMU's RARP inside.
    let mut f = eth(BCAST, GUEST, None, ETH_P_8021AD);
    f.extend_from_slice(&300u16.to_be_bytes());
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&12u16.to_be_bytes());
    f.extend_from_slice(&ETH_P_RARP.to_be_bytes());
    f.extend(arp_body(ARP_OP_RARP_REQUEST, GUEST, [0; 4], GUEST, [0; 4]));
    let c = classify(&f, false, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::Rarp));
    assert_eq!((c.outer_vlan, c.vlan), (Some(300), Some(12)));
    assert!(f.len() <= CLASSIFY_LEN, "a QinQ RARP is read whole");
    // A lone service tag: outer only.
    let mut g = eth(BCAST, GUEST, None, ETH_P_8021AD);
    g.extend_from_slice(&7u16.to_be_bytes());
    g.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    let ip = [10, 0, 0, 5];
    g.extend(arp_body(ARP_OP_REQUEST, GUEST, ip, [0; 6], ip));
    let c = classify(&g, false, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::Garp));
    assert_eq!((c.outer_vlan, c.vlan), (Some(7), None));
}

#[test]
fn runts() {
    for len in 0..14 {
        let f = std::vec![0u8; len];
        let c = classify(&f, true, Direction::FromVm);
        assert_eq!(c, Classification::default(), "len {len}");
    }
    // A bare header with a mismatch is still a mismatch.
    let f = eth(TAP_OLD, GUEST, None, 0x0800);
    assert_eq!(
        classify(&f, true, Direction::FromVm).kind,
        Some(FrameKind::DstMismatch)
    );
    // A VLAN tag cut short: no ethertype to read.
    let mut f = eth(BCAST, GUEST, None, ETH_P_8021Q);
    f.push(0);
    assert_eq!(parse_ethernet(&f), None);
    assert_eq!(classify(&f, false, Direction::FromVm).kind, None);
}

#[test]
fn truncated_arp_is_not_counted() {
    let ip = [10, 0, 0, 5];
    let full = arp(ARP_OP_REQUEST, BCAST, ip, ip, None);
    for cut in 14..42 {
        let c = classify(&full[..cut], false, Direction::FromVm);
        assert_eq!(c.kind, None, "cut at {cut}");
        assert_eq!(c.arp_op, 0);
    }
    // Exactly 42 bytes (unpadded, as a tap may carry it) is a whole ARP.
    assert_eq!(
        classify(&full[..42], false, Direction::FromVm).kind,
        Some(FrameKind::Garp)
    );
}

#[test]
fn arp_of_other_hardware_type_is_ignored() {
    let ip = [10, 0, 0, 5];
    let mut f = arp(ARP_OP_REQUEST, BCAST, ip, ip, None);
    f[15] = 6; // htype IEEE 802
    assert_eq!(classify(&f, false, Direction::FromVm).kind, None);
}

#[test]
fn jumbo_frame() {
    let f = ipv4_to(TAP_OLD, 9000);
    let c = classify(&f, true, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::DstMismatch));
    let mut counters = crate::TapCounters::default();
    counters.record(&c, Direction::FromVm, f.len() as u64, true);
    assert_eq!((counters.from_vm_frames, counters.from_vm_bytes), (1, 9000));
}

#[test]
fn foreign_unicast() {
    assert!(is_foreign_unicast(&ipv4_to(TAP_OLD, 60), &TAP_NEW));
    assert!(!is_foreign_unicast(&ipv4_to(TAP_NEW, 60), &TAP_NEW));
    assert!(!is_foreign_unicast(&ipv4_to(BCAST, 60), &TAP_NEW));
    let multicast = [0x01, 0x00, 0x5e, 0, 0, 1];
    assert!(!is_foreign_unicast(&ipv4_to(multicast, 60), &TAP_NEW));
    assert!(!is_foreign_unicast(&[0xfe, 0x16], &TAP_NEW));
}

/// What the stack leaves of a tag it took off and forgot, as a hook after its VLAN
/// handling sees the frame; and the length counted back from it.
#[test]
fn lost_tags_and_the_length_as_written() {
    use crate::{wire_len, EVENT_FLAG_OUTER_VLAN, EVENT_FLAG_VLAN, EVENT_FLAG_VLAN_LOST};
    // A tagged RARP whose tag is gone: a broadcast the stack marked OTHERHOST.
    let rarp = qemu_rarp(None);
    assert!(lost_vlan_tag(&rarp, true));
    assert!(!lost_vlan_tag(&rarp, false), "an untagged broadcast");
    // QinQ whose outer tag is gone: the inner one is still in the bytes.
    let inner = qemu_rarp(Some(12));
    assert!(lost_vlan_tag(&inner, false));
    let mut outer = inner.clone();
    outer[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
    assert!(lost_vlan_tag(&outer, false));
    // A unicast frame marked OTHERHOST says nothing: it may just be to another MAC.
    assert!(!lost_vlan_tag(&ipv4_to(TAP_OLD, 60), true));
    assert!(!lost_vlan_tag(&[], true));

    assert_eq!(wire_len(56, 0), 56);
    for one in [EVENT_FLAG_VLAN, EVENT_FLAG_OUTER_VLAN, EVENT_FLAG_VLAN_LOST] {
        assert_eq!(wire_len(56, one), 60);
        assert_eq!(wire_len(56, one | crate::EVENT_FLAG_DST_MISMATCH), 60);
    }
    assert_eq!(wire_len(52, EVENT_FLAG_VLAN | EVENT_FLAG_OUTER_VLAN), 60);
    assert_eq!(wire_len(u32::MAX, 0xff), u32::MAX as u64 + 12);
}

#[test]
fn counters_record_every_flag() {
    let ip = [10, 0, 0, 5];
    let mut t = crate::TapCounters::default();
    for (f, mismatch, dir) in [
        (qemu_rarp(None), false, Direction::FromVm),
        (
            arp(ARP_OP_REQUEST, BCAST, ip, ip, None),
            false,
            Direction::FromVm,
        ),
        (
            arp(ARP_OP_REPLY, GUEST, [10, 0, 0, 1], ip, None),
            false,
            Direction::ToVm,
        ),
        (ipv4_to(TAP_OLD, 100), true, Direction::FromVm),
    ] {
        let c = classify(&f, mismatch, dir);
        t.record(&c, dir, f.len() as u64, true);
    }
    assert_eq!(t.from_vm_frames, 3);
    assert_eq!(t.from_vm_bytes, 60 + 60 + 100);
    assert_eq!((t.to_vm_frames, t.to_vm_bytes), (1, 60));
    assert_eq!(t.rarp_frames, 1);
    assert_eq!(t.garp_frames, 1);
    assert_eq!(t.arp_requests, 1);
    assert_eq!(t.arp_replies, 1);
    assert_eq!(t.dst_mismatch_frames, 1);
}

#[test]
fn mismatch_window_closes_on_first_frame_to_own_mac() {
    let mut w = crate::TapWindow::default();
    assert!(
        !w.update(false, true, 1),
        "no window open: nothing to close"
    );
    assert!(!w.update(true, false, 10));
    assert!(!w.update(true, false, 20));
    assert_eq!(
        w.mismatch_since_ns, 10,
        "the window starts at the first mismatch"
    );
    assert!(!w.update(false, false, 25), "a broadcast does not end it");
    assert!(w.update(false, true, 30));
    assert!(!w.update(false, true, 40), "only the first frame ends it");
    assert_eq!(w.mismatch_since_ns, 0);
}

#[test]
fn mismatch_sampling() {
    let mut t = crate::TapCounters::default();
    let step = crate::MISMATCH_SAMPLE_INTERVAL_NS;
    assert!(t.admit_event(FrameKind::DstMismatch, 5));
    assert!(!t.admit_event(FrameKind::DstMismatch, 5 + step - 1));
    assert!(
        t.admit_event(FrameKind::Rarp, 6),
        "announcements are never sampled away"
    );
    assert!(t.admit_event(FrameKind::DstMismatch, 5 + step));
    assert!(!t.admit_event(FrameKind::DstMismatch, 5 + step + 1));
}

/// What the VM's peers send it is data; ARP and neighbour discovery (which the host
/// sends whether or not traffic flows) and broadcasts are not, also behind tags.
#[test]
fn data_frames_and_neighbour_discovery() {
    let v6 = |dst: [u8; 6], vlan: Option<u16>, next: u8, icmp_type: u8| {
        let mut f = eth(dst, TAP_NEW, vlan, ETH_P_IPV6);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = next;
        f.extend_from_slice(&ip);
        f.push(icmp_type);
        pad60(f)
    };
    let data = |f: &[u8]| classify(f, false, Direction::ToVm).data;
    assert!(data(&ipv4_to(GUEST, 98)));
    assert!(!data(&ipv4_to(BCAST, 98)), "a broadcast");
    assert!(!data(&arp(
        ARP_OP_REPLY,
        GUEST,
        [10, 0, 0, 1],
        [10, 0, 0, 5],
        None
    )));
    for t in 133..=137 {
        assert!(!data(&v6(GUEST, None, IPPROTO_ICMPV6, t)), "ND type {t}");
        assert!(
            !data(&v6(GUEST, Some(5), IPPROTO_ICMPV6, t)),
            "tagged ND {t}"
        );
    }
    assert!(
        data(&v6(GUEST, None, IPPROTO_ICMPV6, 128)),
        "an echo request"
    );
    assert!(data(&v6(GUEST, None, 6, 135)), "TCP, whatever its bytes");
    // Cut before the ICMPv6 type: data (the classifier cannot tell).
    let mut cut = v6(GUEST, None, IPPROTO_ICMPV6, 135);
    cut.truncate(14 + 40);
    assert!(data(&cut));
    let qinq_nd = {
        let mut f = eth(GUEST, TAP_NEW, Some(12), ETH_P_IPV6);
        f.splice(12..12, [0x88, 0xa8, 0x01, 0x2c]);
        let mut ip = [0u8; 40];
        ip[6] = IPPROTO_ICMPV6;
        f.extend_from_slice(&ip);
        f.push(135);
        f
    };
    assert_eq!(qinq_nd.len(), 63);
    assert!(
        qinq_nd.len() <= CLASSIFY_LEN,
        "the longest frame the classifier reads"
    );
    assert!(!data(&qinq_nd));
    // The header-only path (IP frames in the kernel) never claims data.
    assert!(!classify_header_only(false).data);
}

/// An ICMPv6 neighbour discovery frame: `body` is the ICMPv6 message after its checksum.
fn nd(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let mut f = eth(dst, src, vlan, ETH_P_IPV6);
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[5] = (4 + body.len()) as u8;
    ip[6] = IPPROTO_ICMPV6;
    ip[7] = 255;
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[icmp_type, 0, 0, 0]);
    f.extend_from_slice(body);
    pad60(f)
}

const ROUTER_LL: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xfc, 0x16, 0x3e, 0xff, 0xfe, 0xaa, 0xbb, 0xcc,
];

fn na_body(flags: u8, target: [u8; 16]) -> Vec<u8> {
    let mut b = std::vec![flags, 0, 0, 0];
    b.extend_from_slice(&target);
    b
}

fn ns_body(target: [u8; 16]) -> Vec<u8> {
    let mut b = std::vec![0, 0, 0, 0];
    b.extend_from_slice(&target);
    b
}

const ALL_NODES: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_ROUTERS: [u8; 6] = [0x33, 0x33, 0, 0, 0, 2];

/// Router and neighbour solicitations and advertisements are named, an advertisement's
/// flags read; an unsolicited override advertisement is the guest's announce; none is
/// data, and each counts once in its counter.
#[test]
fn neighbour_discovery_is_named() {
    let rs = nd(ALL_ROUTERS, GUEST, None, 133, &[0; 4]);
    let ra = nd(
        ALL_NODES,
        TAP_NEW,
        None,
        134,
        &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    let ns = nd(
        [0x33, 0x33, 0xff, 0xaa, 0xbb, 0xcc],
        GUEST,
        None,
        135,
        &ns_body(ROUTER_LL),
    );
    let announce = nd(
        ALL_NODES,
        GUEST,
        None,
        136,
        &na_body(NA_FLAG_OVERRIDE, ROUTER_LL),
    );
    let answer = nd(
        TAP_NEW,
        GUEST,
        None,
        136,
        &na_body(NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE, ROUTER_LL),
    );
    let weak = nd(ALL_NODES, GUEST, None, 136, &na_body(0, ROUTER_LL));
    let cases = [
        (&rs, FrameKind::RouterSolicit, 133, 0),
        (&ra, FrameKind::RouterAdvert, 134, 0),
        (&ns, FrameKind::NeighborSolicit, 135, 0),
        (&announce, FrameKind::UnsolicitedNa, 136, NA_FLAG_OVERRIDE),
        (
            &answer,
            FrameKind::NeighborAdvert,
            136,
            NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
        ),
        (&weak, FrameKind::NeighborAdvert, 136, 0),
    ];
    let mut counters = TapCounters::default();
    for (f, kind, t, flags) in cases {
        let c = classify(f, false, Direction::FromVm);
        assert_eq!(c.kind, Some(kind), "{kind:?}");
        assert_eq!((c.nd_type, c.na_flags), (t, flags), "{kind:?}");
        assert!(!c.data && !c.dst_mismatch && c.is_resolution(), "{kind:?}");
        counters.record(&c, Direction::FromVm, f.len() as u64, true);
    }
    assert_eq!(
        (
            counters.router_solicits,
            counters.router_adverts,
            counters.neighbor_solicits,
            counters.neighbor_adverts,
            counters.unsolicited_nas,
        ),
        (1, 1, 1, 3, 1)
    );
    let mut merged = TapCounters::default();
    merged.accumulate(&counters);
    merged.accumulate(&counters);
    assert_eq!((merged.neighbor_adverts, merged.unsolicited_nas), (6, 2));
    // Behind a QinQ pair the flags are still within what the classifier reads.
    let mut qinq = nd(
        ALL_NODES,
        GUEST,
        Some(7),
        136,
        &na_body(NA_FLAG_OVERRIDE, ROUTER_LL),
    );
    qinq.splice(12..12, [0x88, 0xa8, 0x00, 0x09]);
    let c = classify(&qinq[..CLASSIFY_LEN], false, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::UnsolicitedNa));
    assert_eq!((c.vlan, c.outer_vlan), (Some(7), Some(9)));
    // A redirect is neighbour discovery but not named; an echo request is data.
    let redirect = nd(GUEST, TAP_NEW, None, 137, &[0; 36]);
    let c = classify(&redirect, false, Direction::ToVm);
    assert_eq!((c.kind, c.data, c.nd_type), (None, false, 0));
    assert!(
        classify(
            &nd(GUEST, TAP_NEW, None, 128, &[0; 4]),
            false,
            Direction::ToVm
        )
        .data
    );
}

/// A unicast solicitation to the old MAC is a stale probe: named, and a mismatch that
/// opens the window; advertisements to the tap's MAC never end it (an answer goes to
/// whoever asked); an IPv6 data frame to the tap's MAC does.
#[test]
fn stale_neighbour_probe_and_the_window() {
    let probe = nd(TAP_OLD, GUEST, None, 135, &ns_body(ROUTER_LL));
    let c = classify(&probe, true, Direction::FromVm);
    assert_eq!(c.kind, Some(FrameKind::NeighborSolicit));
    assert!(c.dst_mismatch);
    let mut w = TapWindow::default();
    assert_eq!(
        w.follow(&c, false, Direction::FromVm, 10),
        Some(FrameKind::NeighborSolicit)
    );
    assert!(w.is_open());
    let answer = nd(
        TAP_NEW,
        GUEST,
        None,
        136,
        &na_body(NA_FLAG_SOLICITED, ROUTER_LL),
    );
    let c = classify(&answer, false, Direction::FromVm);
    assert_eq!(
        w.follow(&c, true, Direction::FromVm, 20),
        Some(FrameKind::NeighborAdvert)
    );
    let ns_own = nd(TAP_NEW, GUEST, None, 135, &ns_body(ROUTER_LL));
    let c = classify(&ns_own, false, Direction::FromVm);
    assert_eq!(
        w.follow(&c, true, Direction::FromVm, 25),
        Some(FrameKind::NeighborSolicit)
    );
    assert!(w.is_open(), "neighbour discovery never ends a window");
    let data = nd(TAP_NEW, GUEST, None, 128, &[0; 4]);
    let c = classify(&data, false, Direction::FromVm);
    assert_eq!(
        w.follow(&c, true, Direction::FromVm, 30),
        Some(FrameKind::DstMatch)
    );
}

/// Only the frames whose bytes can matter are read in the kernel: IPv6 to a group, to a
/// foreign MAC, or while a window is open; never IPv4 or healthy unicast IPv6.
#[test]
fn which_ipv6_frames_are_read_whole() {
    assert!(ipv6_needs_body(ETH_P_IPV6, true, false, false));
    assert!(ipv6_needs_body(ETH_P_IPV6, false, true, false));
    assert!(ipv6_needs_body(ETH_P_IPV6, false, false, true));
    assert!(!ipv6_needs_body(ETH_P_IPV6, false, false, false));
    assert!(!ipv6_needs_body(0x0800, true, true, true));
}

/// What records read of neighbour discovery: type, flags, target; nothing of other ICMPv6
/// or of a frame cut short.
#[test]
fn parse_nd_reads_type_flags_and_target() {
    let na = nd(
        ALL_NODES,
        GUEST,
        None,
        136,
        &na_body(NA_FLAG_ROUTER | NA_FLAG_OVERRIDE, ROUTER_LL),
    );
    assert_eq!(
        parse_nd(&na, 14),
        Some(NdView {
            icmp_type: 136,
            na_flags: NA_FLAG_ROUTER | NA_FLAG_OVERRIDE,
            target: Some(ROUTER_LL),
        })
    );
    let rs = nd(ALL_ROUTERS, GUEST, None, 133, &[0; 4]);
    assert_eq!(parse_nd(&rs, 14).and_then(|n| n.target), None);
    assert_eq!(parse_nd(&nd(GUEST, TAP_NEW, None, 128, &[0; 4]), 14), None);
    let cut = &na[..14 + 40 + 8];
    assert_eq!(parse_nd(cut, 14).map(|n| n.target), Some(None));
}
