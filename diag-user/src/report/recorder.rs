//! `serve --record-dir DIR`: a bug-report bundle per blackout, written while it happens.
//!
//! The recorder keeps the last minute of frames, stats, notices and verdicts; what else a
//! bundle needs of its tap (its life so far: attached, the VM behind it, its MACs; at the
//! end its counters and verdict) it reads from the run's registry of taps, which it keeps
//! no copy of. When a tap's verdict turns BLACKOUT it opens `DIR/blackout-<time>-<vm>/` (a bundle as `watch --record` writes,
//! docs/bundle.md), writes that history, then the tap's records as they come, and closes
//! it [`POSTROLL`] after the blackout ended (or after [`MAX_OPEN`]) with the tap's summary,
//! summary.md and host.json. A bundle begun on a disk that is already full can make no
//! reserve of its own (docs/bundle.md), so the recorder keeps one for all of them,
//! `DIR/.reserve`, made at the start: a bundle's reports borrow its room when they find
//! none, and it is taken back after. The oldest bundles, finished or cut short, are removed
//! past `keep` bundles or `max_total_bytes`. Nothing in DIR but its own `blackout-*`
//! directories and `.reserve` is touched, and DIR must be the user's own and writable by no
//! one else.

use std::{
    collections::{BTreeMap, VecDeque},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Weak,
    time::Duration,
};

use crate::{
    model::{clock::Ts, Backend, DatapathKind, MacHistoryEntry, Record, Sink, State, SummaryRow},
    registry::{Tap, TapKey},
    report::{
        bundle::{Bundle, BundleOptions, Reserve, Snapshot, RESERVE_BYTES},
        pipeline::Pipeline,
        text::one_line,
    },
};

/// How much of what led up to a blackout goes into its bundle (the MAC change and the
/// RARPs come moments before).
pub const PREROLL: Duration = Duration::from_secs(60);
/// How long a bundle goes on after its blackout ended.
pub const POSTROLL: Duration = Duration::from_secs(10);
/// A blackout that lasts longer is closed at this length (a VM that never re-ARPs).
pub const MAX_OPEN: Duration = Duration::from_secs(15 * 60);
/// Records kept for the pre-roll at most, whatever the rate.
const RECENT_MAX: usize = 20_000;
const PREFIX: &str = "blackout-";
/// The room kept for the reports of bundles begun on a full disk.
const SPARE: &str = ".reserve";

#[derive(Clone, Debug)]
pub struct RecorderOptions {
    pub dir: PathBuf,
    /// Each bundle stops taking frames past this size (its counters are always kept).
    pub max_bundle_bytes: u64,
    /// The oldest bundles go when all of them together are larger.
    pub max_total_bytes: u64,
    /// The oldest bundles go when there are more.
    pub keep: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("--record-dir {0}")]
    Dir(#[from] crate::report::own_dir::DirError),
    #[error("--record-dir {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Open {
    bundle: Bundle,
    /// The tap in the registry: its key and when it was attached.
    tap: Option<(TapKey, Ts)>,
    started: Ts,
    until: Option<Ts>,
}

