//! The datapaths behind one interface: what the watcher asks of eBPF and libpcap alike.

use std::collections::BTreeMap;

use aya::maps::{MapData, RingBuf};
use diag_common::{FrameEvent, TapCounters};
use tokio::io::unix::AsyncFd;

use super::{ebpf::Probe, links::Link, netlink::LinkTotals, pcap::PcapBackend};
use crate::model::{probe::ProbeChange, Backend, DatapathKind, NoticeCode};

/// Why a tap could not be attached, and the errno behind it if there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachFailure {
    pub reason: String,
    pub errno: Option<i32>,
}

/// What a datapath counted on one tap since it was attached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapCounts {
    pub counters: TapCounters,
    /// Frames the kernel dropped on the tap, by reason (the drop-driven datapath).
    pub kernel_drops: BTreeMap<String, u64>,
    /// The tap's mismatch window as the counters were read: the datapath clock's time of
    /// its first stale frame, `None` while closed.
    pub window_since_ns: Option<u64>,
}

/// What a datapath did or met on the way.
#[derive(Clone, Debug, PartialEq)]
pub enum DatapathEvent {
    /// A tap got or lost the per-frame probe.
    Probe { ifname: String, change: ProbeChange },
    /// Something else the user should hear of.
    Notice {
        code: NoticeCode,
        ifname: Option<String>,
        message: String,
    },
}

/// A way of seeing a tap's frames: attach and detach per tap, counters per tap.
pub trait Datapath: Send {
    /// Which capture mechanism this is, for `attached` records.
    fn kind(&self) -> Backend;
    /// How one attached tap is watched, for its `attached` record.
    fn datapath_of(&self, ifindex: u32) -> DatapathKind;
    /// The run's datapath: how a tap is watched unless it needs more.
    fn run_kind(&self) -> DatapathKind;
    /// Starts counting on the tap from zero; when this returns, its frames are counted.
    /// `appeared`: the tap was created while this run watched (a VM arriving, perhaps by
    /// migration).
    fn attach(&mut self, link: &Link, appeared: bool) -> Result<(), AttachFailure>;
    /// Stops counting; the final counters. `totals`: the link's statistics as it went away,
    /// when it did.
    fn detach(&mut self, ifindex: u32, totals: Option<LinkTotals>) -> Option<TapCounts>;
    fn counters(&self, ifindex: u32) -> Option<TapCounts>;
    /// The tap changed (MAC, bridge, name): the kernel knows the MAC by itself, libpcap
    /// compares with it; the eBPF datapath follows bridges.
    fn update(&mut self, _link: &Link) {}
    /// A frame event, before its record goes out.
    fn on_event(&mut self, _ev: &FrameEvent) {}
    /// Once an interval, before counters are read.
    fn refresh(&mut self) {}
    /// What happened on the way: probes added and removed, and what the user should hear
    /// of.
    fn take_events(&mut self) -> Vec<DatapathEvent> {
        Vec::new()
    }
    /// Hands the kernel programs' log records, if any, to the process's logger.
    fn flush_log(&mut self) {}
}

impl Datapath for Probe {
    fn kind(&self) -> Backend {
        Backend::Ebpf
    }
    fn datapath_of(&self, ifindex: u32) -> DatapathKind {
        Probe::datapath_of(self, ifindex)
    }
    fn run_kind(&self) -> DatapathKind {
        if self.drops() {
            DatapathKind::Drops
        } else {
            DatapathKind::Tc
        }
    }
    fn attach(&mut self, link: &Link, appeared: bool) -> Result<(), AttachFailure> {
        Probe::attach(self, link, appeared).map_err(|e| AttachFailure {
            reason: e.to_string(),
            errno: e.errno(),
        })
    }
    fn detach(&mut self, ifindex: u32, totals: Option<LinkTotals>) -> Option<TapCounts> {
        Probe::detach(self, ifindex, totals)
    }
    fn counters(&self, ifindex: u32) -> Option<TapCounts> {
        Probe::counters(self, ifindex)
    }
    fn update(&mut self, link: &Link) {
        Probe::update(self, link)
    }
    fn on_event(&mut self, ev: &FrameEvent) {
        Probe::on_event(self, ev)
    }
    fn refresh(&mut self) {
        Probe::refresh(self)
    }
    fn take_events(&mut self) -> Vec<DatapathEvent> {
        Probe::take_events(self)
    }
    fn flush_log(&mut self) {
        Probe::flush_log(self)
    }
}

impl Datapath for PcapBackend {
    fn kind(&self) -> Backend {
        Backend::Pcap
    }
    fn datapath_of(&self, _ifindex: u32) -> DatapathKind {
        DatapathKind::Pcap
    }
    fn run_kind(&self) -> DatapathKind {
        DatapathKind::Pcap
    }
    fn attach(&mut self, link: &Link, _appeared: bool) -> Result<(), AttachFailure> {
        // A tap of another namespace is captured from inside it, by its own name there:
        // the capture sockets stay bound to it.
        let (ifname, inside) = match &link.site {
            Some(site) => (
                site.ifname.as_str(),
                Some(
                    site.netns()
                        .and_then(|ns| ns.enter())
                        .map_err(|e| AttachFailure {
                            reason: format!("cannot enter its network namespace: {e}"),
                            errno: e.raw_os_error(),
                        })?,
                ),
            ),
            None => (link.name.as_str(), None),
        };
        let r =
            PcapBackend::attach(self, link.ifindex, ifname, link.mac).map_err(|e| AttachFailure {
                reason: e.to_string(),
                errno: e.errno(),
            });
        drop(inside);
        r
    }
    fn detach(&mut self, ifindex: u32, _totals: Option<LinkTotals>) -> Option<TapCounts> {
        PcapBackend::detach(self, ifindex).map(|counters| TapCounts {
            counters,
            ..TapCounts::default()
        })
    }
    fn counters(&self, ifindex: u32) -> Option<TapCounts> {
        PcapBackend::counters(self, ifindex).map(|(counters, window)| TapCounts {
            counters,
            window_since_ns: window.is_open().then_some(window.mismatch_since_ns),
            ..TapCounts::default()
        })
    }
    fn update(&mut self, link: &Link) {
        PcapBackend::set_mac(self, link.ifindex, link.mac)
    }
}

/// Where frame events come from: the kernel's ring buffer or the capture threads.
pub enum EventSource {
    Ring(Box<AsyncFd<RingBuf<MapData>>>),
    Channel(tokio::sync::mpsc::UnboundedReceiver<FrameEvent>),
}
