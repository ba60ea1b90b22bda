use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use diag_common::{
    classify, classify_header_only, needs_body, Direction, FrameEvent, FrameKind, TapCounters,
    TapWindow, CLASSIFY_LEN, ETH_P_8021AD, EVENT_FLAG_DST_MISMATCH, EVENT_FLAG_OUTER_VLAN,
    EVENT_FLAG_VLAN, EVENT_RING_BYTES, MAX_TAPS, PACKET_HOST, PACKET_OTHERHOST,
};

/// Counters of the selected taps, keyed by ifindex. Userspace inserts a zeroed entry before
/// attaching, so a frame on any other interface (or after detaching) costs one lookup.
const VLAN_HLEN: u32 = 4;
const ETH_HLEN: usize = 14;
/// What the classifier reads (CLASSIFY_LEN) rounded up to a power of two for load_prefix.
const HEAD_LEN: usize = 64;
const _: () = assert!(HEAD_LEN >= CLASSIFY_LEN);

#[map]
static TAP_COUNTERS: PerCpuHashMap<u32, TapCounters> = PerCpuHashMap::with_max_entries(MAX_TAPS, 0);

/// Mismatch windows per tap, shared by all CPUs; entries made by userspace with the counters.
#[map]
static TAP_WINDOWS: HashMap<u32, TapWindow> = HashMap::with_max_entries(MAX_TAPS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::FromVm);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Direction::ToVm);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) {
    // TcContext has no accessor for pkt_type or ifindex; the fields are in __sk_buff.
    let skb = ctx.skb.skb as *const __sk_buff;
    let (ifindex, skb_len, pkt_type, vlan_present, vlan_tci, vlan_proto, protocol) = unsafe {
        (
            (*skb).ifindex,
            (*skb).len,
            (*skb).pkt_type,
            (*skb).vlan_present,
            (*skb).vlan_tci,
            (*skb).vlan_proto,
            (*skb).protocol,
        )
    };
    let Some(counters) = TAP_COUNTERS.get_ptr_mut(&ifindex) else {
        return;
    };
    // SAFETY: a per-CPU map value, only ever touched by this CPU's program run.
    let counters = unsafe { &mut *counters };

    // Most frames (IP) are judged by the kernel's pkt_type and ethertype alone: reading and
    // parsing their bytes was most of the program's cost. skb->protocol is the ethertype
    // after any tag the stack stripped.
    let ethertype = u16::from_be(protocol as u16);
    let foreign = pkt_type == PACKET_OTHERHOST;
    let mut class = if skb_len as usize >= ETH_HLEN && !needs_body(ethertype) {
        classify_header_only(foreign && direction == Direction::FromVm)
    } else {
        // Zeroed with one store per word: a plain initialiser compiles to a call of a
        // byte-at-a-time memset.
        let mut words = core::mem::MaybeUninit::<[u64; HEAD_LEN / 8]>::uninit();
        let base = words.as_mut_ptr() as *mut u64;
        for i in 0..HEAD_LEN / 8 {
            // SAFETY: within the array; volatile so LLVM cannot fuse the stores into a memset.
            unsafe { core::ptr::write_volatile(base.add(i), 0) };
        }
        // SAFETY: every word was written above, so these are HEAD_LEN initialised bytes.
        // Used in place: moving the array out (assume_init) brings the memset back.
        let head = unsafe { &mut *(base as *mut [u8; HEAD_LEN]) };
        let n = load_prefix(skb, head, skb_len);
        classify(&head[..n], foreign, direction)
    };
    // The stack moves the outermost VLAN tag out of the frame into skb metadata before tc
    // sees it (skb_vlan_untag); count the frame as the VM wrote it, tag included. The tag
    // was an outer one when it was a service tag or when the bytes still hold another.
    let mut frame_len = skb_len;
    let mut stripped = 0;
    if vlan_present != 0 {
        frame_len += VLAN_HLEN;
        let id = Some((vlan_tci & 0x0fff) as u16);
        if u16::from_be(vlan_proto as u16) == ETH_P_8021AD
            || class.vlan.is_some()
            || class.outer_vlan.is_some()
        {
            class.outer_vlan = id;
            stripped = EVENT_FLAG_OUTER_VLAN;
        } else {
            class.vlan = id;
            stripped = EVENT_FLAG_VLAN;
        }
    }
    counters.record(&class, direction, frame_len as u64);

    // The clock is read only when needed: in a VM it can cost as much as the rest of the
    // program.
    let mut now = 0;
    // Only frames from the VM to a unicast MAC can open or close a window; broadcasts
    // (ARP, RARP) and frames to the VM skip the shared map.
    let mut kind = class.kind;
    if direction == Direction::FromVm && (class.dst_mismatch || pkt_type == PACKET_HOST) {
        if let Some(w) = TAP_WINDOWS.get_ptr_mut(&ifindex) {
            // SAFETY: a map value pointer, valid for this program run.
            let w = unsafe { &mut *w };
            // A correctly addressed frame can only end an open window.
            if class.dst_mismatch || w.is_open() {
                now = unsafe { bpf_ktime_get_ns() };
                kind = w.follow(&class, pkt_type == PACKET_HOST, direction, now);
            }
        }
    }
    let Some(kind) = kind else {
        return;
    };
    if now == 0 {
        now = unsafe { bpf_ktime_get_ns() };
    }
    if !counters.admit_event(kind, now) {
        return;
    }
    let seen = Seen {
        ifindex,
        skb_len,
        frame_len,
        direction,
        now,
        stripped,
    };
    emit(skb, counters, &class, kind, &seen);
}

