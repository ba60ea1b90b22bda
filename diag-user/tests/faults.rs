//! Ordinary faults on a busy hypervisor, against the real kernel: a stalled stdout, lost
//! link notifications, renames, libvirt changing under tapwatch, runs side by side, killed
//! runs, ending signals, a full disk, hostile bundle directories, missing descriptors and
//! capabilities. Each test has its own namespace.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use diag_user::{
    lab::{
        frames,
        netns::{Netns, VmTap},
    },
    model::mac::MacAddr,
};
use serde_json::Value;

fn tw_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tapwatch")
}

/// `ip -n NS -batch -` with the given lines.
fn ip_batch(ns: &Netns, lines: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A MAC of the form 02:00:00:00:HI:LO for `n`.
fn mac_for(n: u32, salt: u8) -> MacAddr {
    MacAddr([0x02, salt, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8])
}

/// tapwatch's clsact filters on `ifname`, from the kernel.
fn our_filters(ns: &Netns, ifname: &str) -> usize {
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

/// A tapwatch whose stdout nobody reads until `drain`: a pager nobody scrolls.
struct Stalled {
    child: std::process::Child,
}

impl Stalled {
    fn start(ns: &Netns, args: &[&str]) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), tw_bin()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Stops it and reads everything it wrote.
    fn drain(mut self, sig: libc::c_int) -> (std::process::ExitStatus, Vec<Value>, String) {
        self.signal(sig);
        let stdout = self.child.stdout.take().unwrap();
        let mut stderr = self.child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
            s
        });
        let recs: Vec<Value> = BufReader::new(stdout)
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        let status = self.child.wait().unwrap();
        (status, recs, err.join().unwrap())
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The MAC each tap had last, from a summary.
fn last_macs(recs: &[Value]) -> std::collections::HashMap<String, String> {
    let summary = recs
        .iter()
        .find(|v| v["type"] == "summary")
        .expect("a summary");
    summary["taps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let h = t["mac_history"].as_array().unwrap();
            (
                t["ifname"].as_str().unwrap().to_string(),
                h.last().unwrap()["mac"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// While stdout is stalled, taps still appear, change MAC and get attached: following
/// interfaces never waits for output.
#[test]
fn a_stalled_stdout_loses_no_tap_and_no_mac_change() {
    require_root();
    let ns = Netns::new("tw-stall").unwrap();
    let tw = Stalled::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.02",
            // The per-frame probe on every tap: its filters are the kernel's evidence.
            "--datapath",
            "tc",
            "--attach-mode",
            "clsact",
            "--iface",
            "tapst*",
        ],
    );
    // Let stats records fill the pipe first.
    std::thread::sleep(Duration::from_millis(500));
    let n = 300;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("tuntap add dev tapst{i} mode tap\n"));
        batch.push_str(&format!(
            "link set dev tapst{i} address {} up\n",
            mac_for(i, 1)
        ));
    }
    ip_batch(&ns, &batch);
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!(
            "link set dev tapst{i} address {}\n",
            mac_for(i, 2)
        ));
    }
    ip_batch(&ns, &batch);
    // The kernel's answer, with stdout still unread: every tap has tapwatch's filters.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<u32> = (0..n).collect();
    while !missing.is_empty() {
        assert!(
            Instant::now() < deadline,
            "not attached while stdout was stalled: {missing:?}"
        );
        missing.retain(|i| our_filters(&ns, &format!("tapst{i}")) != 2);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, recs, err) = tw.drain(libc::SIGINT);
    assert!(status.success(), "{err}");
    let attached = of_type(&recs, "attached");
    assert_eq!(attached.len(), n as usize, "{err}");
    let macs = last_macs(&recs);
    for i in 0..n {
        assert_eq!(
            macs[&format!("tapst{i}")],
            mac_for(i, 2).to_string(),
            "tapst{i}'s MAC change"
        );
    }
}

