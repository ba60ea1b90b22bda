//! Runs of tapwatch against the real kernel: side by side on one tap in every datapath,
//! killed (and what they leave), ended by any signal, without a terminal, short of
//! descriptors or capabilities, as a setcap binary; tagged frames counted whole in every
//! datapath. Each test has its own namespace.

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

/// Runs on one tap in every way (two clsact runs, a TCX run, two drop-driven runs) all
/// count exactly, stale frames included; stopping one does not touch the others.
#[test]
fn runs_side_by_side_never_disturb_each_other() {
    require_root();
    let ns = Netns::new("tw-pair").unwrap();
    let tap = VmTap::create(&ns, "tappair", TAP_CALICO).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["watch", "--json", "--interval", "0.1"];
        args.extend_from_slice(extra);
        let mut t = Tapwatch::start(&ns, &args);
        t.wait_attached("tappair");
        t
    };
    let clsact = ["--datapath", "tc", "--attach-mode", "clsact"];
    let mut a = run(&clsact);
    let mut b = run(&clsact);
    let mut c = run(&["--datapath", "tc", "--attach-mode", "tcx"]);
    let mut d = run(&["--datapath", "drops"]);
    let mut e = run(&["--datapath", "drops"]);
    assert_eq!(our_filters(&ns, "tappair"), 4, "both clsact runs' filters");
    let stale = frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 64);
    for _ in 0..3 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
        tap.send(&stale).unwrap();
    }
    let counted =
        |n: u64| move |t: &Value| u(t, "rarp_frames") == n && u(t, "dst_mismatch_frames") == n;
    for t in [&mut a, &mut b, &mut c, &mut d, &mut e] {
        t.wait_stats("tappair", counted(3));
    }
    let (status, recs, _) = b.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(u(summary_row(&recs, "tappair"), "rarp_frames"), 3);
    let (status, recs, _) = d.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(u(summary_row(&recs, "tappair"), "dst_mismatch_frames"), 3);
    // The drop-driven runs' per-frame probes (RARP, stale frames) are TCX or clsact
    // filters of their own; only the stopped runs' went.
    let assist = |ns: &Netns| our_filters(ns, "tappair");
    assert!(
        assist(&ns) >= 2,
        "the clsact run still attached keeps its filters"
    );
    for _ in 0..2 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
        tap.send(&stale).unwrap();
    }
    for t in [&mut a, &mut c, &mut e] {
        t.wait_stats("tappair", counted(5));
    }
    for t in [a, c, e] {
        let (status, recs, _) = t.stop(libc::SIGTERM);
        assert!(status.success());
        let row = summary_row(&recs, "tappair");
        assert_eq!(
            (u(row, "rarp_frames"), u(row, "dst_mismatch_frames")),
            (5, 5)
        );
        assert_eq!(u(row, "from_vm_frames"), 10);
    }
    assert_eq!(our_filters(&ns, "tappair"), 0);
}

/// A killed run's cleanup helper removes its clsact filters; when the helper was killed
/// too, the next run removes them, in the default datapath too.
#[test]
fn leftovers_of_a_killed_run_go_in_every_mode() {
    require_root();
    let ns = Netns::new("tw-leftover").unwrap();
    let tap = VmTap::create(&ns, "tapleft", TAP_LIBVIRT).unwrap();
    let mut killed = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--datapath",
            "tc",
            "--attach-mode",
            "clsact",
        ],
    );
    killed.wait_attached("tapleft");
    let helper = cleanup_helper_of(killed.pid()).expect("a cleanup helper");
    // SAFETY: kill(2) of a process of this test.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    wait_gone(helper);
    let _ = killed.stop(libc::SIGKILL);
    assert_eq!(our_filters(&ns, "tapleft"), 2);
    let mut tw = Tapwatch::start(&ns, &["watch", "--json", "--interval", "0.1"]);
    let att = tw.wait_attached("tapleft");
    assert_eq!(att["datapath"], "drops");
    assert_eq!(our_filters(&ns, "tapleft"), 0, "removed before counting");
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("tapleft", |t| u(t, "garp_frames") == 1);
    let (status, recs, err) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(err.contains("was killed"), "{err}");
    assert_eq!(u(summary_row(&recs, "tapleft"), "from_vm_frames"), 1);
}

