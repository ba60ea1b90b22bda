//! A small guest behind a tap, as QEMU runs one: answers ARP and ping, sends its own
//! traffic to its gateway, and keeps its gateway's neighbour entry as Linux does:
//! REACHABLE for a randomised reachable time, then STALE (still used), DELAY for 5 s at the
//! next use, PROBE (3 unicast ARP requests to the cached MAC, 1 s apart, the entry still
//! used), then broadcast requests until answered.
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

use crate::{frames, lab::netns::VmTap, model::clock::monotonic_ns, model::mac::MacAddr};

#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub name: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Where its traffic goes: the proxy-ARP gateway (routed) or the client (bridged).
    pub gateway: Ipv4Addr,
    /// Its own traffic goes to this address, every 100 ms.
    pub peer: Ipv4Addr,
    /// The base reachable time of its neighbour entries: each confirmation makes the entry
    /// REACHABLE for a random time between half of it and one and a half times it.
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

/// The gateway's neighbour entry, as Linux's NUD states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Nud {
    /// Nothing known: broadcast requests, every second, until answered.
    #[default]
    Incomplete,
    /// Confirmed; usable until `until_ns`.
    Reachable { until_ns: u64 },
    /// Past its reachable time, still used; the next use starts a DELAY.
    Stale,
    /// Used while stale: in `until_ns` the entry is probed, unless confirmed meanwhile.
    Delay { until_ns: u64 },
    /// Unicast requests to the cached MAC: `sent` so far, the next at `next_ns`.
    Probe { sent: u32, next_ns: u64 },
}

/// Linux's defaults: delay_first_probe_time, retrans_time, ucast_solicit.
const DELAY_NS: u64 = 5_000_000_000;
const RETRANS_NS: u64 = 1_000_000_000;
const UCAST_PROBES: u32 = 3;

#[derive(Default)]
struct State {
    tap: Option<Arc<VmTap>>,
    /// The host-side MAC of the tap the guest is behind now (what the lab set).
    tap_mac: Option<MacAddr>,
    paused: bool,
    stop: bool,
    /// The gateway's MAC (kept while STALE, DELAY and PROBE) and its entry's state.
    arp: Option<MacAddr>,
    nud: Nud,
    last_arp_request_ns: u64,
    next_own_ns: u64,
    /// Truth is kept only after the switch-over (before it the tap had the right MAC).
    judging: bool,
    windows: Vec<Window>,
    /// When the guest resumed, the first frame it sent and the first data frame it
    /// received after that (truth).
    resumed_ns: Option<u64>,
    first_sent_ns: Option<u64>,
    first_inbound_ns: Option<u64>,
}

/// Handle to a running guest; the guest itself runs on its own thread.
#[derive(Clone)]
pub struct Guest {
    pub config: GuestConfig,
    state: Arc<Mutex<State>>,
}

