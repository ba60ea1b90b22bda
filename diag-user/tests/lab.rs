//! `tapwatch lab` end to end, one test per scenario: tapwatch's findings must agree with
//! the lab's ground truth.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use common::require_root;
use serde_json::Value;

fn lab(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args([
            "lab",
            "--json",
            "--reachable-time",
            "3",
            "--before",
            "1",
            "--interval",
            "0.25",
        ])
        .args(args)
        .output()
        .expect("run tapwatch lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tapwatch lab {args:?} failed: {stderr}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn truths(recs: &[Value]) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["type"] == "lab" && r["event"] == "truth")
        .collect()
}

fn summary_rows(recs: &[Value]) -> &Vec<Value> {
    recs.iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary")["taps"]
        .as_array()
        .unwrap()
}

fn blackouts(recs: &[Value]) -> usize {
    recs.iter()
        .filter(|r| r["type"] == "verdict" && r["state"] == "BLACKOUT")
        .count()
}

fn no_lab_namespaces_of(pid: u32) {
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.contains(&format!("twlab-{pid}-")),
        "left behind: {list}"
    );
}

#[test]
fn stale_mac_blackout_agrees_with_the_truth() {
    require_root();
    let recs = lab(&["--scenario", "stale-mac"]);
    // The truth comes last.
    assert_eq!(recs.last().unwrap()["event"], "truth");
    let truth = truths(&recs)[0];
    assert_eq!(
        (&truth["vm"], &truth["scenario"]),
        (&"lab-vm-1".into(), &"stale-mac".into())
    );
    let window = truth["stale_window_ms"].as_u64().unwrap();
    let outage = truth["client_outage_ms"].as_u64().unwrap();
    assert!(
        window > 0 && outage >= window,
        "window {window} ms, outage {outage} ms"
    );
    let row = &summary_rows(&recs)[0];
    assert_eq!(row["vm"], "lab-vm-1");
    assert_eq!(row["state"], "RECOVERED");
    let measured = row["blackout_ms"].as_u64().unwrap();
    assert!(
        measured.abs_diff(window) <= 100,
        "tapwatch {measured} ms vs truth {window} ms"
    );
    assert_eq!(row["rarp_frames"], 5);
    // virtio's guest announce: a GARP after each RARP.
    assert_eq!(row["garp_frames"], 5);
    let d = row["diagnosis"].as_str().unwrap();
    assert!(d.contains("managed='no'"), "{d}");
    assert!(d.contains("(5 in all). GARP seen at"), "{d}");
    assert_eq!(blackouts(&recs), 1);
    // Without an SDN delay the network delivers to the VM as soon as it resumes.
    assert_gaps_agree(row, truth);
    assert_foreseen(&recs, truth, true);
}

/// tapwatch said AT RISK before the VM resumed exactly when a blackout was to come, and
/// the lab's truth says it was right.
fn assert_foreseen(recs: &[Value], truth: &Value, at_risk: bool) {
    assert_eq!(truth["foreseen"], at_risk, "{truth}");
    assert_eq!(truth["forecast_right"], true, "{truth}");
    let forecast = recs
        .iter()
        .position(|v| v["type"] == "forecast" && v["at_risk"] == true);
    let resumed = recs
        .iter()
        .position(|v| v["type"] == "lab" && v["event"] == "resume")
        .expect("the resume");
    match forecast {
        Some(f) => {
            assert!(at_risk, "a forecast for a clean migration: {}", recs[f]);
            assert!(f < resumed, "the forecast came after the resume");
        }
        None => assert!(!at_risk, "no forecast before the resume"),
    }
}

/// The verdict's two gaps against the lab's ground truth: both are kernel timestamps of the
/// same frames the lab timed with its own clock when it sent or received them.
fn assert_gaps_agree(row: &Value, truth: &Value) {
    for gap in ["inbound_gap_ms", "outbound_gap_ms"] {
        let (measured, real) = (row[gap].as_u64(), truth[gap].as_u64());
        let (Some(measured), Some(real)) = (measured, real) else {
            panic!("{gap}: tapwatch {} vs truth {}", row[gap], truth[gap]);
        };
        assert!(
            measured.abs_diff(real) <= 10,
            "{gap}: tapwatch {measured} ms vs truth {real} ms"
        );
    }
}

