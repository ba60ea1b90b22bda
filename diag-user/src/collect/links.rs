//! Which interfaces exist, what they look like, and when that changes: an rtnetlink
//! subscription to link notifications (no polling), plus glob selection of tap names.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkInfo, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::namespaces::Outbox;
use crate::model::{mac::MacAddr, Mode};

/// rtnetlink multicast group of link notifications (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("cannot open an rtnetlink socket to follow interfaces: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot list interfaces over rtnetlink: {0}")]
    Dump(#[source] std::io::Error),
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
    /// Where it really is, for a link of another network namespace (whose `ifindex` and
    /// `name` are then the run's, see [`super::namespaces`]).
    pub site: Option<super::namespaces::Site>,
}

impl Link {
    pub fn mode(&self) -> Mode {
        if self.master.is_some() {
            Mode::Bridged
        } else {
            Mode::Routed
        }
    }

    /// Its name in its own namespace (`--iface` globs match it; `name` is the run's).
    pub fn ifname(&self) -> &str {
        self.site.as_ref().map_or(&self.name, |s| &s.ifname)
    }

    /// The master device's name, looked up in the caller's namespace (a link of another
    /// namespace has it from there).
    pub fn master_name(&self) -> Option<String> {
        let idx = self.master?;
        if let Some(site) = &self.site {
            return site.master_name.clone();
        }
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

    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut link = Link {
            ifindex: msg.header.index,
            name: String::new(),
            mac: None,
            master: None,
            mtu: None,
            kind: None,
            site: None,
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

/// The link with `ifindex` now, if there is one.
pub fn lookup(ifindex: u32) -> std::io::Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    match crate::collect::netlink::request(RouteNetlinkMessage::GetLink(msg), 0) {
        Ok(answers) => Ok(answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Link::from_message(l),
            _ => None,
        })),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// A new link, or new facts about a known one (MAC, master, name).
    Present(Link),
    Removed {
        ifindex: u32,
        name: String,
        /// The link's statistics as it went (the kernel's removal notice carries them):
        /// its last frames, which no later request could read.
        totals: Option<crate::collect::netlink::LinkTotals>,
    },
    /// Notifications were lost (the socket's buffer overflowed while tapwatch was busy);
    /// the changes that follow come from a fresh dump of every link, so none is missed.
    Resynced,
    /// What the user should hear of following other namespaces (`--netns all`): some
    /// cannot be, or are past the most a run follows.
    Namespaces(String),
}

/// Follows link notifications on a thread of its own, so a busy or blocked consumer never
/// makes the kernel drop them. Subscribes before dumping, so no change between the two is
/// missed; a change seen twice is harmless because consumers compare with what they know.
/// If the socket overflows anyway (ENOBUFS), the thread dumps every link again and reports
/// what differs from what it last passed on.
pub struct LinkMonitor {
    events: tokio::sync::mpsc::UnboundedReceiver<LinkChange>,
    stop: Arc<AtomicBool>,
}

/// Room for link notifications while the reader thread is descheduled: about 8000 of them.
const RCVBUF: usize = 8 << 20;
/// How often the reader thread looks at its stop flag.
const RECV_TIMEOUT: Duration = Duration::from_millis(200);

impl LinkMonitor {
    pub fn start() -> Result<(Self, Vec<Link>), IfaceError> {
        let sock = subscribe().map_err(IfaceError::Socket)?;
        let links = dump().map_err(IfaceError::Dump)?;
        let known = links.iter().map(|l| (l.ifindex, l.clone())).collect();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("tapwatch-links".into())
            .spawn(move || follow(sock, known, &mut Outbox::plain(tx), &flag))
            .map_err(IfaceError::Socket)?;
        Ok((Self { events, stop }, links))
    }

    /// A monitor of changes another thread passes on to `events` until `stop` is set (when
    /// the monitor drops): every namespace's, with `--netns all`.
    pub(super) fn of(
        events: tokio::sync::mpsc::UnboundedReceiver<LinkChange>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Self { events, stop }
    }

    /// The next change; `None` if the reader thread ended (it says why in an error).
    pub async fn next(&mut self) -> Option<LinkChange> {
        self.events.recv().await
    }

    /// A change already read, if any; never waits.
    pub fn try_next(&mut self) -> Option<LinkChange> {
        self.events.try_recv().ok()
    }
}

impl Drop for LinkMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every link of the caller's namespace.
fn dump() -> std::io::Result<Vec<Link>> {
    Ok(crate::collect::netlink::dump_links()?
        .iter()
        .filter_map(Link::from_message)
        .collect())
}

/// A socket subscribed to link notifications, then every link there is: in that order, so
/// no change between the two is missed.
pub(super) fn subscribe_and_dump() -> std::io::Result<(Socket, Vec<Link>)> {
    let sock = subscribe()?;
    Ok((sock, dump()?))
}

/// A socket subscribed to link notifications.
fn subscribe() -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    grow_rcvbuf(&sock);
    set_recv_timeout(&sock, RECV_TIMEOUT)?;
    Ok(sock)
}

