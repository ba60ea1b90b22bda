//! A nudge: one frame written into a VM's own tap from the host side so that a guest with a
//! stale neighbour entry for its gateway re-learns it now (see `tapwatch nudge`), and what
//! came of it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{clock::Ts, mac::MacAddr};

/// Who asked for the nudge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NudgeTrigger {
    /// `tapwatch nudge`, or the live view's key after its confirmation.
    Operator,
    /// `--remediate`: the run nudged a VM whose blackout began, on the evidence recorded.
    Remediate,
}

/// The frame a nudge writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NudgeFrame {
    /// An ARP request to the guest whose sender is the gateway's IP at the tap's MAC.
    Arp,
    /// An unsolicited Neighbour Advertisement (override set) for the router's address at
    /// the tap's MAC.
    NeighborAdvert,
    /// A Router Advertisement from the tap's current link-local address.
    RouterAdvert,
}

/// How a nudge turned out. `sent` is said when the frame went; the outcome follows in a
/// second record once the tap has been watched long enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NudgeResult {
    /// `--dry-run`: the frame was shown, nothing was sent.
    DryRun,
    /// The frame went into the tap; its effect is not known yet.
    Sent,
    /// The guest sent to the tap's MAC after the nudge: its stale window ended.
    Recovered,
    /// The guest kept sending to the stale MAC (or nothing) for the time watched.
    NoEffect,
    /// tapwatch would not act (a bridged tap, no stale window, an address it does not
    /// know); nothing was sent.
    Refused,
    /// Sending failed (the tap went, missing privileges); nothing reached the guest.
    Failed,
}

impl NudgeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            NudgeResult::DryRun => "dry_run",
            NudgeResult::Sent => "sent",
            NudgeResult::Recovered => "recovered",
            NudgeResult::NoEffect => "no_effect",
            NudgeResult::Refused => "refused",
            NudgeResult::Failed => "failed",
        }
    }

    /// The nudge's last word: counted once, in `tapwatch_nudges_total`.
    pub fn is_final(self) -> bool {
        !matches!(self, NudgeResult::Sent)
    }
}

/// Where an address a nudge uses came from: every output says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrSource {
    /// `--gateway` (or the lab's own address plan).
    Flag,
    /// The VM's own ARP requests for it (or its Neighbour Solicitations) seen on this host.
    GuestProbe,
    /// The sender of the guest's stale frames (its own IP).
    StaleFrames,
    /// This host's route to the tap.
    HostRoute,
    /// The guest's Router Solicitations.
    RouterSolicitation,
    /// The link-local address derived (EUI-64) from the MAC the guest sends to, the tap's
    /// previous one.
    DerivedFromOldMac,
    /// The tap's own link-local address now (EUI-64 of its MAC): a Router
    /// Advertisement's source.
    TapLinkLocal,
    /// The all-nodes group: the guest's own IPv6 address is not known, and its MAC alone
    /// takes the frame to it.
    AllNodes,
}

impl AddrSource {
    /// In words, for the sentence that says where an address came from.
    pub fn words(self) -> &'static str {
        match self {
            AddrSource::Flag => "given by --gateway",
            AddrSource::GuestProbe => "learnt from the VM's own neighbour probes",
            AddrSource::StaleFrames => "from the VM's stale frames",
            AddrSource::HostRoute => "from this host's route to the tap",
            AddrSource::RouterSolicitation => {
                "the router the VM solicits by router discovery: the tap's link-local \
                 address derived from its previous MAC"
            }
            AddrSource::DerivedFromOldMac => "derived from the tap's previous MAC",
            AddrSource::TapLinkLocal => "the tap's own link-local address now",
            AddrSource::AllNodes => "all-nodes: the VM's own IPv6 address is not known",
        }
    }
}

/// One more frame of a nudge: what it claims and to whom, with where each address came
/// from, as the record's own `frame`, `gateway_*`, `guest_*` and `bytes` say of its first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentFrame {
    pub frame: NudgeFrame,
    pub gateway_ip: IpAddr,
    pub gateway_from: AddrSource,
    pub guest_ip: IpAddr,
    pub guest_ip_from: AddrSource,
    pub bytes: String,
}

/// The `nudge` record's fields beside its time and tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NudgeRecord {
    /// When the frame was sent (or, refused or dry, when tapwatch decided).
    pub ts: Ts,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub trigger: NudgeTrigger,
    pub result: NudgeResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<NudgeFrame>,
    /// The gateway (router) address the frame claims for the tap's MAC, and where it came
    /// from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_from: Option<AddrSource>,
    /// The guest's address the frame is sent to, and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip_from: Option<AddrSource>,
    /// The Ethernet addresses: the frame comes from the tap's MAC, to the guest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// The MAC the guest was sending to instead of the tap's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_mac: Option<MacAddr>,
    /// `recovered`: from the nudge to the guest's first frame to the tap's MAC
    /// (kernel-timed), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_after_ms: Option<u64>,
    /// The outcome: stale frames the guest sent after the nudge, and how long it was
    /// watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_ms: Option<u64>,
    /// The frame as sent, in hex (none when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// The frames sent with it, in the order written (a dual-stack guest's neighbour
    /// advertisement after its ARP request, a router advertisement after that).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_frames: Vec<SentFrame>,
    /// Why, in words: the evidence it acted on, or why it would not, or what a failed
    /// outcome suggests.
    pub message: String,
}

impl NudgeRecord {
    /// What the nudge claims to be at the tap's MAC, in words to go before "at …": "its
    /// gateway 169.254.1.1 is", "its router fe80::… is", or both for a dual-stack guest,
    /// "… are" (a router advertisement's source is the tap's own address, no claim).
    pub fn claims(&self) -> String {
        let first = self.frame.zip(self.gateway_ip);
        let all: Vec<String> = first
            .into_iter()
            .chain(self.more_frames.iter().map(|f| (f.frame, f.gateway_ip)))
            .filter_map(|(frame, ip)| match frame {
                NudgeFrame::Arp => Some(format!("its gateway {ip}")),
                NudgeFrame::NeighborAdvert => Some(format!("its router {ip}")),
                NudgeFrame::RouterAdvert => None,
            })
            .collect();
        let verb = if all.len() > 1 { "are" } else { "is" };
        format!("{} {verb}", all.join(" and "))
    }
}
