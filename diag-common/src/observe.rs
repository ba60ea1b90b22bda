//! The one step every datapath takes for each frame it sees, after [`crate::classify`]:
//! count it, follow the tap's mismatch window, and decide whether it goes out as an event.
//! The eBPF program, the libpcap datapath and offline replay all call [`observe`], so a
//! frame is counted, timed and sampled the same way wherever it is seen.

use crate::{
    Classification, Direction, FrameEvent, FrameKind, TapCounters, TapWindow,
    EVENT_FLAG_DST_MISMATCH,
};

/// A frame the step decided to report: its kind, and when (from the datapath's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub kind: FrameKind,
    pub ts_ns: u64,
}

/// What a datapath knows of a frame besides its classification.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    pub direction: Direction,
    /// Addressed to the tap's own MAC: the kernel's PACKET_HOST, or a MAC comparison.
    pub to_own_mac: bool,
    /// Length as the VM or host wrote it (tags the kernel moved into metadata included).
    pub frame_len: u64,
    /// Rate-limit mismatch events (live datapaths); off when replaying frames that were
    /// already chosen.
    pub sampled: bool,
    /// Count the frame in the frame and byte totals: the datapath sees every frame. The
    /// kernel's programs see only frames that matter and take totals from the link's
    /// statistics.
    pub totals: bool,
}

/// Counts a classified frame into `counters`, follows the tap's mismatch window (looked up
/// by `window` only when the frame can change it) and says whether the frame goes out as
/// an event. `clock` is read only when needed: in a VM it costs as much as the rest.
#[inline(always)]
pub fn observe<'w>(
    counters: &mut TapCounters,
    window: impl FnOnce() -> Option<&'w mut TapWindow>,
    class: &Classification,
    seen: &Observed,
    clock: &mut impl FnMut() -> u64,
) -> Option<Admitted> {
    counters.record(class, seen.direction, seen.frame_len, seen.totals);
    let mut now = 0;
    let mut kind = class.kind;
    // The stale frame that opens a window is always reported: a blackout that begins
    // within a sampling interval of the last one's frames must not pass for them.
    let mut opens = false;
    let from_vm = seen.direction == Direction::FromVm;
    // Only frames from the VM to a unicast MAC can open or close a window, a RARP from the
    // VM arm the inbound watch, and a data frame to the VM end it; nothing else touches
    // the window.
    let touches = if from_vm {
        class.dst_mismatch || seen.to_own_mac || class.rarp
    } else {
        class.data
    };
    if touches {
        if let Some(w) = window() {
            if from_vm {
                // A correctly addressed frame can only end an open window.
                if class.dst_mismatch || w.is_open() {
                    now = clock();
                    opens = !w.is_open();
                    kind = w.follow(class, seen.to_own_mac, seen.direction, now);
                }
                // The migration's announce: from now on the first data frame delivered to
                // the VM says when the network reaches it again.
                if class.rarp && w.inbound_armed_ns == 0 {
                    if now == 0 {
                        now = clock();
                    }
                    w.inbound_armed_ns = now;
                }
            } else if w.inbound_armed_ns != 0 {
                now = clock();
                // Only a frame timed after the RARP: the libpcap datapath reads the two
                // directions from two handles, so an older frame to the VM can come after.
                if now >= w.inbound_armed_ns {
                    w.inbound_armed_ns = 0;
                    kind = Some(FrameKind::Inbound);
                }
            }
        }
    }
    let kind = kind?;
    if now == 0 {
        now = clock();
    }
    if seen.sampled && !counters.admit_event(kind, now) && !opens {
        return None;
    }
    Some(Admitted { kind, ts_ns: now })
}

/// `FrameEvent::flags` for a frame: `stripped` (`EVENT_FLAG_VLAN` or
/// `EVENT_FLAG_OUTER_VLAN` for a tag the kernel moved into metadata, `EVENT_FLAG_VLAN_LOST`
/// for one it took off and forgot, else 0) and whether it was also a mismatch.
#[inline(always)]
pub fn event_flags(class: &Classification, stripped: u8) -> u8 {
    stripped
        | if class.dst_mismatch {
            EVENT_FLAG_DST_MISMATCH
        } else {
            0
        }
}

