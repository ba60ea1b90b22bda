//! The kernel facts the drop program needs, from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): field offsets, the drop reasons' values and names, and
//! whether the `skb:kfree_skb` tracepoint carries a reason at all. Read once at load time;
//! any gap means this kernel gets the per-frame tc datapath instead, and the error says
//! why.

use std::collections::HashMap;

use diag_common::KernelLayout;

use super::btf::{Btf, BtfError};
use crate::collect::netlink;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the kernel publishes no BTF ({VMLINUX_BTF}: {0}; CONFIG_DEBUG_INFO_BTF)")]
    NoBtf(#[source] std::io::Error),
    #[error("the kernel's BTF cannot be read: {0}")]
    Parse(#[source] BtfError),
    #[error("the kernel's BTF lacks {0}")]
    Missing(String),
    #[error("the kernel's skb:kfree_skb tracepoint carries no drop reason (Linux 5.17 added it)")]
    NoReason,
    #[error(
        "the kernel cannot name tapwatch's network namespace (SO_NETNS_COOKIE, Linux 5.14): {0}"
    )]
    NoCookie(#[source] std::io::Error),
}

/// What userspace learnt: the layout for the program, and the drop reasons' names.
#[derive(Clone, Debug)]
pub struct Layout {
    pub kernel: KernelLayout,
    /// `enum skb_drop_reason` value -> name without its `SKB_DROP_REASON_` prefix.
    pub reasons: HashMap<u32, String>,
    /// The cookie of tapwatch's network namespace: what its taps are keyed by.
    pub netns_cookie: u64,
}

impl Layout {
    /// Reads the running kernel's BTF, for watching this process's network namespace.
    pub fn of_running_kernel() -> Result<Self, LayoutError> {
        let cookie = netlink::netns_cookie().map_err(LayoutError::NoCookie)?;
        let bytes = std::fs::read(VMLINUX_BTF).map_err(LayoutError::NoBtf)?;
        Self::from_btf(bytes, cookie)
    }

    pub fn from_btf(bytes: Vec<u8>, netns_cookie: u64) -> Result<Self, LayoutError> {
        let btf = Btf::parse(bytes).map_err(LayoutError::Parse)?;
        check_tracepoint(&btf)?;
        let offset = |ty: &str, path: &str| -> Result<u32, LayoutError> {
            match btf.offset(ty, path) {
                Ok(Some(o)) => Ok(o),
                Ok(None) | Err(BtfError::NotFound(_)) => {
                    Err(LayoutError::Missing(format!("{ty}.{path}")))
                }
                Err(e) => Err(LayoutError::Parse(e)),
            }
        };
        let reasons = drop_reasons(&btf)?;
        let value = |name: &str| -> Result<u32, LayoutError> {
            reasons
                .iter()
                .find(|(_, n)| n.as_str() == name)
                .map(|(v, _)| *v)
                .ok_or_else(|| LayoutError::Missing(format!("SKB_DROP_REASON_{name}")))
        };
        let kernel = KernelLayout {
            version: 1,
            skb_dev: offset("sk_buff", "dev")?,
            skb_head: offset("sk_buff", "head")?,
            skb_data: offset("sk_buff", "data")?,
            skb_len: offset("sk_buff", "len")?,
            skb_mac_header: offset("sk_buff", "mac_header")?,
            dev_ifindex: offset("net_device", "ifindex")?,
            dev_dev_addr: offset("net_device", "dev_addr")?,
            dev_nd_net: offset("net_device", "nd_net.net")?,
            net_cookie: offset("net", "net_cookie")?,
            reason_otherhost: value("OTHERHOST")?,
            reason_unhandled_proto: value("UNHANDLED_PROTO")?,
            netns_cookie,
        };
        Ok(Self {
            kernel,
            reasons,
            netns_cookie,
        })
    }

    /// The name of a drop reason, or its number when this kernel does not name it.
    pub fn reason_name(&self, reason: u32) -> String {
        self.reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }
}

/// `enum skb_drop_reason`, by value.
fn drop_reasons(btf: &Btf) -> Result<HashMap<u32, String>, LayoutError> {
    let values = btf.enumerators("skb_drop_reason").map_err(|e| match e {
        BtfError::NotFound(_) => LayoutError::Missing("enum skb_drop_reason".into()),
        e => LayoutError::Parse(e),
    })?;
    Ok(values
        .into_iter()
        .map(|(name, v)| {
            let name = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name);
            (v as u32, name.to_string())
        })
        .collect())
}

/// The tracepoint's prototype (`btf_trace_kfree_skb`: the hidden context, then the
/// tracepoint's own arguments) must have the skb first and the reason third, as the drop
/// program reads them.
fn check_tracepoint(btf: &Btf) -> Result<(), LayoutError> {
    let missing = || LayoutError::Missing("the skb:kfree_skb tracepoint".into());
    let params = btf
        .proto_params("btf_trace_kfree_skb")
        .map_err(|_| missing())?;
    let name = |i: usize| params.get(i).and_then(|&id| btf.base_name(id).ok());
    if name(1) != Some("sk_buff") {
        return Err(missing());
    }
    if name(3) != Some("skb_drop_reason") {
        return Err(LayoutError::NoReason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kernel (6.x, with BTF): every fact is found, and the reasons the
    /// drop program compares with are named as the kernel names them.
    #[test]
    fn the_running_kernel_has_what_the_drop_program_reads() {
        let Ok(bytes) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("no {VMLINUX_BTF}: nothing to check");
            return;
        };
        let started = std::time::Instant::now();
        let l = Layout::from_btf(bytes, 42).expect("layout");
        eprintln!("BTF read in {:?}", started.elapsed());
        let k = l.kernel;
        assert_eq!((k.version, l.netns_cookie), (1, 42));
        assert!(k.skb_dev > 0 && k.skb_head > 0 && k.net_cookie > 0);
        assert_eq!(l.reason_name(k.reason_otherhost), "OTHERHOST");
        assert_eq!(l.reason_name(k.reason_unhandled_proto), "UNHANDLED_PROTO");
        assert_eq!(l.reason_name(100_000), "REASON_100000");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [vec![], vec![0u8; 7], vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]] {
            assert!(Layout::from_btf(bytes, 1).is_err());
        }
    }
}
