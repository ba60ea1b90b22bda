//! Types and frame classification shared by the eBPF programs and userspace.
//!
//! Everything here is `#![no_std]`, allocation-free and small enough for the BPF verifier:
//! the eBPF datapath, the pcap backend and offline analysis all call [`classify`] and
//! [`TapCounters::record`], so a frame is judged the same way wherever it is seen.
#![no_std]

pub mod frame;
pub mod kernel;
pub mod observe;

pub use frame::{
    classify, classify_header_only, ipv6_needs_body, lost_vlan_tag, needs_body, parse_arp,
    parse_ethernet, parse_nd, ArpView, Classification, EthernetView, NdView, ETH_P_IPV6,
};
pub use kernel::{DropKey, KernelLayout, TapConfig, TapMode, TapSite};
pub use observe::{event_flags, observe, Admitted, Observed};

/// `skb->pkt_type` the kernel's `eth_type_trans()` gives a unicast frame whose destination
/// MAC is not the receiving device's own address.
pub const PACKET_OTHERHOST: u32 = 3;

/// Bytes of a frame the classifier needs at most: Ethernet (14) + two VLAN tags (8) + an
/// IPv6 header (40) + ICMPv6 up to a Neighbour Advertisement's flags (5), to tell
/// neighbour discovery from data and an announcing advertisement from an answer; an ARP
/// body needs less (28 after the tags).
pub const CLASSIFY_LEN: usize = 67;

/// Bytes of a notable frame copied into its event.
pub const EVENT_SNAPLEN: usize = 128;

/// A dst-mismatch frame is sampled into the event stream at most once per this interval,
/// per tap and CPU; the counters still see every frame.
pub const MISMATCH_SAMPLE_INTERVAL_NS: u64 = 100_000_000;

/// `skb->pkt_type` of a frame addressed to the receiving device's own MAC.
pub const PACKET_HOST: u32 = 0;
/// `skb->pkt_type` of a frame to a multicast MAC (IPv6 neighbour discovery's, among others).
pub const PACKET_MULTICAST: u32 = 2;

/// Most taps the counter map can hold at once.
pub const MAX_TAPS: u32 = 16_384;

/// Size of the notable-frame ring buffer (a power of two, as the kernel requires).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_RARP: u16 = 0x8035;
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad: the outer (service) tag of QinQ.
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Which way a frame crossed the tap, seen from the VM. In JSON: `from_vm`, `to_vm`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Direction {
    /// Written by the VM (QEMU) into the tap: tc ingress on the host side.
    FromVm = 0,
    /// Sent by the host to the VM: tc egress on the host side.
    ToVm = 1,
}

impl Direction {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FromVm => "from_vm",
            Self::ToVm => "to_vm",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::FromVm),
            1 => Some(Self::ToVm),
            _ => None,
        }
    }
}

