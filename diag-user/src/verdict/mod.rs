//! Per-VM verdicts: OK, BLACKOUT, RECOVERED, QUIET, GONE, with the measured blackout and a
//! diagnosis in plain words.
//!
//! One pure state machine over [`Record`]s ([`Engine`]), run once per run at the head of the
//! pipeline: it keeps the run's [`Registry`] of taps up to date, and the live JSON stream,
//! the live view, bundles, metrics and offline analysis all read its results.
//! [`life`] follows a tap's life (attached, MAC and bridge changes, renamed, the VM behind
//! it), [`frames`] and [`counts`] the frames and counters that make a blackout and end it,
//! [`diagnosis`] turns it into words.

pub mod bridged;
mod counts;
mod diagnosis;
pub mod forecast;
mod frames;
mod life;
mod nudge;

use std::{collections::HashMap, time::Duration};

use crate::{
    model::identity::VmInterface,
    model::{clock::Ts, forecast::ForecastCounts, MacHistoryEntry, Record, VerdictFields},
    registry::TapKey,
};
pub use crate::{
    model::State,
    registry::{Blackout, Registry, Tap, TimelineEntry, SERIES_LEN},
};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// No frame from the VM for this long makes it QUIET.
    pub quiet_after: Duration,
    /// A long-running run (`serve`) forgets taps this long after they went away, so its
    /// memory follows the live taps; `None` keeps every tap for the run's summary.
    pub forget_after: Option<Duration>,
    /// The source host's taps (its facts, or a bundle of it), for certain forecasts.
    pub source: Vec<forecast::SourceTap>,
    /// Asks a bridged tap's bridge what it heard (the bridged stale-gateway detector).
    pub ears: bridged::Ears,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            quiet_after: Duration::from_secs(5),
            forget_after: None,
            source: Vec::new(),
            ears: bridged::Ears::default(),
        }
    }
}

/// A figure of a tap's outage that became final with the last record: what keeps
/// distributions (`serve`'s histograms) takes each once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// A blackout ended (the first frame to the tap's MAC), after this long.
    Blackout { ms: u64 },
    /// The network delivered to the VM again this long after its switch-over.
    InboundGap { ms: u64 },
    /// The host accepted the VM's frames this long after its switch-over (0 once it has
    /// run [`OUTBOUND_SETTLE`] after it without a blackout).
    OutboundGap { ms: u64 },
}

/// Without a blackout this long after a switch-over, the host accepted the VM at once (an
/// outbound gap of 0): a guest with a stale neighbour entry sends to it within moments of
/// resuming.
pub const OUTBOUND_SETTLE: Duration = Duration::from_secs(10);

