//! The maps and globals every program shares, and the one way an event leaves the kernel.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap, RingBuf},
    EbpfContext,
};
use aya_log_ebpf::{debug, warn};
use diag_common::{
    kernel::{hint_slot, MAX_DROP_KEYS, WINDOW_HINT_SLOTS},
    observe, Admitted, Classification, Direction, DropKey, FrameEvent, FrameKind, KernelLayout,
    Observed, TapConfig, TapCounters, TapSite, TapWindow, EVENT_RING_BYTES, EVENT_SNAPLEN,
    MAX_TAPS,
};

/// Taps tapwatch watches, keyed by namespace and ifindex, and how. Userspace inserts a tap
/// before it says the tap is attached; a drop on any other interface costs one lookup.
#[map]
pub static TAPS: HashMap<TapSite, TapConfig> = HashMap::with_max_entries(MAX_TAPS, 0);

/// Counters of the watched taps, keyed by their id (`TapConfig::id`), made by userspace
/// with the `TAPS` entry.
#[map]
pub static TAP_COUNTERS: PerCpuHashMap<u32, TapCounters> =
    PerCpuHashMap::with_max_entries(MAX_TAPS, 0);

/// Mismatch windows per tap id, shared by all CPUs; entries made by userspace with the
/// counters.
#[map]
pub static TAP_WINDOWS: HashMap<u32, TapWindow> = HashMap::with_max_entries(MAX_TAPS, 0);

/// Kernel drops on watched taps by reason. Allocated as pairs appear (a few per tap), so
/// the map costs nothing per CPU until it is used.
#[map]
pub static DROPS: PerCpuHashMap<DropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DROP_KEYS, BPF_F_NO_PREALLOC);

/// Whether a tap's mismatch window may be open, by `hint_slot` of its real ifindex (known
/// before any lookup): an array lookup
/// costs almost nothing (the verifier inlines it), a hash lookup on every frame does.
#[map]
pub static WINDOW_HINTS: Array<u32> = Array::with_max_entries(WINDOW_HINT_SLOTS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

/// Written by userspace before loading (see `KernelLayout`); read-only data, so the
/// verifier sees its fields as constants.
#[unsafe(no_mangle)]
pub static KERNEL_LAYOUT: KernelLayout = KernelLayout::UNSET;

/// The layout as loaded. Read through a volatile load: a plain read of an immutable static
/// is folded to its build-time value.
#[inline(always)]
pub fn layout() -> KernelLayout {
    // SAFETY: a valid, aligned static.
    unsafe { core::ptr::read_volatile(&KERNEL_LAYOUT) }
}

/// The watched tap at `ifindex` in the namespace with cookie `netns_cookie`.
#[inline(always)]
pub fn tap(netns_cookie: u64, ifindex: u32) -> Option<TapConfig> {
    let cfg = TAPS.get_ptr(&TapSite::new(netns_cookie, ifindex))?;
    // SAFETY: a map value pointer, valid for this program run; a plain read.
    Some(unsafe { *cfg })
}

/// The tap's counters, by its id.
#[inline(always)]
pub fn counters(id: u32) -> Option<&'static mut TapCounters> {
    let c = TAP_COUNTERS.get_ptr_mut(&id)?;
    // SAFETY: a per-CPU map value: only this CPU's program runs touch it, and a program
    // run is not preempted by another on the same CPU, so the reference is exclusive.
    Some(unsafe { &mut *c })
}

/// The tap's mismatch window, by its id.
#[inline(always)]
pub fn window(id: u32) -> Option<&'static mut TapWindow> {
    let w = TAP_WINDOWS.get_ptr_mut(&id)?;
    // SAFETY: a map value pointer, valid for this program run. The map is shared by all
    // CPUs: two CPUs may update one window at once, which at worst reports one window's end
    // twice (TapWindow says so); no other memory is reachable through it.
    Some(unsafe { &mut *w })
}

/// Whether the tap's slot says something may be pending (an open window, an armed
/// inbound watch): an inlined array lookup, no hash.
#[inline(always)]
pub fn hinted(ifindex: u32) -> bool {
    match WINDOW_HINTS.get_ptr(hint_slot(ifindex)) {
        // SAFETY: an array value pointer, valid for this program run; a plain read.
        Some(h) => unsafe { core::ptr::read_volatile(h) != 0 },
        None => true,
    }
}