/// SIGHUP (ssh gone), SIGQUIT, SIGUSR1 and SIGUSR2 end a run as SIGTERM does: the summary,
/// the whole bundle, and nothing attached.
#[test]
fn every_ending_signal_finishes_the_run() {
    require_root();
    let ns = Netns::new("tw-sig").unwrap();
    let scratch = Scratch::new("sig");
    let tap = VmTap::create(&ns, "tapsig", TAP_LIBVIRT).unwrap();
    for (sig, name) in [
        (libc::SIGHUP, "hup"),
        (libc::SIGQUIT, "quit"),
        (libc::SIGUSR1, "usr1"),
        (libc::SIGUSR2, "usr2"),
    ] {
        let dir = scratch.join(name);
        let mut tw = Tapwatch::start(
            &ns,
            &[
                "watch",
                "--json",
                "--attach-mode",
                "clsact",
                "--record",
                dir.to_str().unwrap(),
                "--pack",
            ],
        );
        tw.wait_attached("tapsig");
        let (status, recs, err) = tw.stop(sig);
        assert!(status.success(), "{name}: {status:?} {err}");
        assert_eq!(of_type(&recs, "summary").len(), 1, "{name}");
        for f in ["events.ndjson", "frames.pcapng", "host.json", "summary.md"] {
            assert!(dir.join(f).exists(), "{name}: {f}");
        }
        assert!(scratch.join(format!("{name}.tar.gz")).exists(), "{name}");
        assert_eq!(our_filters(&ns, "tapsig"), 0, "{name}");
    }
    drop(tap);
}

/// No terminal for the live view: NDJSON, said on stderr and in a notice; the bundle whole.
#[test]
fn the_view_without_a_terminal_falls_back_to_json() {
    require_root();
    let ns = Netns::new("tw-notty").unwrap();
    let scratch = Scratch::new("notty");
    let dir = scratch.join("b");
    let _tap = VmTap::create(&ns, "tapnotty", TAP_LIBVIRT).unwrap();
    let out = Command::new("setsid")
        .args(["ip", "netns", "exec", ns.name(), tw_bin()])
        .args([
            "watch",
            "--duration",
            "0.5",
            "--record",
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no terminal for the live view"), "{err}");
    let recs: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs[0]["code"], "no_terminal");
    assert_eq!(summary_row(&recs, "tapnotty")["state"], "OK");
    assert!(dir.join("summary.md").exists() && dir.join("host.json").exists());
}

/// Out of descriptors: said per tap with the fix, never as "no interface matches" or a
/// missing BPF kernel, and the run fails instead of exiting 0 with taps unwatched.
#[test]
fn running_out_of_descriptors_is_said_and_fails_the_run() {
    require_root();
    let ns = Netns::new("tw-nofd").unwrap();
    let taps: Vec<VmTap> = (0..12)
        .map(|i| VmTap::create(&ns, &format!("tapfd{i}"), TAP_LIBVIRT).unwrap())
        .collect();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "prlimit",
            "--nofile=40:40",
            "--",
        ])
        .arg(tw_bin())
        // Each tap's TCX links are descriptors (the drop-driven datapath needs none).
        .args([
            "watch",
            "--json",
            "--duration",
            "1",
            "--datapath",
            "tc",
            "--attach-mode",
            "tcx",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("out of file descriptors"), "{err}");
    assert!(err.contains("ulimit -n"), "{err}");
    assert!(!err.contains("no interface matches"), "{err}");
    assert!(!err.contains("needs a kernel with BPF"), "{err}");
    let recs: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let attached = of_type(&recs, "attached").len();
    let failed: Vec<&Value> = of_type(&recs, "notice")
        .into_iter()
        .filter(|n| n["code"] == "attach_failed")
        .collect();
    assert!(attached < 12 && !failed.is_empty(), "{attached} attached");
    assert_eq!(attached + failed.len(), 12, "every tap is attached or said");
    drop(taps);
}

