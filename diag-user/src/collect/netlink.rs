//! Blocking rtnetlink requests (link dumps, link statistics, qdisc and tc filter dumps,
//! filter deletes) on short-lived sockets, with netlink-packet-route doing the encoding and
//! decoding of every message it knows (all but the small statistics request).
//!
//! Blocking on purpose: the link monitor runs on its own thread, and the rest are one-off
//! requests whose answer the caller needs before it goes on.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::LinkMessage,
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_packet_utils::nla::{Nla, NlasIterator};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Receive buffer for one datagram: the kernel never sends more than this at once for the
/// message types used here.
const RECV_BUF: usize = 64 * 1024;

/// How long a request waits for the kernel's answer before it is an error: never forever.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A socket bound to a kernel-assigned port, for one request.
fn socket() -> io::Result<Socket> {
    use std::os::fd::AsRawFd;
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let tv = libc::timeval {
        tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Sends `msg` with `flags` and collects every answer until the dump ends or the kernel
/// acknowledges; a netlink error becomes an `io::Error` with its errno.
pub fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let sock = socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    sock.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        rx.clear();
        sock.recv(&mut rx, 0)?;
        let mut at = 0;
        while at < rx.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(out),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
        }
        // A plain request (not a dump) without NLM_F_ACK ends with its single answer.
        if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
            return Ok(out);
        }
    }
}

/// Sends one raw request and calls `each` with the payload of every answer of type `ty`,
/// until the dump ends; a netlink error becomes an `io::Error` with its errno.
fn raw_dump(request: &[u8], ty: u16, mut each: impl FnMut(&[u8])) -> io::Result<()> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let sock = socket()?;
    sock.send(request, 0)?;
    let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        rx.clear();
        sock.recv(&mut rx, 0)?;
        let mut at = 0;
        while at + 16 <= rx.len() {
            let word = |o: usize| u32::from_ne_bytes(rx[at + o..at + o + 4].try_into().unwrap());
            let len = word(0) as usize;
            let kind = u16::from_ne_bytes([rx[at + 4], rx[at + 5]]);
            if len < 16 || at + len > rx.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = if len >= 20 { word(16) as i32 } else { 0 };
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                k if k == ty => each(&rx[at + 16..at + len]),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// What a link's own statistics say it carried: from the VM (`rx`) and to it (`tx`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl LinkTotals {
    /// What was carried since `base` (counters that went backwards count from zero: the
    /// link was re-created under the same index).
    pub fn since(&self, base: &LinkTotals) -> LinkTotals {
        let d = |now: u64, then: u64| if now >= then { now - then } else { now };
        LinkTotals {
            rx_packets: d(self.rx_packets, base.rx_packets),
            rx_bytes: d(self.rx_bytes, base.rx_bytes),
            tx_packets: d(self.tx_packets, base.tx_packets),
            tx_bytes: d(self.tx_bytes, base.tx_bytes),
        }
    }

    pub fn from_stats64(s: &netlink_packet_route::link::Stats64) -> Self {
        LinkTotals {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        }
    }
}

/// Link statistics of `ifindex`, or of every link (`None`), by ifindex: one RTM_GETSTATS
/// request for only the 64-bit link counters, far lighter than a link dump.
pub fn link_totals(ifindex: Option<u32>) -> io::Result<std::collections::HashMap<u32, LinkTotals>> {
    const RTM_NEWSTATS: u16 = 92;
    const RTM_GETSTATS: u16 = 94;
    const IFLA_STATS_LINK_64: u16 = 1;
    // nlmsghdr (16) + if_stats_msg { family, pad1, pad2, ifindex, filter_mask } (12).
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&28u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETSTATS.to_ne_bytes());
    // One link's answer ends with the acknowledgement, a dump's with NLMSG_DONE.
    let flags = NLM_F_REQUEST
        | if ifindex.is_none() {
            NLM_F_DUMP
        } else {
            NLM_F_ACK
        };
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    req.extend_from_slice(&ifindex.unwrap_or(0).to_ne_bytes());
    req.extend_from_slice(&(1u32 << (IFLA_STATS_LINK_64 - 1)).to_ne_bytes());
    let mut out = std::collections::HashMap::new();
    raw_dump(&req, RTM_NEWSTATS, |payload| {
        if payload.len() < 12 {
            return;
        }
        let index = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
        for nla in NlasIterator::new(&payload[12..]).flatten() {
            if nla.kind() != IFLA_STATS_LINK_64 || nla.value().len() < 32 {
                continue;
            }
            let v = nla.value();
            let at = |i: usize| u64::from_ne_bytes(v[i * 8..i * 8 + 8].try_into().unwrap());
            // struct rtnl_link_stats64 starts rx_packets, tx_packets, rx_bytes, tx_bytes.
            out.insert(
                index,
                LinkTotals {
                    rx_packets: at(0),
                    tx_packets: at(1),
                    rx_bytes: at(2),
                    tx_bytes: at(3),
                },
            );
        }
    })?;
    Ok(out)
}

