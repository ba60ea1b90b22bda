//! Kernel timestamps to wall-clock time.
//!
//! The eBPF programs stamp frames with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC). The offset to
//! CLOCK_REALTIME is sampled once at start, so frame times stay ordered even if NTP steps
//! the wall clock during a run.

use chrono::{DateTime, SecondsFormat, Utc};

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Nanoseconds of CLOCK_MONOTONIC now: the clock the kernel stamps frames with.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    realtime_minus_monotonic_ns: i128,
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

impl WallClock {
    pub fn new() -> Self {
        // Bracket the realtime read between two monotonic reads to halve the error.
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m2 = clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            realtime_minus_monotonic_ns: r - (m1 + m2) / 2,
        }
    }

    /// Wall-clock time of a CLOCK_MONOTONIC timestamp.
    pub fn to_utc(&self, monotonic_ns: u64) -> DateTime<Utc> {
        let ns = monotonic_ns as i128 + self.realtime_minus_monotonic_ns;
        DateTime::from_timestamp_nanos(ns as i64)
    }

    /// CLOCK_MONOTONIC nanoseconds of a wall-clock time given in nanoseconds since the
    /// epoch (for frames that libpcap stamped with the wall clock).
    pub fn monotonic_of(&self, unix_ns: i128) -> u64 {
        (unix_ns - self.realtime_minus_monotonic_ns).max(0) as u64
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.to_utc(monotonic_ns())
    }
}

/// RFC 3339, UTC, microseconds: `2026-11-22T01:34:00.123456Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A record's time: wall-clock UTC, written as [`rfc3339`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ts(pub DateTime<Utc>);

impl Ts {
    /// Milliseconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn ms_since(self, earlier: Ts) -> i64 {
        (self.0 - earlier.0).num_milliseconds()
    }

    /// `HH:MM:SS.mmm`, for people.
    pub fn clock(self) -> String {
        self.0.format("%H:%M:%S%.3f").to_string()
    }
}

impl std::fmt::Display for Ts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Ts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| Ts(t.to_utc()))
            .map_err(|e| serde::de::Error::custom(format!("ts {s:?}: {e}")))
    }
}

impl serde::Serialize for Ts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_maps_near_now() {
        let c = WallClock::new();
        let skew = (c.now() - Utc::now()).num_milliseconds().abs();
        assert!(skew < 1000, "skew {skew} ms");
        let s = rfc3339(c.to_utc(0));
        assert!(
            s.ends_with('Z') && s.len() == "2026-11-22T01:34:00.123456Z".len(),
            "{s}"
        );
    }
}
