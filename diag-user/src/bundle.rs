//! `--record DIR`: a bug-report bundle.
//!
//! ```text
//! DIR/ (0700, new or empty)
//!   events.ndjson   the --json stream, record for record
//!   frames.pcapng   every notable frame, kernel timestamp, one interface block per tap
//!   host.json       tool, kernel, host, taps, libvirt interface facts, start/end
//!   summary.md      per VM: verdict, blackout, diagnosis, timeline
//! ```
//! Files are created 0600 with O_NOFOLLOW and O_EXCL; the directory must be new or empty
//! and not a symlink. Everything is flushed after each batch of records, so a crash loses
//! at most the last second. Past `max_bytes`, frames are skipped (and counted) while the
//! records that carry the counters are still written.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
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
use serde::Serialize;

use crate::{
    clock::Ts,
    libvirt::VmInterface,
    mac::MacAddr,
    output::{JsonSink, Record, Sink},
    verdict::{Engine, EngineConfig, VmDirectory},
};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}: refusing to record into a directory that is not empty; give a new or empty one")]
    NotEmpty(PathBuf),
    #[error("{0}: refusing to record through a symbolic link; give the real directory")]
    Symlink(PathBuf),
    #[error("{0}: exists and is not a directory")]
    NotADirectory(PathBuf),
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

/// Facts about one tap for host.json.
#[derive(Clone, Debug, Default, Serialize)]
struct TapFacts {
    ifindex: u32,
    mac: Option<MacAddr>,
    mode: &'static str,
    master: Option<String>,
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    libvirt: Option<VmInterface>,
}

#[derive(Serialize)]
struct HostJson<'a> {
    tool: &'static str,
    version: &'static str,
    kernel_release: String,
    hostname: String,
    started: Option<Ts>,
    ended: Option<Ts>,
    taps: &'a BTreeMap<String, TapFacts>,
    frames_written: u64,
    frames_skipped: u64,
    max_bytes: u64,
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

pub struct Bundle {
    opts: BundleOptions,
    events: JsonSink<Counted<BufWriter<File>>>,
    frames: PcapNgWriter<Counted<BufWriter<File>>>,
    /// Interface block number of each tap name.
    interfaces: BTreeMap<String, u32>,
    taps: BTreeMap<String, TapFacts>,
    engine: Engine,
    started: Option<Ts>,
    ended: Option<Ts>,
    frames_written: u64,
    frames_skipped: u64,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A new file, 0600, never through a symlink, never over an existing file.
fn create_file(path: &Path) -> Result<File, BundleError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_at(path))
}

/// Makes `dir` (0700) or accepts it if it is an empty real directory.
fn prepare_dir(dir: &Path) -> Result<(), BundleError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(BundleError::Symlink(dir.into())),
        Ok(m) if !m.is_dir() => Err(BundleError::NotADirectory(dir.into())),
        Ok(_) => {
            if fs::read_dir(dir).map_err(io_at(dir))?.next().is_some() {
                return Err(BundleError::NotEmpty(dir.into()));
            }
            fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io_at(dir))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_at(dir)),
        Err(e) => Err(io_at(dir)(e)),
    }
}

