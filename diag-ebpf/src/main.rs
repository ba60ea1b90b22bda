//! tc programs observing VM tap devices. They never drop, redirect or modify a frame:
//! both return `TC_ACT_UNSPEC`, which in TCX means "next program" and in a clsact
//! direct-action filter means "continue", so whatever else is attached still runs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probe;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The programs' license, as the kernel reads it from the object: GPL-compatible, which
/// helpers such as bpf_probe_read_kernel require, and the same terms as the crate.
#[cfg(target_arch = "bpf")]
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no path reaches a panic; this only satisfies the compiler.
    loop {}
}
