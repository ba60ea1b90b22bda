//! `tapwatch serve` in a test's namespace, and `/metrics` read back: for serve.rs,
//! serve_bundles.rs and serve_attack.rs.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use diag_testkit::child::Spawned;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};

use super::{GUEST, HOST_IP, TAP_CALICO, TAP_LIBVIRT, TIMEOUT, VM_IP};

pub const PORT: u16 = 9464;

pub fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// An HTTP/1.0 GET on the namespace's loopback: (status, body).
pub fn get(ns: &Netns, port: u16, path: &str) -> Option<(u16, String)> {
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
pub fn wait_metrics(ns: &Netns, what: &str, pred: impl Fn(&str) -> bool) -> String {
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

pub fn serve(ns: &Netns, extra: &[&str]) -> Spawned {
    serve_via(ns, &[], extra)
}

/// `<wrapper…> tapwatch serve` in `ns`, once `/healthz` says it counts.
pub fn serve_via(ns: &Netns, wrapper: &[&str], extra: &[&str]) -> Spawned {
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

pub fn stop(mut p: Spawned) -> String {
    p.signal(libc::SIGTERM);
    let status = p
        .wait_timeout(TIMEOUT)
        .unwrap()
        .expect("serve stops on SIGTERM");
    let err = p.stderr();
    assert!(status.success(), "{status}: {err}");
    err
}

pub fn tap_labels(ifname: &str) -> [(&str, &str); 2] {
    [("ifname", ifname), ("vm", ifname)]
}

/// A routed tap with networking-calico's MAC whose guest still sends to libvirt's.
pub fn stale_tap(ns: &Netns, name: &str) -> VmTap {
    VmTap::create(ns, name, TAP_CALICO).unwrap()
}

pub fn stale(tap: &VmTap, n: usize) {
    for _ in 0..n {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 98))
            .unwrap();
    }
}
