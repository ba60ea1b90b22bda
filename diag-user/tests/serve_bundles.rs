//! `tapwatch serve --record-dir` against the real kernel: a bundle per blackout, also on a
//! full disk, read back by `analyze`. Each test has its own namespace.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::{exporter::*, *};
use diag_user::frames;
use diag_user::{
    lab::netns::{Netns, VmTap},
    report::metrics::sample,
};
use serde_json::Value;

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
    let (left, tmp) = bundles_and_temporaries(&bundles);
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
    assert_analyze_summarizes(b);
}

/// The bundle directories under `dir`, and the temporary files (`*.tmp`) left in them.
fn bundles_and_temporaries(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut bundles: Vec<PathBuf> = Vec::new();
    let mut tmp: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|x| x == "tmp") {
                    tmp.push(f);
                }
            }
            bundles.push(path);
        }
    }
    (bundles, tmp)
}

/// `analyze --json` reads the bundle `b` to a summary.
fn assert_analyze_summarizes(b: &Path) {
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
