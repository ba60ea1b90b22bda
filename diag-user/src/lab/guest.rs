//! The lab's guest: a real Linux network stack in a namespace of its own, behind a tap of
//! its own (`eth0`), joined to the VM's tap on a hypervisor by a relay that copies frames
//! between the two taps' descriptors, as QEMU copies them between the guest's virtio queue
//! and the host's tap. Its ARP, its neighbour cache (REACHABLE, STALE, DELAY, unicast
//! probes to the cached MAC, the update a received ARP makes) and its answers to pings are
//! Linux's own: the lab models none of them.
//!
//! The relay also keeps the lab's ground truth: it sees every frame the guest sends and
//! knows the MAC the VM's tap has right then, so it knows exactly when the guest sent to a
//! MAC its tap did not have.
//!
//! Where it differs from a VM: while "paused" (the stop-and-copy) the guest's kernel runs
//! on and what it sends is discarded, where a paused VM sends nothing; the gratuitous ARPs
//! of virtio's guest announce are written by the relay for the guest (what its kernel
//! sends then, and nothing its neighbour cache is affected by).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use diag_common::{parse_arp, parse_ethernet, parse_nd, ETH_P_ARP, ETH_P_IPV6};

use crate::{
    frames,
    lab::netns::{Netns, SandboxError, VmTap},
    model::{clock::monotonic_ns, mac::MacAddr},
};

#[derive(Clone, Debug)]
pub struct GuestConfig {
    pub name: String,
    /// Its namespace's name (unique to the lab run).
    pub netns: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Where its traffic goes: the proxy-ARP gateway (routed) or the client (bridged).
    pub gateway: Ipv4Addr,
    /// Its own traffic goes to this address, every 100 ms.
    pub peer: Ipv4Addr,
    /// Whether it has an IPv4 address (`--ip 6`: none); its IPv6 address, if it speaks
    /// IPv6, and the peer its own IPv6 traffic goes to.
    pub v4: bool,
    pub ip6: Option<Ipv6Addr>,
    pub peer6: Option<Ipv6Addr>,
    /// Linux's `base_reachable_time` of its interface: each confirmation makes a neighbour
    /// entry REACHABLE for a random time between half of it and one and a half times it.
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

/// The guest's neighbour timers, as its kernel has them now (`ip ntable`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighTimers {
    /// The randomised reachable time in force.
    pub reachable_ms: u64,
    pub delay_probe_ms: u64,
    pub retrans_ms: u64,
    pub ucast_probes: u64,
}

impl NeighTimers {
    /// When a stale entry, used all the time, is replaced: confirmed at some moment, it
    /// turns DELAY after its reachable time; learnt unconfirmed (STALE: an IPv6 router
    /// from an advertisement), at its first use. It is probed after the delay, fails after
    /// its unicast probes, and the next frame's broadcast request is answered at once (an
    /// IPv6 guest moves to the router the destination advertised).
    pub fn stale_until_ns(&self, learnt: Learnt) -> u64 {
        let (since, reachable) = match learnt {
            Learnt::Confirmed(ns) => (ns, self.reachable_ms),
            Learnt::Stale(ns) => (ns, 0),
        };
        since + (reachable + self.delay_probe_ms + self.retrans_ms * self.ucast_probes) * 1_000_000
    }
}

/// How the guest's entry for its gateway was last learnt (monotonic ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learnt {
    /// Confirmed: the gateway's ARP reply, or a solicited advertisement.
    Confirmed(u64),
    /// Learnt without confirmation: a Router Advertisement's source link-layer address.
    Stale(u64),
}

const OWN_TRAFFIC_EVERY: Duration = Duration::from_millis(100);
/// How long the relay waits on its descriptors before it looks at its state again.
const RELAY_POLL_MS: i32 = 5;

#[derive(Default)]
struct State {
    tap: Option<Arc<VmTap>>,
    /// The host-side MAC of the tap the guest is behind now (what the lab set).
    tap_mac: Option<MacAddr>,
    paused: bool,
    stop: bool,
    /// The guest has sent to a resolved unicast MAC (it knows its gateway).
    resolved: bool,
    /// How the guest last learnt its gateway, and that as of its last resume (what its
    /// cached entry's timers run from).
    gateway_learnt: Option<Learnt>,
    learnt_at_resume: Option<Learnt>,
    /// Truth is kept only after the switch-over (before it the tap had the right MAC).
    judging: bool,
    windows: Vec<Window>,
    /// The families (bits, see `family_bit`) whose frames go to a stale MAC now.
    stale_families: u8,
    first_sent_ns: Option<u64>,
    first_inbound_ns: Option<u64>,
}

