//! Up-front privilege check, so a missing capability is a sentence, not an errno; and the
//! one way to say that the process ran out of file descriptors.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether libpcap may open capture sockets (CAP_NET_RAW); true when it cannot be told.
pub fn has_raw_capture() -> bool {
    effective_caps().is_none_or(|eff| eff & (1u64 << CAP_NET_RAW) != 0)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "tapwatch needs the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root) to load \
     its eBPF programs and attach them to tap devices, and CAP_NET_RAW for its default \
     drop-driven datapath; missing: {missing}. Run it as root (sudo tapwatch …) or grant \
     them once: sudo setcap cap_bpf,cap_perfmon,cap_net_admin,cap_net_raw+ep \"$(command -v tapwatch)\""
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

/// Checks for what loading and attaching the programs needs. The verifier refuses the
/// programs' packet and map pointer arithmetic without CAP_PERFMON (it then answers a bare
/// "Permission denied"). CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON on kernels older than
/// 5.8, which know neither.
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
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
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

/// The process (EMFILE) or the whole host (ENFILE) has no file descriptor left.
#[derive(Debug, thiserror::Error)]
#[error(
    "out of file descriptors while {doing} (the limit of this process is {limit}; every \
     watched tap needs two): raise it, e.g. `ulimit -n 65536` before starting tapwatch or \
     LimitNOFILE=65536 in its service unit{host}"
)]
pub struct OutOfDescriptors {
    pub doing: String,
    pub limit: u64,
    host: &'static str,
}

impl OutOfDescriptors {
    /// `Some` when `errno` says descriptors ran out, or when the process is at its limit
    /// anyway: some paths report the failure of a call they made for the descriptor as
    /// another errno (glibc's if_nametoindex opens a socket, and then "no such device").
    pub fn from_errno(errno: Option<i32>, doing: impl Into<String>) -> Option<Self> {
        let host = match errno {
            Some(libc::ENFILE) => "; the host as a whole is out of them too (fs.file-max)",
            Some(libc::EMFILE) => "",
            _ if at_fd_limit() => "",
            _ => return None,
        };
        Some(Self {
            doing: doing.into(),
            limit: fd_limit(),
            host,
        })
    }
}

/// Whether this process has (nearly) as many descriptors open as it may.
fn at_fd_limit() -> bool {
    match fs::read_dir("/proc/self/fd") {
        Ok(d) => d.count() as u64 + 2 >= fd_limit(),
        // Listing them needs a descriptor too.
        Err(e) => e.raw_os_error() == Some(libc::EMFILE),
    }
}

/// The soft limit on open files of this process.
pub fn fd_limit() -> u64 {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } == 0 {
        rlim.rlim_cur
    } else {
        0
    }
}
