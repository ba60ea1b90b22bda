//! Runs the real `tapwatch` binary inside a test's own network namespace and reads its
//! NDJSON output as it comes.
#![allow(dead_code)]

pub mod exporter;

use std::{
    process::ExitStatus,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use diag_testkit::child::Spawned;
use diag_user::{
    lab::netns::{Netns, VmTap},
    model::mac::MacAddr,
};

pub const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
/// libvirt's tap MAC for that guest (managed='yes').
pub const TAP_LIBVIRT: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
/// networking-calico's fixed port MAC, which Nova sets with managed='no'.
pub const TAP_CALICO: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);
pub const VM_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 65, 0, 2);
/// The host's address on a routed VM's tap.
pub const HOST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 65, 0, 1);
use serde_json::Value;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// These tests drive a real kernel: they need root (CAP_BPF, CAP_NET_ADMIN, netns, TUN).
/// A machine that cannot run them fails them loudly instead of skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests need root and a BPF-capable kernel (they create network \
         namespaces and taps and load eBPF programs): run them as root, e.g. `sudo -E cargo test`"
    );
}

/// The tapwatch binary under test.
pub fn tw_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tapwatch")
}

/// tapwatch's clsact filters on `ifname`, from the kernel.
pub fn our_filters(ns: &Netns, ifname: &str) -> usize {
    ["ingress", "egress"]
        .iter()
        .map(|dir| {
            ns.exec("tc", &["filter", "show", "dev", ifname, dir])
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(" handle ") && l.contains("tap_"))
                .count()
        })
        .sum()
}

pub struct Tapwatch {
    proc: Spawned,
    pub seen: Vec<Value>,
}

impl Tapwatch {
    /// Starts `tapwatch <args>` inside `ns`.
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::start_via(ns, &[], args)
    }

    /// Starts `<wrapper…> tapwatch <args>` inside `ns` (e.g. setpriv to drop privileges).
    pub fn start_via(ns: &Netns, wrapper: &[&str], args: &[&str]) -> Self {
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.push(env!("CARGO_BIN_EXE_tapwatch"));
        argv.extend_from_slice(args);
        Self {
            proc: Spawned::start(ns.name(), &argv).expect("spawn tapwatch"),
            seen: Vec::new(),
        }
    }

    fn next(&mut self, timeout: Duration) -> Result<Value, RecvTimeoutError> {
        let line = self.proc.recv_timeout(timeout)?;
        let v = line.value.unwrap_or_else(|text| panic!("not JSON: {text}"));
        self.seen.push(v.clone());
        Ok(v)
    }

    /// Waits for the first record (after those already returned) that `pred` accepts.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; seen: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.proc.wait_timeout(TIMEOUT).ok().flatten();
                    let err = self.proc.stderr();
                    panic!(
                        "tapwatch ended ({status:?}) before {what}; stderr: {err}\nseen: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    pub fn wait_attached(&mut self, ifname: &str) -> Value {
        self.wait_for(&format!("attached {ifname}"), |v| {
            v["type"] == "attached" && v["ifname"] == ifname
        })
    }

    /// Waits until a stats record shows `ifname` with counters `pred` accepts: the kernel
    /// has counted what the test sent.
    pub fn wait_stats(&mut self, ifname: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(&format!("stats of {ifname}"), |v| {
            v["type"] == "stats"
                && v["taps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["ifname"] == ifname && pred(t))
        })
    }

    pub fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Waits for exit; returns the status, every record, and stderr.
    pub fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        let status = self
            .proc
            .wait_timeout(TIMEOUT)
            .expect("wait for tapwatch")
            .expect("tapwatch did not exit");
        while self.next(Duration::from_secs(5)).is_ok() {}
        let err = self.proc.stderr();
        (status, std::mem::take(&mut self.seen), err)
    }

    pub fn stop(self, sig: libc::c_int) -> (ExitStatus, Vec<Value>, String) {
        self.signal(sig);
        self.finish()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// `tapwatch watch --json` on eBPF (the default datapath unless `extra` names one).
pub fn json_watch(ns: &Netns, extra: &[&str]) -> Tapwatch {
    let mut args = vec!["watch", "--json", "--interval", "0.1"];
    if !extra.contains(&"--datapath") {
        args.extend(["--backend", "ebpf"]);
    }
    args.extend_from_slice(extra);
    Tapwatch::start(ns, &args)
}

/// `tapwatch watch --json` on `datapath`.
pub fn json_watch_with(ns: &Netns, datapath: &str, extra: &[&str]) -> Tapwatch {
    let mut args = vec![
        "watch",
        "--json",
        "--interval",
        "0.1",
        "--datapath",
        datapath,
    ];
    args.extend_from_slice(extra);
    Tapwatch::start(ns, &args)
}

/// The core counting tests run against every datapath: `every_datapath!(f, …)` makes the
/// tests `f::drops`, `f::tc` and `f::pcap`, each calling the test file's `f` with that
/// datapath.
#[allow(unused_macros)]
macro_rules! every_datapath {
    ($($name:ident),*) => {$(
        mod $name {
            #[test]
            fn drops() {
                super::$name("drops")
            }
            #[test]
            fn tc() {
                super::$name("tc")
            }
            #[test]
            fn pcap() {
                super::$name("pcap")
            }
        }
    )*};
}
// By path, so that `use common::*` brings it (not every test file uses it).
#[allow(unused_imports)]
pub(crate) use every_datapath;

/// The pid of a process's child that runs `cleanup-helper` (tapwatch's helper that removes
/// clsact filters when a run is killed), if it has one.
pub fn cleanup_helper_of(pid: u32) -> Option<u32> {
    // The children of every thread: the collector that starts the helper runs on one of
    // its own.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let children: String = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c: &u32| {
            std::fs::read(format!("/proc/{c}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|a| a == b"cleanup-helper"))
        })
}

/// Waits until process `pid` (not necessarily our child) has ended: a pidfd becomes
/// readable when it does. Panics after TIMEOUT.
pub fn wait_gone(pid: u32) {
    // SAFETY: pidfd_open(2) with a plain pid; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        // ESRCH: already gone.
        return;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd; close(2) of the fd opened above.
    let n = unsafe { libc::poll(&mut p, 1, TIMEOUT.as_millis() as i32) };
    unsafe { libc::close(fd) };
    assert_eq!(n, 1, "process {pid} did not end within {TIMEOUT:?}");
}

/// The summary row of `ifname`.
pub fn summary_row<'a>(records: &'a [Value], ifname: &str) -> &'a Value {
    let summary = records
        .iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {records:#?}"));
    summary["taps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["ifname"] == ifname)
        .unwrap_or_else(|| panic!("no summary row for {ifname} in {summary:#}"))
}

pub fn of_type<'a>(records: &'a [Value], ty: &str) -> Vec<&'a Value> {
    records.iter().filter(|v| v["type"] == ty).collect()
}

