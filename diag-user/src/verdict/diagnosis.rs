//! The diagnosis in plain words: what a state means for this VM, its MACs, its announces.

use super::state::{Blackout, TapView};
use crate::model::{
    clock::Ts,
    mac::{show, MacAddr},
    Mode, State,
};

impl TapView {
    /// The diagnosis in plain words, as of `now`.
    pub fn diagnosis(&self, now: Ts) -> String {
        let mut s = Vec::new();
        match (self.state, self.blackout) {
            (State::Blackout, Some(b)) | (State::Gone, Some(b @ Blackout { end: None, .. })) => {
                let was = match self.mac_until(b.stale_mac) {
                    Some(t) => format!(
                        " (the tap's MAC until {}, now {})",
                        t.clock(),
                        show(self.mac, "none")
                    ),
                    None => format!(" (not the tap's MAC, {})", show(self.mac, "none")),
                };
                if b.stale_mac == MacAddr::default() {
                    // A cooked capture or lost samples: the kernel said "not mine", not to whom.
                    s.push(format!(
                        "VM sends to a MAC that is not the tap's ({}); the kernel drops these frames as PACKET_OTHERHOST.",
                        show(self.mac, "none")
                    ));
                } else {
                    s.push(format!(
                        "VM still sends to {}{was}; the kernel drops these frames as PACKET_OTHERHOST.",
                        b.stale_mac
                    ));
                }
                if self.tap_mac_unusual() {
                    s.push(
                        "The tap MAC is not fe:+guest MAC, as happens with interface managed='no' \
                         and a fixed port MAC."
                            .into(),
                    );
                }
                if self.state == State::Gone {
                    s.push(format!(
                        "The tap was removed {} ms into the blackout.",
                        self.blackout_ms(now).unwrap_or(0)
                    ));
                } else {
                    s.push("The blackout ends when the guest re-ARPs.".into());
                }
            }
            (_, Some(b @ Blackout { end: Some(end), .. })) => {
                let rearp = match self.last_guest_arp {
                    Some(t) if t >= b.start && t <= end => {
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
                    s.push(
                        "The tap MAC is not fe:+guest MAC, as happens with interface managed='no' \
                         and a fixed port MAC."
                            .into(),
                    );
                }
            }
            _ => {}
        }
        if self.mode == Mode::Bridged && self.counters.dst_mismatch_frames > 0 {
            s.push(format!(
                "{} frames to other MACs: normal on a bridged tap, not drops.",
                self.counters.dst_mismatch_frames
            ));
        }
        let booted_here = self.vm.as_ref().and_then(|v| v.migrated_in()) == Some(false);
        match self.last_rarp {
            Some(t) => s.push(format!("RARP announce seen at {}.", t.clock())),
            // A VM started on this host has nothing to announce.
            None if booted_here => s.push(
                "No RARP: the VM was started on this host (libvirt: booted), not migrated in."
                    .into(),
            ),
            None if self.counters.from_vm_frames > 0 => s.push(
                "No RARP since the tap appeared, yet the VM is sending: QEMU's announce-self \
                 did not run here, so switches and OVN (activation-strategy=rarp) were not told \
                 where the VM went."
                    .into(),
            ),
            None => s.push("No RARP since the tap appeared.".into()),
        }
        match self.last_garp {
            Some(t) => s.push(format!("GARP seen at {}.", t.clock())),
            None => s.push("No GARP seen.".into()),
        }
        if self.state == State::Quiet || self.counters.from_vm_frames == 0 {
            s.push(format!(
                "The guest has sent nothing for {} s.",
                now.ms_since(self.last_from_vm) / 1000
            ));
        }
        s.join(" ")
    }
}