impl FrameEvent {
    /// Writes everything of an event but its bytes (`captured`, `data`) through `ev`, which
    /// may point at uninitialised memory (a ring buffer slot).
    ///
    /// # Safety
    /// `ev` must be valid for writes of a whole `FrameEvent`.
    #[inline(always)]
    pub unsafe fn write_header(
        ev: *mut FrameEvent,
        admitted: &Admitted,
        ifindex: u32,
        seen: &Observed,
        class: &Classification,
        stripped: u8,
    ) {
        // SAFETY: the caller guarantees `ev` is valid for writes; fields are written through
        // raw places, never through a reference to uninitialised memory.
        unsafe {
            core::ptr::addr_of_mut!((*ev).ts_ns).write(admitted.ts_ns);
            core::ptr::addr_of_mut!((*ev).ifindex).write(ifindex);
            core::ptr::addr_of_mut!((*ev).frame_len).write(seen.frame_len as u32);
            core::ptr::addr_of_mut!((*ev).direction).write(seen.direction as u8);
            core::ptr::addr_of_mut!((*ev).kind).write(admitted.kind as u8);
            core::ptr::addr_of_mut!((*ev).flags).write(event_flags(class, stripped));
            core::ptr::addr_of_mut!((*ev)._pad).write(0);
            core::ptr::addr_of_mut!((*ev).vlan).write(class.vlan.unwrap_or(0));
            core::ptr::addr_of_mut!((*ev).outer_vlan).write(class.outer_vlan.unwrap_or(0));
            core::ptr::addr_of_mut!((*ev)._pad2).write([0; 6]);
        }
    }

