//! Seeing a blackout coming: when a tap appears for a VM migrating in, judge before its
//! first frame whether the guest will find the MAC it has cached for its gateway, and
//! once the VM ran here, whether that came true.
//!
//! libvirt, when it manages a tap, gives it the guest's MAC with the first octet `fe`, and a
//! guest created that way learns that MAC for its gateway. A routed tap whose MAC is
//! something else, on a VM whose interface libvirt does not manage (`managed='no'`, the MAC
//! from the port binding), is the stale-MAC trap: the guest keeps sending to the MAC it
//! cached on its last host, and the host drops it, until the guest's neighbour entry
//! expires. Where the source host's facts say what the tap's MAC was there, the forecast is
//! certain either way.

use super::Engine;
use crate::{
    model::{
        clock::Ts,
        forecast::{Forecast, ForecastOutcome, ForecastRecord},
        mac::MacAddr,
        Mode, Record,
    },
    registry::Tap,
};

/// A Linux guest's stale gateway entry lasts 0.5-1.5 x its base reachable time (30 s by
/// default) from when it was last confirmed.
pub const LINUX_STALE_MS: [u64; 2] = [15_000, 45_000];

/// What a source host says of a VM's tap there (from its facts or a bundle of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceTap {
    pub domain: String,
    pub uuid: Option<String>,
    pub guest_mac: Option<MacAddr>,
    pub tap_mac: Option<MacAddr>,
}

impl SourceTap {
    fn is_of(&self, vm: &crate::model::identity::VmInterface) -> bool {
        match (&self.uuid, &vm.uuid) {
            (Some(a), Some(b)) => a == b,
            _ => {
                self.domain == vm.domain
                    || (self.guest_mac.is_some() && self.guest_mac == vm.guest_mac)
            }
        }
    }
}

/// The forecast for a tap whose VM has not sent here yet, if one can be made.
pub fn judge(t: &Tap, source: &[SourceTap]) -> Option<Forecast> {
    if t.mode != Mode::Routed {
        return None;
    }
    let vm = t.vm.as_ref()?;
    let booted_here = vm.migrated_in() == Some(false);
    let migrating = t.appeared || vm.migrated_in() == Some(true) || vm.paused_for_migration();
    if booted_here || !migrating {
        return None;
    }
    let tap_mac = t.mac?;
    if let Some(there) = source.iter().find(|s| s.is_of(vm)).and_then(|s| s.tap_mac) {
        return Some(from_source(tap_mac, there));
    }
    let libvirt = vm.libvirt_tap_mac()?;
    if tap_mac == libvirt || vm.managed != Some(false) {
        return None;
    }
    Some(Forecast {
        at_risk: true,
        certain: false,
        tap_mac: Some(tap_mac),
        cached_mac: Some(libvirt),
        cause: format!(
            "the tap's MAC {tap_mac} is not fe:+guest MAC ({libvirt}) and libvirt does not \
             manage it (managed='no', a MAC from the port binding, as networking-calico's \
             fixed 00:61:fe:ed:ca:fe before its fix derived fe:+the port MAC's last five \
             octets): a guest that learnt {libvirt} for its gateway on its last host, where \
             libvirt managed the tap, keeps sending there, dropped, until its gateway entry \
             expires (15 to 45 s on Linux, more on other guests)"
        ),
        expected_ms: Some(LINUX_STALE_MS),
        outcome: None,
    })
}

/// Certain, from the tap's MAC on the source host.
fn from_source(here: MacAddr, there: MacAddr) -> Forecast {
    let at_risk = here != there;
    let cause = if at_risk {
        format!(
            "the tap had {there} on the source host and has {here} here: the guest keeps \
             sending to {there}, dropped, until its gateway entry expires (15 to 45 s on \
             Linux, more on other guests)"
        )
    } else {
        format!("the tap has the MAC it had on the source host ({here}): no stale MAC")
    };
    Forecast {
        at_risk,
        certain: true,
        tap_mac: Some(here),
        cached_mac: Some(there),
        cause,
        expected_ms: at_risk.then_some(LINUX_STALE_MS),
        outcome: None,
    }
}

impl Engine {
    /// Judges a tap again while its VM has not sent (its MAC set, its VM named later):
    /// the forecast is kept, and said at the next stats record or before the VM's first
    /// frame, so the random MAC a tap has for the moment before Nova sets the port's is
    /// not judged aloud.
    pub(super) fn foresee(&mut self, i: usize, ts: Ts) {
        let t = self.registry.at(i);
        if t.first_from_vm.is_some() || t.forecast.as_ref().is_some_and(|f| !f.standing()) {
            return;
        }
        let new = judge(t, &self.config.source);
        if new == t.forecast {
            return;
        }
        let note = match &new {
            Some(f) if f.at_risk => format!("forecast: AT RISK: {}", f.cause),
            Some(f) => format!("forecast: {}", f.cause),
            None => "forecast: none".into(),
        };
        let t = self.tap_mut(i);
        t.forecast = new;
        t.forecast_at = Some(ts);
        t.note(ts, note);
    }

