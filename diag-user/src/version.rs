//! What `tapwatch --version` says: the build (version, commit, the eBPF object it carries)
//! and which datapaths the running kernel and host offer.

use crate::collect::{
    ebpf::{tcx_supported, Layout},
    libpcap,
};

/// The version, the commit and the eBPF object's hash, on one line.
pub fn short() -> String {
    format!(
        "{} (commit {}, eBPF object sha256 {})",
        env!("CARGO_PKG_VERSION"),
        env!("TAPWATCH_GIT_COMMIT"),
        &env!("TAPWATCH_EBPF_SHA256")[..16]
    )
}

/// The SHA-256 of the embedded eBPF object.
pub fn ebpf_sha256() -> &'static str {
    env!("TAPWATCH_EBPF_SHA256")
}

/// Each datapath and whether this host offers it: what it rests on, or why not.
pub fn datapaths() -> Vec<(&'static str, Result<String, String>)> {
    let drops = Layout::of_running_kernel()
        .map(|_| "the kernel's BTF has drop reasons and OTHERHOST".to_string())
        .map_err(|e| e.to_string());
    let tc = Ok(if tcx_supported() {
        "clsact and TCX".to_string()
    } else {
        "clsact (no TCX before Linux 6.6)".to_string()
    });
    vec![("drops", drops), ("tc", tc), ("pcap", libpcap::describe())]
}

/// The whole answer to `--version` (without the program name, which clap prints).
pub fn long() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut s = format!(
        "{}\ncommit:      {}\neBPF object: sha256 {}\ndatapaths on this host (Linux {kernel}):",
        env!("CARGO_PKG_VERSION"),
        env!("TAPWATCH_GIT_COMMIT"),
        ebpf_sha256(),
    );
    for (name, what) in datapaths() {
        match what {
            Ok(why) => s.push_str(&format!("\n  {name:<6} yes: {why}")),
            Err(why) => s.push_str(&format!("\n  {name:<6} no: {why}")),
        }
    }
    s.push_str("\n(the eBPF datapaths need CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root)");
    s
}