/// The kernel drops link notifications a descheduled reader did not take (ENOBUFS):
/// tapwatch re-reads every link, misses no MAC change, and says so.
#[test]
fn lost_link_notifications_are_read_again() {
    require_root();
    let ns = Netns::new("tw-enobufs").unwrap();
    let n = 200;
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("tuntap add dev tapnb{i} mode tap\n"));
        batch.push_str(&format!(
            "link set dev tapnb{i} address {} up\n",
            mac_for(i, 1)
        ));
    }
    ip_batch(&ns, &batch);
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.2",
            "--attach-mode",
            "clsact",
            "--iface",
            "tapnb*",
        ],
    );
    for i in 0..n {
        tw.wait_attached(&format!("tapnb{i}"));
    }
    // Stopped, as a process descheduled for a long time: the socket overflows.
    tw.signal(libc::SIGSTOP);
    for round in 0..60u8 {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&format!(
                "link set dev tapnb{i} address {}\n",
                mac_for(i, 10 + round)
            ));
        }
        ip_batch(&ns, &batch);
    }
    tw.signal(libc::SIGCONT);
    tw.wait_for("the overflow notice", |v| {
        v["type"] == "notice" && v["code"] == "netlink_overflow"
    });
    // The re-read comes after the notice: every tap's last MAC arrives.
    let last = mac_for(n - 1, 10 + 59).to_string();
    tw.wait_for("the last tap's last MAC", |v| {
        v["type"] == "mac_change" && v["new_mac"] == last.as_str()
    });
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert!(err.contains("link notifications were lost"), "{err}");
    let macs = last_macs(&recs);
    for i in 0..n {
        assert_eq!(
            macs[&format!("tapnb{i}")],
            mac_for(i, 10 + 59).to_string(),
            "tapnb{i}"
        );
    }
}

/// A watched tap renamed to another name the globs match is the same tap: its counters
/// and verdict go on under the new name, in the stream, the summary and the bundle.
#[test]
fn a_renamed_tap_keeps_its_counters_and_verdict() {
    require_root();
    let ns = Netns::new("tw-rename").unwrap();
    let scratch = Scratch::new("rename");
    let dir = scratch.join("b");
    let tap = VmTap::create(&ns, "tapren0", TAP_LIBVIRT).unwrap();
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
    tw.wait_attached("tapren0");
    ns.ip(&["link", "set", "tapren0", "address", &TAP_CALICO.to_string()])
        .unwrap();
    tw.wait_for("mac_change", |v| v["type"] == "mac_change");
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    tw.wait_stats("tapren0", |t| u(t, "dst_mismatch_frames") == 3);
    ns.ip(&["link", "set", "tapren0", "down"]).unwrap();
    ns.ip(&["link", "set", "tapren0", "name", "tapren1"])
        .unwrap();
    ns.ip(&["link", "set", "tapren1", "up"]).unwrap();
    let r = tw.wait_for("renamed", |v| v["type"] == "renamed");
    assert_eq!(
        (&r["old_ifname"], &r["ifname"]),
        (&"tapren0".into(), &"tapren1".into())
    );
    tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
        .unwrap();
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
        .unwrap();
    tw.wait_stats("tapren1", |t| u(t, "from_vm_frames") == 5);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    let rows = recs.iter().find(|v| v["type"] == "summary").unwrap()["taps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];
    assert_eq!(row["ifname"], "tapren1");
    assert_eq!(
        (u(row, "from_vm_frames"), u(row, "dst_mismatch_frames")),
        (5, 4)
    );
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(row["detached"], false);
    assert!(of_type(&recs, "detached").is_empty());
    // The bundle agrees with the summary.
    let host: Value =
        serde_json::from_slice(&std::fs::read(dir.join("host.json")).unwrap()).unwrap();
    assert!(host["taps"].get("tapren1").is_some(), "{host:#}");
    assert!(host["taps"].get("tapren0").is_none(), "{host:#}");
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("(tapren1)") && md.contains("RECOVERED"), "{md}");
    drop(tap);
}

/// Writes a file the way libvirt does: a new file renamed over the old.
fn libvirt_write(dir: &Path, name: &str, xml: &str) {
    let tmp = dir.join(format!("{name}.new"));
    std::fs::write(&tmp, xml).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn status_fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/libvirt-status")
            .join(name),
    )
    .unwrap()
}

