//! `tapwatch analyze`: the live pipeline, offline. Frames from a bundle's frames.pcapng or
//! a tcpdump capture go through the same classifier, counters and mismatch window as in
//! the kernel (`diag_common`), become the same records, and feed the same verdict engine.

use std::{
    collections::{BTreeMap, HashMap},
    io::Read,
    path::Path,
};

use diag_common::{
    classify, frame::is_foreign_unicast, Direction, FrameKind, TapCounters, TapWindow, PACKET_HOST,
    PACKET_OTHERHOST,
};
use serde_json::Value;

use crate::{
    capture::{self, CaptureError, Packet},
    clock::Ts,
    mac::MacAddr,
    output::{FrameRecord, MacHistoryEntry, Record, SummaryRow, TapRow},
    verdict::{Engine, EngineConfig, NoVms},
};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Capture {
        path: String,
        #[source]
        source: CaptureError,
    },
    #[error("{path}: line {line} (byte offset {offset}) is not a tapwatch record: {what}")]
    Events {
        path: String,
        line: usize,
        offset: usize,
        what: String,
    },
    #[error("{0}: a bundle needs events.ndjson")]
    NoEvents(String),
    #[error("{0}: no frames in it")]
    Empty(String),
}

/// What an analysis found: every record (with verdicts) and notes on what was inferred.
pub struct Analysis {
    pub records: Vec<Record>,
    pub notes: Vec<String>,
}

/// Analyzes a bundle directory, a `.tar.gz` bundle, or a pcap/pcapng capture.
pub fn analyze_path(path: &Path, tap_mac: Option<MacAddr>) -> Result<Analysis, AnalyzeError> {
    let name = path.display().to_string();
    let read_err = |source| AnalyzeError::Read {
        path: name.clone(),
        source,
    };
    if path.is_dir() {
        let events = std::fs::read_to_string(path.join("events.ndjson"))
            .map_err(|_| AnalyzeError::NoEvents(name.clone()))?;
        let frames = std::fs::read(path.join("frames.pcapng")).map_err(read_err)?;
        return analyze_bundle(&name, &events, &frames);
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let (events, frames) = untar(&bytes).map_err(|source| AnalyzeError::Read {
            path: name.clone(),
            source,
        })?;
        let events = events.ok_or_else(|| AnalyzeError::NoEvents(name.clone()))?;
        return analyze_bundle(&name, &events, &frames.unwrap_or_default());
    }
    let packets = capture::read(&bytes).map_err(|source| AnalyzeError::Capture {
        path: name.clone(),
        source,
    })?;
    if packets.is_empty() {
        return Err(AnalyzeError::Empty(name));
    }
    Ok(replay(packets, Vec::new(), tap_mac))
}

/// events.ndjson and frames.pcapng out of a packed bundle.
fn untar(bytes: &[u8]) -> std::io::Result<(Option<String>, Option<Vec<u8>>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let (mut events, mut frames) = (None, None);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_path_buf();
        match path.file_name().and_then(|n| n.to_str()) {
            Some("events.ndjson") => {
                let mut s = String::new();
                entry.read_to_string(&mut s)?;
                events = Some(s);
            }
            Some("frames.pcapng") => {
                let mut b = Vec::new();
                entry.read_to_end(&mut b)?;
                frames = Some(b);
            }
            _ => {}
        }
    }
    Ok((events, frames))
}

fn analyze_bundle(name: &str, events: &str, frames: &[u8]) -> Result<Analysis, AnalyzeError> {
    let mut timeline = Vec::new();
    let mut offset = 0;
    for (i, line) in events.lines().enumerate() {
        let bad = |what: String| AnalyzeError::Events {
            path: format!("{name}/events.ndjson"),
            line: i + 1,
            offset,
            what,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        if let Some(rec) = tap_record(&v).map_err(bad)? {
            timeline.push(rec);
        }
        offset += line.len() + 1;
    }
    let packets = if frames.is_empty() {
        Vec::new()
    } else {
        capture::read(frames).map_err(|source| AnalyzeError::Capture {
            path: format!("{name}/frames.pcapng"),
            source,
        })?
    };
    Ok(replay(packets, timeline, None))
}

fn s(v: &Value, k: &str) -> Result<String, String> {
    v[k].as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no {k:?}"))
}

fn ts(v: &Value) -> Result<Ts, String> {
    let t = s(v, "ts")?;
    chrono::DateTime::parse_from_rfc3339(&t)
        .map(|t| Ts(t.to_utc()))
        .map_err(|e| format!("ts {t:?}: {e}"))
}

fn mac(v: &Value, k: &str) -> Option<MacAddr> {
    v[k].as_str().and_then(|m| m.parse().ok())
}

fn mode(m: &str) -> &'static str {
    if m == "bridged" {
        "bridged"
    } else {
        "routed"
    }
}

