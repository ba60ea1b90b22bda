//! How often `--remediate` may write into taps: at most once per tap every few seconds, a
//! few times per blackout, and a bounded number per second on the host (a migration wave
//! of hundreds of VMs is nudged over a few seconds, never in one burst).

use std::collections::{HashMap, VecDeque};

use crate::{model::clock::Ts, registry::TapKey};

/// Per tap: the least time between two nudges, in milliseconds.
pub const TAP_EVERY_MS: i64 = 5_000;
/// Per blackout: the most nudges (a guest that ignored three will ignore a fourth).
pub const PER_BLACKOUT: u32 = 3;
/// Per host: the most nudges in any second.
pub const HOST_PER_SECOND: usize = 20;

#[derive(Debug, Default)]
pub struct Limits {
    /// Per tap: its last nudge, and the blackout (its start) and how many it got.
    taps: HashMap<TapKey, TapLimit>,
    /// The host's nudges of the last second.
    recent: VecDeque<Ts>,
}

#[derive(Clone, Copy, Debug)]
struct TapLimit {
    last: Ts,
    blackout: Ts,
    count: u32,
}

/// Why a nudge must wait, or never comes for this blackout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until a later moment (this tap's interval, the host's rate).
    Later,
    /// This blackout had its nudges.
    Spent,
}

impl Limits {
    /// Whether tap `key`, in the blackout that began at `blackout`, may be nudged at `now`.
    pub fn check(&mut self, key: TapKey, blackout: Ts, now: Ts) -> Result<(), Wait> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.ms_since(*t) >= 1_000)
        {
            self.recent.pop_front();
        }
        if let Some(l) = self.taps.get(&key) {
            if l.blackout == blackout && l.count >= PER_BLACKOUT {
                return Err(Wait::Spent);
            }
            if now.ms_since(l.last) < TAP_EVERY_MS {
                return Err(Wait::Later);
            }
        }
        if self.recent.len() >= HOST_PER_SECOND {
            return Err(Wait::Later);
        }
        Ok(())
    }

    /// A nudge went.
    pub fn spend(&mut self, key: TapKey, blackout: Ts, now: Ts) {
        self.recent.push_back(now);
        let l = self.taps.entry(key).or_insert(TapLimit {
            last: now,
            blackout,
            count: 0,
        });
        if l.blackout != blackout {
            l.blackout = blackout;
            l.count = 0;
        }
        l.last = now;
        l.count += 1;
    }

    /// Forgets taps the run no longer has (bounded memory on a host whose taps churn).
    pub fn retain(&mut self, mut keep: impl FnMut(&TapKey) -> bool) {
        self.taps.retain(|k, _| keep(k));
    }
}
