//! `tapwatch lab`: two simulated hypervisors in network namespaces, a client pinging a VM,
//! and a live migration between them, so the stale-MAC blackout can be seen without VMs.
//!
//! ```text
//!   client ns ──veth── src ns (hypervisor) ── tap ── guest (before)
//!             └─veth── dst ns (hypervisor) ── tap ── guest (after)   ◄── tapwatch watches here
//! ```
//!
//! Routed scenarios are wired like Calico: the tap is the VM's gateway (proxy ARP for
//! 169.254.1.1, a /32 route to the VM via the tap), and the client's route to the VM moves
//! from the source to the destination at the switch-over. In `bridged` the taps sit on
//! Linux bridges in one L2 segment with the client, and QEMU's RARP teaches the client's
//! bridge where the VM went.

pub mod client;

pub mod guest;
pub mod ipv6;
pub mod netns;
mod topology;
mod vms;
mod watching;

use std::{
    net::Ipv4Addr,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::{
    collect::{caps, WatchError},
    frames,
    lab::netns::{run, SandboxError},
    model::clock::{monotonic_ns, Ts, WallClock},
    model::mac::MacAddr,
    model::{LabEvent, LabRecord, Record},
    nudge::{GatewayArg, Gateways, NudgeConfig, Nudger},
    report::pipeline::Pipeline,
};
use client::Pings;
use guest::{Guest, GuestConfig};
use topology::Topology;
pub use vms::{LabVms, Side};
use watching::{Attached, LabWatcher};

pub use crate::model::Scenario;

/// Whether the scenario puts the taps on bridges.
trait Bridged {
    fn bridged(self) -> bool;
}

impl Bridged for Scenario {
    fn bridged(self) -> bool {
        self == Scenario::Bridged
    }
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    pub scenario: Scenario,
    pub vms: usize,
    /// The guests' ARP reachable time.
    pub reachable: Duration,
    /// Steady traffic before the migration.
    pub before: Duration,
    /// Stop after this long; by default a headless run stops once the story is over.
    pub duration: Option<Duration>,
    /// The guest also sends a gratuitous ARP when it resumes.
    pub garp: bool,
    pub interval: Duration,
    /// How long after the resume the network (the fabric's route, BGP) keeps delivering
    /// the VM's traffic to the source: the SDN's switch-over.
    pub sdn_delay: Duration,
    /// tapwatch nudges each VM when its blackout begins (`--remediate`).
    pub remediate: bool,
    /// The address families the guests speak (`--ip`).
    pub ip: ipv6::LabIp,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Capabilities(#[from] caps::MissingCapabilities),
    #[error("building the lab network: {0}")]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("the lab's {what} thread failed: {detail}")]
    Thread { what: &'static str, detail: String },
    #[error("--vms must be between 1 and {max}")]
    TooManyVms { max: usize },
    #[error("the kubevirt scenario's guests speak IPv4 only: leave out --ip or give --ip 4")]
    KubevirtIpv4Only,
    #[error("the guest {0} never learned its gateway's MAC: the lab network is not working")]
    NoGateway(String),
}

pub const MAX_VMS: usize = 32;
const PREFIX: &str = "twlab";
/// QEMU's announce-self defaults: 5 rounds, 50 ms apart, growing by 100 ms.
const ANNOUNCE_GAPS_MS: [u64; 4] = [50, 150, 250, 350];
/// networking-calico's hard-coded port MAC.
const CALICO_MAC: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const CLIENT_BRIDGED: Ipv4Addr = Ipv4Addr::new(10, 65, 0, 1);

/// One simulated VM's fixed facts.
struct VmSpec {
    index: usize,
    name: String,
    /// Its tap's name (in its pod's namespace: `kubevirt`).
    tap: String,
    /// The hypervisor's device towards the VM, where its routes point: the tap, or the
    /// node's end of the pod's veth (`kubevirt`).
    node_dev: String,
    mac: MacAddr,
    ip: Ipv4Addr,
    ip6: std::net::Ipv6Addr,
}

impl VmSpec {
    fn new(i: usize, scenario: Scenario) -> Self {
        let tap = if scenario == Scenario::Kubevirt {
            "tap0".to_string()
        } else {
            format!("tap{:08x}-{:02x}", 0x4f1c_2a9e_u32 + i as u32, 7)
        };
        Self {
            index: i,
            name: format!("lab-vm-{}", i + 1),
            node_dev: if scenario == Scenario::Kubevirt {
                format!("vp{i}")
            } else {
                tap.clone()
            },
            tap,
            mac: MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc_u8.wrapping_add(i as u8)]),
            ip: Ipv4Addr::new(10, 65, 0, 2 + i as u8),
            ip6: ipv6::guest_ip6(i),
        }
    }

    /// What libvirt sets: the guest MAC with its first byte replaced by fe.
    fn libvirt_tap_mac(&self) -> MacAddr {
        let mut b = self.mac.0;
        b[0] = 0xfe;
        MacAddr(b)
    }
}

/// Removes namespaces left by labs whose process is gone (after a kill -9).
pub fn clean_leftovers() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A pinger's thread in the client's namespace.
type PingerThread = JoinHandle<Result<std::io::Result<()>, SandboxError>>;

/// A running VM in the lab.
struct LabVm {
    spec: VmSpec,
    guest: Guest,
    guest_thread: Option<JoinHandle<()>>,
    pings: Pings,
    pinger: Option<JoinHandle<Result<std::io::Result<()>, SandboxError>>>,
    /// A dual-stack VM's IPv6 pings (`pings` are its IPv4 ones).
    pings6: Option<(Pings, PingerThread)>,
    switchover_ns: Option<u64>,
    /// When the guest paused and resumed, and when QEMU's first RARP went (truth).
    paused_ns: Option<u64>,
    resumed_ns: Option<u64>,
    first_rarp_ns: Option<u64>,
    /// When the fabric's route moves to the destination (after `--sdn-delay`).
    route_due: Option<Instant>,
}

/// Everything the lab runs, torn down in order on drop.
struct Lab {
    topo: Topology,
    /// Taps the watcher said it attached to.
    attached: Attached,
    /// Taps the source's watcher attached to (with --record).
    src_attached: Option<Attached>,
    /// What libvirt says on each side (the watchers read it).
    src_vms: Arc<LabVms>,
    dst_vms: Arc<LabVms>,
    vms: Vec<LabVm>,
    clock: WallClock,
    opts: LabOptions,
    pipeline: Arc<Pipeline>,
}

impl Lab {
    fn lab_record(&self, event: LabEvent, vm: Option<&str>, detail: Option<String>) {
        self.pipeline.emit(&Record::Lab(LabRecord {
            ts: Ts(self.clock.now()),
            event,
            vm: vm.map(str::to_string),
            scenario: Some(self.opts.scenario),
            detail,
            ..LabRecord::default()
        }));
    }

    /// The name tapwatch knows a VM's tap by on the source or destination: a pod's tap is
    /// `POD/tap0`.
    fn watched_name(&self, spec: &VmSpec, dst: bool) -> String {
        if self.opts.scenario == Scenario::Kubevirt {
            let pod = self.topo.pod_name(dst, spec.index);
            return crate::collect::namespaces::qualified(&pod, &spec.tap);
        }
        spec.tap.clone()
    }

    /// The MAC the guest's frames must go to on the source (`dst`: destination) for the
    /// truth: its tap's, or (`kubevirt`) its gateway's on that node.
    fn sends_to(&self, spec: &VmSpec, dst: bool) -> MacAddr {
        if self.opts.scenario == Scenario::Kubevirt {
            return topology::node_gateway_mac(dst, spec.index);
        }
        spec.libvirt_tap_mac()
    }

    fn start_vms(&mut self) -> Result<(), LabError> {
        let scenario = self.opts.scenario;
        for i in 0..self.opts.vms {
            let spec = VmSpec::new(i, scenario);
            let tap = self
                .topo
                .plug(&self.topo.src, &spec, spec.libvirt_tap_mac(), scenario)?;
            if let Some(a) = &self.src_attached {
                // Recorded from its first frame on the source.
                a.wait(&self.watched_name(&spec, false));
            }
            if !scenario.bridged() {
                self.topo.route_to(false, &spec)?;
            }
            let config = GuestConfig {
                name: spec.name.clone(),
                netns: format!("{PREFIX}-{}-g{i}", std::process::id()),
                mac: spec.mac,
                ip: spec.ip,
                gateway: if scenario.bridged() {
                    CLIENT_BRIDGED
                } else {
                    GATEWAY
                },
                peer: if scenario.bridged() {
                    CLIENT_BRIDGED
                } else {
                    Ipv4Addr::new(192, 168, 10, 1)
                },
                reachable: self.opts.reachable,
                routed: !scenario.bridged(),
                v4: self.opts.ip.v4(),
                ip6: self.opts.ip.v6().then_some(spec.ip6),
                peer6: self.opts.ip.v6().then_some(if scenario.bridged() {
                    ipv6::CLIENT_BRIDGED6
                } else {
                    ipv6::link6(10, 1)
                }),
            };
            let (guest, guest_thread) = Guest::start(config, tap, self.sends_to(&spec, false))?;
            if self.opts.ip.v6() && !scenario.bridged() {
                // The source host's router advertisement: the guest's default router.
                ipv6::advertise_router(&self.topo.src, &spec.tap, spec.libvirt_tap_mac())?;
            }
            let (pings, pinger) = self.pinger(&spec, i, self.opts.ip.v4())?;
            let pings6 = match self.opts.ip {
                ipv6::LabIp::Dual => Some(self.pinger(&spec, i, false)?),
                _ => None,
            };
            self.vms.push(LabVm {
                spec,
                guest,
                guest_thread: Some(guest_thread),
                pings,
                pinger: Some(pinger),
                pings6,
                switchover_ns: None,
                paused_ns: None,
                resumed_ns: None,
                first_rarp_ns: None,
                route_due: None,
            });
        }
        // Readiness: every guest has resolved its gateway and the client hears back.
        let deadline = Instant::now() + Duration::from_secs(10);
        for vm in &self.vms {
            let answered6 = || vm.pings6.as_ref().is_none_or(|(p, _)| p.replies() > 0);
            while !(vm.guest.knows_gateway() && vm.pings.replies() > 0 && answered6()) {
                if Instant::now() > deadline {
                    return Err(LabError::NoGateway(vm.spec.name.clone()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// The client's pinger of `spec`, over IPv4 (`v4`) or IPv6.
    fn pinger(
        &self,
        spec: &VmSpec,
        i: usize,
        v4: bool,
    ) -> Result<(Pings, PingerThread), SandboxError> {
        let pings = Pings::default();
        let p = pings.clone();
        let (target, target6, id) = (spec.ip, spec.ip6, 0x7700 + i as u16);
        let target = if v4 { target.into() } else { target6.into() };
        let handle = self
            .topo
            .client
            .spawn(move || client::ping_loop(target, id, p))?;
        Ok((pings, handle))
    }

    /// Live-migrates every VM to the destination, as Nova and QEMU do.
    fn migrate(&mut self) -> Result<(), LabError> {
        let scenario = self.opts.scenario;
        // Pre-live-migration: Nova plugs the destination tap before the switch-over.
        let mut dst_taps = Vec::new();
        for vm in &self.vms {
            let mac = if scenario == Scenario::StaleMac {
                CALICO_MAC
            } else {
                vm.spec.libvirt_tap_mac()
            };
            let tap = self.topo.plug(&self.topo.dst, &vm.spec, mac, scenario)?;
            self.attached.wait(&self.watched_name(&vm.spec, true));
            self.lab_record(
                LabEvent::DstTap,
                Some(&vm.spec.name),
                Some(format!("{} with MAC {mac}", vm.spec.tap)),
            );
            dst_taps.push((tap, mac));
        }
        // QEMU copies the guest's memory while it still runs on the source: seconds for a
        // real VM. The destination's taps wait, and tapwatch judges them meanwhile.
        std::thread::sleep(Duration::from_secs(1).max(self.opts.interval * 2));
        // Switch-over: the guest stops (libvirt marks it paused for the migration), the
        // source tap goes, the host's route moves; the fabric's route follows after the
        // SDN's delay.
        for (i, (tap, mac)) in dst_taps.into_iter().enumerate() {
            let name = self.vms[i].spec.name.clone();
            self.vms[i].guest.pause();
            let now = monotonic_ns();
            self.vms[i].switchover_ns = Some(now);
            self.vms[i].paused_ns = Some(now);
            self.src_vms.switch(&name);
            self.lab_record(LabEvent::Switchover, Some(&name), None);
            self.topo.unplug_src(&self.vms[i].spec)?;
            if !scenario.bridged() {
                self.topo.host_route(&self.vms[i].spec)?;
            }
            // QEMU's final stop-and-copy.
            std::thread::sleep(Duration::from_millis(50));
            let sends_to = if scenario == Scenario::Kubevirt {
                topology::node_gateway_mac(true, i)
            } else {
                mac
            };
            self.vms[i].guest.resume_on(tap, sends_to);
            self.vms[i].resumed_ns = Some(monotonic_ns());
            if self.opts.ip.v6() && !scenario.bridged() {
                // The destination host's router advertisement, from its tap's link-local
                // address, as the guest's solicitation after its announce gets it.
                let name = self.vms[i].spec.tap.clone();
                ipv6::advertise_router(&self.topo.dst, &name, mac)?;
            }
            self.dst_vms.switch(&name);
            self.lab_record(LabEvent::Resume, Some(&name), None);
            if !scenario.bridged() {
                self.vms[i].route_due = Some(Instant::now() + self.opts.sdn_delay);
            }
            if self.opts.garp {
                self.vms[i].guest.send_garp();
            }
            self.move_due_routes()?;
        }
        if scenario != Scenario::NoAnnounce {
            for gap in std::iter::once(0).chain(ANNOUNCE_GAPS_MS) {
                std::thread::sleep(Duration::from_millis(gap));
                for vm in self.vms.iter_mut() {
                    let Some(tap) = vm.guest.tap() else { continue };
                    let _ = tap.send(&frames::rarp_announce(vm.spec.mac, None));
                    vm.first_rarp_ns.get_or_insert_with(monotonic_ns);
                    // virtio's guest announce: the guest answers each round with a GARP.
                    vm.guest.send_garp();
                }
                self.move_due_routes()?;
            }
            self.lab_record(
                LabEvent::Announce,
                None,
                Some(format!(
                    "QEMU sent 5 RARP rounds, the guest {} after each",
                    match self.opts.ip {
                        ipv6::LabIp::V4 => "a GARP",
                        ipv6::LabIp::V6 => "an unsolicited NA",
                        ipv6::LabIp::Dual => "a GARP and an unsolicited NA",
                    }
                )),
            );
        }
        Ok(())
    }

    /// Moves the fabric's route to the destination for every VM whose SDN delay is over.
    fn move_due_routes(&mut self) -> Result<(), LabError> {
        let now = Instant::now();
        for i in 0..self.vms.len() {
            if self.vms[i].route_due.is_some_and(|due| now >= due) {
                self.vms[i].route_due = None;
                self.topo.client_route(true, &self.vms[i].spec)?;
                let name = self.vms[i].spec.name.clone();
                self.lab_record(
                    LabEvent::Route,
                    Some(&name),
                    Some("the fabric's route to the VM now leads to the destination".into()),
                );
            }
        }
        Ok(())
    }

    /// The story is over: every stale window closed (or none opened) long enough ago for
    /// tapwatch to have judged it (a family that goes quiet is known only by counters that
    /// stop rising over a stats interval), the client's pings are answered again, and the
    /// migration is at least two seconds old.
    fn story_over(&self) -> bool {
        let now = monotonic_ns();
        let settle = (self.opts.interval * 3)
            .max(Duration::from_secs(2))
            .as_nanos() as u64;
        self.vms.iter().all(|vm| {
            let closed = vm
                .guest
                .windows()
                .iter()
                .all(|w| w.end_ns.is_some_and(|e| now > e + settle));
            let since = vm.switchover_ns.unwrap_or(now);
            let fresh = |p: &Pings| {
                p.last_reply_ns()
                    .is_some_and(|t| t > since && now.saturating_sub(t) < 200_000_000)
            };
            let answered = fresh(&vm.pings) && vm.pings6.as_ref().is_none_or(|(p, _)| fresh(p));
            closed && answered && now > since + 2_000_000_000
        })
    }

    fn truths(&self) -> Vec<Record> {
        let now = monotonic_ns();
        // What tapwatch foresaw of each VM's destination tap before it resumed.
        // What tapwatch foresaw of each VM's destination tap before it resumed, and whether
        // it nudged it.
        let known: Vec<(Option<bool>, bool)> = {
            let head = self.pipeline.head();
            self.vms
                .iter()
                .map(|vm| {
                    let t = head.engine.tap(&self.watched_name(&vm.spec, true));
                    (
                        t.map(|t| t.forecast.as_ref().is_some_and(|f| f.at_risk)),
                        t.is_some_and(|t| t.nudge.is_some()),
                    )
                })
                .collect()
        };
        self.vms
            .iter()
            .zip(known)
            .map(|(vm, (foreseen, nudged))| {
                let since = vm.switchover_ns.unwrap_or(now);
                let windows = vm.guest.windows();
                let stale: u64 = windows
                    .first()
                    .map(|w| w.end_ns.unwrap_or(now).saturating_sub(w.start_ns) / 1_000_000)
                    .unwrap_or(0);
                // The switch-over as tapwatch sees it: QEMU's first RARP, else the guest's
                // first frame after it resumed.
                let sw = vm.first_rarp_ns.or(vm.guest.first_sent_ns());
                let ms = |a: u64, b: u64| a.saturating_sub(b) / 1_000_000;
                let inbound = sw.zip(vm.guest.first_inbound_ns()).map(|(s, i)| ms(i, s));
                let outbound = sw.and_then(|s| match windows.first() {
                    Some(w) => w.end_ns.map(|e| ms(e, s)),
                    None => vm.guest.first_sent_ns().map(|_| 0),
                });
                Record::Lab(LabRecord {
                    ts: Ts(self.clock.now()),
                    event: LabEvent::Truth,
                    vm: Some(vm.spec.name.clone()),
                    scenario: Some(self.opts.scenario),
                    stale_window_ms: Some(stale),
                    client_outage_ms: Some(
                        vm.pings.outage_ms(since, now).max(
                            vm.pings6
                                .as_ref()
                                .map_or(0, |(p, _)| p.outage_ms(since, now)),
                        ),
                    ),
                    inbound_gap_ms: inbound,
                    outbound_gap_ms: outbound,
                    downtime_ms: vm.paused_ns.zip(vm.resumed_ns).map(|(p, r)| ms(r, p)),
                    foreseen,
                    forecast_right: foreseen.map(|f| f == (stale > 0)),
                    nudged: self.opts.remediate.then_some(nudged),
                    unnudged_window_ms: self
                        .opts
                        .remediate
                        .then(|| unnudged_ms(vm, windows.first()))
                        .flatten(),
                    detail: None,
                })
            })
            .collect()
    }
}

/// How long the first stale window would have lasted without a nudge: until the guest's
/// own timers would have replaced its gateway's entry (see [`guest::NeighTimers`]).
fn unnudged_ms(vm: &LabVm, window: Option<&guest::Window>) -> Option<u64> {
    let w = window?;
    let until = vm
        .guest
        .neigh_timers()?
        .stale_until_ns(vm.guest.learnt_at_resume()?);
    Some(until.saturating_sub(w.start_ns) / 1_000_000)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.guest.stop();
            vm.pings.stop();
            if let Some((p, t)) = vm.pings6.take() {
                p.stop();
                let _ = t.join();
            }
            if let Some(t) = vm.guest_thread.take() {
                let _ = t.join();
            }
            if let Some(t) = vm.pinger.take() {
                let _ = t.join();
            }
        }
    }
}

/// How a lab run ends.
pub struct LabRun {
    /// Asks the lab to stop (the view's quit key).
    pub stop: oneshot::Sender<()>,
    /// The lab itself: lab steps, tapwatch's own records, and last the truth go into the
    /// pipeline; the pipeline is finished when it ends.
    pub handle: JoinHandle<Result<(), LabError>>,
}

/// Builds the lab and starts the story on background threads; tapwatch watches the
/// destination hypervisor and feeds `pipeline`. `headless` runs end by themselves once the
/// story is over.
pub fn start(
    opts: LabOptions,
    headless: bool,
    pipeline: Arc<Pipeline>,
    src_pipeline: Option<Arc<Pipeline>>,
) -> Result<LabRun, LabError> {
    caps::check()?;
    if opts.vms == 0 || opts.vms > MAX_VMS {
        return Err(LabError::TooManyVms { max: MAX_VMS });
    }
    if opts.scenario == Scenario::Kubevirt && opts.ip != ipv6::LabIp::V4 {
        return Err(LabError::KubevirtIpv4Only);
    }
    clean_leftovers();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let r = story(
            opts,
            headless,
            pipeline.clone(),
            src_pipeline.clone(),
            stop_rx,
        );
        if let Some(p) = src_pipeline {
            p.finish();
        }
        pipeline.finish();
        r
    });
    Ok(LabRun {
        stop: stop_tx,
        handle,
    })
}

fn story(
    opts: LabOptions,
    headless: bool,
    pipeline: Arc<Pipeline>,
    src_pipeline: Option<Arc<Pipeline>>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), LabError> {
    let started = Instant::now();
    let topo = Topology::build(opts.scenario, opts.ip)?;
    let (mut src_vms, mut dst_vms) = (LabVms::new(&opts, Side::Src), LabVms::new(&opts, Side::Dst));
    let kubevirt = opts.scenario == Scenario::Kubevirt;
    if kubevirt {
        src_vms = src_vms.in_pods(topo.pod_prefix(false));
        dst_vms = dst_vms.in_pods(topo.pod_prefix(true));
    }
    let (src_vms, dst_vms) = (Arc::new(src_vms), Arc::new(dst_vms));
    // tapwatch, as the on-call engineer runs it: on the destination hypervisor; with
    // --record, on the source too, into a bundle of its own.
    let attached = Attached::default();
    let watcher = LabWatcher::start(
        &topo.dst,
        &opts,
        dst_vms.clone(),
        pipeline.clone(),
        attached.clone(),
        kubevirt.then(|| topo.pod_prefix(true)),
    )?;
    arm(&topo, &opts, &pipeline)?;
    let src_attached = Attached::default();
    let src_watcher = match &src_pipeline {
        Some(p) => Some(LabWatcher::start(
            &topo.src,
            &opts,
            src_vms.clone(),
            p.clone(),
            src_attached.clone(),
            kubevirt.then(|| topo.pod_prefix(false)),
        )?),
        None => None,
    };
    let mut lab = Lab {
        topo,
        attached,
        src_attached: src_watcher.as_ref().map(|_| src_attached),
        src_vms,
        dst_vms,
        vms: Vec::new(),
        clock: WallClock::new(),
        opts: opts.clone(),
        pipeline: pipeline.clone(),
    };
    let deadline = opts.duration.map(|d| started + d);
    // SIGINT and SIGTERM end the watcher; the lab follows.
    let mut over = || {
        !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            || deadline.is_some_and(|d| Instant::now() >= d)
            || watcher.is_finished()
    };
    let result = play(&mut lab, headless, deadline.is_some(), &mut over);
    let watched = watcher.stop();
    let src_watched = src_watcher.map(LabWatcher::stop).transpose();
    // The truth comes last, after tapwatch's summary.
    for t in lab.truths() {
        pipeline.emit(&t);
        if let Some(p) = &src_pipeline {
            p.emit(&t);
        }
    }
    drop(lab);
    result?;
    watched?;
    src_watched?;
    Ok(())
}

/// What the run does in the destination's namespace besides watching: its nudger (the
/// operator's key in any lab, on its own with --remediate) and the bridge's ears.
fn arm(topo: &Topology, opts: &LabOptions, pipeline: &Pipeline) -> Result<(), LabError> {
    let gateways = Gateways::new(&[GatewayArg::All(if opts.scenario.bridged() {
        CLIENT_BRIDGED.into()
    } else {
        GATEWAY.into()
    })])
    .unwrap_or_default();
    let remediate = opts.remediate;
    let ears = topo.dst.enter(crate::collect::fdb::FdbEars::here)?;
    pipeline.head().engine.set_ears(ears);
    pipeline.set_nudger(topo.dst.enter(move || {
        Nudger::new(NudgeConfig {
            gateways,
            remediate,
            ..NudgeConfig::default()
        })
    })?);
    Ok(())
}

/// The story: steady traffic, the migration, and what follows until it is over (a
/// `headless` run without a deadline ends then) or `over` says the run ends.
fn play(
    lab: &mut Lab,
    headless: bool,
    has_deadline: bool,
    over: &mut impl FnMut() -> bool,
) -> Result<(), LabError> {
    let opts = lab.opts.clone();
    lab.start_vms()?;
    lab.lab_record(
        LabEvent::Ready,
        None,
        Some(format!(
            "{} VM(s) on the source, pinged every 20 ms",
            opts.vms
        )),
    );
    let until = Instant::now() + opts.before;
    while Instant::now() < until {
        if over() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if over() {
        return Ok(());
    }
    lab.migrate()?;
    // The story goes on until it is over (headless), the deadline, or the user quits.
    let give_up = Instant::now() + opts.reachable * 3 + opts.sdn_delay + Duration::from_secs(15);
    let mut told = false;
    while !over() {
        lab.move_due_routes()?;
        if !told && (lab.story_over() || Instant::now() > give_up) {
            told = true;
            if headless && !has_deadline {
                break;
            }
            // The live view shows the truth as soon as it is known.
            if !headless {
                for t in lab.truths() {
                    lab.pipeline.emit(&t);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
