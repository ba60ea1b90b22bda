//! Per-VM verdicts: OK, BLACKOUT, RECOVERED, QUIET, GONE, with the measured blackout and a
//! diagnosis in plain words.
//!
//! One pure state machine over [`Record`]s ([`Engine`]), run once per run at the head of the
//! pipeline: the live JSON stream, the live view, bundles and offline analysis all read its
//! results. [`state`] holds what it knows per tap, [`diagnosis`] turns that into words,
//! [`libvirt`] says which VM is behind a tap.

mod diagnosis;
pub mod libvirt;
pub mod state;

use std::{collections::HashMap, time::Duration};

pub use state::{Blackout, State, TapView, TimelineEntry, SERIES_LEN};

use crate::{
    model::{
        clock::Ts, mac::show, mac::MacAddr, DatapathKind, Direction, FrameKind, FrameRecord, Mode,
        NoticeCode, Record, TapRow, VerdictFields,
    },
    verdict::libvirt::VmInterface,
};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// No frame from the VM for this long makes it QUIET.
    pub quiet_after: Duration,
    /// A long-running run (`serve`) forgets taps this long after they went away, so its
    /// memory follows the live taps; `None` keeps every tap for the run's summary.
    pub forget_after: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            quiet_after: Duration::from_secs(5),
            forget_after: None,
        }
    }
}

