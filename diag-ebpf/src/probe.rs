use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use diag_common::{
    classify, Direction, FrameEvent, FrameKind, TapCounters, CLASSIFY_LEN, EVENT_FLAG_DST_MISMATCH,
    EVENT_FLAG_VLAN, EVENT_RING_BYTES, MAX_TAPS, PACKET_OTHERHOST,
};

/// Counters of the selected taps, keyed by ifindex. Userspace inserts a zeroed entry before
/// attaching, so a frame on any other interface (or after detaching) costs one lookup.
#[map]
static TAP_COUNTERS: PerCpuHashMap<u32, TapCounters> = PerCpuHashMap::with_max_entries(MAX_TAPS, 0);

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
    let (ifindex, len, pkt_type) = unsafe { ((*skb).ifindex, (*skb).len, (*skb).pkt_type) };
    let Some(counters) = TAP_COUNTERS.get_ptr_mut(&ifindex) else {
        return;
    };
    // SAFETY: a per-CPU map value, only ever touched by this CPU's program run.
    let counters = unsafe { &mut *counters };

    // Zeroed as words: a byte array initialiser becomes a byte-at-a-time loop here.
    let mut words = [0u64; CLASSIFY_LEN.div_ceil(8)];
    // SAFETY: [u64; 6] is 48 initialised bytes; the view is 46 of them.
    let head = unsafe { &mut *(words.as_mut_ptr() as *mut [u8; CLASSIFY_LEN]) };
    let n = load_prefix(skb, head, len);
    let class = classify(&head[..n], pkt_type == PACKET_OTHERHOST, direction);
    counters.record(&class, direction, len as u64);

    let Some(kind) = class.kind else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if !counters.admit_event(kind, now) {
        return;
    }
    emit(skb, counters, &class, kind, direction, ifindex, len, now);
}

/// Copies the first `min(len, N)` bytes of the frame into `buf`; returns how many.
/// Shaped for the verifier: the helper needs a length it can prove non-zero and <= N.
#[inline(always)]
fn load_prefix<const N: usize>(skb: *const __sk_buff, buf: &mut [u8; N], len: u32) -> usize {
    let n = if len as usize >= N {
        N as u32
    } else if len >= 1 {
        len
    } else {
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    skb: *const __sk_buff,
    counters: &mut TapCounters,
    class: &diag_common::Classification,
    kind: FrameKind,
    direction: Direction,
    ifindex: u32,
    len: u32,
    now: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<FrameEvent>(0) else {
        counters.events_lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring buffer slot of the right size.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).frame_len = len;
        (*ev).direction = direction as u8;
        (*ev).kind = kind as u8;
        (*ev).flags = (if class.vlan.is_some() {
            EVENT_FLAG_VLAN
        } else {
            0
        }) | (if class.dst_mismatch {
            EVENT_FLAG_DST_MISMATCH
        } else {
            0
        });
        (*ev)._pad = 0;
        (*ev).vlan = class.vlan.unwrap_or(0);
        // Bytes past `captured` are left as they are: userspace reads only `captured`.
        (*ev).captured = load_prefix(skb, &mut (*ev).data, len) as u16;
    }
    entry.submit(0);
}
