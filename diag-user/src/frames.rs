//! Exact frames as VMs, QEMU and hosts send them: the lab plays them, tests play them, and
//! a nudge writes one.

use std::net::{Ipv4Addr, Ipv6Addr};

use diag_common::{frame::ARP_OP_RARP_REQUEST, ETH_P_8021Q, ETH_P_ARP, ETH_P_RARP};
use etherparse::PacketBuilder;

use crate::model::mac::MacAddr;

pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

/// Minimum Ethernet frame without FCS; QEMU pads its announce to this.
const MIN_FRAME: usize = 60;

fn ethernet(dst: MacAddr, src: MacAddr, vlan: Option<u16>, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(MIN_FRAME);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    if let Some(v) = vlan {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_body(f: &mut Vec<u8>, op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) {
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha.0);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha.0);
    f.extend_from_slice(&tpa.octets());
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    f
}

/// QEMU's `announce-self` frame: broadcast RARP "reverse request" with the guest MAC as
/// sender and target, IPs 0.0.0.0, padded to 60 bytes.
pub fn rarp_announce(guest: MacAddr, vlan: Option<u16>) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, guest, vlan, ETH_P_RARP);
    let any = Ipv4Addr::UNSPECIFIED;
    arp_body(&mut f, ARP_OP_RARP_REQUEST, guest, any, guest, any);
    pad(f)
}

/// An ARP frame of opcode `op` (1 request, 2 reply).
#[allow(clippy::too_many_arguments)]
pub fn arp(
    op: u16,
    dst: MacAddr,
    src: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
    vlan: Option<u16>,
) -> Vec<u8> {
    let mut f = ethernet(dst, src, vlan, ETH_P_ARP);
    arp_body(&mut f, op, src, sender_ip, target_mac, target_ip);
    pad(f)
}

/// A broadcast "who has `target` tell `sender`".
pub fn arp_request(src: MacAddr, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    arp(1, BROADCAST, src, sender, MacAddr::default(), target, None)
}

/// A gratuitous ARP as Linux sends it: a broadcast request for its own address.
pub fn garp(guest: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(1, BROADCAST, guest, ip, MacAddr::default(), ip, None)
}

/// An ICMP echo request from the VM.
pub fn icmp_echo_request(
    src: MacAddr,
    dst: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    icmp_echo(false, (src, dst), (src_ip, dst_ip), (id, seq), payload)
}

/// The ICMP echo reply to an echo request.
pub fn icmp_echo_reply(
    src: MacAddr,
    dst: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    icmp_echo(true, (src, dst), (src_ip, dst_ip), (id, seq), payload)
}

fn icmp_echo(
    reply: bool,
    (src, dst): (MacAddr, MacAddr),
    (src_ip, dst_ip): (Ipv4Addr, Ipv4Addr),
    (id, seq): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(src.0, dst.0).ipv4(src_ip.octets(), dst_ip.octets(), 64);
    let b = if reply {
        ip.icmpv4_echo_reply(id, seq)
    } else {
        ip.icmpv4_echo_request(id, seq)
    };
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, payload)
        .expect("writing to a Vec cannot fail");
    f
}

/// A UDP datagram of `len` bytes in all (at least 42).
pub fn udp(src: MacAddr, dst: MacAddr, src_ip: Ipv4Addr, dst_ip: Ipv4Addr, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src_ip.octets(), dst_ip.octets(), 64)
        .udp(40000, 9);
    let payload = vec![0u8; len.saturating_sub(42)];
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, &payload)
        .expect("writing to a Vec cannot fail");
    f
}