fn row(v: &Value) -> TapRow {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    TapRow {
        ifname: v["ifname"].as_str().unwrap_or("").to_string(),
        from_vm_frames: n("from_vm_frames"),
        from_vm_bytes: n("from_vm_bytes"),
        to_vm_frames: n("to_vm_frames"),
        to_vm_bytes: n("to_vm_bytes"),
        dst_mismatch_frames: n("dst_mismatch_frames"),
        rarp_frames: n("rarp_frames"),
        garp_frames: n("garp_frames"),
        arp_requests: n("arp_requests"),
        arp_replies: n("arp_replies"),
        events_lost: n("events_lost"),
    }
}

/// The records of a bundle's events.ndjson that describe taps (frames are re-derived from
/// frames.pcapng; verdicts are re-made).
fn tap_record(v: &Value) -> Result<Option<Record>, String> {
    let ty = v["type"].as_str().ok_or("no \"type\"")?;
    Ok(Some(match ty {
        "attached" => Record::Attached {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            ifindex: v["ifindex"].as_u64().unwrap_or(0) as u32,
            mac: mac(v, "mac"),
            mode: mode(v["mode"].as_str().unwrap_or("")),
            backend: "ebpf",
            mtu: v["mtu"].as_u64().map(|m| m as u32),
            master: v["master"].as_str().map(str::to_string),
        },
        "detached" => Record::Detached {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            reason: s(v, "reason")?,
        },
        "mac_change" => Record::MacChange {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            old_mac: mac(v, "old_mac"),
            new_mac: mac(v, "new_mac"),
        },
        "mode_change" => Record::ModeChange {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            old_mode: mode(v["old_mode"].as_str().unwrap_or("")),
            new_mode: mode(v["new_mode"].as_str().unwrap_or("")),
            master: v["master"].as_str().map(str::to_string),
        },
        "stats" => Record::Stats {
            ts: ts(v)?,
            taps: v["taps"]
                .as_array()
                .ok_or("stats without \"taps\"")?
                .iter()
                .map(row)
                .collect(),
        },
        _ => return Ok(None),
    }))
}

/// Per tap while replaying.
struct Replayed {
    ifindex: u32,
    mac: Option<MacAddr>,
    mode: &'static str,
    counters: TapCounters,
    window: TapWindow,
    history: Vec<MacHistoryEntry>,
    guest: Option<MacAddr>,
    detached: bool,
}

/// The guest's MAC on a raw capture: the sender of QEMU's RARP, else the most frequent
/// source of frames known to come from the VM, else the most frequent source overall.
fn guess_guest(packets: &[&Packet]) -> Option<MacAddr> {
    let src = |p: &Packet| MacAddr::from_slice(p.data.get(6..12)?);
    if let Some(m) = packets
        .iter()
        .find(|p| p.data.get(12..14) == Some(&[0x80, 0x35]))
        .and_then(|p| src(p))
    {
        return Some(m);
    }
    let mut count: HashMap<MacAddr, usize> = HashMap::new();
    let from_vm = packets
        .iter()
        .any(|p| p.direction == Some(Direction::FromVm));
    for p in packets
        .iter()
        .filter(|p| !from_vm || p.direction == Some(Direction::FromVm))
    {
        if let Some(m) = src(p) {
            *count.entry(m).or_default() += 1;
        }
    }
    count.into_iter().max_by_key(|(_, n)| *n).map(|(m, _)| m)
}

