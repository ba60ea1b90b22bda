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
mod layout;
pub mod reaper;
mod tc;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, RingBuf},
    programs::{ProgramError, SchedClassifier, TcAttachType},
    Ebpf, EbpfError, EbpfLoader,
};
use diag_common::{
    kernel::hint_slot, DropKey, FrameEvent, FrameKind, KernelLayout, TapConfig, TapCounters,
    TapMode, TapWindow, EVENT_FLAG_DST_MISMATCH,
};

use self::{
    drops::DropHook,
    tc::{TcHooks, TcLinks},
};
pub use self::{
    layout::{Layout, LayoutError},
    tc::{tcx_program_names, tcx_supported, AttachMode},
};
use super::{
    datapath::{DatapathNotice, TapCounts},
    links::Link,
    netlink::{self, LinkTotals},
};
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

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused tapwatch's eBPF programs: {0}. tapwatch needs a kernel with BPF \
         (CONFIG_BPF_SYSCALL) and tc BPF classifiers (TCX on Linux >= 6.6, or \
         CONFIG_NET_CLS_BPF with clsact); use --datapath pcap where BPF is not available"
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
    #[error(
        "the drop-driven datapath cannot run here: {0}; --datapath tc works on any kernel with BPF"
    )]
    Drops(String),
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
    pub path: KernelPath,
    pub attach_mode: AttachMode,
    /// How long a tap keeps the per-frame probe it got for stale frames once they stopped.
    pub linger: Duration,
}

/// How one tap is hooked.
enum Hook {
    /// Counted by the drop program and the socket filter; `assist` while stale frames may
    /// end.
    Drops { assist: Option<Assist> },
    /// The full per-frame probe.
    Tc(TcLinks),
}

/// The per-frame probe of a tap with stale frames, or of a tap that appeared while
/// watched.
struct Assist {
    links: TcLinks,
    /// When the tap last showed trouble (a stale frame, a RARP, an open window).
    last_trouble: Instant,
    /// A tap that appeared while watched keeps the probe until its VM has sent (and then
    /// for the linger): a migrating VM's RARP and the first frames delivered to it come
    /// within a millisecond of its resume, sooner than a probe added on the RARP could be
    /// there.
    until_sent: bool,
}

struct Tap {
    name: String,
    mac: Option<crate::model::mac::MacAddr>,
    hook: Hook,
    /// The link's statistics when attached, and as last read.
    base: LinkTotals,
    latest: LinkTotals,
    /// Kernel drops by reason name, as last read.
    kernel_drops: BTreeMap<String, u64>,
    /// Whether a failure to add the per-frame probe was said (once per tap).
    assist_failure_said: bool,
}

pub struct Probe {
    ebpf: Ebpf,
    counters: PerCpuHashMap<MapData, u32, TapCounters>,
    windows: BpfHashMap<MapData, u32, TapWindow>,
    taps_map: BpfHashMap<MapData, u32, TapConfig>,
    drops_map: PerCpuHashMap<MapData, DropKey, u64>,
    hints: aya::maps::Array<MapData, u32>,
    /// Present when the drop-driven datapath runs.
    drop_hook: Option<DropHook>,
    /// Why the drop-driven datapath does not run, when it was asked for by `auto`.
    fallback: Option<String>,
    hooks: TcHooks,
    taps: HashMap<u32, Tap>,
    linger: Duration,
    notices: Vec<DatapathNotice>,
    /// The programs' log, when the user asked for it (RUST_LOG, -v).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Probe {
    /// Loads and verifies the programs, and for the drop-driven datapath attaches its two
    /// hooks; returns the probe and the ring buffer of events.
    pub fn load(opts: &ProbeOptions) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        raise_memlock_limit();
        let mut fallback = None;
        let layout = match opts.path {
            KernelPath::Tc => None,
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
        let kernel = layout.as_ref().map_or(KernelLayout::UNSET, |l| l.kernel);
        // The programs' log statements are patched off unless the user asked for them:
        // then a log statement costs one global load and a compare.
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
        // A logger only where there is something to log.
        let logger = if level > 0 {
            aya_log::EbpfLogger::init(&mut ebpf).ok()
        } else {
            None
        };
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
        let events =
            RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?).map_err(map_error(EVENTS_MAP))?;
        let drop_hook = match layout {
            None => None,
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
        Ok((
            Self {
                ebpf,
                counters,
                windows,
                taps_map,
                drops_map,
                hints,
                drop_hook,
                fallback,
                hooks: TcHooks::new(opts.attach_mode, programs),
                taps: HashMap::new(),
                linger: opts.linger,
                notices: Vec::new(),
                logger,
            },
            events,
        ))
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
        self.notices.push(DatapathNotice {
            code,
            ifname: ifname.map(str::to_string),
            message,
        });
    }