pub struct Recorder {
    opts: RecorderOptions,
    /// The run's pipeline, whose registry says what the bundles need of their taps.
    pipeline: Weak<Pipeline>,
    recent: VecDeque<Record>,
    open: BTreeMap<String, Open>,
    /// Closed bundles (finished or cut short), oldest first, with their sizes.
    done: VecDeque<(PathBuf, u64)>,
    now: Option<Ts>,
    /// Room for the reports of bundles that have none of their own.
    spare: Reserve,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecorderError + '_ {
    move |source| RecorderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes under a bundle directory (its files; nothing deeper is ours).
fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A name part made of safe characters only.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Recorder {
    pub fn new(opts: RecorderOptions, pipeline: Weak<Pipeline>) -> Result<Self, RecorderError> {
        let dir = &opts.dir;
        crate::report::own_dir::ensure(dir, true)?;
        // Bundles of earlier runs count towards the limits; their names sort by time.
        let mut earlier: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| (e.path(), size_of(&e.path())))
            .collect();
        earlier.sort();
        let spare_path = dir.join(SPARE);
        // DIR is ours alone (checked above); O_NOFOLLOW all the same.
        let spare = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&spare_path)
            .map_err(io_err(&spare_path))?;
        let spare = Reserve::new(spare, RESERVE_BYTES);
        if spare.held() < RESERVE_BYTES {
            eprintln!(
                "tapwatch: --record-dir {}: no room could be set aside for the reports of \
                 blackout bundles (the disk is full, or the file system cannot reserve space); \
                 a bundle begun on a full disk may then lack its host.json",
                dir.display()
            );
        }
        let mut r = Self {
            opts,
            pipeline,
            recent: VecDeque::new(),
            open: BTreeMap::new(),
            done: earlier.into(),
            now: None,
            spare,
        };
        r.rotate();
        Ok(r)
    }

    /// Bundles written so far by this run and earlier ones still kept, oldest first.
    pub fn bundles(&self) -> impl Iterator<Item = &Path> {
        self.done.iter().map(|(p, _)| p.as_path())
    }

    /// A tap renamed: its open bundle follows it.
    fn follow_rename(&mut self, rec: &Record) {
        if let Record::Renamed {
            ifname, old_ifname, ..
        } = rec
        {
            if let Some(o) = self.open.remove(old_ifname) {
                self.open.insert(ifname.clone(), o);
            }
        }
    }

    /// The registry's entry of the live tap `ifname`, copied.
    fn registry_tap(&self, ifname: &str) -> Option<Tap> {
        let p = self.pipeline.upgrade()?;
        let head = p.head();
        let tap = head
            .engine
            .live_taps()
            .find(|t| t.ifname == ifname)
            .cloned();
        tap
    }

    /// `rec` as a bundle of `ifname` has it: its own records, its row of stats.
    fn for_tap(rec: &Record, ifname: &str) -> Option<Record> {
        match rec {
            Record::Stats { ts, taps } => {
                let row = taps.iter().find(|r| r.ifname == ifname)?;
                Some(Record::Stats {
                    ts: *ts,
                    taps: vec![row.clone()],
                })
            }
            Record::Renamed { old_ifname, .. } if old_ifname == ifname => Some(rec.clone()),
            r if r.ifname() == Some(ifname) => Some(rec.clone()),
            _ => None,
        }
    }

    fn write(open: &mut Open, rec: &Record) {
        // A full disk stops the bundle (it says so in host.json), never the recorder.
        let _ = open.bundle.emit(rec);
    }

    fn start(&mut self, ifname: &str, vm: &str, ts: Ts) {
        let stamp = ts.0.format("%Y%m%dT%H%M%S%.3fZ");
        let mut dir = self.opts.dir.join(format!("{PREFIX}{stamp}-{}", safe(vm)));
        for n in 2.. {
            if !dir.exists() {
                break;
            }
            dir = self
                .opts
                .dir
                .join(format!("{PREFIX}{stamp}-{}-{n}", safe(vm)));
        }
        let create = || {
            Bundle::create(BundleOptions {
                dir: dir.clone(),
                max_bytes: self.opts.max_bundle_bytes,
                pack: false,
            })
        };
        let created = match create() {
            // Some file systems need room for the directory itself: the spare lends it,
            // and takes back what is left.
            Err(e) if e.out_of_space() => {
                // Nothing but what that attempt made is there: the name was new.
                let _ = std::fs::remove_dir_all(&dir);
                self.spare.release();
                let again = create();
                self.spare.refill();
                again
            }
            r => r,
        };
        let bundle = match created {
            Ok(b) => b,
            Err(e) => {
                eprintln!(
                    "tapwatch: no bundle for the blackout of {} ({}): {}",
                    one_line(vm),
                    one_line(ifname),
                    one_line(&e.to_string())
                );
                return;
            }
        };
        let tap = self.registry_tap(ifname);
        let mut open = Open {
            bundle,
            tap: tap.as_ref().map(|t| (t.key, t.attached_at)),
            started: ts,
            until: None,
        };
        let mut history = tap.as_ref().map(life).unwrap_or_default();
        history.extend(self.recent.iter().filter_map(|r| Self::for_tap(r, ifname)));
        // Stable: a tap's attach stays before what happened at the same instant.
        history.sort_by_key(Record::ts);
        for r in &history {
            Self::write(&mut open, r);
        }
        self.open.insert(ifname.to_string(), open);
    }

    fn finish(&mut self, ifname: &str) {
        let Some(mut open) = self.open.remove(ifname) else {
            return;
        };
        let now = self.now.unwrap_or(open.started);
        // Copied under the pipeline's lock; the bundle is written without it.
        let snap = match (self.pipeline.upgrade(), open.tap) {
            (Some(p), Some((key, at))) => {
                let head = p.head();
                let taps = head
                    .engine
                    .taps()
                    .iter()
                    .filter(|t| t.key == key && t.attached_at == at)
                    .cloned()
                    .collect();
                Snapshot {
                    taps,
                    now: head.engine.now,
                }
            }
            _ => Snapshot {
                taps: Vec::new(),
                now: None,
            },
        };
        let rows = snap.taps.iter().map(|t| summary_row(t, now)).collect();
        let _ = open.bundle.emit(&Record::Summary {
            ts: now,
            taps: rows,
            forecasts: None,
        });
        let path = open.bundle.dir().to_path_buf();
        match open.bundle.finish_with(&snap, Some(&mut self.spare)) {
            Ok(_) => eprintln!("tapwatch: blackout bundle written to {}", path.display()),
            Err(e) => eprintln!(
                "tapwatch: the blackout bundle of {} was not finished: {}",
                one_line(ifname),
                one_line(&e.to_string())
            ),
        }
        self.spare.refill();
        // Finished or not, it takes room: the rotation counts it.
        let size = size_of(&path);
        self.done.push_back((path, size));
        self.rotate();
    }

    /// Removes the oldest bundles past the count and size limits.
    fn rotate(&mut self) {
        let mut total: u64 = self.done.iter().map(|(_, s)| s).sum();
        while self.done.len() > self.opts.keep
            || (total > self.opts.max_total_bytes && !self.done.is_empty())
        {
            let Some((path, size)) = self.done.pop_front() else {
                break;
            };
            total -= size;
            // remove_dir_all does not follow symlinks, and DIR is writable by us alone.
            if let Err(e) = std::fs::remove_dir_all(&path) {
                eprintln!(
                    "tapwatch: cannot remove the old bundle {}: {e}",
                    path.display()
                );
            }
        }
    }

    /// Closes the bundles still open (the run ends).
    pub fn finish_all(mut self) {
        let open: Vec<String> = self.open.keys().cloned().collect();
        for ifname in open {
            self.finish(&ifname);
        }
    }
}

