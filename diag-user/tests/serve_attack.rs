//! `tapwatch serve` against a local user without any privilege: scrapes still answered, in
//! full and in time, while hundreds of connections are held open in every shape that costs
//! the attacker nothing; what the server holds stays bounded.

mod common;

use std::{
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{exporter::*, *};
use diag_user::{
    lab::netns::{Netns, SandboxError},
    report::http::MAX_CONNECTIONS,
};

/// What a local user without any privilege can do to an exporter's connections.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Asks once, reads the answer, then holds the connection open (keep-alive).
    IdleKeepAlive,
    /// Sends part of a request's headers and stalls.
    Partial,
    /// Connects and sends nothing.
    Silent,
}

impl Shape {
    fn request(self) -> &'static [u8] {
        match self {
            Self::IdleKeepAlive => b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            Self::Partial => b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: st",
            Self::Silent => b"",
        }
    }
}

/// A non-blocking connect to the namespace's loopback (a blocking one would wait out SYN
/// retries while the server's backlog is full).
fn connect_nonblocking(port: u16) -> Option<OwnedFd> {
    // SAFETY: socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh, valid fd.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) with a valid sockaddr_in of the size given.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return None;
    }
    Some(owned)
}

/// `n` connections of one shape, each opened again as soon as the server closes it, on a
/// thread in the namespace, until told to stop.
struct Attack {
    stop: Arc<AtomicBool>,
    /// Connections established so far, reconnections included.
    established: Arc<AtomicUsize>,
    /// Said once every connection has been tried.
    launched: mpsc::Receiver<()>,
    thread: Option<JoinHandle<Result<(), SandboxError>>>,
}

impl Attack {
    fn start(ns: &Netns, shape: Shape, n: usize, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let established = Arc::new(AtomicUsize::new(0));
        let (tx, launched) = mpsc::channel();
        let (s, e) = (stop.clone(), established.clone());
        let thread = ns
            .spawn(move || {
                // Per slot: the socket, and whether its request has been sent.
                let mut slots: Vec<Option<(OwnedFd, bool)>> = (0..n).map(|_| None).collect();
                let mut tx = Some(tx);
                while !s.load(Ordering::Relaxed) {
                    for slot in slots.iter_mut().filter(|s| s.is_none()) {
                        *slot = connect_nonblocking(port).map(|fd| (fd, false));
                    }
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                    let mut fds: Vec<libc::pollfd> = slots
                        .iter()
                        .map(|slot| libc::pollfd {
                            fd: slot.as_ref().map_or(-1, |(fd, _)| fd.as_raw_fd()),
                            events: match slot {
                                Some((_, true)) => libc::POLLIN,
                                _ => libc::POLLOUT,
                            },
                            revents: 0,
                        })
                        .collect();
                    // SAFETY: poll(2) over our own pollfd array.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                    for (slot, p) in slots.iter_mut().zip(&fds) {
                        let Some((fd, sent)) = slot.as_mut() else {
                            continue;
                        };
                        if p.revents == 0 {
                            continue;
                        }
                        if !*sent {
                            if p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                                *slot = None;
                                continue;
                            }
                            let req = shape.request();
                            // SAFETY: send(2) of a static buffer on our own socket.
                            unsafe {
                                libc::send(
                                    fd.as_raw_fd(),
                                    req.as_ptr().cast(),
                                    req.len(),
                                    libc::MSG_NOSIGNAL,
                                )
                            };
                            *sent = true;
                            e.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        // The answer to the keep-alive request (drained), or the server
                        // closing: then the slot connects again.
                        let mut buf = [0u8; 4096];
                        // SAFETY: recv(2) into a local buffer of the size given.
                        let got = unsafe {
                            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                        };
                        let again =
                            std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
                        if got == 0 || (got < 0 && !again) {
                            *slot = None;
                        }
                    }
                }
            })
            .unwrap();
        Self {
            stop,
            established,
            launched,
            thread: Some(thread),
        }
    }

    fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One scrape as Prometheus makes it (a new connection, `/metrics`), within `limit` from
/// connect to the last byte; the whole answer, or why not.
fn scrape_within(port: u16, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let left = || {
        limit
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "timed out".to_string())
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, left()?)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read after {} bytes: {e}", raw.len())),
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {head}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .ok_or("no content-length")?;
    if body.len() != length || !body.contains("# TYPE tapwatch_build_info gauge") {
        return Err(format!("{} of {length} bytes", body.len()));
    }
    if took > limit {
        return Err(format!("answered after {took:?}"));
    }
    Ok(took)
}

/// A local user cannot silence the exporter: with hundreds of connections held open in
/// every shape that costs the attacker nothing (idle keep-alive, a request cut short, not
/// a byte), each opened again as soon as it is closed, nearly every scrape is still
/// answered in full within a second, and what the server holds stays bounded.
#[test]
fn a_local_user_cannot_starve_the_scrapes() {
    require_root();
    let ns = Netns::new("tws-starve").unwrap();
    let _tap = stale_tap(&ns, "tapsv4");
    let p = serve(&ns, &[]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", p.pid()))
            .unwrap()
            .count()
    };
    let rss_kb = || -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", p.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let (fds_before, rss_before) = (fds(), rss_kb());
    let attacks: Vec<Attack> = [Shape::IdleKeepAlive, Shape::Partial, Shape::Silent]
        .into_iter()
        .map(|shape| Attack::start(&ns, shape, 150, PORT))
        .collect();
    for a in &attacks {
        a.launched
            .recv_timeout(TIMEOUT)
            .expect("the attack started");
    }
    let n = 40;
    let limit = Duration::from_secs(1);
    let results = ns
        .enter(move || {
            (0..n)
                .map(|_| scrape_within(PORT, limit))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let established: Vec<usize> = attacks.iter().map(Attack::established).collect();
    let mut took: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    took.sort();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let rss_after = rss_kb();
    eprintln!(
        "{} of {n} scrapes answered within {limit:?} (p50 {:?}, max {:?}); attack connections \
         established (keep-alive, partial, silent): {established:?}; serve's RSS \
         {rss_before} kB before, {rss_after} kB under attack; failures: {failed:?}",
        took.len(),
        took.get(took.len() / 2),
        took.last(),
    );
    assert!(
        took.len() * 100 >= n * 95,
        "{} of {n} scrapes answered within {limit:?}: {failed:?}",
        took.len()
    );
    // The attack went on throughout, in every shape.
    assert!(established.iter().all(|&e| e >= 100), "{established:?}");
    // What the server holds is bounded: its descriptors (one per connection).
    let fds = fds();
    assert!(
        fds <= fds_before + MAX_CONNECTIONS + 2,
        "{fds} descriptors, {fds_before} before the attack"
    );
    // And its memory: buffers of at most 16 KB for each of 256 connections.
    assert!(
        rss_after < rss_before + (32 << 10),
        "RSS {rss_before} kB before the attack, {rss_after} kB under it"
    );
    drop(attacks);
    stop(p);
}