/// Makes a raw capture's tap records: the tap's MAC is `tap_mac`, or what the host sends
/// from, or (when the host sent nothing) the first MAC the VM sent to.
fn infer_taps(
    packets: &[Packet],
    tap_mac: Option<MacAddr>,
    notes: &mut Vec<String>,
) -> (Vec<Record>, HashMap<String, MacAddr>) {
    let mut by_if: BTreeMap<&str, Vec<&Packet>> = BTreeMap::new();
    for p in packets {
        by_if.entry(&p.ifname).or_default().push(p);
    }
    let mut recs = Vec::new();
    let mut guests = HashMap::new();
    for (i, (ifname, pkts)) in by_if.into_iter().enumerate() {
        let Some(guest) = guess_guest(&pkts) else {
            continue;
        };
        guests.insert(ifname.to_string(), guest);
        let first = pkts[0].ts;
        let host_macs: Vec<(Ts, MacAddr)> = pkts
            .iter()
            .filter(|p| {
                p.direction == Some(Direction::ToVm)
                    || (p.direction.is_none() && p.data.get(6..12) != Some(&guest.0))
            })
            .filter_map(|p| Some((p.ts, MacAddr::from_slice(p.data.get(6..12)?)?)))
            .filter(|(_, m)| m.0[0] & 1 == 0 && m.0 != [0; 6])
            .collect();
        let mut macs: Vec<(Ts, MacAddr)> = Vec::new();
        if let Some(m) = tap_mac {
            macs.push((first, m));
        } else if !host_macs.is_empty() {
            for (t, m) in host_macs {
                if macs.last().map(|(_, l)| *l) != Some(m) {
                    macs.push((t, m));
                }
            }
            notes.push(format!(
                "{ifname}: the tap's MAC was inferred from the frames the host sent ({})",
                macs.iter()
                    .map(|(_, m)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(" then ")
            ));
        } else if let Some(m) = pkts
            .iter()
            .filter_map(|p| MacAddr::from_slice(p.data.get(..6)?))
            .find(|m| m.0[0] & 1 == 0 && m.0 != [0; 6])
        {
            macs.push((first, m));
            notes.push(format!("{ifname}: the tap's MAC was inferred as {m}, the first destination the VM used; give --tap-mac if the tap's MAC was something else"));
        } else {
            notes.push(format!(
                "{ifname}: no unicast frame to infer the tap's MAC from; give --tap-mac"
            ));
        }
        let mode = "routed";
        recs.push(Record::Attached {
            ts: first,
            ifname: ifname.to_string(),
            ifindex: i as u32 + 1,
            mac: macs.first().map(|(_, m)| *m),
            mode,
            backend: "pcap",
            mtu: None,
            master: None,
        });
        for w in macs.windows(2) {
            recs.push(Record::MacChange {
                ts: w[1].0,
                ifname: ifname.to_string(),
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

/// Merges tap records and frames in time order and runs them through the live pipeline.
fn replay(packets: Vec<Packet>, timeline: Vec<Record>, tap_mac: Option<MacAddr>) -> Analysis {
    let mut notes = Vec::new();
    let from_bundle = !timeline.is_empty();
    let (timeline, guests) = if from_bundle {
        (timeline, HashMap::new())
    } else {
        infer_taps(&packets, tap_mac, &mut notes)
    };
    enum Item {
        Tap(Record),
        Frame(Packet),
    }
    let mut items: Vec<(Ts, usize, Item)> = timeline
        .into_iter()
        .enumerate()
        .map(|(i, r)| (rec_ts(&r), i, Item::Tap(r)))
        .collect();
    let n = items.len();
    items.extend(
        packets
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.ts, n + i, Item::Frame(p))),
    );
    items.sort_by_key(|(t, i, _)| (*t, *i));

    let mut taps: BTreeMap<String, Replayed> = BTreeMap::new();
    let mut out: Vec<Record> = Vec::new();
    let mut last_stats: Option<Ts> = None;
    let mut end = None;
    for (t, _, item) in items {
        end = Some(t);
        match item {
            Item::Tap(rec) => {
                match &rec {
                    Record::Attached {
                        ifname,
                        ifindex,
                        mac,
                        mode,
                        ..
                    } => {
                        taps.insert(
                            ifname.clone(),
                            Replayed {
                                ifindex: *ifindex,
                                mac: *mac,
                                mode,
                                counters: TapCounters::default(),
                                window: TapWindow::default(),
                                history: vec![MacHistoryEntry { ts: t, mac: *mac }],
                                guest: guests.get(ifname).copied(),
                                detached: false,
                            },
                        );
                    }
                    Record::MacChange {
                        ifname, new_mac, ..
                    } => {
                        if let Some(tap) = taps.get_mut(ifname) {
                            tap.mac = *new_mac;
                            tap.history.push(MacHistoryEntry {
                                ts: t,
                                mac: *new_mac,
                            });
                        }
                    }
                    Record::ModeChange {
                        ifname, new_mode, ..
                    } => {
                        if let Some(tap) = taps.get_mut(ifname) {
                            tap.mode = new_mode;
                        }
                    }
                    Record::Detached { ifname, .. } => {
                        if let Some(tap) = taps.get_mut(ifname) {
                            tap.detached = true;
                        }
                    }
                    _ => {}
                }
                out.push(rec);
            }
            Item::Frame(p) => {
                let Some(tap) = taps.get_mut(&p.ifname) else {
                    continue;
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
                if !from_bundle {
                    tap.counters.record(&class, direction, p.orig_len as u64);
                }
                let now = p.ts.0.timestamp_nanos_opt().unwrap_or(1).max(1) as u64;
                let kind = tap.window.follow(&class, to_own_mac, direction, now);
                if let Some(kind) = kind {
                    let ev = event_of(&p, kind, direction, class.dst_mismatch);
                    if let Some(f) = FrameRecord::from_event(&ev, &p.ifname, p.ts) {
                        out.push(Record::Frame(f));
                    }
                }
                // A raw capture has no stats records: make one per second of capture.
                if !from_bundle && last_stats.is_none_or(|l| t.ms_since(l) >= 1000) {
                    last_stats = Some(t);
                    out.push(stats(&taps, t));
                }
            }
        }
    }
    let end = end.unwrap_or_default();
    if !from_bundle {
        out.push(stats(&taps, end));
    }
    // The counters of a bundle are its last stats; a capture's are what was replayed.
    let last_rows: HashMap<String, TapRow> = out
        .iter()
        .filter_map(|r| match r {
            Record::Stats { taps, .. } => Some(taps.clone()),
            _ => None,
        })
        .flatten()
        .map(|r| (r.ifname.clone(), r))
        .collect();
    let summary = Record::Summary {
        ts: end,
        taps: taps
            .iter()
            .map(|(name, t)| SummaryRow {
                counters: last_rows
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| TapRow::new(name, &t.counters)),
                ifindex: t.ifindex,
                mode: t.mode,
                mac_history: t.history.clone(),
                detached: t.detached,
                verdict: None,
            })
            .collect(),
    };
    out.push(summary);

    let mut engine = Engine::new(EngineConfig::default(), Box::new(NoVms));
    let mut records = Vec::new();
    for rec in out {
        let verdicts = engine.apply(&rec);
        let mut rec = rec;
        engine.annotate_summary(&mut rec);
        records.push(rec);
        records.extend(verdicts);
    }
    Analysis { records, notes }
}

fn rec_ts(r: &Record) -> Ts {
    match r {
        Record::Attached { ts, .. }
        | Record::Detached { ts, .. }
        | Record::MacChange { ts, .. }
        | Record::ModeChange { ts, .. }
        | Record::Stats { ts, .. }
        | Record::Summary { ts, .. }
        | Record::Renamed { ts, .. }
        | Record::Notice { ts, .. }
        | Record::Verdict { ts, .. } => *ts,
        Record::Frame(f) => f.ts,
        Record::Lab(l) => l.ts,
    }
}

fn stats(taps: &BTreeMap<String, Replayed>, ts: Ts) -> Record {
    Record::Stats {
        ts,
        taps: taps
            .iter()
            .filter(|(_, t)| !t.detached)
            .map(|(n, t)| TapRow::new(n, &t.counters))
            .collect(),
    }
}

/// A frame as the kernel would have reported it, so the one decoder makes its record.
fn event_of(
    p: &Packet,
    kind: FrameKind,
    direction: Direction,
    dst_mismatch: bool,
) -> diag_common::FrameEvent {
    let mut ev = diag_common::FrameEvent::zeroed();
    let n = p.data.len().min(diag_common::EVENT_SNAPLEN);
    ev.data[..n].copy_from_slice(&p.data[..n]);
    ev.captured = n as u16;
    ev.frame_len = p.orig_len;
    ev.direction = direction as u8;
    ev.kind = kind as u8;
    ev.flags = if dst_mismatch {
        diag_common::EVENT_FLAG_DST_MISMATCH
    } else {
        0
    };
    ev
}

/// The analysis as a table: one line per VM, then its diagnosis.
pub fn table(a: &Analysis) -> String {
    let mut out = String::new();
    for n in &a.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let Some(Record::Summary { taps, .. }) = a
        .records
        .iter()
        .rev()
        .find(|r| matches!(r, Record::Summary { .. }))
    else {
        return out;
    };
    out.push_str(&format!(
        "\n{:<22} {:<16} {:<8} {:<10} {:>10} {:>9} {:>5} {:>5}\n",
        "VM", "TAP", "MODE", "STATE", "BLACKOUT", "MISMATCH", "RARP", "GARP"
    ));
    for t in taps {
        let v = t.verdict.as_ref();
        out.push_str(&format!(
            "{:<22} {:<16} {:<8} {:<10} {:>10} {:>9} {:>5} {:>5}\n",
            v.map(|v| v.vm.as_str()).unwrap_or(&t.counters.ifname),
            t.counters.ifname,
            t.mode,
            v.map(|v| v.state).unwrap_or("-"),
            v.and_then(|v| v.blackout_ms)
                .map(|m| format!("{m} ms"))
                .unwrap_or_else(|| "-".into()),
            t.counters.dst_mismatch_frames,
            t.counters.rarp_frames,
            t.counters.garp_frames,
        ));
        if let Some(v) = v {
            out.push_str(&format!("  {}\n", v.diagnosis));
        }
    }
    out
}
