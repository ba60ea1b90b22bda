//! The client that pings a VM every 20 ms from its own namespace, and what it saw.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::model::clock::monotonic_ns;

pub const PING_EVERY: Duration = Duration::from_millis(20);

/// Reply times of one pinger (monotonic ns), shared with the lab.
#[derive(Clone, Default)]
pub struct Pings {
    replies: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
}

impl Pings {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn replies(&self) -> usize {
        self.replies.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// When the last reply came (monotonic ns).
    pub fn last_reply_ns(&self) -> Option<u64> {
        self.replies.lock().ok().and_then(|r| r.last().copied())
    }

    /// The longest time without a reply after `since_ns`: from the last reply before the
    /// loss to the first after it (to `until_ns` if none came back).
    pub fn outage_ms(&self, since_ns: u64, until_ns: u64) -> u64 {
        let r = self.replies.lock().map(|r| r.clone()).unwrap_or_default();
        let mut prev = r
            .iter()
            .copied()
            .filter(|&t| t <= since_ns)
            .max()
            .unwrap_or(since_ns);
        let mut worst = 0;
        for &t in r.iter().filter(|&&t| t > since_ns) {
            worst = worst.max(t - prev);
            prev = t;
        }
        worst = worst.max(until_ns.saturating_sub(prev));
        worst / 1_000_000
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Pings `target` every 20 ms until stopped; must run on a thread inside the client's
/// namespace (the raw socket belongs to the namespace it is opened in).
pub fn ping_loop(target: Ipv4Addr, id: u16, pings: Pings) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(target).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut seq: u16 = 0;
    let mut next = monotonic_ns();
    let mut buf = [0u8; 1500];
    while !pings.stop.load(Ordering::Relaxed) {
        let now = monotonic_ns();
        if now >= next {
            seq = seq.wrapping_add(1);
            let mut pkt = vec![8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"tapwatch-lab-ping");
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: valid buffer and address. A failure (no route during the switch-over)
            // is just a lost ping.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            next += PING_EVERY.as_nanos() as u64;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = (next.saturating_sub(monotonic_ns()) / 1_000_000).clamp(1, 20) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let pkt = &buf[..n as usize];
            let ihl = ((pkt[0] & 0x0f) as usize) * 4;
            let Some(icmp) = pkt.get(ihl..ihl + 8) else {
                continue;
            };
            let from = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            if icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && from == target {
                if let Ok(mut r) = pings.replies.lock() {
                    r.push(monotonic_ns());
                }
            }
        }
    }
    Ok(())
}

/// Pings `target` over IPv6 every 20 ms until stopped, as [`ping_loop`] does over IPv4
/// (the kernel fills in an ICMPv6 checksum itself).
pub fn ping6_loop(target: std::net::Ipv6Addr, id: u16, pings: Pings) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_in6; the fields set are plain values.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_addr.s6_addr = target.octets();
    let mut seq: u16 = 0;
    let mut next = monotonic_ns();
    let mut buf = [0u8; 1500];
    while !pings.stop.load(Ordering::Relaxed) {
        if monotonic_ns() >= next {
            seq = seq.wrapping_add(1);
            let mut pkt = vec![128, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"tapwatch-lab-ping");
            // SAFETY: valid buffer and address; a failure is just a lost ping.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    &addr as *const libc::sockaddr_in6 as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            };
            next += PING_EVERY.as_nanos() as u64;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = (next.saturating_sub(monotonic_ns()) / 1_000_000).clamp(1, 20) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        loop {
            // SAFETY: all-zero is a valid sockaddr_in6 to be filled in.
            let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address of the length given.
            let n = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_in6).cast(),
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            // A raw ICMPv6 socket hands over the message without its IPv6 header.
            let icmp = &buf[..n as usize];
            let echo_reply = icmp.len() >= 8 && icmp[0] == 129 && icmp[4..6] == id.to_be_bytes();
            if echo_reply && from.sin6_addr.s6_addr == target.octets() {
                if let Ok(mut r) = pings.replies.lock() {
                    r.push(monotonic_ns());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_is_the_longest_gap() {
        let p = Pings::default();
        *p.replies.lock().unwrap() = vec![
            10_000_000,
            30_000_000,
            50_000_000,
            1_050_000_000,
            1_070_000_000,
        ];
        assert_eq!(p.outage_ms(0, 1_080_000_000), 1000);
        // Nothing came back after the loss: until the end.
        *p.replies.lock().unwrap() = vec![10_000_000];
        assert_eq!(p.outage_ms(0, 510_000_000), 500);
    }

    #[test]
    fn icmp_checksum() {
        // An echo request with id 1, seq 1 and no payload.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
    }
}