impl Bundle {
    /// `vms` names the VMs in summary.md and host.json.
    pub fn create(
        opts: BundleOptions,
        vms: Box<dyn VmDirectory + Send>,
    ) -> Result<Self, BundleError> {
        prepare_dir(&opts.dir)?;
        let events_path = opts.dir.join("events.ndjson");
        let frames_path = opts.dir.join("frames.pcapng");
        let events = JsonSink(Counted {
            inner: BufWriter::new(create_file(&events_path)?),
            bytes: 0,
        });
        let frames_file = Counted {
            inner: BufWriter::new(create_file(&frames_path)?),
            bytes: 0,
        };
        let frames = PcapNgWriter::new(frames_file).map_err(|source| BundleError::Pcap {
            path: frames_path,
            source,
        })?;
        Ok(Self {
            opts,
            events,
            frames,
            interfaces: BTreeMap::new(),
            taps: BTreeMap::new(),
            engine: Engine::new(EngineConfig::default(), vms),
            started: None,
            ended: None,
            frames_written: 0,
            frames_skipped: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
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
            snaplen: diag_common::EVENT_SNAPLEN as u32 + 4,
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

    fn write_frame(&mut self, f: &crate::output::FrameRecord) -> io::Result<()> {
        let interface_id = self.interface(&f.ifname)?;
        let since_epoch = f.ts.0.timestamp_nanos_opt().unwrap_or(0).max(0) as u64;
        let epb = EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(since_epoch),
            original_len: f.len.max(f.data.len() as u32),
            data: f.data.as_slice().into(),
            // epb_flags direction: the host received it from the VM (inbound) or sent it
            // to the VM (outbound), so offline analysis need not guess.
            options: vec![EnhancedPacketOption::Flags(if f.direction == "to_vm" {
                2
            } else {
                1
            })],
        };
        self.frames.write_pcapng_block(epb).map_err(pcap_io)?;
        self.frames_written += 1;
        Ok(())
    }

    fn note_tap(&mut self, rec: &Record) {
        match rec {
            Record::Attached {
                ts,
                ifname,
                ifindex,
                mac,
                mode,
                mtu,
                master,
                ..
            } => {
                self.started.get_or_insert(*ts);
                self.taps.insert(
                    ifname.clone(),
                    TapFacts {
                        ifindex: *ifindex,
                        mac: *mac,
                        mode,
                        master: master.clone(),
                        mtu: *mtu,
                        libvirt: None,
                    },
                );
            }
            Record::MacChange {
                ifname, new_mac, ..
            } => {
                if let Some(t) = self.taps.get_mut(ifname) {
                    t.mac = *new_mac;
                }
            }
            Record::ModeChange {
                ifname,
                new_mode,
                master,
                ..
            } => {
                if let Some(t) = self.taps.get_mut(ifname) {
                    t.mode = new_mode;
                    t.master = master.clone();
                }
            }
            _ => {}
        }
    }

    /// Writes host.json and summary.md (again) from what is known now.
    fn write_reports(&mut self) -> Result<(), BundleError> {
        for t in &self.engine.taps {
            if let (Some(facts), Some(vm)) = (self.taps.get_mut(&t.ifname), &t.vm) {
                facts.libvirt = Some(vm.clone());
            }
        }
        let host = HostJson {
            tool: "tapwatch",
            version: env!("CARGO_PKG_VERSION"),
            kernel_release: read_trim("/proc/sys/kernel/osrelease"),
            hostname: read_trim("/proc/sys/kernel/hostname"),
            started: self.started,
            ended: self.ended,
            taps: &self.taps,
            frames_written: self.frames_written,
            frames_skipped: self.frames_skipped,
            max_bytes: self.opts.max_bytes,
        };
        let json = serde_json::to_vec_pretty(&host).map_err(io::Error::from);
        replace_file(
            &self.opts.dir.join("host.json"),
            &json.map_err(io_at(&self.opts.dir))?,
        )?;
        let md = self.summary_md();
        replace_file(&self.opts.dir.join("summary.md"), md.as_bytes())
    }

    fn summary_md(&self) -> String {
        let now = self.engine.now.or(self.ended).unwrap_or_default();
        let mut md = String::from("# tapwatch summary\n\n");
        md.push_str(&format!(
            "Recorded on {} (Linux {}) from {} to {}.\n",
            read_trim("/proc/sys/kernel/hostname"),
            read_trim("/proc/sys/kernel/osrelease"),
            self.started
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            self.ended
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(still running)".into()),
        ));
        if self.frames_skipped > 0 {
            md.push_str(&format!(
                "\n**{} frames were not written to frames.pcapng: the bundle reached its size cap of {} bytes.** The counters in events.ndjson are complete.\n",
                self.frames_skipped, self.opts.max_bytes
            ));
        }
        for t in &self.engine.taps {
            md.push_str(&format!("\n## {} ({})\n\n", t.vm_name(), t.ifname));
            md.push_str(&format!(
                "- State: **{}**\n- Blackout: {}\n- Tap MAC: {}{}\n- Mode: {}\n- dst-mismatch frames: {}, RARP: {}, GARP: {}\n\n",
                t.state.as_str(),
                t.blackout_ms(now).map(|m| format!("{m} ms")).unwrap_or_else(|| "none".into()),
                crate::mac::show(t.mac, "none"),
                t.prev_mac.map(|(p, _)| format!(" (was {})", crate::mac::show(p, "none"))).unwrap_or_default(),
                t.mode.as_str(),
                t.counters.dst_mismatch_frames,
                t.counters.rarp_frames,
                t.counters.garp_frames,
            ));
            md.push_str(&t.diagnosis(now));
            md.push_str("\n\n| time (UTC) | event |\n|---|---|\n");
            for e in &t.timeline {
                md.push_str(&format!("| {} | {} |\n", e.ts.clock(), e.what));
            }
        }
        md
    }

    /// Flushes everything and writes the reports; packs the bundle if asked. Returns the
    /// path of what to attach to a ticket.
    pub fn finish(mut self) -> Result<PathBuf, BundleError> {
        let dir = self.opts.dir.clone();
        self.flush().map_err(io_at(&dir))?;
        self.write_reports()?;
        if !self.opts.pack {
            return Ok(dir);
        }
        pack(&dir)
    }
}

fn pcap_io(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Replaces a report atomically: a crash leaves the old one or the new one, never half.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = create_file(&tmp)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_data())
        .map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}

/// Packs `dir` into `dir.tar.gz` (0600), next to it.
fn pack(dir: &Path) -> Result<PathBuf, BundleError> {
    let mut name = dir.as_os_str().to_owned();
    name.push(".tar.gz");
    let out = PathBuf::from(name);
    let file = create_file(&out)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let base = dir
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| "bundle".into());
    for f in ["events.ndjson", "frames.pcapng", "host.json", "summary.md"] {
        tar.append_path_with_name(dir.join(f), base.join(f))
            .map_err(io_at(&out))?;
    }
    let gz = tar.into_inner().map_err(io_at(&out))?;
    gz.finish()
        .and_then(|f| f.sync_all())
        .map_err(io_at(&out))?;
    Ok(out)
}

impl Sink for Bundle {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        self.engine.apply(rec);
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

    fn flush(&mut self) -> io::Result<()> {
        self.events.flush()?;
        self.frames.get_mut().flush()
    }
}

/// Sends every record to each sink in turn. A failing bundle is reported once and left
/// behind, so a full disk never stops the live output.
pub struct Tee<'a> {
    pub primary: &'a mut dyn Sink,
    pub bundle: Option<&'a mut Bundle>,
    pub failed: bool,
}

impl Tee<'_> {
    fn bundle_do(&mut self, f: impl FnOnce(&mut Bundle) -> io::Result<()>) {
        if self.failed {
            return;
        }
        if let Some(b) = self.bundle.as_deref_mut() {
            if let Err(e) = f(b) {
                eprintln!("tapwatch: the bundle in {} stopped: {e}", b.dir().display());
                self.failed = true;
            }
        }
    }
}

impl Sink for Tee<'_> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        self.bundle_do(|b| b.emit(rec));
        self.primary.emit(rec)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.bundle_do(|b| b.flush());
        self.primary.flush()
    }
}
