//! Everything a run knows of one tap and the VM behind it.

use std::collections::VecDeque;

use super::TapKey;
use crate::{
    model::identity::VmInterface,
    model::{clock::Ts, mac::MacAddr, Mode, State, TapRow},
};

/// A stretch of time in which the VM sent to a MAC its tap did not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blackout {
    /// Kernel time of the first dst-mismatch frame.
    pub start: Ts,
    /// Kernel time of the first frame to the tap's MAC after it (`dst_match`).
    pub end: Option<Ts>,
    /// The MAC the VM kept sending to.
    pub stale_mac: MacAddr,
}

impl Blackout {
    /// Measured length: to the end, or to `now` while it lasts.
    pub fn ms(&self, now: Ts) -> u64 {
        self.end.unwrap_or(now).ms_since(self.start).max(0) as u64
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    pub ts: Ts,
    pub what: String,
}

/// Seconds of per-second mismatch counts kept for the sparkline.
pub const SERIES_LEN: usize = 120;
const TIMELINE_MAX: usize = 256;
/// MACs a tap's history keeps (the newest): each diagnosis of a blackout looks through it.
const MAC_HISTORY_MAX: usize = 256;
/// Announces a tap keeps (the first): a migration sends a handful, and a guest that keeps
/// announcing for hours must not grow the registry.
const ANNOUNCES_MAX: usize = 64;

/// Which announce a VM sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// QEMU's RARP (`announce-self`).
    Rarp,
    /// The guest's gratuitous ARP.
    Garp,
}

/// The address families a blackout's stale frames were of (a dual-stack guest's can be
/// both: its ARP and its neighbour discovery caches go stale apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    /// A family's frames went to the tap's MAC again (an unknown family: every one's).
    pub fn remove(&mut self, f: Option<crate::model::Family>) {
        match f {
            Some(crate::model::Family::V4) => self.v4 = false,
            Some(crate::model::Family::V6) => self.v6 = false,
            None => *self = Self::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.v4 && !self.v6
    }

    pub fn add(&mut self, f: Option<crate::model::Family>) {
        match f {
            Some(crate::model::Family::V4) => self.v4 = true,
            Some(crate::model::Family::V6) => self.v6 = true,
            None => {}
        }
    }
}

/// What a VM's IPv6 neighbour discovery said, beside its ARP's facts on [`Tap`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NdFacts {
    /// The guest's announcing advertisements (IPv6's gratuitous ARP): the first, how many.
    pub first_announce: Option<Ts>,
    pub announces: u32,
    /// The guest's last Neighbour Solicitation (it resolves or probes a neighbour).
    pub last_solicit: Option<Ts>,
    /// The guest's last Router Solicitation, and the last Router Advertisement it got.
    pub last_rs: Option<Ts>,
    pub last_ra: Option<Ts>,
    /// The families of the open (or last) blackout's stale frames.
    pub stale: Families,
    /// Those of them whose frames have not gone to the tap's MAC since: a dual-stack
    /// guest's blackout ends when both families' have.
    pub open: Families,
    /// While one family is still open: when the kernel's window last closed (a frame of
    /// the other family to the tap's MAC), and the stale count the first interval after
    /// it read. The still-open family's return to the tap's MAC makes no event of its own
    /// once the window is closed: that its stale frames stopped says it.
    pub closed: Option<(Ts, Option<u64>)>,
}