/// The incident's two parts: the SDN's switch-over (`--sdn-delay`) and the guest's stale
/// cache, each measured on its own; then the two hypervisors' bundles merged into one
/// migration.
#[test]
fn the_outage_in_its_parts_on_one_host_and_across_two() {
    require_root();
    let dir = common::Scratch::new("lab-record");
    let record = dir.join("mig");
    let recs = lab(&[
        "--scenario",
        "stale-mac",
        "--sdn-delay",
        "2",
        "--record",
        record.to_str().unwrap(),
    ]);
    let truth = truths(&recs)[0];
    let row = &summary_rows(&recs)[0];
    assert_eq!(row["state"], "RECOVERED");
    assert_gaps_agree(row, truth);
    let inbound = row["inbound_gap_ms"].as_u64().unwrap();
    assert!((2000..2500).contains(&inbound), "inbound {inbound} ms");
    let d = row["diagnosis"].as_str().unwrap();
    assert!(
        d.contains("the network took 2.0 s to deliver to the VM again"),
        "{d}"
    );
    assert!(
        recs.iter()
            .any(|r| r["type"] == "lab" && r["event"] == "route"),
        "the route record"
    );

    let src = record.join("src");
    let dst = record.join("dst");
    let merged = analyze_json(&src, &dst);
    let downtime = assert_the_merged_migration(&merged[0], row, truth);
    // Then the destination's own verdicts and summary, as `analyze DST` gives them.
    assert!(merged[1..].iter().any(|r| r["type"] == "summary"));

    let text = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .arg("analyze")
        .args([&src, &dst])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("downtime                   {downtime} ms")),
        "{text}"
    );
    assert!(text.contains("≠ tap MAC "), "{text}");
}

/// `tapwatch analyze --json SRC DST`: the merged migration first, then the destination's
/// own records.
fn analyze_json(src: &Path, dst: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["analyze", "--json"])
        .args([src, dst])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The migration `analyze SRC DST` made of the two hosts' bundles, against the lab's truth
/// and the destination's summary `row`; returns its downtime.
fn assert_the_merged_migration(m: &Value, row: &Value, truth: &Value) -> u64 {
    assert_eq!(
        (&m["type"], &m["vm"]),
        (&"migration".into(), &"lab-vm-1".into())
    );
    // The source's libvirt status file said when the VM paused for the migration.
    assert_eq!(m["pause_from"], "libvirt");
    let (downtime, real) = (
        m["downtime_ms"].as_u64().unwrap(),
        truth["downtime_ms"].as_u64().unwrap(),
    );
    assert!(
        downtime.abs_diff(real) <= 10,
        "downtime: merge {downtime} ms vs truth {real} ms"
    );
    for gap in ["inbound_gap_ms", "outbound_gap_ms", "blackout_ms"] {
        assert_eq!(m[gap], row[gap], "{gap}");
    }
    let diff = m["host_diff"].as_array().unwrap();
    let mac = diff
        .iter()
        .find(|f| f["fact"] == "tap MAC")
        .unwrap_or_else(|| panic!("no tap MAC in {diff:?}"));
    assert_eq!(
        (&mac["src"], &mac["dst"]),
        (&"fe:16:3e:aa:bb:cc".into(), &"00:61:fe:ed:ca:fe".into())
    );
    // Same machine: the kernels agree, so they are not a difference.
    assert!(diff.iter().all(|f| f["fact"] != "kernel"), "{diff:?}");
    downtime
}

#[test]
fn clean_migration_has_only_the_switchover_gap() {
    require_root();
    let recs = lab(&["--scenario", "clean"]);
    let truth = truths(&recs)[0];
    assert_eq!(truth["stale_window_ms"], 0);
    assert!(
        truth["client_outage_ms"].as_u64().unwrap() < 1000,
        "{truth}"
    );
    assert_eq!(blackouts(&recs), 0);
    let row = &summary_rows(&recs)[0];
    assert_eq!(
        (&row["state"], &row["dst_mismatch_frames"]),
        (&"OK".into(), &0.into())
    );
    assert_foreseen(&recs, truth, false);
}

