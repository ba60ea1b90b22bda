//! The eBPF backend: loads the embedded object, attaches its two tc programs to each selected
//! tap, and reads back the per-CPU counters and the notable-frame ring buffer.

use std::collections::HashMap;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, RingBuf},
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use diag_common::{FrameEvent, TapCounters, TapWindow};

const INGRESS: &str = "tap_ingress";
const EGRESS: &str = "tap_egress";
const COUNTERS_MAP: &str = "TAP_COUNTERS";
const EVENTS_MAP: &str = "EVENTS";
const WINDOWS_MAP: &str = "TAP_WINDOWS";

/// The object built from `diag-ebpf` by build.rs. Aligned because the ELF parser reads it
/// in place.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/diag"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused tapwatch's eBPF programs: {0}. tapwatch needs a kernel with BPF \
         (CONFIG_BPF_SYSCALL) and tc BPF classifiers (TCX on Linux >= 6.6, or \
         CONFIG_NET_CLS_BPF with clsact); use --backend pcap where BPF is not available"
    )]
    Load(#[source] EbpfError),
    #[error("the kernel rejected eBPF program {name}: {reason}")]
    Program { name: &'static str, reason: String },
    #[error("eBPF object lacks {0}; rebuild tapwatch")]
    Missing(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot attach to {ifname}: {reason}")]
    Attach {
        ifname: String,
        reason: String,
        /// The errno behind it, when there was one (EMFILE, ENODEV…).
        errno: Option<i32>,
    },
    #[error(transparent)]
    Descriptors(#[from] crate::collect::caps::OutOfDescriptors),
}

impl ProbeError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            ProbeError::Attach { errno, .. } => *errno,
            ProbeError::Descriptors(_) => Some(libc::EMFILE),
            _ => None,
        }
    }
}

/// How programs are hooked to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on kernels >= 6.6, clsact otherwise.
    Auto,
    /// TCX links (Linux >= 6.6): gone with the process even after SIGKILL. But the kernel
    /// waits for an RCU grace period under the rtnl lock for every link made or removed
    /// (about 12 ms each on the benchmark machine): 1000 taps take 25 s to attach, and
    /// meanwhile every other interface change on the host (a VM's new tap) waits.
    Tcx,
    /// clsact qdisc + netlink filters, about 1 ms per tap: for hosts with hundreds of taps.
    /// Removed at exit; a killed run's filters are removed by the next run before it
    /// attaches, which also removes those of another clsact run on the same tap (one
    /// clsact run per tap).
    Clsact,
}

impl AttachMode {
    fn resolve(self) -> AttachMode {
        match self {
            AttachMode::Auto if tcx_supported() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Clsact,
            m => m,
        }
    }
}

/// Whether the kernel has TCX (Linux >= 6.6).
pub fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

