//! The eBPF datapaths. One object holds every program (see the diag-ebpf crate); which of
//! them run depends on the datapath:
//!
//! - **drops** (the default where the kernel supports it): one tracepoint program sees
//!   every frame the kernel drops and a socket filter sees ARP and RARP, for all taps at
//!   once; a tap is attached by adding it to a map. Frame and byte totals come from the
//!   link's statistics. A tap gets the per-frame tc probe only while its stale frames may
//!   end (to time the end to the frame), or while it is on a bridge (nothing is dropped
//!   there).
//! - **tc**: the per-frame tc probe on every tap (kernels without BTF or drop reasons).

mod btf;
mod drops;
mod errors;
mod layout;
mod read;
pub mod reaper;
mod rules;
mod taps;
mod tc;

use std::{collections::HashMap, time::Duration};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, RingBuf},
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfLoader,
};
use diag_common::{DropKey, FrameEvent, KernelLayout, TapConfig, TapCounters, TapSite, TapWindow};

use self::{
    drops::DropHook,
    errors::{chain_errno, describe, program_errno},
    taps::Tap,
    tc::TcHooks,
};
pub use self::{
    errors::ProbeError,
    layout::{Layout, LayoutError},
    tc::{tcx_program_names, tcx_supported, AttachMode},
};
use super::datapath::DatapathEvent;
use crate::model::{DatapathKind, NoticeCode};

const INGRESS: &str = "tap_ingress";
const EGRESS: &str = "tap_egress";
const ASSIST: &str = "tap_ingress_assist";
const COUNTERS_MAP: &str = "TAP_COUNTERS";
const EVENTS_MAP: &str = "EVENTS";
const WINDOWS_MAP: &str = "TAP_WINDOWS";
const TAPS_MAP: &str = "TAPS";
const DROPS_MAP: &str = "DROPS";
const HINTS_MAP: &str = "WINDOW_HINTS";

/// The object built from `diag-ebpf` by build.rs. Aligned because the ELF parser reads it
/// in place.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/diag"));

/// Which kernel datapath a run asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// The drop-driven datapath where the kernel supports it, else tc, saying why.
    Auto,
    /// The drop-driven datapath, or an error saying why not.
    Drops,
    /// The per-frame tc probe on every tap.
    Tc,
}

#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    /// Taps of other namespaces too (`--netns all`): the programs read each frame's.
    pub all_namespaces: bool,
    pub path: KernelPath,
    pub attach_mode: AttachMode,
    /// How long a tap keeps the per-frame probe it got for stale frames once they stopped.
    pub linger: Duration,
}

pub struct Probe {
    ebpf: Ebpf,
    counters: PerCpuHashMap<MapData, u32, TapCounters>,
    windows: BpfHashMap<MapData, u32, TapWindow>,
    taps_map: BpfHashMap<MapData, TapSite, TapConfig>,
    /// The cookie of tapwatch's namespace when the programs can read a frame's (they have
    /// the kernel's layout); without it taps are keyed by 0 and only this namespace's can
    /// be watched.
    own_cookie: Option<u64>,
    /// Closes the ARP sockets of taps of other namespaces that went (declared last of the
    /// attachments: it waits for them as the probe drops).
    closer: drops::Closer,
    drops_map: PerCpuHashMap<MapData, DropKey, u64>,
    hints: aya::maps::Array<MapData, u32>,
    /// Present when the drop-driven datapath runs.
    drop_hook: Option<DropHook>,
    /// Why the drop-driven datapath does not run, when it was asked for by `auto`.
    fallback: Option<String>,
    hooks: TcHooks,
    taps: HashMap<u32, Tap>,
    linger: Duration,
    events: Vec<DatapathEvent>,
    /// The programs' log, when the user asked for it (RUST_LOG, -v).
    logger: Option<Logger>,
}

