//! The records of a run: one type per line of `--json` output, and the internal bus between
//! the collectors, the verdict engine and the outputs. The field names and values are a
//! contract documented in docs/json.md (and checked against it by a test): add fields,
//! never rename them. Every kind, direction, mode and state is a typed enum here and a
//! `snake_case` (states: upper-case) string in JSON, and records read back with serde.

pub mod clock;
pub mod facts;
pub mod finding;
pub mod forecast;
mod frame;
pub mod host;
pub mod identity;
pub mod mac;
pub mod netns;
pub mod nudge;
pub mod probe;
mod rows;

use std::io;

pub use diag_common::{Direction, FrameKind};
use serde::{Deserialize, Serialize};

use self::{clock::Ts, mac::MacAddr};
pub use self::{
    frame::{Family, FrameRecord, NaFlags},
    rows::{MacHistoryEntry, SummaryRow, TapRow},
};

/// The record format's version, written as `schema` on every line. Lines without it were
/// written by tapwatch 0.1 (version 1), whose records this version reads unchanged.
pub const SCHEMA_VERSION: u32 = 2;

/// How frames leave a tap on the host side, which decides whether a dst mismatch is a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No master: the host routes (Calico, /32 routes); a frame to a foreign MAC is dropped
    /// as PACKET_OTHERHOST in ip_rcv.
    Routed,
    /// Enslaved to a bridge or OVS: frames to other MACs are normal switched traffic.
    Bridged,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Routed => "routed",
            Mode::Bridged => "bridged",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so table columns (`{:<8}`) line up.
        f.pad(self.as_str())
    }
}

/// Which capture mechanism saw a tap's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Ebpf,
    Pcap,
}

/// How tapwatch sees one tap's frames (see docs/architecture.md): the kernel's drops and
/// the link's statistics, the per-frame tc probe, or libpcap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatapathKind {
    Drops,
    Tc,
    Pcap,
}

impl DatapathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathKind::Drops => "drops",
            DatapathKind::Tc => "tc",
            DatapathKind::Pcap => "pcap",
        }
    }
}

impl std::fmt::Display for DatapathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A VM's state (see `verdict::Engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Blackout,
    Recovered,
    Quiet,
    Gone,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// So a state compares with its JSON name, as in `state == "BLACKOUT"`.
impl PartialEq<&str> for State {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Blackout => "BLACKOUT",
            State::Recovered => "RECOVERED",
            State::Quiet => "QUIET",
            State::Gone => "GONE",
        }
    }
}

/// What a `notice` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeCode {
    /// No interface matches the globs (yet).
    NoMatch,
    /// The kernel dropped link notifications; every link was read again.
    NetlinkOverflow,
    /// An output could not keep up; how many frame and stats records it did not get.
    OutputBehind,
    /// A matching tap cannot be watched, and why.
    AttachFailed,
    /// tc filters of a killed run were removed from a tap, or could not be judged.
    LeftoverFilters,
    /// A libvirt status file could not be read.
    LibvirtFile,
    /// eBPF could not load; libpcap is used, and why.
    Fallback,
    /// No terminal for the live view: NDJSON instead.
    NoTerminal,
    /// Which datapath the run uses, and why (`--datapath auto`).
    Datapath,
    /// A tap got the per-frame tc probe (stale frames, a RARP, a bridge).
    ProbeAdded,
    /// A tap lost its per-frame tc probe (calm again, left its bridge).
    ProbeRemoved,
    /// The helper that removes clsact filters of a killed run could not start or ended.
    CleanupHelper,
    /// An identity source other than libvirt's files (the OVSDB server, Proxmox's
    /// configuration, KubeVirt's pods) could not be read.
    IdentitySource,
    /// More network namespaces than a run follows (`--netns all`): those past the limit
    /// are not watched.
    Namespaces,
}

/// A step or finding of the built-in lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabEvent {
    /// The VMs answer pings on the source hypervisor.
    #[default]
    Ready,
    /// Nova plugged the destination tap.
    DstTap,
    /// The guest paused; the source tap went; the host's route moved.
    Switchover,
    /// The guest runs again on the destination.
    Resume,
    /// The fabric's route to the VM moved to the destination (after `--sdn-delay`).
    Route,
    /// QEMU sent its RARP rounds.
    Announce,
    /// The lab's ground truth.
    Truth,
}