struct Attachment {
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

pub struct Probe {
    ebpf: Ebpf,
    counters: PerCpuHashMap<MapData, u32, TapCounters>,
    windows: BpfHashMap<MapData, u32, TapWindow>,
    mode: AttachMode,
    attached: HashMap<u32, Attachment>,
    orphans: Orphans,
    /// Things worth a notice that did not stop an attach.
    warnings: Vec<String>,
    /// The programs' log, when the user asked for it (RUST_LOG, -v).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probe {
    /// Loads and verifies the programs; returns the probe and the ring buffer of events.
    pub fn load(mode: AttachMode) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        raise_memlock_limit();
        // The programs' log statements are patched off unless the user asked for them:
        // then a log statement costs one global load and a compare.
        let level = kernel_log_level();
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                match crate::collect::caps::OutOfDescriptors::from_errno(
                    chain_errno(&e),
                    "loading the eBPF maps",
                ) {
                    Some(d) => ProbeError::Descriptors(d),
                    None => ProbeError::Load(e),
                }
            })?;
        // A logger only where there is something to log.
        let logger = if level > 0 {
            aya_log::EbpfLogger::init(&mut ebpf).ok()
        } else {
            None
        };
        for name in [INGRESS, EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(ProbeError::Missing(name))?
                .try_into()
                .map_err(|e| ProbeError::Program {
                    name,
                    reason: describe(&e),
                })?;
            prog.load().map_err(|e| {
                let errno = match &e {
                    ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
                    other => program_errno(other),
                };
                match crate::collect::caps::OutOfDescriptors::from_errno(
                    errno,
                    "loading the eBPF programs",
                ) {
                    Some(d) => ProbeError::Descriptors(d),
                    None => ProbeError::Program {
                        name,
                        reason: describe(&e),
                    },
                }
            })?;
        }
        let map = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(ProbeError::Missing(name))
        };
        let counters =
            PerCpuHashMap::try_from(map(&mut ebpf, COUNTERS_MAP)?).map_err(|source| {
                ProbeError::Map {
                    name: COUNTERS_MAP,
                    source,
                }
            })?;
        let windows = BpfHashMap::try_from(map(&mut ebpf, WINDOWS_MAP)?).map_err(|source| {
            ProbeError::Map {
                name: WINDOWS_MAP,
                source,
            }
        })?;
        let events =
            RingBuf::try_from(map(&mut ebpf, EVENTS_MAP)?).map_err(|source| ProbeError::Map {
                name: EVENTS_MAP,
                source,
            })?;
        Ok((
            Self {
                ebpf,
                counters,
                windows,
                mode: mode.resolve(),
                attached: HashMap::new(),
                orphans: Orphans::default(),
                warnings: Vec::new(),
                logger,
            },
            events,
        ))
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Starts counting on `ifname` from zero. When this returns, every frame crossing the
    /// interface is counted.
    pub fn attach(&mut self, ifindex: u32, ifname: &str) -> Result<(), ProbeError> {
        let fail = |reason: String, errno: Option<i32>| ProbeError::Attach {
            ifname: ifname.to_string(),
            reason,
            errno,
        };
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let zeroed = zeroed_per_cpu().map_err(|e| fail(e.to_string(), e.raw_os_error()))?;
        self.counters
            .insert(ifindex, zeroed, 0)
            .map_err(|e| fail(format!("cannot add its counters: {e}"), map_errno(&e)))?;
        if let Err(e) = self.windows.insert(ifindex, TapWindow::default(), 0) {
            let _ = self.counters.remove(&ifindex);
            return Err(fail(format!("cannot add its state: {e}"), map_errno(&e)));
        }
        let result = self.attach_programs(ifindex, ifname);
        match result {
            Ok(att) => {
                self.attached.insert(ifindex, att);
                Ok(())
            }
            Err((reason, errno)) => {
                let _ = self.counters.remove(&ifindex);
                let _ = self.windows.remove(&ifindex);
                Err(fail(reason, errno))
            }
        }
    }

    fn attach_programs(
        &mut self,
        ifindex: u32,
        ifname: &str,
    ) -> Result<Attachment, (String, Option<i32>)> {
        // Filters of a killed clsact run stay attached and cost every frame; whatever this
        // run's mode, remove those whose owner is gone (never a live run's). Best effort:
        // they do not touch this run's counters.
        match self.orphans.remove(ifindex) {
            Ok(0) => {}
            Ok(n) => self.warnings.push(format!(
                "removed {n} tc filter(s) of a tapwatch run that was killed from {ifname}"
            )),
            Err(e) if !self.orphans.said => {
                self.orphans.said = true;
                self.warnings.push(format!(
                    "cannot tell whether tc filters left on {ifname} by another tapwatch run \
                     belong to a live run: {e}; they are left in place"
                ));
            }
            Err(_) => {}
        }
        let options = || match self.mode {
            AttachMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
            _ => TcAttachOptions::TcxOrder(LinkOrder::default()),
        };
        if self.mode == AttachMode::Clsact {
            if let Err(e) = tc::qdisc_add_clsact(ifname) {
                // EEXIST: the qdisc is already there (another tool, or an earlier run).
                if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
                {
                    return Err((format!("cannot add a clsact qdisc: {e}"), tc_errno(&e)));
                }
            }
        }
        let (o1, o2) = (options(), options());
        let ingress = self
            .program(INGRESS)
            .attach_with_options(ifname, TcAttachType::Ingress, o1);
        let ingress =
            ingress.map_err(|e| (format!("ingress: {}", error_chain(&e)), program_errno(&e)))?;
        match self
            .program(EGRESS)
            .attach_with_options(ifname, TcAttachType::Egress, o2)
        {
            Ok(egress) => Ok(Attachment { ingress, egress }),
            Err(e) => {
                let _ = self.program(INGRESS).detach(ingress);
                Err((format!("egress: {}", error_chain(&e)), program_errno(&e)))
            }
        }
    }

    fn program(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("programs were checked at load")
    }

    /// Summed counters of an attached (or just detached, still in the map) interface.
    pub fn counters(&self, ifindex: u32) -> Option<TapCounters> {
        let per_cpu = self.counters.get(&ifindex, 0).ok()?;
        let mut total = TapCounters::default();
        for c in per_cpu.iter() {
            total.accumulate(c);
        }
        Some(total)
    }

    /// Stops counting; returns the final counters. Safe on an interface that is already
    /// gone (its links died with it).
    pub fn detach(&mut self, ifindex: u32) -> Option<TapCounters> {
        let att = self.attached.remove(&ifindex)?;
        let last = self.counters(ifindex);
        let _ = self.program(INGRESS).detach(att.ingress);
        let _ = self.program(EGRESS).detach(att.egress);
        let _ = self.counters.remove(&ifindex);
        let _ = self.windows.remove(&ifindex);
        last
    }

    /// Hands the programs' log records (if any) to the process's logger.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// The descriptor that becomes readable when the programs logged something.
    pub fn log_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.logger.as_ref().map(|l| l.as_raw_fd())
    }

    /// What happened on the way that the user should hear of.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for i in ifindexes {
            self.detach(i);
        }
    }
}

/// Parses a ring buffer record; `None` if it is not a whole event.
pub fn parse_event(bytes: &[u8]) -> Option<FrameEvent> {
    if bytes.len() < std::mem::size_of::<FrameEvent>() {
        return None;
    }
    // SAFETY: length checked; FrameEvent is plain old data; the record may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FrameEvent) })
}

