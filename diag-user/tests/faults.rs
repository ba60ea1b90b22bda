//! Ordinary faults on a busy hypervisor, against the real kernel: a stalled stdout, lost
//! link notifications, renames, libvirt changing under tapwatch, taps gone before they are
//! attached. Runs side by side, killed or short of what they need are in runs.rs; bundles
//! on a full disk or in hostile directories in bundle_faults.rs. Each test has its own
//! namespace.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use diag_user::frames;
use diag_user::{
    lab::netns::{Netns, VmTap},
    model::mac::MacAddr,
};
use serde_json::Value;

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
