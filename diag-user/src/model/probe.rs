//! A tap of the drop-driven datapath getting or losing the per-frame probe, and why: typed,
//! so the datapath's rules, the verdict engine and the notice's words agree without any of
//! them reading another's text.

use serde::{Deserialize, Serialize};

/// Why a tap got or lost the per-frame probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeReason {
    /// The tap appeared while watched: a VM arriving, perhaps by migration.
    Appeared,
    /// The VM sent frames to a MAC the tap does not have (or the window of such frames
    /// is open).
    StaleFrames,
    /// The VM's RARP: a migration's announce.
    Rarp,
    /// The tap's MAC changed while its VM was sending.
    MacChanged,
    /// The tap joined a bridge: frames to other MACs are switched there, never dropped.
    JoinedBridge,
    /// The tap left its bridge: the kernel's drops count its stale frames again.
    LeftBridge,
    /// No stale frames for `--probe-linger` seconds.
    Calm,
}

/// A tap got (`added`) or lost the per-frame probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeChange {
    pub added: bool,
    pub reason: ProbeReason,
    /// For a probe added to a tap that appeared: it stays until the VM has sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub until_sent: bool,
    /// For a probe removed after calm: how long the tap was calm, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calm_ms: Option<u64>,
}

impl ProbeChange {
    pub fn added(reason: ProbeReason, until_sent: bool) -> Self {
        Self {
            added: true,
            reason,
            until_sent,
            calm_ms: None,
        }
    }

    pub fn removed(reason: ProbeReason) -> Self {
        Self {
            added: false,
            reason,
            until_sent: false,
            calm_ms: None,
        }
    }

    pub fn calm(linger: std::time::Duration) -> Self {
        Self {
            calm_ms: Some(linger.as_millis() as u64),
            ..Self::removed(ProbeReason::Calm)
        }
    }

    /// Why, in the words of a notice.
    pub fn why(&self) -> &'static str {
        match self.reason {
            ProbeReason::Appeared => {
                "it appeared while watched (a VM arriving, perhaps by migration)"
            }
            ProbeReason::StaleFrames => "frames to a MAC it does not have",
            ProbeReason::Rarp => "RARP (a migration's announce)",
            ProbeReason::MacChanged => "its MAC changed while its VM was sending",
            ProbeReason::JoinedBridge => "joined a bridge",
            ProbeReason::LeftBridge => "left its bridge",
            ProbeReason::Calm => "calm again",
        }
    }

    /// What the change means for the tap, after its name (the tap's timeline says this).
    pub fn words(&self, ifname: &str) -> String {
        match (self.added, self.reason) {
            (_, ProbeReason::JoinedBridge) => format!(
                "{ifname} joined a bridge: its frames to other MACs are switched there, not \
                 dropped, so the per-frame probe counts them"
            ),
            (_, ProbeReason::LeftBridge) => format!(
                "{ifname} left its bridge: the kernel's drops count its stale frames again, \
                 and the per-frame probe is removed"
            ),
            (false, _) => format!(
                "no stale frames for {} s: its per-frame probe is removed",
                self.calm_ms.unwrap_or_default() as f64 / 1000.0
            ),
            (true, _) => {
                let what = if self.until_sent {
                    "its VM's RARP and the first frames to and from it"
                } else {
                    "the end of its stale frames"
                };
                format!(
                    "{}: a per-frame probe now times {what} to the frame",
                    self.why()
                )
            }
        }
    }

    /// The notice's message.
    pub fn message(&self, ifname: &str) -> String {
        match self.reason {
            ProbeReason::JoinedBridge | ProbeReason::LeftBridge => self.words(ifname),
            _ => format!("{ifname}: {}", self.words(ifname)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words users have read in notices since the drop-driven datapath came.
    #[test]
    fn notices_say_what_they_said() {
        let appeared = ProbeChange::added(ProbeReason::Appeared, true);
        assert_eq!(
            appeared.message("tap0"),
            "tap0: it appeared while watched (a VM arriving, perhaps by migration): a \
             per-frame probe now times its VM's RARP and the first frames to and from it to \
             the frame"
        );
        let stale = ProbeChange::added(ProbeReason::StaleFrames, false);
        assert_eq!(
            stale.message("tap0"),
            "tap0: frames to a MAC it does not have: a per-frame probe now times the end of \
             its stale frames to the frame"
        );
        let calm = ProbeChange::calm(std::time::Duration::from_millis(300));
        assert_eq!(
            calm.message("tap0"),
            "tap0: no stale frames for 0.3 s: its per-frame probe is removed"
        );
        assert!(ProbeChange::added(ProbeReason::JoinedBridge, false)
            .message("tap0")
            .starts_with("tap0 joined a bridge: "));
        let json = serde_json::to_string(&calm).unwrap();
        assert_eq!(json, r#"{"added":false,"reason":"calm","calm_ms":300}"#);
        assert_eq!(serde_json::from_str::<ProbeChange>(&json).unwrap(), calm);
    }
}
