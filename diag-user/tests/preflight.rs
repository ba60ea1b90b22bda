//! `tapwatch facts` on real libvirt status files and `tapwatch preflight` on facts files, as
//! a user runs them: exit statuses, findings, errors. Root-free.

use std::{path::Path, process::Command};

use serde_json::Value;

fn tapwatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(args)
        .output()
        .expect("run tapwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/libvirt-status")
}

struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("tw-preflight-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

/// The facts of this host with the real libvirtd's status files: every domain, its
/// interfaces as libvirt wrote them, the guest CPU.
#[test]
fn facts_of_real_status_files() {
    let (code, out, err) = tapwatch(&[
        "facts",
        "--json",
        "--libvirt-dir",
        fixtures(),
        "--instances-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, 0, "{err}");
    let f: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(f["facts"], 1);
    assert!(f["kernel_release"].as_str().is_some_and(|k| !k.is_empty()));
    let vms = f["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 4, "{out}");
    let nova = vms
        .iter()
        .find(|v| v["domain"] == "instance-0000002b")
        .expect("the Nova domain");
    let iface = &nova["interfaces"][0];
    assert_eq!(iface["managed"], false);
    assert_eq!(iface["iface_type"], "ethernet");
    assert!(nova["nova_name"].is_string());
    assert!(
        f.get("instances_dir").is_none(),
        "a missing directory is not said"
    );
    // Text for people.
    let (code, text, _) = tapwatch(&["facts", "--libvirt-dir", fixtures()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("instance-0000002b") && text.contains("managed no"),
        "{text}"
    );
}

fn write(dir: &Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
    p.display().to_string()
}

fn facts(host: &str, libvirt: &str, flags: &[&str], tap_mac: &str, managed: bool) -> Value {
    serde_json::json!({
        "tool": "tapwatch", "version": "0.2.0", "facts": 1, "taken": null,
        "kernel_release": "6.8.0", "hostname": host, "boot_id": format!("b-{host}"),
        "libvirt_version": format!("libvirtd (libvirt) {libvirt}"),
        "qemu_version": "QEMU emulator version 8.2.2",
        "cpu_model": "AMD EPYC", "cpu_flags": flags,
        "clock": {"synchronised": true, "estimated_error_us": 10, "maximum_error_us": 100},
        "vms": [{
            "domain": format!("instance-{host}"), "uuid": format!("u-{host}"),
            "nova_name": format!("vm-{host}"),
            "cpu": {"mode": "host-passthrough"},
            "interfaces": [{"tap": "tap0", "tap_mac": tap_mac, "guest_mac": "fa:16:3e:aa:bb:cc",
                            "managed": managed, "iface_type": "ethernet"}],
            "disks": [{"target": "vda", "kind": "network", "source": "rbd:vms/x"}]
        }]
    })
}

/// The seed's Jammy-to-Noble story the other way round (a newer libvirt to an older one),
/// a host-passthrough guest to a host without avx512f, and the destination's taps with
/// the port's MAC: exit 1 with each finding; JSON records; a pair that is fine exits 0.
#[test]
fn preflight_of_a_host_pair() {
    let s = scratch("pair");
    let src = write(
        &s.0,
        "noble.json",
        &facts(
            "noble",
            "10.0.0",
            &["avx2", "avx512f"],
            "fe:16:3e:aa:bb:cc",
            true,
        ),
    );
    let dst = write(
        &s.0,
        "jammy.json",
        &facts("jammy", "8.0.0", &["avx2"], "00:61:fe:ed:ca:fe", false),
    );
    let (code, out, err) = tapwatch(&["preflight", "--from", &src, "--to", &dst]);
    assert_eq!(code, 1, "{out}{err}");
    for words in [
        "BLOCKS",
        "avx512f",
        "older",
        "OUTAGE",
        "stale-MAC",
        "what to do",
    ] {
        assert!(out.contains(words), "{words} not in:\n{out}");
    }
    let (code, json, _) = tapwatch(&["preflight", "--from", &src, "--to", &dst, "--json"]);
    assert_eq!(code, 1);
    let checks: Vec<String> = json
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .inspect(|v| assert_eq!(v["type"], "finding"))
        .map(|v| v["check"].as_str().unwrap().to_string())
        .collect();
    for c in ["cpu_flags", "versions", "stale_mac"] {
        assert!(checks.iter().any(|x| x == c), "{c} in {checks:?}");
    }
    // The same libvirt, the same flags, libvirt's MAC on both sides: nothing.
    let ok = write(
        &s.0,
        "ok.json",
        &facts(
            "ok",
            "10.0.0",
            &["avx2", "avx512f"],
            "fe:16:3e:aa:bb:cc",
            true,
        ),
    );
    let (code, out, err) = tapwatch(&["preflight", "--from", &src, "--to", &ok]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing found"), "{out}");
}

/// Wrong input: not facts, a VM SRC does not have, one host twice: a clear error, exit 2.
#[test]
fn preflight_says_what_is_wrong() {
    let s = scratch("wrong");
    let src = write(
        &s.0,
        "a.json",
        &facts("a", "9.0.0", &[], "fe:16:3e:aa:bb:cc", true),
    );
    let junk = s.0.join("junk.txt");
    std::fs::write(&junk, "hello").unwrap();
    let (code, _, err) = tapwatch(&["preflight", "--from", junk.to_str().unwrap(), "--to", &src]);
    assert_eq!(code, 2);
    assert!(err.contains("neither a facts file"), "{err}");
    let dst = write(
        &s.0,
        "b.json",
        &facts("b", "9.0.0", &[], "fe:16:3e:aa:bb:cc", true),
    );
    let (code, _, err) = tapwatch(&["preflight", "--from", &src, "--to", &dst, "--vm", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("no VM named nope"), "{err}");
    let (code, _, err) = tapwatch(&["preflight", "--from", &src, "--to", &src]);
    assert_eq!(code, 2);
    assert!(err.contains("same host"), "{err}");
}
