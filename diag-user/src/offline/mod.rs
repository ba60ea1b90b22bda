//! `tapwatch analyze`: the live pipeline, offline. Frames from a bundle's frames.pcapng or
//! a tcpdump capture go through the same classifier, counters and mismatch window as in
//! the kernel (`diag_common`), become the same records, and feed the same verdict engine.
//!
//! Everything streams: a file is read block by block and line by line, so memory stays
//! bounded whatever its size (a capture is read twice: once to learn the taps, once to
//! replay it). A bundle cut short (a full disk, a crash) is read up to the cut, and the
//! analysis says where and why it stopped.

mod bundle;
pub mod capture;
pub mod facts;
pub mod merge;
pub mod preflight;
mod replay;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    fs::File,
    io::{self, BufReader, Read},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use self::{
    bundle::{tar_entry, Capped, EventLines},
    capture::{CaptureError, CaptureReader, Packet},
    replay::{infer_taps, Replayer, Seen},
};
use crate::model::{clock::Ts, mac::MacAddr, Record};

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
    #[error(
        "{path}: more than {max} attachments of taps (a tap attached again counts again); \
         tapwatch analyzes at most that many"
    )]
    TooManyAttachments { path: String, max: usize },
    #[error(
        "{src} and {dst} are one recording ({run}): `analyze SRC DST` merges the source \
         host's bundle and the destination host's bundle of one migration; give each once \
         (with `lab --record DIR`: DIR/src DIR/dst)"
    )]
    SameRun {
        src: String,
        dst: String,
        run: String,
    },
    #[error("cannot write the analysis: {0}")]
    Output(#[source] io::Error),
}

