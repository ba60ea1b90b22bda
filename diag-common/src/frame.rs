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

/// ICMPv6 types of neighbour discovery (RFC 4861) that the classifier names.
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// A Neighbour Advertisement's flags, the first byte after the ICMPv6 checksum.
pub const NA_FLAG_ROUTER: u8 = 0x80;
pub const NA_FLAG_SOLICITED: u8 = 0x40;
pub const NA_FLAG_OVERRIDE: u8 = 0x20;

const ETH_HLEN: usize = 14;
/// The fixed IPv6 header; ICMPv6 follows it when no extension header sits between.
const IPV6_HLEN: usize = 40;
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
    const NONE: Self = Self {
        op: 0,
        sender_mac: [0; 6],
        sender_ip: [0; 4],
        target_mac: [0; 6],
        target_ip: [0; 4],
    };

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
    let (mut vlan, mut outer_vlan, mut ethertype, mut l3_offset) =
        (NO_TAG, NO_TAG, first, ETH_HLEN);
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

/// No VLAN tag, with every byte of the value set. A plain `None` leaves its payload
/// undefined, and copying such a value the BPF backend may compile to a move from a
/// register never written, which the verifier refuses.
// SAFETY: an `Option<u16>` is four initialised bytes; all-zero is `None` (checked below).
pub const NO_TAG: Option<u16> = unsafe { core::mem::transmute::<u32, Option<u16>>(0) };
const _: () = assert!(NO_TAG.is_none());

/// What a frame counts as. Several flags can hold at once (a gratuitous ARP is also an ARP
/// request); `kind` is the one name the frame's event carries, if it is notable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The ICMPv6 type of a neighbour discovery frame the classifier names (RS, RA, NS,
    /// NA: 133 to 136), 0 for any other frame or when its bytes were not read.
    pub nd_type: u8,
    /// A Neighbour Advertisement's router, solicited and override flags (`NA_FLAG_*`).
    pub na_flags: u8,
}

impl Default for Classification {
    #[inline(always)]
    fn default() -> Self {
        Self {
            kind: None,
            dst_mismatch: false,
            rarp: false,
            garp: false,
            arp_op: 0,
            vlan: NO_TAG,
            outer_vlan: NO_TAG,
            data: false,
            nd_type: 0,
            na_flags: 0,
        }
    }
}

impl Classification {
    /// An unsolicited Neighbour Advertisement with the override flag: a node announcing
    /// its own address (what a Linux guest sends to all-nodes after a migration), the
    /// IPv6 counterpart of a gratuitous ARP.
    #[inline(always)]
    pub fn is_announce_na(&self) -> bool {
        self.nd_type == ND_NEIGHBOR_ADVERT
            && self.na_flags & NA_FLAG_SOLICITED == 0
            && self.na_flags & NA_FLAG_OVERRIDE != 0
    }

    /// Neighbour discovery or ARP: whoever sends them, they go where the sender was asked
    /// from or to a group, whatever the sender's cache holds, so they never end a window.
    #[inline(always)]
    pub fn is_resolution(&self) -> bool {
        self.arp_op != 0 || self.nd_type != 0
    }
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
    if eth.ethertype == ETH_P_IPV6 {
        return classify_ipv6(frame, &eth, c.dst_mismatch);
    }
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
        // A body that is not ARP reads as all zeros (opcode 0): an Option's absent payload
        // would be undefined, and LLVM may then compare a register the verifier sees unset.
        let arp = parse_arp(frame, eth.l3_offset).unwrap_or(ArpView::NONE);
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
    if c.kind.is_none() && c.dst_mismatch {
        c.kind = Some(FrameKind::DstMismatch);
    }
    c
}

pub const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_ICMPV6: u8 = 58;

/// [`classify`] of an IPv6 frame whose bytes were read: neighbour discovery is named by
/// its ICMPv6 type (and an advertisement's flags), anything else is data or a mismatch.
#[inline(always)]
fn classify_ipv6(frame: &[u8], eth: &EthernetView, dst_mismatch: bool) -> Classification {
    let nd = is_neighbour_discovery(frame, eth);
    let mut c = Classification {
        vlan: eth.vlan,
        outer_vlan: eth.outer_vlan,
        data: eth.dst[0] & 1 == 0 && !nd,
        ..classify_header_only(dst_mismatch)
    };
    let icmp_type = match frame.get(eth.l3_offset + IPV6_HLEN) {
        Some(t) if nd => *t,
        _ => return c,
    };
    let kind = match icmp_type {
        ND_ROUTER_SOLICIT => FrameKind::RouterSolicit,
        ND_ROUTER_ADVERT => FrameKind::RouterAdvert,
        ND_NEIGHBOR_SOLICIT => FrameKind::NeighborSolicit,
        ND_NEIGHBOR_ADVERT => FrameKind::NeighborAdvert,
        // A redirect is neighbour discovery (not data) but tells nothing of a migration.
        _ => return c,
    };
    c.nd_type = icmp_type;
    if icmp_type == ND_NEIGHBOR_ADVERT {
        // Cut before its flags: an advertisement that says nothing more.
        let flags = frame
            .get(eth.l3_offset + IPV6_HLEN + 4)
            .copied()
            .unwrap_or(0);
        c.na_flags = flags & (NA_FLAG_ROUTER | NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE);
    }
    c.kind = Some(if c.is_announce_na() {
        FrameKind::UnsolicitedNa
    } else {
        kind
    });
    c
}

/// Whether the bytes of an IPv6 frame must be read to classify it: neighbour discovery
/// goes to a group address (RS, RA, NS to a solicited-node address, an announcing NA), or
/// to a unicast MAC, which matters only when it is foreign (a stale probe) or may end a
/// mismatch window (`window_open`). Healthy unicast IPv6 needs no more than its header.
#[inline(always)]
pub fn ipv6_needs_body(ethertype: u16, to_group: bool, foreign: bool, window_open: bool) -> bool {
    ethertype == ETH_P_IPV6 && (to_group || foreign || window_open)
}

/// A neighbour discovery message as far as its first bytes tell: its ICMPv6 type, an
/// advertisement's flags, and the target address of a solicitation or advertisement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdView {
    pub icmp_type: u8,
    pub na_flags: u8,
    pub target: Option<[u8; 16]>,
}

/// Parses neighbour discovery at layer-3 offset `l3` (userspace: records, replay).
pub fn parse_nd(frame: &[u8], l3: usize) -> Option<NdView> {
    if frame.get(l3 + 6).copied() != Some(IPPROTO_ICMPV6) || frame.get(l3)? >> 4 != 6 {
        return None;
    }
    let icmp = l3 + IPV6_HLEN;
    let icmp_type = *frame.get(icmp)?;
    if !(ND_ROUTER_SOLICIT..=ND_NEIGHBOR_ADVERT).contains(&icmp_type) {
        return None;
    }
    let na_flags = match icmp_type {
        ND_NEIGHBOR_ADVERT => frame.get(icmp + 4).copied().unwrap_or(0) & 0xe0,
        _ => 0,
    };
    let target = match icmp_type {
        ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT => array(frame, icmp + 8),
        _ => None,
    };
    Some(NdView {
        icmp_type,
        na_flags,
        target,
    })
}

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
mod tests;
