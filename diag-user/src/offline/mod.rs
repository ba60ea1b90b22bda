//! `tapwatch analyze`: the live pipeline, offline. Frames from a bundle's frames.pcapng or
//! a tcpdump capture go through the same classifier, counters and mismatch window as in
//! the kernel (`diag_common`), become the same records, and feed the same verdict engine.
//!
//! Everything streams: a file is read block by block and line by line, so memory stays
//! bounded whatever its size (a capture is read twice: once to learn the taps, once to
//! replay it). A bundle cut short (a full disk, a crash) is read up to the cut, and the
//! analysis says where and why it stopped.

pub mod capture;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    fs::File,
    io::{self, BufRead, BufReader, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use diag_common::{
    classify, frame::is_foreign_unicast, Direction, FrameKind, TapCounters, TapWindow, PACKET_HOST,
    PACKET_OTHERHOST,
};
use serde_json::Value;

use crate::{
    model::clock::Ts,
    model::mac::MacAddr,
    model::{FrameRecord, MacHistoryEntry, Record, SummaryRow, TapRow},
    offline::capture::{CaptureError, CaptureReader, Packet},
    verdict::{Engine, EngineConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Capture {
        path: String,
        #[source]
        source: CaptureError,
    },
    #[error("{0}: a bundle needs events.ndjson")]
    NoEvents(String),
    #[error("{0}: no frames in it")]
    Empty(String),
    #[error(
        "{path}: not a regular file ({kind}): give a pcap/pcapng capture, a bundle directory \
         or a bundle .tar.gz"
    )]
    NotAFile { path: String, kind: &'static str },
    #[error(
        "{path}: expands to more than {limit} bytes, far more than a tapwatch bundle of its \
         size would; refusing to decompress the rest"
    )]
    TooBig { path: String, limit: u64 },
    #[error("{path}: more than {max} interfaces; tapwatch analyzes at most that many")]
    TooManyTaps { path: String, max: usize },
    #[error("cannot write the analysis: {0}")]
    Output(#[source] io::Error),
}

/// What an analysis found besides its records: notes on what was inferred, and, when the
/// input stopped early, where and why.
#[derive(Debug, Default)]
pub struct Analysis {
    pub notes: Vec<String>,
    /// The last summary, with verdicts.
    pub summary: Option<Record>,
    /// The input was damaged: the analysis covers what came before the damage.
    pub damaged: Option<AnalyzeError>,
}

/// The most taps one analysis follows (memory per tap is bounded, their number must be).
pub const MAX_TAPS: usize = 65_536;
/// The longest line of events.ndjson accepted (a summary of thousands of taps is long).
const MAX_LINE: usize = 64 << 20;
/// MAC history kept per tap.
const MAX_HISTORY: usize = 256;

/// Opens `path` for reading, refusing what is not a regular file or a directory (a FIFO,
/// a device, a symlink to /dev/zero) without blocking on it.
fn open_input(path: &Path) -> Result<Input, AnalyzeError> {
    let name = path.display().to_string();
    let err = |source| AnalyzeError::Read {
        path: name.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Ok(Input::Dir);
    }
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(AnalyzeError::NotAFile { path: name, kind });
    }
    Ok(Input::File(f, meta.len()))
}

enum Input {
    Dir,
    File(File, u64),
}

