//! Counters: rates for the view, QUIET when the VM stops sending, and blackouts that only
//! the counters show (their frames' events sampled out or lost), ordered by the kernel's
//! own window.

use super::{Blackout, Engine, Settled, State, OUTBOUND_SETTLE, SERIES_LEN};
use crate::model::{clock::Ts, mac::MacAddr, Mode, Record, TapRow};

impl Engine {
    pub(super) fn stats(&mut self, row: &TapRow, ts: Ts, changes: &mut Vec<Record>) {
        let Some(i) = self.live(&row.ifname) else {
            return;
        };
        let quiet_after = self.config.quiet_after;
        let t = self.tap_mut(i);
        let prev = std::mem::replace(&mut t.counters, row.clone());
        if let Some(last) = t.last_stats {
            let secs = ts.ms_since(last) as f64 / 1000.0;
            if secs > 0.0 {
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                t.from_vm_fps = rate(row.from_vm_frames, prev.from_vm_frames);
                t.to_vm_fps = rate(row.to_vm_frames, prev.to_vm_frames);
                t.mismatch_ps = rate(row.dst_mismatch_frames, prev.dst_mismatch_frames);
                if t.mismatch_series.len() == SERIES_LEN {
                    t.mismatch_series.pop_front();
                }
                t.mismatch_series.push_back(t.mismatch_ps.round() as u64);
            }
        }
        let prev_stats = t.last_stats.replace(ts);
        if row.from_vm_frames > 0 && t.first_from_vm.is_none() {
            // Only counted (no frame of it was reported): known to the interval.
            t.first_from_vm = Some(ts);
            t.first_from_vm_approx = true;
        }
        if row.from_vm_frames > prev.from_vm_frames {
            t.last_from_vm = t.last_from_vm.max(ts);
            self.wake(i, ts, changes);
        }
        // Stale frames counted without an event (sampled out, or the ring was full): still
        // a blackout, if they are new.
        if let Some(start) = self.counted_blackout(i, row, &prev, prev_stats, ts) {
            let t = self.tap_mut(i);
            t.blackout = Some(Blackout {
                start,
                end: None,
                stale_mac: MacAddr::default(),
            });
            // No frame says the family: the next stale frame that is seen will.
            t.nd.stale = Default::default();
            t.note(
                start,
                "dst-mismatch frames counted (no sample: events lost)".into(),
            );
            self.set_state(i, State::Blackout, start, changes);
        }
        self.last_family_quiet(i, row, ts, changes);
        self.say_forecast(i, ts, changes);
        if self.settle_gaps(i, ts).is_some() {
            self.settle_forecast(i, ts, changes);
        }
        let t = self.registry.at(i);
        // A tap whose VM has not sent anything yet (plugged ahead of a migration) is
        // waiting for it, not quiet.
        if matches!(t.state, State::Ok | State::Recovered)
            && t.first_from_vm.is_some()
            && ts.ms_since(t.last_from_vm) >= quiet_after.as_millis() as i64
        {
            let before = t.state;
            self.tap_mut(i).before_quiet = before;
            self.set_state(i, State::Quiet, ts, changes);
        }
    }

    /// A dual-stack blackout whose last stale family stopped sending stale frames while
    /// the kernel's window was closed: no event says its first frame to the tap's MAC, so
    /// its end is the window's last close (the first correctly addressed frame after the
    /// last stale one), once an interval counted no stale frame and a second has passed.
    fn last_family_quiet(&mut self, i: usize, row: &TapRow, ts: Ts, changes: &mut Vec<Record>) {
        let t = self.tap_mut(i);
        let Some((close, counted)) = t.nd.closed.filter(|_| t.state == State::Blackout) else {
            return;
        };
        let window_open = matches!(row.mismatch_since, Some(Some(_)));
        let Some(n) = counted else {
            t.nd.closed = Some((close, Some(row.dst_mismatch_frames)));
            return;
        };
        if window_open || row.dst_mismatch_frames != n || ts.ms_since(close) < 1000 {
            return;
        }
        t.nd.closed = None;
        t.nd.open = Default::default();
        let Some(b) = t.blackout.as_mut() else { return };
        b.end = Some(close);
        let ms = b.ms(close);
        t.note(
            close,
            format!(
                "the last stale frames stopped; the kernel's window closed at {} (the first \
                 correctly addressed frame after them): recovered after {ms} ms",
                close.clock()
            ),
        );
        self.settled.push(Settled::Blackout { ms });
        self.set_state(i, State::Recovered, close, changes);
    }

    /// When a blackout that only the counters show began, if they show a new one. Counts
    /// are read at the interval, after frames the kernel timed: a rise for frames older
    /// than the end of the last window (sent before the recovery, counted after it) is
    /// that window's. So a new blackout needs the datapath's own window open since after
    /// that end, and starts when the window opened (kernel time). Records without the
    /// window (older versions) fall back to the rise, unless a window closed since the
    /// counts before it were read.
    fn counted_blackout(
        &self,
        i: usize,
        row: &TapRow,
        prev: &TapRow,
        prev_stats: Option<Ts>,
        ts: Ts,
    ) -> Option<Ts> {
        let t = self.registry.at(i);
        if t.mode != Mode::Routed || t.state == State::Blackout {
            return None;
        }
        let ended = t.blackout.and_then(|b| b.end);
        match row.mismatch_since {
            Some(since) => since.filter(|s| ended.is_none_or(|e| *s > e)),
            None => {
                let rose = row.dst_mismatch_frames > prev.dst_mismatch_frames;
                let unsampled = t.last_mismatch.is_none_or(|m| ts.ms_since(m) > 1000);
                let after_end = ended.is_none_or(|e| prev_stats.is_some_and(|p| e <= p));
                (rose && unsampled && after_end).then_some(ts)
            }
        }
    }

    /// Each gap of a switch-over once, when it is known: the inbound one when the first
    /// data frame reached the VM, the outbound one when the blackout ended, or as 0 once
    /// the VM has run [`OUTBOUND_SETTLE`] without one. The outbound gap when it settled now.
    fn settle_gaps(&mut self, i: usize, now: Ts) -> Option<u64> {
        let t = self.tap_mut(i);
        let sw = t.switchover()?;
        let mut outbound = None;
        let mut settled = Vec::new();
        if t.settled.0 != Some(sw) {
            if let Some(ms) = t.inbound_gap_ms() {
                t.settled.0 = Some(sw);
                settled.push(Settled::InboundGap { ms });
            }
        }
        if t.settled.1 != Some(sw) {
            let known = match t.outbound_gap_ms() {
                Some(0) => now.ms_since(sw) >= OUTBOUND_SETTLE.as_millis() as i64,
                other => other.is_some(),
            };
            if let (true, Some(ms)) = (known, t.outbound_gap_ms()) {
                t.settled.1 = Some(sw);
                settled.push(Settled::OutboundGap { ms });
                outbound = Some(ms);
            }
        }
        self.settled.extend(settled);
        outbound
    }

    /// The VM spoke: leave QUIET for the state it interrupted.
    pub(super) fn wake(&mut self, i: usize, ts: Ts, changes: &mut Vec<Record>) {
        if self.registry.at(i).state == State::Quiet {
            let back = self.registry.at(i).before_quiet;
            self.set_state(i, back, ts, changes);
        }
    }
}
