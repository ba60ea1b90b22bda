//! Where facts come from: `tapwatch watch` follows the selected taps ([`links`]), attaches a
//! datapath to each ([`ebpf`], or [`pcap`] where eBPF cannot load), follows the VM behind
//! each tap, and turns link changes, kernel events and counters into [`Record`]s for a
//! [`Sink`].

pub mod caps;
pub mod datapath;
pub mod ebpf;
pub mod facts;
pub mod fdb;
pub mod identity;
pub mod libpcap;
pub mod links;
pub mod namespaces;
pub mod netlink;
pub mod pcap;
pub mod setns;
mod watcher;

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use diag_common::FrameEvent;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep_until, Instant, MissedTickBehavior},
};

use self::{
    datapath::{Datapath, EventSource},
    ebpf::{AttachMode, KernelPath, Probe, ProbeError, ProbeOptions},
    identity::Identities,
    links::{IfaceError, Link, LinkChange, LinkMonitor, Selector},
    pcap::{PcapBackend, PcapError},
    watcher::{System, Watcher},
};
pub use self::{identity::IdentitySource, watcher::Outcome};
use crate::model::{clock::WallClock, NoticeCode, Sink};

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub patterns: Vec<String>,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub attach_mode: AttachMode,
    pub datapath: DatapathChoice,
    /// How long a tap keeps the per-frame probe it got for stale frames once they stopped.
    pub probe_linger: Duration,
    /// Where VM names and guest MACs come from.
    pub identities: IdentitySource,
    /// Forget taps this long after they went away (`serve`); `None` keeps them for the
    /// summary.
    pub forget_after: Option<Duration>,
    /// Watch the taps of every other network namespace too (`--netns all`).
    pub all_namespaces: bool,
    /// With `all_namespaces`: only those whose pin's name starts so (the lab's node, whose
    /// pods share a host with another node's; on a real node every namespace is its own).
    pub namespace_prefix: Option<String>,
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
    #[error("the collector's thread panicked")]
    Panicked,
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

/// Which datapath observes the taps (see docs/architecture.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatapathChoice {
    /// The drop-driven datapath where the kernel supports it, else the per-frame tc probe,
    /// else libpcap; the run says what it chose and why.
    Auto,
    /// The kernel's drops (one tracepoint for all taps) and the links' own statistics; a
    /// per-frame tc probe only on taps with stale frames, and on bridged taps.
    Drops,
    /// The per-frame tc probe on every tap.
    Tc,
    /// libpcap: no eBPF.
    Pcap,
    /// eBPF, whichever kind the kernel supports, never libpcap (`--backend ebpf`).
    #[value(skip)]
    Ebpf,
}

/// `--backend`, kept for scripts written before `--datapath`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// Same as `--datapath auto`.
    Auto,
    /// eBPF only: `--datapath auto` without the libpcap fallback.
    Ebpf,
    /// Same as `--datapath pcap`.
    Pcap,
}

impl From<BackendChoice> for DatapathChoice {
    fn from(b: BackendChoice) -> Self {
        match b {
            BackendChoice::Auto => DatapathChoice::Auto,
            BackendChoice::Ebpf => DatapathChoice::Ebpf,
            BackendChoice::Pcap => DatapathChoice::Pcap,
        }
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
    let (datapath, mut src, said) = load_datapath(&opts, clock)?;
    let (mut monitor, mut links) =
        LinkMonitor::start().map_err(|e| WatchError::from(e).descriptors())?;
    let mut namespaces = if opts.all_namespaces {
        let (ns, theirs) = namespaces::follow_all(selector.clone(), opts.namespace_prefix.clone())
            .map_err(setup("following network namespaces"))?;
        links.extend(theirs);
        Some(ns)
    } else {
        None
    };

    let mut w = Watcher::new(
        datapath,
        System::REAL,
        selector,
        Identities::from(&opts.identities),
        sink,
    );
    w.clock = clock;
    let kind = w.datapath.run_kind();
    w.sink.datapath(kind);
    if let Some(message) = said {
        let code = if w.datapath.kind() == crate::model::Backend::Pcap {
            NoticeCode::Fallback
        } else {
            NoticeCode::Datapath
        };
        w.notice(code, None, message).map_err(WatchError::Output)?;
    }
    let errors = w.identities.start();
    w.identity_notices(errors).map_err(WatchError::Output)?;
    let result = watch_loop(
        &mut w,
        std::pin::pin!(stop),
        &mut src,
        &mut monitor,
        namespaces.as_mut(),
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
    while let (Some(change), Ok(())) = (
        namespaces.as_mut().and_then(LinkMonitor::try_next),
        &pending,
    ) {
        pending = w.drain(&mut src).and_then(|_| w.on_link(change));
    }
    let end = pending
        .and_then(|_| w.drain(&mut src))
        .and_then(|_| w.summary())
        .and_then(|_| w.sink.flush());
    let outcome = w.outcome();
    match (result, end) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => Err(WatchError::Output(e)),
        _ => Ok(outcome),
    }
}

/// [`run`] to its end on this thread, in a runtime of its own: for a thread made to run the
/// collector (the live view's, a lab hypervisor's namespace).
pub fn run_blocking(
    opts: WatchOptions,
    sink: &mut dyn Sink,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, WatchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(setup("the collector's runtime"))?;
    rt.block_on(run(opts, sink, stop))
}

/// A collector on a thread of its own, feeding `sink` until [`Collecting::stop`] or its own
/// end (a signal, `--duration`, a closed output).
pub struct Collecting {
    stop: std::sync::Arc<tokio::sync::Notify>,
    thread: std::thread::JoinHandle<Result<Outcome, WatchError>>,
}

impl Collecting {
    /// Starts it; `ended` runs on its thread once it has written its last record.
    pub fn start(
        opts: WatchOptions,
        mut sink: impl Sink + Send + 'static,
        ended: impl FnOnce() + Send + 'static,
    ) -> io::Result<Self> {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tapwatch-collect".into())
            .spawn(move || {
                let r = run_blocking(opts, &mut sink, async move { s.notified().await });
                ended();
                r
            })?;
        Ok(Self { stop, thread })
    }