/// What the lab's migration does to the VM's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The destination tap gets the fixed MAC 00:61:fe:ed:ca:fe (managed='no' with
    /// networking-calico): blackout until the guest's ARP entry expires.
    StaleMac,
    /// The destination tap gets fe:+guest MAC, as libvirt sets it: only the switch-over gap.
    Clean,
    /// Taps on Linux bridges: frames to other MACs are normal; no false alarm.
    Bridged,
    /// A clean migration without QEMU's RARP announce: flagged.
    NoAnnounce,
    /// KubeVirt's bridge binding: each VM's `tap0` on the bridge `k6t-eth0` of its
    /// virt-launcher pod's network namespace, the pod network's gateway a different MAC on
    /// each node (as with ovn-kubernetes): the guest keeps the source node's gateway MAC
    /// until its ARP entry fails. tapwatch, in the destination node's namespace with no
    /// option, finds the pods' taps.
    Kubevirt,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::StaleMac => "stale-mac",
            Scenario::Clean => "clean",
            Scenario::Bridged => "bridged",
            Scenario::NoAnnounce => "no-announce",
            Scenario::Kubevirt => "kubevirt",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Attached {
        ts: Ts,
        ifname: String,
        ifindex: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<MacAddr>,
        mode: Mode,
        backend: Backend,
        /// How the tap's frames are seen (absent in records of older versions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datapath: Option<DatapathKind>,
        /// The tap appeared while tapwatch ran (a VM plugged or migrating in), rather than
        /// being there when it started.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        appeared: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        /// The bridge (or other master device) the tap is on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
        old_mode: Mode,
        new_mode: Mode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
        /// The run's forecasts of blackouts (`forecast` records), when it made any or
        /// met a blackout after a migration that none foresaw.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forecasts: Option<forecast::ForecastCounts>,
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
    /// Which VM is behind a tap, from every source that names it (`libvirt` keeps its name:
    /// libvirt's facts, then `sources` and one object per other source): before its
    /// `attached` record when known then, and again whenever a source changes (a VM
    /// started or migrated in while tapwatch runs, a tap name reused by another domain, a
    /// destroyed domain: `libvirt` null).
    Identity {
        ts: Ts,
        ifname: String,
        libvirt: Option<identity::VmInterface>,
    },
    /// Something the reader of the stream should know about the run itself: lost
    /// notifications re-read, an output that fell behind, a tap that cannot be watched.
    Notice {
        ts: Ts,
        code: NoticeCode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        message: String,
        /// `probe_added` and `probe_removed`: the change, typed (the message says it in
        /// words).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe: Option<probe::ProbeChange>,
    },
    /// A VM's state changed (see `verdict::Engine`).
    Verdict {
        ts: Ts,
        ifname: String,
        #[serde(flatten)]
        fields: VerdictFields,
    },
    /// Before a VM migrating in resumes: whether its guest will find the MAC it has cached
    /// for its gateway (see `verdict`), and once it ran, whether that came true.
    Forecast(forecast::ForecastRecord),
    /// What `tapwatch preflight` finds would break a VM's live migration (or its network
    /// after it), with its evidence and what to do.
    Finding(finding::Finding),
    /// A frame written into a VM's tap so that its guest re-learns its gateway now
    /// (`tapwatch nudge`, the live view's key, `--remediate`), and what came of it.
    Nudge(nudge::NudgeRecord),
    /// One VM's migration from a source bundle to a destination bundle
    /// (`tapwatch analyze SRC DST`).
    Migration(MigrationRecord),
}

/// One VM's migration told from both hosts' bundles.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrationRecord {
    /// When the VM resumed on the destination (else when it paused on the source).
    pub ts: Ts,
    pub vm: String,
    /// The VM's tap on each host; on the source `None` when the VM was not found there
    /// (a note says why).
    pub src_ifname: Option<String>,
    pub dst_ifname: String,
    /// When the VM stopped on the source (the stop-and-copy): libvirt's status file
    /// saying it paused for the migration, else its last frame seen there, else the
    /// stats record after its last counted frame (`pause_from` says which).
    pub pause_ts: Option<Ts>,
    pub pause_from: String,
    /// When it resumed on the destination: its first RARP there (`switchover_ts`).
    pub resume_ts: Option<Ts>,
    /// `resume_ts - pause_ts`, across the two hosts' clocks (`clock_uncertainty_ms`).
    pub downtime_ms: Option<u64>,
    /// The two clocks' estimated errors together, when both hosts say they are
    /// synchronised; null when either does not (then the times cannot be compared better
    /// than their NTP state allows).
    pub clock_uncertainty_ms: Option<f64>,
    pub inbound_gap_ms: Option<u64>,
    pub outbound_gap_ms: Option<u64>,
    pub blackout_ms: Option<u64>,
    /// The facts that matter for migrations that differ between the hosts.
    pub host_diff: Vec<HostFact>,
    /// What the merge had to assume, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One fact as each host has it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostFact {
    pub fact: String,
    pub src: String,
    pub dst: String,
}

