//! The records of a run: one type per line of `--json` output, and the internal bus between
//! the collectors, the verdict engine and the outputs. The field names are a contract
//! documented in docs/json.md; add fields, never rename them.

pub mod clock;
pub mod mac;

use std::io;

use diag_common::{parse_arp, parse_ethernet, Direction, FrameEvent, TapCounters};
use serde::Serialize;

use self::{clock::Ts, mac::MacAddr};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Attached {
        ts: Ts,
        ifname: String,
        ifindex: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        mac: Option<MacAddr>,
        mode: &'static str,
        backend: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        /// The bridge (or other master device) the tap is on.
        #[serde(skip_serializing_if = "Option::is_none")]
        master: Option<String>,
    },
    Detached {
        ts: Ts,
        ifname: String,
        reason: String,
    },
    MacChange {
        ts: Ts,
        ifname: String,
        old_mac: Option<MacAddr>,
        new_mac: Option<MacAddr>,
    },
    /// The tap joined or left a bridge (master device).
    ModeChange {
        ts: Ts,
        ifname: String,
        old_mode: &'static str,
        new_mode: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        master: Option<String>,
    },
    Frame(FrameRecord),
    Stats {
        ts: Ts,
        taps: Vec<TapRow>,
    },
    Summary {
        ts: Ts,
        taps: Vec<SummaryRow>,
    },
    /// What `tapwatch lab` did and knows (its ground truth).
    Lab(LabRecord),
    /// A watched tap got a new name that still matches the `--iface` globs: same tap, same
    /// counters and verdict; later records use the new name.
    Renamed {
        ts: Ts,
        ifname: String,
        old_ifname: String,
        ifindex: u32,
    },
    /// What libvirt says about the VM behind a tap: before its `attached` record when known
    /// then, and again whenever the domain's status file changes (a VM started or migrated
    /// in while tapwatch runs, a tap name reused by another domain, a destroyed domain:
    /// `libvirt` null).
    Identity {
        ts: Ts,
        ifname: String,
        libvirt: Option<crate::verdict::libvirt::VmInterface>,
    },
    /// Something the reader of the stream should know about the run itself: lost
    /// notifications re-read, an output that fell behind, a tap that cannot be watched.
    Notice {
        ts: Ts,
        /// A stable name for the kind of notice (`netlink_overflow`, `output_behind`,
        /// `attach_failed`, …).
        code: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        message: String,
    },
    /// A VM's state changed (see `verdict::Engine`).
    Verdict {
        ts: Ts,
        ifname: String,
        #[serde(flatten)]
        fields: VerdictFields,
    },
}

/// One step or finding of the built-in lab.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LabRecord {
    pub ts: Ts,
    /// `ready`, `dst_tap`, `switchover`, `resume`, `announce`, `truth`.
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<&'static str>,
    /// Truth: how long the guest sent to a MAC its tap did not have (0 if never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_window_ms: Option<u64>,
    /// Truth: the longest time the client's pings went unanswered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_outage_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl LabRecord {
    /// One line for people.
    pub fn describe(&self) -> String {
        let vm = self
            .vm
            .as_deref()
            .map(|v| format!("{v}: "))
            .unwrap_or_default();
        match (self.stale_window_ms, self.client_outage_ms) {
            (Some(w), Some(o)) => format!(
                "{vm}truth ({}): guest sent to a MAC its tap did not have for {w} ms; client outage {o} ms",
                self.scenario.unwrap_or("?")
            ),
            _ => format!("{vm}{}{}", self.event, self.detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()),
        }
    }
}

/// The verdict on one VM, in `verdict` records and summary rows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerdictFields {
    /// VM name from libvirt (Nova's instance name first), else the tap name.
    pub vm: String,
    pub state: &'static str,
    /// Measured blackout (or so far, while it lasts); null when there was none.
    pub blackout_ms: Option<u64>,
    pub diagnosis: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrameRecord {
    pub ts: Ts,
    pub ifname: String,
    pub direction: &'static str,
    pub kind: &'static str,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The outer (802.1ad service) tag's VLAN id of a QinQ frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outer_vlan: Option<u16>,
    /// Also addressed to a MAC the tap does not have (e.g. a unicast ARP to the old MAC).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dst_mismatch: bool,
    /// Length of the whole frame.
    pub len: u32,
    /// The captured bytes (up to 128), as they crossed the tap: not part of the JSON, but
    /// of the bundle's pcapng.
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl FrameRecord {
    /// Decodes a kernel event; `None` for an event too short to hold a MAC header.
    pub fn from_event(ev: &FrameEvent, ifname: &str, ts: Ts) -> Option<Self> {
        let frame = ev.frame();
        let eth = parse_ethernet(frame)?;
        let kind = diag_common::FrameKind::from_u8(ev.kind)?;
        let arp = match kind {
            diag_common::FrameKind::DstMismatch => None,
            _ => parse_arp(frame, eth.l3_offset),
        };
        let ip = |b: [u8; 4]| std::net::Ipv4Addr::from(b).to_string();
        let outer_stripped = ev.flags & diag_common::EVENT_FLAG_OUTER_VLAN != 0;
        let vlan_stripped = ev.flags & diag_common::EVENT_FLAG_VLAN != 0 && eth.vlan.is_none();
        Some(Self {
            ts,
            ifname: ifname.to_string(),
            direction: match Direction::from_u8(ev.direction)? {
                Direction::FromVm => "from_vm",
                Direction::ToVm => "to_vm",
            },
            kind: kind.as_str(),
            src_mac: MacAddr(eth.src),
            dst_mac: MacAddr(eth.dst),
            sender_ip: arp.map(|a| ip(a.sender_ip)),
            target_ip: arp.map(|a| ip(a.target_ip)),
            // The kernel usually strips the outer tag into metadata before tc sees the frame.
            vlan: eth.vlan.or(vlan_stripped.then_some(ev.vlan)),
            outer_vlan: eth.outer_vlan.or(outer_stripped.then_some(ev.outer_vlan)),
            dst_mismatch: ev.flags & diag_common::EVENT_FLAG_DST_MISMATCH != 0,
            len: ev.frame_len,
            data: with_vlan_tags(
                frame,
                outer_stripped.then_some(ev.outer_vlan),
                vlan_stripped.then_some(ev.vlan),
            ),
        })
    }
}

/// The frame with the tags the kernel moved into metadata put back after the MAC
/// addresses, as the VM wrote it: an outer 802.1ad tag, then an 802.1Q tag.
fn with_vlan_tags(frame: &[u8], outer: Option<u16>, vlan: Option<u16>) -> Vec<u8> {
    if frame.len() < 12 || (outer.is_none() && vlan.is_none()) {
        return frame.to_vec();
    }
    let mut f = Vec::with_capacity(frame.len() + 8);
    f.extend_from_slice(&frame[..12]);
    for (tpid, id) in [
        (diag_common::ETH_P_8021AD, outer),
        (diag_common::ETH_P_8021Q, vlan),
    ] {
        if let Some(id) = id {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// Counters of one tap, cumulative since it was attached.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
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
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MacHistoryEntry {
    pub ts: Ts,
    pub mac: Option<MacAddr>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    #[serde(flatten)]
    pub counters: TapRow,
    pub ifindex: u32,
    pub mode: &'static str,
    /// The tap's MAC when attached, then every change, with the time it was seen.
    pub mac_history: Vec<MacHistoryEntry>,
    /// Whether the tap went away before tapwatch stopped.
    pub detached: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictFields>,
}

/// Where records go.
pub trait Sink {
    fn emit(&mut self, rec: &Record) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}
