//! The drop-driven datapath's one attachment: the `skb:kfree_skb` tracepoint, which runs
//! only for frames the kernel drops, on every interface of the host. For a watched tap it
//! counts the drop by reason, and for a frame from the VM to a unicast MAC the tap does not
//! have (dropped by IPv4/IPv6 as OTHERHOST, or for want of a protocol handler) it takes the
//! observe step the tc probe would have taken: count, open the mismatch window, report.
//!
//! The kernel's structures are read at offsets from the running kernel's BTF, handed over
//! by userspace in `KERNEL_LAYOUT` (see `diag_common::KernelLayout`). Fields behind the
//! tracepoint's typed pointers are read with plain loads, which the verifier checks against
//! the kernel's types; bytes behind `unsigned char *` go through bpf_probe_read_kernel.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel as bpf_probe_read_kernel_typed, generated::bpf_probe_read_kernel,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use diag_common::{
    classify, frame::is_foreign_unicast, kernel::MAC_HEADER_UNSET, lost_vlan_tag, wire_len,
    Direction, DropKey, KernelLayout, Observed, TapConfig, TapCounters, TapMode,
    EVENT_FLAG_VLAN_LOST,
};

use crate::maps;

/// `kfree_skb(skb, location, reason, …)`: the tracepoint's arguments after the hidden
/// context (the fourth, `rx_sk`, only on newer kernels).
#[btf_tracepoint(function = "kfree_skb")]
pub fn tap_drops(ctx: BtfTracePointContext) -> i32 {
    // The first and third arguments, which userspace checked in the kernel's BTF before
    // loading: a pointer to the skb, the drop reason.
    let (skb, reason) = (ctx.arg::<*const u8>(0), ctx.arg::<u64>(2) as u32);
    on_drop(&ctx, skb, reason);
    0
}

/// A field of a kernel structure at `off` bytes from `base`.
///
/// # Safety
/// `base` must be a pointer the verifier knows the type of (the tracepoint's or one read
/// through it) and `off` a field of that type from `KERNEL_LAYOUT`: the verifier checks the
/// access and the JIT makes it a load that cannot fault.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: as the function's contract says; volatile so the load keeps its shape.
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) }
}

#[inline(always)]
fn on_drop(ctx: &BtfTracePointContext, skb: *const u8, reason: u32) {
    let l = maps::layout();
    if l.version == 0 {
        return;
    }
    // SAFETY (the `field` reads below): typed pointers and offsets from the layout.
    let dev: *const u8 = unsafe { field(skb, l.skb_dev) };
    if dev.is_null() {
        return;
    }
    let net: *const u8 = unsafe { field(dev, l.dev_nd_net) };
    if net.is_null() {
        return;
    }
    // ifindexes repeat across namespaces and the tracepoint is host-wide: the tap is looked
    // up by both.
    let cookie: u64 = unsafe { field(net, l.net_cookie) };
    let ifindex: u32 = unsafe { field(dev, l.dev_ifindex) };
    let Some(tap) = maps::tap(cookie, ifindex) else {
        return;
    };
    let otherhost = reason == l.reason_otherhost;
    if !(tap.is(TapMode::Drops) && (otherhost || reason == l.reason_unhandled_proto)) {
        count_drop(tap.id, reason);
        return;
    }
    let Some(counters) = maps::counters(tap.id) else {
        return;
    };
    if otherhost {
        counters.otherhost_drops += 1;
    } else {
        counters.unhandled_proto_drops += 1;
    }
    dropped_frame(ctx, &l, skb, dev, (ifindex, tap), counters, otherhost);
}

#[inline(always)]
fn count_drop(id: u32, reason: u32) {
    let key = DropKey {
        ifindex: id,
        reason,
    };
    if let Some(n) = maps::DROPS.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, touched only by this CPU's runs.
        unsafe { *n += 1 };
        return;
    }
    // The first drop of this reason on this tap: another CPU may make the entry at the
    // same moment, then this one adds to it.
    const BPF_NOEXIST: u64 = 1;
    if maps::DROPS.insert(&key, &1, BPF_NOEXIST).is_err() {
        if let Some(n) = maps::DROPS.get_ptr_mut(&key) {
            // SAFETY: as above.
            unsafe { *n += 1 };
        }
    }
}

/// A frame from the VM the kernel dropped as addressed elsewhere or as of an unknown
/// ethertype: classified from its bytes, as the tc probe would. A stale frame is judged by
/// its own destination MAC against the tap's (the kernel also drops tagged frames on a tap
/// without a VLAN device as OTHERHOST); a tagged RARP inside a second tag lands here too.
/// `otherhost`: dropped as OTHERHOST; `at`: the tap's real ifindex and its entry.
#[inline(always)]
fn dropped_frame(
    ctx: &BtfTracePointContext,
    l: &KernelLayout,
    skb: *const u8,
    dev: *const u8,
    at: (u32, TapConfig),
    counters: &mut TapCounters,
    otherhost: bool,
) {
    // SAFETY (the `field` reads): typed pointers and offsets from the layout.
    let mac: u16 = unsafe { field(skb, l.skb_mac_header) };
    if mac == MAC_HEADER_UNSET {
        return;
    }
    let head: u64 = unsafe { field(skb, l.skb_head) };
    let data: u64 = unsafe { field(skb, l.skb_data) };
    let len: u32 = unsafe { field(skb, l.skb_len) };
    let frame = head.wrapping_add(mac as u64);
    // By now the stack has pulled the Ethernet header off `len`: count it back.
    let pulled = data.wrapping_sub(frame);
    if pulled > 64 {
        return;
    }
    let frame_len = len + pulled as u32;
    let own_ptr: u64 = unsafe { field(dev, l.dev_dev_addr) };
    // SAFETY: the helper checks the address and fails rather than fault.
    let Ok(own) = (unsafe { bpf_probe_read_kernel_typed(own_ptr as *const [u8; 6]) }) else {
        return;
    };

    let head = head_buf!(words);
    let n = read_kernel(frame, head, frame_len);
    let bytes = &head[..n];
    let class = classify(bytes, is_foreign_unicast(bytes, &own), Direction::FromVm);
    if class.kind.is_none() {
        return;
    }
    // A tag the stack took off and forgot before the drop still counts in the frame's
    // length, where it left a trace.
    let stripped = if lost_vlan_tag(bytes, otherhost) {
        EVENT_FLAG_VLAN_LOST
    } else {
        0
    };
    let seen = Observed {
        direction: Direction::FromVm,
        to_own_mac: false,
        frame_len: wire_len(frame_len, stripped),
        sampled: true,
        totals: false,
    };
    let (ifindex, tap) = at;
    maps::observe_frame(
        ctx,
        ifindex,
        tap.id,
        counters,
        &class,
        &seen,
        stripped,
        |data| read_kernel(frame, data, frame_len),
    );
}

/// Copies the first `min(len, N)` bytes at kernel address `src` into `buf`; how many.
#[inline(always)]
fn read_kernel<const N: usize>(src: u64, buf: &mut [u8; N], len: u32) -> usize {
    let Some(n) = crate::bounded_len::<N>(len) else {
        return 0;
    };
    // SAFETY: `buf` has room for N >= n bytes; the helper checks the kernel side and fails
    // rather than fault.
    let ret = unsafe { bpf_probe_read_kernel(buf.as_mut_ptr() as *mut _, n, src as *const _) };
    if ret == 0 {
        n as usize
    } else {
        0
    }
}
