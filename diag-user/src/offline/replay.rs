//! Replaying frames and tap records through the live pipeline's steps: the shared
//! classifier and observe step, the verdict engine; and, for a raw capture, learning each
//! interface's guest and tap MAC first.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap, HashSet},
    io,
};

use diag_common::{
    classify, frame::is_foreign_unicast, Direction, FrameEvent, Observed, TapCounters, TapWindow,
    PACKET_HOST, PACKET_OTHERHOST,
};

use super::{capture::Packet, AnalyzeError, MAX_TAPS};
use crate::{
    model::{
        clock::Ts, mac::MacAddr, Backend, FrameRecord, MacHistoryEntry, Mode, Record, SummaryRow,
        TapRow,
    },
    verdict::{Engine, EngineConfig},
};

/// MAC history kept per tap.
const MAX_HISTORY: usize = 256;
/// The most `attached` records one analysis follows (a tap attached again counts again:
/// the engine keeps each).
pub(super) const MAX_ATTACHMENTS: usize = MAX_TAPS;
/// A capture's stats record has a row per tap: at most this many rows per frame replayed.
const STATS_ROWS_PER_FRAME: usize = 64;

/// What the first pass learns of one interface of a raw capture, in bounded space.
pub(super) struct Seen {
    first: Ts,
    /// The sender of the first RARP (QEMU's announce names the guest).
    rarp_sender: Option<MacAddr>,
    /// Frames by source MAC, from the VM when the capture says, else all (capped).
    from_vm_src: HashMap<MacAddr, u64>,
    any_src: HashMap<MacAddr, u64>,
    knows_direction: bool,
    /// Source and destination changes, in time order (capped).
    moves: Vec<(Ts, MacAddr, MacAddr, Option<Direction>, bool)>,
    /// The last destination (and whether ARP) of each source (capped).
    last: HashMap<MacAddr, (MacAddr, bool)>,
}

/// Distinct MACs counted per interface: the guest's shows up early and often.
const MAX_SOURCES: usize = 4096;
const MAX_MOVES: usize = 4096;
/// What the first pass keeps over all interfaces (MACs counted, moves): each interface's
/// share is bounded above, their number by [`MAX_TAPS`], and this bounds the product.
pub(super) const MAX_SEEN: usize = 1 << 20;

impl Seen {
    pub(super) fn new(first: Ts) -> Self {
        Self {
            first,
            rarp_sender: None,
            from_vm_src: HashMap::new(),
            any_src: HashMap::new(),
            knows_direction: false,
            moves: Vec::new(),
            last: HashMap::new(),
        }
    }

    /// Learns from one frame; `budget` is what all interfaces may still keep, and each
    /// new entry takes one of it.
    pub(super) fn see(&mut self, p: &Packet, budget: &mut usize) {
        let (Some(dst), Some(src)) = (
            p.data.get(..6).and_then(MacAddr::from_slice),
            p.data.get(6..12).and_then(MacAddr::from_slice),
        ) else {
            return;
        };
        let is_arp = p.data.get(12..14) == Some(&[0x08, 0x06]);
        if p.data.get(12..14) == Some(&[0x80, 0x35]) {
            self.rarp_sender.get_or_insert(src);
        }
        let mut count = |m: &mut HashMap<MacAddr, u64>| {
            if let Some(n) = m.get_mut(&src) {
                *n += 1;
            } else if m.len() < MAX_SOURCES && *budget > 0 {
                *budget -= 1;
                m.insert(src, 1);
            }
        };
        count(&mut self.any_src);
        if p.direction == Some(Direction::FromVm) {
            count(&mut self.from_vm_src);
        }
        if p.direction.is_some() {
            self.knows_direction = true;
        }
        let known = match self.last.get(&src) {
            Some(last) => *last != (dst, is_arp),
            None if self.last.len() < MAX_SOURCES && *budget > 0 => {
                *budget -= 1;
                true
            }
            None => false,
        };
        if known {
            self.last.insert(src, (dst, is_arp));
            if self.moves.len() < MAX_MOVES && *budget > 0 {
                *budget -= 1;
                self.moves.push((p.ts, src, dst, p.direction, is_arp));
            }
        }
    }