    /// Starts counting on the tap from zero. When this returns, every frame crossing the
    /// interface is counted.
    pub fn attach(&mut self, link: &Link, appeared: bool) -> Result<(), ProbeError> {
        let (ifindex, ifname) = (link.ifindex, link.name.as_str());
        let fail = |reason: String, errno: Option<i32>| ProbeError::Attach {
            ifname: ifname.to_string(),
            reason,
            errno,
        };
        if self.taps.contains_key(&ifindex) {
            return Ok(());
        }
        // Filters of a killed run stay attached and cost every frame; whatever this tap's
        // hook, remove those whose owner is gone (never a live run's). Best effort: they
        // do not touch this run's counters.
        if let Some((code, message)) = self.hooks.remove_orphans(ifindex, ifname) {
            self.notice(code, Some(ifname), message);
        }
        let base = match netlink::link_totals(Some(ifindex)) {
            Ok(t) => t.get(&ifindex).copied().unwrap_or_default(),
            Err(e) => {
                return Err(fail(
                    format!("cannot read its statistics: {e}"),
                    e.raw_os_error(),
                ))
            }
        };
        let zeroed = zeroed_per_cpu().map_err(|e| fail(e.to_string(), e.raw_os_error()))?;
        self.counters
            .insert(ifindex, zeroed, 0)
            .map_err(|e| fail(format!("cannot add its counters: {e}"), map_errno(&e)))?;
        let unwind = |p: &mut Self| {
            let _ = p.counters.remove(&ifindex);
            let _ = p.windows.remove(&ifindex);
            let _ = p.taps_map.remove(&ifindex);
        };
        if let Err(e) = self.windows.insert(ifindex, TapWindow::default(), 0) {
            unwind(self);
            return Err(fail(format!("cannot add its state: {e}"), map_errno(&e)));
        }
        let hook = if self.wants_drops(link) {
            Hook::Drops { assist: None }
        } else {
            match self.full_probe(ifindex, ifname) {
                Ok(links) => Hook::Tc(links),
                Err((reason, errno)) => {
                    unwind(self);
                    return Err(fail(reason, errno));
                }
            }
        };
        let mode = match hook {
            Hook::Drops { .. } => TapMode::Drops,
            Hook::Tc(_) => TapMode::Tc,
        };
        if let Err(e) = self.taps_map.insert(ifindex, TapConfig::new(mode), 0) {
            if let Hook::Tc(links) = hook {
                self.hooks.detach(&mut self.ebpf, ifindex, links);
            }
            unwind(self);
            return Err(fail(format!("cannot add it: {e}"), map_errno(&e)));
        }
        self.taps.insert(
            ifindex,
            Tap {
                name: ifname.to_string(),
                mac: link.mac,
                hook,
                base,
                latest: base,
                kernel_drops: BTreeMap::new(),
                assist_failure_said: false,
            },
        );
        if appeared && matches!(self.taps[&ifindex].hook, Hook::Drops { .. }) {
            self.add_assist(
                ifindex,
                "it appeared while watched (a VM arriving, perhaps by migration)",
                true,
            );
        }
        Ok(())
    }

