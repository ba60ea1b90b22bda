//! Seeing a blackout coming, on the real kernel: Nova plugs a destination tap for a VM
//! migrating in, libvirt's status file says the domain waits for it, and tapwatch says
//! before the VM's first frame whether the guest will find the MAC it cached; the VM
//! resumes, and the forecast is settled against what happened.

mod common;

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

/// libvirt's status file of a domain waiting for its incoming migration, its interface on
/// `tap` with `managed`.
fn incoming(dir: &std::path::Path, tap: &str, managed: &str) {
    let xml = format!(
        "<domstatus state='paused' reason='migration' pid='4242'>\
         <domain type='kvm'><name>instance-0000009a</name>\
         <uuid>5c2d9e3f-0000-4000-8000-00000000009a</uuid>\
         <metadata><nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\
         <nova:name>web-9</nova:name></nova:instance></metadata>\
         <devices><interface type='ethernet'><mac address='{GUEST}'/>\
         <target dev='{tap}' managed='{managed}'/></interface></devices></domain>\
         </domstatus>"
    );
    std::fs::write(dir.join("instance-0000009a.xml"), xml).unwrap();
}

fn forecasts(recs: &[Value]) -> Vec<&Value> {
    of_type(recs, "forecast")
}

/// The seed's trap: the destination tap gets the port's fixed MAC, managed='no'. The
/// forecast says AT RISK before any frame; the guest resumes sending to fe:+its MAC; the
/// forecast comes true and the summary counts it.
#[test]
fn a_tap_plugged_with_the_ports_mac_is_foreseen_and_comes_true() {
    require_root();
    let ns = Netns::new("tw-fc-risk").unwrap();
    let dir = Scratch::new("fc-risk");
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.2",
            "--libvirt-dir",
            dir.to_str().unwrap(),
            "--iface",
            "tapfc*",
        ],
    );
    tw.wait_for("the start", |v| v["type"] == "notice");
    incoming(&dir, "tapfc0", "no");
    let tap = VmTap::create(&ns, "tapfc0", TAP_CALICO).unwrap();
    let f = tw.wait_for("the forecast", |v| v["type"] == "forecast");
    assert_eq!(f["at_risk"], true, "{f}");
    assert_eq!(f["certain"], false);
    assert_eq!(f["vm"], "web-9");
    assert_eq!(f["tap_mac"], TAP_CALICO.to_string());
    assert_eq!(f["cached_mac"], TAP_LIBVIRT.to_string());
    assert!(f["cause"].as_str().unwrap().contains("managed='no'"), "{f}");
    assert_eq!(f["expected_ms"], serde_json::json!([15000, 45000]));
    // Nothing from the VM before the forecast.
    assert!(frames(&tw.seen, "tapfc0", "rarp").is_empty());

    // The VM resumes: QEMU's RARP, stale frames to its cached gateway MAC, then re-ARP.
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
            .unwrap();
    }
    tw.wait_for("the blackout", |v| {
        v["type"] == "verdict" && v["state"] == "BLACKOUT"
    });
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 80))
        .unwrap();
    let settled = tw.wait_for("the forecast settled", |v| {
        v["type"] == "forecast" && v.get("outcome").is_some()
    });
    assert_eq!(settled["outcome"], "came_true", "{settled}");
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert_eq!(forecasts(&recs).len(), 2, "{:#?}", forecasts(&recs));
    let summary = of_type(&recs, "summary")[0];
    assert_eq!(
        summary["forecasts"],
        serde_json::json!({"made": 1, "came_true": 1, "false_alarms": 0, "missed": 0})
    );
    let row = summary_row(&recs, "tapfc0");
    assert!(
        row["diagnosis"]
            .as_str()
            .unwrap()
            .contains("The blackout was foreseen before the VM resumed here."),
        "{row}"
    );
}

/// libvirt's own MAC on the destination tap (fe:+guest MAC): nothing to foresee, and no
/// blackout comes.
#[test]
fn a_tap_with_libvirts_mac_is_not_at_risk() {
    require_root();
    let ns = Netns::new("tw-fc-clean").unwrap();
    let dir = Scratch::new("fc-clean");
    let mut tw = Tapwatch::start(
        &ns,
        &[
            "watch",
            "--json",
            "--interval",
            "0.2",
            "--libvirt-dir",
            dir.to_str().unwrap(),
            "--iface",
            "tapfc*",
        ],
    );
    tw.wait_for("the start", |v| v["type"] == "notice");
    incoming(&dir, "tapfc1", "no");
    let tap = VmTap::create(&ns, "tapfc1", TAP_LIBVIRT).unwrap();
    tw.wait_attached("tapfc1");
    // Two intervals with the identity known: still nothing foreseen.
    tw.wait_stats("tapfc1", |_| true);
    tw.wait_stats("tapfc1", |_| true);
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
        .unwrap();
    tw.wait_stats("tapfc1", |t| u(t, "from_vm_frames") == 2);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert!(forecasts(&recs).is_empty(), "{:#?}", forecasts(&recs));
    assert!(of_type(&recs, "verdict")
        .iter()
        .all(|v| v["state"] != "BLACKOUT"));
    assert!(of_type(&recs, "summary")[0].get("forecasts").is_none());
}