const OWN_TRAFFIC_EVERY_NS: u64 = 100_000_000;

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
        s.resumed_ns = Some(monotonic_ns());
        s.first_sent_ns = None;
        s.first_inbound_ns = None;
    }

    /// The first frame the guest sent after it resumed (truth).
    pub fn first_sent_ns(&self) -> Option<u64> {
        self.lock().first_sent_ns
    }

    /// The first data frame (not ARP) the guest received after it resumed (truth).
    pub fn first_inbound_ns(&self) -> Option<u64> {
        self.lock().first_inbound_ns
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

    /// A gratuitous ARP for its own address, as a guest sends after resuming (virtio's
    /// guest announce answers each of QEMU's RARP rounds with one).
    pub fn send_garp(&self) {
        let f = frames::garp(self.config.mac, self.config.ip);
        let mut s = self.lock();
        if let Some(tap) = s.tap.clone().filter(|_| !s.paused) {
            Self::sent(&mut s);
            let _ = tap.send(&f);
        }
    }

    /// Keeps the truth of the first frame sent after the resume.
    fn sent(s: &mut State) {
        if s.judging && s.first_sent_ns.is_none() {
            s.first_sent_ns = Some(monotonic_ns());
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
        let (request, own) = {
            let mut s = self.lock();
            let request = self.neighbour_step(&mut s, now);
            let own = now >= s.next_own_ns;
            if own {
                s.next_own_ns = now + OWN_TRAFFIC_EVERY_NS;
                // Using the entry: a stale one is validated after DELAY_NS.
                if s.nud == Nud::Stale {
                    s.nud = Nud::Delay {
                        until_ns: now + DELAY_NS,
                    };
                }
            }
            (request, own)
        };
        if let Some(dst) = request {
            let mut f = frames::arp_request(self.config.mac, self.config.ip, self.config.gateway);
            // A probe goes to the cached MAC (the kernel's "unicast solicit").
            f[..6].copy_from_slice(&dst.0);
            Self::sent(&mut self.lock());
            let _ = tap.send(&f);
        }
        if own {
            if let Some(gw) = self.gateway_mac() {
                let f = frames::udp(self.config.mac, gw, self.config.ip, self.config.peer, 98);
                self.send_unicast(tap, &f, gw);
            }
        }
    }

    /// Moves the gateway's entry along its states; an ARP request to send now, to this
    /// destination (the cached MAC while probing, else broadcast).
    fn neighbour_step(&self, s: &mut State, now: u64) -> Option<MacAddr> {
        match s.nud {
            Nud::Reachable { until_ns } if now >= until_ns => s.nud = Nud::Stale,
            Nud::Delay { until_ns } if now >= until_ns => {
                s.nud = Nud::Probe {
                    sent: 0,
                    next_ns: now,
                }
            }
            _ => {}
        }
        match s.nud {
            Nud::Probe { sent, next_ns } if now >= next_ns => {
                if sent >= UCAST_PROBES {
                    // Unanswered: forget the MAC and ask everyone.
                    s.arp = None;
                    s.nud = Nud::Incomplete;
                    s.last_arp_request_ns = now;
                    return Some(frames::BROADCAST);
                }
                s.nud = Nud::Probe {
                    sent: sent + 1,
                    next_ns: now + RETRANS_NS,
                };
                s.arp
            }
            Nud::Incomplete if now.saturating_sub(s.last_arp_request_ns) >= RETRANS_NS => {
                s.last_arp_request_ns = now;
                Some(frames::BROADCAST)
            }
            _ => None,
        }
    }

    /// A reachable time drawn as Linux does: uniformly between half and one and a half
    /// times the base.
    fn reachable_ns(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let base = self.config.reachable.as_nanos() as u64;
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        base / 2 + r % base.max(1)
    }

    /// The cached gateway MAC: used while stale too, as Linux does while it re-validates.
    fn gateway_mac(&self) -> Option<MacAddr> {
        self.lock().arp
    }

    fn on_frame(&self, tap: &VmTap, frame: &[u8]) {
        let Some(eth) = parse_ethernet(frame) else {
            return;
        };
        let me = self.config.mac;
        if eth.dst != me.0 && eth.dst != [0xff; 6] {
            return;
        }
        if eth.dst == me.0 && eth.ethertype != ETH_P_ARP {
            let mut s = self.lock();
            if s.judging && s.first_inbound_ns.is_none() {
                s.first_inbound_ns = Some(monotonic_ns());
            }
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
                Self::sent(&mut self.lock());
                let _ = tap.send(&reply);
            } else if arp.op == ARP_OP_REPLY && arp.sender_ip == self.config.gateway.octets() {
                let until_ns = monotonic_ns() + self.reachable_ns();
                let mut s = self.lock();
                s.arp = Some(MacAddr(arp.sender_mac));
                s.nud = Nud::Reachable { until_ns };
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
        Self::sent(&mut s);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(reachable_s: u64) -> Guest {
        Guest {
            config: GuestConfig {
                name: "g".into(),
                mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]),
                ip: Ipv4Addr::new(10, 65, 0, 2),
                gateway: Ipv4Addr::new(169, 254, 1, 1),
                peer: Ipv4Addr::new(10, 0, 0, 1),
                reachable: Duration::from_secs(reachable_s),
                routed: true,
            },
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    const S: u64 = 1_000_000_000;
    const OLD: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0, 0, 1]);

    /// Linux's neighbour states on the clock: REACHABLE until its time, STALE, DELAY 5 s
    /// from the first use, three unicast probes to the cached MAC 1 s apart, then broadcast.
    #[test]
    fn a_stale_gateway_is_probed_as_linux_does() {
        let g = guest(8);
        let mut s = State {
            arp: Some(OLD),
            nud: Nud::Reachable { until_ns: 10 * S },
            ..State::default()
        };
        assert_eq!(g.neighbour_step(&mut s, 9 * S), None);
        assert_eq!(g.neighbour_step(&mut s, 10 * S), None);
        assert_eq!(s.nud, Nud::Stale);
        // The next use starts the delay (housekeeping does this when it sends).
        s.nud = Nud::Delay {
            until_ns: 11 * S + DELAY_NS,
        };
        assert_eq!(g.neighbour_step(&mut s, 15 * S), None, "still in DELAY");
        let mut probes = Vec::new();
        for t in 16..=19 {
            if let Some(dst) = g.neighbour_step(&mut s, t * S) {
                probes.push((t, dst));
            }
        }
        assert_eq!(
            probes,
            [(16, OLD), (17, OLD), (18, OLD), (19, frames::BROADCAST)],
            "three unicast probes to the old MAC, then broadcast"
        );
        assert_eq!(s.arp, None, "an unanswered entry is dropped");
        assert_eq!(g.neighbour_step(&mut s, 20 * S), Some(frames::BROADCAST));
    }

    #[test]
    fn reachable_times_are_drawn_around_the_base() {
        let g = guest(8);
        for _ in 0..50 {
            let r = g.reachable_ns();
            assert!((4 * S..12 * S).contains(&r), "{r}");
        }
    }
}