/// The IPv6 link-local address a Linux interface takes from its MAC (modified EUI-64,
/// RFC 4291 appendix A): what a host's tap, and so a routed guest's default router, is
/// called on the link.
pub fn eui64_link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The MAC an IPv6 multicast address is sent to (33:33 and its last four bytes).
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node group of `addr` (ff02::1:ffXX:XXXX), where its solicitations go.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// Who sends an IPv6 frame to whom: MACs and addresses.
#[derive(Clone, Copy, Debug)]
pub struct V6Ends {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

impl V6Ends {
    /// From `src_mac`/`src` to a group, at the group's MAC.
    pub fn to_group(src_mac: MacAddr, src: Ipv6Addr, group: Ipv6Addr) -> Self {
        Self {
            src_mac,
            dst_mac: ipv6_multicast_mac(group),
            src,
            dst: group,
        }
    }
}

/// The link-layer address option (RFC 4861 4.6.1): 1 source, 2 target.
fn lladdr_option(kind: u8, mac: MacAddr) -> [u8; 8] {
    let m = mac.0;
    [kind, 1, m[0], m[1], m[2], m[3], m[4], m[5]]
}

/// An ICMPv6 message of `icmp_type` (code 0) with `body` after its checksum, in an IPv6
/// header of hop limit 255 as neighbour discovery requires.
fn icmpv6(ends: V6Ends, icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let mut msg = vec![icmp_type, 0, 0, 0];
    msg.extend_from_slice(body);
    let sum = icmpv6_checksum(ends.src, ends.dst, &msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = ethernet(ends.dst_mac, ends.src_mac, None, diag_common::ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&ends.src.octets());
    f.extend_from_slice(&ends.dst.octets());
    f.extend_from_slice(&msg);
    f
}

fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A Router Solicitation to all-routers, with the sender's link-layer address.
pub fn router_solicit(src_mac: MacAddr, src: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&lladdr_option(1, src_mac));
    icmpv6(V6Ends::to_group(src_mac, src, ALL_ROUTERS), 133, &body)
}

/// RFC 4861's default router lifetime (3 × the default 600 s between advertisements), in
/// seconds.
pub const DEFAULT_ROUTER_LIFETIME_S: u16 = 1800;

/// What a Router Advertisement says besides who sends it.
#[derive(Clone, Copy, Debug)]
pub struct RouterAdvert {
    /// Seconds the receiver keeps the sender as a default router; 0: not a default router.
    pub router_lifetime: u16,
    /// An on-link, autonomous prefix to announce (address, length), valid a day.
    pub prefix: Option<(Ipv6Addr, u8)>,
}

/// A Router Advertisement with the sender's link-layer address: a receiver that accepts
/// it adds (or, lifetime 0, removes) a default route via `ends.src` and caches the MAC.
pub fn router_advert(ends: V6Ends, ra: RouterAdvert) -> Vec<u8> {
    // Hop limit, M/O flags, reachable and retransmit times: 0, "unspecified", so a
    // receiver keeps its own.
    let mut body = vec![0u8, 0];
    body.extend_from_slice(&ra.router_lifetime.to_be_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&lladdr_option(1, ends.src_mac));
    if let Some((prefix, len)) = ra.prefix {
        // Prefix information (RFC 4861 4.6.2): on-link and autonomous.
        body.extend_from_slice(&[3, 4, len, 0xc0]);
        body.extend_from_slice(&86_400u32.to_be_bytes());
        body.extend_from_slice(&14_400u32.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&prefix.octets());
    }
    icmpv6(ends, 134, &body)
}

/// A Neighbour Solicitation for `target`, with the sender's link-layer address.
pub fn neighbor_solicit(ends: V6Ends, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&lladdr_option(1, ends.src_mac));
    icmpv6(ends, 135, &body)
}

/// A Neighbour Advertisement for `target` at the sender's MAC (the target link-layer
/// address option), with `flags` (`diag_common::frame::NA_FLAG_*`).
pub fn neighbor_advert(ends: V6Ends, target: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut body = vec![flags, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend_from_slice(&lladdr_option(2, ends.src_mac));
    icmpv6(ends, 136, &body)
}

/// A UDP datagram over IPv6 of `len` bytes in all (at least 62).
pub fn udp6(ends: V6Ends, len: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(ends.src_mac.0, ends.dst_mac.0)
        .ipv6(ends.src.octets(), ends.dst.octets(), 64)
        .udp(40000, 9);
    let payload = vec![0u8; len.saturating_sub(62)];
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, &payload)
        .expect("writing to a Vec cannot fail");
    f
}

