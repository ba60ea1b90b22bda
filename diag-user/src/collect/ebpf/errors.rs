//! How the eBPF datapaths fail, and the errno or words behind an aya error.

use aya::{programs::ProgramError, EbpfError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel refused tapwatch's eBPF programs: {0}. tapwatch needs a kernel with BPF \
         (CONFIG_BPF_SYSCALL) and tc BPF classifiers (TCX on Linux >= 6.6, or \
         CONFIG_NET_CLS_BPF with clsact); use --datapath pcap where BPF is not available"
    )]
    Load(#[source] EbpfError),
    #[error("the kernel rejected eBPF program {name}: {reason}")]
    Program { name: &'static str, reason: String },
    #[error("eBPF object lacks {0}; rebuild tapwatch")]
    Missing(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot attach to {ifname}: {reason}")]
    Attach {
        ifname: String,
        reason: String,
        /// The errno behind it, when there was one (EMFILE, ENODEV…).
        errno: Option<i32>,
    },
    #[error(
        "the drop-driven datapath cannot run here: {0}; --datapath tc works on any kernel with BPF"
    )]
    Drops(String),
    #[error(transparent)]
    Descriptors(#[from] crate::collect::caps::OutOfDescriptors),
}

impl ProbeError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            ProbeError::Attach { errno, .. } => *errno,
            ProbeError::Descriptors(_) => Some(libc::EMFILE),
            _ => None,
        }
    }
}

/// A program error in a few lines: the verifier's log can run to thousands, and its end
/// says why.
pub(super) fn describe(e: &ProgramError) -> String {
    const TAIL: usize = 12;
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(TAIL)..].join("\n");
            format!("the verifier refused it ({io_error}); end of its log:\n{tail}")
        }
        other => error_chain(other),
    }
}

/// The errno behind an aya program error (TCX link syscalls, clsact netlink requests).
pub(super) fn program_errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::TcError(t) => super::tc::tc_errno(t),
        ProgramError::IOError(io) => io.raw_os_error(),
        other => chain_errno(other),
    }
}

pub(super) fn map_errno(e: &aya::maps::MapError) -> Option<i32> {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error(),
        other => chain_errno(other),
    }
}

/// The first `io::Error` with an errno in an error's source chain.
pub(super) fn chain_errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(n) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        cur = err.source();
    }
    None
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