/// Everything known about one tap and the VM behind it.
#[derive(Clone, Debug)]
pub struct Tap {
    pub key: TapKey,
    pub ifname: String,
    pub vm: Option<VmInterface>,
    pub mode: Mode,
    pub mtu: Option<u32>,
    /// The bridge (or other master device) the tap is on.
    pub master: Option<String>,
    /// How the tap's frames are seen (unknown in records of older versions).
    pub datapath: Option<crate::model::DatapathKind>,
    /// Whether the tap carries the drop-driven datapath's per-frame probe now.
    pub probe: bool,
    /// The tap appeared while tapwatch ran (not in its first look at the host).
    pub appeared: bool,
    /// The first RARP from the VM, and how many came.
    pub first_rarp: Option<Ts>,
    pub rarps: u32,
    /// The first frame from the VM seen (a record, or else the stats record that first
    /// counted one: then `first_from_vm_approx`).
    pub first_from_vm: Option<Ts>,
    pub first_from_vm_approx: bool,
    /// The first data frame delivered to the VM after its switch-over (`inbound`).
    pub first_inbound: Option<Ts>,
    /// When libvirt's status file first said the domain was paused for a migration (on a
    /// source: the stop-and-copy), and running again after that (on a destination).
    pub paused_at: Option<Ts>,
    pub resumed_at: Option<Ts>,
    pub mac: Option<MacAddr>,
    /// The MAC before the last change and when it changed.
    pub prev_mac: Option<(Option<MacAddr>, Ts)>,
    /// Every MAC the tap had while watched (the last [`MAC_HISTORY_MAX`]), with the time
    /// it got it.
    pub mac_history: Vec<(Ts, Option<MacAddr>)>,
    pub attached_at: Ts,
    pub counters: TapRow,
    pub from_vm_fps: f64,
    pub to_vm_fps: f64,
    pub mismatch_ps: f64,
    pub last_stats: Option<Ts>,
    pub last_rarp: Option<Ts>,
    pub last_garp: Option<Ts>,
    pub first_garp: Option<Ts>,
    pub garps: u32,
    pub first_announce: Option<Ts>,
    pub last_guest_arp: Option<Ts>,
    pub last_from_vm: Ts,
    pub first_mismatch: Option<Ts>,
    pub last_mismatch: Option<Ts>,
    pub state: State,
    /// The state QUIET interrupted, to return to when the VM speaks again.
    pub before_quiet: State,
    pub blackout: Option<Blackout>,
    /// Blackouts begun on this tap.
    pub blackouts: u64,
    /// Before the VM resumed here: whether a blackout was foreseen, and how it turned out.
    pub forecast: Option<crate::model::forecast::Forecast>,
    /// The forecast as last said in a record.
    pub forecast_said: Option<crate::model::forecast::Forecast>,
    /// The guest's addresses as its frames say them (for a nudge).
    pub addrs: super::addrs::GuestAddrs,
    /// On a bridged tap since its switch-over: which MAC each peer's traffic goes to and
    /// comes from (the bridged stale-gateway detector).
    pub peers: super::peers::PeerMacs,
    /// When the standing forecast was judged.
    pub forecast_at: Option<Ts>,
    /// The VM's first announces, in time order, for the timeline's marks.
    pub announces: Vec<(Ts, Announce)>,
    /// The last nudge written into the tap (`sent`, then its outcome).
    pub nudge: Option<crate::model::nudge::NudgeRecord>,
    /// What the VM's IPv6 neighbour discovery said.
    pub nd: NdFacts,
    /// The switch-over whose inbound and outbound gaps were settled (said once each).
    pub settled: (Option<Ts>, Option<Ts>),
    pub gone_at: Option<Ts>,
    pub timeline: Vec<TimelineEntry>,
    /// dst-mismatch frames per second, oldest first.
    pub mismatch_series: VecDeque<u64>,
}

impl Tap {
    pub fn new(key: TapKey, ifname: &str, mac: Option<MacAddr>, mode: Mode, ts: Ts) -> Self {
        Self {
            key,
            ifname: ifname.to_string(),
            vm: None,
            mode,
            mtu: None,
            master: None,
            datapath: None,
            probe: false,
            appeared: false,
            first_rarp: None,
            rarps: 0,
            first_from_vm: None,
            first_from_vm_approx: false,
            first_inbound: None,
            paused_at: None,
            resumed_at: None,
            mac,
            prev_mac: None,
            mac_history: vec![(ts, mac)],
            attached_at: ts,
            counters: TapRow {
                ifname: ifname.to_string(),
                ..TapRow::default()
            },
            from_vm_fps: 0.0,
            to_vm_fps: 0.0,
            mismatch_ps: 0.0,
            last_stats: None,
            last_rarp: None,
            last_garp: None,
            first_garp: None,
            garps: 0,
            first_announce: None,
            last_guest_arp: None,
            last_from_vm: ts,
            first_mismatch: None,
            last_mismatch: None,
            state: State::Ok,
            before_quiet: State::Ok,
            blackout: None,
            blackouts: 0,
            forecast: None,
            forecast_said: None,
            addrs: Default::default(),
            peers: Default::default(),
            forecast_at: None,
            announces: Vec::new(),
            nudge: None,
            nd: NdFacts::default(),
            settled: (None, None),
            gone_at: None,
            timeline: Vec::new(),
            mismatch_series: VecDeque::new(),
        }
    }

    /// The VM's name: Nova's instance name, the libvirt domain, or the tap.
    pub fn vm_name(&self) -> &str {
        self.vm
            .as_ref()
            .map(|v| v.display_name())
            .unwrap_or(&self.ifname)
    }