    /// The guest's MAC: the sender of QEMU's RARP, else the most frequent source of frames
    /// known to come from the VM, else the most frequent source overall.
    fn guest(&self) -> Option<MacAddr> {
        self.rarp_sender.or_else(|| {
            let counts = if self.knows_direction {
                &self.from_vm_src
            } else {
                &self.any_src
            };
            counts
                .iter()
                .max_by_key(|(m, n)| (**n, Reverse(**m)))
                .map(|(m, _)| *m)
        })
    }
}

/// Makes a raw capture's tap records. The tap's MAC is `tap_mac`; else what the host sends
/// from; else, when the host sent nothing, the MAC the VM's traffic settled on (a VM that
/// switched from one destination to another after re-ARPing switched to the tap's MAC),
/// each said with how sure it is and why.
pub(super) fn infer_taps(
    seen: BTreeMap<String, Seen>,
    tap_mac: Option<MacAddr>,
    notes: &mut Vec<String>,
) -> (Vec<Record>, HashMap<String, MacAddr>) {
    let mut recs = Vec::new();
    let mut guests = HashMap::new();
    for (i, (ifname, s)) in seen.into_iter().enumerate() {
        let Some(guest) = s.guest() else {
            continue;
        };
        guests.insert(ifname.clone(), guest);
        let macs = match tap_mac {
            Some(m) => vec![(s.first, m)],
            None => inferred_macs(&ifname, &s, guest, notes),
        };
        recs.push(Record::Attached {
            ts: s.first,
            ifname: ifname.clone(),
            ifindex: i as u32 + 1,
            mac: macs.first().map(|(_, m)| *m),
            mode: Mode::Routed,
            backend: Backend::Pcap,
            datapath: Some(crate::model::DatapathKind::Pcap),
            appeared: false,
            mtu: None,
            master: None,
        });
        for w in macs.windows(2) {
            recs.push(Record::MacChange {
                ts: w[1].0,
                ifname: ifname.clone(),
                old_mac: Some(w[0].1),
                new_mac: Some(w[1].1),
            });
        }
    }
    notes.push(
        "A raw capture does not say whether a tap is bridged: its taps are judged as routed."
            .into(),
    );
    (recs, guests)
}

/// The tap's MACs over the capture, when no `--tap-mac` says: what the host sent from,
/// else where the VM's traffic settled; with a note of how sure that is.
fn inferred_macs(
    ifname: &str,
    s: &Seen,
    guest: MacAddr,
    notes: &mut Vec<String>,
) -> Vec<(Ts, MacAddr)> {
    let from_host = |d: Option<Direction>, src: MacAddr| {
        d == Some(Direction::ToVm) || (d.is_none() && src != guest)
    };
    let mut macs: Vec<(Ts, MacAddr)> = Vec::new();
    for m in s
        .moves
        .iter()
        .filter(|m| from_host(m.3, m.1) && m.1.is_unicast())
    {
        if macs.last().map(|(_, l)| *l) != Some(m.1) {
            macs.push((m.0, m.1));
        }
    }
    if !macs.is_empty() {
        notes.push(format!(
            "{ifname}: the tap's MAC was inferred from the frames the host sent ({}); sure, \
             unless the host used another MAC on the tap",
            macs.iter()
                .map(|(_, m)| m.to_string())
                .collect::<Vec<_>>()
                .join(" then ")
        ));
        return macs;
    }
    // The host sent nothing: the VM's own unicast, non-ARP destinations, each where the VM
    // last sent to it, in that order.
    let mut last_sent: HashMap<MacAddr, usize> = HashMap::new();
    let to = s
        .moves
        .iter()
        .filter(|m| m.1 == guest && !m.4 && m.2.is_unicast());
    for (i, m) in to.enumerate() {
        last_sent.insert(m.2, i);
    }
    let mut dests: Vec<(usize, MacAddr)> = last_sent.into_iter().map(|(m, i)| (i, m)).collect();
    dests.sort_unstable();
    let dests: Vec<MacAddr> = dests.into_iter().map(|(_, m)| m).collect();
    match dests.as_slice() {
        [] => notes.push(format!(
            "{ifname}: no unicast frame to infer the tap's MAC from; give --tap-mac"
        )),
        [only] => {
            macs.push((s.first, *only));
            notes.push(format!(
                "{ifname}: the host sent nothing and the VM sent only to {only}: taken as the \
                 tap's MAC, but not sure: if the VM's cache was stale all along, {only} is the \
                 old MAC and the whole capture was a blackout; give --tap-mac with the tap's \
                 MAC (ip link show {ifname}) to be sure"
            ));
        }
        [first, .., last] => {
            macs.push((s.first, *last));
            notes.push(format!(
                "{ifname}: the host sent nothing; the VM first sent to {first} and later to \
                 {last}: {last} is taken as the tap's MAC (a VM moves to the right MAC when it \
                 re-ARPs, not away from it); fairly sure; give --tap-mac to be sure"
            ));
        }
    }
    macs
}