    /// A tap on a bridge or OVS is switched, not routed: its frames to other MACs are
    /// normal and never dropped, so only the full probe sees them.
    fn wants_drops(&self, link: &Link) -> bool {
        self.drop_hook.is_some() && link.master.is_none()
    }

    fn full_probe(&mut self, ifindex: u32, ifname: &str) -> Result<TcLinks, (String, Option<i32>)> {
        let mut notes = Vec::new();
        let r = self.hooks.attach(
            &mut self.ebpf,
            ifindex,
            ifname,
            &[
                (INGRESS, TcAttachType::Ingress),
                (EGRESS, TcAttachType::Egress),
            ],
            &mut notes,
        );
        for (code, message) in notes {
            self.notice(code, Some(ifname), message);
        }
        r
    }

    /// The tap changed (name, MAC, bridge). Joining a bridge gives it the full probe;
    /// leaving one takes it back to the drop-driven datapath.
    pub fn update(&mut self, link: &Link) {
        let ifindex = link.ifindex;
        let wants_drops = self.wants_drops(link);
        let Some(tap) = self.taps.get_mut(&ifindex) else {
            return;
        };
        tap.name = link.name.clone();
        let name = tap.name.clone();
        let mac_changed = std::mem::replace(&mut tap.mac, link.mac) != link.mac;
        let drops_now = matches!(tap.hook, Hook::Drops { .. });
        match (drops_now, wants_drops) {
            (true, false) => match self.full_probe(ifindex, &name) {
                Ok(links) => {
                    let _ = self
                        .taps_map
                        .insert(ifindex, TapConfig::new(TapMode::Tc), 0);
                    let tap = self.taps.get_mut(&ifindex).expect("present above");
                    if let Hook::Drops {
                        assist: Some(assist),
                    } = std::mem::replace(&mut tap.hook, Hook::Tc(links))
                    {
                        self.hooks.detach(&mut self.ebpf, ifindex, assist.links);
                    }
                    self.notice(
                        NoticeCode::ProbeAdded,
                        Some(&name),
                        format!(
                            "{name} joined a bridge: its frames to other MACs are switched \
                             there, not dropped, so the per-frame probe counts them"
                        ),
                    );
                }
                Err((reason, _)) => self.notice(
                    NoticeCode::AttachFailed,
                    Some(&name),
                    format!(
                        "{name} joined a bridge but the per-frame probe cannot be added \
                         ({reason}): its frames to other MACs are not counted"
                    ),
                ),
            },
            (false, true) => {
                let _ = self
                    .taps_map
                    .insert(ifindex, TapConfig::new(TapMode::Drops), 0);
                let tap = self.taps.get_mut(&ifindex).expect("present above");
                if let Hook::Tc(links) =
                    std::mem::replace(&mut tap.hook, Hook::Drops { assist: None })
                {
                    self.hooks.detach(&mut self.ebpf, ifindex, links);
                }
                self.notice(
                    NoticeCode::ProbeRemoved,
                    Some(&name),
                    format!(
                        "{name} left its bridge: the kernel's drops count its stale frames \
                         again, and the per-frame probe is removed"
                    ),
                );
            }
            // The MAC of a tap whose VM was already sending changed: frames to the old MAC
            // may follow at once (and end within milliseconds), so the probe is there
            // before the change is reported. (A MAC set on a fresh tap, as libvirt does,
            // is no trouble.)
            (true, true) if mac_changed && self.has_sent(ifindex) => {
                self.trouble(ifindex, "its MAC changed while its VM was sending")
            }
            _ => {}
        }
    }

    /// Whether the VM wrote any frame into the tap since it was attached (asked now).
    fn has_sent(&self, ifindex: u32) -> bool {
        let Some(tap) = self.taps.get(&ifindex) else {
            return false;
        };
        netlink::link_totals(Some(ifindex))
            .ok()
            .and_then(|t| t.get(&ifindex).copied())
            .is_some_and(|now| now.since(&tap.base).rx_packets > 0)
    }

