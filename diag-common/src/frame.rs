//! Frame parsing and classification.
//!
//! Written against a plain byte slice (the first [`crate::CLASSIFY_LEN`] bytes or more of a
//! frame) with constant offsets only, so the same code passes the BPF verifier and serves
//! userspace.

use crate::{Direction, FrameKind, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_RARP};

pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;
/// RFC 903 "reverse request": what QEMU's self-announce carries.
pub const ARP_OP_RARP_REQUEST: u16 = 3;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = crate::VLAN_HLEN as usize;
const ARP_BODY_LEN: usize = 28;

/// The Ethernet header of a frame, with up to two VLAN tags looked through: an outer
/// 802.1ad service tag (or the outer of two 802.1Q tags) and an inner 802.1Q tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetView {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// The VLAN id of the (inner, customer) 802.1Q tag, if there was one.
    pub vlan: Option<u16>,
    /// The VLAN id of an outer tag (QinQ), if there was one.
    pub outer_vlan: Option<u16>,
    /// The ethertype after the tags.
    pub ethertype: u16,
    /// Offset of the layer-3 header.
    pub l3_offset: usize,
}

/// An Ethernet/IPv4 ARP or RARP body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpView {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_mac: [u8; 6],
    pub target_ip: [u8; 4],
}

impl ArpView {
    /// An ARP request or reply announcing its own address (sender IP == target IP). A probe
    /// (sender 0.0.0.0) asks, it does not announce.
    pub fn is_gratuitous(&self) -> bool {
        (self.op == ARP_OP_REQUEST || self.op == ARP_OP_REPLY)
            && self.sender_ip == self.target_ip
            && self.sender_ip != [0; 4]
    }
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline(always)]
fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let src = b.get(at..at + N)?;
    let mut i = 0;
    while i < N {
        out[i] = src[i];
        i += 1;
    }
    Some(out)
}

/// Parses the Ethernet header; `None` for a runt shorter than a header (tags included).
#[inline(always)]
pub fn parse_ethernet(frame: &[u8]) -> Option<EthernetView> {
    let first = be16(frame, 12)?;
    let (mut vlan, mut outer_vlan, mut ethertype, mut l3_offset) = (None, None, first, ETH_HLEN);
    if first == ETH_P_8021AD || first == ETH_P_8021Q {
        let tci = be16(frame, ETH_HLEN)? & 0x0fff;
        let next = be16(frame, ETH_HLEN + 2)?;
        if next == ETH_P_8021Q {
            // QinQ: a service tag (or an outer 802.1Q tag), then the customer's tag.
            outer_vlan = Some(tci);
            vlan = Some(be16(frame, ETH_HLEN + VLAN_HLEN)? & 0x0fff);
            ethertype = be16(frame, ETH_HLEN + VLAN_HLEN + 2)?;
            l3_offset = ETH_HLEN + 2 * VLAN_HLEN;
        } else {
            if first == ETH_P_8021AD {
                outer_vlan = Some(tci);
            } else {
                vlan = Some(tci);
            }
            ethertype = next;
            l3_offset = ETH_HLEN + VLAN_HLEN;
        }
    }
    Some(EthernetView {
        dst: array(frame, 0)?,
        src: array(frame, 6)?,
        vlan,
        outer_vlan,
        ethertype,
        l3_offset,
    })
}

/// Parses an Ethernet/IPv4 ARP-shaped body at `at`; `None` when truncated or of another
/// hardware/protocol type.
#[inline(always)]
pub fn parse_arp(frame: &[u8], at: usize) -> Option<ArpView> {
    let body = frame.get(at..at + ARP_BODY_LEN)?;
    // htype 1 (Ethernet), ptype 0x0800 (IPv4), hlen 6, plen 4.
    if body[0] != 0 || body[1] != 1 || body[2] != 0x08 || body[3] != 0 || body[4] != 6 {
        return None;
    }
    if body[5] != 4 {
        return None;
    }
    Some(ArpView {
        op: be16(body, 6)?,
        sender_mac: array(body, 8)?,
        sender_ip: array(body, 14)?,
        target_mac: array(body, 18)?,
        target_ip: array(body, 24)?,
    })
}

/// What a frame counts as. Several flags can hold at once (a gratuitous ARP is also an ARP
/// request); `kind` is the one name the frame's event carries, if it is notable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classification {
    pub kind: Option<FrameKind>,
    pub dst_mismatch: bool,
    pub rarp: bool,
    pub garp: bool,
    /// ARP opcode 1 or 2 (0 when not an ARP request/reply).
    pub arp_op: u16,
    pub vlan: Option<u16>,
    pub outer_vlan: Option<u16>,
    /// A unicast frame other than ARP, RARP and IPv6 neighbour discovery: what the VM's
    /// peers send it (only when the frame's bytes were read).
    pub data: bool,
}