/// Per tap while replaying.
struct Replayed {
    ifindex: u32,
    mac: Option<MacAddr>,
    mode: Mode,
    counters: TapCounters,
    window: TapWindow,
    history: Vec<MacHistoryEntry>,
    guest: Option<MacAddr>,
    detached: bool,
    /// The tap's counters in the bundle's last stats record.
    last_row: Option<TapRow>,
}

/// The live pipeline, fed from a file: classification, counters, windows, verdicts.
pub(super) struct Replayer<'a> {
    from_bundle: bool,
    taps: BTreeMap<String, Replayed>,
    /// Taps named by an `identity` record before their `attached` one (the engine keeps
    /// what it says until then), bounded as the taps are.
    identified: HashSet<String>,
    /// Every `attached` record so far: a tap attached again is a new one to the engine.
    attachments: usize,
    /// Frames replayed since the last stats record of a capture.
    since_stats: usize,
    guests: HashMap<String, MacAddr>,
    engine: Engine,
    last_stats: Option<Ts>,
    end: Option<Ts>,
    out: &'a mut dyn FnMut(&Record) -> io::Result<()>,
    name: String,
}

impl<'a> Replayer<'a> {
    pub(super) fn new(
        from_bundle: bool,
        guests: HashMap<String, MacAddr>,
        out: &'a mut dyn FnMut(&Record) -> io::Result<()>,
        name: &str,
    ) -> Self {
        Self {
            from_bundle,
            taps: BTreeMap::new(),
            identified: HashSet::new(),
            attachments: 0,
            since_stats: 0,
            guests,
            engine: Engine::new(EngineConfig::default()),
            last_stats: None,
            end: None,
            out,
            name: name.to_string(),
        }
    }

    /// One record through the engine, then out with the verdicts it caused.
    fn emit(&mut self, mut rec: Record) -> Result<(), AnalyzeError> {
        let verdicts = self.engine.apply(&rec);
        self.engine.annotate_summary(&mut rec);
        (self.out)(&rec).map_err(AnalyzeError::Output)?;
        for v in &verdicts {
            (self.out)(v).map_err(AnalyzeError::Output)?;
        }
        Ok(())
    }