/// The tap comes before the domain's status file (Nova plugs it ahead of an incoming
/// migration): the VM is named as soon as the file appears, follows a domain that takes
/// the tap name over, and is forgotten when the domain goes; the bundle has the facts.
#[test]
fn vms_are_named_as_libvirt_writes_their_files() {
    require_root();
    let ns = Netns::new("tw-virt").unwrap();
    let scratch = Scratch::new("virt");
    let (libvirt, bundle) = (scratch.join("qemu"), scratch.join("b"));
    std::fs::create_dir(&libvirt).unwrap();
    let tap = VmTap::create(&ns, "tap1234abcd-56", TAP_CALICO).unwrap();
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.1",
            "--libvirt-dir",
            libvirt.to_str().unwrap(),
            "--record",
            bundle.to_str().unwrap(),
        ],
    );
    let first = tw.wait_for("the first verdict", |v| v["type"] == "verdict");
    assert_eq!(first["vm"], "tap1234abcd-56");
    let xml =
        status_fixture("instance-0000002b.xml").replace("reason='booted'", "reason='migrated'");
    libvirt_write(&libvirt, "instance-0000002b.xml", &xml);
    let named = tw.wait_for("web-1", |v| v["type"] == "verdict" && v["vm"] == "web-1");
    assert_eq!(named["ifname"], "tap1234abcd-56");
    let id = tw
        .seen
        .iter()
        .find(|v| v["type"] == "identity")
        .unwrap()
        .clone();
    assert_eq!(id["libvirt"]["domain"], "instance-0000002b");
    assert_eq!(id["libvirt"]["reason"], "migrated");
    // The Neutron port reused by a new instance: same tap name, another domain.
    std::fs::remove_file(libvirt.join("instance-0000002b.xml")).unwrap();
    libvirt_write(
        &libvirt,
        "instance-0000002c.xml",
        &xml.replace("web-1", "web-2")
            .replace("instance-0000002b", "instance-0000002c"),
    );
    tw.wait_for("web-2", |v| v["type"] == "verdict" && v["vm"] == "web-2");
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert_eq!(summary_row(&recs, "tap1234abcd-56")["vm"], "web-2");
    let host: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("host.json")).unwrap()).unwrap();
    let facts = &host["taps"]["tap1234abcd-56"]["libvirt"];
    assert_eq!(facts["domain"], "instance-0000002c", "{host:#}");
    assert!(!serde_json::to_string(&host).unwrap().contains("REDACTED"));
    // A destroyed domain is forgotten.
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.1",
            "--libvirt-dir",
            libvirt.to_str().unwrap(),
        ],
    );
    tw.wait_for("web-2", |v| v["type"] == "verdict" && v["vm"] == "web-2");
    std::fs::remove_file(libvirt.join("instance-0000002c.xml")).unwrap();
    tw.wait_for("forgotten", |v| {
        v["type"] == "verdict" && v["vm"] == "tap1234abcd-56"
    });
    let (status, _, _) = tw.stop(libc::SIGINT);
    assert!(status.success());
    drop(tap);
}

/// libvirt re-creates and deletes a tap within milliseconds while destroying a domain:
/// not an error.
#[test]
fn taps_gone_before_attach_are_not_errors() {
    require_root();
    let ns = Netns::new("tw-flicker").unwrap();
    let mut tw = Tapwatch::start(&ns, &["watch", "--json", "--interval", "0.1"]);
    tw.wait_for("running", |v| v["type"] == "stats");
    for round in 0..5 {
        let mut batch = String::new();
        for i in 0..40 {
            batch.push_str(&format!("tuntap add dev tapfl{round}x{i} mode tap\n"));
            batch.push_str(&format!("link del dev tapfl{round}x{i}\n"));
        }
        ip_batch(&ns, &batch);
    }
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(
        !err.contains("cannot") && !err.contains("not watched"),
        "{err}"
    );
    assert!(
        of_type(&recs, "notice")
            .iter()
            .all(|n| n["code"] != "attach_failed"),
        "{recs:#?}"
    );
}

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
    let qinq = |inner: &[u8]| {
        // dst, src, 802.1ad tag 300, 802.1Q tag 12, then the rest of `inner` after its
        // ethertype position.
        let mut f = inner[..12].to_vec();
        f.extend_from_slice(&[0x88, 0xa8, 0x01, 0x2c, 0x81, 0x00, 0x00, 0x0c]);
        f.extend_from_slice(&inner[12..]);
        f
    };
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
    if datapath == "drops" {
        // The kernel forgot the ids of the tags it took off; the inner one of QinQ is
        // still in the bytes.
        let r = rarps
            .iter()
            .find(|r| u(r, "len") == rarp.len() as u64)
            .unwrap();
        assert_eq!(
            (r.get("outer_vlan"), &r["vlan"]),
            (None, &12.into()),
            "{r:#}"
        );
        return;
    }
    let r = rarps
        .iter()
        .find(|r| u(r, "len") == rarp.len() as u64)
        .unwrap();
    assert_eq!(
        (&r["outer_vlan"], &r["vlan"]),
        (&300.into(), &12.into()),
        "{r:#}"
    );
    // The bundle's pcapng holds the frame as the VM wrote it, both tags back in place.
    let out = Command::new("tshark")
        .arg("-r")
        .arg(dir.join("frames.pcapng"))
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
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("300\t12\t{}", rarp.len())), "{text}");
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
