//! A tap's counters as `stats` and `summary` records carry them.

use diag_common::TapCounters;
use serde::{Deserialize, Serialize};

use super::{clock::Ts, mac::MacAddr, present, Mode, VerdictFields};

/// Counters of one tap, cumulative since it was attached.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapRow {
    pub ifname: String,
    pub from_vm_frames: u64,
    pub from_vm_bytes: u64,
    pub to_vm_frames: u64,
    pub to_vm_bytes: u64,
    pub dst_mismatch_frames: u64,
    pub rarp_frames: u64,
    pub garp_frames: u64,
    pub arp_requests: u64,
    pub arp_replies: u64,
    pub events_lost: u64,
    /// IPv6 neighbour discovery (absent when none: a guest that speaks no IPv6, or records
    /// of older versions). An announcing advertisement counts in `neighbor_adverts` and in
    /// `unsolicited_nas`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub router_solicits: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub router_adverts: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub neighbor_solicits: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub neighbor_adverts: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unsolicited_nas: u64,
    /// Frames the kernel dropped on the tap, by reason (`OTHERHOST`, `UNHANDLED_PROTO`,
    /// `FULL_RING`…): the drop-driven datapath only.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kernel_drops: std::collections::BTreeMap<String, u64>,
    /// The datapath's own mismatch window when the counters were read: when its first
    /// frame to a foreign MAC came (kernel-timed), `null` while the VM's frames reach the
    /// tap's MAC. The engine orders counts by it: a rise for frames older than a closed
    /// window's end is that window's. Absent in records of older versions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub mismatch_since: Option<Option<Ts>>,
}

impl TapRow {
    pub fn new(ifname: &str, c: &TapCounters) -> Self {
        Self {
            ifname: ifname.to_string(),
            from_vm_frames: c.from_vm_frames,
            from_vm_bytes: c.from_vm_bytes,
            to_vm_frames: c.to_vm_frames,
            to_vm_bytes: c.to_vm_bytes,
            dst_mismatch_frames: c.dst_mismatch_frames,
            rarp_frames: c.rarp_frames,
            garp_frames: c.garp_frames,
            arp_requests: c.arp_requests,
            arp_replies: c.arp_replies,
            events_lost: c.events_lost,
            router_solicits: c.router_solicits,
            router_adverts: c.router_adverts,
            neighbor_solicits: c.neighbor_solicits,
            neighbor_adverts: c.neighbor_adverts,
            unsolicited_nas: c.unsolicited_nas,
            kernel_drops: Default::default(),
            mismatch_since: None,
        }
    }

    /// With the datapath's mismatch window: open since `since`, or closed.
    pub fn with_window(self, since: Option<Ts>) -> Self {
        Self {
            mismatch_since: Some(since),
            ..self
        }
    }

    pub fn with_kernel_drops(self, kernel_drops: std::collections::BTreeMap<String, u64>) -> Self {
        Self {
            kernel_drops,
            ..self
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TapRow {
    /// Neighbour discovery frames counted, of every type.
    pub fn nd_frames(&self) -> u64 {
        self.router_solicits + self.router_adverts + self.neighbor_solicits + self.neighbor_adverts
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacHistoryEntry {
    pub ts: Ts,
    pub mac: Option<MacAddr>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    #[serde(flatten)]
    pub counters: TapRow,
    pub ifindex: u32,
    pub mode: Mode,
    /// The tap's MAC when attached, then every change, with the time it was seen.
    pub mac_history: Vec<MacHistoryEntry>,
    /// Whether the tap went away before tapwatch stopped.
    pub detached: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictFields>,
}
