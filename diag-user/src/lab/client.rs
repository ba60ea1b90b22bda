//! The client that pings a VM every 20 ms from its own namespace, and what it saw.

use std::{
    io,
    net::IpAddr,
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

/// Pings `target` (IPv4 or IPv6) every 20 ms until stopped; must run on a thread inside
/// the client's namespace (the raw socket belongs to the namespace it is opened in).
pub fn ping_loop(target: IpAddr, id: u16, pings: Pings) -> io::Result<()> {
    let echo = Echo::of(target);
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            echo.domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            echo.proto,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid fd.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (addr, addr_len) = sockaddr(target);
    let mut seq: u16 = 0;
    let mut next = monotonic_ns();
    let mut buf = [0u8; 1500];
    while !pings.stop.load(Ordering::Relaxed) {
        if monotonic_ns() >= next {
            seq = seq.wrapping_add(1);
            let pkt = echo.request(id, seq);
            // SAFETY: valid buffer and address of the length given. A failure (no route
            // during the switch-over) is just a lost ping.
            unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&addr as *const libc::sockaddr_storage).cast(),
                    addr_len,
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
        // SAFETY: all-zero is a valid sockaddr_storage to be filled in.
        let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        loop {
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: valid fd, buffer and address of the length given.
            let n = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            };
            if n <= 0 {
                break;
            }
            let reply = echo
                .icmp_of(&buf[..n as usize])
                .is_some_and(|icmp| icmp[0] == echo.reply && icmp[4..6] == id.to_be_bytes());
            if reply && source_of(&from) == Some(target) {
                if let Ok(mut r) = pings.replies.lock() {
                    r.push(monotonic_ns());
                }
            }
        }
    }
    Ok(())
}

/// What ICMP's and ICMPv6's echo differ in.
struct Echo {
    domain: libc::c_int,
    proto: libc::c_int,
    request: u8,
    reply: u8,
    /// A raw IPv4 socket hands over the IP header too; an ICMPv6 one the message alone,
    /// and the kernel fills in an ICMPv6 checksum itself.
    v4: bool,
}

impl Echo {
    fn of(target: IpAddr) -> Self {
        match target {
            IpAddr::V4(_) => Self {
                domain: libc::AF_INET,
                proto: libc::IPPROTO_ICMP,
                request: 8,
                reply: 0,
                v4: true,
            },
            IpAddr::V6(_) => Self {
                domain: libc::AF_INET6,
                proto: libc::IPPROTO_ICMPV6,
                request: 128,
                reply: 129,
                v4: false,
            },
        }
    }

    fn request(&self, id: u16, seq: u16) -> Vec<u8> {
        let mut pkt = vec![self.request, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(b"tapwatch-lab-ping");
        if self.v4 {
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        pkt
    }

    /// The ICMP message's first 8 bytes in what the socket read.
    fn icmp_of<'a>(&self, pkt: &'a [u8]) -> Option<&'a [u8]> {
        let skip = if self.v4 {
            ((pkt.first()? & 0x0f) as usize) * 4
        } else {
            0
        };
        pkt.get(skip..skip + 8)
    }
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the family's fields are set below.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(a).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for a sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The address a reply came from.
fn source_of(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(u32::from_be(sin.sin_addr.s_addr).into()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(sin6.sin6_addr.s6_addr.into()))
        }
        _ => None,
    }
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
    fn echo_requests_and_replies_of_both_families() {
        let v4 = Echo::of(IpAddr::V4([10, 0, 0, 1].into()));
        let req = v4.request(7, 1);
        assert_eq!(&req[..2], &[8, 0]);
        assert_eq!(checksum(&req), 0, "a request's checksum sums to zero");
        let mut ip_reply = vec![0x45; 20];
        ip_reply.extend_from_slice(&[0, 0, 0, 0, 0, 7, 0, 1]);
        assert_eq!(v4.icmp_of(&ip_reply), Some(&[0, 0, 0, 0, 0, 7, 0, 1][..]));
        let v6 = Echo::of(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(&v6.request(7, 1)[..4], &[128, 0, 0, 0]);
        assert_eq!(
            v6.icmp_of(&[129, 0, 0, 0, 0, 7, 0, 1]).map(|i| i[0]),
            Some(129)
        );
        for ip in [
            IpAddr::V4([10, 0, 0, 1].into()),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ] {
            assert_eq!(source_of(&sockaddr(ip).0), Some(ip));
        }
    }

    #[test]
    fn icmp_checksum() {
        // An echo request with id 1, seq 1 and no payload.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), 0xf7fd);
    }
}