pub struct Engine {
    config: EngineConfig,
    /// Every tap seen, in order of attachment.
    pub taps: Vec<TapView>,
    live: HashMap<String, usize>,
    /// Identities said before their tap's `attached` record.
    pending: HashMap<String, Option<VmInterface>>,
    /// Time of the newest record: "now" for a replay as for a live run.
    pub now: Option<Ts>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            taps: Vec::new(),
            live: HashMap::new(),
            pending: HashMap::new(),
            now: None,
        }
    }

    /// Drops the taps that went away more than `grace` before `now`.
    fn forget_gone(&mut self, now: Ts, grace: Duration) {
        let grace_ms = grace.as_millis() as i64;
        let before = self.taps.len();
        self.taps
            .retain(|t| t.gone_at.is_none_or(|g| now.ms_since(g) < grace_ms));
        if self.taps.len() != before {
            self.live = self
                .taps
                .iter()
                .enumerate()
                .filter(|(_, t)| t.gone_at.is_none())
                .map(|(i, t)| (t.ifname.clone(), i))
                .collect();
        }
        // Identities said of taps whose attach then failed (a retry says them again).
        self.pending.clear();
    }

    /// The taps being watched now.
    pub fn live_taps(&self) -> impl Iterator<Item = &TapView> {
        self.taps.iter().filter(|t| t.gone_at.is_none())
    }

    pub fn tap(&self, ifname: &str) -> Option<&TapView> {
        self.live
            .get(ifname)
            .map(|&i| &self.taps[i])
            .or_else(|| self.taps.iter().rev().find(|t| t.ifname == ifname))
    }

    /// Feeds one record; returns the verdict records of the state changes it caused.
    pub fn apply(&mut self, rec: &Record) -> Vec<Record> {
        let mut changes = Vec::new();
        match rec {
            Record::Attached {
                ts,
                ifname,
                ifindex,
                mac,
                mode,
                datapath,
                appeared,
                ..
            } => {
                self.now = Some(*ts);
                let mut view = TapView::new(ifname, *ifindex, *mac, *mode, *ts);
                view.datapath = *datapath;
                view.appeared = *appeared;
                view.probe = *datapath == Some(DatapathKind::Tc);
                view.vm = self.pending.remove(ifname).flatten();
                view.note(*ts, format!("tap attached, MAC {}", show(*mac, "none")));
                let vm = view.vm.clone();
                view.follow_libvirt_state(*ts, vm.as_ref());
                self.live.insert(ifname.clone(), self.taps.len());
                self.taps.push(view);
                changes.push(self.verdict(self.taps.len() - 1, *ts));
            }
            Record::Detached { ts, ifname, reason } => {
                self.now = Some(*ts);
                if let Some(i) = self.live.remove(ifname) {
                    let t = &mut self.taps[i];
                    t.gone_at = Some(*ts);
                    t.note(*ts, format!("tap gone ({reason})"));
                    self.set_state(i, State::Gone, *ts, &mut changes);
                }
            }
            Record::MacChange {
                ts,
                ifname,
                old_mac,
                new_mac,
            } => {
                self.now = Some(*ts);
                if let Some(&i) = self.live.get(ifname) {
                    let t = &mut self.taps[i];
                    t.prev_mac = Some((*old_mac, *ts));
                    t.mac = *new_mac;
                    t.remember_mac(*ts, *new_mac);
                    t.note(
                        *ts,
                        format!(
                            "tap MAC {} → {}",
                            show(*old_mac, "none"),
                            show(*new_mac, "none")
                        ),
                    );
                    if t.tap_mac_unusual() {
                        t.note(*ts, "tap MAC is not fe:+guest MAC".into());
                    }
                }
            }
            Record::ModeChange {
                ts,
                ifname,
                new_mode,
                ..
            } => {
                self.now = Some(*ts);
                if let Some(&i) = self.live.get(ifname) {
                    let bridged = *new_mode == Mode::Bridged;
                    let t = &mut self.taps[i];
                    t.mode = *new_mode;
                    t.note(*ts, format!("tap is now {}", new_mode.as_str()));
                    // On a bridge, frames to other MACs are switched, not dropped: an open
                    // blackout ends here (its frames before this were real drops).
                    if bridged && t.state == State::Blackout {
                        if let Some(b) = t.blackout.as_mut() {
                            b.end = Some(*ts);
                        }
                        self.set_state(i, State::Ok, *ts, &mut changes);
                    }
                }
            }
            Record::Frame(f) => self.frame(f, &mut changes),
            Record::Stats { ts, taps } => {
                self.now = Some(*ts);
                for row in taps {
                    self.stats(row, *ts, &mut changes);
                }
                if let Some(grace) = self.config.forget_after {
                    self.forget_gone(*ts, grace);
                }
            }
            Record::Summary { ts, taps } => {
                self.now = Some(*ts);
                // The final counters, so the summary's diagnosis speaks of them.
                let found: Vec<(usize, &TapRow)> = {
                    let index = self.by_name_and_index();
                    taps.iter()
                        .filter_map(|row| {
                            let at = index.get(&(row.counters.ifname.as_str(), row.ifindex))?;
                            Some((*at, &row.counters))
                        })
                        .collect()
                };
                for (i, counters) in found {
                    self.taps[i].counters = counters.clone();
                }
            }
            Record::Renamed {
                ts,
                ifname,
                old_ifname,
                ..
            } => {
                self.now = Some(*ts);
                if let Some(i) = self.live.remove(old_ifname) {
                    let t = &mut self.taps[i];
                    t.ifname = ifname.clone();
                    t.counters.ifname = ifname.clone();
                    t.note(*ts, format!("tap renamed from {old_ifname}"));
                    self.live.insert(ifname.clone(), i);
                }
            }
            Record::Identity {
                ts,
                ifname,
                libvirt,
            } => {
                self.now = Some(*ts);
                match self.live.get(ifname) {
                    Some(&i) => {
                        let t = &mut self.taps[i];
                        t.follow_libvirt_state(*ts, libvirt.as_ref());
                        if t.vm != *libvirt {
                            let was = t.vm_name().to_string();
                            t.vm = libvirt.clone();
                            let now = t.vm_name().to_string();
                            if now != was {
                                t.note(*ts, format!("VM is {now} (libvirt)"));
                            }
                            // Consumers keyed by VM learn the name with a verdict record.
                            changes.push(self.verdict(i, *ts));
                        }
                    }
                    None => {
                        self.pending.insert(ifname.clone(), libvirt.clone());
                    }
                }
            }
            Record::Notice {
                ts,
                code: code @ (NoticeCode::ProbeAdded | NoticeCode::ProbeRemoved),
                ifname: Some(ifname),
                message,
            } => {
                self.now = Some(*ts);
                if let Some(&i) = self.live.get(ifname) {
                    let t = &mut self.taps[i];
                    t.probe = *code == NoticeCode::ProbeAdded;
                    let what = message
                        .strip_prefix(&format!("{ifname}: "))
                        .unwrap_or(message);
                    t.note(*ts, what.to_string());
                }
            }
            Record::Verdict { ts, .. } | Record::Notice { ts, .. } => self.now = Some(*ts),
            Record::Lab(_) | Record::Migration(_) => {}
        }
        changes
    }

    fn frame(&mut self, f: &FrameRecord, changes: &mut Vec<Record>) {
        self.now = Some(self.now.map_or(f.ts, |n| n.max(f.ts)));
        let Some(&i) = self.live.get(&f.ifname) else {
            return;
        };
        let from_vm = f.direction == Direction::FromVm;
        if from_vm {
            let t = &mut self.taps[i];
            t.last_from_vm = f.ts;
            if t.first_from_vm.is_none() || t.first_from_vm_approx {
                t.first_from_vm = Some(t.first_from_vm.map_or(f.ts, |a| a.min(f.ts)));
                t.first_from_vm_approx = false;
            }
            self.wake(i, f.ts, changes);
        }
        let t = &mut self.taps[i];
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
            _ => {}
        }
        if from_vm && (f.kind == FrameKind::DstMismatch || f.dst_mismatch) {
            t.first_mismatch.get_or_insert(f.ts);
            t.last_mismatch = Some(f.ts);
            if t.mode == Mode::Routed && t.state != State::Blackout {
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
                self.set_state(i, State::Blackout, f.ts, changes);
            }
        } else if f.kind == FrameKind::DstMatch && t.state == State::Blackout {
            if let Some(b) = t.blackout.as_mut() {
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
            }
            self.set_state(i, State::Recovered, f.ts, changes);
        }
    }

    fn stats(&mut self, row: &TapRow, ts: Ts, changes: &mut Vec<Record>) {
        let Some(&i) = self.live.get(&row.ifname) else {
            return;
        };
        let quiet_after = self.config.quiet_after;
        let t = &mut self.taps[i];
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
        t.last_stats = Some(ts);
        if row.from_vm_frames > 0 && t.first_from_vm.is_none() {
            // Only counted (no frame of it was reported): known to the interval.
            t.first_from_vm = Some(ts);
            t.first_from_vm_approx = true;
        }
        if row.from_vm_frames > prev.from_vm_frames {
            t.last_from_vm = t.last_from_vm.max(ts);
            self.wake(i, ts, changes);
        }
        let t = &mut self.taps[i];
        // Mismatches counted without a sampled event (ring buffer full): still a blackout,
        // timed by the stats record instead of the kernel.
        if row.dst_mismatch_frames > prev.dst_mismatch_frames
            && t.mode == Mode::Routed
            && t.state != State::Blackout
            && t.last_mismatch.is_none_or(|m| ts.ms_since(m) > 1000)
        {
            t.blackout = Some(Blackout {
                start: ts,
                end: None,
                stale_mac: MacAddr::default(),
            });
            t.note(
                ts,
                "dst-mismatch frames counted (no sample: events lost)".into(),
            );
            self.set_state(i, State::Blackout, ts, changes);
        }
        let t = &self.taps[i];
        // A tap whose VM has not sent anything yet (plugged ahead of a migration) is
        // waiting for it, not quiet.
        if matches!(t.state, State::Ok | State::Recovered)
            && t.first_from_vm.is_some()
            && ts.ms_since(t.last_from_vm) >= quiet_after.as_millis() as i64
        {
            let before = t.state;
            self.taps[i].before_quiet = before;
            self.set_state(i, State::Quiet, ts, changes);
        }
    }

    /// The VM spoke: leave QUIET for the state it interrupted.
    fn wake(&mut self, i: usize, ts: Ts, changes: &mut Vec<Record>) {
        if self.taps[i].state == State::Quiet {
            let back = self.taps[i].before_quiet;
            self.set_state(i, back, ts, changes);
        }
    }

    fn set_state(&mut self, i: usize, state: State, ts: Ts, changes: &mut Vec<Record>) {
        if self.taps[i].state != state {
            self.taps[i].state = state;
            changes.push(self.verdict(i, ts));
        }
    }

    fn verdict(&self, i: usize, ts: Ts) -> Record {
        let t = &self.taps[i];
        Record::Verdict {
            ts,
            ifname: t.ifname.clone(),
            fields: self.fields(t, ts),
        }
    }

    pub fn fields(&self, t: &TapView, now: Ts) -> VerdictFields {
        VerdictFields {
            vm: t.vm_name().to_string(),
            state: t.state,
            blackout_ms: t.blackout_ms(now),
            switchover_ts: Some(t.switchover()),
            inbound_gap_ms: Some(t.inbound_gap_ms()),
            outbound_gap_ms: Some(t.outbound_gap_ms()),
            diagnosis: t.diagnosis(now),
        }
    }

    /// Adds the verdict fields to a summary's rows.
    pub fn annotate_summary(&self, rec: &mut Record) {
        if let Record::Summary { ts, taps } = rec {
            let index = self.by_name_and_index();
            for row in taps.iter_mut() {
                if let Some(&i) = index.get(&(row.counters.ifname.as_str(), row.ifindex)) {
                    row.verdict = Some(self.fields(&self.taps[i], *ts));
                }
            }
        }
    }

    /// Where each tap is in `taps` by its name and ifindex, the latest of a name attached
    /// again: a summary row finds its tap at once, not by a search of every tap.
    fn by_name_and_index(&self) -> HashMap<(&str, u32), usize> {
        self.taps
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.ifname.as_str(), t.ifindex), i))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::model::FrameRecord;

    pub const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    pub const OLD: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    pub const NEW: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);
    pub const BCAST: MacAddr = MacAddr([0xff; 6]);

    /// Time `ms` milliseconds into the test.
    pub fn at(ms: i64) -> Ts {
        Ts(DateTime::<Utc>::from_timestamp_millis(1_790_000_000_000 + ms).unwrap())
    }

    /// A JSON name as the typed value it names.
    pub fn named<T: serde::de::DeserializeOwned>(name: &str) -> T {
        serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
    }

    pub fn attached(ms: i64, tap: &str, mac: MacAddr, mode: &'static str) -> Record {
        Record::Attached {
            ts: at(ms),
            ifname: tap.into(),
            ifindex: 7,
            mac: Some(mac),
            mode: named(mode),
            backend: crate::model::Backend::Ebpf,
            // As tapwatch 0.1 wrote it.
            datapath: None,
            appeared: false,
            mtu: Some(1500),
            master: None,
        }
    }

    pub fn frame(
        ms: i64,
        tap: &str,
        dir: &'static str,
        kind: &'static str,
        dst: MacAddr,
    ) -> Record {
        let arp = matches!(kind, "rarp" | "garp" | "arp_request" | "arp_reply");
        Record::Frame(FrameRecord {
            ts: at(ms),
            ifname: tap.into(),
            direction: named(dir),
            kind: named(kind),
            src_mac: GUEST,
            dst_mac: dst,
            sender_ip: arp.then(|| "10.65.0.2".into()),
            target_ip: arp.then(|| "10.65.0.1".into()),
            vlan: None,
            outer_vlan: None,
            dst_mismatch: false,
            len: 98,
            data: Vec::new(),
        })
    }

    pub fn stats(ms: i64, tap: &str, from_vm: u64, mismatch: u64) -> Record {
        let row = TapRow {
            ifname: tap.into(),
            from_vm_frames: from_vm,
            dst_mismatch_frames: mismatch,
            ..TapRow::default()
        };
        Record::Stats {
            ts: at(ms),
            taps: vec![row],
        }
    }

    pub fn stale_mac_story(tap: &str, t0: i64) -> Vec<Record> {
        let mut v = vec![Record::MacChange {
            ts: at(t0 + 100),
            ifname: tap.into(),
            old_mac: Some(OLD),
            new_mac: Some(NEW),
        }];
        v.extend((0..5).map(|i| frame(t0 + 200 + i * 50, tap, "from_vm", "rarp", BCAST)));
        v.push(frame(t0 + 500, tap, "from_vm", "dst_mismatch", OLD));
        v.push(frame(t0 + 700, tap, "from_vm", "dst_mismatch", OLD));
        v.push(frame(t0 + 20_400, tap, "from_vm", "arp_request", BCAST));
        v.push(frame(t0 + 20_401, tap, "to_vm", "arp_reply", GUEST));
        v.push(frame(t0 + 20_410, tap, "from_vm", "dst_match", NEW));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn run(engine: &mut Engine, recs: &[Record]) -> Vec<(String, &'static str, Option<u64>)> {
        let mut out = Vec::new();
        for r in recs {
            for v in engine.apply(r) {
                if let Record::Verdict { ifname, fields, .. } = v {
                    out.push((ifname, fields.state.as_str(), fields.blackout_ms));
                }
            }
        }
        out
    }

    fn engine() -> Engine {
        Engine::new(EngineConfig::default())
    }

    /// A summary row finds its tap at once: a replayed bundle of 65,536 taps (the most an
    /// analysis follows) searched every tap for every row.
    #[test]
    fn a_summary_of_65536_taps_is_applied_in_linear_time() {
        let mut e = engine();
        let n = 65_536;
        let names: Vec<String> = (0..n).map(|i| format!("tap{i}")).collect();
        for name in &names {
            e.apply(&attached(0, name, NEW, "routed"));
        }
        let row = |name: &String| crate::model::SummaryRow {
            counters: TapRow {
                ifname: name.clone(),
                rarp_frames: 1,
                ..TapRow::default()
            },
            // One ifindex for all, as a hostile bundle may give: names tell them apart.
            ifindex: 7,
            mode: Mode::Routed,
            mac_history: Vec::new(),
            detached: false,
            verdict: None,
        };
        // A row of a tap never attached is passed over.
        let mut rows = vec![row(&"gone".to_string())];
        rows.extend(names.iter().map(row));
        let mut summary = Record::Summary {
            ts: at(1000),
            taps: rows,
        };
        e.apply(&summary);
        e.annotate_summary(&mut summary);
        let Record::Summary { taps, .. } = summary else {
            unreachable!()
        };
        assert!(taps[1..].iter().all(|r| r.verdict.is_some()) && taps[0].verdict.is_none());
        assert!(e.taps.iter().all(|t| t.counters.rarp_frames == 1));
    }

    /// A tap whose MAC changed 100,000 times (a hostile bundle) keeps a bounded history:
    /// each verdict's diagnosis looked through all of it.
    #[test]
    fn a_tap_whose_mac_keeps_changing_keeps_a_bounded_history() {
        let mut e = engine();
        e.apply(&attached(0, "tapA", NEW, "routed"));
        let n = 100_000;
        for i in 0..n {
            e.apply(&Record::MacChange {
                ts: at(i),
                ifname: "tapA".into(),
                old_mac: Some(if i % 2 == 0 { NEW } else { OLD }),
                new_mac: Some(if i % 2 == 0 { OLD } else { NEW }),
            });
        }
        let mut verdicts = 0;
        for i in 0..n {
            let t = n + i * 2;
            verdicts += e
                .apply(&frame(t, "tapA", "from_vm", "dst_mismatch", GUEST))
                .len();
            verdicts += e
                .apply(&frame(t + 1, "tapA", "from_vm", "dst_match", NEW))
                .len();
        }
        assert_eq!(verdicts as i64, 2 * n);
        assert!(e.taps[0].mac_history.len() <= 256);
    }

    /// The incident's two parts on one clock: the network delivers to the VM 3.9 s after
    /// its first RARP, the guest's stale gateway MAC keeps its frames dropped until 30.1 s;
    /// the diagnosis names the longer part first, and the summary row carries the gaps.
    #[test]
    fn the_outage_in_its_parts() {
        let mut e = engine();
        let mut recs = vec![attached(0, "tapA", NEW, "routed")];
        // A stale frame a moment before QEMU's first RARP is still this migration's.
        recs.push(frame(995, "tapA", "from_vm", "dst_mismatch", OLD));
        recs.extend((0..5).map(|i| frame(1000 + i * 150, "tapA", "from_vm", "rarp", BCAST)));
        recs.push(frame(1200, "tapA", "from_vm", "dst_mismatch", OLD));
        recs.push(frame(4900, "tapA", "to_vm", "inbound", GUEST));
        // Only the first delivered frame counts.
        recs.push(frame(5900, "tapA", "to_vm", "inbound", GUEST));
        let before = e.apply(&recs[0]);
        assert_eq!(before.len(), 1);
        for r in &recs[1..] {
            e.apply(r);
        }
        let t = e.tap("tapA").unwrap();
        assert_eq!(t.switchover(), Some(at(1000)));
        assert_eq!(t.inbound_gap_ms(), Some(3900));
        assert_eq!(t.outbound_gap_ms(), None, "the stale frames go on");
        let f = e.fields(t, at(6000));
        assert_eq!(
            (f.switchover_ts, f.inbound_gap_ms, f.outbound_gap_ms),
            (Some(Some(at(1000))), Some(Some(3900)), Some(None))
        );
        let v = e.apply(&frame(31_100, "tapA", "from_vm", "dst_match", NEW));
        let Record::Verdict { fields, .. } = &v[0] else {
            panic!("{v:?}")
        };
        assert_eq!(fields.state, State::Recovered);
        assert_eq!(fields.outbound_gap_ms, Some(Some(30_100)));
        assert!(
            fields.diagnosis.contains(
                "the network took 3.9 s to deliver to the VM again; the guest's stale \
                 gateway MAC kept its replies dropped for 26 s more"
            ),
            "{}",
            fields.diagnosis
        );
        assert!(
            fields.diagnosis.contains("RARP announce seen at")
                && fields.diagnosis.contains("(5 in all)"),
            "{}",
            fields.diagnosis
        );
        let json = serde_json::to_value(fields).unwrap();
        assert_eq!(json["inbound_gap_ms"], 3900);
        assert_eq!(json["outbound_gap_ms"], 30_100);
        assert_eq!(
            json["switchover_ts"],
            serde_json::to_value(at(1000)).unwrap()
        );
    }

    /// The destination's timeline has libvirt's pause and resume, also when the paused
    /// domain was known before its tap's `attached` record.
    #[test]
    fn libvirt_pause_and_resume_in_the_timeline() {
        let mut e = engine();
        let vm = |state: &str, reason: &str| VmInterface {
            domain: "d".into(),
            tap: "tapA".into(),
            state: Some(state.into()),
            reason: Some(reason.into()),
            ..VmInterface::default()
        };
        let identity = |ms, vm| Record::Identity {
            ts: at(ms),
            ifname: "tapA".into(),
            libvirt: Some(vm),
        };
        e.apply(&identity(0, vm("paused", "migration")));
        e.apply(&attached(1, "tapA", NEW, "routed"));
        e.apply(&identity(70, vm("running", "migrated")));
        let t = e.tap("tapA").unwrap();
        assert_eq!((t.paused_at, t.resumed_at), (Some(at(1)), Some(at(70))));
        let notes: Vec<&str> = t.timeline.iter().map(|e| e.what.as_str()).collect();
        assert!(
            notes.contains(&"libvirt: the VM is paused for a migration")
                && notes.contains(&"libvirt: the VM runs again"),
            "{notes:?}"
        );
    }

    /// Without a RARP, a tap that appeared while watched switches over at the VM's first
    /// frame; without stale frames the host accepted the VM at once (0); a tap that was
    /// there from the start, with a running VM, saw no migration at all.
    #[test]
    fn without_an_announce_the_first_frame_is_the_switch_over() {
        let mut e = engine();
        let mut new_tap = attached(0, "tapN", NEW, "routed");
        if let Record::Attached { appeared, .. } = &mut new_tap {
            *appeared = true;
        }
        run(
            &mut e,
            &[
                new_tap,
                attached(0, "tapO", NEW, "routed"),
                frame(700, "tapN", "from_vm", "arp_request", BCAST),
                stats(1000, "tapO", 10, 0),
            ],
        );
        let n = e.tap("tapN").unwrap();
        assert_eq!(n.switchover(), Some(at(700)));
        assert_eq!((n.inbound_gap_ms(), n.outbound_gap_ms()), (None, Some(0)));
        let o = e.tap("tapO").unwrap();
        assert_eq!((o.switchover(), o.outbound_gap_ms()), (None, None));
        assert!(o.diagnosis(at(1000)).contains("No RARP seen."));
        let empty = engine();
        assert!(empty.taps.is_empty());
    }

    /// Records of older versions read back without the anatomy and write back without it.
    #[test]
    fn older_verdicts_keep_their_bytes() {
        let line = r#"{"vm":"v","state":"OK","blackout_ms":null,"diagnosis":"d"}"#;
        let f: VerdictFields = serde_json::from_str(line).unwrap();
        assert_eq!(f.inbound_gap_ms, None);
        assert_eq!(serde_json::to_string(&f).unwrap(), line);
        let line = r#"{"vm":"v","state":"OK","blackout_ms":null,"switchover_ts":null,"inbound_gap_ms":null,"outbound_gap_ms":null,"diagnosis":"d"}"#;
        let f: VerdictFields = serde_json::from_str(line).unwrap();
        assert_eq!(f.inbound_gap_ms, Some(None));
        assert_eq!(serde_json::to_string(&f).unwrap(), line);
    }

    #[test]
    fn stale_mac_blackout_and_recovery() {
        let mut e = engine();
        let mut recs = vec![attached(0, "tapA", OLD, "routed")];
        recs.extend(stale_mac_story("tapA", 0));
        let verdicts = run(&mut e, &recs);
        assert_eq!(
            verdicts,
            [
                ("tapA".to_string(), "OK", None),
                ("tapA".to_string(), "BLACKOUT", Some(0)),
                ("tapA".to_string(), "RECOVERED", Some(19_910)),
            ]
        );
        let t = e.tap("tapA").unwrap();
        assert_eq!(t.blackout.unwrap().stale_mac, OLD);
        assert_eq!(t.first_announce, Some(at(200)));
        let d = t.diagnosis(at(30_000));
        assert!(d.contains("Blackout of 19910 ms"), "{d}");
        assert!(d.contains("after the guest re-ARPed"), "{d}");
        assert!(t
            .timeline
            .iter()
            .any(|e| e.what.contains("recovered after 19910 ms")));
    }

    #[test]
    fn blackout_diagnosis_names_both_macs() {
        let mut e = engine();
        let mut recs = vec![attached(0, "tapA", OLD, "routed")];
        recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
        run(&mut e, &recs);
        let t = e.tap("tapA").unwrap();
        assert_eq!(t.state, State::Blackout);
        let d = t.diagnosis(at(1000));
        assert!(
            d.starts_with(&format!(
                "VM still sends to fe:16:3e:aa:bb:cc (the tap's MAC until {}, now 00:61:fe:ed:ca:fe); \
                 the kernel drops these frames as PACKET_OTHERHOST.",
                at(100).clock()
            )),
            "{d}"
        );
        assert!(d.contains("The blackout ends when the guest re-ARPs."));
        assert!(d.contains("RARP announce seen"));
        assert!(d.contains("No GARP seen."));
        assert_eq!(t.blackout_ms(at(1500)), Some(1000));
    }

    #[test]
    fn mismatch_on_a_bridged_tap_is_no_blackout() {
        let mut e = engine();
        let recs = [
            attached(0, "vnet3", OLD, "bridged"),
            frame(10, "vnet3", "from_vm", "dst_mismatch", NEW),
            stats(1000, "vnet3", 40, 40),
            frame(1200, "vnet3", "from_vm", "dst_mismatch", NEW),
        ];
        let verdicts = run(&mut e, &recs);
        assert_eq!(verdicts, [("vnet3".to_string(), "OK", None)]);
        let d = e.tap("vnet3").unwrap().diagnosis(at(1300));
        assert!(
            d.contains("40 frames to other MACs: normal on a bridged tap"),
            "{d}"
        );
    }

    #[test]
    fn joining_a_bridge_ends_a_blackout() {
        let mut e = engine();
        let recs = [
            attached(0, "vnet5", NEW, "routed"),
            frame(10, "vnet5", "from_vm", "dst_mismatch", OLD),
            Record::ModeChange {
                ts: at(40),
                ifname: "vnet5".into(),
                old_mode: Mode::Routed,
                new_mode: Mode::Bridged,
                master: Some("br0".into()),
            },
            frame(50, "vnet5", "from_vm", "dst_mismatch", OLD),
        ];
        let states: Vec<_> = run(&mut e, &recs).into_iter().map(|v| v.1).collect();
        assert_eq!(states, ["OK", "BLACKOUT", "OK"]);
        assert_eq!(e.tap("vnet5").unwrap().mode, Mode::Bridged);
    }

    #[test]
    fn tap_deleted_mid_blackout() {
        let mut e = engine();
        let recs = [
            attached(0, "tapA", NEW, "routed"),
            frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
            Record::Detached {
                ts: at(2600),
                ifname: "tapA".into(),
                reason: "interface removed".into(),
            },
            stats(3000, "tapA", 10, 10),
        ];
        let verdicts = run(&mut e, &recs);
        assert_eq!(
            verdicts.last().unwrap(),
            &("tapA".to_string(), "GONE", Some(2500))
        );
        let t = e.tap("tapA").unwrap();
        assert_eq!(t.blackout_ms(at(9999)), Some(2500), "frozen at removal");
        let d = t.diagnosis(at(9999));
        assert!(d.contains("removed 2500 ms into the blackout"), "{d}");
    }

    #[test]
    fn two_vms_at_once() {
        let mut e = engine();
        let mut recs = vec![
            attached(0, "tapA", OLD, "routed"),
            attached(0, "tapB", OLD, "routed"),
        ];
        recs.extend(stale_mac_story("tapA", 0));
        // tapB: a clean migration, its frames all reach the tap.
        recs.push(frame(300, "tapB", "from_vm", "rarp", BCAST));
        recs.push(stats(1000, "tapB", 50, 0));
        let verdicts = run(&mut e, &recs);
        let of = |tap: &str| {
            verdicts
                .iter()
                .filter(|v| v.0 == tap)
                .map(|v| v.1)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("tapA"), ["OK", "BLACKOUT", "RECOVERED"]);
        assert_eq!(of("tapB"), ["OK"]);
        assert_eq!(e.tap("tapB").unwrap().blackout, None);
    }

    #[test]
    fn quiet_and_back() {
        let mut e = engine();
        let recs = [
            attached(0, "tapQ", NEW, "routed"),
            stats(1000, "tapQ", 10, 0),
            stats(2000, "tapQ", 10, 0),
            stats(6000, "tapQ", 10, 0),
            stats(7000, "tapQ", 12, 0),
        ];
        let verdicts = run(&mut e, &recs);
        let states: Vec<_> = verdicts.iter().map(|v| v.1).collect();
        assert_eq!(states, ["OK", "QUIET", "OK"]);
        assert!(e.tap("tapQ").unwrap().from_vm_fps > 1.9);
    }

    #[test]
    fn lost_mismatch_samples_still_make_a_blackout() {
        let mut e = engine();
        let recs = [
            attached(0, "tapL", NEW, "routed"),
            stats(1000, "tapL", 10, 0),
            stats(2000, "tapL", 30, 20),
        ];
        let verdicts = run(&mut e, &recs);
        assert_eq!(verdicts.last().unwrap().1, "BLACKOUT");
    }

    fn vm(reason: &str) -> VmInterface {
        VmInterface {
            domain: "instance-0000002b".into(),
            uuid: None,
            nova_name: Some("web-1".into()),
            tap: "tapA".into(),
            guest_mac: Some(GUEST),
            iface_type: "ethernet".into(),
            managed: Some(false),
            bridge: None,
            reason: Some(reason.into()),
            state: None,
            cpu: None,
        }
    }

    #[test]
    fn a_vm_booted_here_is_not_told_its_announce_failed() {
        for (reason, complains) in [("booted", false), ("migrated", true)] {
            let mut e = engine();
            let recs = [
                Record::Identity {
                    ts: at(0),
                    ifname: "tapA".into(),
                    libvirt: Some(vm(reason)),
                },
                attached(0, "tapA", NEW, "routed"),
                stats(1000, "tapA", 10, 0),
            ];
            run(&mut e, &recs);
            let d = e.tap("tapA").unwrap().diagnosis(at(1000));
            assert_eq!(
                d.contains("announce-self did not run"),
                complains,
                "{reason}: {d}"
            );
            assert_eq!(
                d.contains("started on this host"),
                !complains,
                "{reason}: {d}"
            );
        }
    }

    /// A domain that appears, changes or goes while the tap is watched renames its row, and
    /// a verdict record says so.
    #[test]
    fn identities_that_change_while_watched() {
        let mut e = engine();
        let mut recs = vec![attached(0, "tapA", NEW, "routed")];
        let mut web2 = vm("migrated");
        web2.nova_name = Some("web-2".into());
        for (ms, v) in [(100, Some(vm("migrated"))), (200, Some(web2)), (300, None)] {
            recs.push(Record::Identity {
                ts: at(ms),
                ifname: "tapA".into(),
                libvirt: v,
            });
        }
        let mut names = Vec::new();
        for r in &recs {
            for v in e.apply(r) {
                if let Record::Verdict { fields, .. } = v {
                    names.push(fields.vm);
                }
            }
        }
        assert_eq!(names, ["tapA", "web-1", "web-2", "tapA"]);
    }

    #[test]
    fn libvirt_identity_and_unusual_tap_mac() {
        let vm = VmInterface {
            domain: "instance-0000002a".into(),
            uuid: None,
            nova_name: Some("web-frontend-3".into()),
            tap: "tapA".into(),
            guest_mac: Some(GUEST),
            iface_type: "ethernet".into(),
            managed: Some(false),
            bridge: None,
            reason: None,
            state: None,
            cpu: None,
        };
        let mut e = Engine::new(EngineConfig::default());
        let mut recs = vec![
            Record::Identity {
                ts: at(0),
                ifname: "tapA".into(),
                libvirt: Some(vm),
            },
            attached(0, "tapA", OLD, "routed"),
        ];
        recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
        let mut out = Vec::new();
        for r in &recs {
            out.extend(e.apply(r));
        }
        let Record::Verdict { fields, .. } = out.last().unwrap() else {
            panic!()
        };
        assert_eq!(fields.vm, "web-frontend-3");
        assert_eq!(fields.state, "BLACKOUT");
        assert!(fields
            .diagnosis
            .contains("The tap MAC is not fe:+guest MAC, as happens with interface managed='no'"));
        let t = e.tap("tapA").unwrap();
        assert!(t.tap_mac_unusual());
        assert_eq!(t.guest_mac(), Some(GUEST));
    }
}