impl Record {
    /// When it happened (a frame: its kernel timestamp).
    pub fn ts(&self) -> Ts {
        match self {
            Record::Attached { ts, .. }
            | Record::Detached { ts, .. }
            | Record::MacChange { ts, .. }
            | Record::ModeChange { ts, .. }
            | Record::Stats { ts, .. }
            | Record::Summary { ts, .. }
            | Record::Renamed { ts, .. }
            | Record::Notice { ts, .. }
            | Record::Identity { ts, .. }
            | Record::Verdict { ts, .. } => *ts,
            Record::Frame(f) => f.ts,
            Record::Forecast(f) => f.ts,
            Record::Nudge(n) => n.ts,
            // Found before anything ran: of no time of its own.
            Record::Finding(_) => Ts::default(),
            Record::Lab(l) => l.ts,
            Record::Migration(m) => m.ts,
        }
    }

    /// The one tap the record is about, if it is about one.
    pub fn ifname(&self) -> Option<&str> {
        match self {
            Record::Attached { ifname, .. }
            | Record::Detached { ifname, .. }
            | Record::MacChange { ifname, .. }
            | Record::ModeChange { ifname, .. }
            | Record::Renamed { ifname, .. }
            | Record::Identity { ifname, .. }
            | Record::Verdict { ifname, .. } => Some(ifname),
            Record::Frame(f) => Some(&f.ifname),
            Record::Forecast(f) => Some(&f.ifname),
            Record::Nudge(n) => Some(&n.ifname),
            Record::Finding(_) => None,
            Record::Notice { ifname, .. } => ifname.as_deref(),
            Record::Stats { .. }
            | Record::Summary { .. }
            | Record::Lab(_)
            | Record::Migration(_) => None,
        }
    }
}

/// One step or finding of the built-in lab.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabRecord {
    pub ts: Ts,
    pub event: LabEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
    /// Truth: how long the guest sent to a MAC its tap did not have (0 if never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_window_ms: Option<u64>,
    /// Truth: the longest time the client's pings went unanswered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_outage_ms: Option<u64>,
    /// Truth: from the switch-over (the first RARP, else the guest's first frame after it
    /// resumed) to the first data frame the guest received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_gap_ms: Option<u64>,
    /// Truth: from the switch-over to the first frame the guest sent to its tap's real MAC
    /// after stale ones (0 when it sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_gap_ms: Option<u64>,
    /// Truth: how long the guest was really paused (the stop-and-copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Whether tapwatch foresaw a blackout before the VM resumed, and whether that was
    /// right (a blackout foreseen came, or none foreseen and none came).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreseen: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_right: Option<bool>,
    /// `lab --remediate`: whether tapwatch nudged the VM, and how long its stale window
    /// would have lasted without (an estimate from its guest's own neighbour timers: its
    /// gateway's last confirmation plus reachable time, probe delay and unicast probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nudged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unnudged_window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
            (Some(w), Some(o)) => {
                let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
                let forecast = match (self.foreseen, self.forecast_right) {
                    (Some(f), Some(r)) => format!(
                        "; tapwatch {} a blackout before the resume: {}",
                        if f { "foresaw" } else { "did not foresee" },
                        if r { "right" } else { "wrong" }
                    ),
                    _ => String::new(),
                };
                let nudge = match (self.nudged, self.unnudged_window_ms) {
                    (Some(true), Some(u)) => {
                        format!(" (nudged; without the nudge about {u} ms)")
                    }
                    (Some(true), None) => " (nudged)".to_string(),
                    (Some(false), _) => " (not nudged)".to_string(),
                    _ => String::new(),
                };
                format!(
                    "{vm}truth ({}): guest sent to a MAC its tap did not have for {w} ms{nudge}; \
                     client outage {o} ms; paused {}; from the switch-over, delivered to after \
                     {}, accepted from after {}{forecast}",
                    self.scenario.map_or("?", Scenario::as_str),
                    ms(self.downtime_ms),
                    ms(self.inbound_gap_ms),
                    ms(self.outbound_gap_ms),
                )
            }
            _ => format!(
                "{vm}{}{}",
                serde_json::to_value(self.event)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                self.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// The verdict on one VM, in `verdict` records and summary rows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerdictFields {
    /// VM name from libvirt (Nova's instance name first), else the tap name.
    pub vm: String,
    pub state: State,
    /// Measured blackout (or so far, while it lasts); null when there was none.
    pub blackout_ms: Option<u64>,
    /// The migration's anatomy (see docs/json.md): when the VM came up on this tap, how
    /// long until the network delivered to it again, how long until the host accepted what
    /// it sent. Null while unknown; absent in records of older versions.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub switchover_ts: Option<Option<Ts>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub inbound_gap_ms: Option<Option<u64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub outbound_gap_ms: Option<Option<u64>>,
    pub diagnosis: String,
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`); absent is `None`.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// One line of NDJSON: a record and the format's version.
#[derive(Serialize)]
pub struct Line<'a> {
    #[serde(flatten)]
    pub record: &'a Record,
    pub schema: u32,
}

/// Where records go.
pub trait Sink {
    fn emit(&mut self, rec: &Record) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// The run's datapath, once it has loaded (before the first record of a tap).
    fn datapath(&mut self, _kind: DatapathKind) {}
}