#[test]
fn bridged_taps_raise_no_false_alarm() {
    require_root();
    let recs = lab(&["--scenario", "bridged"]);
    assert_eq!(blackouts(&recs), 0);
    let row = &summary_rows(&recs)[0];
    assert_eq!(
        (&row["mode"], &row["state"]),
        (&"bridged".into(), &"OK".into())
    );
    // The guest talks to the client's MAC: foreign to the tap, normal on a bridge.
    assert!(row["dst_mismatch_frames"].as_u64().unwrap() > 0);
    assert!(row["diagnosis"]
        .as_str()
        .unwrap()
        .contains("normal on a bridged tap"));
    assert!(truths(&recs)[0]["client_outage_ms"].as_u64().unwrap() < 1000);
}

/// KubeVirt's bridge binding: each VM's `tap0` in its own virt-launcher pod, the pod
/// network's gateway a different MAC on each node. tapwatch watches the destination node
/// as it is started there with no option (every namespace), finds both VMs' pods' taps,
/// names each VMI, and measures each guest's stale gateway as the truth has it.
#[test]
fn kubevirt_pods_stale_gateway_agrees_with_the_truth() {
    require_root();
    let recs = lab(&["--scenario", "kubevirt", "--vms", "2"]);
    let rows = summary_rows(&recs);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (i, truth) in truths(&recs).into_iter().enumerate() {
        let vm = format!("lab-vm-{}", i + 1);
        assert_eq!(
            (&truth["vm"], &truth["scenario"]),
            (&vm.as_str().into(), &"kubevirt".into())
        );
        let row = rows
            .iter()
            .find(|r| r["vm"] == format!("default/{vm}"))
            .unwrap_or_else(|| panic!("no row names the VMI default/{vm}: {rows:#?}"));
        assert_eq!(row["ifname"], "tap0");
        assert!(
            row["netns"]
                .as_str()
                .unwrap()
                .ends_with(&format!("dstpod{i}")),
            "{row:#}"
        );
        assert_eq!(
            (&row["mode"], &row["state"]),
            (&"bridged".into(), &"RECOVERED".into())
        );
        let window = truth["stale_window_ms"].as_u64().unwrap();
        let measured = row["blackout_ms"].as_u64().unwrap();
        assert!(window > 1000, "the guest kept the old gateway: {truth:#}");
        // The VM's frames are sampled (at most 100 ms apart).
        assert!(
            measured.abs_diff(window) <= 150,
            "tapwatch {measured} ms vs truth {window} ms"
        );
        let d = row["diagnosis"].as_str().unwrap();
        assert!(
            d.contains("0a:58:a9:fe:0a:0"),
            "the old node's gateway: {d}"
        );
    }
    assert_eq!(blackouts(&recs), 2);
    let names: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "identity")
        .map(|r| &r["libvirt"]["kubevirt"]["name"])
        .collect();
    assert!(names.contains(&&"lab-vm-2".into()), "{names:?}");
}

#[test]
fn missing_announce_is_flagged() {
    require_root();
    let recs = lab(&["--scenario", "no-announce"]);
    let row = &summary_rows(&recs)[0];
    assert_eq!(row["rarp_frames"], 0);
    let d = row["diagnosis"].as_str().unwrap();
    assert!(
        d.contains("No RARP since the tap appeared, yet the VM is sending"),
        "{d}"
    );
    assert_eq!(blackouts(&recs), 0);
}

#[test]
fn several_vms_at_once() {
    require_root();
    let recs = lab(&["--scenario", "stale-mac", "--vms", "3"]);
    let truths = truths(&recs);
    assert_eq!(truths.len(), 3);
    for truth in truths {
        let vm = truth["vm"].as_str().unwrap();
        let row = summary_rows(&recs)
            .iter()
            .find(|r| r["vm"] == vm)
            .unwrap_or_else(|| panic!("no row for {vm}"));
        let (window, measured) = (
            truth["stale_window_ms"].as_u64().unwrap(),
            row["blackout_ms"].as_u64().unwrap(),
        );
        assert!(
            window > 0 && measured.abs_diff(window) <= 100,
            "{vm}: tapwatch {measured} vs truth {window}"
        );
    }
}