/// With exactly the capabilities tapwatch names, as another user, it works; with fewer it
/// says which are missing.
#[test]
fn the_capabilities_named_are_the_ones_needed() {
    require_root();
    let ns = Netns::new("tw-caps").unwrap();
    let tap = VmTap::create(&ns, "tapcaps", TAP_LIBVIRT).unwrap();
    let with = |caps: &str| {
        vec![
            "setpriv".to_string(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            format!("--inh-caps=-all,{caps}"),
            format!("--ambient-caps=-all,{caps}"),
        ]
    };
    let run = |caps: &str| {
        let named = with(caps);
        let wrapper: Vec<&str> = named.iter().map(String::as_str).collect();
        let mut tw = Tapwatch::start_via(
            &ns,
            &wrapper,
            &["watch", "--json", "--interval", "0.1", "--backend", "ebpf"],
        );
        let att = tw.wait_attached("tapcaps");
        assert_eq!(att["backend"], "ebpf");
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
        tw.wait_stats("tapcaps", |t| u(t, "rarp_frames") == 1);
        let (status, _, err) = tw.stop(libc::SIGINT);
        assert!(status.success(), "{err}");
        (att["datapath"].as_str().unwrap().to_string(), err)
    };
    let (datapath, _) = run("+bpf,+perfmon,+net_admin,+net_raw");
    assert_eq!(datapath, "drops");
    // Without CAP_NET_RAW (the ARP sockets), the per-frame probe, saying why.
    let (datapath, err) = run("+bpf,+perfmon,+net_admin");
    assert_eq!(datapath, "tc");
    assert!(err.contains("CAP_NET_RAW"), "{err}");

    let fewer = with("+bpf,+net_admin");
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(&fewer)
        .arg(tw_bin())
        .args(["watch", "--json", "--backend", "ebpf", "--duration", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing: CAP_PERFMON"), "{err}");
    assert!(
        err.contains("cap_bpf,cap_perfmon,cap_net_admin,cap_net_raw"),
        "{err}"
    );
}

/// QinQ: the outer 802.1ad tag the kernel moves into metadata is counted in bytes and
/// reported, with the inner tag, in records and in the bundle's frames; every frame
/// record's `len` is the length the VM wrote, whichever tags the kernel took off before
/// tapwatch saw the frame.
#[test]
fn qinq_frames_are_counted_whole_and_reported() {
    tagged_frames_keep_their_length("tc");
}

/// The drop-driven datapath sees a routed tap's tagged frames after the kernel took a tag
/// off and forgot its id: their length still counts it.
#[test]
fn tagged_frames_keep_their_length_in_drops() {
    tagged_frames_keep_their_length("drops");
}

#[test]
fn tagged_frames_keep_their_length_in_pcap() {
    tagged_frames_keep_their_length("pcap");
}

fn tagged_frames_keep_their_length(datapath: &str) {
    require_root();
    let ns = Netns::new(&format!("tw-qinq-{datapath}")).unwrap();
    let scratch = Scratch::new(&format!("qinq-{datapath}"));
    let dir = scratch.join("b");
    let tap = VmTap::create(&ns, "tapqinq", TAP_LIBVIRT).unwrap();
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.1",
            "--datapath",
            datapath,
            "--record",
            dir.to_str().unwrap(),
        ],
    );
    tw.wait_attached("tapqinq");
    // No tag, one (the kernel takes it off), two (it takes the outer one off).
    let plain = frames::rarp_announce(GUEST, None);
    let tagged = frames::rarp_announce(GUEST, Some(100));
    let rarp = qinq(&plain);
    let udp = qinq(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 100));
    let sent = [&plain, &tagged, &rarp, &udp];
    for f in sent {
        tap.send(f).unwrap();
    }
    let bytes: u64 = sent.iter().map(|f| f.len() as u64).sum();
    tw.wait_stats("tapqinq", |t| u(t, "from_vm_frames") == sent.len() as u64);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    let row = summary_row(&recs, "tapqinq");
    assert_eq!(u(row, "from_vm_bytes"), bytes, "{row:#}");
    assert_eq!(u(row, "rarp_frames"), 3);
    let rarps = frames(&recs, "tapqinq", "rarp");
    let mut lens: Vec<u64> = rarps.iter().map(|r| u(r, "len")).collect();
    lens.sort();
    assert_eq!(
        lens,
        [plain.len(), tagged.len(), rarp.len()].map(|n| n as u64),
        "{rarps:#?}"
    );
    let r = rarps
        .iter()
        .find(|r| u(r, "len") == rarp.len() as u64)
        .unwrap();
    if datapath == "drops" {
        // The kernel forgot the ids of the tags it took off; the inner one of QinQ is
        // still in the bytes.
        assert_eq!(
            (r.get("outer_vlan"), &r["vlan"]),
            (None, &12.into()),
            "{r:#}"
        );
        return;
    }
    assert_eq!(
        (&r["outer_vlan"], &r["vlan"]),
        (&300.into(), &12.into()),
        "{r:#}"
    );
    // The bundle's pcapng holds the frame as the VM wrote it, both tags back in place.
    let text = vlans_and_lengths(&dir.join("frames.pcapng"));
    assert!(text.contains(&format!("300\t12\t{}", rarp.len())), "{text}");
}

