//! What a tap's frames say of the guest's addresses: its own, and the ones it asks its
//! neighbours for. A nudge needs both and says where each came from; nothing here guesses.

use std::net::{IpAddr, Ipv6Addr};

use crate::model::{mac::MacAddr, Direction, FrameKind, FrameRecord};

/// Broadcast ARP targets kept per tap: a routed guest asks for its gateway and little else.
const ASKED_MAX: usize = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestAddrs {
    /// The source MAC of the VM's frames (QEMU's RARP carries the guest's).
    pub mac: Option<MacAddr>,
    /// Its own address: the sender of its ARP, the source of its IP frames.
    pub ip: Option<IpAddr>,
    /// What its own address was learnt from.
    pub ip_from_arp: bool,
    /// The address whose neighbour entry holds a MAC the tap does not have: the target of
    /// its unicast ARP request to such a MAC (Linux probing a stale entry).
    pub stale_probe: Option<IpAddr>,
    /// Addresses it asked for by broadcast ARP, newest last.
    pub asked: Vec<IpAddr>,
    /// Its own IPv6 address (a global one once it used one, else its link-local).
    pub ip6: Option<Ipv6Addr>,
    /// The target of its unicast Neighbour Solicitation to a MAC the tap does not have:
    /// Linux probing its stale router entry.
    pub stale_probe6: Option<Ipv6Addr>,
    /// Targets it solicited by multicast, newest last.
    pub asked6: Vec<Ipv6Addr>,
    /// It sent Router Solicitations (it looks for its router by neighbour discovery).
    pub solicited_routers: bool,
}

impl GuestAddrs {
    /// Learns from one frame the VM sent.
    pub fn learn(&mut self, f: &FrameRecord) {
        if f.direction != Direction::FromVm {
            return;
        }
        let ip = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<IpAddr>().ok());
        match f.kind {
            FrameKind::Rarp => self.mac = Some(f.src_mac),
            FrameKind::NeighborSolicit
            | FrameKind::NeighborAdvert
            | FrameKind::UnsolicitedNa
            | FrameKind::RouterSolicit => self.learn_nd(f),
            FrameKind::ArpRequest | FrameKind::ArpReply | FrameKind::Garp => {
                self.mac.get_or_insert(f.src_mac);
                if let Some(own) = ip(&f.sender_ip).filter(|a| !a.is_unspecified()) {
                    self.ip = Some(own);
                    self.ip_from_arp = true;
                }
                if f.kind != FrameKind::ArpRequest {
                    return;
                }
                let Some(target) = ip(&f.target_ip) else {
                    return;
                };
                if f.dst_mismatch {
                    self.stale_probe = Some(target);
                } else if f.dst_mac.is_broadcast() {
                    self.asked.retain(|a| *a != target);
                    if self.asked.len() == ASKED_MAX {
                        self.asked.remove(0);
                    }
                    self.asked.push(target);
                }
            }
            _ => {
                self.mac.get_or_insert(f.src_mac);
                // An address from ARP is the guest's own word; an IP source is kept only
                // until it says so.
                match ip(&f.src_ip).filter(|a| !a.is_unspecified()) {
                    Some(IpAddr::V6(v6)) => self.own6(v6),
                    Some(src) if !self.ip_from_arp => self.ip = Some(src),
                    _ => {}
                }
            }
        }
    }

    /// Its own IPv6 address: a global one replaces a link-local, not the other way round.
    fn own6(&mut self, a: Ipv6Addr) {
        let link_local = |a: &Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
        if a.is_multicast() || (link_local(&a) && self.ip6.is_some_and(|o| !link_local(&o))) {
            return;
        }
        self.ip6 = Some(a);
    }

    /// What the VM's neighbour discovery says: its addresses, and the ones it resolves.
    fn learn_nd(&mut self, f: &FrameRecord) {
        self.mac.get_or_insert(f.src_mac);
        let v6 = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Ipv6Addr>().ok());
        if let Some(src) = v6(&f.src_ip).filter(|a| !a.is_unspecified()) {
            self.own6(src);
        }
        match f.kind {
            FrameKind::RouterSolicit => self.solicited_routers = true,
            FrameKind::NeighborSolicit => {
                let Some(target) = v6(&f.target_ip) else {
                    return;
                };
                if f.dst_mismatch {
                    self.stale_probe6 = Some(target);
                } else if !f.dst_mac.is_unicast() {
                    self.asked6.retain(|a| *a != target);
                    if self.asked6.len() == ASKED_MAX {
                        self.asked6.remove(0);
                    }
                    self.asked6.push(target);
                }
            }
            // Its announce names its own address.
            _ => {
                if let Some(t) = v6(&f.target_ip) {
                    self.own6(t);
                }
            }
        }
    }
}