fn zeroed_per_cpu() -> std::io::Result<aya::maps::PerCpuValues<TapCounters>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    aya::maps::PerCpuValues::try_from(vec![TapCounters::default(); n])
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A program error in a few lines: the verifier's log can run to thousands, and its end
/// says why.
fn describe(e: &ProgramError) -> String {
    const TAIL: usize = 12;
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL)..].join("\n");
            format!("the verifier refused it ({io_error}); end of its log:\n{tail}")
        }
        other => error_chain(other),
    }
}

/// The errno behind an aya program error (TCX link syscalls, clsact netlink requests).
fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::TcError(t) => tc_errno(t),
        ProgramError::IOError(io) => io.raw_os_error(),
        other => chain_errno(other),
    }
}

fn tc_errno(e: &tc::TcError) -> Option<i32> {
    match e {
        tc::TcError::NetlinkError(n) => n.raw_os_error(),
        tc::TcError::IoError(io) => io.raw_os_error(),
        other => chain_errno(other),
    }
}

fn map_errno(e: &aya::maps::MapError) -> Option<i32> {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error(),
        other => chain_errno(other),
    }
}

/// The first `io::Error` with an errno in an error's source chain.
fn chain_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

/// tapwatch's filters on a tap whose owning process is gone: a run killed with clsact
/// filters attached. A filter's owner is alive while some process holds a descriptor of the
/// filter's BPF program (every run holds its programs until it exits); the kernel says who
/// does in /proc/PID/fdinfo. Where that cannot be read (no CAP_SYS_PTRACE), nothing is
/// removed.
#[derive(Default)]
struct Orphans {
    /// Program ids held by live processes, read when first needed and again whenever a
    /// filter's program is not among them (it may belong to a run started since).
    held: Option<std::collections::HashSet<u32>>,
    /// Whether a failure to tell has been reported (once per run).
    said: bool,
}

/// Names of the filters tapwatch's programs make.
const OUR_FILTERS: [&str; 2] = [INGRESS, EGRESS];

impl Orphans {
    /// Removes orphaned tapwatch filters from `ifindex`; how many were removed.
    fn remove(&mut self, ifindex: u32) -> std::io::Result<usize> {
        let mut removed = 0;
        for parent in [
            crate::collect::netlink::CLSACT_INGRESS,
            crate::collect::netlink::CLSACT_EGRESS,
        ] {
            let ours: Vec<crate::collect::netlink::BpfFilter> =
                crate::collect::netlink::bpf_filters(ifindex, parent)?
                    .into_iter()
                    .filter(|f| OUR_FILTERS.iter().any(|n| f.name.starts_with(n)))
                    .collect();
            for f in ours {
                if self.is_held(f.prog_id)? {
                    continue;
                }
                match crate::collect::netlink::delete_filter(ifindex, &f) {
                    Ok(()) => removed += 1,
                    // Removed meanwhile by someone else.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    fn is_held(&mut self, prog_id: u32) -> std::io::Result<bool> {
        if let Some(held) = &self.held {
            if held.contains(&prog_id) {
                return Ok(true);
            }
        }
        let held = held_program_ids()?;
        let is = held.contains(&prog_id);
        self.held = Some(held);
        Ok(is)
    }
}

/// Ids of every BPF program some process holds a descriptor of. Errs (and so removes
/// nothing) if any process's descriptors cannot be read.
fn held_program_ids() -> std::io::Result<std::collections::HashSet<u32>> {
    let mut ids = std::collections::HashSet::new();
    for proc_entry in std::fs::read_dir("/proc")? {
        let Ok(proc_entry) = proc_entry else { continue };
        let pid = proc_entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fd_dir = proc_entry.path().join("fd");
        let fds = match std::fs::read_dir(&fd_dir) {
            Ok(f) => f,
            // The process ended meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e} (deciding whether a tc filter's owner is alive needs CAP_SYS_PTRACE or root)", fd_dir.display()),
                ))
            }
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.as_os_str() != "anon_inode:bpf-prog" {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let Ok(info) = std::fs::read_to_string(info) else {
                continue;
            };
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The level the programs log at: the process's log level (`RUST_LOG`, `-v`), 0 for off.
fn kernel_log_level() -> u8 {
    use aya_log::Level;
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => Level::Error as u8,
        log::LevelFilter::Warn => Level::Warn as u8,
        log::LevelFilter::Info => Level::Info as u8,
        log::LevelFilter::Debug => Level::Debug as u8,
        log::LevelFilter::Trace => Level::Trace as u8,
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so the ring buffer fits.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer; failure only matters on old kernels, where
    // the load error that follows says what went wrong.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
}

/// Names of the TCX programs attached to `ifname` (ingress then egress), as the kernel
/// reports them. Lets tests and operators check what is hooked where.
pub fn tcx_program_names(ifname: &str) -> Result<Vec<String>, ProgramError> {
    let mut names = Vec::new();
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(ifname, ty)?;
        names.extend(
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string()),
        );
    }
    Ok(names)
}