/// Analyzes a bundle directory, a `.tar.gz` bundle, or a pcap/pcapng capture, handing
/// every record (with verdicts) to `out` as it comes.
pub fn analyze_path(
    path: &Path,
    tap_mac: Option<MacAddr>,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> Result<Analysis, AnalyzeError> {
    let name = path.display().to_string();
    match open_input(path)? {
        Input::Dir => {
            let events = match open_input(&path.join("events.ndjson")) {
                Ok(Input::File(f, _)) => f,
                Ok(Input::Dir) | Err(AnalyzeError::Read { .. }) => {
                    return Err(AnalyzeError::NoEvents(name))
                }
                Err(e) => return Err(e),
            };
            let frames = match open_input(&path.join("frames.pcapng")) {
                Ok(Input::File(f, _)) => Some(Box::new(f) as Box<dyn Read>),
                Ok(Input::Dir) => None,
                Err(AnalyzeError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => return Err(e),
            };
            analyze_bundle(&name, Box::new(events), frames, out)
        }
        Input::File(mut f, size) => {
            let mut magic = [0u8; 2];
            let n = f.read(&mut magic).map_err(|source| AnalyzeError::Read {
                path: name.clone(),
                source,
            })?;
            if n == 2 && magic == [0x1f, 0x8b] {
                return analyze_tgz(path, size, out);
            }
            analyze_capture(path, tap_mac, out)
        }
    }
}

/// A `.tar.gz` bundle: read twice at once (events and frames are two entries of one
/// stream), each decompressed as it is read, never more than a bomb's worth.
fn analyze_tgz(
    path: &Path,
    size: u64,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> Result<Analysis, AnalyzeError> {
    let name = path.display().to_string();
    // A real bundle compresses 3-10x; allow far more, but not a bomb's 1000x.
    let limit = size.saturating_mul(64).max(256 << 20);
    let tripped = Arc::new(AtomicBool::new(false));
    let too_big = || AnalyzeError::TooBig {
        path: name.clone(),
        limit,
    };
    let entry = |want: &str| -> Result<Option<Box<dyn Read>>, AnalyzeError> {
        let f = File::open(path).map_err(|source| AnalyzeError::Read {
            path: name.clone(),
            source,
        })?;
        let capped = Capped {
            inner: flate2::read::GzDecoder::new(BufReader::new(f)),
            left: limit,
            tripped: tripped.clone(),
        };
        match tar_entry(capped, want) {
            Ok(e) => Ok(e),
            Err(_) if tripped.load(Ordering::Relaxed) => Err(too_big()),
            Err(source) => Err(AnalyzeError::Read {
                path: name.clone(),
                source,
            }),
        }
    };
    let events = entry("events.ndjson")?.ok_or_else(|| AnalyzeError::NoEvents(name.clone()))?;
    let frames = entry("frames.pcapng")?;
    let a = analyze_bundle(&name, events, frames, out)?;
    if tripped.load(Ordering::Relaxed) {
        return Err(too_big());
    }
    Ok(a)
}

/// The entry of a tar stream whose file name is `want`, as a reader of its bytes. Walks
/// the 512-byte headers itself (skipping the other entries' data) so that the reader can
/// own the stream: two entries of one archive are read side by side from two streams.
fn tar_entry<R: Read + 'static>(mut inner: R, want: &str) -> io::Result<Option<Box<dyn Read>>> {
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut header = [0u8; 512];
        if !read_full(&mut inner, &mut header)? || header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let h = tar::Header::from_byte_slice(&header);
        let size = h.entry_size()?;
        let padded = size.div_ceil(512) * 512;
        let kind = h.entry_type();
        if kind.is_gnu_longname() {
            // The next entry's name, too long for its header.
            if size > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a tar name longer than 64 KiB",
                ));
            }
            let mut n = vec![0u8; padded as usize];
            read_full(&mut inner, &mut n)?;
            n.truncate(size as usize);
            while n.last() == Some(&0) {
                n.pop();
            }
            long_name = Some(n);
            continue;
        }
        let name = long_name
            .take()
            .unwrap_or_else(|| h.path_bytes().into_owned());
        let file = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if file == want.as_bytes() && kind.is_file() {
            return Ok(Some(Box::new(inner.take(size))));
        }
        io::copy(&mut (&mut inner).take(padded), &mut io::sink())?;
    }
}

