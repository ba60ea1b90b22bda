//! What the programs that see a frame's `__sk_buff` (the tc probes and the ARP socket
//! filter) share: reading the skb, classifying the frame with `diag_common`, and the one
//! observe step. Everything here is what only the kernel side can do: read `__sk_buff`,
//! copy bytes, read the clock.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_probe_read_kernel, generated::bpf_skb_load_bytes},
    EbpfContext,
};
use diag_common::{
    classify, classify_header_only, needs_body, wire_len, Classification, Direction, Observed,
    TapConfig, ETH_P_8021AD, EVENT_FLAG_OUTER_VLAN, EVENT_FLAG_VLAN, EVENT_FLAG_VLAN_LOST,
    PACKET_HOST,
};

use crate::maps;

const ETH_HLEN: usize = 14;

/// What the programs read of the `__sk_buff`: the contexts have no accessor for pkt_type,
/// ifindex or the VLAN metadata.
pub struct Skb {
    pub ptr: *const __sk_buff,
    pub ifindex: u32,
    pub len: u32,
    pub pkt_type: u32,
    pub vlan_present: bool,
    pub vlan_tci: u32,
    pub vlan_proto: u16,
    /// The ethertype after any tag the stack stripped.
    pub protocol: u16,
    /// The stack took a tag off and forgot it before this hook (see
    /// `diag_common::lost_vlan_tag`); set by the hooks that run after its VLAN handling.
    pub vlan_lost: bool,
}

impl Skb {
    #[inline(always)]
    pub fn read(skb: *const __sk_buff) -> Self {
        // SAFETY: `skb` is the context pointer the kernel handed this program (tc or socket
        // filter); these are plain reads of fields the verifier allows both to read.
        unsafe {
            Self {
                ptr: skb,
                ifindex: (*skb).ifindex,
                len: (*skb).len,
                pkt_type: (*skb).pkt_type,
                vlan_present: (*skb).vlan_present != 0,
                vlan_tci: (*skb).vlan_tci,
                vlan_proto: u16::from_be((*skb).vlan_proto as u16),
                protocol: u16::from_be((*skb).protocol as u16),
                vlan_lost: false,
            }
        }
    }

    /// Whether the frame can be judged from its ethertype and `pkt_type` alone: most frames
    /// (IP), whose bytes the programs never read.
    #[inline(always)]
    pub fn header_only(&self) -> bool {
        !needs_body(self.protocol)
    }

    /// The watched tap the frame crossed, if it is one: asked only of frames that may
    /// matter, as it costs the namespace's cookie and a hash lookup.
    #[inline(always)]
    pub fn tap(&self) -> Option<TapConfig> {
        maps::tap(netns_cookie(self.ptr), self.ifindex)
    }
}

/// The cookie of the network namespace of the frame's device (0 without the kernel's
/// layout, which userspace then keys its taps by; tapwatch's own when the run watches
/// only it). `__sk_buff` has no field for it and the helper of that name answers for the
/// skb's socket, not its device; but the context of a tc program or socket filter is the
/// kernel's `struct sk_buff`, so the device and its namespace are read at the offsets the
/// drop program reads them at.
#[inline(always)]
fn netns_cookie(skb: *const __sk_buff) -> u64 {
    let l = maps::layout();
    if l.version == 0 || l.netns_cookie != 0 {
        return l.netns_cookie;
    }
    let read = |addr: u64| -> Option<u64> {
        // SAFETY: the helper checks the address and fails rather than fault.
        unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
    };
    let cookie = read((skb as u64).wrapping_add(l.skb_dev as u64))
        .filter(|&dev| dev != 0)
        .and_then(|dev| read(dev.wrapping_add(l.dev_nd_net as u64)))
        .filter(|&net| net != 0)
        .and_then(|net| read(net.wrapping_add(l.net_cookie as u64)));
    cookie.unwrap_or(0)
}

/// Counts, follows and reports one frame of the watched tap `tap`. `foreign`: addressed to
/// a unicast MAC the tap does not have, as far as this hook can tell; `whole`: read and
/// classify the frame's bytes even where its ethertype alone would do.
#[inline(always)]
pub fn on_frame<C: EbpfContext>(
    ctx: &C,
    skb: &Skb,
    tap: TapConfig,
    direction: Direction,
    foreign: bool,
    whole: bool,
) {
    let Some(counters) = maps::counters(tap.id) else {
        return;
    };
    let mut class = classify_frame(skb, foreign, direction, whole);
    // The stack moves the outermost VLAN tag out of the frame into skb metadata before tc
    // sees it (skb_vlan_untag); count the frame as the VM wrote it, tag included. The tag
    // was an outer one when it was a service tag or when the bytes still hold another.
    let mut stripped = 0;
    if skb.vlan_lost {
        stripped = EVENT_FLAG_VLAN_LOST;
    } else if skb.vlan_present {
        let id = Some((skb.vlan_tci & 0x0fff) as u16);
        if skb.vlan_proto == ETH_P_8021AD || class.vlan.is_some() || class.outer_vlan.is_some() {
            class.outer_vlan = id;
            stripped = EVENT_FLAG_OUTER_VLAN;
        } else {
            class.vlan = id;
            stripped = EVENT_FLAG_VLAN;
        }
    }

    let seen = Observed {
        direction,
        to_own_mac: skb.pkt_type == PACKET_HOST,
        frame_len: wire_len(skb.len, stripped),
        sampled: true,
        totals: false,
    };
    maps::observe_frame(
        ctx,
        skb.ifindex,
        tap.id,
        counters,
        &class,
        &seen,
        stripped,
        |data| load_prefix(skb.ptr, data, skb.len),
    );
}

/// Most frames (IP) are judged by the kernel's pkt_type and the ethertype alone: reading
/// and parsing their bytes was most of the program's cost.
#[inline(always)]
fn classify_frame(skb: &Skb, foreign: bool, direction: Direction, whole: bool) -> Classification {
    // A runt has no Ethernet header: nothing to judge (its bytes count in the link's
    // totals).
    if (skb.len as usize) < ETH_HLEN {
        return Classification::default();
    }
    if !whole && skb.header_only() {
        return classify_header_only(foreign && direction == Direction::FromVm);
    }
    let head = head_buf!(words);
    let n = load_prefix(skb.ptr, head, skb.len);
    // The stack marks a tagged frame OTHERHOST on a tap without a VLAN device whatever its
    // MAC (the socket filter sees it so): a broadcast is never foreign.
    let unicast = head[0] & 1 == 0;
    classify(&head[..n], foreign && unicast, direction)
}

/// Copies the first `min(len, N)` bytes of the frame into `buf`; returns how many.
///
/// Shaped for the verifier, which must see the helper's length as a constant or a range
/// within 1..=N: N is a power of two, so a short frame's length is masked. `black_box`
/// stops LLVM from merging the checks into a form the verifier cannot follow.
#[inline(always)]
pub fn load_prefix<const N: usize>(skb: *const __sk_buff, buf: &mut [u8; N], len: u32) -> usize {
    let Some(n) = crate::bounded_len::<N>(len) else {
        return 0;
    };
    // SAFETY: `buf` has room for N >= n bytes; the helper bounds-checks the skb side.
    let ret = unsafe { bpf_skb_load_bytes(skb as *const _, 0, buf.as_mut_ptr() as *mut _, n) };
    if ret == 0 {
        n as usize
    } else {
        0
    }
}
