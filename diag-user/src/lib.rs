//! tapwatch: per-VM visibility of frames on hypervisor tap devices.
//!
//! `diag_common` holds the shared types and the one frame classifier; this crate loads the
//! eBPF probe ([`probe`]), follows interfaces over rtnetlink ([`ifaces`]), and turns what it
//! sees into [`output::Record`]s ([`watch`]).

pub mod analyze;
pub mod bundle;
pub mod caps;
pub mod capture;
pub mod clock;
pub mod ifaces;
pub mod lab;
pub mod libvirt;
pub mod mac;
pub mod nl;
pub mod output;
pub mod pcap_backend;
pub mod pipeline;
pub mod probe;
pub mod sandbox;
pub mod tui;
pub mod verdict;
pub mod watch;