fn grow_rcvbuf(sock: &Socket) {
    let size = RCVBUF as libc::c_int;
    // SAFETY: setsockopt with a valid int. SO_RCVBUFFORCE (root) goes past rmem_max; the
    // fallback is capped by it, which is still better than the default.
    unsafe {
        let p = &size as *const libc::c_int as *const libc::c_void;
        let n = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            p,
            n,
        ) != 0
        {
            libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, p, n);
        }
    }
}

fn set_recv_timeout(sock: &Socket, t: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid timeval.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The reader thread: passes every link notification on, and after an overflow a fresh
/// dump's differences from what it passed on before.
pub(super) fn follow(
    mut sock: Socket,
    mut known: HashMap<u32, Link>,
    tx: &mut Outbox,
    stop: &AtomicBool,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        match sock.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // What is still queued is of unknown age: a fresh socket, subscribed before
                // the dump, gets only what happens from now on.
                sock = match subscribe() {
                    Ok(s) => s,
                    Err(_) => return,
                };
                if resync(&mut known, tx).is_err() {
                    return;
                }
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            // Dropping the sender ends the consumer's stream: it reports the loss.
            Err(_) => return,
        }
        let mut at = 0;
        while at < buf.len() {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..]) else {
                break;
            };
            let len = msg.header.length as usize;
            let change = change_of(msg.payload, &mut known);
            if let Some(c) = change {
                if tx.send(c).is_err() {
                    return;
                }
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

/// What a link notification says, following `known` (by ifindex).
fn change_of(
    payload: NetlinkPayload<RouteNetlinkMessage>,
    known: &mut HashMap<u32, Link>,
) -> Option<LinkChange> {
    match payload {
        // A bridge's own notices about its ports (AF_BRIDGE): a tap leaving a bridge gets
        // an RTM_DELLINK of this family, yet the tap stays.
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m),
        ) if m.header.interface_family == AddressFamily::Bridge => None,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => Link::from_message(&m)
            .map(|link| {
                known.insert(link.ifindex, link.clone());
                LinkChange::Present(link)
            }),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
            let name = known
                .remove(&m.header.index)
                .map(|l| l.name)
                .or_else(|| Link::from_message(&m).map(|l| l.name))
                .unwrap_or_default();
            let totals = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Stats64(s) => {
                    Some(crate::collect::netlink::LinkTotals::from_stats64(s))
                }
                _ => None,
            });
            Some(LinkChange::Removed {
                ifindex: m.header.index,
                name,
                totals,
            })
        }
        _ => None,
    }
}

/// After lost notifications: dump every link and pass on what changed.
fn resync(known: &mut HashMap<u32, Link>, tx: &mut Outbox) -> Result<(), ()> {
    let mut send = |c| tx.send(c);
    send(LinkChange::Resynced)?;
    let Ok(msgs) = crate::collect::netlink::dump_links() else {
        return Err(());
    };
    let now: HashMap<u32, Link> = msgs
        .iter()
        .filter_map(Link::from_message)
        .map(|l| (l.ifindex, l))
        .collect();
    let gone: Vec<(u32, String)> = known
        .iter()
        .filter(|(i, _)| !now.contains_key(i))
        .map(|(i, l)| (*i, l.name.clone()))
        .collect();
    for (ifindex, name) in gone {
        known.remove(&ifindex);
        send(LinkChange::Removed {
            ifindex,
            name,
            totals: None,
        })?;
    }
    let mut fresh: Vec<&Link> = now.values().collect();
    fresh.sort_by_key(|l| l.ifindex);
    for link in fresh {
        if known.get(&link.ifindex) != Some(link) {
            known.insert(link.ifindex, link.clone());
            send(LinkChange::Present(link.clone()))?;
        }
    }
    Ok(())
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

    /// After lost notifications, the fresh dump is compared with what was passed on: only
    /// the differences go out, removals included.
    #[test]
    fn a_resync_passes_on_only_the_differences() {
        let now: Vec<Link> = crate::collect::netlink::dump_links()
            .unwrap()
            .iter()
            .filter_map(Link::from_message)
            .collect();
        let mut known: HashMap<u32, Link> = now.iter().map(|l| (l.ifindex, l.clone())).collect();
        let gone = Link {
            ifindex: 999_999,
            name: "tapgone".into(),
            mac: None,
            master: None,
            mtu: None,
            kind: None,
            site: None,
        };
        known.insert(gone.ifindex, gone);
        let changed = now[0].clone();
        known.get_mut(&changed.ifindex).unwrap().mtu = Some(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        resync(&mut known, &mut Outbox::plain(tx)).unwrap();
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.push(c);
        }
        assert_eq!(
            got,
            [
                LinkChange::Resynced,
                LinkChange::Removed {
                    ifindex: 999_999,
                    name: "tapgone".into(),
                    totals: None,
                },
                LinkChange::Present(changed),
            ]
        );
    }

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
