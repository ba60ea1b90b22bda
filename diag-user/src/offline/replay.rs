//! Replaying frames and tap records through the live pipeline's steps: the shared
//! classifier and observe step, the verdict engine; and, for a raw capture, learning each
//! interface's guest and tap MAC first.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
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

    pub(super) fn see(&mut self, p: &Packet) {
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
        let count = |m: &mut HashMap<MacAddr, u64>| {
            if m.len() < MAX_SOURCES || m.contains_key(&src) {
                *m.entry(src).or_default() += 1;
            }
        };
        count(&mut self.any_src);
        if p.direction.is_some() {
            self.knows_direction = true;
        }
        if p.direction == Some(Direction::FromVm) {
            count(&mut self.from_vm_src);
        }
        let known = self.last.len() < MAX_SOURCES || self.last.contains_key(&src);
        if known && self.last.get(&src) != Some(&(dst, is_arp)) {
            self.last.insert(src, (dst, is_arp));
            if self.moves.len() < MAX_MOVES {
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

fn unicast(m: MacAddr) -> bool {
    m.0[0] & 1 == 0 && m.0 != [0; 6]
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
        let from_host = |d: Option<Direction>, src: MacAddr| {
            d == Some(Direction::ToVm) || (d.is_none() && src != guest)
        };
        let host_macs: Vec<(Ts, MacAddr)> = s
            .moves
            .iter()
            .filter(|m| from_host(m.3, m.1) && unicast(m.1))
            .map(|m| (m.0, m.1))
            .collect();
        let mut macs: Vec<(Ts, MacAddr)> = Vec::new();
        if let Some(m) = tap_mac {
            macs.push((s.first, m));
        } else if !host_macs.is_empty() {
            for (t, m) in host_macs {
                if macs.last().map(|(_, l)| *l) != Some(m) {
                    macs.push((t, m));
                }
            }
            notes.push(format!(
                "{ifname}: the tap's MAC was inferred from the frames the host sent ({}); sure, \
                 unless the host used another MAC on the tap",
                macs.iter()
                    .map(|(_, m)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(" then ")
            ));
        } else {
            // The host sent nothing: the VM's own unicast, non-ARP destinations, in order.
            let mut dests: Vec<MacAddr> = Vec::new();
            for m in s
                .moves
                .iter()
                .filter(|m| m.1 == guest && !m.4 && unicast(m.2))
            {
                if dests.last() != Some(&m.2) {
                    dests.retain(|d| *d != m.2);
                    dests.push(m.2);
                }
            }
            match dests.as_slice() {
                [] => notes.push(format!(
                    "{ifname}: no unicast frame to infer the tap's MAC from; give --tap-mac"
                )),
                [only] => {
                    macs.push((s.first, *only));
                    notes.push(format!(
                        "{ifname}: the host sent nothing and the VM sent only to {only}: taken \
                         as the tap's MAC, but not sure: if the VM's cache was stale all along, \
                         {only} is the old MAC and the whole capture was a blackout; give \
                         --tap-mac with the tap's MAC (ip link show {ifname}) to be sure"
                    ));
                }
                [first, .., last] => {
                    macs.push((s.first, *last));
                    notes.push(format!(
                        "{ifname}: the host sent nothing; the VM first sent to {first} and later \
                         to {last}: {last} is taken as the tap's MAC (a VM moves to the right MAC \
                         when it re-ARPs, not away from it); fairly sure; give --tap-mac to be sure"
                    ));
                }
            }
        }
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
            } => {
                if !self.taps.contains_key(ifname) && self.taps.len() >= MAX_TAPS {
                    return Err(AnalyzeError::TooManyTaps {
                        path: self.name.clone(),
                        max: MAX_TAPS,
                    });
                }
                self.taps.insert(
                    ifname.clone(),
                    Replayed {
                        ifindex: *ifindex,
                        mac: *mac,
                        mode: *mode,
                        counters: TapCounters::default(),
                        window: TapWindow::default(),
                        history: vec![MacHistoryEntry { ts: t, mac: *mac }],
                        guest: self.guests.get(ifname).copied(),
                        detached: false,
                        last_row: None,
                    },
                );
            }
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
        // A raw capture has no stats records: make one per second of capture.
        if !self.from_bundle && self.last_stats.is_none_or(|l| t.ms_since(l) >= 1000) {
            self.last_stats = Some(t);
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
