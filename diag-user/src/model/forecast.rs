//! A destination tap's forecast: before the VM resumes, whether the guest will find the
//! MAC it has cached for its gateway, and afterwards whether that came true.

use serde::{Deserialize, Serialize};

use super::{clock::Ts, mac::MacAddr};

/// What tapwatch expects of a VM that is migrating in, judged before its first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forecast {
    /// A blackout is expected: the guest will send to a MAC the tap does not have.
    pub at_risk: bool,
    /// Judged from the source host's facts (the tap's MAC there), not from libvirt's rule
    /// alone.
    pub certain: bool,
    /// The tap's MAC now, and the MAC the guest has (most likely) cached for its gateway.
    pub tap_mac: Option<MacAddr>,
    pub cached_mac: Option<MacAddr>,
    /// Why, in words, with the likely cause.
    pub cause: String,
    /// How long the blackout is expected to last, in milliseconds (a Linux guest's
    /// stale neighbour entry): none when no blackout is expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_ms: Option<[u64; 2]>,
    /// Settled once the VM ran here: whether it came true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ForecastOutcome>,
}

impl Forecast {
    /// It still stands: judged, the VM not yet settled here.
    pub fn standing(&self) -> bool {
        self.outcome.is_none()
    }
}

/// How a forecast turned out once the VM ran on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastOutcome {
    /// A blackout came, as foreseen.
    CameTrue,
    /// A blackout was foreseen and did not come (the guest re-learnt its gateway in time,
    /// or it had not cached the MAC expected).
    FalseAlarm,
    /// No blackout was foreseen and none came.
    Right,
}

impl ForecastOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ForecastOutcome::CameTrue => "came_true",
            ForecastOutcome::FalseAlarm => "false_alarm",
            ForecastOutcome::Right => "right",
        }
    }
}

/// A run's forecasts, for its summary: how many were made, came true, were false alarms,
/// and the blackouts after a migration that nothing foresaw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForecastCounts {
    pub made: u64,
    pub came_true: u64,
    pub false_alarms: u64,
    pub missed: u64,
}

impl ForecastCounts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The `forecast` record's fields beside its time and tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForecastRecord {
    pub ts: Ts,
    pub ifname: String,
    pub vm: String,
    #[serde(flatten)]
    pub forecast: Forecast,
}
