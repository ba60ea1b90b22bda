//! A nudge written into a tap: kept on the tap (the live view marks it on the timeline) and
//! noted in its timeline with its outcome.

use super::Engine;
use crate::model::nudge::{NudgeRecord, NudgeResult};

impl Engine {
    pub(super) fn nudged(&mut self, n: &NudgeRecord) {
        // A refused or dry nudge wrote nothing: it is no mark on the tap's timeline.
        if matches!(n.result, NudgeResult::Refused | NudgeResult::DryRun) {
            return;
        }
        let Some(i) = self.live(&n.ifname) else {
            return;
        };
        let what = match n.result {
            NudgeResult::Sent => format!(
                "nudged: {} at {}",
                n.claims(),
                n.tap_mac.map(|m| m.to_string()).unwrap_or_default()
            ),
            NudgeResult::Recovered => match n.recovered_after_ms {
                Some(ms) => format!("nudge worked: first frame to the tap's MAC {ms} ms after"),
                None => "nudge worked".to_string(),
            },
            r => format!("nudge: {}", r.as_str()),
        };
        let tap = self.tap_mut(i);
        tap.note(n.ts, what);
        tap.nudge = Some(n.clone());
    }
}
