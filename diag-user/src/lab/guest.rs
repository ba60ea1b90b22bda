//! A small guest behind a tap, as QEMU runs one: answers ARP and ping, sends its own
//! traffic to its gateway, keeps an ARP cache that expires, and re-ARPs.
//!
//! It also keeps the lab's ground truth: for every frame it sends it knows the MAC its tap
//! really has, so it knows exactly when it sent to a MAC the tap did not have.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use diag_common::{
    frame::ARP_OP_REPLY, frame::ARP_OP_REQUEST, parse_arp, parse_ethernet, ETH_P_ARP,
};
use etherparse::{Icmpv4Type, SlicedPacket, TransportSlice};

use crate::{lab::frames, lab::netns::VmTap, model::clock::monotonic_ns, model::mac::MacAddr};

#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub name: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Where its traffic goes: the proxy-ARP gateway (routed) or the client (bridged).
    pub gateway: Ipv4Addr,
    /// Its own traffic goes to this address, every 100 ms.
    pub peer: Ipv4Addr,
    /// How long an ARP entry stays usable before the guest asks again.
    pub reachable: Duration,
    /// A frame to a MAC other than the tap's is a stale frame (routed); on a bridge it is
    /// normal traffic and never stale.
    pub routed: bool,
}

/// A stretch in which the guest sent to a MAC its tap did not have (monotonic ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
}

#[derive(Default)]
struct State {
    tap: Option<Arc<VmTap>>,
    /// The host-side MAC of the tap the guest is behind now (what the lab set).
    tap_mac: Option<MacAddr>,
    paused: bool,
    stop: bool,
    /// The gateway's MAC and when it was learned.
    arp: Option<(MacAddr, u64)>,
    last_arp_request_ns: u64,
    next_own_ns: u64,
    /// Truth is kept only after the switch-over (before it the tap had the right MAC).
    judging: bool,
    windows: Vec<Window>,
}

/// Handle to a running guest; the guest itself runs on its own thread.
#[derive(Clone)]
pub struct Guest {
    pub config: GuestConfig,
    state: Arc<Mutex<State>>,
}

const OWN_TRAFFIC_EVERY_NS: u64 = 100_000_000;
const ARP_RETRY_NS: u64 = 1_000_000_000;

