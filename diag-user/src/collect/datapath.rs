//! The datapaths behind one interface: what the watcher asks of eBPF and libpcap alike.

use aya::maps::{MapData, RingBuf};
use diag_common::{FrameEvent, TapCounters};
use tokio::io::unix::AsyncFd;

use super::{ebpf::Probe, links::Link, pcap::PcapBackend};
use crate::model::{mac::MacAddr, Backend};

/// Why a tap could not be attached, and the errno behind it if there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachFailure {
    pub reason: String,
    pub errno: Option<i32>,
}

/// A way of seeing a tap's frames: attach and detach per tap, counters per tap.
pub trait Datapath: Send {
    /// Which capture mechanism this is, for `attached` records.
    fn kind(&self) -> Backend;
    /// Starts counting on the tap from zero; when this returns, its frames are counted.
    fn attach(&mut self, link: &Link) -> Result<(), AttachFailure>;
    /// Stops counting; the final counters.
    fn detach(&mut self, ifindex: u32) -> Option<TapCounters>;
    fn counters(&self, ifindex: u32) -> Option<TapCounters>;
    /// The tap's MAC changed (the kernel knows by itself; libpcap compares with this).
    fn set_mac(&mut self, _ifindex: u32, _mac: Option<MacAddr>) {}
    /// What happened on the way that the user should hear of.
    fn take_warnings(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Hands the kernel programs' log records, if any, to the process's logger.
    fn flush_log(&mut self) {}
}

impl Datapath for Probe {
    fn kind(&self) -> Backend {
        Backend::Ebpf
    }
    fn attach(&mut self, link: &Link) -> Result<(), AttachFailure> {
        Probe::attach(self, link.ifindex, &link.name).map_err(|e| AttachFailure {
            reason: e.to_string(),
            errno: e.errno(),
        })
    }
    fn detach(&mut self, ifindex: u32) -> Option<TapCounters> {
        Probe::detach(self, ifindex)
    }
    fn counters(&self, ifindex: u32) -> Option<TapCounters> {
        Probe::counters(self, ifindex)
    }
    fn take_warnings(&mut self) -> Vec<String> {
        Probe::take_warnings(self)
    }
    fn flush_log(&mut self) {
        Probe::flush_log(self)
    }
}

impl Datapath for PcapBackend {
    fn kind(&self) -> Backend {
        Backend::Pcap
    }
    fn attach(&mut self, link: &Link) -> Result<(), AttachFailure> {
        PcapBackend::attach(self, link.ifindex, &link.name, link.mac).map_err(|e| AttachFailure {
            reason: e.to_string(),
            errno: e.errno(),
        })
    }
    fn detach(&mut self, ifindex: u32) -> Option<TapCounters> {
        PcapBackend::detach(self, ifindex)
    }
    fn counters(&self, ifindex: u32) -> Option<TapCounters> {
        PcapBackend::counters(self, ifindex)
    }
    fn set_mac(&mut self, ifindex: u32, mac: Option<MacAddr>) {
        PcapBackend::set_mac(self, ifindex, mac)
    }
}

/// Where frame events come from: the kernel's ring buffer or the capture threads.
pub enum EventSource {
    Ring(Box<AsyncFd<RingBuf<MapData>>>),
    Channel(tokio::sync::mpsc::UnboundedReceiver<FrameEvent>),
}
