//! The per-frame tc programs: thin entry points over `diag_common`'s classifier and observe
//! step. Everything here is what only the kernel side can do: read `__sk_buff`, look maps
//! up, copy bytes, read the clock, and write the ring buffer.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::{debug, info, warn};
use diag_common::{
    classify, classify_header_only, needs_body, observe, Classification, Direction, FrameEvent,
    FrameKind, Observed, TapCounters, TapWindow, CLASSIFY_LEN, ETH_P_8021AD, EVENT_FLAG_OUTER_VLAN,
    EVENT_FLAG_VLAN, EVENT_RING_BYTES, MAX_TAPS, PACKET_HOST, PACKET_OTHERHOST,
};

const VLAN_HLEN: u32 = 4;
const ETH_HLEN: usize = 14;
/// What the classifier reads (CLASSIFY_LEN) rounded up to a power of two for load_prefix.
const HEAD_LEN: usize = 64;
const _: () = assert!(HEAD_LEN >= CLASSIFY_LEN);

/// Counters of the watched taps, keyed by ifindex. Userspace inserts a zeroed entry before
/// attaching, so a frame on any other interface (or after detaching) costs one lookup.
#[map]
static TAP_COUNTERS: PerCpuHashMap<u32, TapCounters> = PerCpuHashMap::with_max_entries(MAX_TAPS, 0);

/// Mismatch windows per tap, shared by all CPUs; entries made by userspace with the counters.
#[map]
static TAP_WINDOWS: HashMap<u32, TapWindow> = HashMap::with_max_entries(MAX_TAPS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Frames the VM writes into the tap: tc ingress on the host side.
#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    on_frame(&ctx, Direction::FromVm);
    TC_ACT_UNSPEC
}

/// Frames the host sends to the VM: tc egress on the host side.
#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    on_frame(&ctx, Direction::ToVm);
    TC_ACT_UNSPEC
}

/// What the program reads of the `__sk_buff`: TcContext has no accessor for pkt_type,
/// ifindex or the VLAN metadata.
struct Skb {
    ifindex: u32,
    len: u32,
    pkt_type: u32,
    vlan_present: bool,
    vlan_tci: u32,
    vlan_proto: u16,
    /// The ethertype after any tag the stack stripped.
    protocol: u16,
}

impl Skb {
    #[inline(always)]
    fn read(skb: *const __sk_buff) -> Self {
        // SAFETY: `skb` is the context pointer the kernel handed this tc program; these are
        // plain reads of fields the verifier allows a classifier to read.
        unsafe {
            Self {
                ifindex: (*skb).ifindex,
                len: (*skb).len,
                pkt_type: (*skb).pkt_type,
                vlan_present: (*skb).vlan_present != 0,
                vlan_tci: (*skb).vlan_tci,
                vlan_proto: u16::from_be((*skb).vlan_proto as u16),
                protocol: u16::from_be((*skb).protocol as u16),
            }
        }
    }
}