/// Fills `buf`; false at a clean end of stream before any byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A reader that fails once more than its limit came out of it, and says so in `tripped`
/// (shared by the readers of one archive).
struct Capped<R> {
    inner: R,
    left: u64,
    tripped: Arc<AtomicBool>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "expands past the decompression limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A bundle: its records and its frames merged in time order and replayed.
fn analyze_bundle(
    name: &str,
    events: Box<dyn Read>,
    frames: Option<Box<dyn Read>>,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> Result<Analysis, AnalyzeError> {
    let mut notes = Vec::new();
    let mut records = EventLines::new(events, format!("{name}/events.ndjson"));
    let mut packets = match frames {
        Some(f) => match CaptureReader::new(f) {
            Ok(r) => Some(r),
            // An empty frames.pcapng (nothing notable happened, or cut before its header).
            Err(CaptureError::Truncated { .. }) | Err(CaptureError::NotACapture(_)) => None,
            Err(source) => {
                return Err(AnalyzeError::Capture {
                    path: format!("{name}/frames.pcapng"),
                    source,
                })
            }
        },
        None => None,
    };
    let mut replay = Replayer::new(true, HashMap::new(), out, name);
    let mut rec_q: Reorder<Record> = Reorder::default();
    let mut pkt_q: Reorder<Packet> = Reorder::default();
    let (mut rec_done, mut pkt_done) = (false, packets.is_none());
    loop {
        while !rec_done && rec_q.wants_more() {
            match records.next_record() {
                Ok(Some(r)) => rec_q.push(rec_ts(&r), r),
                Ok(None) => rec_done = true,
                Err(stop) => {
                    notes.push(stop.clone());
                    rec_done = true;
                }
            }
        }
        while !pkt_done && pkt_q.wants_more() {
            match packets.as_mut().map(|p| p.next_packet()) {
                Some(Ok(Some(p))) => pkt_q.push(p.ts, p),
                Some(Ok(None)) | None => pkt_done = true,
                Some(Err(e)) => {
                    notes.push(format!(
                        "{name}/frames.pcapng stops early: {e}; the analysis uses every frame before it"
                    ));
                    pkt_done = true;
                }
            }
        }
        // Records first at equal times: a tap's attach comes before its frames.
        let take_rec = match (rec_q.peek(), pkt_q.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(r), Some(p)) => r <= p,
        };
        if take_rec {
            let r = rec_q.pop().expect("peeked");
            replay.record(r)?;
        } else {
            let p = pkt_q.pop().expect("peeked");
            replay.packet(p)?;
        }
    }
    let summary = replay.finish()?;
    Ok(Analysis {
        notes,
        summary,
        damaged: None,
    })
}

/// A raw capture: read once to learn each interface's guest and tap MAC, once to replay.
fn analyze_capture(
    path: &Path,
    tap_mac: Option<MacAddr>,
    out: &mut dyn FnMut(&Record) -> io::Result<()>,
) -> Result<Analysis, AnalyzeError> {
    let name = path.display().to_string();
    let open = || -> Result<CaptureReader<BufReader<File>>, AnalyzeError> {
        let f = File::open(path).map_err(|source| AnalyzeError::Read {
            path: name.clone(),
            source,
        })?;
        CaptureReader::new(BufReader::new(f)).map_err(|source| AnalyzeError::Capture {
            path: name.clone(),
            source,
        })
    };
    let cap_err = |source| AnalyzeError::Capture {
        path: name.clone(),
        source,
    };
    // Pass 1: what each interface looks like.
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut r = open()?;
    let mut damaged = None;
    let mut count = 0u64;
    loop {
        match r.next_packet() {
            Ok(Some(p)) => {
                count += 1;
                if !seen.contains_key(&p.ifname) && seen.len() >= MAX_TAPS {
                    return Err(AnalyzeError::TooManyTaps {
                        path: name,
                        max: MAX_TAPS,
                    });
                }
                seen.entry(p.ifname.clone())
                    .or_insert_with(|| Seen::new(p.ts))
                    .see(&p);
            }
            Ok(None) => break,
            Err(e) => {
                damaged = Some(cap_err(e));
                break;
            }
        }
    }
    if count == 0 {
        return match damaged {
            Some(e) => Err(e),
            None => Err(AnalyzeError::Empty(name)),
        };
    }
    let mut notes = Vec::new();
    let (taps, guests) = infer_taps(seen, tap_mac, &mut notes);
    // Pass 2: the replay, the inferred taps first.
    let mut replay = Replayer::new(false, guests, out, &name);
    for rec in taps {
        replay.record(rec)?;
    }
    let mut r = open()?;
    let mut q: Reorder<Packet> = Reorder::default();
    let mut done = false;
    loop {
        while !done && q.wants_more() {
            match r.next_packet() {
                Ok(Some(p)) => q.push(p.ts, p),
                // Pass 1 said so already.
                Ok(None) | Err(_) => done = true,
            }
        }
        let Some(p) = q.pop() else { break };
        replay.packet(p)?;
    }
    let summary = replay.finish()?;
    Ok(Analysis {
        notes,
        summary,
        damaged,
    })
}

/// A small reorder window: captures from several CPUs (`tcpdump -i any`) and the two files
/// of a bundle are in time order only roughly.
struct Reorder<T> {
    heap: BinaryHeap<Reverse<(Ts, u64, OrdBox<T>)>>,
    seq: u64,
}

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

/// How many items the window holds before it hands out the oldest.
const REORDER: usize = 1024;

impl<T> Reorder<T> {
    fn wants_more(&self) -> bool {
        self.heap.len() < REORDER
    }
    fn push(&mut self, ts: Ts, item: T) {
        self.seq += 1;
        self.heap.push(Reverse((ts, self.seq, OrdBox(item))));
    }
    fn peek(&self) -> Option<Ts> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }
    fn pop(&mut self) -> Option<T> {
        self.heap.pop().map(|Reverse((_, _, OrdBox(i)))| i)
    }
}

