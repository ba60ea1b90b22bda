//! tapwatch's kernel programs. They only observe: none drops, redirects or modifies a
//! frame.
//!
//! - `tap_ingress`, `tap_egress` ([`tc`]): the per-frame tc probe, on bridged taps and with
//!   `--datapath tc`.
//! - `tap_drops` ([`drops`]): the drop-driven datapath's one attachment for every tap.
//! - `tap_arp` ([`socket`]): ARP and RARP from the VMs, for the drop-driven datapath.
//! - `tap_ingress_assist` ([`tc`]): times the end of a stale-frame window on one tap.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// A zeroed buffer for a frame's first bytes (what the classifier reads, rounded up to a
/// power of two), in the caller's stack frame: `let head = head_buf!(words);`. Zeroed with
/// one store per word: a plain initialiser compiles to a call of a byte-at-a-time memset,
/// and a helper function returning it would hand back a stack pointer (the verifier
/// refuses that).
#[cfg(target_arch = "bpf")]
macro_rules! head_buf {
    ($words:ident) => {{
        let mut $words = core::mem::MaybeUninit::<[u64; crate::HEAD_LEN / 8]>::uninit();
        let base = $words.as_mut_ptr() as *mut u64;
        for i in 0..crate::HEAD_LEN / 8 {
            // SAFETY: within the array; volatile so LLVM cannot fuse the stores into a
            // memset.
            unsafe { core::ptr::write_volatile(base.add(i), 0) };
        }
        // SAFETY: every word was written above, so these are HEAD_LEN initialised bytes.
        // Used in place: moving the array out (assume_init) brings the memset back.
        unsafe { &mut *(base as *mut [u8; crate::HEAD_LEN]) }
    }};
}

#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod socket;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The programs' license, as the kernel reads it from the object: GPL-compatible, which
/// helpers such as bpf_probe_read_kernel require, and the same terms as the crate.
#[cfg(target_arch = "bpf")]
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// `min(len, N)` as a helper's size argument the verifier accepts: a constant, or a value
/// it can see within 1..=N (N a power of two, so a short length is masked); `None` for 0.
/// `black_box` stops LLVM from merging the checks into a form the verifier cannot follow.
#[cfg(target_arch = "bpf")]
#[inline(always)]
fn bounded_len<const N: usize>(len: u32) -> Option<u32> {
    const { assert!(N.is_power_of_two()) };
    if len as usize >= N {
        return Some(N as u32);
    }
    let n = core::hint::black_box(len) & (N as u32 - 1);
    (n != 0).then_some(n)
}

/// Bytes of a frame read for the classifier: what it needs, rounded up to a power of two.
#[cfg(target_arch = "bpf")]
const HEAD_LEN: usize = 128;
#[cfg(target_arch = "bpf")]
const _: () = assert!(HEAD_LEN >= diag_common::CLASSIFY_LEN);

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no path reaches a panic; this only satisfies the compiler.
    loop {}
}
