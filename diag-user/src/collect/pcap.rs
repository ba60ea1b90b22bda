//! The libpcap backend: for kernels or hosts where the eBPF programs cannot load.
//!
//! Each tap gets two capture handles (frames from the VM: direction "in" on the host side;
//! frames to the VM: "out"), each read on its own thread. Frames are classified with the
//! same code as in the kernel (`diag_common`), counted in the same `TapCounters`, sampled
//! with the same rate limit, and turned into the same `FrameEvent`s. What it costs and
//! misses is in docs/architecture.md.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use diag_common::{
    classify, frame::is_foreign_unicast, Direction, FrameEvent, Observed, TapCounters, TapWindow,
    EVENT_SNAPLEN,
};
use tokio::sync::mpsc;

use super::libpcap::{Capture, Next};
use crate::{model::clock::WallClock, model::mac::MacAddr};

#[derive(Debug, thiserror::Error)]
#[error("cannot capture on {ifname} with libpcap: {reason}")]
pub struct PcapError {
    pub ifname: String,
    pub reason: String,
}

impl PcapError {
    /// EMFILE when libpcap ran out of descriptors: it only says so in words (strerror).
    pub fn errno(&self) -> Option<i32> {
        if self.reason.contains("Too many open files in system") {
            Some(libc::ENFILE)
        } else if self.reason.contains("Too many open files") {
            Some(libc::EMFILE)
        } else {
            None
        }
    }
}

/// What the capture threads of one tap share.
struct TapShared {
    counters: Mutex<TapCounters>,
    window: Mutex<TapWindow>,
    /// The tap's MAC as 48 bits, plus bit 48 when known.
    mac: AtomicU64,
    stop: AtomicBool,
}

impl TapShared {
    fn mac(&self) -> Option<[u8; 6]> {
        let v = self.mac.load(Ordering::Relaxed);
        (v >> 48 == 1).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    fn set_mac(&self, mac: Option<MacAddr>) {
        let v = mac.map_or(0, |m| {
            let b = m.0;
            u64::from_be_bytes([0, 1, b[0], b[1], b[2], b[3], b[4], b[5]])
        });
        self.mac.store(v, Ordering::Relaxed);
    }
}

struct PcapTap {
    shared: Arc<TapShared>,
    threads: Vec<JoinHandle<()>>,
}

pub struct PcapBackend {
    taps: HashMap<u32, PcapTap>,
    events: mpsc::UnboundedSender<FrameEvent>,
    clock: WallClock,
}

/// How long a capture read waits before looking at the stop flag.
const POLL_MS: i32 = 50;

impl PcapBackend {
    pub fn new(clock: WallClock) -> (Self, mpsc::UnboundedReceiver<FrameEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Self {
                taps: HashMap::new(),
                events,
                clock,
            },
            rx,
        )
    }

    /// Starts capturing on `ifname`; when this returns, its frames are counted.
    pub fn attach(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mac: Option<MacAddr>,
    ) -> Result<(), PcapError> {
        if self.taps.contains_key(&ifindex) {
            return Ok(());
        }
        let shared = Arc::new(TapShared {
            counters: Mutex::new(TapCounters::default()),
            window: Mutex::new(TapWindow::default()),
            mac: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        shared.set_mac(mac);
        let fail = |reason: String| PcapError {
            ifname: ifname.to_string(),
            reason,
        };
        let mut threads = Vec::new();
        for (dir, inbound) in [(Direction::FromVm, true), (Direction::ToVm, false)] {
            // In immediate mode libpcap ignores its read timeout: the handle does not block
            // and the thread waits in poll(2) itself, so it sees the stop flag.
            let cap =
                Capture::open(ifname, inbound, EVENT_SNAPLEN as i32 + 4, POLL_MS).map_err(fail)?;
            let (shared, events, clock) = (shared.clone(), self.events.clone(), self.clock);
            threads.push(std::thread::spawn(move || {
                capture_loop(cap, ifindex, dir, &shared, &events, clock)
            }));
        }
        self.taps.insert(ifindex, PcapTap { shared, threads });
        Ok(())
    }

    pub fn set_mac(&self, ifindex: u32, mac: Option<MacAddr>) {
        if let Some(t) = self.taps.get(&ifindex) {
            t.shared.set_mac(mac);
        }
    }

    /// The tap's counters and its mismatch window, read together.
    pub fn counters(&self, ifindex: u32) -> Option<(TapCounters, TapWindow)> {
        let t = self.taps.get(&ifindex)?;
        // Both locks, in the capture threads' order: the counts and the window of one
        // instant, so a counted stale frame always comes with the window it opened.
        let c = t.shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        let w = *t.shared.window.lock().unwrap_or_else(|e| e.into_inner());
        Some((*c, w))
    }

    /// Stops capturing; returns the final counters.
    pub fn detach(&mut self, ifindex: u32) -> Option<TapCounters> {
        let t = self.taps.remove(&ifindex)?;
        t.shared.stop.store(true, Ordering::Relaxed);
        for th in t.threads {
            let _ = th.join();
        }
        let c = *t.shared.counters.lock().unwrap_or_else(|e| e.into_inner());
        Some(c)
    }
}

impl Drop for PcapBackend {
    fn drop(&mut self) {
        let all: Vec<u32> = self.taps.keys().copied().collect();
        for i in all {
            self.detach(i);
        }
    }
}

fn capture_loop(
    mut cap: Capture,
    ifindex: u32,
    dir: Direction,
    shared: &TapShared,
    events: &mpsc::UnboundedSender<FrameEvent>,
    clock: WallClock,
) {
    let fd = cap.fd();
    while !shared.stop.load(Ordering::Relaxed) {
        let (sec, nsec, len, data) = match cap.read() {
            Ok(Next::Frame {
                sec,
                nsec,
                len,
                data,
            }) => (sec, nsec, len, data),
            Ok(Next::Empty) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, the capture's own fd.
                unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                continue;
            }
            // The tap went away: its removal comes over netlink.
            Err(_) => return,
        };
        let unix_ns = sec as i128 * 1_000_000_000 + nsec as i128;
        let now = clock.monotonic_of(unix_ns);
        if let Some(mut ev) = observe(shared, data, len, dir, now) {
            ev.ifindex = ifindex;
            let _ = events.send(ev);
        }
    }
}

/// A captured frame through the shared classifier and observe step, with the tap's MAC
/// in place of the kernel's pkt_type. libpcap puts the tags the kernel took out back into
/// the bytes, so nothing counts as stripped.
fn observe(
    shared: &TapShared,
    data: &[u8],
    len: u32,
    dir: Direction,
    now: u64,
) -> Option<FrameEvent> {
    let mac = shared.mac();
    let foreign = dir == Direction::FromVm && mac.is_some_and(|m| is_foreign_unicast(data, &m));
    let class = classify(data, foreign, dir);
    let seen = Observed {
        direction: dir,
        to_own_mac: mac.is_some_and(|m| data.get(..6) == Some(&m[..])),
        frame_len: len as u64,
        sampled: true,
        totals: true,
    };
    let mut counters = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
    let mut window = shared.window.lock().unwrap_or_else(|e| e.into_inner());
    let admitted = diag_common::observe(
        &mut counters,
        || Some(&mut *window),
        &class,
        &seen,
        &mut || now.max(1),
    )?;
    Some(FrameEvent::of(data, &admitted, 0, &seen, &class))
}