/// An item the heap orders by its key only.
struct OrdBox<T>(T);
impl<T> PartialEq for OrdBox<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for OrdBox<T> {}
impl<T> PartialOrd for OrdBox<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for OrdBox<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// events.ndjson, line by line: the records that describe taps (frames are re-derived
/// from frames.pcapng; verdicts are re-made).
struct EventLines {
    src: BufReader<Box<dyn Read>>,
    name: String,
    line: usize,
    offset: u64,
    buf: Vec<u8>,
}

impl EventLines {
    fn new(src: Box<dyn Read>, name: String) -> Self {
        Self {
            src: BufReader::with_capacity(64 * 1024, src),
            name,
            line: 0,
            offset: 0,
            buf: Vec::new(),
        }
    }

    /// The next tap record; `Err` with a note where the file stops being readable (a line
    /// cut short by a full disk or a crash, or a damaged one): what came before counts.
    fn next_record(&mut self) -> Result<Option<Record>, String> {
        loop {
            self.buf.clear();
            let start = self.offset;
            let n = (&mut self.src)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| format!("{} stops at byte offset {start}: {e}", self.name))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.offset += n as u64;
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && n > MAX_LINE {
                return Err(format!(
                    "{} stops at line {} (byte offset {start}): a line longer than {MAX_LINE} bytes",
                    self.name, self.line
                ));
            }
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| e.to_string())
                .and_then(|v| tap_record(&v));
            match parsed {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => continue,
                Err(what) if !complete => {
                    return Err(format!(
                        "{} ends with an incomplete line {} at byte offset {start} ({what}): the \
                         recording was cut short (a full disk or a crash); everything before it \
                         was read",
                        self.name, self.line
                    ))
                }
                Err(what) => {
                    return Err(format!(
                        "{} stops at line {} (byte offset {start}), which is not a tapwatch \
                         record ({what}); everything before it was read",
                        self.name, self.line
                    ))
                }
            }
        }
    }
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

/// A tap record of events.ndjson, or `None` for the kinds that are re-derived.
fn tap_record(v: &Value) -> Result<Option<Record>, String> {
    let ty = v["type"].as_str().ok_or("no \"type\"")?;
    Ok(Some(match ty {
        "attached" => Record::Attached {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            ifindex: v["ifindex"].as_u64().unwrap_or(0) as u32,
            mac: mac(v, "mac"),
            mode: mode(v["mode"].as_str().unwrap_or("")),
            backend: if v["backend"] == "pcap" {
                "pcap"
            } else {
                "ebpf"
            },
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
        "renamed" => Record::Renamed {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            old_ifname: s(v, "old_ifname")?,
            ifindex: v["ifindex"].as_u64().unwrap_or(0) as u32,
        },
        "identity" => Record::Identity {
            ts: ts(v)?,
            ifname: s(v, "ifname")?,
            libvirt: serde_json::from_value(v["libvirt"].clone()).map_err(|e| e.to_string())?,
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

/// What the first pass learns of one interface of a raw capture, in bounded space.
struct Seen {
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
    fn new(first: Ts) -> Self {
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

    fn see(&mut self, p: &Packet) {
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
fn infer_taps(
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
            mode: "routed",
            backend: "pcap",
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
    mode: &'static str,
    counters: TapCounters,
    window: TapWindow,
    history: Vec<MacHistoryEntry>,
    guest: Option<MacAddr>,
    detached: bool,
    /// The tap's counters in the bundle's last stats record.
    last_row: Option<TapRow>,
}

/// The live pipeline, fed from a file: classification, counters, windows, verdicts.
struct Replayer<'a> {
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
    fn new(
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

    fn record(&mut self, rec: Record) -> Result<(), AnalyzeError> {
        let t = rec_ts(&rec);
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
                        mode,
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
                    tap.mode = new_mode;
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
            _ => {}
        }
        self.emit(rec)
    }

    fn packet(&mut self, p: Packet) -> Result<(), AnalyzeError> {
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
        if !self.from_bundle {
            tap.counters.record(&class, direction, p.orig_len as u64);
        }
        let now = p.ts.0.timestamp_nanos_opt().unwrap_or(1).max(1) as u64;
        let kind = tap.window.follow(&class, to_own_mac, direction, now);
        if let Some(kind) = kind {
            let ev = event_of(&p, kind, direction, class.dst_mismatch);
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
                .map(|(n, t)| TapRow::new(n, &t.counters))
                .collect(),
        }
    }

    /// The final stats and the summary; returns the summary with its verdicts.
    fn finish(mut self) -> Result<Option<Record>, AnalyzeError> {
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
        | Record::Identity { ts, .. }
        | Record::Verdict { ts, .. } => *ts,
        Record::Frame(f) => f.ts,
        Record::Lab(l) => l.ts,
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
    let Some(Record::Summary { taps, .. }) = &a.summary else {
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
