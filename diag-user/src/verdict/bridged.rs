//! The bridged stale gateway. On a bridged tap (KubeVirt's bridge binding, Linux bridges,
//! OVS) the host's kernel drops nothing when a migrated guest keeps its old gateway MAC:
//! the frames go out and the network drops them elsewhere. The tap still shows it:
//!
//! After the VM's switch-over (its RARP), for one peer address P:
//! 1. the VM sends P's traffic to MAC X (its frames, sampled: every 100 ms at most);
//! 2. P's traffic reaches the VM from another MAC Y (the first data frame delivered to it);
//! 3. the VM still sends P's traffic to X after that;
//! 4. nothing from X has reached the tap's bridge since the switch-over (the bridge's
//!    forwarding table: X not learnt, or learnt before the switch-over).
//!
//! Then the guest's gateway entry is the old node's: BLACKOUT, from its first frame to X
//! after the switch-over, until it sends P's traffic, or that of another peer it sent to
//! X, to Y (kernel-timed frames, but sampled: the end may be up to 100 ms late).
//!
//! It never fires on ordinary bridged traffic: VMs talking on one L2 send to the MAC they
//! hear from (X = Y); a router on the same L2 that answers from another MAC (asymmetric
//! routing, VRRP) still sends into the bridge, so it is in the forwarding table (4); a
//! bridge learning a moved MAC changes no MAC the VM sends to. Its limits: it needs a
//! peer that talks to the VM (a guest that only sends is not judged), one data frame to
//! the VM after the RARP (the kernel reports the first), and a forwarding table to ask
//! (offline, from a bundle or capture, 1-3 make a suspicion in the diagnosis, not a
//! BLACKOUT).

use std::sync::Arc;

use super::{Engine, State};
use crate::{
    model::{clock::Ts, mac::MacAddr, Direction, FrameKind, FrameRecord, Record},
    registry::{peers::StaleGateway, Blackout, Tap},
};

/// What a run can ask of a bridged tap's bridge: whether `mac` sent anything into it since
/// `since`. `None` when it cannot tell.
pub trait BridgeEars: Send + Sync {
    fn heard_since(&self, tap: &Tap, mac: MacAddr, since: Ts) -> Option<bool>;
}

/// The bridge is asked at most this often per tap.
const ASK_EVERY_MS: i64 = 500;

impl Engine {
    /// A frame on a bridged tap after the VM's switch-over: what it says of the VM's
    /// gateways, and the blackout it begins or ends.
    pub(super) fn bridged_frame(&mut self, i: usize, f: &FrameRecord, changes: &mut Vec<Record>) {
        let ears = self.config.ears.0.clone();
        let t = self.tap_mut(i);
        let Some(sw) = t.switchover().filter(|sw| f.ts >= *sw) else {
            return;
        };
        // Asked before the frame is learnt: to which MAC the VM sent its peer until now.
        let end = ended(t, f);
        if !learn(t, f) {
            return;
        }
        if t.state == State::Blackout {
            if let Some(end) = end {
                let ms = t.blackout.map_or(0, |b| b.ms(end));
                if let Some(b) = t.blackout.as_mut() {
                    b.end = Some(end);
                }
                t.note(
                    end,
                    format!(
                        "the guest sends to the current gateway {}: recovered after {ms} ms",
                        f.dst_mac
                    ),
                );
                self.settled.push(super::Settled::Blackout { ms });
                self.set_state(i, State::Recovered, end, changes);
            }
            return;
        }
        if judge(t, ears.as_deref(), sw, f.ts) {
            self.set_state(i, State::Blackout, f.ts, changes);
        }
    }
}

