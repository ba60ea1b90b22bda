//! A tap's life in the registry: attached, its MAC and bridge changes, a new name, the VM
//! behind it, the per-frame probe, gone.

use super::{Engine, State};
use crate::{
    model::identity::VmInterface,
    model::{
        clock::Ts,
        mac::{show, MacAddr},
        DatapathKind, Mode, NoticeCode, Record, SummaryRow,
    },
    registry::{Tap, TapKey},
};

impl Engine {
    pub(super) fn attached(&mut self, rec: &Record, changes: &mut Vec<Record>) {
        let Record::Attached {
            ts,
            ifname,
            ifindex,
            mac,
            mode,
            datapath,
            appeared,
            mtu,
            master,
            ..
        } = rec
        else {
            return;
        };
        let mut t = Tap::new(TapKey::of(ifname, *ifindex), ifname, *mac, *mode, *ts);
        t.datapath = *datapath;
        t.appeared = *appeared;
        t.mtu = *mtu;
        t.master.clone_from(master);
        t.probe = *datapath == Some(DatapathKind::Tc)
            || self.pending_probe.remove(ifname.as_str()) == Some(true);
        t.vm = self.pending.remove(ifname).flatten();
        t.note(*ts, format!("tap attached, MAC {}", show(*mac, "none")));
        let vm = t.vm.clone();
        t.follow_libvirt_state(*ts, vm.as_ref());
        let i = self.registry.attach(t);
        changes.push(self.verdict(i, *ts));
        self.foresee(i, *ts);
    }

    pub(super) fn detached(
        &mut self,
        ts: Ts,
        ifname: &str,
        reason: &str,
        changes: &mut Vec<Record>,
    ) {
        if let Some(i) = self.registry.detach(TapKey::netns_of(ifname), ifname, ts) {
            self.tap_mut(i).note(ts, format!("tap gone ({reason})"));
            self.set_state(i, State::Gone, ts, changes);
        }
    }

    pub(super) fn mac_change(
        &mut self,
        ts: Ts,
        ifname: &str,
        old: Option<MacAddr>,
        new: Option<MacAddr>,
    ) {
        let Some(i) = self.live(ifname) else { return };
        let t = self.tap_mut(i);
        t.prev_mac = Some((old, ts));
        t.mac = new;
        t.remember_mac(ts, new);
        t.note(
            ts,
            format!("tap MAC {} → {}", show(old, "none"), show(new, "none")),
        );
        if t.tap_mac_unusual() {
            t.note(ts, "tap MAC is not fe:+guest MAC".into());
        }
        // Nova sets the MAC of a tap it plugged for an incoming migration.
        self.foresee(i, ts);
    }

    pub(super) fn mode_change(
        &mut self,
        ts: Ts,
        ifname: &str,
        mode: Mode,
        changes: &mut Vec<Record>,
    ) {
        let Some(i) = self.live(ifname) else { return };
        let t = self.tap_mut(i);
        t.mode = mode;
        t.note(ts, format!("tap is now {}", mode.as_str()));
        self.foresee(i, ts);
        let t = self.tap_mut(i);
        // On a bridge, frames to other MACs are switched, not dropped: an open blackout
        // ends here (its frames before this were real drops).
        if mode == Mode::Bridged && t.state == State::Blackout {
            if let Some(b) = t.blackout.as_mut() {
                b.end = Some(ts);
            }
            self.set_state(i, State::Ok, ts, changes);
        }
    }

    pub(super) fn renamed(&mut self, ts: Ts, ifname: &str, old: &str) {
        if let Some(i) = self.registry.rename(TapKey::netns_of(old), old, ifname) {
            self.tap_mut(i).note(ts, format!("tap renamed from {old}"));
        }
    }

    pub(super) fn identity(
        &mut self,
        ts: Ts,
        ifname: &str,
        vm: Option<&VmInterface>,
        changes: &mut Vec<Record>,
    ) {
        let Some(i) = self.live(ifname) else {
            self.pending.insert(ifname.to_string(), vm.cloned());
            return;
        };
        let t = self.tap_mut(i);
        t.follow_libvirt_state(ts, vm);
        if t.vm.as_ref() != vm {
            let was = t.vm_name().to_string();
            t.vm = vm.cloned();
            let now = t.vm_name().to_string();
            if now != was {
                t.note(ts, format!("VM is {now} (libvirt)"));
            }
            // Consumers keyed by VM learn the name with a verdict record.
            changes.push(self.verdict(i, ts));
        }
        self.foresee(i, ts);
    }

    /// The per-frame probe coming and going (the other notices are about the run).
    pub(super) fn notice(&mut self, rec: &Record) {
        let Record::Notice {
            ts,
            code,
            ifname: Some(ifname),
            message,
            probe,
        } = rec
        else {
            return;
        };
        let Some(i) = self.live(ifname) else {
            // Said before the tap's `attached` record: kept for it (a bounded few).
            let added = match (probe, code) {
                (Some(change), _) => Some(change.added),
                (None, NoticeCode::ProbeAdded) => Some(true),
                (None, NoticeCode::ProbeRemoved) => Some(false),
                _ => None,
            };
            if let Some(added) = added {
                if self.pending_probe.len() >= 4096 {
                    self.pending_probe.clear();
                }
                self.pending_probe.insert(ifname.clone(), added);
            }
            return;
        };
        let t = self.tap_mut(i);
        match probe {
            Some(change) => {
                t.probe = change.added;
                t.note(*ts, change.words(ifname));
            }
            // Records of older versions said the change in words only.
            None if matches!(code, NoticeCode::ProbeAdded | NoticeCode::ProbeRemoved) => {
                t.probe = *code == NoticeCode::ProbeAdded;
                let what = message.strip_prefix(&format!("{ifname}: "));
                t.note(*ts, what.unwrap_or(message).to_string());
            }
            None => {}
        }
    }

    /// The summary's final counters, so the summary's diagnosis speaks of them.
    pub(super) fn final_counters(&mut self, rows: &[SummaryRow]) {
        let found: Vec<(usize, usize)> = {
            let index = self.registry.by_name_and_index();
            rows.iter()
                .enumerate()
                .filter_map(|(r, row)| {
                    let at = index.get(&(row.counters.ifname.as_str(), row.ifindex))?;
                    Some((*at, r))
                })
                .collect()
        };
        for (i, r) in found {
            self.tap_mut(i).counters = rows[r].counters.clone();
        }
    }
}