    /// A frame event came: a stale frame or a RARP on a tap of the drop-driven datapath
    /// gives it the per-frame probe, before the event goes on, so the end of the stale
    /// frames is timed to the frame.
    pub fn on_event(&mut self, ev: &FrameEvent) {
        let trouble = ev.kind == FrameKind::DstMismatch as u8
            || ev.kind == FrameKind::Rarp as u8
            || ev.flags & EVENT_FLAG_DST_MISMATCH != 0;
        if !trouble {
            return;
        }
        let why = if ev.kind == FrameKind::Rarp as u8 {
            "RARP (a migration's announce)"
        } else {
            "frames to a MAC it does not have"
        };
        self.trouble(ev.ifindex, why);
    }

    /// The tap shows trouble: keep its per-frame probe, or add it.
    fn trouble(&mut self, ifindex: u32, why: &str) {
        let Some(tap) = self.taps.get_mut(&ifindex) else {
            return;
        };
        match &mut tap.hook {
            Hook::Drops {
                assist: Some(assist),
            } => assist.last_trouble = Instant::now(),
            Hook::Drops { assist: None } => self.add_assist(ifindex, why, false),
            Hook::Tc(_) => {}
        }
    }

    fn add_assist(&mut self, ifindex: u32, why: &str, until_sent: bool) {
        let Some(tap) = self.taps.get(&ifindex) else {
            return;
        };
        let name = tap.name.clone();
        let mut notes = Vec::new();
        let r = self.hooks.attach(
            &mut self.ebpf,
            ifindex,
            &name,
            // Egress as on a full probe: the host's ARP to the VM, during the trouble.
            &[
                (ASSIST, TcAttachType::Ingress),
                (EGRESS, TcAttachType::Egress),
            ],
            &mut notes,
        );
        for (code, message) in notes {
            self.notice(code, Some(&name), message);
        }
        let tap = self.taps.get_mut(&ifindex).expect("present above");
        match r {
            Ok(links) => {
                tap.hook = Hook::Drops {
                    assist: Some(Assist {
                        links,
                        last_trouble: Instant::now(),
                        until_sent,
                    }),
                };
                let what = if until_sent {
                    "its VM's RARP and the first frames to and from it"
                } else {
                    "the end of its stale frames"
                };
                self.notice(
                    NoticeCode::ProbeAdded,
                    Some(&name),
                    format!("{name}: {why}: a per-frame probe now times {what} to the frame"),
                );
            }
            // The tap went while the probe was being added (libvirt re-creates and deletes
            // taps within milliseconds): its removal follows, there is nothing to say.
            Err((_, Some(libc::ENODEV))) => {}
            Err((reason, _)) if !tap.assist_failure_said => {
                tap.assist_failure_said = true;
                let what = if until_sent {
                    "its VM's first frames are not kernel-timed (the probe is tried again \
                     on its first stale frame or RARP)"
                } else {
                    "the end of its stale frames is not timed (tried again every interval)"
                };
                self.notice(
                    NoticeCode::AttachFailed,
                    Some(&name),
                    format!(
                        "{name}: {why}, but the per-frame probe cannot be added ({reason}): {what}"
                    ),
                );
            }
            Err(_) => {}
        }
    }