impl AnalyzeError {
    /// The command line cannot be right, whatever the files hold (exit status 2, as for
    /// clap's usage errors).
    pub fn is_usage(&self) -> bool {
        matches!(self, AnalyzeError::SameRun { .. })
    }
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

/// A packed bundle (`.tar.gz`): each entry is read from a stream of its own, decompressed
/// as it is read and never past a bomb's worth.
struct Packed {
    path: std::path::PathBuf,
    name: String,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl Packed {
    fn new(path: &Path, size: u64) -> Self {
        Self {
            path: path.to_path_buf(),
            name: path.display().to_string(),
            // A real bundle compresses 3-10x; allow far more, but not a bomb's 1000x.
            limit: size.saturating_mul(64).max(256 << 20),
            tripped: Arc::new(AtomicBool::new(false)),
        }
    }

    fn too_big(&self) -> AnalyzeError {
        AnalyzeError::TooBig {
            path: self.name.clone(),
            limit: self.limit,
        }
    }

    fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    /// The entry named `want` (in any directory of the archive), if there is one.
    fn entry(&self, want: &str) -> Result<Option<Box<dyn Read>>, AnalyzeError> {
        let f = File::open(&self.path).map_err(|source| AnalyzeError::Read {
            path: self.name.clone(),
            source,
        })?;
        let capped = Capped {
            inner: flate2::read::GzDecoder::new(BufReader::new(f)),
            left: self.limit,
            tripped: self.tripped.clone(),
        };
        match tar_entry(capped, want) {
            Ok(e) => Ok(e),
            Err(_) if self.tripped() => Err(self.too_big()),
            Err(source) => Err(AnalyzeError::Read {
                path: self.name.clone(),
                source,
            }),
        }
    }
}

/// The file `file` of the bundle at `path` (a directory, or a `.tar.gz`) as a stream;
/// `None` when the bundle has none, or `path` is a capture.
fn bundle_file(path: &Path, file: &str) -> Result<Option<Box<dyn Read>>, AnalyzeError> {
    match open_input(path)? {
        Input::Dir => match open_input(&path.join(file)) {
            Ok(Input::File(f, _)) => Ok(Some(Box::new(f))),
            Ok(Input::Dir) => Ok(None),
            Err(AnalyzeError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        },
        Input::File(mut f, size) => {
            let mut magic = [0u8; 2];
            let n = f.read(&mut magic).map_err(|source| AnalyzeError::Read {
                path: path.display().to_string(),
                source,
            })?;
            if n == 2 && magic == GZIP_MAGIC {
                Packed::new(path, size).entry(file)
            } else {
                Ok(None)
            }
        }
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The longest host.json read: it holds a few KB per tap; more is not a bundle's.
const MAX_HOST_JSON: u64 = 64 << 20;

/// A bundle's host.json (a directory's, or a `.tar.gz`'s entry); `None` when it has none
/// (a capture, a bundle cut before its end, an archive that cannot be read: its analysis
/// says why).
pub fn read_host_json(path: &Path) -> Result<Option<crate::model::host::HostJson>, AnalyzeError> {
    let reader = match bundle_file(path, "host.json") {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(AnalyzeError::Read { .. } | AnalyzeError::TooBig { .. }) if !path.is_dir() => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let err = |source| AnalyzeError::Read {
        path: format!("{}/host.json", path.display()),
        source,
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_HOST_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    host_json_from(&bytes).map(Some).map_err(err)
}

/// host.json's facts from its bytes, refusing what no tapwatch wrote: longer than
/// [`MAX_HOST_JSON`], more than [`bundle::MAX_VALUES`] JSON values (each costs tens of
/// bytes to hold), nested deeper than serde_json's 128 levels, or not its fields.
fn host_json_from(bytes: &[u8]) -> io::Result<crate::model::host::HostJson> {
    let refuse = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}; a tapwatch bundle's host.json is far smaller"),
        )
    };
    if bytes.len() as u64 > MAX_HOST_JSON {
        return Err(refuse(format!("longer than {MAX_HOST_JSON} bytes")));
    }
    if !bundle::within_values(bytes, bundle::MAX_VALUES) {
        return Err(refuse(format!(
            "more than {} JSON values",
            bundle::MAX_VALUES
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Which recording a bundle holds: the host, its boot, and when the run started. A copy
/// of a bundle, or the bundle packed, is the same recording.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunId {
    pub hostname: Option<String>,
    pub boot_id: Option<String>,
    pub started: Option<Ts>,
}

impl RunId {
    /// The bundle's run, from host.json (`host`) and, when that does not say when the run
    /// started (a bundle cut before its end has no host.json), its first `attached`
    /// record.
    pub fn of(
        path: &Path,
        host: Option<&crate::model::host::HostJson>,
    ) -> Result<Self, AnalyzeError> {
        let known = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let mut run = RunId {
            hostname: host.and_then(|h| known(&h.host.hostname)),
            boot_id: host.and_then(|h| h.host.boot_id.as_deref().and_then(known)),
            started: host.and_then(|h| h.started),
        };
        if run.started.is_none() {
            if let Some(events) = bundle_file(path, "events.ndjson")? {
                let mut lines = EventLines::new(events, String::new());
                while let Ok(Some((r, _))) = lines.next_record() {
                    if let Record::Attached { ts, .. } = r {
                        run.started = Some(ts);
                        break;
                    }
                }
            }
        }
        Ok(run)
    }

    /// Whether two bundles are of one run: the same start, on the same host and boot as
    /// far as both say (runs started at the same nanosecond on two hosts of the same name
    /// and boot are no two runs).
    pub fn same(&self, other: &RunId) -> bool {
        let agree = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.started.is_some()
            && self.started == other.started
            && agree(&self.hostname, &other.hostname)
            && agree(&self.boot_id, &other.boot_id)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        write!(
            f,
            "host {}, boot {}, started {}",
            or(&self.hostname),
            or(&self.boot_id),
            self.started.map_or("unknown".into(), |t| t.to_string())
        )
    }
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
            if n == 2 && magic == GZIP_MAGIC {
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
    let packed = Packed::new(path, size);
    let name = packed.name.clone();
    let events = packed
        .entry("events.ndjson")?
        .ok_or_else(|| AnalyzeError::NoEvents(name.clone()))?;
    let frames = packed.entry("frames.pcapng")?;
    let a = analyze_bundle(&name, events, frames, out)?;
    if packed.tripped() {
        return Err(packed.too_big());
    }
    Ok(a)
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
                Ok(Some((r, len))) => rec_q.push(r.ts(), len, r),
                Ok(None) => rec_done = true,
                Err(stop) => {
                    notes.push(stop.clone());
                    rec_done = true;
                }
            }
        }
        while !pkt_done && pkt_q.wants_more() {
            match packets.as_mut().map(|p| p.next_packet()) {
                Some(Ok(Some(p))) => pkt_q.push(p.ts, p.data.len(), p),
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
    // What the reader noticed on the way (a newer format) before where it stopped.
    let notes = std::mem::take(&mut records.notes)
        .into_iter()
        .chain(notes)
        .collect();
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
    let mut budget = replay::MAX_SEEN;
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
                    .see(&p, &mut budget);
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
                Ok(Some(p)) => q.push(p.ts, p.data.len(), p),
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
    heap: BinaryHeap<Queued<T>>,
    seq: u64,
    /// What the items held cost, in bytes of their input.
    bytes: usize,
}

/// An item in the window, oldest first (then first come), with the bytes it came from.
type Queued<T> = Reverse<(Ts, u64, OrdBox<(T, usize)>)>;

impl<T> Default for Reorder<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
        }
    }
}

/// How many items the window holds before it hands out the oldest.
const REORDER: usize = 1024;
/// And how many bytes of input they may come from: a record can be a 64 MiB line, a frame
/// a 16 MiB block, and the window holds them all at once.
const REORDER_BYTES: usize = 64 << 20;

impl<T> Reorder<T> {
    fn wants_more(&self) -> bool {
        self.heap.len() < REORDER && self.bytes < REORDER_BYTES
    }
    /// Holds `item`, which came from `cost` bytes of input.
    fn push(&mut self, ts: Ts, cost: usize, item: T) {
        self.seq += 1;
        self.bytes += cost;
        self.heap
            .push(Reverse((ts, self.seq, OrdBox((item, cost)))));
    }
    fn peek(&self) -> Option<Ts> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }
    fn pop(&mut self) -> Option<T> {
        let Reverse((_, _, OrdBox((item, cost)))) = self.heap.pop()?;
        self.bytes -= cost;
        Some(item)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn host_json() -> String {
        let h = crate::model::host::HostJson {
            tool: "tapwatch".into(),
            host: crate::model::host::HostFacts {
                hostname: "hv1".into(),
                cpu_flags: vec!["avx2".into(), "sse4_2".into()],
                ..Default::default()
            },
            taps: [("vnet0".to_string(), Default::default())].into(),
            ..Default::default()
        };
        serde_json::to_string(&h).unwrap()
    }

    /// host.json of 300,000 CPU flags is a tapwatch host's (if an odd one); one of more
    /// values than the limit, or past the length, is refused saying why.
    #[test]
    fn host_json_is_read_within_its_limits() {
        let flags: Vec<String> = (0..300_000).map(|i| format!("f{i}")).collect();
        let many = host_json().replacen(
            r#""cpu_flags":["avx2","sse4_2"]"#,
            &format!(r#""cpu_flags":{}"#, serde_json::to_string(&flags).unwrap()),
            1,
        );
        assert_eq!(
            host_json_from(many.as_bytes())
                .unwrap()
                .host
                .cpu_flags
                .len(),
            300_000
        );
        let over = format!(
            r#"{{"x":[{}],{}"#,
            vec!["0"; bundle::MAX_VALUES].join(","),
            &host_json()[1..]
        );
        let e = host_json_from(over.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("more than 1048576 JSON values"), "{e}");
        let long = vec![b' '; MAX_HOST_JSON as usize + 1];
        let e = host_json_from(&long).unwrap_err().to_string();
        assert!(e.contains("longer than 67108864 bytes"), "{e}");
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let e = host_json_from(deep.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("recursion limit"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A damaged host.json is an error, never a panic.
        #[test]
        fn damaged_host_json_never_panics(
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        ) {
            let mut b = host_json().into_bytes();
            for (at, v) in flips {
                let i = at.index(b.len());
                b[i] = v;
            }
            b.truncate(cut.index(b.len() + 1));
            let _ = host_json_from(&b);
        }

        #[test]
        fn arbitrary_host_json_never_panics(b in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = host_json_from(&b);
        }
    }

    /// The reorder window holds at most REORDER_BYTES of input at once, however few items
    /// that is: a bundle of large records held 1024 of them.
    #[test]
    fn the_reorder_window_is_bounded_in_bytes() {
        let mut q: Reorder<u32> = Reorder::default();
        let mut n = 0;
        while q.wants_more() {
            q.push(Ts::default(), 1 << 20, n);
            n += 1;
        }
        assert_eq!(n, 64);
        assert_eq!(q.pop(), Some(0));
        assert!(q.wants_more());
        // One item past the budget is still taken, alone.
        let mut q: Reorder<u32> = Reorder::default();
        q.push(Ts::default(), 100 << 20, 0);
        assert!(!q.wants_more());
        assert_eq!((q.pop(), q.bytes), (Some(0), 0));
    }

    #[test]
    fn a_run_is_its_host_boot_and_start() {
        let at = |ms| Some(Ts(chrono::DateTime::from_timestamp_millis(ms).unwrap()));
        let run = |host: &str, boot: Option<&str>, started| RunId {
            hostname: Some(host.into()),
            boot_id: boot.map(str::to_string),
            started,
        };
        let a = run("hv1", Some("b1"), at(1));
        assert!(a.same(&a.clone()));
        // A bundle of an older version has no boot id: the host and the start decide.
        assert!(a.same(&run("hv1", None, at(1))));
        assert!(!a.same(&run("hv2", Some("b1"), at(1))));
        assert!(!a.same(&run("hv1", Some("b2"), at(1))));
        // Two runs on one host (`lab --record` writes both sides so).
        assert!(!a.same(&run("hv1", Some("b1"), at(2))));
        // Nothing known of when either started: nothing tells them to be one.
        assert!(!run("hv1", None, None).same(&run("hv1", None, None)));
    }
}
