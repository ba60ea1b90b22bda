//! Which interfaces exist, what they look like, and when that changes: an rtnetlink
//! subscription to link notifications (no polling), plus glob selection of tap names.

use futures::{channel::mpsc::UnboundedReceiver, StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{AsyncSocket, SocketAddr};

use crate::mac::MacAddr;

/// rtnetlink multicast group of link notifications (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("cannot open an rtnetlink socket to follow interfaces: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot list interfaces over rtnetlink: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error("bad interface pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
}

/// What tapwatch needs to know of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    /// ifindex of the master device (bridge, OVS datapath, bond): set means bridged.
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    /// rtnetlink kind ("tun", "veth", "bridge"…), when the kernel says.
    pub kind: Option<String>,
}

impl Link {
    pub fn mode(&self) -> Mode {
        if self.master.is_some() {
            Mode::Bridged
        } else {
            Mode::Routed
        }
    }

    /// The master device's name, looked up in the caller's namespace.
    pub fn master_name(&self) -> Option<String> {
        let idx = self.master?;
        let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
        let p = unsafe { libc::if_indextoname(idx, buf.as_mut_ptr()) };
        if p.is_null() {
            return Some(format!("if{idx}"));
        }
        // SAFETY: on success the buffer holds a NUL-terminated name.
        Some(
            unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut link = Link {
            ifindex: msg.header.index,
            name: String::new(),
            mac: None,
            master: None,
            mtu: None,
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
                LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        (!link.name.is_empty()).then_some(link)
    }
}

/// How frames leave a tap on the host side, which decides whether a dst mismatch is a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No master: the host routes (Calico, /32 routes); a frame to a foreign MAC is dropped
    /// as PACKET_OTHERHOST in ip_rcv.
    Routed,
    /// Enslaved to a bridge or OVS: frames to other MACs are normal switched traffic.
    Bridged,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Routed => "routed",
            Mode::Bridged => "bridged",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// A new link, or new facts about a known one (MAC, master, name).
    Present(Link),
    Removed {
        ifindex: u32,
        name: String,
    },
}

/// Follows link notifications. Subscribes before dumping, so no change between the two is
/// missed; a change seen twice is harmless because consumers compare with what they know.
pub struct LinkMonitor {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkMonitor {
    pub async fn start() -> Result<(Self, Vec<Link>), IfaceError> {
        let (mut conn, handle, messages) =
            rtnetlink::new_connection().map_err(IfaceError::Socket)?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(IfaceError::Socket)?;
        let task = tokio::spawn(conn);
        let mut links = Vec::new();
        let mut dump = handle.link().get().execute();
        while let Some(msg) = dump.try_next().await.map_err(IfaceError::Dump)? {
            links.extend(Link::from_message(&msg));
        }
        Ok((Self { messages, task }, links))
    }

    /// The next change; `None` if the netlink connection ended.
    pub async fn next(&mut self) -> Option<LinkChange> {
        loop {
            let (msg, _) = self.messages.next().await?;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    if let Some(link) = Link::from_message(&m) {
                        return Some(LinkChange::Present(link));
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    let name = Link::from_message(&m).map(|l| l.name).unwrap_or_default();
                    return Some(LinkChange::Removed {
                        ifindex: m.header.index,
                        name,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Drop for LinkMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Interface selection by shell-style globs (`tap*`, `vnet[0-9]*`).
#[derive(Clone, Debug)]
pub struct Selector {
    patterns: Vec<glob::Pattern>,
}

pub const DEFAULT_PATTERNS: &[&str] = &["tap*", "vnet*"];

impl Selector {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, IfaceError> {
        let patterns = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p.as_ref()).map_err(|source| IfaceError::Pattern {
                    pattern: p.as_ref().to_string(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(name))
    }

    pub fn describe(&self) -> String {
        self.patterns
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let s = Selector::new(DEFAULT_PATTERNS).unwrap();
        assert!(s.matches("tap1a2b3c4d-5e"));
        assert!(s.matches("vnet12"));
        assert!(!s.matches("eth0"));
        assert!(!s.matches("macvtap0"));
        let s = Selector::new(&["vm-[ab]*"]).unwrap();
        assert!(s.matches("vm-a1") && !s.matches("vm-c1"));
        assert!(Selector::new(&["tap["]).is_err());
    }
}
