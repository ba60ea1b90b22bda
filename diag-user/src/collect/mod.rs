//! Where facts come from: `tapwatch watch` follows the selected taps ([`links`]), attaches a
//! datapath to each ([`ebpf`], or [`pcap`] where eBPF cannot load), follows the VM behind
//! each tap, and turns link changes, kernel events and counters into [`Record`]s for a
//! [`Sink`].

pub mod caps;
pub mod ebpf;
pub mod links;
pub mod netlink;
pub mod pcap;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use diag_common::{FrameEvent, TapCounters};

use crate::model::mac::MacAddr;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep_until, Instant, MissedTickBehavior},
};

use self::{
    ebpf::{parse_event, AttachMode, Probe, ProbeError},
    links::{IfaceError, Link, LinkChange, LinkMonitor, Selector},
    pcap::{PcapBackend, PcapError},
};
use crate::{
    model::clock::{Ts, WallClock},
    model::{FrameRecord, MacHistoryEntry, NoticeCode, Record, Sink, SummaryRow, TapRow},
    verdict::libvirt::{LibvirtDir, LibvirtError, VmDirectory, VmInterface},
};

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub patterns: Vec<String>,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub attach_mode: AttachMode,
    pub backend: BackendChoice,
    /// Where VM names and guest MACs come from.
    pub identities: IdentitySource,
}

/// Where a run learns which VM is behind a tap.
#[derive(Clone)]
pub enum IdentitySource {
    None,
    /// libvirt's status directory (`/run/libvirt/qemu`), followed as it changes.
    Libvirt(std::path::PathBuf),
    /// A fixed table (the lab's simulated VMs).
    Fixed(std::sync::Arc<dyn VmDirectory + Sync>),
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentitySource::None => f.write_str("None"),
            IdentitySource::Libvirt(d) => write!(f, "Libvirt({})", d.display()),
            IdentitySource::Fixed(_) => f.write_str("Fixed"),
        }
    }
}

/// The identity source of a running watcher.
enum Identities {
    None,
    Libvirt(std::path::PathBuf, Option<Box<LibvirtDir>>),
    Fixed(std::sync::Arc<dyn VmDirectory + Sync>),
}

impl From<&IdentitySource> for Identities {
    fn from(s: &IdentitySource) -> Self {
        match s {
            IdentitySource::None => Identities::None,
            IdentitySource::Libvirt(d) => Identities::Libvirt(d.clone(), None),
            IdentitySource::Fixed(t) => Identities::Fixed(t.clone()),
        }
    }
}

impl Identities {
    /// Reads the source once and starts following it; the files it could not read.
    fn start(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(dir, slot @ None) => {
                let (d, errors) = LibvirtDir::open(dir);
                *slot = Some(Box::new(d));
                errors
            }
            _ => Vec::new(),
        }
    }

    fn lookup(&self, tap: &str) -> Option<VmInterface> {
        match self {
            Identities::None | Identities::Libvirt(_, None) => None,
            Identities::Libvirt(_, Some(d)) => d.lookup(tap),
            Identities::Fixed(t) => t.lookup(tap),
        }
    }

    /// Waits until the source changes; never, for a fixed one.
    async fn changed(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(_, Some(d)) => d.changed().await,
            _ => std::future::pending().await,
        }
    }

    /// Follows the directory once it exists (libvirt started after tapwatch).
    fn retry(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(_, Some(d)) => d.retry(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Capabilities(#[from] caps::MissingCapabilities),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(
        "tapwatch needs CAP_NET_RAW (or root) to capture with libpcap; run it as root (sudo tapwatch …)"
    )]
    NoRawCapture,
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error("the rtnetlink subscription ended unexpectedly; interface changes can no longer be followed")]
    NetlinkClosed,
    #[error("cannot set up {what}: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
    #[error(transparent)]
    Descriptors(#[from] crate::collect::caps::OutOfDescriptors),
}

impl WatchError {
    /// Out of descriptors, wherever it happened: a fallback would run out too.
    fn descriptors(self) -> Self {
        let errno = match &self {
            WatchError::Probe(p) => p.errno(),
            WatchError::Pcap(p) => p.errno(),
            WatchError::Iface(IfaceError::Socket(e) | IfaceError::Dump(e)) => e.raw_os_error(),
            WatchError::Setup { source, .. } => source.raw_os_error(),
            _ => None,
        };
        match crate::collect::caps::OutOfDescriptors::from_errno(errno, "starting up") {
            Some(d) if !matches!(self, WatchError::Probe(ProbeError::Descriptors(_))) => d.into(),
            _ => self,
        }
    }
}

