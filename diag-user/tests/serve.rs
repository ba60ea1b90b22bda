//! `tapwatch serve` against the real kernel and a real Prometheus: frames played on taps in
//! the test's own namespace, `/metrics` read back exactly, checked by `promtool`, scraped
//! by Debian's `prometheus` whose alert rule (deploy/tapwatch-alerts.yml) fires during a
//! staged blackout; the systemd unit verified and its capability set shown to suffice; a
//! bundle per blackout, also on a full disk; scrapes answered while a local user holds
//! hundreds of connections open.

mod common;

use std::{
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use diag_testkit::child::Spawned;
use diag_user::{
    lab::{
        frames,
        netns::{Netns, SandboxError, VmTap},
    },
    report::{http::MAX_CONNECTIONS, metrics::sample},
};
use serde_json::Value;

const PORT: u16 = 9464;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// An HTTP/1.0 GET on the namespace's loopback: (status, body).
fn get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    ns.enter(move || -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    })
    .unwrap()
}

/// Waits until `what` holds of a scrape of `/metrics`; returns that scrape.
fn wait_metrics(ns: &Netns, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some((200, body)) = get(ns, PORT, "/metrics") {
            if pred(&body) {
                return body;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}; last scrape:\n{last}");
}

fn serve(ns: &Netns, extra: &[&str]) -> Spawned {
    serve_via(ns, &[], extra)
}

/// `<wrapper…> tapwatch serve` in `ns`, once `/healthz` says it counts.
fn serve_via(ns: &Netns, wrapper: &[&str], extra: &[&str]) -> Spawned {
    let mut argv: Vec<&str> = wrapper.to_vec();
    let listen = format!("127.0.0.1:{PORT}");
    argv.extend([
        env!("CARGO_BIN_EXE_tapwatch"),
        "serve",
        "--listen",
        &listen,
        "--interval",
        "0.1",
    ]);
    argv.extend_from_slice(extra);
    let mut p = Spawned::start(ns.name(), &argv).expect("spawn tapwatch serve");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some((200, _)) = get(ns, PORT, "/healthz") {
            return p;
        }
        if let Ok(Some(status)) = p.wait_timeout(Duration::from_millis(50)) {
            panic!("tapwatch serve exited ({status}): {}", p.stderr());
        }
        assert!(Instant::now() < deadline, "/healthz never said ok");
    }
}

fn stop(mut p: Spawned) -> String {
    p.signal(libc::SIGTERM);
    let status = p
        .wait_timeout(TIMEOUT)
        .unwrap()
        .expect("serve stops on SIGTERM");
    let err = p.stderr();
    assert!(status.success(), "{status}: {err}");
    err
}

fn tap_labels(ifname: &str) -> [(&str, &str); 2] {
    [("ifname", ifname), ("vm", ifname)]
}

/// A routed tap with networking-calico's MAC whose guest still sends to libvirt's.
fn stale_tap(ns: &Netns, name: &str) -> VmTap {
    VmTap::create(ns, name, TAP_CALICO).unwrap()
}

fn stale(tap: &VmTap, n: usize) {
    for _ in 0..n {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 98))
            .unwrap();
    }
}

/// Frames played, `/metrics` read back: every contracted metric exact, the text format
/// accepted by `promtool check metrics`, and a departed tap's series gone after
/// `--forget-after`.
#[test]
fn metrics_count_exactly() {
    require_root();
    let ns = Netns::new("tws-count").unwrap();
    let tap = stale_tap(&ns, "tapsv0");
    let p = serve(&ns, &["--forget-after", "1"]);
    wait_metrics(&ns, "the tap", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(1.0)
    });
    for _ in 0..5 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    for _ in 0..2 {
        tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    }
    stale(&tap, 7);
    let l = tap_labels("tapsv0");
    let m = wait_metrics(&ns, "7 stale frames in a blackout", |m| {
        sample(m, "tapwatch_dst_mismatch_frames_total", &l) == Some(7.0)
            && sample(m, "tapwatch_vm_state", &[l[0], l[1], ("state", "BLACKOUT")]) == Some(1.0)
    });
    assert_eq!(sample(&m, "tapwatch_blackouts_total", &l), Some(1.0));
    // The guest re-ARPed: a frame to the tap's own MAC ends the blackout.
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 98))
        .unwrap();
    let m = wait_metrics(&ns, "RECOVERED", |m| {
        sample(
            m,
            "tapwatch_vm_state",
            &[l[0], l[1], ("state", "RECOVERED")],
        ) == Some(1.0)
    });
    let v = |name: &str| sample(&m, name, &l);
    assert_eq!(v("tapwatch_dst_mismatch_frames_total"), Some(7.0));
    assert_eq!(v("tapwatch_rarp_frames_total"), Some(5.0));
    assert_eq!(v("tapwatch_garp_frames_total"), Some(2.0));
    assert_eq!(v("tapwatch_events_lost_total"), Some(0.0));
    assert_eq!(v("tapwatch_blackouts_total"), Some(1.0));
    assert!(v("tapwatch_vm_blackout_seconds").is_some_and(|s| s < 10.0));
    // The distribution is the host's.
    assert_eq!(
        sample(&m, "tapwatch_blackout_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tapwatch_kernel_drops_total",
            &[l[0], ("reason", "OTHERHOST")]
        ),
        Some(7.0)
    );
    // One state series per tap: the current one.
    for state in ["OK", "BLACKOUT", "QUIET", "GONE"] {
        assert_eq!(
            sample(&m, "tapwatch_vm_state", &[l[0], ("state", state)]),
            None,
            "{state}"
        );
    }
    let per_tap = m
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains("ifname=\"tapsv0\""))
        .count();
    assert!(per_tap <= 12, "{per_tap} series for one tap:\n{m}");
    assert_eq!(sample(&m, "tapwatch_taps", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "tapwatch_build_info", &[("datapath", "drops")]),
        Some(1.0)
    );
    // The format as Prometheus reads it.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    check.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    drop(tap);
    let m = wait_metrics(&ns, "the departed tap forgotten", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(0.0) && !m.contains("ifname=\"tapsv0\"")
    });
    assert!(m.contains("tapwatch_build_info"));
    let err = stop(p);
    assert!(err.contains("tapsv0 (tapsv0) is BLACKOUT"), "{err}");
}