impl Probe {
    /// Loads and verifies the programs, and for the drop-driven datapath attaches its two
    /// hooks; returns the probe and the ring buffer of events.
    pub fn load(opts: &ProbeOptions) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        raise_memlock_limit();
        let mut fallback = None;
        let layout = match opts.path {
            // The per-frame datapath needs the layout only to tell namespaces apart.
            KernelPath::Tc => Layout::of_running_kernel().ok(),
            path => match Layout::of_running_kernel() {
                Ok(l) => Some(l),
                Err(e) if path == KernelPath::Drops => {
                    return Err(ProbeError::Drops(e.to_string()))
                }
                Err(e) => {
                    fallback = Some(e.to_string());
                    None
                }
            },
        };
        // With --netns all, the programs read each frame's namespace.
        let layout = layout.map(|mut l| {
            if opts.all_namespaces {
                l.kernel.netns_cookie = 0;
            }
            l
        });
        let (mut ebpf, logger) = load_object(layout.as_ref())?;
        let (mut ebpf, logger, programs, layout) = match load_classifiers(&mut ebpf) {
            Ok(programs) => (ebpf, logger, programs, layout),
            // With the layout the classifiers read a frame's namespace with
            // bpf_probe_read_kernel, which a locked-down kernel refuses (and the drop
            // program with it): without it they watch this namespace's taps only.
            Err(e) if layout.is_some() && opts.path != KernelPath::Drops => {
                drop(ebpf);
                let (mut ebpf, logger) = load_object(None)?;
                let programs = load_classifiers(&mut ebpf).map_err(|_| e)?;
                fallback.get_or_insert_with(|| {
                    "the kernel refuses to let the programs read its memory (lockdown?), \
                     which the drop program and taps of other namespaces need"
                        .to_string()
                });
                (ebpf, logger, programs, None)
            }
            Err(e) => return Err(e),
        };
        let events =
            RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?).map_err(map_error(EVENTS_MAP))?;
        let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)
            .map_err(map_error(COUNTERS_MAP))?;
        let windows = BpfHashMap::try_from(take_map(&mut ebpf, WINDOWS_MAP)?)
            .map_err(map_error(WINDOWS_MAP))?;
        let taps_map =
            BpfHashMap::try_from(take_map(&mut ebpf, TAPS_MAP)?).map_err(map_error(TAPS_MAP))?;
        let drops_map = PerCpuHashMap::try_from(take_map(&mut ebpf, DROPS_MAP)?)
            .map_err(map_error(DROPS_MAP))?;
        let hints = aya::maps::Array::try_from(take_map(&mut ebpf, HINTS_MAP)?)
            .map_err(map_error(HINTS_MAP))?;
        let own_cookie = layout.as_ref().map(|l| l.netns_cookie);
        let drop_hook = match layout {
            None => None,
            Some(_) if opts.path == KernelPath::Tc => None,
            Some(l) => match DropHook::start(&mut ebpf, l) {
                Ok(h) => Some(h),
                Err(e) if opts.path == KernelPath::Drops => return Err(e),
                Err(ProbeError::Drops(why)) => {
                    fallback = Some(why);
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let probe = Self {
            ebpf,
            counters,
            windows,
            taps_map,
            own_cookie,
            closer: drops::Closer::new(),
            drops_map,
            hints,
            drop_hook,
            fallback,
            hooks: TcHooks::new(opts.attach_mode, programs),
            taps: HashMap::new(),
            linger: opts.linger,
            events: Vec::new(),
            logger,
        };
        Ok((probe, events))
    }

    /// Why the drop-driven datapath does not run although `auto` asked for it.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Whether the drop-driven datapath runs (taps that are not bridged use it).
    pub fn drops(&self) -> bool {
        self.drop_hook.is_some()
    }

    fn notice(&mut self, code: NoticeCode, ifname: Option<&str>, message: String) {
        self.events.push(DatapathEvent::Notice {
            code,
            ifname: ifname.map(str::to_string),
            message,
        });
    }

    /// How the tap is watched now.
    pub fn datapath_of(&self, ifindex: u32) -> DatapathKind {
        match self.taps.get(&ifindex).map(|t| t.carried) {
            Some(rules::Carried::Full) | None => DatapathKind::Tc,
            Some(_) => DatapathKind::Drops,
        }
    }

    /// Hands the programs' log records (if any) to the process's logger.
    pub fn flush_log(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// What happened on the way: probes added and removed, and what the user should hear
    /// of.
    pub fn take_events(&mut self) -> Vec<DatapathEvent> {
        std::mem::take(&mut self.events)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let ifindexes: Vec<u32> = self.taps.keys().copied().collect();
        for i in ifindexes {
            self.detach(i, None);
        }
    }
}

type Logger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The object with the running kernel's offsets (if the drop-driven datapath may run) and
/// the programs' log level written in; a logger when there is something to log.
fn load_object(layout: Option<&Layout>) -> Result<(Ebpf, Option<Logger>), ProbeError> {
    let kernel = layout.map_or(KernelLayout::UNSET, |l| l.kernel);
    // The programs' log statements are patched off unless the user asked for them: then a
    // log statement costs one global load and a compare.
    let level = kernel_log_level();
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &level, true)
        .override_global(KernelLayout::GLOBAL, &kernel, true)
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
    let logger = if level > 0 {
        aya_log::EbpfLogger::init(&mut ebpf).ok()
    } else {
        None
    };
    Ok((ebpf, logger))
}

/// Loads (verifies) the per-frame programs; their ids, by which the cleanup helper and a
/// later run know this run's filters.
fn load_classifiers(ebpf: &mut Ebpf) -> Result<Vec<u32>, ProbeError> {
    let mut programs = Vec::new();
    for name in [INGRESS, EGRESS, ASSIST] {
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
        if let Ok(info) = prog.info() {
            programs.push(info.id());
        }
    }
    Ok(programs)
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::Missing(name))
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { name, source }
}

/// Parses a ring buffer record; `None` if it is not a whole event.
pub fn parse_event(bytes: &[u8]) -> Option<FrameEvent> {
    if bytes.len() < std::mem::size_of::<FrameEvent>() {
        return None;
    }
    // SAFETY: length checked; FrameEvent is plain old data; the record may be unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const FrameEvent) })
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
