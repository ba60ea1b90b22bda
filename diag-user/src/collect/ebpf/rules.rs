//! When a tap carries the per-frame probe: pure rules of typed inputs, unit-tested without
//! root. The datapath ([`super::taps`]) applies what they decide with aya and netlink.
//!
//! In the drop-driven datapath a tap is seen by the kernel's drops and the ARP socket
//! filter alone, until one of these gives it the per-frame probe (the "assist": it times
//! the end of stale frames, and the first frame delivered to the VM, to the frame):
//!
//! - it appeared while watched: a migrating VM's RARP and the first frames to it come
//!   within a millisecond of its resume, sooner than a probe added on the RARP could be
//!   there; it keeps the probe until its VM has sent, then for the linger;
//! - a sign of trouble: a stale frame, a RARP, its MAC changing while its VM sends, or a
//!   window still open at an interval (its event lost);
//!
//! and loses it after `linger` without trouble. A bridged tap carries the full probe (the
//! bridge forwards frames to other MACs: nothing is dropped), and so does every tap of the
//! tc datapath.

use std::time::{Duration, Instant};

use crate::model::{
    probe::{ProbeChange, ProbeReason},
    FrameKind,
};

/// How a tap is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// The kernel's drops and the socket filter only.
    Drops,
    /// Also the per-frame probe that times the end of stale frames.
    Assist {
        last_trouble: Instant,
        /// Kept until the VM has sent (a tap that appeared while watched).
        until_sent: bool,
    },
    /// The full per-frame probe.
    Full,
}

/// What the datapath does to a tap's hooks; the change to say when it is done.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    Nothing,
    /// Add the assist; once added the tap carries [`Carried::Assist`].
    AddAssist(ProbeChange),
    RemoveAssist(ProbeChange),
    /// Replace the drop-driven hooks (and an assist) by the full probe.
    ToFull(ProbeChange),
    /// Back from the full probe to the drop-driven hooks.
    ToDrops(ProbeChange),
}

/// The hooks of a tap being attached: `drops` says whether the drop-driven datapath runs.
pub fn on_attach(drops: bool, bridged: bool, appeared: bool) -> (Carried, Step) {
    if !drops || bridged {
        (Carried::Full, Step::Nothing)
    } else if appeared {
        let change = ProbeChange::added(ProbeReason::Appeared, true);
        (Carried::Drops, Step::AddAssist(change))
    } else {
        (Carried::Drops, Step::Nothing)
    }
}

/// Which sign of trouble a frame event is, if any.
pub fn trouble_of(kind: FrameKind, also_mismatch: bool) -> Option<ProbeReason> {
    match kind {
        FrameKind::Rarp => Some(ProbeReason::Rarp),
        FrameKind::DstMismatch => Some(ProbeReason::StaleFrames),
        _ if also_mismatch => Some(ProbeReason::StaleFrames),
        _ => None,
    }
}

/// A sign of trouble: the probe is added, or kept for another `linger`.
pub fn on_trouble(c: &mut Carried, reason: ProbeReason, now: Instant) -> Step {
    match c {
        Carried::Drops => Step::AddAssist(ProbeChange::added(reason, false)),
        Carried::Assist { last_trouble, .. } => {
            *last_trouble = now;
            Step::Nothing
        }
        Carried::Full => Step::Nothing,
    }
}

/// The tap changed: its bridge, or its MAC. `has_sent` is asked only when it matters (it
/// reads the link's statistics).
pub fn on_change(
    c: &mut Carried,
    drops: bool,
    bridged: bool,
    mac_changed: bool,
    has_sent: impl FnOnce() -> bool,
    now: Instant,
) -> Step {
    match (*c, drops && !bridged) {
        (Carried::Drops | Carried::Assist { .. }, false) => {
            Step::ToFull(ProbeChange::added(ProbeReason::JoinedBridge, false))
        }
        (Carried::Full, true) => Step::ToDrops(ProbeChange::removed(ProbeReason::LeftBridge)),
        // The MAC of a tap whose VM was already sending changed: frames to the old MAC may
        // follow at once (and end within milliseconds). A MAC set on a fresh tap, as
        // libvirt does, is no trouble.
        (_, true) if mac_changed && has_sent() => on_trouble(c, ProbeReason::MacChanged, now),
        _ => Step::Nothing,
    }
}