/// The whole way a fleet uses it: Debian's Prometheus scrapes tapwatch on the namespace's
/// loopback with the shipped alert rules; its PromQL answers the played count, and
/// TapwatchVMBlackout fires while the staged blackout lasts.
#[test]
fn prometheus_scrapes_and_the_alert_fires() {
    require_root();
    let ns = Netns::new("tws-prom").unwrap();
    let tap = stale_tap(&ns, "tapsv1");
    let p = serve(&ns, &[]);
    let dir = Scratch::new("prometheus");
    std::fs::copy(
        deploy("tapwatch-alerts.yml"),
        dir.join("tapwatch-alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [tapwatch-alerts.yml]\n\
             scrape_configs:\n  - job_name: tapwatch\n    static_configs:\n      \
             - targets: ['127.0.0.1:{PORT}']\n"
        ),
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    let data = dir.join("data");
    let mut prom = Spawned::start(
        ns.name(),
        &[
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    )
    .expect("prometheus (Debian's prometheus package; scripts/setup.sh installs it)");
    let query = |q: &str| -> Option<Value> {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) = get(&ns, 9090, &format!("/api/v1/query?query={enc}"))?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let mut wait = |what: &str, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !pred() {
            if let Ok(Some(status)) = prom.wait_timeout(Duration::from_millis(0)) {
                panic!("prometheus exited ({status})");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("Prometheus to scrape tapwatch", &|| {
        query("up{job=\"tapwatch\"}")
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(String::from)
            })
            .as_deref()
            == Some("1")
    });

    stale(&tap, 12);
    let count = || {
        query("tapwatch_dst_mismatch_frames_total{ifname=\"tapsv1\"}").and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(String::from)
        })
    };
    wait("PromQL to answer 12", &|| count().as_deref() == Some("12"));
    // The stale frames go on (the guest has not re-ARPed): the page fires after `for`.
    let alert = || -> Option<Value> {
        let (_, body) = get(&ns, 9090, "/api/v1/alerts")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "TapwatchVMBlackout")
            .cloned()
    };
    wait("TapwatchVMBlackout to fire", &|| {
        stale(&tap, 1);
        alert().is_some_and(|a| a["state"] == "firing")
    });
    let a = alert().unwrap();
    assert_eq!(a["labels"]["vm"], "tapsv1");
    assert_eq!(a["labels"]["severity"], "page");
    assert!(a["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("sends to a MAC its tap does not have"));
    prom.signal(libc::SIGTERM);
    let _ = prom.wait_timeout(TIMEOUT);
    stop(p);
}

/// The alert rules as promtool reads them, and their own unit tests.
#[test]
fn the_alert_rules_check_and_pass_their_tests() {
    require_root();
    for args in [
        vec!["check", "rules", "tapwatch-alerts.yml"],
        vec!["test", "rules", "tapwatch-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy(""))
            .output()
            .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The shipped unit: systemd accepts it, and tapwatch counts with nothing but the
/// capabilities it bounds it to, with no new privileges.
#[test]
fn the_unit_is_valid_and_its_capabilities_suffice() {
    require_root();
    let unit = std::fs::read_to_string(deploy("tapwatch.service")).unwrap();
    let dir = Scratch::new("unit");
    // As installed: the binary where the unit says, the man page left out of the check
    // (the package installs it).
    let local: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/bin/tapwatch", env!("CARGO_BIN_EXE_tapwatch")) + "\n")
        .collect();
    let path = dir.join("tapwatch.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a bounding set");
    let bounding: String = std::iter::once("-all".to_string())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    assert!(unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("ProtectSystem=strict"));

    let ns = Netns::new("tws-unit").unwrap();
    let tap = stale_tap(&ns, "tapsv2");
    let p = serve_via(
        &ns,
        &[
            "setpriv",
            "--bounding-set",
            &bounding,
            "--no-new-privs",
            "--",
        ],
        &[],
    );
    stale(&tap, 3);
    let l = tap_labels("tapsv2");
    wait_metrics(&ns, "3 stale frames under the unit's capabilities", |m| {
        sample(m, "tapwatch_dst_mismatch_frames_total", &l) == Some(3.0)
    });
    stop(p);
}

/// `--record-dir`: the blackout gets a bundle of its own that `analyze` reads back.
#[test]
fn a_bundle_per_blackout() {
    require_root();
    let ns = Netns::new("tws-rec").unwrap();
    let tap = stale_tap(&ns, "tapsv3");
    let dir = Scratch::new("serve-bundles");
    let bundles = dir.join("bundles");
    let p = serve(&ns, &["--record-dir", bundles.to_str().unwrap()]);
    wait_metrics(&ns, "the tap", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(1.0)
    });
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    stale(&tap, 4);
    let l = tap_labels("tapsv3");
    wait_metrics(&ns, "the blackout", |m| {
        sample(m, "tapwatch_vm_state", &[l[0], ("state", "BLACKOUT")]) == Some(1.0)
    });
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 98))
        .unwrap();
    wait_metrics(&ns, "the recovery", |m| {
        sample(m, "tapwatch_blackout_seconds_count", &[]) == Some(1.0)
    });
    // Ending the run closes the bundle still in its post-roll.
    let err = stop(p);
    // Beside the bundles: the room kept for their reports.
    let written: Vec<PathBuf> = std::fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(".reserve"))
        .collect();
    assert_eq!(written.len(), 1, "{written:?} {err}");
    let b = &written[0];
    assert!(
        b.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("blackout-"),
        "{b:?}"
    );
    assert!(err.contains("blackout bundle written to"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["analyze", "--json"])
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["type"] == "summary")
        .unwrap();
    let row = &summary["taps"][0];
    assert_eq!(row["ifname"], "tapsv3");
    assert_eq!(row["state"], "RECOVERED");
    assert_eq!(
        row["dst_mismatch_frames"],
        4,
        "{row:#}\n{}",
        std::fs::read_to_string(b.join("events.ndjson")).unwrap()
    );
    assert_eq!(row["rarp_frames"], 1);
}

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

