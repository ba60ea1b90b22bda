//! Reading what the kernel counted: the per-CPU counters, the links' statistics, the
//! drops by reason and the windows.

use std::collections::{BTreeMap, HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData};
use diag_common::{kernel::hint_slot, TapCounters, TapWindow};

use super::Probe;
use crate::collect::{datapath::TapCounts, netlink};

impl Probe {
    /// Once an interval: the links' statistics, the drops by reason, and the per-frame
    /// probes (added where a window is open without one, removed after the linger's calm).
    pub fn refresh(&mut self) {
        // One statistics request per namespace with taps, from inside it.
        let mut by_ns: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (&id, tap) in &self.taps {
            by_ns
                .entry(tap.at.ns.as_ref().map_or(0, |n| n.inode))
                .or_default()
                .push(id);
        }
        for ids in by_ns.values() {
            let at = &self.taps[&ids[0]].at;
            let Ok(inside) = at.enter() else {
                continue;
            };
            let totals = netlink::link_totals(None);
            drop(inside);
            let Ok(totals) = totals else {
                continue;
            };
            for id in ids {
                let tap = self.taps.get_mut(id).expect("listed above");
                if let Some(t) = totals.get(&tap.at.ifindex) {
                    tap.latest = *t;
                }
            }
        }
        self.read_drops(None);
        let pending = self.open_windows();
        self.follow_probes(&pending);
    }

    /// The taps with something pending now (an open mismatch window, or the first data
    /// frame to the VM awaited after its RARP). Also clears the window hint of every slot
    /// whose taps have nothing pending, so their probes skip the window map again. A window opened between the read and the clear is found by the read after it
    /// and its hint set again: at worst one frame to the tap's MAC, in those microseconds,
    /// does not end it (the next one does).
    fn open_windows(&mut self) -> HashSet<u32> {
        let mut by_slot: HashMap<u32, Vec<u32>> = HashMap::new();
        for (&id, tap) in &self.taps {
            by_slot
                .entry(hint_slot(tap.at.ifindex))
                .or_default()
                .push(id);
        }
        let is_open = |w: &BpfHashMap<MapData, u32, TapWindow>, i: &u32| {
            w.get(i, 0).is_ok_and(|w: TapWindow| w.pending())
        };
        let mut open = HashSet::new();
        for (slot, taps) in by_slot {
            if !self.hints.get(&slot, 0).is_ok_and(|h| h != 0) {
                continue;
            }
            let now: Vec<u32> = taps
                .iter()
                .copied()
                .filter(|i| is_open(&self.windows, i))
                .collect();
            if now.is_empty() {
                let _ = self.hints.set(slot, 0, 0);
                if taps.iter().any(|i| is_open(&self.windows, i)) {
                    let _ = self.hints.set(slot, 1, 0);
                }
            }
            open.extend(now);
        }
        open
    }

    /// Reads the drop counters into the taps (`only`: one tap, whose entries are then
    /// removed from the map).
    pub(super) fn read_drops(&mut self, only: Option<u32>) {
        let Some(hook) = self.drop_hook.as_ref() else {
            return;
        };
        let mut by_tap: HashMap<u32, BTreeMap<String, u64>> = HashMap::new();
        let mut done = Vec::new();
        for (key, values) in self.drops_map.iter().flatten() {
            if only.is_some_and(|i| i != key.ifindex) {
                continue;
            }
            let n: u64 = values.iter().sum();
            *by_tap
                .entry(key.ifindex)
                .or_default()
                .entry(hook.layout.reason_name(key.reason))
                .or_default() += n;
            done.push(key);
        }
        for (ifindex, tap) in self.taps.iter_mut() {
            if only.is_none_or(|i| i == *ifindex) {
                tap.kernel_drops = by_tap.remove(ifindex).unwrap_or_default();
            }
        }
        if only.is_some() {
            for key in done {
                let _ = self.drops_map.remove(&key);
            }
        }
    }

    /// Summed counters of an attached interface: what the programs counted, the link's
    /// frame and byte totals since attach, and the kernel's drops.
    pub fn counters(&self, ifindex: u32) -> Option<TapCounts> {
        let tap = self.taps.get(&ifindex)?;
        let mut c = TapCounters::default();
        if let Ok(per_cpu) = self.counters.get(&ifindex, 0) {
            for v in per_cpu.iter() {
                c.accumulate(v);
            }
        }
        let t = tap.latest.since(&tap.base);
        c.from_vm_frames = t.rx_packets;
        c.from_vm_bytes = t.rx_bytes;
        c.to_vm_frames = t.tx_packets;
        c.to_vm_bytes = t.tx_bytes;
        // The drop program counts the hot reasons of the drop-driven datapath with the
        // tap's counters; the others by reason.
        let mut kernel_drops = tap.kernel_drops.clone();
        if let Some(h) = &self.drop_hook {
            let k = &h.layout.kernel;
            for (n, reason) in [
                (c.otherhost_drops, k.reason_otherhost),
                (c.unhandled_proto_drops, k.reason_unhandled_proto),
            ] {
                if n > 0 {
                    *kernel_drops
                        .entry(h.layout.reason_name(reason))
                        .or_default() += n;
                }
            }
        }
        // Read after the counters: a stale frame they count has opened its window by now
        // (the observe step counts, then follows the window, in one program run).
        let window_since_ns = self
            .windows
            .get(&ifindex, 0)
            .ok()
            .filter(TapWindow::is_open)
            .map(|w| w.mismatch_since_ns);
        Some(TapCounts {
            counters: c,
            kernel_drops,
            window_since_ns,
        })
    }
}

pub(super) fn zeroed_per_cpu() -> std::io::Result<aya::maps::PerCpuValues<TapCounters>> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    aya::maps::PerCpuValues::try_from(vec![TapCounters::default(); n])
        .map_err(|e| std::io::Error::other(e.to_string()))
}