#[cfg(test)]
mod tests {
    use diag_common::{classify, Direction, FrameKind};

    use super::*;

    const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);

    #[test]
    fn builders_classify_as_intended() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let f = rarp_announce(GUEST, None);
        assert_eq!(f.len(), 60);
        assert_eq!(
            classify(&f, false, Direction::FromVm).kind,
            Some(FrameKind::Rarp)
        );
        assert_eq!(
            classify(&garp(GUEST, ip), false, Direction::FromVm).kind,
            Some(FrameKind::Garp)
        );
        let r = arp_request(GUEST, ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            classify(&r, false, Direction::FromVm).kind,
            Some(FrameKind::ArpRequest)
        );
        let u = udp(GUEST, BROADCAST, ip, ip, 100);
        assert_eq!(u.len(), 100);
        let e = icmp_echo_request(GUEST, BROADCAST, ip, ip, 1, 1, b"abc");
        assert_eq!(e.len(), 14 + 20 + 8 + 3);
    }

    /// The neighbour discovery builders make what the classifier names, with checksums a
    /// parser accepts, and the EUI-64 link-local of a MAC is Linux's.
    #[test]
    fn neighbour_discovery_builders() {
        use diag_common::frame::{NA_FLAG_OVERRIDE, NA_FLAG_ROUTER, NA_FLAG_SOLICITED};
        let tap = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
        let router = eui64_link_local(tap);
        assert_eq!(router.to_string(), "fe80::fc16:3eff:feaa:bbcc");
        let calico = eui64_link_local(MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]));
        assert_eq!(calico.to_string(), "fe80::261:feff:feed:cafe");
        let guest_ll = eui64_link_local(GUEST);
        let group = solicited_node(router);
        assert_eq!(group.to_string(), "ff02::1:ffaa:bbcc");
        assert_eq!(ipv6_multicast_mac(group).to_string(), "33:33:ff:aa:bb:cc");
        let kind = |f: &[u8]| classify(f, false, Direction::FromVm).kind;
        let rs = router_solicit(GUEST, guest_ll);
        assert_eq!(kind(&rs), Some(FrameKind::RouterSolicit));
        let ra = router_advert(
            V6Ends::to_group(tap, router, ALL_NODES),
            RouterAdvert {
                router_lifetime: 1800,
                prefix: Some(("2001:db8::".parse().unwrap(), 64)),
            },
        );
        assert_eq!(kind(&ra), Some(FrameKind::RouterAdvert));
        let ns = neighbor_solicit(V6Ends::to_group(GUEST, guest_ll, group), router);
        assert_eq!(kind(&ns), Some(FrameKind::NeighborSolicit));
        let all = V6Ends::to_group(GUEST, guest_ll, ALL_NODES);
        let announce = neighbor_advert(all, guest_ll, NA_FLAG_OVERRIDE);
        assert_eq!(kind(&announce), Some(FrameKind::UnsolicitedNa));
        let answer = neighbor_advert(all, guest_ll, NA_FLAG_SOLICITED | NA_FLAG_ROUTER);
        assert_eq!(kind(&answer), Some(FrameKind::NeighborAdvert));
        for f in [&rs, &ra, &ns, &announce] {
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::TransportSlice::Icmpv6(icmp)) = p.transport else {
                panic!("not ICMPv6: {f:02x?}");
            };
            let (etherparse::NetSlice::Ipv6(ip), _) = (p.net.unwrap(), ()) else {
                panic!("not IPv6");
            };
            let h = ip.header();
            let want = icmp
                .icmp_type()
                .calc_checksum(h.source(), h.destination(), icmp.payload())
                .unwrap();
            assert_eq!(icmp.checksum(), want, "{:?}", icmp.icmp_type());
        }
        let data = udp6(
            V6Ends {
                src_mac: GUEST,
                dst_mac: tap,
                src: guest_ll,
                dst: router,
            },
            100,
        );
        assert_eq!(data.len(), 100);
        assert!(classify(&data, false, Direction::ToVm).data);
    }
}
