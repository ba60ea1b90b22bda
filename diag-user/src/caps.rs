//! Up-front privilege check, so a missing capability is a sentence, not an errno.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_NET_RAW: u32 = 13;
const CAP_BPF: u32 = 39;

/// Whether libpcap may open capture sockets (CAP_NET_RAW); true when it cannot be told.
pub fn has_raw_capture() -> bool {
    effective_caps().is_none_or(|eff| eff & (1u64 << CAP_NET_RAW) != 0)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "tapwatch needs the capabilities CAP_BPF and CAP_NET_ADMIN (or root) to load its eBPF \
     programs and attach them to tap devices; missing: {missing}. Run it as root \
     (sudo tapwatch …) or grant them once: sudo setcap cap_bpf,cap_net_admin+ep \"$(command -v tapwatch)\""
)]
pub struct MissingCapabilities {
    pub missing: String,
}

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Checks for what attaching tc programs needs. CAP_SYS_ADMIN covers CAP_BPF on kernels
/// older than 5.8, which do not know CAP_BPF.
pub fn check() -> Result<(), MissingCapabilities> {
    let Some(eff) = effective_caps() else {
        // No /proc: let the kernel answer instead of guessing.
        return Ok(());
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingCapabilities {
            missing: missing.join(", "),
        })
    }
}
