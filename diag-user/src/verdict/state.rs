//! What the engine knows of one tap and the VM behind it.

use std::collections::VecDeque;

use crate::{
    model::{clock::Ts, mac::MacAddr, Mode, TapRow},
    verdict::libvirt::VmInterface,
};

pub use crate::model::State;

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

/// Everything known about one tap and the VM behind it.
#[derive(Clone, Debug)]
pub struct TapView {
    pub ifname: String,
    pub ifindex: u32,
    pub vm: Option<VmInterface>,
    pub mode: Mode,
    /// How the tap's frames are seen (unknown in records of older versions).
    pub datapath: Option<crate::model::DatapathKind>,
    /// Whether the tap carries the drop-driven datapath's per-frame probe now.
    pub probe: bool,
    pub mac: Option<MacAddr>,
    /// The MAC before the last change and when it changed.
    pub prev_mac: Option<(Option<MacAddr>, Ts)>,
    /// Every MAC the tap had while watched, with the time it got it.
    pub mac_history: Vec<(Ts, Option<MacAddr>)>,
    pub attached_at: Ts,
    pub counters: TapRow,
    pub from_vm_fps: f64,
    pub to_vm_fps: f64,
    pub mismatch_ps: f64,
    pub last_stats: Option<Ts>,
    pub last_rarp: Option<Ts>,
    pub last_garp: Option<Ts>,
    pub first_announce: Option<Ts>,
    pub last_guest_arp: Option<Ts>,
    pub last_from_vm: Ts,
    pub first_mismatch: Option<Ts>,
    pub last_mismatch: Option<Ts>,
    pub state: State,
    /// The state QUIET interrupted, to return to when the VM speaks again.
    pub before_quiet: State,
    pub blackout: Option<Blackout>,
    pub gone_at: Option<Ts>,
    pub timeline: Vec<TimelineEntry>,
    /// dst-mismatch frames per second, oldest first.
    pub mismatch_series: VecDeque<u64>,
}

impl TapView {
    pub(super) fn new(
        ifname: &str,
        ifindex: u32,
        mac: Option<MacAddr>,
        mode: Mode,
        ts: Ts,
    ) -> Self {
        Self {
            ifname: ifname.to_string(),
            ifindex,
            vm: None,
            mode,
            datapath: None,
            probe: false,
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
            first_announce: None,
            last_guest_arp: None,
            last_from_vm: ts,
            first_mismatch: None,
            last_mismatch: None,
            state: State::Ok,
            before_quiet: State::Ok,
            blackout: None,
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

    /// Blackout length to show: measured, or so far.
    pub fn blackout_ms(&self, now: Ts) -> Option<u64> {
        let until = self.gone_at.unwrap_or(now);
        self.blackout.map(|b| b.ms(until))
    }

    /// Until when `mac` was the tap's MAC, if it ever was while watched.
    pub(super) fn mac_until(&self, mac: MacAddr) -> Option<Ts> {
        let i = self
            .mac_history
            .iter()
            .rposition(|(_, m)| *m == Some(mac))?;
        self.mac_history.get(i + 1).map(|(t, _)| *t)
    }

    pub(super) fn note(&mut self, ts: Ts, what: String) {
        if self.timeline.len() == TIMELINE_MAX {
            self.timeline.remove(0);
        }
        self.timeline.push(TimelineEntry { ts, what });
    }
}
