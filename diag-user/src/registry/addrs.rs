//! What a tap's frames say of the guest's addresses: its own, and the ones it asks its
//! neighbours for. A nudge needs both and says where each came from; nothing here guesses.

use std::net::IpAddr;

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
                if !self.ip_from_arp {
                    if let Some(src) = ip(&f.src_ip).filter(|a| !a.is_unspecified()) {
                        self.ip = Some(src);
                    }
                }
            }
        }
    }
}