    /// Asks the collector to end (it writes its summary and detaches first).
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// A handle that asks the collector to end, for whoever decides it (a view's quit key,
    /// a closed stdout).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let s = self.stop.clone();
        move || s.notify_one()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the collector's end.
    pub fn join(self) -> Result<Outcome, WatchError> {
        self.thread.join().map_err(|_| WatchError::Panicked)?
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

#[allow(clippy::too_many_arguments)]
async fn watch_loop(
    w: &mut Watcher<'_>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    src: &mut EventSource,
    monitor: &mut LinkMonitor,
    mut namespaces: Option<&mut LinkMonitor>,
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
    w.started = true;
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
            change = next_elsewhere(&mut namespaces) => match change {
                Some(change) => w.drain(src).and_then(|_| w.on_link(change)),
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
                if let Some(grace) = opts.forget_after {
                    w.forget_gone(grace);
                }
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

/// The datapath the options ask for (`auto`: the first that loads, eBPF before libpcap);
/// with it, what was chosen and why, when there was a choice.
#[allow(clippy::type_complexity)]
fn load_datapath(
    opts: &WatchOptions,
    clock: WallClock,
) -> Result<(Box<dyn Datapath>, EventSource, Option<String>), WatchError> {
    let mut said = None;
    let probe = |path| ProbeOptions {
        all_namespaces: opts.all_namespaces,
        path,
        attach_mode: opts.attach_mode,
        linger: opts.probe_linger,
    };
    let (datapath, src) = match opts.datapath {
        DatapathChoice::Drops => load_ebpf(&probe(KernelPath::Drops), &mut said),
        DatapathChoice::Tc => load_ebpf(&probe(KernelPath::Tc), &mut said),
        DatapathChoice::Ebpf => load_ebpf(&probe(KernelPath::Auto), &mut said),
        DatapathChoice::Pcap => load_pcap(clock),
        DatapathChoice::Auto => {
            match load_ebpf(&probe(KernelPath::Auto), &mut said).map_err(WatchError::descriptors) {
                Ok(b) => Ok(b),
                Err(e @ WatchError::Descriptors(_)) => return Err(e),
                Err(e @ WatchError::Probe(ProbeError::Descriptors(_))) => return Err(e),
                Err(e) => match load_pcap(clock) {
                    Ok(b) => {
                        said = Some(format!(
                            "datapath pcap: eBPF is not available here ({e}); capturing with \
                             libpcap instead: same records, more CPU per frame, and dst \
                             mismatches judged against the tap MAC tapwatch last saw"
                        ));
                        Ok(b)
                    }
                    // Neither: the eBPF reason says most (privileges, kernel).
                    Err(_) => return Err(e),
                },
            }
        }
    }
    .map_err(WatchError::descriptors)?;
    Ok((datapath, src, said))
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

/// Loads the eBPF datapath; `said` gets what it chose and why, when there was a choice.
fn load_ebpf(
    opts: &ProbeOptions,
    said: &mut Option<String>,
) -> Result<(Box<dyn Datapath>, EventSource), WatchError> {
    caps::check()?;
    let (probe, ring) = Probe::load(opts)?;
    if opts.path == KernelPath::Auto {
        *said = Some(match probe.fallback() {
            None => "datapath drops: the kernel reports drops with their reasons (skb:kfree_skb, \
                     BTF): one hook for every tap, frame totals from the links' statistics, \
                     and a per-frame probe only on taps with stale frames and on bridged taps"
                .to_string(),
            Some(why) => format!(
                "datapath tc: the per-frame probe on every tap, because the drop-driven \
                 datapath cannot run here: {why}"
            ),
        });
    }
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both drop.
    let ring =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            WatchError::Setup {
                what: "ring buffer poll",
                source: e.into(),
            }
        })?;
    Ok((
        Box::new(probe) as Box<dyn Datapath>,
        EventSource::Ring(Box::new(ring)),
    ))
}

fn load_pcap(clock: WallClock) -> Result<(Box<dyn Datapath>, EventSource), WatchError> {
    if !caps::has_raw_capture() {
        return Err(WatchError::NoRawCapture);
    }
    let (backend, rx) = PcapBackend::new(clock);
    Ok((
        Box::new(backend) as Box<dyn Datapath>,
        EventSource::Channel(rx),
    ))
}

/// The next link change of another namespace; never, when only tapwatch's own is watched.
async fn next_elsewhere(namespaces: &mut Option<&mut LinkMonitor>) -> Option<LinkChange> {
    match namespaces {
        Some(n) => n.next().await,
        None => std::future::pending().await,
    }
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
