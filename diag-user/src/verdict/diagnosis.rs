//! The diagnosis in plain words: what a state means for this VM, its MACs, its announces.

use crate::model::{
    clock::Ts,
    mac::{show, MacAddr},
    Mode, State,
};
use crate::registry::{Blackout, Families, Tap};

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
                ", {ms} ms after tapwatch's nudge told the guest {} at the tap's MAC",
                n.claims()
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
                s.extend(self.router_words(b));
                if self.tap_mac_unusual() {
                    s.push(UNUSUAL_TAP_MAC.into());
                }
                if self.state == State::Gone {
                    s.push(format!(
                        "The tap was removed {} ms into the blackout.",
                        self.blackout_ms(now).unwrap_or(0)
                    ));
                } else {
                    s.push(self.ends_when());
                }
            }
            (_, Some(b @ Blackout { end: Some(end), .. })) => {
                let rearp = self
                    .nudge_ended(b)
                    .unwrap_or_else(|| self.resolved_words(b, end));
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
                s.extend(self.router_words(b));
                if self.tap_mac_unusual() {
                    s.push(UNUSUAL_TAP_MAC.into());
                }
            }
            _ => {}
        }
        s
    }

    /// The families the guest's stale frames were of; IPv4 when nothing says otherwise
    /// (a blackout only the counters showed).
    fn stale_families(&self) -> Families {
        match self.nd.stale {
            Families {
                v4: false,
                v6: false,
            } => Families {
                v4: true,
                v6: false,
            },
            f => f,
        }
    }

    /// How a blackout going on ends, in the words of the families it is in.
    fn ends_when(&self) -> String {
        let how = match self.stale_families() {
            Families { v4: true, v6: true } => {
                "the guest re-ARPs its gateway and re-resolves its IPv6 router by neighbour \
                 discovery (each family's cache goes stale on its own)"
            }
            Families { v6: true, .. } => {
                "the guest re-resolves its router by neighbour discovery (or a Router \
                 Advertisement gives it one at the tap's MAC)"
            }
            _ => "the guest re-ARPs",
        };
        format!(
            "The blackout ends when {how}, or at once when told where its gateway is \
             (`tapwatch nudge`)."
        )
    }

    /// What the guest did that ended a blackout from `start` to `end`: re-ARPed, re-resolved
    /// its router by neighbour discovery, or both (a dual-stack guest's two caches).
    fn resolved_words(&self, b: Blackout, end: Ts) -> String {
        let start = b.start;
        let within = |t: Option<Ts>| t.filter(|t| *t >= start && *t <= end);
        let fams = self.stale_families();
        let mut said = Vec::new();
        if let Some(t) = within(self.last_guest_arp).filter(|_| fams.v4) {
            said.push(format!("the guest re-ARPed at {}", t.clock()));
        }
        if fams.v6 {
            if let Some(t) = within(self.nd.last_ra) {
                said.push(format!(
                    "a Router Advertisement reached the guest at {}",
                    t.clock()
                ));
            } else if let Some(t) = within(self.nd.last_solicit).filter(|_| self.router_gone(b)) {
                said.push(format!(
                    "the guest's neighbour discovery gave its old router up (last asked for \
                     at {}) and it moved to the router this tap advertises",
                    t.clock()
                ));
            } else if let Some(t) = within(self.nd.last_solicit) {
                said.push(format!(
                    "the guest re-resolved its router by neighbour discovery at {}",
                    t.clock()
                ));
            }
        }
        if said.is_empty() {
            String::new()
        } else {
            format!(", after {}", said.join(" and "))
        }
    }

    /// The router an IPv6 guest probes, when its address is the link-local address the
    /// tap had with the stale MAC (EUI-64): a new MAC took it off the tap, so the entry
    /// cannot be refreshed; the guest needs a new router.
    /// Whether the router the guest probed is the tap's address with the stale MAC.
    fn router_gone(&self, b: Blackout) -> bool {
        b.stale_mac.is_unicast()
            && self.addrs.stale_probe6 == Some(crate::frames::eui64_link_local(b.stale_mac))
    }

    fn router_words(&self, b: Blackout) -> Option<String> {
        if !self.nd.stale.v6 || !b.stale_mac.is_unicast() {
            return None;
        }
        let router = self.addrs.stale_probe6?;
        if !self.router_gone(b) {
            return Some(format!(
                "The guest probes its IPv6 router {router} at {}.",
                b.stale_mac
            ));
        }
        let now = self
            .mac
            .map(|m| format!(" (the tap's is {} now)", crate::frames::eui64_link_local(m)))
            .unwrap_or_default();
        Some(format!(
            "The router address it uses, {router}, was derived from the tap's old MAC and is \
             no longer on this tap{now}: neighbour discovery alone cannot refresh it; a \
             Router Advertisement from the tap's address gives the guest its router again."
        ))
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

    /// The guest's own announce: its gratuitous ARP, and for a guest that speaks IPv6 its
    /// unsolicited override Neighbour Advertisement.
    fn garp_words(&self) -> String {
        let garp = match self.first_garp {
            Some(t) if self.garps > 1 => {
                format!("GARP seen at {} ({} in all).", t.clock(), self.garps)
            }
            Some(t) => format!("GARP seen at {}.", t.clock()),
            None if self.speaks_ipv4() => "No GARP seen.".into(),
            None => String::new(),
        };
        let na = match (self.nd.first_announce, self.nd.announces) {
            (Some(t), n) if n > 1 => format!(
                "Unsolicited NA (override) seen at {} ({n} in all).",
                t.clock()
            ),
            (Some(t), _) => format!("Unsolicited NA (override) seen at {}.", t.clock()),
            (None, _) if self.speaks_ipv6() => "No unsolicited NA seen.".into(),
            (None, _) => String::new(),
        };
        [garp, na]
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether the guest showed IPv6: neighbour discovery, IPv6 stale frames or address.
    fn speaks_ipv6(&self) -> bool {
        self.nd.stale.v6 || self.counters.nd_frames() > 0 || self.addrs.ip6.is_some()
    }

    /// Whether the guest showed IPv4 (or nothing else: then the IPv4 words stand).
    fn speaks_ipv4(&self) -> bool {
        self.nd.stale.v4
            || self.counters.arp_requests + self.counters.arp_replies + self.counters.garp_frames
                > 0
            || self.addrs.ip.is_some()
            || !self.speaks_ipv6()
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