/// Copies the first `min(len, N)` bytes of the frame into `buf`; returns how many.
///
/// Shaped for the verifier, which must see the helper's length as a constant or a range
/// within 1..=N: N is a power of two, so a short frame's length is masked. `black_box`
/// stops LLVM from merging the checks into a form the verifier cannot follow.
#[inline(always)]
fn load_prefix<const N: usize>(skb: *const __sk_buff, buf: &mut [u8; N], len: u32) -> usize {
    const { assert!(N.is_power_of_two()) };
    let n = if len as usize >= N {
        N as u32
    } else {
        let n = core::hint::black_box(len) & (N as u32 - 1);
        if n == 0 {
            return 0;
        }
        n
    };
    // SAFETY: `buf` has room for N >= n bytes; the helper bounds-checks the skb side.
    let ret = unsafe { bpf_skb_load_bytes(skb as *const _, 0, buf.as_mut_ptr() as *mut _, n) };
    if ret == 0 {
        n as usize
    } else {
        0
    }
}

/// Facts about one frame that go into its event.
struct Seen {
    ifindex: u32,
    skb_len: u32,
    /// As the VM wrote it (with any VLAN tag the stack stripped).
    frame_len: u32,
    direction: Direction,
    now: u64,
    /// `EVENT_FLAG_VLAN` or `EVENT_FLAG_OUTER_VLAN`: the tag the kernel took out of the bytes.
    stripped: u8,
}

#[inline(always)]
fn emit(
    skb: *const __sk_buff,
    counters: &mut TapCounters,
    class: &diag_common::Classification,
    kind: FrameKind,
    seen: &Seen,
) {
    let Some(mut entry) = EVENTS.reserve::<FrameEvent>(0) else {
        counters.events_lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer slot of the right size.
    unsafe {
        (*ev).ts_ns = seen.now;
        (*ev).ifindex = seen.ifindex;
        (*ev).frame_len = seen.frame_len;
        (*ev).direction = seen.direction as u8;
        (*ev).kind = kind as u8;
        (*ev).flags = seen.stripped
            | (if class.dst_mismatch {
                EVENT_FLAG_DST_MISMATCH
            } else {
                0
            });
        (*ev)._pad = 0;
        (*ev).vlan = class.vlan.unwrap_or(0);
        (*ev).outer_vlan = class.outer_vlan.unwrap_or(0);
        // Bytes past `captured` are left as they are: userspace reads only `captured`.
        (*ev).captured = load_prefix(skb, &mut (*ev).data, seen.skb_len) as u16;
    }
    entry.submit(0);
}