/// Keeps what `f` says of a peer's MACs; whether it said anything.
fn learn(t: &mut Tap, f: &FrameRecord) -> bool {
    let ip = |s: &Option<String>| s.as_deref().and_then(|s| s.parse().ok());
    match f.direction {
        Direction::FromVm if f.dst_mac.is_unicast() && f.kind != FrameKind::ArpRequest => {
            let Some(peer) = ip(&f.dst_ip) else {
                return false;
            };
            t.peers.sent(peer, f.dst_mac, f.ts);
            true
        }
        Direction::ToVm if f.src_mac.is_unicast() => {
            let Some(peer) = ip(&f.src_ip) else {
                return false;
            };
            t.peers.arrived(peer, f.src_mac, f.ts);
            true
        }
        _ => false,
    }
}

/// A frame from the VM to the current gateway ends the blackout: for the stale one's
/// peer, or for any peer whose traffic it sent to the stale gateway until now (the guest
/// has one entry for its gateway: sampled frames may all be another peer's).
fn ended(t: &Tap, f: &FrameRecord) -> Option<Ts> {
    let g = t.peers.finding.filter(|g| g.confirmed)?;
    let peer: Option<std::net::IpAddr> = f.dst_ip.as_deref().and_then(|s| s.parse().ok());
    let moved = peer.is_some_and(|p| {
        p == g.peer || t.peers.sent.iter().any(|s| s.peer == p && s.mac == g.stale)
    });
    let to_current = f.direction == Direction::FromVm && f.dst_mac == g.current && moved;
    to_current.then_some(f.ts)
}

/// Steps 1-4 of the rule; whether a blackout begins (its record is made here).
fn judge(t: &mut Tap, ears: Option<&dyn BridgeEars>, sw: Ts, now: Ts) -> bool {
    let Some((sent, arrived)) = t.peers.crossed() else {
        t.peers.finding = None;
        return false;
    };
    let mut g = StaleGateway {
        peer: sent.peer,
        stale: sent.mac,
        current: arrived.mac,
        confirmed: false,
    };
    let due = t
        .peers
        .asked_at
        .is_none_or(|a| now.ms_since(a) >= ASK_EVERY_MS);
    if due {
        t.peers.asked_at = Some(now);
        g.confirmed = ears.and_then(|e| e.heard_since(t, g.stale, sw)) == Some(false);
    }
    let was = t.peers.finding;
    t.peers.finding = Some(g);
    if !g.confirmed {
        if was.is_none_or(|w| w.stale != g.stale) {
            t.note(
                now,
                format!(
                    "the guest sends {}'s traffic to {}, which arrives from {}",
                    g.peer, g.stale, g.current
                ),
            );
        }
        return false;
    }
    t.blackout = Some(Blackout {
        start: sent.first,
        end: None,
        stale_mac: g.stale,
    });
    t.note(sent.first, format!(
        "the guest sends to gateway MAC {}; since the migration its traffic comes from {}: blackout",
        g.stale, g.current
    ));
    true
}

/// The words for a bridged tap's stale gateway, found or suspected.
pub(super) fn words(t: &Tap) -> Option<String> {
    let g = t.peers.finding?;
    Some(if g.confirmed {
        format!(
            "The guest sends to gateway MAC {} (for {}); since the migration its traffic \
             comes from {}, and nothing from {} has reached this tap's bridge since the \
             switch-over: the guest keeps the old node's gateway MAC, and the network drops \
             what it sends there (the host cannot see those drops on a bridged tap).",
            g.stale, g.peer, g.current, g.stale
        )
    } else {
        format!(
            "The guest sends {}'s traffic to {} while it arrives from {}: its gateway MAC may \
             be the old node's (whether anything came from {} since the switch-over is not \
             known here).",
            g.peer, g.stale, g.current, g.stale
        )
    })
}

/// The bridge's ears for a run, shared by its engine (none offline).
#[derive(Clone, Default)]
pub struct Ears(pub Option<Arc<dyn BridgeEars>>);

impl std::fmt::Debug for Ears {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ears(bridge)"
        } else {
            "Ears(none)"
        })
    }
}

#[cfg(test)]
mod tests;