pub struct Engine {
    config: EngineConfig,
    /// Every tap of the run.
    pub registry: Registry,
    /// Identities said before their tap's `attached` record.
    pending: HashMap<String, Option<VmInterface>>,
    /// Probes added or removed before their tap's `attached` record (a tap that appears
    /// gets its probe as it is attached).
    pending_probe: HashMap<String, bool>,
    /// Time of the newest record: "now" for a replay as for a live run.
    pub now: Option<Ts>,
    /// What the last record settled.
    settled: Vec<Settled>,
    /// How the run's forecasts turned out.
    pub forecasts: ForecastCounts,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            registry: Registry::default(),
            pending: HashMap::new(),
            pending_probe: HashMap::new(),
            now: None,
            settled: Vec::new(),
            forecasts: ForecastCounts::default(),
        }
    }

    /// Every tap, in the order they were attached.
    pub fn taps(&self) -> &[Tap] {
        self.registry.all()
    }

    /// The taps being watched now.
    pub fn live_taps(&self) -> impl Iterator<Item = &Tap> {
        self.registry.live()
    }

    /// The live tap of that name, else the last one that had it.
    pub fn tap(&self, ifname: &str) -> Option<&Tap> {
        self.registry.named(TapKey::netns_of(ifname), ifname)
    }

    /// Where the live tap a record names is in the registry.
    fn live(&self, ifname: &str) -> Option<usize> {
        self.registry.live_index(TapKey::netns_of(ifname), ifname)
    }

    fn tap_mut(&mut self, i: usize) -> &mut Tap {
        self.registry.at_mut(i)
    }

    /// Lets the engine ask bridged taps' bridges what they heard (live runs, once the
    /// namespace they watch is known).
    pub fn set_ears(&mut self, ears: bridged::Ears) {
        self.config.ears = ears;
    }

    /// What the last record given to [`Engine::apply`] settled.
    pub fn settled(&self) -> &[Settled] {
        &self.settled
    }

    /// Feeds one record; returns the verdict records of the state changes it caused.
    pub fn apply(&mut self, rec: &Record) -> Vec<Record> {
        let mut changes = Vec::new();
        self.settled.clear();
        match rec {
            // Kernel-timed frames arrive a little out of order.
            Record::Frame(f) => self.now = Some(self.now.map_or(f.ts, |n| n.max(f.ts))),
            // Not of this run's clock.
            Record::Lab(_) | Record::Migration(_) => {}
            _ => self.now = Some(rec.ts()),
        }
        match rec {
            Record::Attached { .. } => self.attached(rec, &mut changes),
            Record::Detached { ts, ifname, reason } => {
                self.detached(*ts, ifname, reason, &mut changes)
            }
            Record::MacChange {
                ts,
                ifname,
                old_mac,
                new_mac,
            } => self.mac_change(*ts, ifname, *old_mac, *new_mac),
            Record::ModeChange {
                ts,
                ifname,
                new_mode,
                ..
            } => self.mode_change(*ts, ifname, *new_mode, &mut changes),
            Record::Frame(f) => self.frame(f, &mut changes),
            Record::Stats { ts, taps } => {
                for row in taps {
                    self.stats(row, *ts, &mut changes);
                }
                if let Some(grace) = self.config.forget_after {
                    if self.registry.forget_gone(*ts, grace) {
                        crate::memory::give_back();
                    } else {
                        crate::memory::settle();
                    }
                    // Identities said of taps whose attach then failed (a retry says
                    // them again).
                    self.pending.clear();
                    self.pending_probe.clear();
                }
            }
            Record::Summary { taps, .. } => self.final_counters(taps),
            Record::Renamed {
                ts,
                ifname,
                old_ifname,
                ..
            } => self.renamed(*ts, ifname, old_ifname),
            Record::Identity {
                ts,
                ifname,
                libvirt,
            } => self.identity(*ts, ifname, libvirt.as_ref(), &mut changes),
            Record::Notice { .. } => self.notice(rec),
            Record::Nudge(n) => self.nudged(n),
            Record::Verdict { .. }
            | Record::Forecast(_)
            | Record::Finding(_)
            | Record::Lab(_)
            | Record::Migration(_) => {}
        }
        changes
    }

    fn set_state(&mut self, i: usize, state: State, ts: Ts, changes: &mut Vec<Record>) {
        if self.registry.at(i).state != state {
            let t = self.tap_mut(i);
            t.state = state;
            if state == State::Blackout {
                t.blackouts += 1;
            }
            changes.push(self.verdict(i, ts));
        }
    }

    fn verdict(&self, i: usize, ts: Ts) -> Record {
        let t = self.registry.at(i);
        Record::Verdict {
            ts,
            ifname: t.ifname.clone(),
            fields: self.fields(t, ts),
        }
    }

    pub fn fields(&self, t: &Tap, now: Ts) -> VerdictFields {
        t.verdict_fields(now)
    }

    /// Adds what the registry knows to a summary's rows (the collector gives the final
    /// counters): the tap's mode, every MAC it had, and the verdict.
    pub fn annotate_summary(&self, rec: &mut Record) {
        if let Record::Summary {
            ts,
            taps,
            forecasts,
        } = rec
        {
            if !self.forecasts.is_empty() {
                *forecasts = Some(self.forecasts);
            }
            let index = self.registry.by_name_and_index();
            for row in taps.iter_mut() {
                let at = index.get(&(row.counters.ifname.as_str(), row.ifindex));
                if let Some(t) = at.map(|&i| self.registry.at(i)) {
                    row.mode = t.mode;
                    if row.mac_history.is_empty() {
                        row.mac_history = t
                            .mac_history
                            .iter()
                            .map(|&(ts, mac)| MacHistoryEntry { ts, mac })
                            .collect();
                    }
                    row.verdict = Some(self.fields(t, *ts));
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
