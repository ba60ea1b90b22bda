//! What the drop-driven datapath shares with userspace besides frames: which taps are
//! watched and how, drop counts by reason, and the layout of the kernel structures the drop
//! program reads, taken from the running kernel's BTF at load time.

/// How a watched tap is observed, in the `TAPS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapMode {
    /// The kernel's drops (`skb:kfree_skb`) and an ARP/RARP socket filter count what
    /// matters; frame and byte totals come from the link's statistics. A per-frame tc probe
    /// is added only while stale frames may end (it times the end of the window).
    Drops = 1,
    /// The per-frame tc programs count everything notable: bridged taps, where nothing is
    /// dropped, and `--datapath tc`. The drop program counts only drops by reason.
    Tc = 2,
}

/// Where a watched tap is, the key of the `TAPS` map: ifindexes repeat across network
/// namespaces (every KubeVirt pod has its `tap0`), so the namespace is part of the key, as
/// the kernel's cookie of it (`SO_NETNS_COOKIE`, `net.net_cookie`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TapSite {
    pub netns_cookie: u64,
    pub ifindex: u32,
    pub _pad: u32,
}

impl TapSite {
    pub const fn new(netns_cookie: u64, ifindex: u32) -> Self {
        Self {
            netns_cookie,
            ifindex,
            _pad: 0,
        }
    }
}

/// A watched tap's entry in the `TAPS` map: how it is observed, and the id its counters,
/// window, drops and events go by (its ifindex in tapwatch's own namespace; one of
/// userspace's choosing, never a real ifindex, in another).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// A [`TapMode`] as its number (map values are plain integers).
    pub mode: u32,
    pub id: u32,
}

impl TapConfig {
    pub const fn new(mode: TapMode, id: u32) -> Self {
        Self {
            mode: mode as u32,
            id,
        }
    }

    #[inline(always)]
    pub fn is(&self, mode: TapMode) -> bool {
        self.mode == mode as u32
    }
}

/// Slots of the window hints: a per-frame probe looks a frame to the tap's own MAC up in
/// the window map (a hash lookup costs several percent of a tap's throughput) only when
/// the tap's slot says a window may be open. Programs set a slot when they open a window;
/// userspace clears it once the windows of the taps on it are closed.
pub const WINDOW_HINT_SLOTS: u32 = 16_384;

/// The hint slot of a tap, by its real ifindex (what a probe knows before any lookup; taps
/// sharing a slot, in one namespace or several, only cost each other a lookup).
#[inline(always)]
pub fn hint_slot(ifindex: u32) -> u32 {
    ifindex & (WINDOW_HINT_SLOTS - 1)
}

/// Key of the drop counters: a watched tap (its [`TapConfig::id`]) and the kernel's
/// `enum skb_drop_reason` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub ifindex: u32,
    pub reason: u32,
}

/// Most (tap, reason) pairs the drop counters hold: a few reasons per tap in practice.
pub const MAX_DROP_KEYS: u32 = 65_536;

/// Offsets (in bytes) of the kernel fields the drop program reads, and the values it
/// compares with. Rust eBPF programs get no CO-RE relocations from the compiler, so
/// userspace reads these from `/sys/kernel/btf/vmlinux` and writes them into the object's
/// read-only data before loading: the verifier then sees constants and checks every access
/// against the kernel's own types, and one binary serves every kernel with BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// 1 once userspace filled the layout in; the drop program does nothing while it is 0.
    pub version: u32,
    /// `sk_buff.dev` (`struct net_device *`).
    pub skb_dev: u32,
    /// `sk_buff.head` (`unsigned char *`).
    pub skb_head: u32,
    /// `sk_buff.data` (`unsigned char *`).
    pub skb_data: u32,
    /// `sk_buff.len` (`unsigned int`).
    pub skb_len: u32,
    /// `sk_buff.mac_header` (`__u16`, from `head`; `0xffff` when unset).
    pub skb_mac_header: u32,
    /// `net_device.ifindex` (`int`).
    pub dev_ifindex: u32,
    /// `net_device.dev_addr` (`const unsigned char *`).
    pub dev_dev_addr: u32,
    /// `net_device.nd_net.net` (`struct net *`).
    pub dev_nd_net: u32,
    /// `net.net_cookie` (`u64`).
    pub net_cookie: u32,
    /// `SKB_DROP_REASON_OTHERHOST`: a unicast frame to another MAC, dropped by IPv4/IPv6.
    pub reason_otherhost: u32,
    /// `SKB_DROP_REASON_UNHANDLED_PROTO`: no handler for the ethertype.
    pub reason_unhandled_proto: u32,
    /// The cookie of tapwatch's namespace when the run watches only it: every tap's, so
    /// the per-frame programs need not read a frame's. 0 with `--netns all`.
    pub netns_cookie: u64,
}

impl KernelLayout {
    /// The value the object is built with: the drop program does nothing until userspace
    /// writes a real layout.
    pub const UNSET: Self = Self {
        version: 0,
        skb_dev: 0,
        skb_head: 0,
        skb_data: 0,
        skb_len: 0,
        skb_mac_header: 0,
        dev_ifindex: 0,
        dev_dev_addr: 0,
        dev_nd_net: 0,
        net_cookie: 0,
        reason_otherhost: 0,
        reason_unhandled_proto: 0,
        netns_cookie: 0,
    };

    /// Name of the global the eBPF object holds the layout in.
    pub const GLOBAL: &'static str = "KERNEL_LAYOUT";
}

/// Unset `sk_buff.mac_header`.
pub const MAC_HEADER_UNSET: u16 = 0xffff;
