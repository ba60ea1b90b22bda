//! `--record DIR`: the stale-MAC story recorded into a bundle, checked with tshark.

mod common;

use std::{net::Ipv4Addr, os::unix::fs::PermissionsExt, path::Path, process::Command};

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};

const PEER: Ipv4Addr = Ipv4Addr::new(10, 65, 9, 9);

fn tshark(file: &Path, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![
        "-r".to_string(),
        file.display().to_string(),
        "-Y".into(),
        filter.into(),
        "-T".into(),
        "fields".into(),
    ];
    for f in fields {
        args.extend(["-e".to_string(), f.to_string()]);
    }
    let out = Command::new("tshark")
        .args(&args)
        .output()
        .expect("tshark (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "tshark {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// tcpdump writing a capture inside a namespace, stopped (and flushed) on drop.
struct Tcpdump(std::process::Child);

impl Tcpdump {
    fn start(ns: &Netns, iface: &str, file: &Path) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new("ip")
            // Without immediate mode, frames wait in the capture ring for a block to retire
            // (about a second) and a stop in between loses them.
            .args([
                "netns",
                "exec",
                ns.name(),
                "tcpdump",
                "--immediate-mode",
                "-i",
                iface,
                "-U",
                "-w",
            ])
            .arg(file)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tcpdump (scripts/setup.sh installs it)");
        // Readiness: tcpdump says it is listening.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("listening on") {
            line.clear();
        }
        assert!(
            line.contains("listening on"),
            "tcpdump did not start: {line}"
        );
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Self(child)
    }

    fn stop(mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        self.0.wait().unwrap();
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Outcome = (std::process::ExitStatus, Vec<serde_json::Value>, String);

/// Plays the stale-MAC story on a fresh tap under `tapwatch watch --json <extra>`: the
/// tap's MAC changes, QEMU announces, the guest sends to the old MAC, re-ARPs (the host
/// answers by proxy ARP, as Calico's does) and sends to the new one. `captures` are
/// (interface, file) pairs tcpdump records meanwhile.
fn record_story_captured(
    ns: &Netns,
    tap_name: &str,
    extra: &[&str],
    captures: &[(&str, &Path)],
) -> Outcome {
    let tap = VmTap::create(ns, tap_name, TAP_LIBVIRT).unwrap();
    ns.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
    ])
    .unwrap();
    ns.ip(&["link", "set", "uplink1", "up"]).unwrap();
    ns.ip(&["link", "set", "uplink0", "up"]).unwrap();
    ns.ip(&["route", "add", "169.254.1.1", "dev", "uplink0"])
        .unwrap();
    let proxy = format!("net.ipv4.conf.{tap_name}.proxy_arp=1");
    let delay = format!("net.ipv4.neigh.{tap_name}.proxy_delay=0");
    ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1", &proxy, &delay])
        .unwrap();
    let dumps: Vec<Tcpdump> = captures
        .iter()
        .map(|(i, f)| Tcpdump::start(ns, i, f))
        .collect();
    let mut args = vec![
        "watch",
        "--json",
        "--interval",
        "0.1",
        "--libvirt-dir",
        "/nonexistent",
    ];
    args.extend_from_slice(extra);
    let mut tw = Tapwatch::start(ns, &args);
    tw.wait_attached(tap_name);
    ns.ip(&["link", "set", tap_name, "address", &TAP_CALICO.to_string()])
        .unwrap();
    tw.wait_for("mac_change", |v| v["type"] == "mac_change");
    for _ in 0..5 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    // As after a real resume, the guest goes on once the migration was announced (the
    // drop-driven datapath puts its per-frame probe on the tap at the first RARP, before
    // the RARP's record goes out).
    tw.wait_for("rarp", |v| v["type"] == "frame" && v["kind"] == "rarp");
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    for _ in 0..5 {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, PEER, 98))
            .unwrap();
    }
    tap.send(&frames::arp_request(
        GUEST,
        VM_IP,
        Ipv4Addr::new(169, 254, 1, 1),
    ))
    .unwrap();
    // Readiness: the host's proxy-ARP reply has been counted.
    tw.wait_stats(tap_name, |t| u(t, "arp_replies") == 1);
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, PEER, 98))
        .unwrap();
    tw.wait_stats(tap_name, |t| u(t, "from_vm_frames") == 14);
    let result = tw.stop(libc::SIGINT);
    for d in dumps {
        d.stop();
    }
    result
}

fn record_story(ns: &Netns, tap_name: &str, extra: &[&str]) -> Outcome {
    record_story_captured(ns, tap_name, extra, &[])
}