#[inline(always)]
fn on_frame(ctx: &TcContext, direction: Direction) {
    let skb_ptr = ctx.skb.skb as *const __sk_buff;
    let skb = Skb::read(skb_ptr);
    let Some(counters) = TAP_COUNTERS.get_ptr_mut(&skb.ifindex) else {
        return;
    };
    // SAFETY: a per-CPU map value: only this CPU's program runs touch it, and a program
    // run is not preempted by another on the same CPU, so the reference is exclusive.
    let counters = unsafe { &mut *counters };
    if counters.from_vm_frames == 0 && counters.to_vm_frames == 0 {
        // The attach-time self check: the hook runs and reads what it needs.
        info!(
            ctx,
            "tapwatch: observing ifindex {}: first frame on this CPU, protocol {:x}, pkt_type {}",
            skb.ifindex,
            skb.protocol,
            skb.pkt_type
        );
    }

    let foreign = skb.pkt_type == PACKET_OTHERHOST;
    let mut class = classify_frame(skb_ptr, &skb, foreign, direction);
    // The stack moves the outermost VLAN tag out of the frame into skb metadata before tc
    // sees it (skb_vlan_untag); count the frame as the VM wrote it, tag included. The tag
    // was an outer one when it was a service tag or when the bytes still hold another.
    let mut frame_len = skb.len;
    let mut stripped = 0;
    if skb.vlan_present {
        frame_len += VLAN_HLEN;
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
        frame_len: frame_len as u64,
        sampled: true,
    };
    let was_open = core::cell::Cell::new(false);
    let window = || {
        let w = TAP_WINDOWS.get_ptr_mut(&skb.ifindex)?;
        // SAFETY: a map value pointer, valid for this program run. The map is shared by
        // all CPUs: two CPUs may update one window at once, which at worst reports one
        // window's end twice (TapWindow says so); no other memory is reachable through it.
        let w = unsafe { &mut *w };
        was_open.set(w.is_open());
        Some(w)
    };
    // SAFETY: a helper without arguments that only reads the clock.
    let mut clock = || unsafe { bpf_ktime_get_ns() };
    let Some(admitted) = observe(counters, window, &class, &seen, &mut clock) else {
        if class.dst_mismatch && !was_open.get() {
            debug!(
                ctx,
                "tapwatch: mismatch window opened on ifindex {}", skb.ifindex
            );
        }
        return;
    };
    match admitted.kind {
        FrameKind::DstMismatch if !was_open.get() => {
            debug!(
                ctx,
                "tapwatch: mismatch window opened on ifindex {}", skb.ifindex
            )
        }
        FrameKind::DstMatch => {
            debug!(
                ctx,
                "tapwatch: mismatch window closed on ifindex {}", skb.ifindex
            )
        }
        _ => {}
    }
    emit(
        ctx, skb_ptr, &skb, counters, &class, &seen, &admitted, stripped,
    );
}

/// Most frames (IP) are judged by the kernel's pkt_type and the ethertype alone: reading
/// and parsing their bytes was most of the program's cost.
#[inline(always)]
fn classify_frame(
    skb_ptr: *const __sk_buff,
    skb: &Skb,
    foreign: bool,
    direction: Direction,
) -> Classification {
    if skb.len as usize >= ETH_HLEN && !needs_body(skb.protocol) {
        return classify_header_only(foreign && direction == Direction::FromVm);
    }
    // Zeroed with one store per word: a plain initialiser compiles to a call of a
    // byte-at-a-time memset.
    let mut words = core::mem::MaybeUninit::<[u64; HEAD_LEN / 8]>::uninit();
    let base = words.as_mut_ptr() as *mut u64;
    for i in 0..HEAD_LEN / 8 {
        // SAFETY: within the array; volatile so LLVM cannot fuse the stores into a memset.
        unsafe { core::ptr::write_volatile(base.add(i), 0) };
    }
    // SAFETY: every word was written above, so these are HEAD_LEN initialised bytes. Used
    // in place: moving the array out (assume_init) brings the memset back.
    let head = unsafe { &mut *(base as *mut [u8; HEAD_LEN]) };
    let n = load_prefix(skb_ptr, head, skb.len);
    classify(&head[..n], foreign, direction)
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

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    ctx: &TcContext,
    skb_ptr: *const __sk_buff,
    skb: &Skb,
    counters: &mut TapCounters,
    class: &Classification,
    seen: &Observed,
    admitted: &diag_common::Admitted,
    stripped: u8,
) {
    let Some(mut entry) = EVENTS.reserve::<FrameEvent>(0) else {
        if counters.events_lost == 0 {
            warn!(
                ctx,
                "tapwatch: the event ring is full on ifindex {}: events are counted as lost",
                skb.ifindex
            );
        }
        counters.events_lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring buffer slot of a whole FrameEvent, owned by
    // this program run until it is submitted.
    unsafe {
        FrameEvent::write_header(ev, admitted, skb.ifindex, seen, class, stripped);
        // Bytes past `captured` are left as they are: userspace reads only `captured`.
        (*ev).captured = load_prefix(skb_ptr, &mut (*ev).data, skb.len) as u16;
    }
    entry.submit(0);
}