/// Interfaces that have a clsact qdisc: the only ones where tc filters of an earlier run
/// can be left.
pub fn clsact_ifindexes() -> io::Result<std::collections::HashSet<u32>> {
    let answers = request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q)
                if q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact")) =>
            {
                Some(q.header.index as u32)
            }
            _ => None,
        })
        .collect())
}

/// The kernel's cookie of the caller's network namespace (`SO_NETNS_COOKIE`, Linux 5.14):
/// unique for the boot, unlike an ifindex or a namespace inode.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) and getsockopt(2) with valid arguments; the fd is owned at once.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        if libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }
}

/// The host addresses (/32 and /128 routes) that the caller's namespace routes out of
/// interface `ifindex`: on a routed tap, the VM's own addresses (Calico's route per VM).
pub fn host_routes_via(ifindex: u32) -> io::Result<Vec<std::net::IpAddr>> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
    let answers = request(
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .filter(|r| r.attributes.contains(&RouteAttribute::Oif(ifindex)))
        .filter_map(|r| {
            let host = r.header.destination_prefix_length;
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) if host == 32 => {
                    Some((*v4).into())
                }
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) if host == 128 => {
                    Some((*v6).into())
                }
                _ => None,
            })
        })
        .collect())
}

/// Every link in the caller's network namespace.
pub fn dump_links() -> io::Result<Vec<LinkMessage>> {
    let answers = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .collect())
}

/// `TCA_BPF_ID` and `TCA_BPF_NAME` inside a bpf filter's `TCA_OPTIONS`.
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_NAME: u16 = 7;

/// One tc BPF filter on an interface's clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub parent: u32,
    /// tcm_info: priority (high 16 bits) and protocol.
    pub info: u32,
    pub handle: u32,
    pub name: String,
    /// The kernel id of the BPF program the filter runs.
    pub prog_id: u32,
}

/// tc parent of the clsact ingress and egress hooks.
pub const CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// BPF filters on `parent` of `ifindex`; none (not an error) when there is no clsact qdisc.
pub fn bpf_filters(ifindex: u32, parent: u32) -> io::Result<Vec<BpfFilter>> {
    let mut msg = TcMessage::default();
    msg.header = TcHeader {
        index: ifindex as i32,
        parent: TcHandle::from(parent),
        ..TcHeader::default()
    };
    let answers = match request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
        Ok(a) => a,
        // No clsact qdisc on the device: nothing is attached there.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            continue;
        };
        let mut filter = BpfFilter {
            parent,
            info: f.header.info,
            handle: f.header.handle.into(),
            name: String::new(),
            prog_id: 0,
        };
        let mut is_bpf = false;
        for attr in &f.attributes {
            match attr {
                TcAttribute::Kind(k) => is_bpf = k == "bpf",
                TcAttribute::Options(opts) => {
                    for o in opts {
                        let TcOption::Other(nla) = o else { continue };
                        // An unknown kind's TCA_OPTIONS arrive whole: the nested
                        // attributes are in its value.
                        let mut v = vec![0u8; nla.value_len()];
                        nla.emit_value(&mut v);
                        for inner in NlasIterator::new(&v[..]).flatten() {
                            let value = inner.value();
                            match inner.kind() {
                                TCA_BPF_ID if value.len() >= 4 => {
                                    filter.prog_id =
                                        u32::from_ne_bytes([value[0], value[1], value[2], value[3]])
                                }
                                TCA_BPF_NAME => {
                                    filter.name = String::from_utf8_lossy(value)
                                        .trim_end_matches('\0')
                                        .to_string()
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // A dump also lists the chain's head (no handle): only real filters count.
        if is_bpf && filter.handle != 0 {
            out.push(filter);
        }
    }
    Ok(out)
}

/// Removes one filter found by [`bpf_filters`].
pub fn delete_filter(ifindex: u32, f: &BpfFilter) -> io::Result<()> {
    let mut msg = TcMessage::default();
    msg.header = TcHeader {
        index: ifindex as i32,
        parent: TcHandle::from(f.parent),
        handle: TcHandle::from(f.handle),
        info: f.info,
        ..TcHeader::default()
    };
    request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).map(|_| ())
}