impl Sink for Recorder {
    fn emit(&mut self, rec: &Record) -> std::io::Result<()> {
        let ts = rec.ts();
        self.now = Some(self.now.map_or(ts, |n| n.max(ts)));
        self.follow_rename(rec);
        if matches!(
            rec,
            Record::Frame(_)
                | Record::Stats { .. }
                | Record::Notice { .. }
                | Record::Verdict { .. }
        ) {
            self.recent.push_back(rec.clone());
            let horizon = PREROLL.as_millis() as i64;
            while self.recent.len() > RECENT_MAX
                || self
                    .recent
                    .front()
                    .is_some_and(|r| ts.ms_since(r.ts()) > horizon)
            {
                self.recent.pop_front();
            }
        }
        let names: Vec<String> = self.open.keys().cloned().collect();
        for name in &names {
            if let (Some(r), Some(open)) = (Self::for_tap(rec, name), self.open.get_mut(name)) {
                Self::write(open, &r);
            }
        }
        if let Record::Verdict { ifname, fields, .. } = rec {
            match (fields.state, self.open.get_mut(ifname)) {
                (State::Blackout, None) => self.start(ifname, &fields.vm, ts),
                (State::Blackout, Some(open)) => open.until = None,
                (_, Some(open)) if open.until.is_none() => {
                    open.until = Some(Ts(ts.0 + POSTROLL));
                }
                _ => {}
            }
        }
        let max_open = MAX_OPEN.as_millis() as i64;
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| o.until.is_some_and(|u| ts >= u) || ts.ms_since(o.started) >= max_open)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.finish(&name);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for open in self.open.values_mut() {
            let _ = open.bundle.flush();
        }
        Ok(())
    }
}

/// A tap's life so far, as records a bundle begun now can start with: its `attached` (as
/// it is now, with its first MAC), the VM behind it, every MAC it had since.
fn life(t: &Tap) -> Vec<Record> {
    let first_mac = t.mac_history.first().and_then(|&(_, m)| m);
    let mut v = Vec::new();
    if t.vm.is_some() {
        v.push(Record::Identity {
            ts: t.attached_at,
            ifname: t.ifname.clone(),
            libvirt: t.vm.clone(),
        });
    }
    v.push(Record::Attached {
        ts: t.attached_at,
        ifname: t.ifname.clone(),
        ifindex: t.key.ifindex,
        mac: first_mac,
        mode: t.mode,
        backend: match t.datapath {
            Some(DatapathKind::Pcap) => Backend::Pcap,
            _ => Backend::Ebpf,
        },
        datapath: t.datapath,
        appeared: t.appeared,
        mtu: t.mtu,
        master: t.master.clone(),
    });
    for pair in t.mac_history.windows(2) {
        v.push(Record::MacChange {
            ts: pair[1].0,
            ifname: t.ifname.clone(),
            old_mac: pair[0].1,
            new_mac: pair[1].1,
        });
    }
    v
}

/// The tap's row of a bundle's summary: the registry's counters and verdict.
fn summary_row(t: &Tap, now: Ts) -> SummaryRow {
    SummaryRow {
        counters: t.counters.clone(),
        ifindex: t.key.ifindex,
        mode: t.mode,
        mac_history: t
            .mac_history
            .iter()
            .map(|&(ts, mac)| MacHistoryEntry { ts, mac })
            .collect(),
        detached: t.state == State::Gone,
        verdict: Some(t.verdict_fields(now)),
    }
}

#[cfg(test)]
mod tests;