    /// Once an interval: the links' statistics, the drops by reason, and the per-frame
    /// probes (added where a window is open without one, removed after `linger` calm).
    pub fn refresh(&mut self) {
        if let Ok(totals) = netlink::link_totals(None) {
            for (ifindex, tap) in self.taps.iter_mut() {
                if let Some(t) = totals.get(ifindex) {
                    tap.latest = *t;
                }
            }
        }
        self.read_drops(None);
        let open = self.open_windows();
        let drops_taps: Vec<u32> = self
            .taps
            .iter()
            .filter(|(_, t)| matches!(t.hook, Hook::Drops { .. }))
            .map(|(i, _)| *i)
            .collect();
        for ifindex in drops_taps {
            if open.contains(&ifindex) {
                // Also where an event was lost (a full ring): the window is the truth. An
                // armed inbound watch keeps the probe too: its egress times the first
                // data frame delivered to the VM.
                self.trouble(ifindex, "frames to a MAC it does not have");
                continue;
            }
            let linger = self.linger;
            let tap = self.taps.get_mut(&ifindex).expect("listed above");
            let sent = tap.latest.since(&tap.base).rx_packets > 0;
            if let Hook::Drops {
                assist:
                    Some(
                        a @ Assist {
                            until_sent: true, ..
                        },
                    ),
            } = &mut tap.hook
            {
                if !sent {
                    continue;
                }
                a.until_sent = false;
                a.last_trouble = Instant::now();
            }
            let calm = matches!(&tap.hook, Hook::Drops { assist: Some(a) } if a.last_trouble.elapsed() >= linger);
            if calm {
                let name = tap.name.clone();
                if let Hook::Drops {
                    assist: Some(assist),
                } = std::mem::replace(&mut tap.hook, Hook::Drops { assist: None })
                {
                    self.hooks.detach(&mut self.ebpf, ifindex, assist.links);
                }
                self.notice(
                    NoticeCode::ProbeRemoved,
                    Some(&name),
                    format!(
                        "{name}: no stale frames for {} s: its per-frame probe is removed",
                        linger.as_secs_f64()
                    ),
                );
            }
        }
    }

    /// The taps with something pending now (an open mismatch window, or the first data
    /// frame to the VM awaited after its RARP). Also clears the window hint of every slot
    /// whose taps have nothing pending, so their probes skip the window map again. A window opened between the read and the clear is found by the read after it
    /// and its hint set again: at worst one frame to the tap's MAC, in those microseconds,
    /// does not end it (the next one does).
    fn open_windows(&mut self) -> std::collections::HashSet<u32> {
        let mut by_slot: HashMap<u32, Vec<u32>> = HashMap::new();
        for &ifindex in self.taps.keys() {
            by_slot.entry(hint_slot(ifindex)).or_default().push(ifindex);
        }
        let is_open = |w: &BpfHashMap<MapData, u32, TapWindow>, i: &u32| {
            w.get(i, 0).is_ok_and(|w: TapWindow| w.pending())
        };
        let mut open = std::collections::HashSet::new();
        for (slot, taps) in by_slot {
            if !self.hints.get(&slot, 0).is_ok_and(|h| h != 0) {
                continue;
            }
            let now: Vec<u32> = taps
                .iter()
                .copied()
                .filter(|i| is_open(&self.windows, i))
                .collect();
            if now.is_empty() {
                let _ = self.hints.set(slot, 0, 0);
                if taps.iter().any(|i| is_open(&self.windows, i)) {
                    let _ = self.hints.set(slot, 1, 0);
                }
            }
            open.extend(now);
        }
        open
    }

    /// Reads the drop counters into the taps (`only`: one tap, whose entries are then
    /// removed from the map).
    fn read_drops(&mut self, only: Option<u32>) {
        let Some(hook) = self.drop_hook.as_ref() else {
            return;
        };
        let mut by_tap: HashMap<u32, BTreeMap<String, u64>> = HashMap::new();
        let mut done = Vec::new();
        for (key, values) in self.drops_map.iter().flatten() {
            if only.is_some_and(|i| i != key.ifindex) {
                continue;
            }
            let n: u64 = values.iter().sum();
            *by_tap
                .entry(key.ifindex)
                .or_default()
                .entry(hook.layout.reason_name(key.reason))
                .or_default() += n;
            done.push(key);
        }
        for (ifindex, tap) in self.taps.iter_mut() {
            if only.is_none_or(|i| i == *ifindex) {
                tap.kernel_drops = by_tap.remove(ifindex).unwrap_or_default();
            }
        }
        if only.is_some() {
            for key in done {
                let _ = self.drops_map.remove(&key);
            }
        }
    }

