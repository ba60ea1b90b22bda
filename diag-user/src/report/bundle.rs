//! `--record DIR`: a bug-report bundle.
//!
//! ```text
//! DIR/ (0700, new or empty, owned by the user running tapwatch)
//!   events.ndjson   the --json stream, record for record
//!   frames.pcapng   every notable frame, kernel timestamp, one interface block per tap
//!   host.json       tool, kernel, host, taps, libvirt interface facts, start/end
//!   summary.md      per VM: verdict, blackout, diagnosis, timeline
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
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io::{self, BufWriter, Read, Seek, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    time::Duration,
};

use crate::{
    model::clock::Ts,
    model::host::{tap_mac_derivation, HostFacts, HostJson, TapFacts},
    model::{Direction, Record, Sink},
    registry::{Tap, TapKey},
    report::{json::JsonSink, text::markdown},
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
const RESERVE_STEP: u64 = 64 << 10;

/// Allocates `len` bytes of `f` on the disk (all or nothing on the usual file systems).
fn allocate(f: &File, len: u64) -> bool {
    let Ok(len) = libc::off_t::try_from(len) else {
        return false;
    };
    // SAFETY: fallocate on a descriptor we own.
    unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) == 0 }
}

/// Disk space set aside in a file, lent to reports that must be written when the disk is
/// full, and taken back afterwards as far as there is room.
pub struct Reserve {
    file: File,
    want: u64,
    /// Given back by [`Reserve::release`] and not yet taken back.
    lent: u64,
}

impl Reserve {
    /// Sets aside `want` bytes in `file` (new or truncated), if the file system has them.
    pub fn new(file: File, want: u64) -> Self {
        let mut r = Self {
            file,
            want,
            lent: 0,
        };
        r.refill();
        r
    }

    /// The bytes it holds now.
    pub fn held(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }

    /// Gives all of it back to the file system.
    pub fn release(&mut self) {
        self.lent += self.held();
        let _ = self.file.set_len(0);
    }

    /// Grows it to `len` bytes, or leaves it as it was.
    fn try_to(&mut self, len: u64) -> bool {
        let before = self.held();
        if allocate(&self.file, len) {
            return true;
        }
        // ext4 may keep what it allocated before running out.
        let _ = self.file.set_len(before);
        false
    }

    /// Makes it whole if the file system has room; else takes back as much of what it lent
    /// as is free now (the reports written into that room keep their part), never more: a
    /// reserve that could not be made is not made of the last free bytes. Whether it is
    /// whole.
    pub fn refill(&mut self) -> bool {
        if self.try_to(self.want) {
            self.lent = 0;
            return true;
        }
        let mut step = self.lent.min(self.want.saturating_sub(self.held()));
        while step >= RESERVE_STEP {
            if self.try_to(self.held() + step) {
                self.lent = self.lent.saturating_sub(step);
                step = step.min(self.lent);
            } else {
                step /= 2;
            }
        }
        self.lent = 0;
        self.held() >= self.want
    }
}

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

/// The bundle directory, opened once and checked.
struct Dir {
    fd: OwnedFd,
    parent: OwnedFd,
    name: OsString,
    path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn last_os(path: &Path) -> BundleError {
    BundleError::Io {
        path: path.to_path_buf(),
        source: io::Error::last_os_error(),
    }
}

impl Dir {
    /// Opens (making it if needed) the directory `path` names, refusing symlinks under any
    /// spelling (`DIR/`, `DIR/.`), directories of other users, and non-empty ones.
    fn open(path: &Path) -> Result<Self, BundleError> {
        let comps: Vec<Component> = path.components().collect();
        let Some(Component::Normal(name)) = comps.last() else {
            return Err(BundleError::BadName(path.into()));
        };
        let parent: PathBuf = comps[..comps.len() - 1].iter().collect();
        let parent_path = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent
        };
        let display: PathBuf = comps.iter().collect();
        let cparent = cstr(parent_path.as_os_str()).map_err(io_at(&parent_path))?;
        // SAFETY: open(2) of a NUL-terminated path; the fd is owned right away.
        let pfd = unsafe {
            libc::open(
                cparent.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if pfd < 0 {
            return Err(last_os(&parent_path));
        }
        // SAFETY: a fresh, valid fd.
        let parent = unsafe { OwnedFd::from_raw_fd(pfd) };
        let cname = cstr(name).map_err(io_at(&display))?;
        // SAFETY: mkdirat relative to an open directory.
        let created = unsafe { libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o700) } == 0;
        if !created && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(last_os(&display));
        }
        // SAFETY: openat relative to an open directory; O_NOFOLLOW refuses a symlink.
        let dfd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                cname.as_ptr(),
                libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if dfd < 0 {
            let err = io::Error::last_os_error();
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstatat with a valid buffer, not following the last component.
            let lst = unsafe {
                libc::fstatat(
                    parent.as_raw_fd(),
                    cname.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            return Err(if lst == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                BundleError::Symlink(display)
            } else if lst == 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                BundleError::NotADirectory(display)
            } else {
                BundleError::Io {
                    path: display,
                    source: err,
                }
            });
        }
        // SAFETY: a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(dfd) };
        let dir = Self {
            fd,
            parent,
            name: name.to_os_string(),
            path: display,
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of our own fd with a valid buffer.
        if unsafe { libc::fstat(dir.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(last_os(&dir.path));
        }
        crate::report::own_dir::check_owner(&dir.path, st.st_uid, st.st_mode, false)?;
        if !created && !dir.is_empty()? {
            return Err(BundleError::NotEmpty(dir.path));
        }
        // SAFETY: fchmod of our own fd.
        if unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) } != 0 {
            return Err(last_os(&dir.path));
        }
        Ok(dir)
    }