/// Ctrl-C tears everything down; after a kill -9 the next run cleans up.
#[test]
fn interrupted_labs_leave_nothing_behind() {
    require_root();
    let start = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
            .args(["lab", "--json", "--reachable-time", "30", "--before", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Readiness: the lab says so once its VM answers pings.
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("\"event\":\"ready\""));
        assert!(ready, "the lab never got ready");
        (child, lines)
    };
    let (child, lines) = start();
    let pid = child.id();
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success(), "{status:?}");
    assert!(rest.iter().any(|l| l.contains("\"type\":\"summary\"")));
    no_lab_namespaces_of(pid);

    let (mut child, _lines) = start();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        list.contains(&format!("twlab-{pid}-")),
        "a killed lab leaves its namespaces: {list}"
    );
    lab(&["--scenario", "clean", "--duration", "1"]);
    no_lab_namespaces_of(pid);
}

/// `--remediate` in the lab: tapwatch nudges the VM as its blackout begins and the real
/// guest's stale window ends within milliseconds; the truth says so, and how long it would
/// have lasted by the guest's own timers.
#[test]
fn remediate_ends_the_stale_window_at_the_nudge() {
    require_root();
    let recs = remediated(&[]);
    let row = &summary_rows(&recs)[0];
    assert!(row["diagnosis"]
        .as_str()
        .unwrap()
        .contains("tapwatch's nudge"));
}

/// The same for an IPv6-only guest: the nudge claims its router (the link-local address
/// of the tap's old MAC) at the tap's MAC, and advertises the tap's own link-local
/// address as a router; no ARP goes to a guest without IPv4.
#[test]
fn remediate_ends_an_ipv6_guest_s_stale_window_at_the_nudge() {
    require_root();
    let recs = remediated(&["--ip", "6"]);
    let (sent, frames) = sent_nudge(&recs);
    assert_eq!(frames, ["neighbor_advert", "router_advert"], "{sent:#}");
    assert_eq!(sent["gateway_ip"], "fe80::fc16:3eff:feaa:bbcc");
    assert_eq!(sent["gateway_from"], "derived_from_old_mac");
    assert_eq!(
        sent["more_frames"][0]["gateway_ip"],
        "fe80::261:feff:feed:cafe"
    );
}

/// A dual-stack guest: one nudge writes its ARP request and its IPv6 frames, and both its
/// caches move to the tap's MAC within milliseconds. (The guest's kernel takes the frames
/// one after the other: a frame of one family can go to the old MAC just after the
/// other's went to the new one, a second window of a millisecond, so the windows are not
/// counted.)
#[test]
fn remediate_ends_a_dual_stack_guest_s_stale_window_at_one_nudge() {
    require_root();
    let recs = remediated(&["--ip", "dual"]);
    let (sent, frames) = sent_nudge(&recs);
    assert_eq!(
        frames,
        ["arp", "neighbor_advert", "router_advert"],
        "{sent:#}"
    );
}

/// The nudge sent, and the frames it wrote in order.
fn sent_nudge(recs: &[Value]) -> (&Value, Vec<&str>) {
    let sent = recs
        .iter()
        .find(|v| v["type"] == "nudge" && v["result"] == "sent")
        .unwrap();
    let more = sent["more_frames"].as_array().into_iter().flatten();
    let frames = std::iter::once(&sent["frame"])
        .chain(more.map(|f| &f["frame"]))
        .filter_map(Value::as_str)
        .collect();
    (sent, frames)
}

/// A `--remediate` run of the stale-mac scenario (`extra`: more flags), checked as every
/// family's is: nudged once, recovered within milliseconds, seconds of stale window had it
/// not been, and tapwatch's blackout the truth's. Its records.
fn remediated(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--scenario", "stale-mac", "--remediate"];
    args.extend_from_slice(extra);
    let recs = lab(&args);
    let truth = truths(&recs)[0];
    assert_eq!(truth["nudged"], true, "{truth}");
    let window = truth["stale_window_ms"].as_u64().unwrap();
    let without = truth["unnudged_window_ms"].as_u64().unwrap();
    assert!(window < 100, "stale for {window} ms despite the nudge");
    // The lab's reachable time is 3 s (IPv4: 1.5 to 4.5 s, then 5 s of delay and 3
    // probes; IPv6: a router learnt unconfirmed from an advertisement, 5 s of delay and
    // 3 probes from its first use).
    assert!(without > 4_000, "{without} ms without the nudge");
    let nudges: Vec<&Value> = recs.iter().filter(|v| v["type"] == "nudge").collect();
    assert_eq!(nudges.len(), 2, "{nudges:#?}");
    assert_eq!(nudges[0]["result"], "sent");
    assert_eq!(nudges[1]["result"], "recovered");
    let row = &summary_rows(&recs)[0];
    let measured = row["blackout_ms"].as_u64().unwrap();
    assert!(
        measured.abs_diff(window) <= 100,
        "tapwatch {measured} ms vs truth {window} ms"
    );
    recs
}

