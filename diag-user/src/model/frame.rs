//! A notable frame as a record: what a datapath's event says, in the JSON contract's
//! words.

use diag_common::{
    frame::{NA_FLAG_OVERRIDE, NA_FLAG_ROUTER, NA_FLAG_SOLICITED},
    parse_arp, parse_ethernet, parse_nd, FrameEvent, ETH_P_IPV6,
};
use serde::{Deserialize, Serialize};

use super::{clock::Ts, mac::MacAddr, Direction, FrameKind};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrameRecord {
    pub ts: Ts,
    pub ifname: String,
    pub direction: Direction,
    pub kind: FrameKind,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_ip: Option<String>,
    /// ARP's target address; a Neighbour Solicitation's or Advertisement's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ip: Option<String>,
    /// A Neighbour Advertisement's flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub na_flags: Option<NaFlags>,
    /// An IP frame's addresses (the guest's own is the source of what it sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The outer (802.1ad service) tag's VLAN id of a QinQ frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer_vlan: Option<u16>,
    /// Also addressed to a MAC the tap does not have (e.g. a unicast ARP to the old MAC).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dst_mismatch: bool,
    /// Length of the whole frame.
    pub len: u32,
    /// The captured bytes (up to 128), as they crossed the tap: not part of the JSON, but
    /// of the bundle's pcapng.
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// The flags of a Neighbour Advertisement (RFC 4861, 4.4).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NaFlags {
    /// The sender is a router.
    pub router: bool,
    /// An answer to a solicitation (unsolicited: an announce).
    pub solicited: bool,
    /// The receiver replaces the link-layer address it has cached for the target.
    #[serde(rename = "override")]
    pub override_: bool,
}

impl NaFlags {
    pub fn from_bits(b: u8) -> Self {
        Self {
            router: b & NA_FLAG_ROUTER != 0,
            solicited: b & NA_FLAG_SOLICITED != 0,
            override_: b & NA_FLAG_OVERRIDE != 0,
        }
    }
}

/// An address family, as far as a frame says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl FrameRecord {
    /// The frame's address family: ARP is IPv4's, neighbour discovery IPv6's, and an IP
    /// frame's its addresses'.
    pub fn family(&self) -> Option<Family> {
        use super::FrameKind as K;
        match self.kind {
            // QEMU's announce is the VM's, of no family.
            K::Rarp => None,
            K::Garp | K::ArpRequest | K::ArpReply => Some(Family::V4),
            K::RouterSolicit
            | K::RouterAdvert
            | K::NeighborSolicit
            | K::NeighborAdvert
            | K::UnsolicitedNa => Some(Family::V6),
            _ => {
                let ip = self.src_ip.as_deref().or(self.dst_ip.as_deref())?;
                Some(if ip.contains(':') {
                    Family::V6
                } else {
                    Family::V4
                })
            }
        }
    }

    /// Decodes a kernel event; `None` for an event too short to hold a MAC header.
    pub fn from_event(ev: &FrameEvent, ifname: &str, ts: Ts) -> Option<Self> {
        let frame = ev.frame();
        let eth = parse_ethernet(frame)?;
        let kind = diag_common::FrameKind::from_u8(ev.kind)?;
        let arp = match kind {
            diag_common::FrameKind::DstMismatch => None,
            _ => parse_arp(frame, eth.l3_offset),
        };
        let ip = |b: [u8; 4]| std::net::Ipv4Addr::from(b).to_string();
        let nd = (eth.ethertype == ETH_P_IPV6)
            .then(|| parse_nd(frame, eth.l3_offset))
            .flatten();
        let (src_ip, dst_ip) = ip_addrs(frame).unzip();
        let outer_stripped = ev.flags & diag_common::EVENT_FLAG_OUTER_VLAN != 0;
        let vlan_stripped = ev.flags & diag_common::EVENT_FLAG_VLAN != 0 && eth.vlan.is_none();
        Some(Self {
            ts,
            ifname: ifname.to_string(),
            direction: Direction::from_u8(ev.direction)?,
            kind,
            src_mac: MacAddr(eth.src),
            dst_mac: MacAddr(eth.dst),
            sender_ip: arp.map(|a| ip(a.sender_ip)),
            target_ip: arp.map(|a| ip(a.target_ip)).or_else(|| {
                let t = nd?.target?;
                Some(std::net::Ipv6Addr::from(t).to_string())
            }),
            na_flags: nd
                .filter(|n| n.icmp_type == diag_common::frame::ND_NEIGHBOR_ADVERT)
                .map(|n| NaFlags::from_bits(n.na_flags)),
            src_ip: src_ip.map(|a| a.to_string()),
            dst_ip: dst_ip.map(|a| a.to_string()),
            // The kernel usually strips the outer tag into metadata before tc sees the frame.
            vlan: eth.vlan.or(vlan_stripped.then_some(ev.vlan)),
            outer_vlan: eth.outer_vlan.or(outer_stripped.then_some(ev.outer_vlan)),
            dst_mismatch: ev.flags & diag_common::EVENT_FLAG_DST_MISMATCH != 0,
            len: ev.frame_len,
            data: with_vlan_tags(
                frame,
                outer_stripped.then_some(ev.outer_vlan),
                vlan_stripped.then_some(ev.vlan),
            ),
        })
    }
}

/// An IP frame's source and destination, read from however much of it was captured.
fn ip_addrs(frame: &[u8]) -> Option<(std::net::IpAddr, std::net::IpAddr)> {
    use etherparse::{LaxNetSlice, LaxSlicedPacket};
    match LaxSlicedPacket::from_ethernet(frame).ok()?.net? {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            Some((h.source_addr().into(), h.destination_addr().into()))
        }
    }
}

/// The frame with the tags the kernel moved into metadata put back after the MAC
/// addresses, as the VM wrote it: an outer 802.1ad tag, then an 802.1Q tag.
fn with_vlan_tags(frame: &[u8], outer: Option<u16>, vlan: Option<u16>) -> Vec<u8> {
    if frame.len() < 12 || (outer.is_none() && vlan.is_none()) {
        return frame.to_vec();
    }
    let mut f = Vec::with_capacity(frame.len() + 8);
    f.extend_from_slice(&frame[..12]);
    for (tpid, id) in [
        (diag_common::ETH_P_8021AD, outer),
        (diag_common::ETH_P_8021Q, vlan),
    ] {
        if let Some(id) = id {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
    }
    f.extend_from_slice(&frame[12..]);
    f
}