/// Why a frame is notable. One frame has one kind; a gratuitous ARP is `Garp`, not also a
/// request or reply event (it still counts in the request/reply counters). In JSON: the
/// `snake_case` name (`dst_mismatch`, `rarp`, …).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum FrameKind {
    DstMismatch = 1,
    Rarp = 2,
    Garp = 3,
    ArpRequest = 4,
    ArpReply = 5,
    /// The first frame from the VM addressed to the tap's own MAC after dst-mismatch frames:
    /// the end of a blackout, timed by the kernel.
    DstMatch = 6,
    /// The first unicast frame other than ARP and neighbour discovery delivered to the VM
    /// after its RARP: the network delivers to it again, timed by the kernel.
    Inbound = 7,
    /// IPv6 neighbour discovery (RFC 4861): a Router Solicitation.
    RouterSolicit = 8,
    /// A Router Advertisement.
    RouterAdvert = 9,
    /// A Neighbour Solicitation (to a solicited-node group, or unicast: a node probing a
    /// cached entry).
    NeighborSolicit = 10,
    /// A Neighbour Advertisement that is not an announce: an answer (solicited), or one
    /// without the override flag.
    NeighborAdvert = 11,
    /// An unsolicited Neighbour Advertisement with the override flag: a node announcing its
    /// address, as a gratuitous ARP does (a Linux guest sends one per address to all-nodes
    /// after a migration). It also counts as a Neighbour Advertisement.
    UnsolicitedNa = 12,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::DstMismatch),
            2 => Some(Self::Rarp),
            3 => Some(Self::Garp),
            4 => Some(Self::ArpRequest),
            5 => Some(Self::ArpReply),
            6 => Some(Self::DstMatch),
            7 => Some(Self::Inbound),
            8 => Some(Self::RouterSolicit),
            9 => Some(Self::RouterAdvert),
            10 => Some(Self::NeighborSolicit),
            11 => Some(Self::NeighborAdvert),
            12 => Some(Self::UnsolicitedNa),
            _ => None,
        }
    }

    /// The name used in JSON output (a contract: other tools parse it).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DstMismatch => "dst_mismatch",
            Self::Rarp => "rarp",
            Self::Garp => "garp",
            Self::ArpRequest => "arp_request",
            Self::ArpReply => "arp_reply",
            Self::DstMatch => "dst_match",
            Self::Inbound => "inbound",
            Self::RouterSolicit => "router_solicit",
            Self::RouterAdvert => "router_advert",
            Self::NeighborSolicit => "neighbor_solicit",
            Self::NeighborAdvert => "neighbor_advert",
            Self::UnsolicitedNa => "unsolicited_na",
        }
    }
}

/// Per-tap counters, one copy per CPU in the kernel map so increments never race.
/// Userspace sums the copies; every field but the sampling clock is a plain counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapCounters {
    pub from_vm_frames: u64,
    pub from_vm_bytes: u64,
    pub to_vm_frames: u64,
    pub to_vm_bytes: u64,
    pub dst_mismatch_frames: u64,
    pub rarp_frames: u64,
    pub garp_frames: u64,
    pub arp_requests: u64,
    pub arp_replies: u64,
    /// Notable frames that did not fit in the ring buffer.
    pub events_lost: u64,
    /// Monotonic time of the last dst-mismatch sample this CPU emitted (rate limit state).
    pub last_mismatch_sample_ns: u64,
    /// Kernel drops of the drop-driven datapath's hot reasons on this tap, counted here
    /// rather than in the drops-by-reason map (one map lookup less per stale frame);
    /// userspace reports them with the other reasons.
    pub otherhost_drops: u64,
    pub unhandled_proto_drops: u64,
    /// IPv6 neighbour discovery, by ICMPv6 type; an announcing advertisement counts both in
    /// `neighbor_adverts` and in `unsolicited_nas`.
    pub router_solicits: u64,
    pub router_adverts: u64,
    pub neighbor_solicits: u64,
    pub neighbor_adverts: u64,
    pub unsolicited_nas: u64,
}

impl TapCounters {
    /// Counts one frame of `len` bytes: in the frame and byte totals only when `totals`
    /// (datapaths that see every frame; the kernel's take totals from the link's own
    /// statistics and see only the frames that matter).
    #[inline(always)]
    pub fn record(&mut self, class: &Classification, direction: Direction, len: u64, totals: bool) {
        if totals {
            match direction {
                Direction::FromVm => {
                    self.from_vm_frames += 1;
                    self.from_vm_bytes += len;
                }
                Direction::ToVm => {
                    self.to_vm_frames += 1;
                    self.to_vm_bytes += len;
                }
            }
        }
        self.dst_mismatch_frames += class.dst_mismatch as u64;
        self.rarp_frames += class.rarp as u64;
        self.garp_frames += class.garp as u64;
        self.arp_requests += (class.arp_op == frame::ARP_OP_REQUEST) as u64;
        self.arp_replies += (class.arp_op == frame::ARP_OP_REPLY) as u64;
        self.router_solicits += (class.nd_type == frame::ND_ROUTER_SOLICIT) as u64;
        self.router_adverts += (class.nd_type == frame::ND_ROUTER_ADVERT) as u64;
        self.neighbor_solicits += (class.nd_type == frame::ND_NEIGHBOR_SOLICIT) as u64;
        self.neighbor_adverts += (class.nd_type == frame::ND_NEIGHBOR_ADVERT) as u64;
        self.unsolicited_nas += class.is_announce_na() as u64;
    }

