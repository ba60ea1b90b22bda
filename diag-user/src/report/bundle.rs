//! `--record DIR`: a bug-report bundle.
//!
//! ```text
//! DIR/ (0700, new or empty, owned by the user running tapwatch)
//!   events.ndjson   the --json stream, record for record
//!   frames.pcapng   every notable frame, kernel timestamp, one interface block per tap
//!   host.json       tool, kernel, host, taps, libvirt interface facts, start/end
//!   summary.md      per VM: verdict, blackout, diagnosis, timeline
//!   report.html     the same story as one self-contained page, with the timeline drawn
//! ```
//! tapwatch usually runs as root and DIR may sit in a directory others can write to, so the
//! directory is opened once, checked (a real directory, not a symlink under any spelling,
//! owned by this user, empty), and every file is then created relative to that open
//! directory with O_EXCL|O_NOFOLLOW, 0600; nothing is ever opened by path again. `--pack`
//! packs from the descriptors and bytes tapwatch itself wrote.
//!
//! Everything is flushed after each batch of records, so a crash loses at most the last
//! second. Past `max_bytes`, frames are skipped (and counted) while the records that carry
//! the counters are still written. A reserve file keeps room for host.json and summary.md:
//! when the disk fills up, the recording stops, and at the end the reserve is given back and
//! the reports are written into the space it held. A bundle begun on a disk already full
//! (`serve --record-dir`'s, made when a blackout begins) has none of its own; its
//! reports borrow the room of a [`Reserve`] made when there was some.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, BufWriter, Read, Seek, Write},
    path::{Path, PathBuf},
    time::Duration,
};

mod dir;
mod reserve;