    /// Summed counters of an attached interface: what the programs counted, the link's
    /// frame and byte totals since attach, and the kernel's drops.
    pub fn counters(&self, ifindex: u32) -> Option<TapCounts> {
        let tap = self.taps.get(&ifindex)?;
        let mut c = TapCounters::default();
        if let Ok(per_cpu) = self.counters.get(&ifindex, 0) {
            for v in per_cpu.iter() {
                c.accumulate(v);
            }
        }
        let t = tap.latest.since(&tap.base);
        c.from_vm_frames = t.rx_packets;
        c.from_vm_bytes = t.rx_bytes;
        c.to_vm_frames = t.tx_packets;
        c.to_vm_bytes = t.tx_bytes;
        // The drop program counts the hot reasons of the drop-driven datapath with the
        // tap's counters; the others by reason.
        let mut kernel_drops = tap.kernel_drops.clone();
        if let Some(h) = &self.drop_hook {
            let k = &h.layout.kernel;
            for (n, reason) in [
                (c.otherhost_drops, k.reason_otherhost),
                (c.unhandled_proto_drops, k.reason_unhandled_proto),
            ] {
                if n > 0 {
                    *kernel_drops
                        .entry(h.layout.reason_name(reason))
                        .or_default() += n;
                }
            }
        }
        // Read after the counters: a stale frame they count has opened its window by now
        // (the observe step counts, then follows the window, in one program run).
        let window_since_ns = self
            .windows
            .get(&ifindex, 0)
            .ok()
            .filter(TapWindow::is_open)
            .map(|w| w.mismatch_since_ns);
        Some(TapCounts {
            counters: c,
            kernel_drops,
            window_since_ns,
        })
    }

    /// How the tap is watched now.
    pub fn datapath_of(&self, ifindex: u32) -> DatapathKind {
        match self.taps.get(&ifindex).map(|t| &t.hook) {
            Some(Hook::Drops { .. }) => DatapathKind::Drops,
            _ => DatapathKind::Tc,
        }
    }

    /// Stops counting; returns the final counters. `totals`: the link's last statistics
    /// when it went away (read now otherwise). Safe on an interface that is already gone
    /// (its hooks died with it).
    pub fn detach(&mut self, ifindex: u32, totals: Option<LinkTotals>) -> Option<TapCounts> {
        // No program counts the tap from here on.
        let _ = self.taps_map.remove(&ifindex);
        let totals = totals.or_else(|| {
            netlink::link_totals(Some(ifindex))
                .ok()
                .and_then(|t| t.get(&ifindex).copied())
        });
        if let (Some(t), Some(tap)) = (totals, self.taps.get_mut(&ifindex)) {
            tap.latest = t;
        }
        self.read_drops(Some(ifindex));
        let last = self.counters(ifindex);
        let tap = self.taps.remove(&ifindex)?;
        match tap.hook {
            Hook::Tc(links)
            | Hook::Drops {
                assist: Some(Assist { links, .. }),
            } => self.hooks.detach(&mut self.ebpf, ifindex, links),
            Hook::Drops { assist: None } => {}
        }
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

    /// What happened on the way that the user should hear of.
    pub fn take_notices(&mut self) -> Vec<DatapathNotice> {
        std::mem::take(&mut self.notices)
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

fn zeroed_per_cpu() -> std::io::Result<aya::maps::PerCpuValues<TapCounters>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    aya::maps::PerCpuValues::try_from(vec![TapCounters::default(); n])
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A program error in a few lines: the verifier's log can run to thousands, and its end
/// says why.
pub(super) fn describe(e: &ProgramError) -> String {
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
pub(super) fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::TcError(t) => tc::tc_errno(t),
        ProgramError::IOError(io) => io.raw_os_error(),
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
pub(super) fn chain_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
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

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