/// Once an interval: `pending` says the tap's window is open (or the first frame to the
/// VM after its RARP is awaited), `sent` whether its VM has sent since it was attached.
pub fn on_interval(
    c: &mut Carried,
    pending: bool,
    sent: bool,
    linger: Duration,
    now: Instant,
) -> Step {
    if *c == Carried::Full {
        return Step::Nothing;
    }
    if pending {
        // Also where the event was lost (a full ring): the window is the truth.
        return on_trouble(c, ProbeReason::StaleFrames, now);
    }
    let Carried::Assist {
        last_trouble,
        until_sent,
    } = c
    else {
        return Step::Nothing;
    };
    if *until_sent {
        if !sent {
            return Step::Nothing;
        }
        *until_sent = false;
        *last_trouble = now;
    }
    if now.saturating_duration_since(*last_trouble) >= linger {
        Step::RemoveAssist(ProbeChange::calm(linger))
    } else {
        Step::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_secs(60);

    fn added(reason: ProbeReason) -> Step {
        Step::AddAssist(ProbeChange::added(reason, false))
    }

    #[test]
    fn attach() {
        assert_eq!(
            on_attach(true, false, false),
            (Carried::Drops, Step::Nothing)
        );
        assert_eq!(
            on_attach(true, false, true),
            (
                Carried::Drops,
                Step::AddAssist(ProbeChange::added(ProbeReason::Appeared, true))
            )
        );
        // A bridged tap, or any tap of the tc datapath, carries the full probe.
        assert_eq!(on_attach(true, true, true), (Carried::Full, Step::Nothing));
        assert_eq!(
            on_attach(false, false, false),
            (Carried::Full, Step::Nothing)
        );
    }

    #[test]
    fn trouble_adds_the_probe_or_keeps_it() {
        let t0 = Instant::now();
        let mut c = Carried::Drops;
        assert_eq!(
            on_trouble(&mut c, ProbeReason::Rarp, t0),
            added(ProbeReason::Rarp)
        );
        // Not added yet: the datapath sets Assist once the attach worked.
        assert_eq!(c, Carried::Drops);
        let mut c = Carried::Assist {
            last_trouble: t0,
            until_sent: false,
        };
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            on_trouble(&mut c, ProbeReason::StaleFrames, t1),
            Step::Nothing
        );
        assert_eq!(
            c,
            Carried::Assist {
                last_trouble: t1,
                until_sent: false
            }
        );
        let mut full = Carried::Full;
        assert_eq!(
            on_trouble(&mut full, ProbeReason::StaleFrames, t1),
            Step::Nothing
        );
        assert_eq!(
            trouble_of(FrameKind::DstMismatch, false),
            Some(ProbeReason::StaleFrames)
        );
        assert_eq!(trouble_of(FrameKind::Rarp, false), Some(ProbeReason::Rarp));
        // A unicast ARP probe to the old MAC is a stale frame too.
        assert_eq!(
            trouble_of(FrameKind::ArpRequest, true),
            Some(ProbeReason::StaleFrames)
        );
        assert_eq!(trouble_of(FrameKind::Garp, false), None);
    }

    #[test]
    fn bridges_and_mac_changes() {
        let t = Instant::now();
        let never = || panic!("the link's statistics are read only when they matter");
        let mut c = Carried::Assist {
            last_trouble: t,
            until_sent: false,
        };
        assert_eq!(
            on_change(&mut c, true, true, false, never, t),
            Step::ToFull(ProbeChange::added(ProbeReason::JoinedBridge, false))
        );
        let mut c = Carried::Full;
        assert_eq!(
            on_change(&mut c, true, false, false, never, t),
            Step::ToDrops(ProbeChange::removed(ProbeReason::LeftBridge))
        );
        // The tc datapath never goes back to drops.
        assert_eq!(
            on_change(&mut c, false, false, true, never, t),
            Step::Nothing
        );
        let mut c = Carried::Drops;
        assert_eq!(
            on_change(&mut c, true, false, true, || true, t),
            added(ProbeReason::MacChanged)
        );
        assert_eq!(
            on_change(&mut c, true, false, true, || false, t),
            Step::Nothing,
            "a MAC set on a fresh tap"
        );
        assert_eq!(
            on_change(&mut c, true, false, false, never, t),
            Step::Nothing
        );
    }

    #[test]
    fn intervals() {
        let t0 = Instant::now();
        let later = t0 + LINGER;
        // An open window without the probe (its event lost) brings it.
        let mut c = Carried::Drops;
        assert_eq!(
            on_interval(&mut c, true, true, LINGER, t0),
            added(ProbeReason::StaleFrames)
        );
        assert_eq!(on_interval(&mut c, false, true, LINGER, t0), Step::Nothing);
        // Calm for the linger: removed.
        let mut c = Carried::Assist {
            last_trouble: t0,
            until_sent: false,
        };
        let almost = later - Duration::from_millis(1);
        assert_eq!(
            on_interval(&mut c, false, true, LINGER, almost),
            Step::Nothing
        );
        assert_eq!(
            on_interval(&mut c, false, true, LINGER, later),
            Step::RemoveAssist(ProbeChange::calm(LINGER))
        );
        // An open window keeps it.
        assert_eq!(
            on_interval(&mut c, true, true, LINGER, later),
            Step::Nothing
        );
        assert!(matches!(c, Carried::Assist { last_trouble, .. } if last_trouble == later));
        // A tap that appeared keeps it until its VM sent, then for the linger.
        let mut c = Carried::Assist {
            last_trouble: t0,
            until_sent: true,
        };
        let much_later = t0 + 10 * LINGER;
        assert_eq!(
            on_interval(&mut c, false, false, LINGER, much_later),
            Step::Nothing
        );
        assert_eq!(
            on_interval(&mut c, false, true, LINGER, much_later),
            Step::Nothing
        );
        assert_eq!(
            c,
            Carried::Assist {
                last_trouble: much_later,
                until_sent: false
            }
        );
        assert_eq!(
            on_interval(&mut c, false, true, LINGER, much_later + LINGER),
            Step::RemoveAssist(ProbeChange::calm(LINGER))
        );
        // With no linger, the probe goes at the interval the VM has sent.
        let mut c = Carried::Assist {
            last_trouble: t0,
            until_sent: true,
        };
        assert_eq!(
            on_interval(&mut c, false, true, Duration::ZERO, t0),
            Step::RemoveAssist(ProbeChange::calm(Duration::ZERO))
        );
        let mut full = Carried::Full;
        assert_eq!(
            on_interval(&mut full, true, true, LINGER, t0),
            Step::Nothing
        );
    }
}