/// `inner` with two tags: dst, src, 802.1ad tag 300, 802.1Q tag 12, then the rest of
/// `inner` after its ethertype position.
fn qinq(inner: &[u8]) -> Vec<u8> {
    let mut f = inner[..12].to_vec();
    f.extend_from_slice(&[0x88, 0xa8, 0x01, 0x2c, 0x81, 0x00, 0x00, 0x0c]);
    f.extend_from_slice(&inner[12..]);
    f
}

/// Each frame of a pcapng as tshark reads it: the outer (802.1ad) VLAN, the inner VLAN and
/// the length, tab-separated, a line a frame.
fn vlans_and_lengths(pcapng: &Path) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcapng)
        .args([
            "-T",
            "fields",
            "-e",
            "ieee8021ad.id",
            "-e",
            "vlan.id",
            "-e",
            "frame.len",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A binary given capabilities with setcap (as the README suggests) and run by another user
/// ignores TAPWATCH_LIBPCAP, as the loader ignores LD_*: the user could otherwise run code
/// of their own with the binary's capabilities.
#[test]
fn a_setcap_binary_loads_no_library_the_user_names() {
    require_root();
    let dir = Scratch::new("setcap");
    let bin = dir.join("tapwatch");
    std::fs::copy(tw_bin(), &bin).unwrap();
    let ok = Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(&bin)
        .status()
        .unwrap();
    assert!(ok.success(), "setcap");
    let run = |who: &[&str]| {
        let out = Command::new(who[0])
            .args(&who[1..])
            .arg(&bin)
            .arg("--version")
            .env("TAPWATCH_LIBPCAP", "/nonexistent/libpcap.so.1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let user = run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]);
    assert!(
        user.contains("pcap   no: TAPWATCH_LIBPCAP is ignored by a privileged"),
        "{user}"
    );
    // Root gains nothing from the file's capabilities: the variable is honoured.
    let root = run(&["env"]);
    assert!(
        root.contains("pcap   no: TAPWATCH_LIBPCAP=/nonexistent/libpcap.so.1"),
        "{root}"
    );
}