    /// Says the tap's forecast if it changed since it was last said: a `forecast` record.
    pub(super) fn say_forecast(&mut self, i: usize, ts: Ts, changes: &mut Vec<Record>) {
        let t = self.registry.at(i);
        if t.forecast == t.forecast_said {
            return;
        }
        let was_at_risk = t.forecast_said.as_ref().is_some_and(|f| f.at_risk);
        let shown = t.forecast.clone().unwrap_or_else(|| Forecast {
            at_risk: false,
            certain: false,
            tap_mac: t.mac,
            cached_mac: None,
            cause: "no longer foreseen: the tap's MAC or its VM changed".into(),
            expected_ms: None,
            outcome: None,
        });
        if shown.at_risk && !was_at_risk {
            self.forecasts.made += 1;
        } else if was_at_risk && !shown.at_risk {
            self.forecasts.made -= 1;
        }
        let t = self.tap_mut(i);
        t.forecast_said.clone_from(&t.forecast);
        changes.push(self.forecast_record(i, ts, shown));
    }

    /// The VM ran here and what it does is known: the forecast comes true or not, and a
    /// blackout nothing foresaw is counted.
    pub(super) fn settle_forecast(&mut self, i: usize, ts: Ts, changes: &mut Vec<Record>) {
        let t = self.registry.at(i);
        // A blackout of this migration: one that reaches past its switch-over.
        let sw = t.switchover();
        let blackout = t
            .blackout
            .is_some_and(|b| b.end.is_none_or(|e| sw.is_none_or(|s| e >= s)));
        let standing = t.forecast.clone().filter(Forecast::standing);
        let outcome = match &standing {
            Some(f) if f.at_risk && blackout => ForecastOutcome::CameTrue,
            Some(f) if f.at_risk => ForecastOutcome::FalseAlarm,
            _ if blackout => {
                self.forecasts.missed += 1;
                return;
            }
            _ => ForecastOutcome::Right,
        };
        match outcome {
            ForecastOutcome::CameTrue => self.forecasts.came_true += 1,
            ForecastOutcome::FalseAlarm => self.forecasts.false_alarms += 1,
            ForecastOutcome::Right => {}
        }
        let Some(mut f) = standing else { return };
        f.outcome = Some(outcome);
        let t = self.tap_mut(i);
        t.forecast = Some(f.clone());
        t.forecast_said = Some(f.clone());
        t.note(ts, format!("forecast settled: {}", outcome.as_str()));
        changes.push(self.forecast_record(i, ts, f));
    }

