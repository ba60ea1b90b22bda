//! Blocking rtnetlink requests (link dumps, tc filter dumps and deletes) on short-lived
//! sockets, with netlink-packet-route doing all encoding and decoding.
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

/// A socket bound to a kernel-assigned port, for one request.
fn socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
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