    /// Decides whether a notable frame goes to the event stream at `now_ns`, updating the
    /// rate-limit clock. Announcements and ARP always go; mismatches are sampled.
    #[inline(always)]
    pub fn admit_event(&mut self, kind: FrameKind, now_ns: u64) -> bool {
        if kind != FrameKind::DstMismatch {
            return true;
        }
        if self.last_mismatch_sample_ns != 0
            && now_ns.wrapping_sub(self.last_mismatch_sample_ns) < MISMATCH_SAMPLE_INTERVAL_NS
        {
            return false;
        }
        self.last_mismatch_sample_ns = now_ns;
        true
    }

    /// Adds another copy (another CPU's) into this one.
    pub fn accumulate(&mut self, o: &TapCounters) {
        self.from_vm_frames += o.from_vm_frames;
        self.from_vm_bytes += o.from_vm_bytes;
        self.to_vm_frames += o.to_vm_frames;
        self.to_vm_bytes += o.to_vm_bytes;
        self.dst_mismatch_frames += o.dst_mismatch_frames;
        self.rarp_frames += o.rarp_frames;
        self.garp_frames += o.garp_frames;
        self.arp_requests += o.arp_requests;
        self.arp_replies += o.arp_replies;
        self.events_lost += o.events_lost;
        self.last_mismatch_sample_ns = self.last_mismatch_sample_ns.max(o.last_mismatch_sample_ns);
        self.otherhost_drops += o.otherhost_drops;
        self.unhandled_proto_drops += o.unhandled_proto_drops;
        self.router_solicits += o.router_solicits;
        self.router_adverts += o.router_adverts;
        self.neighbor_solicits += o.neighbor_solicits;
        self.neighbor_adverts += o.neighbor_adverts;
        self.unsolicited_nas += o.unsolicited_nas;
    }
}

/// Per-tap state shared by all CPUs (a plain hash map, not per-CPU), so a mismatch seen on
/// one CPU and the recovery seen on another still pair up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapWindow {
    /// Monotonic time of the first dst-mismatch frame since the last correctly addressed
    /// one; 0 when the VM's frames reach the tap's MAC.
    pub mismatch_since_ns: u64,
    /// Monotonic time of the RARP (a migration's announce) since which no data frame has
    /// been delivered to the VM; 0 when none is awaited.
    pub inbound_armed_ns: u64,
}

impl TapWindow {
    /// Follows a frame from the VM; true when it ends a mismatch window (a `DstMatch`).
    /// `to_own_mac`: addressed to the tap's MAC and not an ARP (a reply to the host's ARP
    /// request is addressed correctly whatever the guest's cache holds).
    /// Races between CPUs can at worst report one window's end twice.
    #[inline(always)]
    pub fn update(&mut self, dst_mismatch: bool, to_own_mac: bool, now_ns: u64) -> bool {
        if dst_mismatch {
            if self.mismatch_since_ns == 0 {
                self.mismatch_since_ns = now_ns;
            }
            false
        } else if to_own_mac && self.mismatch_since_ns != 0 {
            self.mismatch_since_ns = 0;
            true
        } else {
            false
        }
    }
}

impl TapWindow {
    /// The kind a frame's event carries once the window has seen it: its own kind, or
    /// `DstMatch` when it ends a mismatch window. `to_own_mac`: addressed to the tap's MAC
    /// (the kernel's PACKET_HOST, or a MAC comparison). ARP and neighbour discovery never
    /// end a window: a reply goes to whoever asked, whatever the guest's cache holds.
    /// Whether a mismatch window is open: only then can a correctly addressed frame matter
    /// (the eBPF path skips [`TapWindow::follow`] and its clock read otherwise).
    #[inline(always)]
    pub fn is_open(&self) -> bool {
        self.mismatch_since_ns != 0
    }

    /// Whether a frame can still change this tap's state: a mismatch window is open, or
    /// the first data frame to the VM after a RARP is awaited. The window hints say this.
    #[inline(always)]
    pub fn pending(&self) -> bool {
        self.mismatch_since_ns != 0 || self.inbound_armed_ns != 0
    }

