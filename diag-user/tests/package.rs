//! The .deb as a user meets it: installed with apt into a clean Debian 12 root (debootstrap
//! minbase: no Rust, no LLVM, no kernel headers), where `tapwatch --version`, `man tapwatch`
//! and `tapwatch lab --scenario stale-mac --json` must work with the host's kernel (/proc,
//! /sys, bpffs and /dev/net/tun from the host). Needs root, the network (Debian's mirror)
//! and the packages of `cargo xtask dist` (`cargo xtask check` makes them first).
//!
//! The root is made once with debootstrap and cached as a tarball in
//! /var/cache/tapwatch-tests (about 40 s the first time, 7 s to unpack after).

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::require_root;
use serde_json::Value;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const CACHE: &str = "/var/cache/tapwatch-tests";

fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The .deb that `cargo xtask dist` made.
fn the_deb() -> PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dist)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => deb.clone(),
        _ => panic!(
            "expected one .deb in {} (found {debs:?}): run `cargo xtask dist` first (`cargo \
             xtask check` does)",
            dist.display()
        ),
    }
}

/// A tarball of a freshly debootstrapped minbase root, made once.
fn cached_root() -> PathBuf {
    let tarball = Path::new(CACHE).join(format!("{SUITE}-minbase.tar.zst"));
    if tarball.exists() {
        return tarball;
    }
    std::fs::create_dir_all(CACHE).unwrap();
    let build = Path::new(CACHE).join(format!("build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&build);
    sh(Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&build)
        .arg(MIRROR));
    sh(Command::new("chroot")
        .arg(&build)
        .args(["apt-get", "clean"]));
    let part = tarball.with_extension("part");
    sh(Command::new("tar")
        .args(["--numeric-owner", "-I", "zstd -T0 -3", "-C"])
        .arg(&build)
        .arg("-cf")
        .arg(&part)
        .arg("."));
    std::fs::rename(&part, &tarball).unwrap();
    let _ = std::fs::remove_dir_all(&build);
    tarball
}

/// A Debian root with the host's kernel interfaces mounted; everything is unmounted and
/// removed on drop, also when the test fails.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new(tarball: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("tw-pkgroot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Root { dir };
        sh(Command::new("tar")
            .args(["--numeric-owner", "-I", "zstd", "-C"])
            .arg(&root.dir)
            .arg("-xf")
            .arg(tarball));
        let r = root.dir.to_string_lossy().into_owned();
        // `ip netns exec` (the lab) remounts / inside the root: it must be a mount point.
        sh(Command::new("mount").args(["--bind", &r, &r]));
        sh(Command::new("mount").args(["--make-private", &r]));
        sh(Command::new("mount").args(["-t", "proc", "proc", &format!("{r}/proc")]));
        sh(Command::new("mount").args(["-t", "sysfs", "sysfs", &format!("{r}/sys")]));
        sh(Command::new("mount").args(["-t", "bpf", "bpf", &format!("{r}/sys/fs/bpf")]));
        // /dev/net/tun and /dev/null; a slave, so nothing unmounted here reaches the host.
        sh(Command::new("mount").args(["--rbind", "/dev", &format!("{r}/dev")]));
        sh(Command::new("mount").args(["--make-rslave", &format!("{r}/dev")]));
        sh(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            "mode=755",
            "tmpfs",
            &format!("{r}/run"),
        ]));
        std::fs::copy("/etc/resolv.conf", root.dir.join("etc/resolv.conf")).unwrap();
        root
    }

    fn chroot(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(&self.dir)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn run(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&sh(&mut self.chroot(args)).stdout).into_owned()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Processes left inside the root, then its network namespaces, then every mount
        // under it, deepest first.
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            if std::fs::read_link(p.path().join("root")).is_ok_and(|r| r == self.dir) {
                if let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() {
                    // SAFETY: kill(2) with a pid read from /proc.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if let Ok(out) = self.chroot(&["ip", "netns", "list"]).output() {
            for ns in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(name) = ns.split_whitespace().next() {
                    let _ = self.chroot(&["ip", "netns", "del", name]).status();
                }
            }
        }
        let prefix = format!("{}/", self.dir.display());
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| *m == self.dir.to_string_lossy() || m.starts_with(&prefix))
            .collect();
        for m in mounts.iter().rev() {
            if !Command::new("umount")
                .arg(m)
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        // Only once nothing is mounted under it, and never across file systems.
        let _ = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn the_deb_installs_and_runs_on_a_clean_debian() {
    require_root();
    let deb = the_deb();
    let root = Root::new(&cached_root());
    // Clean: nothing to build anything with.
    let tools = root
        .chroot(&[
            "sh",
            "-c",
            "command -v rustc cargo clang gcc llvm-config bpf-linker",
        ])
        .output()
        .unwrap();
    assert!(
        tools.stdout.is_empty(),
        "a compiler in the clean root: {}",
        String::from_utf8_lossy(&tools.stdout)
    );
    assert!(
        !root.dir.join("usr/include/linux").exists(),
        "kernel headers in the root"
    );

    std::fs::copy(&deb, root.dir.join("tmp/tapwatch.deb")).unwrap();
    root.run(&["apt-get", "update", "-qq"]);
    root.run(&["apt-get", "install", "-y", "-qq", "/tmp/tapwatch.deb"]);
    let status = root.run(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "tapwatch"]);
    assert!(status.starts_with("install ok installed"), "{status}");

    let version = root.run(&["tapwatch", "--version"]);
    assert!(
        version.starts_with(&format!("tapwatch {}\n", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    for want in [
        "commit:",
        "eBPF object: sha256 ",
        "drops  yes",
        "pcap   yes: libpcap",
    ] {
        assert!(version.contains(want), "no {want:?} in:\n{version}");
    }

    let man = root.run(&["man", "-P", "cat", "tapwatch"]);
    assert!(man.contains("tapwatch") && man.contains("serve"), "{man}");
    let man = root.run(&["man", "-P", "cat", "tapwatch-serve"]);
    assert!(man.contains("--listen"), "{man}");
    assert!(root
        .dir
        .join("usr/lib/systemd/system/tapwatch.service")
        .exists());

    let out = root.run(&[
        "tapwatch",
        "lab",
        "--scenario",
        "stale-mac",
        "--json",
        "--reachable-time",
        "3",
        "--before",
        "1",
    ]);
    let recs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = recs
        .iter()
        .find(|r| r["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in:\n{out}"));
    let row = &summary["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert!(row["blackout_ms"].as_u64().unwrap() > 0, "{row:#}");
    let attached = recs
        .iter()
        .find(|r| r["type"] == "attached")
        .expect("an attached record");
    assert_eq!(attached["backend"], "ebpf", "{attached}");
}

/// The .rpm (no RHEL root here to install it into): what rpm itself reads from it.
#[test]
fn the_rpm_names_rhels_packages_and_carries_the_files() {
    require_root();
    let dist = the_deb().parent().unwrap().to_path_buf();
    let rpm = std::fs::read_dir(&dist)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "rpm"))
        .expect("an .rpm from cargo xtask dist");
    let query = |q: &str| {
        String::from_utf8_lossy(&sh(Command::new("rpm").args(["-qp", q]).arg(&rpm)).stdout)
            .into_owned()
    };
    let requires = query("--requires");
    for want in ["glibc >= 2.34", "libpcap", "iproute", "procps-ng"] {
        assert!(
            requires.lines().any(|l| l.trim() == want),
            "{want}: {requires}"
        );
    }
    // Nothing named after the build host's sonames, which RHEL does not provide.
    assert!(!requires.contains(".so"), "{requires}");
    let files = query("--list");
    for want in [
        "/usr/bin/tapwatch",
        "/usr/share/man/man1/tapwatch.1.gz",
        "/usr/share/bash-completion/completions/tapwatch",
        "/usr/lib/systemd/system/tapwatch.service",
        "/usr/share/licenses/tapwatch/LICENSE-MIT",
    ] {
        assert!(files.lines().any(|l| l == want), "{want}: {files}");
    }
}