    /// Whether every frame from the VM is seen now, so that its first to the tap's MAC (a
    /// blackout's end) is timed: always but on the drop-driven datapath, whose per-frame
    /// probe a tap gets with its first stale frame.
    pub fn frames_timed(&self) -> bool {
        self.probe || self.datapath != Some(crate::model::DatapathKind::Drops)
    }

    pub fn guest_mac(&self) -> Option<MacAddr> {
        self.vm.as_ref().and_then(|v| v.guest_mac)
    }

    /// The tap's MAC is not the one libvirt would have set (fe: + guest MAC).
    pub fn tap_mac_unusual(&self) -> bool {
        match (self.vm.as_ref().and_then(|v| v.libvirt_tap_mac()), self.mac) {
            (Some(expected), Some(mac)) => expected != mac,
            _ => false,
        }
    }

    /// When the VM came up on this tap: its first RARP (QEMU's announce at resume); without
    /// one, its first frame on a tap that appeared while watched, unless libvirt says the
    /// VM was started here (a boot is no migration).
    pub fn switchover(&self) -> Option<Ts> {
        if self.first_rarp.is_some() {
            return self.first_rarp;
        }
        let booted_here = self.vm.as_ref().and_then(|v| v.migrated_in()) == Some(false);
        if self.appeared && !booted_here {
            self.first_from_vm
        } else {
            None
        }
    }

    /// From the switch-over to the first data frame delivered to the VM: the network's
    /// part (routes, flows, bridge learning moving to this host).
    pub fn inbound_gap_ms(&self) -> Option<u64> {
        let (sw, inbound) = (self.switchover()?, self.first_inbound?);
        Some(inbound.ms_since(sw).max(0) as u64)
    }

    /// From the switch-over to the first frame from the VM the host accepted: the end of
    /// the stale frames (the guest's part), 0 when there were none, unknown while they
    /// last or before the VM sent anything.
    pub fn outbound_gap_ms(&self) -> Option<u64> {
        let sw = self.switchover()?;
        match self.blackout {
            // A blackout that reaches past the switch-over is this migration's (its first
            // stale frame may come a moment before QEMU's first RARP).
            Some(b) if b.end.is_none_or(|e| e >= sw) => b.end.map(|e| e.ms_since(sw).max(0) as u64),
            _ if self.mode == Mode::Bridged => None,
            _ => self.first_from_vm.map(|_| 0),
        }
    }

    /// Blackout length to show: measured, or so far.
    pub fn blackout_ms(&self, now: Ts) -> Option<u64> {
        let until = self.gone_at.unwrap_or(now);
        self.blackout.map(|b| b.ms(until))
    }

    /// Until when `mac` was the tap's MAC, if it ever was while watched.
    pub fn mac_until(&self, mac: MacAddr) -> Option<Ts> {
        let i = self
            .mac_history
            .iter()
            .rposition(|(_, m)| *m == Some(mac))?;
        self.mac_history.get(i + 1).map(|(t, _)| *t)
    }

    /// libvirt's state of the domain as its status file changes: paused for a migration
    /// (the stop-and-copy on a source, waiting for the memory on a destination), then
    /// running again.
    pub fn follow_libvirt_state(&mut self, ts: Ts, vm: Option<&VmInterface>) {
        let Some(vm) = vm else { return };
        if vm.paused_for_migration() && self.paused_at.is_none() {
            self.paused_at = Some(ts);
            self.note(ts, "libvirt: the VM is paused for a migration".into());
        } else if self.paused_at.is_some()
            && self.resumed_at.is_none()
            && vm.state.as_deref() == Some("running")
        {
            self.resumed_at = Some(ts);
            self.note(ts, "libvirt: the VM runs again".into());
        }
    }

    pub fn remember_announce(&mut self, ts: Ts, what: Announce) {
        if self.announces.len() < ANNOUNCES_MAX {
            let at = self.announces.partition_point(|(t, _)| *t <= ts);
            self.announces.insert(at, (ts, what));
        }
    }

    pub fn remember_mac(&mut self, ts: Ts, mac: Option<MacAddr>) {
        if self.mac_history.len() == MAC_HISTORY_MAX {
            self.mac_history.remove(0);
        }
        self.mac_history.push((ts, mac));
    }

    pub fn note(&mut self, ts: Ts, what: String) {
        if self.timeline.len() == TIMELINE_MAX {
            self.timeline.remove(0);
        }
        // Kernel-timed frames and notices timed when they were written arrive a little out
        // of order: the timeline reads in time order.
        let at = self.timeline.partition_point(|e| e.ts <= ts);
        self.timeline.insert(at, TimelineEntry { ts, what });
    }
}
