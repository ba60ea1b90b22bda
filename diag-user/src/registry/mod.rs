//! The one registry of a run's taps: everything the run knows of each tap lives in its
//! [`Tap`] entry (link facts, the VM behind it, MAC history, counters, datapath and probe,
//! verdict state, the outage's anatomy), and every output reads it from here.
//!
//! A tap is identified by a [`TapKey`]: its network namespace and its ifindex, never its
//! name alone (two namespaces can each have a `tap0`; a name is reused once a tap went).
//! Records name a tap by its name within its namespace, so the registry also finds a live
//! tap by (namespace, name). Attaching, following a rename and forgetting a tap that went
//! are done here, once.

pub mod addrs;
pub mod peers;
pub mod tap;

use std::{collections::HashMap, time::Duration};

pub use self::tap::{Announce, Blackout, Families, NdFacts, Tap, TimelineEntry, SERIES_LEN};
use crate::model::clock::Ts;

/// The network namespace tapwatch itself runs in (a tap there has no namespace field in
/// records).
pub const OWN_NETNS: u64 = 0;

/// Which tap: its network namespace ([`OWN_NETNS`] for tapwatch's own, else a number of
/// the namespace's name in records: its identity sources' inode, or [`TapKey::of`]'s) and
/// its ifindex there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TapKey {
    pub netns: u64,
    pub ifindex: u32,
}

impl TapKey {
    pub fn own(ifindex: u32) -> Self {
        Self {
            netns: OWN_NETNS,
            ifindex,
        }
    }

    /// The key of a tap as records name it: `NAMESPACE/IFNAME` for one of another
    /// namespace (whose ifindex may be another pod's too), keyed by its namespace's name.
    pub fn of(ifname: &str, ifindex: u32) -> Self {
        Self {
            netns: Self::netns_of(ifname),
            ifindex,
        }
    }

    /// The namespace part of a key, from the name records give a tap.
    pub fn netns_of(ifname: &str) -> u64 {
        match crate::collect::namespaces::split(ifname) {
            (None, _) => OWN_NETNS,
            // FNV-1a of the namespace's name: stable across runs and builds, never
            // OWN_NETNS.
            (Some(ns), _) => ns
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
                })
                .max(1),
        }
    }
}

/// Every tap of a run: live ones and those gone but not yet forgotten, in the order they
/// were attached.
#[derive(Default)]
pub struct Registry {
    taps: Vec<Tap>,
    /// Live taps by namespace and name: how records name them.
    live: HashMap<(u64, String), usize>,
}

impl Registry {
    /// Every tap, in the order they were attached.
    pub fn all(&self) -> &[Tap] {
        &self.taps
    }

    /// The taps being watched now.
    pub fn live(&self) -> impl Iterator<Item = &Tap> {
        self.taps.iter().filter(|t| t.gone_at.is_none())
    }

    /// The live tap of that name in that namespace, else the last one that had it.
    pub fn named(&self, netns: u64, ifname: &str) -> Option<&Tap> {
        match self.live.get(&(netns, ifname.to_string())) {
            Some(&i) => Some(&self.taps[i]),
            None => self
                .taps
                .iter()
                .rev()
                .find(|t| t.key.netns == netns && t.ifname == ifname),
        }
    }

    /// The tap with that key, live or gone (the latest, if the key was reused).
    pub fn get(&self, key: TapKey) -> Option<&Tap> {
        self.taps.iter().rev().find(|t| t.key == key)
    }

    /// Where the live tap of that name is, for [`Registry::at`].
    pub fn live_index(&self, netns: u64, ifname: &str) -> Option<usize> {
        self.live.get(&(netns, ifname.to_string())).copied()
    }

    pub fn at(&self, i: usize) -> &Tap {
        &self.taps[i]
    }

    pub fn at_mut(&mut self, i: usize) -> &mut Tap {
        &mut self.taps[i]
    }