use self::dir::{create_at, Dir};
use self::reserve::allocate;
pub use self::reserve::Reserve;
use crate::{
    model::clock::Ts,
    model::host::{tap_mac_derivation, HostFacts, HostJson, TapFacts},
    model::{Direction, Record, Sink},
    registry::{Tap, TapKey},
    report::{json::JsonSink, page, text::markdown},
    verdict::Engine,
};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink,
};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}: refusing to record into a directory that is not empty; give a new or empty one")]
    NotEmpty(PathBuf),
    #[error("{0}: refusing to record through a symbolic link; give the real directory")]
    Symlink(PathBuf),
    #[error("{0}: exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Dir(#[from] crate::report::own_dir::DirError),
    #[error("{0}: give the bundle directory by its name (not `.`, `..` or `/`)")]
    BadName(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Pcap {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
}

#[derive(Clone, Debug)]
pub struct BundleOptions {
    pub dir: PathBuf,
    /// Frames stop being written once the bundle is this large.
    pub max_bytes: u64,
    /// Also pack the finished bundle into `DIR.tar.gz`.
    pub pack: bool,
}

/// Room kept for host.json and summary.md (about 2 KB per tap in summary.md).
pub const RESERVE_BYTES: u64 = 4 << 20;
const RESERVE: &str = ".reserve";
/// Below this, taking back part of a reserve is not worth another try.
pub(super) const RESERVE_STEP: u64 = 64 << 10;

impl BundleError {
    /// The file system is full.
    pub fn out_of_space(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Counts what goes through a writer, for the size cap.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The reports written when a bundle is finished.
struct Reports {
    host: Vec<u8>,
    summary: Vec<u8>,
    html: Vec<u8>,
}

/// What a bundle's reports say of its taps: the registry's entries, copied.
pub struct Snapshot {
    pub taps: Vec<Tap>,
    /// The run's "now" when the copy was taken.
    pub now: Option<Ts>,
}

pub struct Bundle {
    opts: BundleOptions,
    dir: Dir,
    events: JsonSink<Counted<BufWriter<File>>>,
    frames: PcapNgWriter<Counted<BufWriter<File>>>,
    /// The same files, read back by `--pack`.
    events_file: File,
    frames_file: File,
    /// Interface block number of each tap name.
    interfaces: BTreeMap<String, u32>,
    /// The taps this bundle covers: key and when attached.
    covered: Vec<(TapKey, Ts)>,
    started: Option<Ts>,
    ended: Option<Ts>,
    frames_written: u64,
    frames_skipped: u64,
    /// Why writing stopped (a full disk), once it has.
    stopped: Option<String>,
    /// Whether the reserve could be allocated (said in host.json when it could not).
    reserved: bool,
    /// The lab's truths, for report.html.
    truths: Vec<crate::model::LabRecord>,
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Bundle {
    pub fn create(opts: BundleOptions) -> Result<Self, BundleError> {
        let dir = Dir::open(&opts.dir)?;
        // Where the file system cannot (or the disk is already full), the bundle goes on
        // without a reserve of its own.
        let reserved = allocate(&dir.create(RESERVE)?, RESERVE_BYTES);
        let events_file = dir.create("events.ndjson")?;
        let frames_file = dir.create("frames.pcapng")?;
        let clone = |f: &File, name: &str| f.try_clone().map_err(io_at(&dir.display(name)));
        let events = JsonSink(Counted {
            inner: BufWriter::new(clone(&events_file, "events.ndjson")?),
            bytes: 0,
        });
        let frames_out = Counted {
            inner: BufWriter::new(clone(&frames_file, "frames.pcapng")?),
            bytes: 0,
        };
        let frames = PcapNgWriter::new(frames_out).map_err(|source| BundleError::Pcap {
            path: dir.display("frames.pcapng"),
            source,
        })?;
        Ok(Self {
            opts,
            dir,
            events,
            frames,
            events_file,
            frames_file,
            interfaces: BTreeMap::new(),
            covered: Vec::new(),
            started: None,
            ended: None,
            frames_written: 0,
            frames_skipped: 0,
            stopped: None,
            reserved,
            truths: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// Why the recording stopped early, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    fn size(&self) -> u64 {
        self.events.0.bytes + self.frames.get_ref().bytes
    }

    fn interface(&mut self, ifname: &str) -> io::Result<u32> {
        if let Some(&id) = self.interfaces.get(ifname) {
            return Ok(id);
        }
        let id = self.interfaces.len() as u32;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: diag_common::EVENT_SNAPLEN as u32 + 8,
            options: vec![
                InterfaceDescriptionOption::IfName(ifname.to_string().into()),
                // pcap-file writes nanoseconds; say so, or readers assume microseconds.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.frames.write_pcapng_block(idb).map_err(pcap_io)?;
        self.interfaces.insert(ifname.to_string(), id);
        Ok(id)
    }

    fn write_frame(&mut self, f: &crate::model::FrameRecord) -> io::Result<()> {
        let interface_id = self.interface(&f.ifname)?;
        let since_epoch = f.ts.0.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
        let epb = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(since_epoch),
            original_len: f.len.max(f.data.len() as u32),
            data: f.data.as_slice().into(),
            // epb_flags direction: the host received it from the VM (inbound) or sent it
            // to the VM (outbound), so offline analysis need not guess.
            options: vec![EnhancedPacketOption::Flags(
                if f.direction == Direction::ToVm { 2 } else { 1 },
            )],
        };
        self.frames.write_pcapng_block(epb).map_err(pcap_io)?;
        self.frames_written += 1;
        Ok(())
    }

    /// The taps this bundle is about: those whose `attached` it has (their facts are the
    /// registry's).
    fn note_tap(&mut self, rec: &Record) {
        if let Record::Attached {
            ts,
            ifindex,
            ifname,
            ..
        } = rec
        {
            self.started.get_or_insert(*ts);
            self.covered.push((TapKey::of(ifname, *ifindex), *ts));
        }
    }

    /// A copy of the registry's entries of the taps this bundle covers: taken under the
    /// pipeline's lock (briefly), so the reports are written without it.
    pub fn snapshot(&self, engine: &Engine) -> Snapshot {
        let taps = self
            .covered
            .iter()
            .filter_map(|&(key, at)| {
                engine
                    .taps()
                    .iter()
                    .find(|t| t.key == key && t.attached_at == at)
                    .cloned()
            })
            .collect();
        Snapshot {
            taps,
            now: engine.now,
        }
    }

    /// host.json, summary.md and report.html from what is known now.
    fn reports(&mut self, snap: &Snapshot) -> Result<Reports, BundleError> {
        let taps = snap
            .taps
            .iter()
            .map(|t| {
                let facts = TapFacts {
                    ifindex: t.key.ifindex,
                    mac: t.mac,
                    mode: Some(t.mode),
                    master: t.master.clone(),
                    mtu: t.mtu,
                    mac_derivation: Some(tap_mac_derivation(t.vm.as_ref(), t.mac)),
                    libvirt: t.vm.clone(),
                };
                (t.ifname.clone(), facts)
            })
            .collect();
        let host = HostJson {
            tool: "tapwatch".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host: HostFacts::gather(),
            started: self.started,
            ended: self.ended,
            taps,
            frames_written: self.frames_written,
            frames_skipped: self.frames_skipped,
            max_bytes: self.opts.max_bytes,
            stopped: self.stopped.clone(),
            no_reserve: !self.reserved,
        };
        let json = serde_json::to_vec_pretty(&host)
            .map_err(|e| io_at(&self.dir.path)(io::Error::from(e)))?;
        let input = page::Input {
            role: "recording".into(),
            path: self.dir.path.display().to_string(),
            host: Some(host),
        };
        let now = snap.now.or(self.ended).unwrap_or_default();
        let mut report = page::Page::of_taps(vec![input], &snap.taps, now, &self.truths);
        report.notes.extend(self.stopped.as_ref().map(|why| {
            format!("The recording stopped early ({why}); the page covers the whole run.")
        }));
        Ok(Reports {
            host: json,
            summary: self.summary_md(snap).into_bytes(),
            html: page::render(&report).into_bytes(),
        })
    }

    /// summary.md: names, the diagnosis and the timeline go through [`markdown`], as
    /// text, whatever they hold.
    fn summary_md(&self, snap: &Snapshot) -> String {
        let now = snap.now.or(self.ended).unwrap_or_default();
        let mut md = String::from("# tapwatch summary\n\n");
        md.push_str(&format!(
            "Recorded on {} (Linux {}) from {} to {}.\n",
            markdown(&read_trim("/proc/sys/kernel/hostname")),
            markdown(&read_trim("/proc/sys/kernel/osrelease")),
            self.started
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            self.ended
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(still running)".into()),
        ));
        if let Some(why) = &self.stopped {
            md.push_str(&format!(
                "\n**The recording stopped early: {}.** events.ndjson and frames.pcapng end \
                 there; this summary covers the whole run.\n",
                markdown(why)
            ));
        }
        if self.frames_skipped > 0 {
            md.push_str(&format!(
                "\n**{} frames were not written to frames.pcapng: the bundle reached its size cap of {} bytes.** The counters in events.ndjson are complete.\n",
                self.frames_skipped, self.opts.max_bytes
            ));
        }
        for t in &snap.taps {
            md.push_str(&format!(
                "\n## {} ({})\n\n",
                markdown(t.vm_name()),
                markdown(&t.ifname)
            ));
            let gap = |v: Option<u64>| v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into());
            if let Some(sw) = t.switchover() {
                md.push_str(&format!(
                    "- Switch-over: {} (first RARP, else the VM's first frame)\n- Inbound gap (the network delivers to the VM again): {}\n- Outbound gap (the host accepts the VM's frames): {}\n",
                    sw,
                    gap(t.inbound_gap_ms()),
                    gap(t.outbound_gap_ms()),
                ));
            }
            md.push_str(&format!(
                "- State: **{}**\n- Blackout: {}\n- Tap MAC: {}{}\n- Mode: {}\n- dst-mismatch frames: {}, RARP: {}, GARP: {}{}\n\n",
                t.state.as_str(),
                t.blackout_ms(now).map(|m| format!("{m} ms")).unwrap_or_else(|| "none".into()),
                crate::model::mac::show(t.mac, "none"),
                t.prev_mac.map(|(p, _)| format!(" (was {})", crate::model::mac::show(p, "none"))).unwrap_or_default(),
                t.mode.as_str(),
                t.counters.dst_mismatch_frames,
                t.counters.rarp_frames,
                t.counters.garp_frames,
                nd_summary(&t.counters),
            ));
            md.push_str(&markdown(&t.diagnosis(now)));
            md.push_str("\n\n| time (UTC) | event |\n|---|---|\n");
            for e in &t.timeline {
                md.push_str(&format!("| {} | {} |\n", e.ts.clock(), markdown(&e.what)));
            }
        }
        md
    }

    /// Flushes everything and writes the reports from `snap` (the registry's entries of
    /// its taps, see [`Bundle::snapshot`]); packs the bundle if asked. Returns the path of
    /// what to attach to a ticket.
    pub fn finish(self, snap: &Snapshot) -> Result<PathBuf, BundleError> {
        self.finish_with(snap, None)
    }

    /// [`Bundle::finish`], with `spare` to give back if the reports find no room (the
    /// caller takes it back with [`Reserve::refill`]).
    pub fn finish_with(
        mut self,
        snap: &Snapshot,
        spare: Option<&mut Reserve>,
    ) -> Result<PathBuf, BundleError> {
        let dir_path = self.dir.path.clone();
        if self.stopped.is_none() {
            if let Err(e) = Sink::flush(&mut self) {
                self.stopped = Some(e.to_string());
            }
        }
        // Room was set aside for the reports, by the bundle or for it.
        self.reserved |= spare.as_ref().is_some_and(|s| s.held() > 0);
        // The reserve was kept for this moment: give it back before writing the reports.
        let _ = self.dir.unlink(RESERVE);
        let reports = self.reports(snap)?;
        let write = |dir: &Dir| {
            dir.replace("host.json", &reports.host)?;
            dir.replace("summary.md", &reports.summary)?;
            dir.replace("report.html", &reports.html)
        };
        match (write(&self.dir), spare) {
            (Err(e), Some(spare)) if e.out_of_space() => {
                spare.release();
                write(&self.dir)?;
            }
            (r, _) => r?,
        }
        if !self.opts.pack {
            return Ok(dir_path);
        }
        self.pack(&reports)
    }

    /// Packs the bundle into `DIR.tar.gz` (0600) beside it, from tapwatch's own descriptors
    /// and bytes: nothing anyone put in the directory meanwhile gets in.
    fn pack(&mut self, reports: &Reports) -> Result<PathBuf, BundleError> {
        let mut name = self.dir.name.clone();
        name.push(".tar.gz");
        let out_path = self.dir.path.with_file_name(&name);
        let file =
            create_at(&self.dir.parent, &name.to_string_lossy()).map_err(io_at(&out_path))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let base = PathBuf::from(&self.dir.name);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let add = |tar: &mut tar::Builder<_>, file: &str, size: u64, data: &mut dyn Read| {
            let mut h = tar::Header::new_gnu();
            h.set_size(size);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, base.join(file), data)
        };
        let err = io_at(&out_path);
        let result = (|| -> io::Result<()> {
            for (file, f) in [
                ("events.ndjson", &mut self.events_file),
                ("frames.pcapng", &mut self.frames_file),
            ] {
                let size = f.seek(io::SeekFrom::End(0))?;
                f.seek(io::SeekFrom::Start(0))?;
                add(&mut tar, file, size, &mut (&mut *f).take(size))?;
            }
            for (file, bytes) in [
                ("host.json", &reports.host),
                ("summary.md", &reports.summary),
                ("report.html", &reports.html),
            ] {
                add(&mut tar, file, bytes.len() as u64, &mut &bytes[..])?;
            }
            let gz = tar.into_inner()?;
            gz.finish()?.sync_all()
        })();
        result.map_err(err)?;
        Ok(out_path)
    }
}

fn pcap_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Bundle {
    fn write(&mut self, rec: &Record) -> io::Result<()> {
        self.note_tap(rec);
        match rec {
            Record::Frame(f) => {
                if self.size() >= self.opts.max_bytes {
                    self.frames_skipped += 1;
                    return Ok(());
                }
                self.write_frame(f)?;
            }
            Record::Summary { ts, .. } => {
                self.ended = Some(*ts);
            }
            Record::Lab(l) if l.event == crate::model::LabEvent::Truth => {
                self.truths.retain(|t| t.vm != l.vm);
                self.truths.push(l.clone());
            }
            _ => {}
        }
        self.events.emit(rec)
    }
}

impl Sink for Bundle {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        if self.stopped.is_some() {
            return Ok(());
        }
        self.write(rec).inspect_err(|e| {
            self.stopped = Some(e.to_string());
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.stopped.is_some() {
            return Ok(());
        }
        self.events
            .flush()
            .and_then(|_| self.frames.get_mut().flush())
            .inspect_err(|e| self.stopped = Some(e.to_string()))
    }
}

#[cfg(test)]
mod tests;

/// The neighbour discovery counts of summary.md, for a guest that spoke IPv6.
fn nd_summary(c: &crate::model::TapRow) -> String {
    if c.nd_frames() == 0 {
        return String::new();
    }
    format!(
        ", unsolicited NA: {}, neighbour solicitations: {}, advertisements: {}, router \
         solicitations: {}, advertisements: {}",
        c.unsolicited_nas,
        c.neighbor_solicits,
        c.neighbor_adverts,
        c.router_solicits,
        c.router_adverts
    )
}