/// `--record-dir` on a disk that is full before the blackout begins: the room set aside
/// when serve started still takes each bundle's host.json (saying it stopped, and why) and
/// summary.md, nothing half-written is left, `analyze` reads the bundle, and the rotation
/// counts it (with `--record-keep 1`, the older of two goes).
#[test]
fn a_bundle_begun_on_a_full_disk_is_closed_and_rotated() {
    require_root();
    let ns = Netns::new("tws-full").unwrap();
    let scratch = Scratch::new("serve-full");
    let disk = SmallDisk::new(scratch.join("disk"), "8m");
    let bundles = disk.0.join("bundles");
    let names = ["tapsv5", "tapsv6"];
    let taps: Vec<VmTap> = names.iter().map(|n| stale_tap(&ns, n)).collect();
    let p = serve(
        &ns,
        &[
            "--record-dir",
            bundles.to_str().unwrap(),
            "--record-keep",
            "1",
        ],
    );
    wait_metrics(&ns, "the taps", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(2.0)
    });
    disk.fill("filler");
    for (tap, name) in taps.iter().zip(names) {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
        stale(tap, 3);
        let l = tap_labels(name);
        wait_metrics(&ns, "the blackout", |m| {
            sample(m, "tapwatch_vm_state", &[l[0], ("state", "BLACKOUT")]) == Some(1.0)
        });
    }
    // Ending the run closes both bundles, on a disk that is still full.
    let err = stop(p);
    assert_eq!(
        err.matches("blackout bundle written to").count(),
        2,
        "{err}"
    );
    let mut left: Vec<PathBuf> = Vec::new();
    let mut tmp: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(&bundles).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|x| x == "tmp") {
                    tmp.push(f);
                }
            }
            left.push(path);
        }
    }
    assert!(tmp.is_empty(), "half-written reports left: {tmp:?}");
    assert_eq!(left.len(), 1, "the rotation keeps one: {left:?}\n{err}");
    let b = &left[0];
    assert!(
        b.to_string_lossy().ends_with("-tapsv6"),
        "the newer one stays: {b:?}"
    );
    let host: Value =
        serde_json::from_slice(&std::fs::read(b.join("host.json")).expect("host.json")).unwrap();
    assert!(
        host["stopped"]
            .as_str()
            .is_some_and(|s| s.contains("No space left on device")),
        "{host:#}"
    );
    let md = std::fs::read_to_string(b.join("summary.md")).unwrap();
    assert!(
        md.contains("stopped early") && md.contains("BLACKOUT"),
        "{md}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["analyze", "--json"])
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"type\":\"summary\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