    /// Where each tap is by its name and ifindex (the latest of a name attached again): a
    /// summary row finds its tap at once, not by a search of every tap.
    pub fn by_name_and_index(&self) -> HashMap<(&str, u32), usize> {
        self.taps
            .iter()
            .enumerate()
            .map(|(i, t)| ((t.ifname.as_str(), t.key.ifindex), i))
            .collect()
    }

    /// A tap attached: from now on records by its name are about it. Returns its index.
    pub fn attach(&mut self, tap: Tap) -> usize {
        let i = self.taps.len();
        self.live.insert((tap.key.netns, tap.ifname.clone()), i);
        self.taps.push(tap);
        i
    }

    /// The live tap of that name went at `ts`; its index.
    pub fn detach(&mut self, netns: u64, ifname: &str, ts: Ts) -> Option<usize> {
        let i = self.live.remove(&(netns, ifname.to_string()))?;
        self.taps[i].gone_at = Some(ts);
        Some(i)
    }

    /// The live tap `old` is called `new` now; its index.
    pub fn rename(&mut self, netns: u64, old: &str, new: &str) -> Option<usize> {
        let i = self.live.remove(&(netns, old.to_string()))?;
        let t = &mut self.taps[i];
        t.ifname = new.to_string();
        t.counters.ifname = new.to_string();
        self.live.insert((netns, new.to_string()), i);
        Some(i)
    }

    /// Forgets the taps that went away more than `grace` before `now`: a run of weeks
    /// keeps what its live taps need. Says whether any was forgotten.
    pub fn forget_gone(&mut self, now: Ts, grace: Duration) -> bool {
        let grace_ms = grace.as_millis() as i64;
        let before = self.taps.len();
        self.taps
            .retain(|t| t.gone_at.is_none_or(|g| now.ms_since(g) < grace_ms));
        if self.taps.len() != before {
            self.live = self
                .taps
                .iter()
                .enumerate()
                .filter(|(_, t)| t.gone_at.is_none())
                .map(|(i, t)| ((t.key.netns, t.ifname.clone()), i))
                .collect();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::Mode,
        verdict::fixtures::{at, NEW},
    };

    fn tap(netns: u64, ifindex: u32, name: &str) -> Tap {
        Tap::new(
            TapKey { netns, ifindex },
            name,
            Some(NEW),
            Mode::Routed,
            at(0),
        )
    }

    /// Two namespaces each with a `tap0` (even with the same ifindex) are two taps; a name
    /// reused after a tap went names the new one; a rename follows the tap.
    #[test]
    fn keyed_by_namespace_and_ifindex() {
        let mut r = Registry::default();
        r.attach(tap(OWN_NETNS, 7, "tap0"));
        r.attach(tap(4026532001, 7, "tap0"));
        assert_eq!(r.live().count(), 2);
        assert_eq!(r.named(4026532001, "tap0").unwrap().key.netns, 4026532001);
        assert_eq!(r.named(OWN_NETNS, "tap0").unwrap().key, TapKey::own(7));

        r.detach(OWN_NETNS, "tap0", at(10));
        r.attach(tap(OWN_NETNS, 9, "tap0"));
        assert_eq!(r.named(OWN_NETNS, "tap0").unwrap().key.ifindex, 9);
        assert!(r.get(TapKey::own(7)).unwrap().gone_at.is_some());

        r.rename(OWN_NETNS, "tap0", "tap1");
        let renamed = r.named(OWN_NETNS, "tap1").unwrap();
        assert_eq!(
            (renamed.key.ifindex, renamed.counters.ifname.as_str()),
            (9, "tap1")
        );
        // The old name now finds only the tap that went under it.
        assert!(r.named(OWN_NETNS, "tap0").unwrap().gone_at.is_some());

        r.forget_gone(at(10 + 5000), Duration::from_secs(5));
        assert_eq!(r.all().len(), 2);
        assert!(r.get(TapKey::own(7)).is_none());
        assert_eq!(r.live_index(OWN_NETNS, "tap1"), Some(1));
    }
}
