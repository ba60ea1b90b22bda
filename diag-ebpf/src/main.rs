//! tc programs observing VM tap devices. They never drop, redirect or modify a frame:
//! both return `TC_ACT_UNSPEC`, which in TCX means "next program" and in a clsact
//! direct-action filter means "continue", so whatever else is attached still runs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod probe;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