    pub(super) fn record(&mut self, rec: Record) -> Result<(), AnalyzeError> {
        let t = rec.ts();
        self.end = Some(self.end.map_or(t, |e| e.max(t)));
        match &rec {
            Record::Attached {
                ifname,
                ifindex,
                mac,
                mode,
                ..
            } => self.attached(t, ifname, *ifindex, *mac, *mode)?,
            Record::MacChange {
                ifname, new_mac, ..
            } => {
                if let Some(tap) = self.taps.get_mut(ifname) {
                    tap.mac = *new_mac;
                    if tap.history.len() < MAX_HISTORY {
                        tap.history.push(MacHistoryEntry {
                            ts: t,
                            mac: *new_mac,
                        });
                    }
                }
            }
            Record::ModeChange {
                ifname, new_mode, ..
            } => {
                if let Some(tap) = self.taps.get_mut(ifname) {
                    tap.mode = *new_mode;
                }
            }
            Record::Detached { ifname, .. } => {
                if let Some(tap) = self.taps.get_mut(ifname) {
                    tap.detached = true;
                }
            }
            Record::Identity { ifname, .. }
                if !self.taps.contains_key(ifname) && !self.identified.contains(ifname) =>
            {
                if self.taps.len() + self.identified.len() >= MAX_TAPS {
                    return Err(AnalyzeError::TooManyTaps {
                        path: self.name.clone(),
                        max: MAX_TAPS,
                    });
                }
                self.identified.insert(ifname.clone());
            }
            Record::Renamed {
                ifname, old_ifname, ..
            } => {
                if let Some(tap) = self.taps.remove(old_ifname) {
                    self.taps.insert(ifname.clone(), tap);
                }
            }
            Record::Stats { taps, .. } => {
                for row in taps {
                    if let Some(tap) = self.taps.get_mut(&row.ifname) {
                        tap.last_row = Some(row.clone());
                    }
                }
            }
            // The recorded summary has the final counters (after the last stats record);
            // the analysis writes its own summary from them at the end.
            Record::Summary { taps, .. } => {
                for row in taps {
                    if let Some(tap) = self.taps.get_mut(&row.counters.ifname) {
                        tap.last_row = Some(row.counters.clone());
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        self.emit(rec)
    }

    /// A tap attached in the recording: replayed from here, within the bounds.
    fn attached(
        &mut self,
        t: Ts,
        ifname: &str,
        ifindex: u32,
        mac: Option<MacAddr>,
        mode: Mode,
    ) -> Result<(), AnalyzeError> {
        if !self.taps.contains_key(ifname) && self.taps.len() >= MAX_TAPS {
            return Err(AnalyzeError::TooManyTaps {
                path: self.name.clone(),
                max: MAX_TAPS,
            });
        }
        if self.attachments >= MAX_ATTACHMENTS {
            return Err(AnalyzeError::TooManyAttachments {
                path: self.name.clone(),
                max: MAX_ATTACHMENTS,
            });
        }
        self.attachments += 1;
        self.identified.remove(ifname);
        self.taps.insert(
            ifname.to_string(),
            Replayed {
                ifindex,
                mac,
                mode,
                counters: TapCounters::default(),
                window: TapWindow::default(),
                history: vec![MacHistoryEntry { ts: t, mac }],
                guest: self.guests.get(ifname).copied(),
                detached: false,
                last_row: None,
            },
        );
        Ok(())
    }

    pub(super) fn packet(&mut self, p: Packet) -> Result<(), AnalyzeError> {
        let t = p.ts;
        self.end = Some(self.end.map_or(t, |e| e.max(t)));
        let Some(tap) = self.taps.get_mut(&p.ifname) else {
            return Ok(());
        };
        let direction = p.direction.unwrap_or(match tap.guest {
            Some(g) if p.data.get(6..12) != Some(&g.0) => Direction::ToVm,
            _ => Direction::FromVm,
        });
        // A cooked capture keeps the kernel's verdict instead of the destination MAC.
        let (foreign, to_own_mac) = match p.pkttype {
            Some(t) => (t as u32 == PACKET_OTHERHOST, t as u32 == PACKET_HOST),
            None => match tap.mac {
                Some(m) => (
                    is_foreign_unicast(&p.data, &m.0),
                    p.data.get(..6) == Some(&m.0[..]),
                ),
                None => (false, false),
            },
        };
        let class = classify(&p.data, foreign, direction);
        let seen = Observed {
            direction,
            to_own_mac,
            frame_len: p.orig_len as u64,
            // A bundle's frames were chosen live already; a capture's are all there.
            sampled: !self.from_bundle,
            totals: true,
        };
        let now = p.ts.0.timestamp_nanos_opt().unwrap_or(1).max(1) as u64;
        // A bundle's counters are its stats records; these count a capture.
        let admitted = diag_common::observe(
            &mut tap.counters,
            || Some(&mut tap.window),
            &class,
            &seen,
            &mut || now,
        );
        if let Some(admitted) = admitted {
            let ev = FrameEvent::of(&p.data, &admitted, 0, &seen, &class);
            if let Some(f) = FrameRecord::from_event(&ev, &p.ifname, p.ts) {
                self.emit(Record::Frame(f))?;
            }
        }
        // A raw capture has no stats records: make one per second of capture. Each has a
        // row per tap, so with many taps and few frames not that often: at most one per
        // STATS_ROWS_PER_FRAME taps' worth of frames, which keeps the rows linear in them.
        self.since_stats += 1;
        let due = self.last_stats.is_none_or(|l| t.ms_since(l) >= 1000)
            && self.since_stats.saturating_mul(STATS_ROWS_PER_FRAME) >= self.taps.len();
        if !self.from_bundle && due {
            self.last_stats = Some(t);
            self.since_stats = 0;
            let rec = self.stats(t);
            self.emit(rec)?;
        }
        Ok(())
    }

    fn stats(&self, ts: Ts) -> Record {
        Record::Stats {
            ts,
            taps: self
                .taps
                .iter()
                .filter(|(_, t)| !t.detached)
                .map(|(n, t)| {
                    // Replay's clock is the capture's (nanoseconds since the epoch).
                    let since = t.window.is_open().then(|| {
                        Ts(chrono::DateTime::from_timestamp_nanos(
                            t.window.mismatch_since_ns as i64,
                        ))
                    });
                    TapRow::new(n, &t.counters).with_window(since)
                })
                .collect(),
        }
    }

    /// The final stats and the summary; returns the summary with its verdicts.
    pub(super) fn finish(mut self) -> Result<Option<Record>, AnalyzeError> {
        let end = self.end.unwrap_or_default();
        if !self.from_bundle {
            let rec = self.stats(end);
            self.emit(rec)?;
        }
        // The counters of a bundle are its last stats; a capture's are what was replayed.
        let summary = Record::Summary {
            ts: end,
            taps: self
                .taps
                .iter()
                .map(|(name, t)| SummaryRow {
                    counters: match &t.last_row {
                        Some(r) if self.from_bundle => TapRow {
                            ifname: name.clone(),
                            ..r.clone()
                        },
                        _ => TapRow::new(name, &t.counters),
                    },
                    ifindex: t.ifindex,
                    mode: t.mode,
                    mac_history: t.history.clone(),
                    detached: t.detached,
                    verdict: None,
                })
                .collect(),
            forecasts: None,
        };
        let mut summary = summary;
        let verdicts = self.engine.apply(&summary);
        self.engine.annotate_summary(&mut summary);
        (self.out)(&summary).map_err(AnalyzeError::Output)?;
        for v in &verdicts {
            (self.out)(v).map_err(AnalyzeError::Output)?;
        }
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::fixtures::{at, attached, GUEST, NEW};

    fn packet(ms: i64, ifname: &str, src: MacAddr, dst: MacAddr) -> Packet {
        Packet {
            ts: at(ms),
            ifname: ifname.into(),
            data: crate::frames::udp(
                src,
                dst,
                "10.65.0.2".parse().unwrap(),
                "10.65.0.9".parse().unwrap(),
                98,
            ),
            orig_len: 98,
            direction: Some(Direction::FromVm),
            pkttype: None,
        }
    }

    /// A frame of `src` to `dst`, only its MAC header filled (what the first pass reads).
    fn header(src: MacAddr, dst: MacAddr) -> Packet {
        let mut data = [dst.0, src.0].concat();
        data.extend_from_slice(&[0x08, 0x00]);
        data.resize(60, 0);
        Packet {
            ts: at(0),
            ifname: "x".into(),
            data,
            orig_len: 60,
            direction: Some(Direction::FromVm),
            pkttype: None,
        }
    }

    /// Runs `f` on a replayer of a capture (`bundle`: false) whose records are counted.
    fn replayed<T>(
        bundle: bool,
        f: impl FnOnce(Replayer) -> T,
    ) -> (T, HashMap<&'static str, usize>) {
        let mut kinds: HashMap<&'static str, usize> = HashMap::new();
        let mut out = |r: &Record| {
            let kind = match r {
                Record::Stats { .. } => "stats",
                Record::Verdict { .. } => "verdict",
                Record::Summary { .. } => "summary",
                _ => "other",
            };
            *kinds.entry(kind).or_default() += 1;
            Ok(())
        };
        let t = f(Replayer::new(bundle, HashMap::new(), &mut out, "test"));
        (t, kinds)
    }

    /// A capture of 20,000 interfaces whose frames come a second apart: a stats record per
    /// frame, each with a row per interface, was 400 million rows.
    #[test]
    fn a_capture_of_many_interfaces_is_replayed_in_linear_time() {
        let n = 20_000;
        let (summary, kinds) = replayed(false, |mut r| {
            for i in 0..n {
                r.record(attached(0, &format!("if{i}"), NEW, "routed"))
                    .unwrap();
            }
            for i in 0..n {
                r.packet(packet(1000 * i as i64, "if0", GUEST, NEW))
                    .unwrap();
            }
            r.finish().unwrap()
        });
        let Some(Record::Summary { taps, .. }) = summary else {
            panic!("no summary")
        };
        assert_eq!(taps.len(), n);
        // A row per tap in each: at most STATS_ROWS_PER_FRAME rows per frame, and the last.
        let rows = kinds["stats"] * n;
        assert!(
            kinds["stats"] > 1 && rows <= STATS_ROWS_PER_FRAME * n + n,
            "{rows}"
        );
    }

    /// Identities of taps never attached, or one tap attached again and again: what the
    /// engine keeps of them is bounded as the taps are.
    #[test]
    fn taps_named_or_attached_past_the_limit_are_refused() {
        let identity = |i: usize| Record::Identity {
            ts: at(0),
            ifname: format!("vnet{i}"),
            libvirt: None,
        };
        let (err, _) = replayed(true, |mut r| {
            (0..=MAX_TAPS).find_map(|i| r.record(identity(i)).err())
        });
        assert!(
            matches!(err, Some(AnalyzeError::TooManyTaps { max: MAX_TAPS, .. })),
            "{err:?}"
        );
        // An identity then the tap's attach is one tap, not two.
        let (ok, _) = replayed(true, |mut r| {
            (0..MAX_TAPS).try_for_each(|i| {
                r.record(identity(i))?;
                r.record(attached(0, &format!("vnet{i}"), NEW, "routed"))
            })
        });
        assert!(ok.is_ok(), "{ok:?}");
        let (err, _) = replayed(true, |mut r| {
            (0..=MAX_ATTACHMENTS).find_map(|_| r.record(attached(0, "vnet0", NEW, "routed")).err())
        });
        assert!(
            matches!(err, Some(AnalyzeError::TooManyAttachments { .. })),
            "{err:?}"
        );
    }

    /// A VM that sent to 4,096 destinations in turn on each of 200 interfaces: the tap's
    /// MAC is found in time linear in what was seen (each destination was searched for in
    /// the list of those before it).
    #[test]
    fn the_tap_mac_is_inferred_in_linear_time() {
        let mut seen = BTreeMap::new();
        let mut budget = MAX_SEEN;
        let dst = |i: usize| MacAddr([0x02, 0, 0, 0, (i >> 8) as u8, i as u8]);
        for tap in 0..200 {
            let s = seen
                .entry(format!("if{tap}"))
                .or_insert_with(|| Seen::new(at(0)));
            for i in 0..MAX_MOVES {
                s.see(&header(GUEST, dst(i)), &mut budget);
            }
        }
        let mut notes = Vec::new();
        let (recs, _) = infer_taps(seen, None, &mut notes);
        assert_eq!(recs.len(), 200);
        for r in &recs {
            let Record::Attached { mac, .. } = r else {
                panic!("{r:?}")
            };
            assert_eq!(*mac, Some(dst(MAX_MOVES - 1)));
        }
        assert!(notes[0].contains("fairly sure"), "{}", notes[0]);
    }

    /// However many interfaces and sources, the first pass keeps at most MAX_SEEN entries.
    #[test]
    fn the_first_pass_keeps_a_bounded_amount() {
        let mut budget = MAX_SEEN;
        let mut seen: Vec<Seen> = Vec::new();
        for tap in 0..400 {
            let mut s = Seen::new(at(0));
            for i in 0..MAX_SOURCES {
                let src = MacAddr([
                    0x02,
                    0,
                    (tap >> 8) as u8,
                    tap as u8,
                    (i >> 8) as u8,
                    i as u8,
                ]);
                s.see(&header(src, NEW), &mut budget);
            }
            seen.push(s);
        }
        let kept: usize = seen
            .iter()
            .map(|s| s.any_src.len() + s.from_vm_src.len() + s.last.len() + s.moves.len())
            .sum();
        assert_eq!(budget, 0);
        assert!(kept <= MAX_SEEN, "{kept}");
    }
}
