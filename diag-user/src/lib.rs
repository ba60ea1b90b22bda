//! tapwatch: per-VM visibility of frames on hypervisor tap devices.
//!
//! A frame's path through the crate follows its folders:
//!
//! - [`collect`]: where facts come from. The kernel (the eBPF datapath and libpcap, both
//!   through `diag_common`'s one observe step), rtnetlink (which taps exist, their MACs)
//!   and libvirt (which VM is behind a tap) become [`model::Record`]s.
//! - [`registry`]: everything a run knows of each tap, in one place, keyed by namespace
//!   and ifindex; every output reads it.
//! - [`verdict`]: the one verdict engine: per VM, OK / BLACKOUT / RECOVERED / QUIET / GONE,
//!   the measured blackout and a diagnosis in words; VM identities.
//! - [`report`]: one pipeline per run feeds the engine and every output from it: NDJSON,
//!   the bug-report bundle, the live view, text.
//! - [`offline`]: `tapwatch analyze`: bundles and captures replayed through the same steps.
//! - [`nudge`]: the one thing tapwatch writes: a frame into a VM's own tap that makes a
//!   guest with a stale gateway entry re-learn it, on the operator's word or `--remediate`.
//! - [`lab`]: a simulated migration between two simulated hypervisors.
//! - [`memory`]: what a long run gives back to the system.
//! - [`model`]: the records (the JSON contract) and the types they are made of.

pub mod collect;
pub mod frames;
pub mod lab;
pub mod memory;
pub mod model;
pub mod nudge;
pub mod offline;
pub mod registry;
pub mod report;
pub mod verdict;
pub mod version;