fn analyze(path: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .arg("analyze")
        .arg(path)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "analyze {}: {err}", path.display());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "summary");
    (
        summary.unwrap_or_else(|| panic!("no summary in {stdout}")),
        err,
    )
}

#[test]
fn analyze_gives_the_live_verdicts() {
    require_root();
    let ns = Netns::new("tw-analyze").unwrap();
    let scratch = Scratch::new("analyze");
    let dir = scratch.0.join("b");
    let on_tap = scratch.0.join("tap.pcap");
    let on_any = scratch.0.join("any.pcap");
    let extra = ["--record", dir.to_str().unwrap(), "--pack"];
    let (status, recs, _) = record_story_captured(
        &ns,
        "tapanl0",
        &extra,
        &[("tapanl0", &on_tap), ("any", &on_any)],
    );
    assert!(status.success());
    let live = summary_row(&recs, "tapanl0");
    assert_eq!(live["state"], "RECOVERED");
    let live_ms = live["blackout_ms"].as_u64().unwrap();

    // The bundle, as a directory and packed: the very same verdict.
    for path in [dir.clone(), scratch.0.join("b.tar.gz")] {
        let (summary, _) = analyze(&path, &[]);
        let row = &summary["taps"][0];
        assert_eq!(
            (&row["ifname"], &row["state"]),
            (&"tapanl0".into(), &"RECOVERED".into()),
            "{}",
            path.display()
        );
        assert_eq!(row["blackout_ms"], live_ms, "{}", path.display());
        assert_eq!(row["rarp_frames"], 5);
    }

    assert_captures_give_the_live_verdict(&on_tap, &on_any, live_ms);
    assert_a_cut_capture_is_refused(&on_tap, &scratch.0.join("cut.pcap"));
}

/// tcpdump's captures of the story, on the tap and on `any`: the verdict given live
/// (`live_ms` of blackout), timed by AF_PACKET.
fn assert_captures_give_the_live_verdict(on_tap: &Path, on_any: &Path, live_ms: u64) {
    let (summary, notes) = analyze(on_tap, &[]);
    assert!(
        notes.contains("inferred from the frames the host sent (00:61:fe:ed:ca:fe)"),
        "{notes}"
    );
    let row = &summary["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{summary:#}");
    assert!(
        row["blackout_ms"].as_u64().unwrap().abs_diff(live_ms) <= 5,
        "{} vs {live_ms}",
        row["blackout_ms"]
    );
    let counts = (
        &row["rarp_frames"],
        &row["garp_frames"],
        &row["dst_mismatch_frames"],
    );
    assert_eq!(counts, (&5.into(), &2.into(), &5.into()));
    let (summary, _) = analyze(on_any, &[]);
    // `-i any` sees every interface; the tap is the one QEMU announced on.
    let row = summary["taps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rarp_frames"] == 5)
        .expect("the tap's row");
    assert_eq!(row["state"], "RECOVERED", "{summary:#}");
    assert!(row["blackout_ms"].as_u64().unwrap().abs_diff(live_ms) <= 5);
    // The cooked header's packet type is the kernel's verdict: every OTHERHOST frame in
    // the capture counts (tcpdump -i any does not always keep all of them).
    let otherhost = Command::new("tshark")
        .arg("-r")
        .arg(on_any)
        .args(["-Y", "sll.pkttype == 3"])
        .output()
        .unwrap();
    let in_capture = String::from_utf8_lossy(&otherhost.stdout).lines().count() as u64;
    assert!(in_capture > 0);
    assert_eq!(row["dst_mismatch_frames"], in_capture);
}

