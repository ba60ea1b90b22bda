//! A bridge's forwarding table, asked for one MAC: whether anything from it entered the
//! bridge since a moment (the bridged stale-gateway detector's fourth step). The kernel
//! says when it last learnt each MAC (`NDA_CACHEINFO`'s `updated`, in 1/100 s ago).

use std::{fs::File, io, sync::Arc};

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::{
    neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};

use super::{netlink, setns};
use crate::{
    model::{clock::Ts, mac::MacAddr},
    registry::Tap,
    verdict::bridged::{BridgeEars, Ears},
};

/// What the forwarding table says of a MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The bridge's own (a permanent entry): always there.
    Local,
    /// Last learnt this many milliseconds ago.
    Ago(u64),
}

/// Every entry of bridge `master` (by name) for `mac`, in the caller's namespace.
pub fn heard(master: &str, mac: MacAddr) -> io::Result<Vec<Heard>> {
    let Some(bridge) = ifindex_of(master) else {
        return Ok(Vec::new());
    };
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    let answers = netlink::request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => Some(n),
            _ => None,
        })
        .filter(|n| {
            n.attributes
                .contains(&NeighbourAttribute::Controller(bridge))
                && n.attributes
                    .contains(&NeighbourAttribute::LinkLocalAddress(mac.0.to_vec()))
        })
        .map(|n| {
            let permanent = matches!(
                n.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            );
            let updated = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::CacheInfo(c) => Some(u64::from(c.updated) * 10),
                _ => None,
            });
            match (permanent, updated) {
                (false, Some(ms)) => Heard::Ago(ms),
                _ => Heard::Local,
            }
        })
        .collect())
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The live run's ears: the forwarding table of each bridged tap's bridge, asked in the
/// namespace the run watches.
pub struct FdbEars {
    ns: File,
}

impl FdbEars {
    /// Ears for the calling thread's namespace.
    pub fn here() -> Ears {
        Ears(
            setns::current()
                .ok()
                .map(|ns| Arc::new(Self { ns }) as Arc<dyn BridgeEars>),
        )
    }
}

impl BridgeEars for FdbEars {
    fn heard_since(&self, tap: &Tap, mac: MacAddr, since: Ts) -> Option<bool> {
        let master = tap.master.clone()?;
        // A tap of another namespace (a pod's) is on a bridge there.
        let entries = match crate::collect::namespaces::split(&tap.ifname) {
            (Some(label), _) => crate::collect::namespaces::named(label)?
                .run_in(move || heard(&master, mac))
                .ok()?
                .ok()?,
            (None, _) => setns::run_in(&self.ns, move || heard(&master, mac))
                .ok()?
                .ok()?,
        };
        let now = chrono::Utc::now();
        Some(entries.iter().any(|h| match h {
            Heard::Local => true,
            Heard::Ago(ms) => now - chrono::Duration::milliseconds(*ms as i64) >= since.0,
        }))
    }
}