    #[inline(always)]
    pub fn follow(
        &mut self,
        class: &Classification,
        to_own_mac: bool,
        direction: Direction,
        now_ns: u64,
    ) -> Option<FrameKind> {
        if direction == Direction::FromVm
            && self.update(
                class.dst_mismatch,
                to_own_mac && !class.is_resolution(),
                now_ns,
            )
        {
            return class.kind.or(Some(FrameKind::DstMatch));
        }
        class.kind
    }
}

/// `FrameEvent::flags` bit: the frame carried an 802.1Q tag that the kernel moved out of
/// the bytes into metadata; its id is in `vlan`.
pub const EVENT_FLAG_VLAN: u8 = 1;
/// `FrameEvent::flags` bit: the frame carried an outer (QinQ) tag that the kernel moved out
/// of the bytes into metadata; its id is in `outer_vlan`.
pub const EVENT_FLAG_OUTER_VLAN: u8 = 4;
/// `FrameEvent::flags` bit: the frame was also a dst mismatch (e.g. a unicast ARP probe to
/// a MAC the tap no longer has).
pub const EVENT_FLAG_DST_MISMATCH: u8 = 2;
/// `FrameEvent::flags` bit: the kernel took a VLAN tag off the frame and forgot its id
/// before the hook saw it (see [`frame::lost_vlan_tag`]): its 4 bytes count in
/// `frame_len`, it is in neither the bytes nor `vlan`/`outer_vlan`.
pub const EVENT_FLAG_VLAN_LOST: u8 = 8;

/// Bytes of one VLAN tag.
pub const VLAN_HLEN: u32 = 4;

/// The length of a frame as it was written, from the length a hook saw and the tags the
/// kernel had taken out of it by then (`stripped`: the `EVENT_FLAG_VLAN`,
/// `EVENT_FLAG_OUTER_VLAN` and `EVENT_FLAG_VLAN_LOST` bits of the event). Every datapath
/// and replay fills `Observed::frame_len` (and so the event's `frame_len` and the record's
/// `len`) from it, or from a length that already holds every tag.
#[inline(always)]
pub fn wire_len(seen: u32, stripped: u8) -> u64 {
    let tags = (stripped & EVENT_FLAG_VLAN != 0) as u64
        + (stripped & EVENT_FLAG_OUTER_VLAN != 0) as u64
        + (stripped & EVENT_FLAG_VLAN_LOST != 0) as u64;
    seen as u64 + tags * VLAN_HLEN as u64
}

/// One notable frame, as the eBPF program writes it into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FrameEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Length of the whole frame as it was written, tags the kernel took off included
    /// ([`wire_len`]).
    pub frame_len: u32,
    /// Bytes of `data` that hold the frame (the rest is zero).
    pub captured: u16,
    pub direction: u8,
    pub kind: u8,
    pub flags: u8,
    pub _pad: u8,
    pub vlan: u16,
    pub outer_vlan: u16,
    pub _pad2: [u8; 6],
    pub data: [u8; EVENT_SNAPLEN],
}

impl FrameEvent {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            ifindex: 0,
            frame_len: 0,
            captured: 0,
            direction: 0,
            kind: 0,
            flags: 0,
            _pad: 0,
            vlan: 0,
            outer_vlan: 0,
            _pad2: [0; 6],
            data: [0; EVENT_SNAPLEN],
        }
    }

    pub fn frame(&self) -> &[u8] {
        let n = (self.captured as usize).min(EVENT_SNAPLEN);
        &self.data[..n]
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are #[repr(C)] plain integers and byte arrays with no padding holes
    // that could expose uninitialised memory to the kernel.
    unsafe impl aya::Pod for super::TapCounters {}
    unsafe impl aya::Pod for super::FrameEvent {}
    unsafe impl aya::Pod for super::TapWindow {}
    unsafe impl aya::Pod for super::TapConfig {}
    unsafe impl aya::Pod for super::TapSite {}
    unsafe impl aya::Pod for super::DropKey {}
    unsafe impl aya::Pod for super::KernelLayout {}
}
