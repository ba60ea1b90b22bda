//! What a bridged tap's frames say of the VM's gateways since its switch-over: to which MAC
//! it sends each peer's traffic, and from which MAC each peer's traffic reaches it. The
//! bridged stale-gateway detector (`verdict::bridged`) reads it.

use std::net::IpAddr;

use crate::model::{clock::Ts, mac::MacAddr};

/// Peers kept per direction: the detector needs the few the VM talks to most recently.
const PEERS_MAX: usize = 32;

/// The VM sends `peer`'s traffic to `mac`: since `first`, last at `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub peer: IpAddr,
    pub mac: MacAddr,
    pub first: Ts,
    pub last: Ts,
}

/// `peer`'s traffic reached the VM from `mac` at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrived {
    pub peer: IpAddr,
    pub mac: MacAddr,
    pub at: Ts,
}

/// The detector's finding on a tap: the VM sends `peer`'s traffic to `stale`, while it
/// arrives from `current`; `confirmed` once nothing from `stale` reached the tap's bridge
/// since the switch-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleGateway {
    pub peer: IpAddr,
    pub stale: MacAddr,
    pub current: MacAddr,
    pub confirmed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMacs {
    pub sent: Vec<Sent>,
    pub arrived: Vec<Arrived>,
    pub finding: Option<StaleGateway>,
    /// When the bridge was last asked about the stale MAC (at most every half second).
    pub asked_at: Option<Ts>,
}

impl PeerMacs {
    /// The VM sent `peer`'s traffic to `mac` at `ts`.
    pub fn sent(&mut self, peer: IpAddr, mac: MacAddr, ts: Ts) {
        match self.sent.iter_mut().find(|s| s.peer == peer) {
            Some(s) if s.mac == mac => s.last = s.last.max(ts),
            Some(s) => {
                *s = Sent {
                    peer,
                    mac,
                    first: ts,
                    last: ts,
                }
            }
            None => {
                if self.sent.len() == PEERS_MAX {
                    self.sent.remove(0);
                }
                self.sent.push(Sent {
                    peer,
                    mac,
                    first: ts,
                    last: ts,
                });
            }
        }
    }

    /// `peer`'s traffic reached the VM from `mac` at `at`.
    pub fn arrived(&mut self, peer: IpAddr, mac: MacAddr, at: Ts) {
        self.arrived.retain(|a| a.peer != peer);
        if self.arrived.len() == PEERS_MAX {
            self.arrived.remove(0);
        }
        self.arrived.push(Arrived { peer, mac, at });
    }

    /// A peer whose traffic the VM sends to one MAC after it arrived from another: the
    /// stale MAC, the current one.
    pub fn crossed(&self) -> Option<(Sent, Arrived)> {
        self.sent.iter().find_map(|s| {
            let a = self.arrived.iter().find(|a| a.peer == s.peer)?;
            (a.mac != s.mac && s.last > a.at).then_some((*s, *a))
        })
    }
}