/// An IPv6-only guest (`--ip 6`) and a dual-stack one (`--ip dual`): the guest's router is
/// its tap's link-local address, learnt from the source host's Router Advertisement; the
/// destination tap's new MAC gives the tap another address, and the guest's kernel gives
/// the old router up by its own neighbour unreachability detection. tapwatch's blackout
/// equals the lab's truth, in neighbour discovery's words.
#[test]
fn an_ipv6_guest_s_blackout_agrees_with_the_truth() {
    require_root();
    ipv6_blackout_agrees(&[("6", 0)]);
}

/// A dual-stack guest's two caches go stale apart: once one family sends to the tap's MAC
/// again and the other still to the old one, the kernel's one window per tap opens and
/// closes with every frame; the verdict follows each family and stays BLACKOUT until both
/// reach the tap's MAC, as the truth does (one blackout, no flapping).
#[test]
fn a_dual_stack_guest_s_blackout_agrees_with_the_truth() {
    require_root();
    ipv6_blackout_agrees(&[("dual", 5)]);
}

fn ipv6_blackout_agrees(runs: &[(&str, u64)]) {
    for &(ip, garps) in runs {
        let recs = lab(&["--scenario", "stale-mac", "--ip", ip]);
        let truth = truths(&recs)[0];
        let window = truth["stale_window_ms"].as_u64().unwrap();
        assert!(window > 0, "--ip {ip}: {truth}");
        let row = &summary_rows(&recs)[0];
        assert_eq!(row["state"], "RECOVERED", "--ip {ip}: {row:#}");
        let measured = row["blackout_ms"].as_u64().unwrap();
        assert!(
            measured.abs_diff(window) <= 100,
            "--ip {ip}: tapwatch {measured} ms vs truth {window} ms"
        );
        let (out, real) = (
            row["outbound_gap_ms"].as_u64().unwrap(),
            truth["outbound_gap_ms"].as_u64().unwrap(),
        );
        // A dual-stack guest's last stale family is known to have recovered at the
        // kernel's last window close: the first correctly addressed frame after its last
        // stale one, which may be the other family's, up to one ping (20 ms) before its own
        // first frame to the tap's MAC (docs/ipv6.md).
        let early = if ip == "dual" { 20 } else { 0 };
        assert!(
            out <= real + 10 && real <= out + 10 + early,
            "--ip {ip}: outbound {out} vs {real}"
        );
        assert_eq!(row["garp_frames"], garps, "--ip {ip}");
        // virtio's announce: an unsolicited NA after each RARP round (the first can come
        // before the drop-driven datapath's probe, which the RARP brings).
        let nas = row["unsolicited_nas"].as_u64().unwrap_or(0);
        assert!((4..=5).contains(&nas), "--ip {ip}: {nas} unsolicited NAs");
        let d = row["diagnosis"].as_str().unwrap();
        assert!(
            d.contains("The router address it uses, fe80::fc16:3eff:feaa:bbcc, was derived from the tap's old MAC"),
            "--ip {ip}: {d}"
        );
        let verdicts: Vec<String> = recs
            .iter()
            .filter(|r| r["type"] == "verdict" || r["type"] == "stats")
            .map(|r| r.to_string())
            .collect();
        assert_eq!(blackouts(&recs), 1, "--ip {ip}: {verdicts:#?}");
    }
}

/// The clean migration and the bridged segment stay OK with IPv6.
#[test]
fn clean_and_bridged_stay_ok_with_ipv6() {
    require_root();
    for scenario in ["clean", "bridged"] {
        let recs = lab(&["--scenario", scenario, "--ip", "dual"]);
        let truth = truths(&recs)[0];
        assert_eq!(truth["stale_window_ms"], 0, "{scenario}: {truth}");
        let row = &summary_rows(&recs)[0];
        assert_ne!(row["state"], "BLACKOUT", "{scenario}: {row:#}");
        assert_eq!(blackouts(&recs), 0, "{scenario}");
    }
}
