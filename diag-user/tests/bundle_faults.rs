//! Bundles (`--record`, `--pack`) against the real kernel when something around them goes
//! wrong: a full disk, directories another user could turn against root, files swapped
//! during the run. Each test has its own namespace.

mod common;

use std::{path::Path, process::Command};

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

/// A full disk stops the bundle, not the run: the reports are still written, the exit
/// status says the bundle is incomplete, and analyze reads it up to the cut.
#[test]
fn a_full_disk_leaves_an_analyzable_bundle() {
    require_root();
    let ns = Netns::new("tw-full").unwrap();
    let scratch = Scratch::new("full");
    let disk = SmallDisk::new(scratch.join("disk"), "6m");
    let dir = disk.0.join("b");
    let tap = VmTap::create(&ns, "tapfull", TAP_LIBVIRT).unwrap();
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.1",
            "--record",
            dir.to_str().unwrap(),
        ],
    );
    tw.wait_attached("tapfull");
    ns.ip(&["link", "set", "tapfull", "address", &TAP_CALICO.to_string()])
        .unwrap();
    tw.wait_for("mac_change", |v| v["type"] == "mac_change");
    tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
        .unwrap();
    // Announces are never sampled away: each one is a record and a pcapng block.
    let n = 20_000;
    for _ in 0..n {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    tw.wait_stats("tapfull", |t| u(t, "rarp_frames") == n);
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
        .unwrap();
    tw.wait_stats("tapfull", |t| u(t, "from_vm_frames") == n + 2);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(summary_row(&recs, "tapfull")["state"], "RECOVERED");
    let host: Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.json")).unwrap()).unwrap();
    assert!(
        host["stopped"].as_str().unwrap().contains("No space left"),
        "{host:#}"
    );
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("stopped early") && md.contains("RECOVERED"),
        "{md}"
    );
    // analyze: every complete line and block, and the verdicts.
    let out = Command::new(tw_bin())
        .args(["analyze", "--json"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "summary")
        .expect("a summary");
    assert_eq!(summary["taps"][0]["ifname"], "tapfull");
    assert_eq!(
        summary["taps"][0]["state"], "BLACKOUT",
        "the cut came mid-blackout"
    );
    drop(tap);
}

/// `--record` refuses what another user could turn against root.
#[test]
fn bundle_directories_cannot_be_turned_against_root() {
    require_root();
    let ns = Netns::new("tw-hostile").unwrap();
    let scratch = Scratch::new("hostile");
    let run = |dir: &Path| {
        Command::new("ip")
            .args(["netns", "exec", ns.name(), tw_bin()])
            .args(["watch", "--json", "--duration", "0.3", "--record"])
            .arg(dir)
            .output()
            .unwrap()
    };
    // Owned by another user.
    let theirs = scratch.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = run(&theirs);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
    // A symlink under any spelling: nothing followed, nothing chmodded.
    let target = scratch.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let link = scratch.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for spelling in [
        format!("{}/", link.display()),
        format!("{}/.", link.display()),
    ] {
        let out = run(Path::new(&spelling));
        assert!(!out.status.success(), "{spelling}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("symbolic link"), "{spelling}: {err}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// `--pack` packs what tapwatch wrote, from its own descriptors: a file swapped for a
/// symlink to a secret during the run does not get into the archive.
#[test]
fn pack_packs_only_what_it_wrote() {
    require_root();
    let ns = Netns::new("tw-pack").unwrap();
    let scratch = Scratch::new("pack");
    let secret = scratch.join("secret");
    std::fs::write(&secret, "SECRET-OF-ROOT").unwrap();
    let dir = scratch.join("b");
    let _tap = VmTap::create(&ns, "tappack", TAP_LIBVIRT).unwrap();
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--record",
            dir.to_str().unwrap(),
            "--pack",
        ],
    );
    tw.wait_attached("tappack");
    std::fs::remove_file(dir.join("events.ndjson")).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("events.ndjson")).unwrap();
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    let list = Command::new("tar")
        .arg("xzOf")
        .arg(scratch.join("b.tar.gz"))
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&list.stdout);
    assert!(!all.contains("SECRET-OF-ROOT"));
    let events = Command::new("tar")
        .arg("xzOf")
        .arg(scratch.join("b.tar.gz"))
        .arg("b/events.ndjson")
        .output()
        .unwrap();
    let packed: Vec<Value> = String::from_utf8(events.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(packed, recs, "the stream it wrote");
}