impl Guest {
    pub fn start(
        config: GuestConfig,
        tap: Arc<VmTap>,
        tap_mac: MacAddr,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let state = State {
            tap: Some(tap),
            tap_mac: Some(tap_mac),
            ..State::default()
        };
        let guest = Self {
            config,
            state: Arc::new(Mutex::new(state)),
        };
        let g = guest.clone();
        let handle = std::thread::spawn(move || g.run());
        (guest, handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM stops (QEMU's final stop-and-copy): it neither sends nor receives.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// The VM runs again behind `tap`, its memory (ARP cache) intact.
    pub fn resume_on(&self, tap: Arc<VmTap>, tap_mac: MacAddr) {
        let mut s = self.lock();
        s.tap = Some(tap);
        s.tap_mac = Some(tap_mac);
        s.paused = false;
        s.judging = true;
    }

    pub fn stop(&self) {
        self.lock().stop = true;
    }

    pub fn knows_gateway(&self) -> bool {
        self.lock().arp.is_some()
    }

    pub fn tap(&self) -> Option<Arc<VmTap>> {
        self.lock().tap.clone()
    }

    /// Stale windows since the switch-over.
    pub fn windows(&self) -> Vec<Window> {
        self.lock().windows.clone()
    }

    /// A gratuitous ARP for its own address, as a guest may send after resuming.
    pub fn send_garp(&self) {
        let f = frames::garp(self.config.mac, self.config.ip);
        if let Some(tap) = self.tap() {
            let _ = tap.send(&f);
        }
    }

    fn run(&self) {
        loop {
            let (tap, paused, stop) = {
                let s = self.lock();
                (s.tap.clone(), s.paused, s.stop)
            };
            if stop {
                return;
            }
            let Some(tap) = tap.filter(|_| !paused) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            // A deleted tap (the VM migrated away) fails reads: wait for the next one.
            match tap.recv(Duration::from_millis(5)) {
                Ok(Some(frame)) => self.on_frame(&tap, &frame),
                Ok(None) => {}
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            self.housekeeping(&tap);
        }
    }

    fn housekeeping(&self, tap: &VmTap) {
        let now = monotonic_ns();
        let reachable = self.config.reachable.as_nanos() as u64;
        let (need_arp, own) = {
            let mut s = self.lock();
            let expired = s
                .arp
                .is_none_or(|(_, at)| now.saturating_sub(at) >= reachable);
            let need_arp = expired && now.saturating_sub(s.last_arp_request_ns) >= ARP_RETRY_NS;
            if need_arp {
                s.last_arp_request_ns = now;
            }
            let own = now >= s.next_own_ns;
            if own {
                s.next_own_ns = now + OWN_TRAFFIC_EVERY_NS;
            }
            (need_arp, own)
        };
        if need_arp {
            let _ = tap.send(&frames::arp_request(
                self.config.mac,
                self.config.ip,
                self.config.gateway,
            ));
        }
        if own {
            if let Some(gw) = self.gateway_mac() {
                let f = frames::udp(self.config.mac, gw, self.config.ip, self.config.peer, 98);
                self.send_unicast(tap, &f, gw);
            }
        }
    }

    /// The cached gateway MAC: used while stale too, as Linux does while it re-validates.
    fn gateway_mac(&self) -> Option<MacAddr> {
        self.lock().arp.map(|(m, _)| m)
    }

    fn on_frame(&self, tap: &VmTap, frame: &[u8]) {
        let Some(eth) = parse_ethernet(frame) else {
            return;
        };
        let me = self.config.mac;
        if eth.dst != me.0 && eth.dst != [0xff; 6] {
            return;
        }
        if eth.ethertype == ETH_P_ARP {
            let Some(arp) = parse_arp(frame, eth.l3_offset) else {
                return;
            };
            if arp.op == ARP_OP_REQUEST && arp.target_ip == self.config.ip.octets() {
                let asker = MacAddr(arp.sender_mac);
                let reply = frames::arp(
                    ARP_OP_REPLY,
                    asker,
                    me,
                    self.config.ip,
                    asker,
                    Ipv4Addr::from(arp.sender_ip),
                    None,
                );
                let _ = tap.send(&reply);
            } else if arp.op == ARP_OP_REPLY && arp.sender_ip == self.config.gateway.octets() {
                self.lock().arp = Some((MacAddr(arp.sender_mac), monotonic_ns()));
            }
            return;
        }
        self.answer_ping(tap, frame);
    }

    fn answer_ping(&self, tap: &VmTap, frame: &[u8]) {
        let Ok(p) = SlicedPacket::from_ethernet(frame) else {
            return;
        };
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            return;
        };
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            return;
        };
        let Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() else {
            return;
        };
        if ip.header().destination_addr() != self.config.ip {
            return;
        }
        let Some(gw) = self.gateway_mac() else { return };
        let reply = frames::icmp_echo_reply(
            self.config.mac,
            gw,
            self.config.ip,
            ip.header().source_addr(),
            echo.id,
            echo.seq,
            icmp.payload(),
        );
        self.send_unicast(tap, &reply, gw);
    }

    /// Sends a frame to `dst` and keeps the truth: was `dst` the tap's MAC right now?
    fn send_unicast(&self, tap: &VmTap, frame: &[u8], dst: MacAddr) {
        let mut s = self.lock();
        let now = monotonic_ns();
        if s.judging && self.config.routed {
            let stale = Some(dst) != s.tap_mac;
            let open = s.windows.last().is_some_and(|w| w.end_ns.is_none());
            if stale && !open {
                s.windows.push(Window {
                    start_ns: now,
                    end_ns: None,
                });
            } else if !stale && open {
                if let Some(w) = s.windows.last_mut() {
                    w.end_ns = Some(now);
                }
            }
        }
        // Sent under the lock: the truth's timestamp and the write are not reordered
        // against a switch-over.
        let _ = tap.send(frame);
    }
}
