//! Exact frames as VMs, QEMU and hosts send them: the lab plays them, tests play them, and
//! a nudge writes one.

use std::net::Ipv4Addr;

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
}