    fn is_empty(&self) -> Result<bool, BundleError> {
        // SAFETY: dup of our own fd; fdopendir takes ownership of the copy.
        let copy = unsafe { libc::dup(self.fd.as_raw_fd()) };
        if copy < 0 {
            return Err(last_os(&self.path));
        }
        // SAFETY: a valid directory fd.
        let d = unsafe { libc::fdopendir(copy) };
        if d.is_null() {
            // SAFETY: fdopendir failed and left the fd to us.
            unsafe { libc::close(copy) };
            return Err(last_os(&self.path));
        }
        let mut empty = true;
        loop {
            // SAFETY: a valid DIR stream.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir returns a valid entry with a NUL-terminated name.
            let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                empty = false;
                break;
            }
        }
        // SAFETY: closes the stream and the copied fd.
        unsafe { libc::closedir(d) };
        Ok(empty)
    }

    fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A new file in the directory: 0600, never through a symlink, never over a file.
    fn create(&self, name: &str) -> Result<File, BundleError> {
        create_at(&self.fd, name).map_err(io_at(&self.display(name)))
    }

    fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: unlinkat relative to our own directory fd.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces a report atomically: a crash leaves the old one or the new one, never half.
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let tmp = format!("{name}.tmp");
        let _ = self.unlink(&tmp);
        let written = self.create(&tmp).and_then(|mut f| {
            f.write_all(bytes)
                .and_then(|_| f.sync_data())
                .map_err(io_at(&self.display(&tmp)))
        });
        if let Err(e) = written {
            // Half a report is worse than none: it would be read as the whole.
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        let (from, to) = (
            cstr(OsStr::new(&tmp)).map_err(io_at(&self.display(&tmp)))?,
            cstr(OsStr::new(name)).map_err(io_at(&self.display(name)))?,
        );
        // SAFETY: renameat within our own directory fd.
        let r = unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                from.as_ptr(),
                self.fd.as_raw_fd(),
                to.as_ptr(),
            )
        };
        if r != 0 {
            let e = last_os(&self.display(name));
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

fn create_at(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let c = cstr(OsStr::new(name))?;
    // SAFETY: openat relative to an open directory; the fd is owned right away.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid fd.
    Ok(unsafe { File::from_raw_fd(fd) })
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
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
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
        if let Record::Attached { ts, ifindex, .. } = rec {
            self.started.get_or_insert(*ts);
            self.covered.push((TapKey::own(*ifindex), *ts));
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

    /// host.json and summary.md from what is known now.
    fn reports(&mut self, snap: &Snapshot) -> Result<(Vec<u8>, Vec<u8>), BundleError> {
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
        Ok((json, self.summary_md(snap).into_bytes()))
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
                "- State: **{}**\n- Blackout: {}\n- Tap MAC: {}{}\n- Mode: {}\n- dst-mismatch frames: {}, RARP: {}, GARP: {}\n\n",
                t.state.as_str(),
                t.blackout_ms(now).map(|m| format!("{m} ms")).unwrap_or_else(|| "none".into()),
                crate::model::mac::show(t.mac, "none"),
                t.prev_mac.map(|(p, _)| format!(" (was {})", crate::model::mac::show(p, "none"))).unwrap_or_default(),
                t.mode.as_str(),
                t.counters.dst_mismatch_frames,
                t.counters.rarp_frames,
                t.counters.garp_frames,
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
        let (host, summary) = self.reports(snap)?;
        let write = |dir: &Dir| {
            dir.replace("host.json", &host)?;
            dir.replace("summary.md", &summary)
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
        self.pack(&host, &summary)
    }

    /// Packs the bundle into `DIR.tar.gz` (0600) beside it, from tapwatch's own descriptors
    /// and bytes: nothing anyone put in the directory meanwhile gets in.
    fn pack(&mut self, host: &[u8], summary: &[u8]) -> Result<PathBuf, BundleError> {
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
            add(&mut tar, "host.json", host.len() as u64, &mut &host[..])?;
            add(
                &mut tar,
                "summary.md",
                summary.len() as u64,
                &mut &summary[..],
            )?;
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
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("tw-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// The directory's checks, which need no root: every spelling of a symlink, a file,
    /// a non-empty directory, names that are not names.
    #[test]
    fn the_bundle_directory_is_checked_once_and_strictly() {
        let s = scratch("checks");
        let target = s.0.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = s.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for spelling in [
            link.clone(),
            PathBuf::from(format!("{}/", link.display())),
            PathBuf::from(format!("{}/.", link.display())),
        ] {
            let e = Dir::open(&spelling).err().expect("refused");
            assert!(matches!(e, BundleError::Symlink(_)), "{spelling:?}: {e}");
        }
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o755,
            "the target was not touched"
        );
        let file = s.0.join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            Dir::open(&file),
            Err(BundleError::NotADirectory(_))
        ));
        let full = s.0.join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("keep"), "x").unwrap();
        assert!(matches!(Dir::open(&full), Err(BundleError::NotEmpty(_))));
        for bad in ["/", ".", "..", "a/.."] {
            assert!(
                matches!(Dir::open(Path::new(bad)), Err(BundleError::BadName(_))),
                "{bad}"
            );
        }
        let fresh = s.0.join("new");
        let d = Dir::open(&fresh).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // Files only through the open directory, never over an existing one.
        d.create("events.ndjson").unwrap();
        assert!(d.create("events.ndjson").is_err());
        // An existing, empty directory of our own is fine too.
        std::fs::create_dir(s.0.join("empty")).unwrap();
        Dir::open(&s.0.join("empty/")).unwrap();
    }

    /// A reserve gives its room back whole and takes it back whole when there is room.
    #[test]
    fn a_reserve_lends_its_room_and_takes_it_back() {
        let s = scratch("reserve");
        let f = File::create(s.0.join("spare")).unwrap();
        let mut r = Reserve::new(f, 1 << 20);
        assert_eq!(r.held(), 1 << 20);
        r.release();
        assert_eq!(r.held(), 0);
        assert_eq!(std::fs::metadata(s.0.join("spare")).unwrap().len(), 0);
        assert!(r.refill());
        assert_eq!(r.held(), 1 << 20);
    }

    /// A report that cannot be put in place leaves no half-written `.tmp` behind (it
    /// would be taken for the report).
    #[test]
    fn a_report_that_fails_leaves_nothing_half_written() {
        let s = scratch("replace");
        let d = Dir::open(&s.0.join("b")).unwrap();
        // A directory where host.json goes: the rename fails after the write.
        std::fs::create_dir(s.0.join("b/host.json")).unwrap();
        assert!(d.replace("host.json", b"{}").is_err());
        assert!(!s.0.join("b/host.json.tmp").exists());
        d.replace("summary.md", b"# ok\n").unwrap();
        assert_eq!(std::fs::read(s.0.join("b/summary.md")).unwrap(), b"# ok\n");
    }

    /// The characters of `md` outside a backslash escape.
    fn unescaped(md: &str) -> String {
        let mut out = String::new();
        let mut escaped = false;
        for c in md.chars() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, c) => out.push(c),
                (true, _) => escaped = false,
            }
        }
        out
    }

    /// summary.md of a blackout of tapA whose VM libvirt calls `name`, on a tap renamed
    /// from `old`.
    fn summary_md(name: &str, old: &str) -> String {
        use crate::verdict::{fixtures::*, EngineConfig};
        let s = scratch("summary-names");
        let dir = s.0.join("b");
        let mut b = Bundle::create(BundleOptions {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            pack: false,
        })
        .unwrap();
        let mut engine = Engine::new(EngineConfig::default());
        let mut recs = vec![
            attached(0, old, NEW, "routed"),
            Record::Renamed {
                ts: at(1),
                ifname: "tapA".into(),
                old_ifname: old.into(),
                ifindex: 7,
            },
            identity(2, "tapA", name),
        ];
        recs.extend(stale_mac_story("tapA", 0));
        for r in &recs {
            engine.apply(r);
            b.emit(r).unwrap();
        }
        let snap = b.snapshot(&engine);
        b.finish(&snap).unwrap();
        std::fs::read_to_string(dir.join("summary.md")).unwrap()
    }

    /// summary.md shows a VM's name, its taps' names and its timeline as text: no name makes
    /// a heading, a table row, a link or markup of its own, or talks to the terminal that
    /// shows the file.
    #[test]
    fn foreign_names_are_text_in_summary_md() {
        use crate::verdict::fixtures::{assert_inert, NEWLINE_NAME, TERMINAL_NAME};
        let markup = "| web | 1 |\n## pwned <img src=x> [a](b) *b* `c` &#x202e; _d_ ~e~ \\";
        let plain = summary_md("web-1", "tapold");
        let syntax = |md: &str| -> Vec<usize> {
            let md = unescaped(md);
            "|#<>[]*`&_~!$"
                .chars()
                .map(|c| md.matches(c).count())
                .collect()
        };
        for name in [NEWLINE_NAME, TERMINAL_NAME, markup] {
            let md = summary_md(name, &format!("tap{name}"));
            assert_inert(&md);
            assert_eq!(
                md.lines().count(),
                plain.lines().count(),
                "a line per line: {md}"
            );
            assert_eq!(syntax(&md), syntax(&plain), "Markdown of its own: {md}");
        }
    }
}