/// Which datapath observes the taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// eBPF, or libpcap when eBPF cannot load (saying why).
    Auto,
    Ebpf,
    Pcap,
}

/// The datapath in use.
pub enum Backend {
    Ebpf(Box<Probe>),
    Pcap(PcapBackend),
}

impl Backend {
    pub fn kind(&self) -> crate::model::Backend {
        match self {
            Backend::Ebpf(_) => crate::model::Backend::Ebpf,
            Backend::Pcap(_) => crate::model::Backend::Pcap,
        }
    }

    fn attach(&mut self, link: &Link) -> Result<(), (String, Option<i32>)> {
        match self {
            Backend::Ebpf(p) => p
                .attach(link.ifindex, &link.name)
                .map_err(|e| (e.to_string(), e.errno())),
            Backend::Pcap(p) => p
                .attach(link.ifindex, &link.name, link.mac)
                .map_err(|e| (e.to_string(), e.errno())),
        }
    }

    fn detach(&mut self, ifindex: u32) -> Option<TapCounters> {
        match self {
            Backend::Ebpf(p) => p.detach(ifindex),
            Backend::Pcap(p) => p.detach(ifindex),
        }
    }

    fn counters(&self, ifindex: u32) -> Option<TapCounters> {
        match self {
            Backend::Ebpf(p) => p.counters(ifindex),
            Backend::Pcap(p) => p.counters(ifindex),
        }
    }

    /// The kernel knows a tap's MAC by itself; libpcap compares with what we tell it.
    fn set_mac(&self, ifindex: u32, mac: Option<MacAddr>) {
        if let Backend::Pcap(p) = self {
            p.set_mac(ifindex, mac);
        }
    }
}

/// Where frame events come from: the kernel's ring buffer or the capture threads.
enum EventSource {
    Ring(Box<AsyncFd<RingBuf<MapData>>>),
    Channel(tokio::sync::mpsc::UnboundedReceiver<FrameEvent>),
}

/// One tap tapwatch has attached to, live or gone.
struct Tap {
    link: Link,
    mac_history: Vec<MacHistoryEntry>,
    /// Counters read when the tap went away.
    final_counters: Option<TapCounters>,
}

/// State of a watch run, independent of where its records go.
struct Watcher<'s> {
    backend: Backend,
    clock: WallClock,
    selector: Selector,
    /// Every tap attached during the run, in order of attachment.
    taps: Vec<Tap>,
    /// ifindex -> position in `taps`, for live taps only.
    live: HashMap<u32, usize>,
    /// ifindex -> last known name, also of taps already gone, for late ring buffer events.
    names: HashMap<u32, String>,
    sink: &'s mut dyn Sink,
    /// Taps that match but could not be attached, by ifindex: name and why. Retried at
    /// every stats tick; those still here at the end make the run fail.
    unwatched: BTreeMap<u32, (String, String)>,
    /// When a notice last said that link notifications were lost.
    overflow_said: Option<std::time::Instant>,
    identities: Identities,
    /// The identity last said of each live tap, by ifindex.
    vm_said: HashMap<u32, Option<VmInterface>>,
}

/// How a run ended, besides its records.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Taps that matched but could not be watched to the end: name and why.
    pub unwatched: Vec<(String, String)>,
}

