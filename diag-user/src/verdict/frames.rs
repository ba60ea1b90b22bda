//! Frames make and end blackouts: the first stale frame on a routed tap opens one, the
//! first frame to the tap's MAC after it (kernel-timed) ends it; announces and ARP go into
//! the tap's timeline.

use super::{Blackout, Engine, Settled, State};
use crate::{
    model::{mac::MacAddr, Direction, FrameKind, FrameRecord, Mode, Record},
    registry::{Announce, Tap},
};

impl Engine {
    pub(super) fn frame(&mut self, f: &FrameRecord, changes: &mut Vec<Record>) {
        let Some(i) = self.live(&f.ifname) else {
            return;
        };
        let from_vm = f.direction == Direction::FromVm;
        if from_vm {
            // What was foreseen is said before the VM's first frame.
            self.say_forecast(i, f.ts, changes);
            let t = self.tap_mut(i);
            t.last_from_vm = f.ts;
            if t.first_from_vm.is_none() || t.first_from_vm_approx {
                t.first_from_vm = Some(t.first_from_vm.map_or(f.ts, |a| a.min(f.ts)));
                t.first_from_vm_approx = false;
            }
            self.wake(i, f.ts, changes);
        }
        note_kind(self.tap_mut(i), f, from_vm);
        self.tap_mut(i).addrs.learn(f);
        // A bridged tap's frames to other MACs are its normal traffic (kept as such); its
        // blackouts are the stale gateway's (see `bridged`).
        if self.registry.at(i).mode == Mode::Bridged {
            if from_vm && (f.kind == FrameKind::DstMismatch || f.dst_mismatch) {
                stale_frame(self.tap_mut(i), f);
            }
            self.bridged_frame(i, f, changes);
            return;
        }
        if from_vm && (f.kind == FrameKind::DstMismatch || f.dst_mismatch) {
            if stale_frame(self.tap_mut(i), f) {
                self.set_state(i, State::Blackout, f.ts, changes);
            }
        } else if f.kind == FrameKind::DstMatch && self.registry.at(i).state == State::Blackout {
            if still_stale(self.tap_mut(i), f) {
                return;
            }
            if let Some(ms) = recovered(self.tap_mut(i), f) {
                self.settled.push(Settled::Blackout { ms });
            }
            self.set_state(i, State::Recovered, f.ts, changes);
        }
    }
}

/// Announces, the first frame delivered to the VM and ARP, in the tap's timeline.
fn note_kind(t: &mut Tap, f: &FrameRecord, from_vm: bool) {
    let ips = match (&f.sender_ip, &f.target_ip) {
        (Some(s), Some(d)) => (s.as_str(), d.as_str()),
        _ => ("?", "?"),
    };
    match f.kind {
        FrameKind::Rarp => {
            t.last_rarp = Some(f.ts);
            t.first_rarp.get_or_insert(f.ts);
            t.rarps += 1;
            t.first_announce.get_or_insert(f.ts);
            t.remember_announce(f.ts, Announce::Rarp);
            t.note(f.ts, format!("RARP announce from {}", f.src_mac));
        }
        FrameKind::Inbound
            if t.first_inbound.is_none() && t.switchover().is_some_and(|sw| f.ts >= sw) =>
        {
            t.first_inbound = Some(f.ts);
            t.note(
                f.ts,
                format!("first frame delivered to the VM (from {})", f.src_mac),
            );
        }
        FrameKind::Garp => {
            t.last_garp = Some(f.ts);
            t.first_garp.get_or_insert(f.ts);
            t.garps += 1;
            t.first_announce.get_or_insert(f.ts);
            t.remember_announce(f.ts, Announce::Garp);
            t.note(f.ts, format!("GARP {} is-at {}", ips.0, f.src_mac));
        }
        FrameKind::ArpRequest => {
            if from_vm {
                t.last_guest_arp = Some(f.ts);
            }
            let who = if from_vm { "guest" } else { "host" };
            t.note(f.ts, format!("{who} ARP: who has {} tell {}", ips.1, ips.0));
        }
        FrameKind::ArpReply => {
            let who = if from_vm { "guest" } else { "host" };
            t.note(
                f.ts,
                format!("{who} ARP reply: {} is-at {}", ips.0, f.src_mac),
            );
        }
        _ => note_nd(t, f, from_vm),
    }
}