/// Handle to a running guest; its relay and its own traffic run on threads of their own.
#[derive(Clone)]
pub struct Guest {
    pub config: GuestConfig,
    state: Arc<Mutex<State>>,
    ns: Arc<Netns>,
}

impl Guest {
    /// Makes the guest's namespace and interface, and starts its relay to `tap`.
    pub fn start(
        config: GuestConfig,
        tap: Arc<VmTap>,
        tap_mac: MacAddr,
    ) -> Result<(Self, JoinHandle<()>), SandboxError> {
        let ns = Arc::new(Netns::named(&config.netns)?);
        let eth0 = VmTap::create(&ns, "eth0", config.mac)?;
        configure(&ns, &config)?;
        let guest = Self {
            config,
            state: Arc::new(Mutex::new(State {
                tap: Some(tap),
                tap_mac: Some(tap_mac),
                ..State::default()
            })),
            ns,
        };
        let traffic = guest.start_own_traffic()?;
        let g = guest.clone();
        let relay = std::thread::Builder::new()
            .name(format!("lab-relay-{}", g.config.name))
            .spawn(move || {
                g.relay(&eth0);
                let _ = traffic.join();
            })
            .map_err(|e| SandboxError::Io {
                what: "starting the guest's relay".into(),
                source: e,
            })?;
        Ok((guest, relay))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM stops (QEMU's final stop-and-copy): nothing goes in or out of it.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// The VM runs again behind `tap`, its memory (its neighbour cache) intact.
    pub fn resume_on(&self, tap: Arc<VmTap>, tap_mac: MacAddr) {
        let mut s = self.lock();
        s.tap = Some(tap);
        s.tap_mac = Some(tap_mac);
        s.paused = false;
        s.judging = true;
        s.learnt_at_resume = s.gateway_learnt;
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
        self.lock().resolved
    }

    /// How it last learnt its gateway before it last resumed.
    pub fn learnt_at_resume(&self) -> Option<Learnt> {
        self.lock().learnt_at_resume
    }

    pub fn tap(&self) -> Option<Arc<VmTap>> {
        self.lock().tap.clone()
    }

    /// Stale windows since the switch-over.
    pub fn windows(&self) -> Vec<Window> {
        self.lock().windows.clone()
    }

    /// Its kernel's neighbour timers on `eth0` now: ARP's, or neighbour discovery's for
    /// an IPv6-only guest.
    pub fn neigh_timers(&self) -> Option<NeighTimers> {
        let table = if self.config.v4 {
            "arp_cache"
        } else {
            "ndisc_cache"
        };
        let out = self
            .ns
            .ip(&["-j", "ntable", "show", "dev", "eth0", "name", table])
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let t = v.as_array()?.first()?;
        let n = |k: &str| t.get(k).and_then(|x| x.as_u64());
        Some(NeighTimers {
            reachable_ms: n("reachable")?,
            delay_probe_ms: n("delay_probe")?,
            retrans_ms: n("retrans")?,
            ucast_probes: n("ucast_probes")?,
        })
    }

    /// A gratuitous ARP for its own address, and an unsolicited override Neighbour
    /// Advertisement for its IPv6 one, as a guest's kernel sends after resuming (virtio's
    /// guest announce answers each of QEMU's RARP rounds with them): of each family the
    /// guest speaks.
    pub fn send_garp(&self) {
        let mut out = Vec::new();
        if self.config.v4 {
            out.push(frames::garp(self.config.mac, self.config.ip));
        }
        if let Some(ip6) = self.config.ip6 {
            let all = frames::V6Ends::to_group(self.config.mac, ip6, frames::ALL_NODES);
            let o = diag_common::frame::NA_FLAG_OVERRIDE;
            out.push(frames::neighbor_advert(all, ip6, o));
        }
        let mut s = self.lock();
        if let Some(tap) = s.tap.clone().filter(|_| !s.paused) {
            if s.judging && s.first_sent_ns.is_none() {
                s.first_sent_ns = Some(monotonic_ns());
            }
            for f in &out {
                let _ = tap.send(f);
            }
        }
    }

    /// UDP to its peer every 100 ms from inside the guest, so that it uses its gateway's
    /// entry all the time, as a VM with traffic does.
    fn start_own_traffic(&self) -> Result<JoinHandle<Result<(), SandboxError>>, SandboxError> {
        let state = self.state.clone();
        let peer4 = self
            .config
            .v4
            .then(|| SocketAddr::V4(SocketAddrV4::new(self.config.peer, 9)));
        let peer6 = self.config.peer6.map(|p| SocketAddr::new(p.into(), 9));
        self.ns.spawn(move || {
            let bind = |any: &str| UdpSocket::bind(any).ok();
            let socks: Vec<(UdpSocket, SocketAddr)> = [
                peer4.and_then(|p| Some((bind("0.0.0.0:0")?, p))),
                peer6.and_then(|p| Some((bind("[::]:0")?, p))),
            ]
            .into_iter()
            .flatten()
            .collect();
            loop {
                if state.lock().map(|s| s.stop).unwrap_or(true) {
                    return;
                }
                // Unresolved or unreachable for a while: the kernel says so, the lab
                // carries on.
                for (sock, peer) in &socks {
                    let _ = sock.send_to(&[0u8; 56], peer);
                }
                std::thread::sleep(OWN_TRAFFIC_EVERY);
            }
        })
    }

    /// Copies frames between the guest's `eth0` and the VM's tap until stopped.
    fn relay(&self, eth0: &VmTap) {
        loop {
            let (tap, paused, stop) = {
                let s = self.lock();
                (s.tap.clone(), s.paused, s.stop)
            };
            if stop {
                return;
            }
            let mut fds = vec![libc::pollfd {
                fd: eth0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(t) = &tap {
                fds.push(libc::pollfd {
                    fd: t.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: a valid array of pollfds of the length given.
            let r =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, RELAY_POLL_MS) };
            if r <= 0 {
                continue;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Ok(Some(f)) = eth0.recv(Duration::ZERO) {
                    if let Some(t) = tap.as_ref().filter(|_| !paused) {
                        self.to_host(t, &f);
                    }
                }
            }
            let Some(t) = tap else { continue };
            if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                // The tap was deleted (the VM left this host): wait for the next.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                if let Ok(Some(f)) = t.recv(Duration::ZERO) {
                    if !paused {
                        self.to_guest(eth0, &f);
                    }
                }
            }
        }
    }

    /// A frame the guest sent, into the VM's tap; the truth of what it was addressed to.
    fn to_host(&self, tap: &VmTap, frame: &[u8]) {
        let mut s = self.lock();
        let now = monotonic_ns();
        if s.judging && s.first_sent_ns.is_none() {
            s.first_sent_ns = Some(now);
        }
        if let Some(eth) = parse_ethernet(frame) {
            let dst = MacAddr(eth.dst);
            // Data to a resolved neighbour (ARP's and neighbour discovery's own frames are
            // no part of the window: tapwatch's neither).
            let nd = eth.ethertype == ETH_P_IPV6 && parse_nd(frame, eth.l3_offset).is_some();
            if dst.is_unicast() && eth.ethertype != ETH_P_ARP && !nd {
                s.resolved = true;
                if s.judging && self.config.routed {
                    let stale = Some(dst) != s.tap_mac;
                    note_window(&mut s, family_bit(eth.ethertype), stale, now);
                }
            }
        }
        // Written under the lock: the truth's timestamp and the write are not reordered
        // against a switch-over.
        let _ = tap.send(frame);
    }

    /// A frame the host sent the VM, into the guest; the truth of the first data frame.
    fn to_guest(&self, eth0: &VmTap, frame: &[u8]) {
        if let Some(eth) = parse_ethernet(frame) {
            let mut s = self.lock();
            let nd = eth.ethertype == ETH_P_IPV6 && parse_nd(frame, eth.l3_offset).is_some();
            if eth.dst == self.config.mac.0 && eth.ethertype != ETH_P_ARP && !nd {
                if s.judging && s.first_inbound_ns.is_none() {
                    s.first_inbound_ns = Some(monotonic_ns());
                }
            } else if let Some(learnt) = self.learns_gateway(frame, &eth, s.judging) {
                s.gateway_learnt = Some(learnt);
            }
        }
        let _ = eth0.send(frame);
    }

    /// A frame that sets the guest's entry for its gateway (its timers run from it): the
    /// gateway's ARP reply; for an IPv6-only guest, a solicited Neighbour Advertisement (a
    /// routed guest's one neighbour is its router), or, unconfirmed, a Router
    /// Advertisement before the migration (the source's: the router it keeps).
    fn learns_gateway(
        &self,
        frame: &[u8],
        eth: &diag_common::frame::EthernetView,
        judging: bool,
    ) -> Option<Learnt> {
        use diag_common::frame::{
            ARP_OP_REPLY, NA_FLAG_SOLICITED, ND_NEIGHBOR_ADVERT, ND_ROUTER_ADVERT,
        };
        let now = monotonic_ns();
        if eth.ethertype == ETH_P_ARP {
            let reply = parse_arp(frame, eth.l3_offset).is_some_and(|a| {
                a.op == ARP_OP_REPLY && a.sender_ip == self.config.gateway.octets()
            });
            return reply.then_some(Learnt::Confirmed(now));
        }
        if self.config.v4 || eth.ethertype != ETH_P_IPV6 {
            return None;
        }
        match parse_nd(frame, eth.l3_offset)? {
            n if n.icmp_type == ND_NEIGHBOR_ADVERT && n.na_flags & NA_FLAG_SOLICITED != 0 => {
                Some(Learnt::Confirmed(now))
            }
            n if n.icmp_type == ND_ROUTER_ADVERT && !judging => Some(Learnt::Stale(now)),
            _ => None,
        }
    }
}

/// Opens or closes the stale window at a frame the guest sent at `now`.
/// A dual-stack guest's window lasts until each family that went stale is right again
/// (its ARP and neighbour caches are apart): `family` is that frame's bit.
fn note_window(s: &mut State, family: u8, stale: bool, now: u64) {
    let open = s.windows.last().is_some_and(|w| w.end_ns.is_none());
    if stale {
        s.stale_families |= family;
        if !open {
            s.windows.push(Window {
                start_ns: now,
                end_ns: None,
            });
        }
        return;
    }
    s.stale_families &= !family;
    if open && s.stale_families == 0 {
        if let Some(w) = s.windows.last_mut() {
            w.end_ns = Some(now);
        }
    }
}

/// A frame's address family as a bit (IPv4 1, IPv6 2; any other ethertype both).
fn family_bit(ethertype: u16) -> u8 {
    match ethertype {
        0x0800 => 1,
        ETH_P_IPV6 => 2,
        _ => 3,
    }
}

/// The guest's address, routes and timers, as a cloud image's network set-up leaves them.
fn configure(ns: &Netns, c: &GuestConfig) -> Result<(), SandboxError> {
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
            &format!(
                "net.ipv4.neigh.eth0.base_reachable_time_ms={}",
                c.reachable.as_millis().max(1)
            ),
        ],
    )?;
    if c.v4 {
        configure_v4(ns, c)?;
    }
    if let Some(ip6) = c.ip6 {
        configure_v6(ns, c, ip6)?;
    }
    Ok(())
}

fn configure_v4(ns: &Netns, c: &GuestConfig) -> Result<(), SandboxError> {
    let gw = c.gateway.to_string();
    if c.routed {
        // Calico's guests: a /32, the gateway on-link, the default route through it.
        ns.ip(&["addr", "add", &format!("{}/32", c.ip), "dev", "eth0"])?;
        ns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
    } else {
        ns.ip(&["addr", "add", &format!("{}/24", c.ip), "dev", "eth0"])?;
    }
    ns.ip(&[
        "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
    ])?;
    Ok(())
}

/// IPv6 as a routed cloud guest has it: its address, and no router until a Router
/// Advertisement names one (the lab's hypervisor sends it); on a bridge, an address in the
/// client's subnet.
fn configure_v6(ns: &Netns, c: &GuestConfig, ip6: Ipv6Addr) -> Result<(), SandboxError> {
    super::ipv6::enable(ns, false, &["eth0"])?;
    ns.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.eth0.accept_ra=1",
            &format!(
                "net.ipv6.neigh.eth0.base_reachable_time_ms={}",
                c.reachable.as_millis().max(1)
            ),
        ],
    )?;
    let len = if c.routed { 128 } else { 64 };
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/{len}"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(())
}
