//! `tapwatch watch`: follows the selected taps, attaches the probe to each, and turns
//! netlink changes, kernel events and counters into [`Record`]s for a [`Sink`].

use std::{collections::HashMap, io, time::Duration};

use aya::maps::{MapData, RingBuf};
use diag_common::{FrameEvent, TapCounters};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval_at, sleep_until, Instant, MissedTickBehavior},
};

use crate::{
    caps,
    clock::{Ts, WallClock},
    ifaces::{IfaceError, Link, LinkChange, LinkMonitor, Selector},
    output::{FrameRecord, MacHistoryEntry, Record, Sink, SummaryRow, TapRow},
    probe::{parse_event, AttachMode, Probe, ProbeError},
};

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub patterns: Vec<String>,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub attach_mode: AttachMode,
    /// Print notices (no matching tap, a tap that vanished before attach) to stderr; off
    /// under the full-screen view, which shows them itself.
    pub notices: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Capabilities(#[from] caps::MissingCapabilities),
    #[error(transparent)]
    Probe(#[from] ProbeError),
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
    probe: Probe,
    clock: WallClock,
    selector: Selector,
    /// Every tap attached during the run, in order of attachment.
    taps: Vec<Tap>,
    /// ifindex -> position in `taps`, for live taps only.
    live: HashMap<u32, usize>,
    /// ifindex -> last known name, also of taps already gone, for late ring buffer events.
    names: HashMap<u32, String>,
    sink: &'s mut dyn Sink,
    notices: bool,
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
                None => Ok(()),
            },
            LinkChange::Removed { ifindex, .. } => self.detach(ifindex, "interface removed".into()),
        }
    }

    fn attach(&mut self, link: Link) -> io::Result<()> {
        if let Err(e) = self.probe.attach(link.ifindex, &link.name) {
            // Usually a tap deleted right after it appeared; its removal follows.
            if self.notices {
                eprintln!("tapwatch: {e}");
            }
            return Ok(());
        }
        let ts = self.ts();
        self.names.insert(link.ifindex, link.name.clone());
        self.live.insert(link.ifindex, self.taps.len());
        let rec = Record::Attached {
            ts,
            ifname: link.name.clone(),
            ifindex: link.ifindex,
            mac: link.mac,
            mode: link.mode().as_str(),
            backend: "ebpf",
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
            self.names.insert(ifindex, link.name.clone());
        }
        let (old_mac, old_mode) = (self.taps[i].link.mac, self.taps[i].link.mode());
        let ts = self.ts();
        let tap = &mut self.taps[i];
        tap.link = link;
        let ifname = tap.link.name.clone();
        let (new_mac, new_mode) = (tap.link.mac, tap.link.mode());
        let tap_master = tap.link.master_name();
        if new_mac != old_mac {
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
                old_mode: old_mode.as_str(),
                new_mode: new_mode.as_str(),
                master: tap_master,
            })?;
        }
        Ok(())
    }

    fn detach(&mut self, ifindex: u32, reason: String) -> io::Result<()> {
        let Some(i) = self.live.remove(&ifindex) else {
            return Ok(());
        };
        self.taps[i].final_counters = Some(self.probe.detach(ifindex).unwrap_or_default());
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

    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
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
            None => self.probe.counters(tap.link.ifindex).unwrap_or_default(),
        }
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
                mode: t.link.mode().as_str(),
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
) -> Result<(), WatchError> {
    caps::check()?;
    let selector = Selector::new(&opts.patterns)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(setup("SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(setup("SIGTERM handler"))?;
    let (probe, ring) = Probe::load(opts.attach_mode)?;
    // SAFETY: the ring buffer owns its map fd and lives inside the AsyncFd until both drop.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            WatchError::Setup {
                what: "ring buffer poll",
                source: e.into(),
            }
        })?;
    let (mut monitor, links) = LinkMonitor::start().await?;

    let mut w = Watcher {
        probe,
        clock: WallClock::new(),
        selector,
        taps: Vec::new(),
        live: HashMap::new(),
        names: HashMap::new(),
        sink,
        notices: opts.notices,
    };
    let result = watch_loop(
        &mut w,
        std::pin::pin!(stop),
        &mut ring,
        &mut monitor,
        &links,
        &opts,
        &mut sigint,
        &mut sigterm,
    )
    .await;
    // Whatever ended the loop, report what was counted; an output error only stops output.
    let ring = ring.get_mut();
    let end = w
        .drain(ring)
        .and_then(|_| w.summary())
        .and_then(|_| w.sink.flush());
    match (result, end) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) if e.kind() != io::ErrorKind::BrokenPipe => Err(WatchError::Output(e)),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn watch_loop(
    w: &mut Watcher<'_>,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ring: &mut AsyncFd<RingBuf<MapData>>,
    monitor: &mut LinkMonitor,
    initial: &[Link],
    opts: &WatchOptions,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
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
    if w.live.is_empty() && w.notices {
        eprintln!(
            "tapwatch: no interface matches {}; watching for new ones",
            w.selector.describe()
        );
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
            _ = sigint.recv() => return Ok(()),
            _ = stop.as_mut() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
            _ = async { sleep_until(deadline.unwrap_or(start)).await }, if deadline.is_some() => return Ok(()),
            change = monitor.next() => match change {
                Some(change) => {
                    // Events of a tap that is going away come before its `detached`.
                    w.drain(ring.get_mut()).and_then(|_| w.on_link(change))
                }
                None => return Err(WatchError::NetlinkClosed),
            },
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(setup("ring buffer poll"))?;
                let r = w.drain(guard.get_inner_mut());
                guard.clear_ready();
                r
            }
            _ = tick.tick() => w.drain(ring.get_mut()).and_then(|_| w.stats()),
        };
        if !out(step.and_then(|_| w.sink.flush()))? {
            return Ok(());
        }
    }
}