    /// A whole event of `frame`'s first bytes (userspace datapaths and replay).
    pub fn of(
        frame: &[u8],
        admitted: &Admitted,
        ifindex: u32,
        seen: &Observed,
        class: &Classification,
    ) -> Self {
        let mut ev = FrameEvent::zeroed();
        // SAFETY: `ev` is a whole, initialised event.
        unsafe { FrameEvent::write_header(&mut ev, admitted, ifindex, seen, class, 0) };
        let n = frame.len().min(crate::EVENT_SNAPLEN);
        ev.data[..n].copy_from_slice(&frame[..n]);
        ev.captured = n as u16;
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{classify, MISMATCH_SAMPLE_INTERVAL_NS};

    fn udp_to(dst: [u8; 6]) -> [u8; 60] {
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    const OLD: [u8; 6] = [0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc];
    const NEW: [u8; 6] = [0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe];

    fn from_vm(to_own_mac: bool, sampled: bool) -> Observed {
        Observed {
            direction: Direction::FromVm,
            to_own_mac,
            frame_len: 60,
            sampled,
            totals: true,
        }
    }

    /// The stale-MAC story through the one step: counted, the window opened at the first
    /// mismatch and closed (DstMatch) by the first frame to the tap's MAC, the clock read
    /// only when it matters, mismatches sampled.
    #[test]
    fn the_stale_mac_story() {
        let (mut c, mut w) = (TapCounters::default(), TapWindow::default());
        let reads = core::cell::Cell::new(0);
        let step = |dst, own: bool, at: u64, c: &mut TapCounters, w: &mut TapWindow| {
            let f = udp_to(dst);
            let class = classify(&f, !own, Direction::FromVm);
            let mut clock = || {
                reads.set(reads.get() + 1);
                at
            };
            observe(c, || Some(w), &class, &from_vm(own, true), &mut clock)
        };
        // Healthy traffic: counted, no event, no clock read.
        assert_eq!(step(NEW, true, 1, &mut c, &mut w), None);
        assert_eq!(c.from_vm_frames, 1);
        let first = step(OLD, false, 100, &mut c, &mut w).unwrap();
        assert_eq!(
            first,
            Admitted {
                kind: FrameKind::DstMismatch,
                ts_ns: 100
            }
        );
        assert_eq!(w.mismatch_since_ns, 100);
        // Sampled: the next mismatches within the interval are counted, not reported.
        assert_eq!(step(OLD, false, 200, &mut c, &mut w), None);
        let later = 100 + MISMATCH_SAMPLE_INTERVAL_NS;
        assert!(step(OLD, false, later, &mut c, &mut w).is_some());
        let end = step(NEW, true, later + 5, &mut c, &mut w).unwrap();
        assert_eq!(
            end,
            Admitted {
                kind: FrameKind::DstMatch,
                ts_ns: later + 5
            }
        );
        assert!(!w.is_open());
        // A new window within the sampling interval of the last sample still reports the
        // frame that opens it, and samples the rest.
        let again = step(OLD, false, later + 10, &mut c, &mut w).unwrap();
        assert_eq!(again.kind, FrameKind::DstMismatch);
        assert_eq!(w.mismatch_since_ns, later + 10);
        assert_eq!(step(OLD, false, later + 20, &mut c, &mut w), None);
        assert_eq!((c.from_vm_frames, c.dst_mismatch_frames), (7, 5));
        assert_eq!(
            reads.get(),
            6,
            "the clock was read only for the window and events"
        );
    }

    /// After a RARP from the VM, the first data frame delivered to it is `inbound`, once;
    /// ARP to the VM does not count, and nothing is armed without a RARP.
    #[test]
    fn the_first_data_frame_to_the_vm_after_its_rarp() {
        let (mut c, mut w) = (TapCounters::default(), TapWindow::default());
        let to_vm = Observed {
            direction: Direction::ToVm,
            ..from_vm(false, true)
        };
        let mut to_guest = udp_to([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
        to_guest[6..12].copy_from_slice(&NEW);
        let data = classify(&to_guest, false, Direction::ToVm);
        assert!(data.data);
        let step =
            |class: &Classification,
             seen: &Observed,
             at,
             c: &mut TapCounters,
             w: &mut TapWindow| { observe(c, || Some(w), class, seen, &mut || at) };
        assert_eq!(step(&data, &to_vm, 5, &mut c, &mut w), None, "not armed");
        let mut rarp = [0u8; 60];
        rarp[..6].copy_from_slice(&[0xff; 6]);
        rarp[12..14].copy_from_slice(&crate::ETH_P_RARP.to_be_bytes());
        let rarp = classify(&rarp, false, Direction::FromVm);
        let announced = step(&rarp, &from_vm(false, true), 10, &mut c, &mut w).unwrap();
        assert_eq!(announced.kind, FrameKind::Rarp);
        assert_eq!(w.inbound_armed_ns, 10);
        assert!(w.pending() && !w.is_open());
        // A second RARP does not move the start.
        step(&rarp, &from_vm(false, true), 20, &mut c, &mut w);
        assert_eq!(w.inbound_armed_ns, 10);
        // A frame timed before the RARP (read late from another capture handle) is not it.
        assert_eq!(step(&data, &to_vm, 9, &mut c, &mut w), None, "older");
        assert!(w.pending());
        let first = step(&data, &to_vm, 30, &mut c, &mut w).unwrap();
        assert_eq!(
            first,
            Admitted {
                kind: FrameKind::Inbound,
                ts_ns: 30
            }
        );
        assert!(!w.pending());
        assert_eq!(step(&data, &to_vm, 40, &mut c, &mut w), None, "once");
    }

    #[test]
    fn replay_reports_every_chosen_frame() {
        let (mut c, mut w) = (TapCounters::default(), TapWindow::default());
        let f = udp_to(OLD);
        let class = classify(&f, true, Direction::FromVm);
        for at in [10, 11, 12] {
            let admitted = observe(
                &mut c,
                || Some(&mut w),
                &class,
                &from_vm(false, false),
                &mut || at,
            );
            assert!(admitted.is_some(), "unsampled: every frame at {at}");
        }
    }

    #[test]
    fn an_event_says_what_it_is() {
        let f = udp_to(OLD);
        let class = classify(&f, true, Direction::FromVm);
        let seen = from_vm(false, true);
        let a = Admitted {
            kind: FrameKind::DstMismatch,
            ts_ns: 42,
        };
        let ev = FrameEvent::of(&f, &a, 7, &seen, &class);
        assert_eq!(
            (ev.ts_ns, ev.ifindex, ev.frame_len, ev.kind),
            (42, 7, 60, 1)
        );
        assert_eq!(ev.flags, EVENT_FLAG_DST_MISMATCH);
        assert_eq!(ev.frame(), &f[..]);
    }
}