    fn forecast_record(&self, i: usize, ts: Ts, forecast: Forecast) -> Record {
        let t = self.registry.at(i);
        Record::Forecast(ForecastRecord {
            ts,
            ifname: t.ifname.clone(),
            vm: t.vm_name().to_string(),
            forecast,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{forecast::ForecastCounts, identity::VmInterface},
        verdict::{fixtures::*, EngineConfig},
    };

    /// Nova plugs the destination tap (a random MAC first, then the port's), libvirt's
    /// status file says the domain waits for the incoming migration.
    fn plugged(e: &mut Engine, managed: bool, mac: MacAddr) -> Vec<Record> {
        let vm = VmInterface {
            domain: "instance-0000002b".into(),
            uuid: Some("5c2d9e3f".into()),
            nova_name: Some("web-1".into()),
            tap: "tapA".into(),
            guest_mac: Some(GUEST),
            iface_type: "ethernet".into(),
            managed: Some(managed),
            state: Some("paused".into()),
            reason: Some("migration".into()),
            ..VmInterface::default()
        };
        let mut a = attached(0, "tapA", MacAddr([2, 0, 0, 0, 0, 1]), "routed");
        if let Record::Attached { appeared, .. } = &mut a {
            *appeared = true;
        }
        let mut out = Vec::new();
        for r in [
            Record::Identity {
                ts: at(0),
                ifname: "tapA".into(),
                libvirt: Some(vm),
            },
            a,
            Record::MacChange {
                ts: at(10),
                ifname: "tapA".into(),
                old_mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
                new_mac: Some(mac),
            },
            // Said at the next interval, once the MAC Nova set is there.
            stats(500, "tapA", 0, 0),
        ] {
            out.extend(e.apply(&r));
        }
        out
    }

    fn forecasts(recs: &[Record]) -> Vec<&Forecast> {
        recs.iter()
            .filter_map(|r| match r {
                Record::Forecast(f) => Some(&f.forecast),
                _ => None,
            })
            .collect()
    }

    /// The seed's trap, foreseen before the first frame: a routed tap with the port's
    /// fixed MAC, managed='no'; the blackout comes and the forecast came true.
    #[test]
    fn the_stale_mac_trap_is_foreseen_and_comes_true() {
        let mut e = Engine::new(EngineConfig::default());
        let out = plugged(&mut e, false, NEW);
        let made = forecasts(&out);
        assert_eq!(made.len(), 1, "{out:?}");
        assert!(made[0].at_risk && !made[0].certain);
        assert_eq!(
            (made[0].tap_mac, made[0].cached_mac),
            (Some(NEW), Some(OLD))
        );
        assert!(made[0].cause.contains("managed='no'"), "{}", made[0].cause);
        assert_eq!(made[0].expected_ms, Some(LINUX_STALE_MS));
        let t = e.tap("tapA").unwrap();
        assert!(t
            .diagnosis(at(20))
            .starts_with("At risk before the VM resumes here"));
        // The VM resumes and sends to the MAC it cached; then re-learns.
        let mut settled = Vec::new();
        for r in [
            frame(1000, "tapA", "from_vm", "rarp", BCAST),
            frame(1001, "tapA", "from_vm", "dst_mismatch", OLD),
            frame(9000, "tapA", "from_vm", "dst_match", NEW),
            stats(10_000, "tapA", 100, 40),
        ] {
            settled.extend(e.apply(&r));
        }
        let done = forecasts(&settled);
        assert_eq!(done.len(), 1, "{settled:?}");
        assert_eq!(done[0].outcome, Some(ForecastOutcome::CameTrue));
        assert_eq!(
            e.forecasts,
            ForecastCounts {
                made: 1,
                came_true: 1,
                ..ForecastCounts::default()
            }
        );
        let mut summary = Record::Summary {
            ts: at(11_000),
            taps: Vec::new(),
            forecasts: None,
        };
        e.annotate_summary(&mut summary);
        let Record::Summary { forecasts, .. } = summary else {
            unreachable!()
        };
        assert_eq!(forecasts.map(|f| f.came_true), Some(1));
    }

    /// libvirt's own MAC on the tap: nothing to foresee, and a clean migration counts
    /// nothing.
    #[test]
    fn libvirts_derivation_is_no_risk() {
        let mut e = Engine::new(EngineConfig::default());
        assert!(forecasts(&plugged(&mut e, true, OLD)).is_empty());
        assert!(forecasts(&plugged(
            &mut Engine::new(EngineConfig::default()),
            false,
            OLD
        ))
        .is_empty());
        for r in [
            frame(1000, "tapA", "from_vm", "rarp", BCAST),
            stats(2000, "tapA", 10, 0),
            stats(12_000, "tapA", 100, 0),
        ] {
            e.apply(&r);
        }
        assert!(e.forecasts.is_empty());
        assert!(e.tap("tapA").unwrap().forecast.is_none());
    }

    /// With the source host's facts the forecast is certain, either way; a blackout
    /// nothing foresaw is counted as missed.
    #[test]
    fn the_source_hosts_facts_make_it_certain() {
        let source = vec![SourceTap {
            domain: "instance-0000002b".into(),
            uuid: Some("5c2d9e3f".into()),
            guest_mac: Some(GUEST),
            tap_mac: Some(NEW),
        }];
        let config = EngineConfig {
            source,
            ..EngineConfig::default()
        };
        let mut e = Engine::new(config.clone());
        let out = plugged(&mut e, false, NEW);
        let f = forecasts(&out);
        assert_eq!(f.len(), 1);
        assert!(f[0].certain && !f[0].at_risk, "{f:?}");
        let mut e = Engine::new(config);
        let out = plugged(&mut e, true, OLD);
        let f = forecasts(&out);
        assert!(f[0].certain && f[0].at_risk, "{f:?}");
        assert_eq!(f[0].cached_mac, Some(NEW));

        // No forecast, yet a blackout after the switch-over: missed.
        let mut e = Engine::new(EngineConfig::default());
        plugged(&mut e, true, OLD);
        for r in [
            frame(1000, "tapA", "from_vm", "rarp", BCAST),
            frame(1001, "tapA", "from_vm", "dst_mismatch", NEW),
            frame(3000, "tapA", "from_vm", "dst_match", OLD),
            stats(4000, "tapA", 100, 40),
        ] {
            e.apply(&r);
        }
        assert_eq!(e.forecasts.missed, 1);
    }
}