/// Classifies one frame.
///
/// `foreign_unicast` says whether the destination MAC is unicast and not the tap's MAC at
/// the moment the frame arrived: the eBPF path takes it from the kernel
/// (`pkt_type == PACKET_OTHERHOST`), other paths from [`is_foreign_unicast`]. Only frames
/// from the VM can be mismatches: frames to the VM are addressed by the host.
#[inline(always)]
pub fn classify(frame: &[u8], foreign_unicast: bool, direction: Direction) -> Classification {
    let mut c = Classification {
        dst_mismatch: foreign_unicast && direction == Direction::FromVm && frame.len() >= ETH_HLEN,
        ..Classification::default()
    };
    let Some(eth) = parse_ethernet(frame) else {
        c.kind = if c.dst_mismatch {
            Some(FrameKind::DstMismatch)
        } else {
            None
        };
        return c;
    };
    if !needs_body(eth.ethertype) {
        return Classification {
            vlan: eth.vlan,
            outer_vlan: eth.outer_vlan,
            data: eth.dst[0] & 1 == 0 && !is_neighbour_discovery(frame, &eth),
            ..classify_header_only(c.dst_mismatch)
        };
    }
    c.vlan = eth.vlan;
    c.outer_vlan = eth.outer_vlan;
    if eth.ethertype == ETH_P_RARP {
        c.rarp = true;
        c.kind = Some(FrameKind::Rarp);
    } else if eth.ethertype == ETH_P_ARP {
        if let Some(arp) = parse_arp(frame, eth.l3_offset) {
            if arp.op == ARP_OP_REQUEST || arp.op == ARP_OP_REPLY {
                c.arp_op = arp.op;
                c.garp = arp.is_gratuitous();
                c.kind = Some(if c.garp {
                    FrameKind::Garp
                } else if arp.op == ARP_OP_REQUEST {
                    FrameKind::ArpRequest
                } else {
                    FrameKind::ArpReply
                });
            }
        }
    }
    if c.kind.is_none() && c.dst_mismatch {
        c.kind = Some(FrameKind::DstMismatch);
    }
    c
}

const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 neighbour discovery (router/neighbour solicitation and advertisement, redirect:
/// ICMPv6 types 133 to 137), which the host sends whether or not traffic flows. An IPv6
/// header with extension headers before ICMPv6 is not looked through.
#[inline(always)]
fn is_neighbour_discovery(frame: &[u8], eth: &EthernetView) -> bool {
    if eth.ethertype != ETH_P_IPV6 {
        return false;
    }
    let next_header = frame.get(eth.l3_offset + 6).copied();
    let icmp_type = frame.get(eth.l3_offset + 40).copied();
    next_header == Some(IPPROTO_ICMPV6) && matches!(icmp_type, Some(133..=137))
}

/// Whether frames of this ethertype (after any VLAN tag) are judged by more than their
/// Ethernet header: only ARP and RARP bodies matter, and a further tag hides the ethertype.
/// The eBPF path reads no frame bytes at all for the others (most traffic).
#[inline(always)]
pub fn needs_body(ethertype: u16) -> bool {
    matches!(
        ethertype,
        ETH_P_ARP | ETH_P_RARP | ETH_P_8021Q | ETH_P_8021AD
    )
}

/// [`classify`] of a whole Ethernet frame whose ethertype does not [`needs_body`];
/// `dst_mismatch` as `classify` computes it. VLAN is left to the caller.
#[inline(always)]
pub fn classify_header_only(dst_mismatch: bool) -> Classification {
    Classification {
        dst_mismatch,
        kind: if dst_mismatch {
            Some(FrameKind::DstMismatch)
        } else {
            None
        },
        ..Classification::default()
    }
}

/// The kernel's `PACKET_OTHERHOST` test: unicast destination that is not `own_mac`. Used
/// where the frame's `pkt_type` is not at hand (the drop program, the pcap backend, offline
/// captures).
#[inline(always)]
pub fn is_foreign_unicast(frame: &[u8], own_mac: &[u8; 6]) -> bool {
    match array::<6>(frame, 0) {
        Some(dst) => dst[0] & 1 == 0 && !mac_eq(&dst, own_mac),
        None => false,
    }
}

/// Whether the kernel took a VLAN tag off a frame from the VM, and forgot its id, before a
/// hook that runs after its VLAN handling saw it (a packet socket's filter, the drop
/// tracepoint). `otherhost`: the stack marked the frame `PACKET_OTHERHOST`.
///
/// The stack takes the outermost tag off every frame a tap receives; with no VLAN device
/// for it, it marks the frame OTHERHOST (for a non-zero id) and clears the tag. What that
/// leaves behind: a group destination marked OTHERHOST (`eth_type_trans` marks those
/// BROADCAST or MULTICAST), or a second tag still in the bytes (only the outermost is
/// taken off, and the hooks this is for see the frame after that). A tag of id 0 (priority
/// only) leaves neither, nor does a tag of id 0 above another (both go); a unicast frame
/// marked OTHERHOST may or may not have lost one.
#[inline(always)]
pub fn lost_vlan_tag(frame: &[u8], otherhost: bool) -> bool {
    let group = matches!(frame.first(), Some(b) if b & 1 == 1);
    let tagged = matches!(be16(frame, 12), Some(ETH_P_8021Q | ETH_P_8021AD));
    (otherhost && group) || tagged
}

/// Compared byte by byte: a slice comparison can become a call of `bcmp`, which BPF lacks.
#[inline(always)]
pub fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5]
}

#[cfg(test)]
mod tests {
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
    use crate::CLASSIFY_LEN;

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
}