pub fn frames<'a>(records: &'a [Value], ifname: &str, kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|v| v["type"] == "frame" && v["ifname"] == ifname && v["kind"] == kind)
        .collect()
}

pub fn u(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

/// Reading what the host sends to a VM, for tests.
pub trait RecvMatching {
    /// Waits up to `timeout` for a frame to the VM that `pred` accepts, skipping others.
    fn recv_matching(
        &self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, diag_user::lab::netns::SandboxError>;
}

impl RecvMatching for diag_user::lab::netns::VmTap {
    fn recv_matching(
        &self,
        timeout: Duration,
        pred: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, diag_user::lab::netns::SandboxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.recv(left)? {
                Some(f) if pred(&f) => return Ok(Some(f)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

/// A scratch directory under the system temp dir, removed on drop (also when a test fails).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tap whose host side answers the VM: the host's address on it and the VM's MAC known,
/// as a routed VM's tap has them.
pub fn answering_tap(ns: &Netns, name: &str) -> VmTap {
    let tap = VmTap::create(ns, name, TAP_LIBVIRT).unwrap();
    let (host, vm, guest) = (
        format!("{HOST_IP}/24"),
        VM_IP.to_string(),
        GUEST.to_string(),
    );
    ns.ip(&["addr", "add", &host, "dev", name]).unwrap();
    ns.ip(&[
        "neigh",
        "replace",
        &vm,
        "lladdr",
        &guest,
        "dev",
        name,
        "nud",
        "permanent",
    ])
    .unwrap();
    tap
}

/// A small file system of its own (a tmpfs of `size`, e.g. "6m") at `path`, unmounted on
/// drop (also when the test fails).
pub struct SmallDisk(pub std::path::PathBuf);

impl SmallDisk {
    pub fn new(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(ok.success());
        Self(path)
    }

    /// Fills it up: a file of `name` that takes every byte left.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let chunk = vec![0u8; 64 << 10];
        // Big writes, then small ones for what is left: a write takes what fits.
        for size in [chunk.len(), 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
        let _ = f.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