impl Watcher<'_> {
    fn ts(&self) -> Ts {
        Ts(self.clock.now())
    }

    fn emit(&mut self, rec: Record) -> io::Result<()> {
        self.sink.emit(&rec)
    }

    fn on_link(&mut self, change: LinkChange) -> io::Result<()> {
        match change {
            LinkChange::Present(link) => match self.live.get(&link.ifindex).copied() {
                Some(i) => self.on_known_link(i, link),
                None if self.selector.matches(&link.name) => self.attach(link),
                None => {
                    self.unwatched.remove(&link.ifindex);
                    Ok(())
                }
            },
            LinkChange::Removed { ifindex, .. } => {
                self.unwatched.remove(&ifindex);
                self.detach(ifindex, "interface removed".into())
            }
            LinkChange::Resynced => {
                // Said at most once a minute, in words and as a record.
                if self
                    .overflow_said
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
                {
                    return Ok(());
                }
                self.overflow_said = Some(std::time::Instant::now());
                self.notice(
                    NoticeCode::NetlinkOverflow,
                    None,
                    "link notifications were lost (the kernel's netlink buffer overflowed): \
                     re-read every interface, so no tap and no MAC change is missed"
                        .into(),
                )
            }
        }
    }

    fn notice(
        &mut self,
        code: NoticeCode,
        ifname: Option<String>,
        message: String,
    ) -> io::Result<()> {
        let ts = self.ts();
        self.emit(Record::Notice {
            ts,
            code,
            ifname,
            message,
        })
    }

    fn attach(&mut self, link: Link) -> io::Result<()> {
        let attached = self.backend.attach(&link);
        if let Backend::Ebpf(p) = &mut self.backend {
            for w in p.take_warnings() {
                self.notice(NoticeCode::LeftoverFilters, Some(link.name.clone()), w)?;
            }
        }
        if let Err((reason, errno)) = attached {
            // A tap removed right after it appeared (libvirt re-creates and deletes taps
            // within milliseconds while destroying a domain): its removal follows, and
            // there is nothing to report.
            if !link_exists(link.ifindex, &link.name) {
                return Ok(());
            }
            let reason = match crate::collect::caps::OutOfDescriptors::from_errno(
                errno,
                format!("attaching to {}", link.name),
            ) {
                Some(d) => d.to_string(),
                None => reason,
            };
            // Said once per tap, however often the retries fail.
            let known = self.unwatched.contains_key(&link.ifindex);
            self.unwatched
                .insert(link.ifindex, (link.name.clone(), reason.clone()));
            if known {
                return Ok(());
            }
            return self.notice(
                NoticeCode::AttachFailed,
                Some(link.name.clone()),
                format!("{} is not watched: {reason}", link.name),
            );
        }
        self.unwatched.remove(&link.ifindex);
        // The VM's identity comes first, so the tap's first verdict already names it.
        let vm = self.identities.lookup(&link.name);
        if vm.is_some() {
            let ts = self.ts();
            self.emit(Record::Identity {
                ts,
                ifname: link.name.clone(),
                libvirt: vm.clone(),
            })?;
        }
        self.vm_said.insert(link.ifindex, vm);
        let ts = self.ts();
        self.names.insert(link.ifindex, link.name.clone());
        self.live.insert(link.ifindex, self.taps.len());
        let rec = Record::Attached {
            ts,
            ifname: link.name.clone(),
            ifindex: link.ifindex,
            mac: link.mac,
            mode: link.mode(),
            backend: self.backend.kind(),
            mtu: link.mtu,
            master: link.master_name(),
        };
        self.taps.push(Tap {
            mac_history: vec![MacHistoryEntry { ts, mac: link.mac }],
            link,
            final_counters: None,
        });
        self.emit(rec)
    }

    fn on_known_link(&mut self, i: usize, link: Link) -> io::Result<()> {
        let ifindex = link.ifindex;
        if link.name != self.taps[i].link.name {
            if !self.selector.matches(&link.name) {
                return self.detach(ifindex, format!("renamed to {}", link.name));
            }
            // Still watched: the same tap under a new name keeps its counters and verdict.
            // Its events still in the ring buffer go out under the old name first.
            let old_ifname = self.taps[i].link.name.clone();
            self.names.insert(ifindex, link.name.clone());
            self.taps[i].link.name = link.name.clone();
            let ts = self.ts();
            self.emit(Record::Renamed {
                ts,
                ifname: link.name.clone(),
                old_ifname,
                ifindex,
            })?;
            self.follow_identity(ifindex, &link.name)?;
        }
        let (old_mac, old_mode) = (self.taps[i].link.mac, self.taps[i].link.mode());
        let ts = self.ts();
        let tap = &mut self.taps[i];
        tap.link = link;
        let ifname = tap.link.name.clone();
        let (new_mac, new_mode) = (tap.link.mac, tap.link.mode());
        let tap_master = tap.link.master_name();
        if new_mac != old_mac {
            self.backend.set_mac(tap.link.ifindex, new_mac);
            let tap = &mut self.taps[i];
            tap.mac_history.push(MacHistoryEntry { ts, mac: new_mac });
            self.emit(Record::MacChange {
                ts,
                ifname: ifname.clone(),
                old_mac,
                new_mac,
            })?;
        }
        if new_mode != old_mode {
            self.emit(Record::ModeChange {
                ts,
                ifname,
                old_mode,
                new_mode,
                master: tap_master,
            })?;
        }
        Ok(())
    }

    fn detach(&mut self, ifindex: u32, reason: String) -> io::Result<()> {
        let Some(i) = self.live.remove(&ifindex) else {
            return Ok(());
        };
        self.vm_said.remove(&ifindex);
        self.taps[i].final_counters = Some(self.backend.detach(ifindex).unwrap_or_default());
        let rec = Record::Detached {
            ts: self.ts(),
            ifname: self.taps[i].link.name.clone(),
            reason,
        };
        self.emit(rec)
    }

    fn on_event(&mut self, ev: &FrameEvent) -> io::Result<()> {
        let name = match self.names.get(&ev.ifindex) {
            Some(n) => n.clone(),
            None => format!("if{}", ev.ifindex),
        };
        match FrameRecord::from_event(ev, &name, Ts(self.clock.to_utc(ev.ts_ns))) {
            Some(f) => self.emit(Record::Frame(f)),
            None => Ok(()),
        }
    }

    fn drain(&mut self, src: &mut EventSource) -> io::Result<()> {
        if let Backend::Ebpf(p) = &mut self.backend {
            p.flush_log();
        }
        match src {
            EventSource::Ring(ring) => self.drain_ring(ring.get_mut()),
            EventSource::Channel(rx) => {
                while let Ok(ev) = rx.try_recv() {
                    self.on_event(&ev)?;
                }
                Ok(())
            }
        }
    }

    fn drain_ring(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            let ev = parse_event(&item);
            drop(item);
            if let Some(ev) = ev {
                self.on_event(&ev)?;
            }
        }
        Ok(())
    }

    fn current(&self, tap: &Tap) -> TapCounters {
        match tap.final_counters {
            Some(c) => c,
            None => self.backend.counters(tap.link.ifindex).unwrap_or_default(),
        }
    }

    /// Says the identity of a live tap if it changed since it was last said.
    fn follow_identity(&mut self, ifindex: u32, name: &str) -> io::Result<()> {
        let vm = self.identities.lookup(name);
        if self.vm_said.get(&ifindex) == Some(&vm) {
            return Ok(());
        }
        self.vm_said.insert(ifindex, vm.clone());
        let ts = self.ts();
        self.emit(Record::Identity {
            ts,
            ifname: name.to_string(),
            libvirt: vm,
        })
    }

    /// The identity source changed: say what changed for the live taps.
    fn on_identities(&mut self, errors: Vec<LibvirtError>) -> io::Result<()> {
        self.libvirt_notices(errors)?;
        let live: Vec<(u32, String)> = self
            .live
            .iter()
            .map(|(&i, &t)| (i, self.taps[t].link.name.clone()))
            .collect();
        for (ifindex, name) in live {
            self.follow_identity(ifindex, &name)?;
        }
        Ok(())
    }

    fn libvirt_notices(&mut self, errors: Vec<LibvirtError>) -> io::Result<()> {
        for e in errors {
            self.notice(
                NoticeCode::LibvirtFile,
                None,
                format!("skipping libvirt domain file {e}"),
            )?;
        }
        Ok(())
    }

    /// Tries the taps that could not be attached again (descriptors freed, a transient
    /// error gone).
    fn retry_unwatched(&mut self) -> io::Result<()> {
        let pending: Vec<u32> = self.unwatched.keys().copied().collect();
        for ifindex in pending {
            let Some((name, _)) = self.unwatched.get(&ifindex).cloned() else {
                continue;
            };
            match crate::collect::links::lookup(ifindex) {
                Ok(Some(link)) if link.name == name => self.attach(link)?,
                Ok(_) => {
                    self.unwatched.remove(&ifindex);
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    fn stats(&mut self) -> io::Result<()> {
        let mut live: Vec<usize> = self.live.values().copied().collect();
        live.sort_unstable();
        let taps = live
            .into_iter()
            .map(|i| TapRow::new(&self.taps[i].link.name, &self.current(&self.taps[i])))
            .collect();
        let rec = Record::Stats {
            ts: self.ts(),
            taps,
        };
        self.emit(rec)
    }

    fn summary(&mut self) -> io::Result<()> {
        let taps = self
            .taps
            .iter()
            .map(|t| SummaryRow {
                counters: TapRow::new(&t.link.name, &self.current(t)),
                ifindex: t.link.ifindex,
                mode: t.link.mode(),
                mac_history: t.mac_history.clone(),
                detached: t.final_counters.is_some(),
                verdict: None,
            })
            .collect();
        let rec = Record::Summary {
            ts: self.ts(),
            taps,
        };
        self.emit(rec)
    }
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> WatchError {
    move |source| WatchError::Setup { what, source }
}

/// Runs until SIGINT, SIGTERM, `duration`, `stop` completing, or a closed output; always
/// ends with a summary and with every program detached.
pub async fn run(
    opts: WatchOptions,
    sink: &mut dyn Sink,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, WatchError> {
    let selector = Selector::new(&opts.patterns)?;
    raise_fd_limit();
    let mut signals = Signals::new()?;
    let clock = WallClock::new();
    let mut fallback = None;
    let (backend, mut src) = match opts.backend {
        BackendChoice::Ebpf => load_ebpf(opts.attach_mode).map_err(WatchError::descriptors)?,
        BackendChoice::Pcap => load_pcap(clock).map_err(WatchError::descriptors)?,
        BackendChoice::Auto => match load_ebpf(opts.attach_mode).map_err(WatchError::descriptors) {
            Ok(b) => b,
            Err(e @ WatchError::Descriptors(_)) => return Err(e),
            Err(e @ WatchError::Probe(ProbeError::Descriptors(_))) => return Err(e),
            Err(e) => match load_pcap(clock) {
                Ok(b) => {
                    fallback = Some(format!(
                        "eBPF is not available here ({e}); capturing with libpcap instead \
                         (--backend pcap): same records, more CPU per frame, and dst mismatches \
                         judged against the tap MAC tapwatch last saw"
                    ));
                    b
                }
                // Neither: the eBPF reason says most (privileges, kernel).
                Err(_) => return Err(e),
            },
        },
    };
    let (mut monitor, links) =
        LinkMonitor::start().map_err(|e| WatchError::from(e).descriptors())?;

    let mut w = Watcher {
        backend,
        clock,
        selector,
        taps: Vec::new(),
        live: HashMap::new(),
        names: HashMap::new(),
        sink,
        unwatched: BTreeMap::new(),
        overflow_said: None,
        identities: Identities::from(&opts.identities),
        vm_said: HashMap::new(),
    };
    if let Some(message) = fallback {
        w.notice(NoticeCode::Fallback, None, message)
            .map_err(WatchError::Output)?;
    }
    let errors = w.identities.start();
    w.libvirt_notices(errors).map_err(WatchError::Output)?;
    let result = watch_loop(
        &mut w,
        std::pin::pin!(stop),
        &mut src,
        &mut monitor,
        &links,
        &opts,
        &mut signals,
    )
    .await;
    // Whatever ended the loop, report what was counted, with the link changes already read
    // (the summary's MACs and names are the last ones known); an output error only stops
    // output.
    let mut pending = Ok(());
    while let (Some(change), Ok(())) = (monitor.try_next(), &pending) {
        pending = w.drain(&mut src).and_then(|_| w.on_link(change));
    }
    let end = pending
        .and_then(|_| w.drain(&mut src))
        .and_then(|_| w.summary())
        .and_then(|_| w.sink.flush());
    let outcome = Outcome {
        unwatched: std::mem::take(&mut w.unwatched)
            .into_iter()
            .filter(|(i, (name, _))| link_exists(*i, name))
            .map(|(_, v)| v)
            .collect(),
    };
    match (result, end) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => Err(WatchError::Output(e)),
        _ => Ok(outcome),
    }
}

/// The signals that end a run the way SIGTERM does: Ctrl-C, a dropped ssh session or closed
/// terminal (SIGHUP), SIGQUIT, and SIGUSR1/2 (which would otherwise kill the process and
/// leave the summary, the bundle and clsact filters behind).
pub struct Signals(Vec<tokio::signal::unix::Signal>);

impl Signals {
    pub fn new() -> Result<Self, WatchError> {
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ]
        .into_iter()
        .map(|k| signal(k).map_err(setup("signal handlers")))
        .collect::<Result<_, _>>()
        .map(Self)
    }

    /// Waits for any of them.
    pub async fn recv(&mut self) {
        let waits = self.0.iter_mut().map(|s| Box::pin(s.recv()));
        futures::future::select_all(waits).await;
    }
}

/// Whether `ifindex` still names a link called `name` in this namespace.
fn link_exists(ifindex: u32, name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) == ifindex }
}

#[allow(clippy::too_many_arguments)]
async fn watch_loop(
    w: &mut Watcher<'_>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    src: &mut EventSource,
    monitor: &mut LinkMonitor,
    initial: &[Link],
    opts: &WatchOptions,
    signals: &mut Signals,
) -> Result<(), WatchError> {
    let out = |r: io::Result<()>| -> Result<bool, WatchError> {
        match r {
            Ok(()) => Ok(true),
            // A closed pipe (`tapwatch … | head`) ends the run quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(WatchError::Output(e)),
        }
    };
    for link in initial {
        if !out(w.on_link(LinkChange::Present(link.clone())))? {
            return Ok(());
        }
    }
    if w.live.is_empty() && w.unwatched.is_empty() {
        let message = format!(
            "no interface matches {}; watching for new ones",
            w.selector.describe()
        );
        if !out(w.notice(NoticeCode::NoMatch, None, message))? {
            return Ok(());
        }
    }
    if !out(w.sink.flush())? {
        return Ok(());
    }
    let start = Instant::now();
    let mut tick = interval_at(start + opts.interval, opts.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = opts.duration.map(|d| start + d);
    loop {
        let step = tokio::select! {
            _ = signals.recv() => return Ok(()),
            _ = stop.as_mut() => return Ok(()),
            _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => return Ok(()),
            change = monitor.next() => match change {
                Some(change) => {
                    // Events of a tap that is going away come before its `detached`.
                    w.drain(src).and_then(|_| w.on_link(change))
                }
                None => return Err(WatchError::NetlinkClosed),
            },
            ready = next_ready(src) => match ready.map_err(setup("ring buffer poll"))? {
                Ready::Ring(mut guard) => {
                    let r = w.drain_ring(guard.get_inner_mut());
                    guard.clear_ready();
                    r
                }
                Ready::Event(Some(ev)) => w.on_event(&ev),
                Ready::Event(None) => Ok(()),
            },
            errors = w.identities.changed() => w.on_identities(errors),
            _ = tick.tick() => {
                let errors = w.identities.retry();
                w.drain(src)
                    .and_then(|_| w.retry_unwatched())
                    .and_then(|_| w.on_identities(errors))
                    .and_then(|_| w.stats())
            }
        };
        if !out(step.and_then(|_| w.sink.flush()))? {
            return Ok(());
        }
    }
}

/// Every tap costs two descriptors (two TCX links, or two capture handles), so with the
/// usual soft limit of 1024 a host with about 500 VMs would run out. Lift the soft limit to
/// the hard one, as long-running daemons do; if that fails, attach errors name the cause.
fn raise_fd_limit() {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) == 0 && rlim.rlim_cur < rlim.rlim_max {
            rlim.rlim_cur = rlim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
        }
    }
}