/// A damaged capture (`capture` cut short, written to `cut`): an error naming the offset,
/// no panic.
fn assert_a_cut_capture_is_refused(capture: &Path, cut: &Path) {
    let bytes = std::fs::read(capture).unwrap();
    std::fs::write(cut, &bytes[..bytes.len() - 7]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .arg("analyze")
        .arg(cut)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged capture at byte offset"), "{err}");
}

#[test]
fn bundle_of_the_stale_mac_story() {
    require_root();
    let ns = Netns::new("tw-bundle").unwrap();
    let scratch = Scratch::new("bundle");
    let dir = scratch.0.join("incident");
    let (status, recs, stderr) = record_story(
        &ns,
        "tapbndl0",
        &["--record", dir.to_str().unwrap(), "--pack"],
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("bundle written to"), "{stderr}");

    // Layout and permissions.
    assert_eq!(mode(&dir), 0o700);
    for f in [
        "events.ndjson",
        "frames.pcapng",
        "host.json",
        "summary.md",
        "report.html",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    // events.ndjson is the --json stream, record for record.
    let events: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("events.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events, recs);

    assert_pcapng_is_the_stream(&dir.join("frames.pcapng"), &recs);

    // host.json and summary.md.
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.json")).unwrap()).unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(host["kernel_release"], release.trim());
    assert_eq!(host["taps"]["tapbndl0"]["mac"], "00:61:fe:ed:ca:fe");
    assert_eq!(host["taps"]["tapbndl0"]["mode"], "routed");
    assert_eq!(host["taps"]["tapbndl0"]["mtu"], 1500);
    assert!(host["started"].is_string() && host["ended"].is_string());
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("## tapbndl0 (tapbndl0)") && md.contains("State: **RECOVERED**"),
        "{md}"
    );
    assert!(
        md.contains("Blackout: ") && md.contains("VM sent to fe:16:3e:aa:bb:cc"),
        "{md}"
    );

    assert_packed(&scratch.0.join("incident.tar.gz"));
}

/// frames.pcapng, read by tshark: exact RARP and GARP counts, the tap's name, ordered
/// timestamps equal to the JSON's (`recs`, the --json stream).
fn assert_pcapng_is_the_stream(pcap: &Path, recs: &[serde_json::Value]) {
    let rarps = tshark(
        pcap,
        "eth.type == 0x8035",
        &["frame.interface_name", "frame.time_epoch"],
    );
    assert_eq!(rarps.len(), 5);
    assert!(rarps.iter().all(|r| r[0] == "tapbndl0"), "{rarps:?}");
    let garps = tshark(pcap, "arp.isgratuitous == 1", &["frame.interface_name"]);
    assert_eq!(garps.len(), 2);
    let all = tshark(pcap, "frame", &["frame.time_epoch"]);
    let times: Vec<f64> = all.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let json_frames = of_type(recs, "frame");
    assert_eq!(all.len(), json_frames.len());
    let first_json =
        chrono::DateTime::parse_from_rfc3339(json_frames[0]["ts"].as_str().unwrap()).unwrap();
    let first_pcap = times[0];
    assert!(
        (first_json.timestamp_micros() as f64 / 1e6 - first_pcap).abs() < 2e-6,
        "{first_json} vs {first_pcap}"
    );
}

/// The packed copy of the bundle `incident`: private, and every file in it.
fn assert_packed(tgz: &Path) {
    assert_eq!(mode(tgz), 0o600);
    let list = Command::new("tar").arg("tzf").arg(tgz).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for f in [
        "incident/events.ndjson",
        "incident/frames.pcapng",
        "incident/host.json",
        "incident/summary.md",
        "incident/report.html",
    ] {
        assert!(list.contains(f), "{list}");
    }
}

#[test]
fn size_cap_skips_frames_but_keeps_counters() {
    require_root();
    let ns = Netns::new("tw-cap").unwrap();
    let scratch = Scratch::new("cap");
    let dir = scratch.0.join("b");
    let (status, recs, _) = record_story(
        &ns,
        "tapcap0",
        &["--record", dir.to_str().unwrap(), "--record-max-mb", "0"],
    );
    assert!(status.success());
    let host: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.json")).unwrap()).unwrap();
    assert_eq!(host["frames_written"], 0);
    assert_eq!(
        host["frames_skipped"].as_u64().unwrap() as usize,
        of_type(&recs, "frame").len()
    );
    let events = std::fs::read_to_string(dir.join("events.ndjson")).unwrap();
    assert!(events
        .lines()
        .last()
        .unwrap()
        .contains("\"type\":\"summary\""));
    assert!(events.contains("\"dst_mismatch_frames\":5"));
    assert!(std::fs::read_to_string(dir.join("summary.md"))
        .unwrap()
        .contains("size cap"));
}

#[test]
fn refuses_unsafe_bundle_directories() {
    require_root();
    let scratch = Scratch::new("refuse");
    let full = scratch.0.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep.txt"), "precious").unwrap();
    let link = scratch.0.join("link");
    std::os::unix::fs::symlink(scratch.0.join("elsewhere"), &link).unwrap();
    for (dir, says) in [(&full, "not empty"), (&link, "symbolic link")] {
        let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
            .args(["watch", "--json", "--duration", "1", "--record"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(full.join("keep.txt")).unwrap(),
        "precious"
    );
    assert!(!scratch.0.join("elsewhere").exists());
}