/// Whether the tap (by id) has something pending: an open window, or the first data frame
/// to the VM awaited. Asked once its hint said it may: taps of several namespaces share a
/// hint slot (every pod's `tap0` often has the same ifindex).
#[inline(always)]
pub fn pending(id: u32) -> bool {
    match TAP_WINDOWS.get_ptr(&id) {
        // SAFETY: a map value pointer, valid for this program run; a plain read.
        Some(w) => unsafe { (*w).pending() },
        None => false,
    }
}

/// Whether the tap (by id) has an open mismatch window: only then can a correctly
/// addressed frame matter. Asked once its hint said it may be.
#[inline(always)]
pub fn window_open(id: u32) -> bool {
    match TAP_WINDOWS.get_ptr(&id) {
        // SAFETY: a map value pointer, valid for this program run; a plain read.
        Some(w) => unsafe { (*w).is_open() },
        None => false,
    }
}

/// The kernel side of the one observe step: counts the frame, follows the tap's window
/// (reading the clock only when needed), logs the window's changes, and writes the event
/// when the step admits one; `fill` copies the frame's first bytes into it. `ifindex`: the
/// tap's real one (its hint slot), `id`: what its maps and events go by.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn observe_frame<C: EbpfContext>(
    ctx: &C,
    ifindex: u32,
    id: u32,
    counters: &mut TapCounters,
    class: &Classification,
    seen: &Observed,
    stripped: u8,
    fill: impl FnOnce(&mut [u8; EVENT_SNAPLEN]) -> usize,
) {
    let was_open = core::cell::Cell::new(false);
    let window = || {
        let w = window(id)?;
        was_open.set(w.is_open());
        Some(w)
    };
    // SAFETY: a helper without arguments that only reads the clock.
    let mut clock = || unsafe { bpf_ktime_get_ns() };
    let admitted = observe(counters, window, class, seen, &mut clock);
    if class.dst_mismatch || (class.rarp && seen.direction == Direction::FromVm) {
        // After the window is open (or the inbound watch armed): a probe that reads the
        // hint then finds it so.
        if let Some(h) = WINDOW_HINTS.get_ptr_mut(hint_slot(ifindex)) {
            // SAFETY: an array value pointer, valid for this program run; the store of a
            // constant, so CPUs racing on it agree.
            unsafe { core::ptr::write_volatile(h, 1) };
        }
    }
    log_window(
        ctx,
        id,
        class.dst_mismatch && !was_open.get(),
        admitted.map(|a| a.kind),
    );
    if let Some(admitted) = admitted {
        emit(ctx, id, counters, class, seen, &admitted, stripped, fill);
    }
}

/// Logs the window's changes (rare: aya-log costs a little even when off).
#[inline(always)]
fn log_window<C: EbpfContext>(ctx: &C, id: u32, opened: bool, kind: Option<FrameKind>) {
    if opened {
        debug!(ctx, "tapwatch: mismatch window opened on tap {}", id);
    } else if kind == Some(FrameKind::DstMatch) {
        debug!(ctx, "tapwatch: mismatch window closed on tap {}", id);
    }
}

/// Writes one event into the ring, under the tap's id; `fill` copies the frame's first
/// bytes and returns how many. An event that does not fit is counted as lost.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit<C: EbpfContext>(
    ctx: &C,
    id: u32,
    counters: &mut TapCounters,
    class: &Classification,
    seen: &Observed,
    admitted: &Admitted,
    stripped: u8,
    fill: impl FnOnce(&mut [u8; EVENT_SNAPLEN]) -> usize,
) {
    let Some(mut entry) = EVENTS.reserve::<FrameEvent>(0) else {
        if counters.events_lost == 0 {
            warn!(
                ctx,
                "tapwatch: the event ring is full on tap {}: events are counted as lost", id
            );
        }
        counters.events_lost += 1;
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring buffer slot of a whole FrameEvent, owned by
    // this program run until it is submitted.
    unsafe {
        FrameEvent::write_header(ev, admitted, id, seen, class, stripped);
        // Bytes past `captured` are left as they are: userspace reads only `captured`.
        (*ev).captured = fill(&mut (*ev).data) as u16;
    }
    entry.submit(0);
}