fn load_ebpf(mode: AttachMode) -> Result<(Backend, EventSource), WatchError> {
    caps::check()?;
    let (probe, ring) = Probe::load(mode)?;
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both drop.
    let ring =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            WatchError::Setup {
                what: "ring buffer poll",
                source: e.into(),
            }
        })?;
    Ok((
        Backend::Ebpf(Box::new(probe)),
        EventSource::Ring(Box::new(ring)),
    ))
}

fn load_pcap(clock: WallClock) -> Result<(Backend, EventSource), WatchError> {
    if !caps::has_raw_capture() {
        return Err(WatchError::NoRawCapture);
    }
    let (backend, rx) = PcapBackend::new(clock);
    Ok((Backend::Pcap(backend), EventSource::Channel(rx)))
}

enum Ready<'a> {
    Ring(tokio::io::unix::AsyncFdReadyMutGuard<'a, RingBuf<MapData>>),
    Event(Option<FrameEvent>),
}

/// Waits for the ring buffer to be readable, or for the next capture-thread event.
async fn next_ready(src: &mut EventSource) -> io::Result<Ready<'_>> {
    match src {
        EventSource::Ring(r) => r.readable_mut().await.map(Ready::Ring),
        EventSource::Channel(rx) => Ok(Ready::Event(rx.recv().await)),
    }
}