/// Neighbour discovery in the tap's timeline: IPv6's announce, solicitations and the
/// routers' advertisements.
fn note_nd(t: &mut Tap, f: &FrameRecord, from_vm: bool) {
    let who = if from_vm { "guest" } else { "host" };
    let target = f.target_ip.as_deref().unwrap_or("?");
    let src = f.src_ip.as_deref().unwrap_or("?");
    match f.kind {
        FrameKind::UnsolicitedNa if from_vm => {
            t.nd.first_announce.get_or_insert(f.ts);
            t.nd.announces += 1;
            t.first_announce.get_or_insert(f.ts);
            t.note(
                f.ts,
                format!("unsolicited NA (override): {target} is-at {}", f.src_mac),
            );
        }
        FrameKind::NeighborSolicit => {
            if from_vm {
                t.nd.last_solicit = Some(f.ts);
            }
            let to = if f.dst_mac.is_unicast() {
                format!(" to {}", f.dst_mac)
            } else {
                String::new()
            };
            t.note(f.ts, format!("{who} NS: who has {target}{to}"));
        }
        FrameKind::NeighborAdvert | FrameKind::UnsolicitedNa => {
            t.note(f.ts, format!("{who} NA: {target} is-at {}", f.src_mac));
        }
        FrameKind::RouterSolicit if from_vm => {
            t.nd.last_rs = Some(f.ts);
            t.note(f.ts, format!("guest router solicitation from {src}"));
        }
        FrameKind::RouterAdvert => {
            if !from_vm {
                t.nd.last_ra = Some(f.ts);
            }
            t.note(
                f.ts,
                format!("{who} router advertisement from {src} at {}", f.src_mac),
            );
        }
        _ => {}
    }
}

/// A stale frame from the VM; whether it begins a blackout.
fn stale_frame(t: &mut Tap, f: &FrameRecord) -> bool {
    t.first_mismatch.get_or_insert(f.ts);
    t.last_mismatch = Some(t.last_mismatch.map_or(f.ts, |m| m.max(f.ts)));
    // A stale frame the kernel timed before the end of the last window, reported after it
    // (another CPU's event), belongs to that window.
    let closed_before = t.blackout.and_then(|b| b.end).is_some_and(|e| f.ts <= e);
    if t.mode != Mode::Routed || t.state == State::Blackout || closed_before {
        if t.state == State::Blackout || closed_before {
            t.nd.stale.add(f.family());
        }
        if t.state == State::Blackout {
            t.nd.open.add(f.family());
            t.nd.closed = None;
        }
        return false;
    }
    t.nd.stale = Default::default();
    t.nd.stale.add(f.family());
    t.nd.open = t.nd.stale;
    t.blackout = Some(Blackout {
        start: f.ts,
        end: None,
        stale_mac: f.dst_mac,
    });
    let what = if f.dst_mac == MacAddr::default() {
        // A cooked capture: the kernel said "not mine", not to whom.
        "first frame to a MAC that is not the tap's: blackout".to_string()
    } else {
        format!("first frame to {} (not the tap's MAC): blackout", f.dst_mac)
    };
    t.note(f.ts, what);
    true
}

/// A frame to the tap's MAC of one family while the other's still go to the stale MAC (a
/// dual-stack guest that re-learnt one gateway): the blackout goes on, said once.
fn still_stale(t: &mut Tap, f: &FrameRecord) -> bool {
    let was = t.nd.open;
    t.nd.open.remove(f.family());
    if t.nd.open.is_empty() {
        return false;
    }
    t.nd.closed = Some((f.ts, None));
    if t.nd.open != was {
        let (fixed, stale) = if t.nd.open.v6 {
            ("IPv4", "IPv6")
        } else {
            ("IPv6", "IPv4")
        };
        t.note(
            f.ts,
            format!("{fixed} frames reach the tap's MAC again; {stale} frames are still stale"),
        );
    }
    true
}

/// The first frame to the tap's MAC after stale ones ends the blackout; its length.
fn recovered(t: &mut Tap, f: &FrameRecord) -> Option<u64> {
    let b = t.blackout.as_mut()?;
    b.end = Some(f.ts);
    let ms = b.ms(f.ts);
    let what = if f.dst_mac == MacAddr::default() {
        format!("first frame the tap accepted: recovered after {ms} ms")
    } else {
        format!(
            "first frame to the tap's MAC {}: recovered after {ms} ms",
            f.dst_mac
        )
    };
    t.note(f.ts, what);
    Some(ms)
}
