//! What `tapwatch preflight` finds would break a live migration between two hosts.

use serde::{Deserialize, Serialize};

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; the migration goes ahead.
    Note,
    /// The migration succeeds, but the VM's network is out for long after it.
    Outage,
    /// The migration fails (libvirt or Nova refuses it, or the guest would not run).
    Blocks,
}

/// Which check found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    CpuFlags,
    Versions,
    SharedStorage,
    StaleMac,
    Clock,
    Mtu,
}

/// One thing that would go wrong (or might), with its evidence and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The VM, as SRC names it (Nova's name, else the domain); empty for the pair.
    pub vm: String,
    pub check: Check,
    pub severity: Severity,
    pub what: String,
    pub evidence: Vec<String>,
    pub todo: String,
}
