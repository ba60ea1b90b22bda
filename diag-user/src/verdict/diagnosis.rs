//! The diagnosis in plain words: what a state means for this VM, its MACs, its announces.

use crate::model::{
    clock::Ts,
    mac::{show, MacAddr},
    Mode, State,
};
use crate::registry::{Blackout, Tap};

/// Why a tap's MAC is what makes the guest's cached MAC stale.
const UNUSUAL_TAP_MAC: &str =
    "The tap MAC is not fe:+guest MAC, as happens with interface managed='no' and a fixed port MAC.";

impl Tap {
    /// The tap's verdict as of `now`: its state, the measured outage, the diagnosis.
    pub fn verdict_fields(&self, now: Ts) -> crate::model::VerdictFields {
        crate::model::VerdictFields {
            vm: self.vm_name().to_string(),
            state: self.state,
            blackout_ms: self.blackout_ms(now),
            switchover_ts: Some(self.switchover()),
            inbound_gap_ms: Some(self.inbound_gap_ms()),
            outbound_gap_ms: Some(self.outbound_gap_ms()),
            diagnosis: self.diagnosis(now),
        }
    }

    /// The diagnosis in plain words, as of `now`.
    pub fn diagnosis(&self, now: Ts) -> String {
        let mut s = self.forecast_words();
        s.extend(self.blackout_words(now));
        if let Some(words) = super::bridged::words(self) {
            s.push(words);
        } else if self.mode == Mode::Bridged && self.counters.dst_mismatch_frames > 0 {
            s.push(format!(
                "{} frames to other MACs: normal on a bridged tap, not drops.",
                self.counters.dst_mismatch_frames
            ));
        }
        if let Some(words) = self.anatomy() {
            s.push(words);
        }
        s.push(self.rarp_words());
        s.push(self.garp_words());
        if self.first_from_vm.is_none() {
            s.push(
                "Waiting for the VM: nothing from it on this tap yet (a tap plugged ahead of \
                 a migration waits for the VM to resume here)."
                    .into(),
            );
        } else if self.state == State::Quiet {
            s.push(format!(
                "The guest has sent nothing for {} s.",
                now.ms_since(self.last_from_vm) / 1000
            ));
        }
        s.join(" ")
    }

    /// A blackout foreseen before the VM resumed here, and how that turned out.
    fn forecast_words(&self) -> Vec<String> {
        use crate::model::forecast::ForecastOutcome;
        let Some(f) = self.forecast.as_ref().filter(|f| f.at_risk) else {
            return Vec::new();
        };
        let sure = if f.certain { "certain" } else { "likely" };
        vec![match f.outcome {
            None => format!("At risk before the VM resumes here ({sure}): {}.", f.cause),
            Some(ForecastOutcome::CameTrue) => {
                "The blackout was foreseen before the VM resumed here.".into()
            }
            Some(_) => "A blackout was foreseen before the VM resumed here; none came.".into(),
        }]
    }

    /// Words for a blackout a nudge ended.
    fn nudge_ended(&self, b: Blackout) -> Option<String> {
        use crate::model::nudge::NudgeResult;
        let n = self.nudge.as_ref()?;
        let end = b.end?;
        // Said as the blackout ends (the nudge just sent), and once its outcome is known.
        let ms = match n.result {
            NudgeResult::Recovered => n.recovered_after_ms?,
            NudgeResult::Sent if n.ts >= b.start && n.ts <= end => end.ms_since(n.ts) as u64,
            _ => return None,
        };
        (n.ts >= b.start).then(|| {
            format!(
                ", {ms} ms after tapwatch's nudge told the guest its gateway {} is at the tap's \
                 MAC",
                n.gateway_ip.map(|g| g.to_string()).unwrap_or_default()
            )
        })
    }

    /// The blackout, going on or ended, and why its MAC is stale.
    fn blackout_words(&self, now: Ts) -> Vec<String> {
        let mut s = Vec::new();
        if self.mode == Mode::Bridged {
            // The stale gateway's own words (`bridged::words`) say the rest.
            if let Some(b @ Blackout { end: Some(end), .. }) = self.blackout {
                s.push(format!(
                    "Blackout of {} ms: the guest sent to {} from {} until {} (its frames are \
                     sampled: the end is at most 100 ms late).",
                    b.ms(end),
                    b.stale_mac,
                    b.start.clock(),
                    end.clock()
                ));
            }
            return s;
        }
        match (self.state, self.blackout) {
            (State::Blackout, Some(b)) | (State::Gone, Some(b @ Blackout { end: None, .. })) => {
                s.push(self.stale_words(b));
                if self.tap_mac_unusual() {
                    s.push(UNUSUAL_TAP_MAC.into());
                }
                if self.state == State::Gone {
                    s.push(format!(
                        "The tap was removed {} ms into the blackout.",
                        self.blackout_ms(now).unwrap_or(0)
                    ));
                } else {
                    s.push(
                        "The blackout ends when the guest re-ARPs, or at once when told where \
                         its gateway is (`tapwatch nudge`)."
                            .into(),
                    );
                }
            }
            (_, Some(b @ Blackout { end: Some(end), .. })) => {
                let rearp = match (self.nudge_ended(b), self.last_guest_arp) {
                    (Some(words), _) => words,
                    (None, Some(t)) if t >= b.start && t <= end => {
                        format!(", after the guest re-ARPed at {}", t.clock())
                    }
                    _ => String::new(),
                };
                let to = if b.stale_mac == MacAddr::default() {
                    "a MAC that was not the tap's".to_string()
                } else {
                    b.stale_mac.to_string()
                };
                s.push(format!(
                    "Blackout of {} ms: the VM sent to {to} from {} until {}{rearp}.",
                    b.ms(end),
                    b.start.clock(),
                    end.clock()
                ));
                if self.tap_mac_unusual() {
                    s.push(UNUSUAL_TAP_MAC.into());
                }
            }
            _ => {}
        }
        s
    }

    /// Where a blackout going on sends, and what the kernel does with it.
    fn stale_words(&self, b: Blackout) -> String {
        if b.stale_mac == MacAddr::default() {
            // A cooked capture or lost samples: the kernel said "not mine", not to whom.
            return format!(
                "VM sends to a MAC that is not the tap's ({}); the kernel drops these frames as PACKET_OTHERHOST.",
                show(self.mac, "none")
            );
        }
        let was = match self.mac_until(b.stale_mac) {
            Some(t) => format!(
                " (the tap's MAC until {}, now {})",
                t.clock(),
                show(self.mac, "none")
            ),
            None => format!(" (not the tap's MAC, {})", show(self.mac, "none")),
        };
        format!(
            "VM still sends to {}{was}; the kernel drops these frames as PACKET_OTHERHOST.",
            b.stale_mac
        )
    }

    /// QEMU's announce, or why there was none.
    fn rarp_words(&self) -> String {
        let migrated_in = self.vm.as_ref().and_then(|v| v.migrated_in());
        // Only a VM that came here (its tap appeared while watched, or libvirt says it
        // migrated in) should have announced itself.
        let arrived = migrated_in == Some(true) || (self.appeared && migrated_in.is_none());
        match self.first_rarp {
            Some(t) if self.rarps > 1 => {
                format!(
                    "RARP announce seen at {} ({} in all).",
                    t.clock(),
                    self.rarps
                )
            }
            Some(t) => format!("RARP announce seen at {}.", t.clock()),
            // A VM started on this host has nothing to announce.
            None if migrated_in == Some(false) => {
                "No RARP: the VM was started on this host (libvirt: booted), not migrated in."
                    .into()
            }
            None if arrived && self.first_from_vm.is_some() => {
                "No RARP since the tap appeared, yet the VM is sending: QEMU's announce-self \
                 did not run here, so switches and OVN (activation-strategy=rarp) were not told \
                 where the VM went."
                    .into()
            }
            None if self.appeared => "No RARP since the tap appeared.".into(),
            None => "No RARP seen.".into(),
        }
    }

    /// The guest's own announce.
    fn garp_words(&self) -> String {
        match self.first_garp {
            Some(t) if self.garps > 1 => {
                format!("GARP seen at {} ({} in all).", t.clock(), self.garps)
            }
            Some(t) => format!("GARP seen at {}.", t.clock()),
            None => "No GARP seen.".into(),
        }
    }

    /// The outage in its parts, in plain words, once the switch-over and a gap are known:
    /// the network's part (until it delivers to the VM again) and the guest's (until the
    /// host accepts what it sends), the longer one named first.
    fn anatomy(&self) -> Option<String> {
        let sw = self.switchover()?;
        let (inbound, outbound) = (self.inbound_gap_ms(), self.outbound_gap_ms());
        let secs = |ms: u64| {
            if ms >= 10_000 {
                format!("{} s", (ms + 500) / 1000)
            } else {
                format!("{:.1} s", ms as f64 / 1000.0)
            }
        };
        let from = format!("From the switch-over at {}", sw.clock());
        Some(match (inbound, outbound) {
            (Some(i), Some(o)) if o > i => format!(
                "{from}, the network took {} to deliver to the VM again; the guest's stale \
                 gateway MAC kept its replies dropped for {} more.",
                secs(i),
                secs(o - i)
            ),
            (Some(i), Some(0)) => format!(
                "{from}, the network took {} to deliver to the VM again: all of the outage; \
                 the host accepted the guest's frames at once.",
                secs(i)
            ),
            (Some(i), Some(o)) => format!(
                "{from}, the network took {} to deliver to the VM again: the longer part; \
                 the host accepted the guest's frames after {}.",
                secs(i),
                secs(o)
            ),
            (Some(i), None) => format!(
                "{from}, the network took {} to deliver to the VM again.",
                secs(i)
            ),
            (None, Some(o)) if o > 0 => format!(
                "{from}, the host accepted the guest's frames after {}; nothing delivered to \
                 the VM was seen yet.",
                secs(o)
            ),
            _ => return None,
        })
    }
}
