//! Ending a blackout on the real kernel, with a real Linux guest: the guest is a network
//! stack in a namespace of its own behind a tap of its own, joined to the VM's tap by the
//! lab's frame relay, so its neighbour cache is Linux's. It learns its gateway at the tap's
//! MAC, the tap's MAC changes (as on a destination host whose tap has another MAC), and it
//! keeps sending to the old one; `tapwatch nudge` (or `--remediate`) ends that, or says why
//! not.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use common::*;
use diag_user::{
    frames::eui64_link_local,
    lab::{
        guest::{Guest, GuestConfig},
        ipv6::{self, LabIp},
        netns::{Netns, VmTap},
    },
    model::mac::MacAddr,
};
use serde_json::Value;

const GATEWAY: &str = "169.254.1.1";
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x65, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
/// The tap's MAC the guest learnt, and the one it has after the "migration".
const OLD: MacAddr = TAP_LIBVIRT;
const NEW: MacAddr = TAP_CALICO;

/// A host namespace with a routed tap (proxy ARP for the gateway, a /32 route to the VM, as
/// Calico sets them) and a real guest behind it that has learnt its gateway at `OLD`.
struct Stranded {
    host: Netns,
    guest: Guest,
    relay: Option<JoinHandle<()>>,
}

impl Stranded {
    fn new(tag: &str, reachable: Duration, bridged: bool) -> Self {
        Self::speaking(tag, reachable, bridged, LabIp::V4)
    }

    /// `ip`: the families the guest speaks. With IPv6 its default router is the tap's
    /// link-local address (EUI-64 of `OLD`), learnt from the host's Router Advertisement.
    fn speaking(tag: &str, reachable: Duration, bridged: bool, ip: LabIp) -> Self {
        require_root();
        let host = Netns::new(&format!("tw-nudge-{tag}")).unwrap();
        if ip.v6() {
            // Before the tap is made: it comes up with its EUI-64 link-local address.
            ipv6::enable(&host, true, &[]).unwrap();
        }
        let tap = Arc::new(VmTap::create(&host, "tapn0", OLD).unwrap());
        host.ip(&["addr", "add", &format!("{PEER}/32"), "dev", "lo"])
            .unwrap();
        // An uplink with a default route: the host answers for the gateway by proxy ARP
        // only where it routes the gateway's address elsewhere, and forwards.
        host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"])
            .unwrap();
        host.ip(&["link", "set", "up1", "up"]).unwrap();
        host.ip(&["addr", "add", "192.168.10.2/24", "dev", "up0"])
            .unwrap();
        host.ip(&["link", "set", "up0", "up"]).unwrap();
        host.ip(&["route", "add", "default", "via", "192.168.10.1"])
            .unwrap();
        host.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )
        .unwrap();
        if bridged {
            host.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
            host.ip(&["link", "set", "br0", "up"]).unwrap();
            host.ip(&["link", "set", "tapn0", "master", "br0"]).unwrap();
        } else {
            host.exec(
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.conf.tapn0.proxy_arp=1",
                    "net.ipv4.neigh.tapn0.proxy_delay=0",
                ],
            )
            .unwrap();
            host.ip(&["route", "add", &format!("{VM_IP}/32"), "dev", "tapn0"])
                .unwrap();
        }
        if ip.v6() {
            host.ip(&["-6", "addr", "add", &format!("{PEER6}/128"), "dev", "lo"])
                .unwrap();
            host.ip(&[
                "-6",
                "route",
                "add",
                &format!("{GUEST6}/128"),
                "dev",
                "tapn0",
            ])
            .unwrap();
        }
        let config = GuestConfig {
            name: "vm".into(),
            netns: format!("{}-guest", host.name()),
            mac: GUEST,
            ip: VM_IP,
            gateway: GATEWAY.parse().unwrap(),
            peer: PEER,
            reachable,
            routed: !bridged,
            v4: ip.v4(),
            ip6: ip.v6().then_some(GUEST6),
            peer6: ip.v6().then_some(PEER6),
        };
        let (guest, relay) = Guest::start(config, tap, OLD).unwrap();
        let s = Self {
            host,
            guest,
            relay: Some(relay),
        };
        if ip.v6() {
            ipv6::advertise_router(&s.host, "tapn0", OLD).unwrap();
            // Confirmed by its own probe, as a guest with traffic has it.
            wait_until("the guest to reach its IPv6 router", || {
                s.router_entry().contains("REACHABLE")
            });
        }
        if !bridged {
            wait_until("the guest to learn its gateway", || s.guest.knows_gateway());
        }
        s
    }

    /// The tap's MAC changes under the guest, which keeps its cached one; so does the
    /// tap's link-local address, as on a destination host whose tap was made with `NEW`.
    fn strand(&self) {
        self.host
            .ip(&["link", "set", "tapn0", "address", &NEW.to_string()])
            .unwrap();
        if self.guest.config.ip6.is_some() {
            let ll = |m: MacAddr| format!("{}/64", eui64_link_local(m));
            let _ = self
                .host
                .ip(&["-6", "addr", "del", &ll(OLD), "dev", "tapn0"]);
            let _ = self
                .host
                .ip(&["-6", "addr", "add", &ll(NEW), "dev", "tapn0", "nodad"]);
        }
        let tap = self.guest.tap().unwrap();
        self.guest.resume_on(tap, NEW);
    }

    /// `tapwatch nudge ARGS --json` on the host: its exit, its records, its stderr.
    fn nudge(&self, args: &[&str]) -> (std::process::ExitStatus, Vec<Value>, String) {
        let mut all = vec!["nudge"];
        all.extend_from_slice(args);
        all.push("--json");
        Tapwatch::start(&self.host, &all).finish()
    }

    /// `ip ARGS` in the guest's namespace: its output.
    fn guest_ip(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.guest.config.netns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The guest kernel's neighbour entry for its gateway: its MAC.
    fn gateway_entry(&self) -> String {
        self.guest_ip(&["neigh", "show", GATEWAY])
    }

    /// The guest kernel's neighbour entry for its first IPv6 router, the tap's link-local
    /// address of `OLD`.
    fn router_entry(&self) -> String {
        let old = eui64_link_local(OLD).to_string();
        self.guest_ip(&["-6", "neigh", "show", &old, "dev", "eth0"])
    }
}

impl Drop for Stranded {
    fn drop(&mut self) {
        self.guest.stop();
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn nudges(recs: &[Value]) -> Vec<&Value> {
    of_type(recs, "nudge")
}

/// Linux's default base reachable time: the guest would stay stranded 15 to 45 s and more.
const LINUX: Duration = Duration::from_secs(30);

#[test]
fn a_stranded_guest_recovers_within_milliseconds_of_the_nudge() {
    let s = Stranded::new("ok", LINUX, false);
    s.strand();
    let (status, recs, err) = s.nudge(&["tapn0", "--gateway", GATEWAY, "--wait", "3"]);
    assert_eq!(status.code(), Some(0), "{err}\n{recs:#?}");
    let n = nudges(&recs);
    assert_eq!(n.len(), 2, "{n:#?}");
    assert_eq!(n[0]["result"], "sent");
    assert_eq!(n[0]["gateway_ip"], GATEWAY);
    assert_eq!(n[0]["gateway_from"], "flag");
    assert_eq!(n[0]["guest_ip"], VM_IP.to_string());
    assert_eq!(n[0]["guest_ip_from"], "stale_frames");
    assert_eq!(n[0]["tap_mac"], NEW.to_string());
    assert_eq!(n[0]["guest_mac"], GUEST.to_string());
    assert_eq!(n[0]["stale_mac"], OLD.to_string());
    assert_eq!(n[1]["result"], "recovered", "{n:#?}");
    let ms = u(n[1], "recovered_after_ms");
    assert!(ms < 100, "recovered {ms} ms after the nudge");
    // Linux's own cache took it: its gateway is at the tap's new MAC.
    let entry = s.gateway_entry();
    assert!(entry.contains(&NEW.to_string()), "{entry}");
    // The relay's truth: the stale window closed.
    let w = s.guest.windows();
    assert!(w.last().is_some_and(|w| w.end_ns.is_some()), "{w:?}");
}

#[test]
fn a_wrong_gateway_does_not_help_and_tapwatch_says_so() {
    let s = Stranded::new("wrong", LINUX, false);
    s.strand();
    let (status, recs, err) = s.nudge(&["tapn0", "--gateway", "169.254.1.99", "--wait", "2"]);
    assert_eq!(status.code(), Some(1), "{err}\n{recs:#?}");
    let n = nudges(&recs);
    assert_eq!(n.len(), 2, "{n:#?}");
    assert_eq!(n[1]["result"], "no_effect");
    assert!(u(n[1], "stale_after") > 0, "{:#}", n[1]);
    let msg = n[1]["message"].as_str().unwrap();
    assert!(msg.contains("may not be the gateway it uses"), "{msg}");
    assert!(s.gateway_entry().contains(&OLD.to_string()));
}

#[test]
fn words_say_what_was_sent_where_the_addresses_came_from_and_the_outcome() {
    let s = Stranded::new("words", LINUX, false);
    s.strand();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", s.host.name(), tw_bin()])
        .args(["nudge", "tapn0", "--gateway", GATEWAY, "--wait", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "tapn0: nudged at",
        &format!("ARP request: {GATEWAY} is at {NEW}, to {VM_IP}"),
        "given by --gateway",
        "from the VM's stale frames",
        "RECOVERED: the guest sent to the tap's MAC",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}

#[test]
fn dry_run_sends_nothing() {
    let s = Stranded::new("dry", LINUX, false);
    s.strand();
    let (status, recs, err) = s.nudge(&["tapn0", "--gateway", GATEWAY, "--dry-run"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let n = nudges(&recs);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["result"], "dry_run");
    assert!(n[0]["bytes"]
        .as_str()
        .unwrap()
        .starts_with("fa163eaabbcc0061feedcafe0806"));
    assert!(s.gateway_entry().contains(&OLD.to_string()), "untouched");
}

#[test]
fn a_bridged_tap_is_refused_and_nothing_is_written() {
    let s = Stranded::new("bridged", LINUX, true);
    let (status, recs, err) = s.nudge(&["tapn0", "--gateway", GATEWAY, "--force", "--wait", "1"]);
    assert_eq!(status.code(), Some(5), "{err}\n{recs:#?}");
    let n = nudges(&recs);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["result"], "refused");
    assert!(n[0]["message"].as_str().unwrap().contains("bridge"));
    assert!(n[0].get("bytes").is_none());
    // Had the frame reached the guest, its kernel would hold the gateway at the tap's MAC.
    let entry = s.gateway_entry();
    assert!(
        !entry.contains(&OLD.to_string()),
        "nothing reached the guest: {entry}"
    );
}

#[test]
fn no_stale_window_no_nudge_unless_forced_and_bad_input_is_refused() {
    let s = Stranded::new("calm", LINUX, false);
    let (status, recs, _) = s.nudge(&["tapn0", "--gateway", GATEWAY, "--wait", "1"]);
    assert_eq!(status.code(), Some(5));
    let n = nudges(&recs);
    assert!(
        n[0]["message"].as_str().unwrap().contains("give --force"),
        "{n:#?}"
    );
    for (args, want) in [
        (vec!["nudge", "nosuchvm"], "no interface and no VM is named"),
        (
            vec!["nudge", "tapn0", "--gateway", "10.0.0.0/8=fe80::1"],
            "two families",
        ),
        (
            vec!["nudge", "tapn0", "--gateway", "banana"],
            "not an IP address",
        ),
    ] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", s.host.name(), tw_bin()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn remediate_nudges_once_at_the_blackouts_start() {
    let s = Stranded::new("remediate", LINUX, false);
    let mut tw = json_watch(
        &s.host,
        &["--iface", "tapn0", "--remediate", "--gateway", GATEWAY],
    );
    tw.wait_attached("tapn0");
    s.strand();
    let rec = tw.wait_for("the nudge's outcome", |v| {
        v["type"] == "nudge" && v["result"] != "sent"
    });
    assert_eq!(rec["result"], "recovered", "{rec:#}");
    assert_eq!(rec["trigger"], "remediate");
    // Another second of traffic: no further nudge.
    tw.wait_stats("tapn0", |t| u(t, "from_vm_frames") > 0);
    std::thread::sleep(Duration::from_secs(1));
    let (_, recs, _) = tw.stop(libc::SIGTERM);
    let n = nudges(&recs);
    assert_eq!(
        n.iter().filter(|v| v["result"] == "sent").count(),
        1,
        "{n:#?}"
    );
    assert!(
        n[0]["message"].as_str().unwrap().contains("this tap had"),
        "{:#}",
        n[0]
    );
    assert!(s.gateway_entry().contains(&NEW.to_string()));
    let row = summary_row(&recs, "tapn0");
    assert!(
        row["diagnosis"].as_str().unwrap().contains("nudge"),
        "{row:#}"
    );
}

#[test]
fn remediate_stops_after_three_nudges_that_do_not_help() {
    // A long reachable time: the guest must not recover on its own during the test.
    let s = Stranded::new("limits", Duration::from_secs(120), false);
    let mut tw = json_watch(
        &s.host,
        &[
            "--iface",
            "tapn0",
            "--remediate",
            "--gateway",
            "169.254.1.99",
        ],
    );
    tw.wait_attached("tapn0");
    s.strand();
    let refused = tw.wait_for("remediate to give up", |v| {
        v["type"] == "nudge" && v["result"] == "refused"
    });
    assert!(
        refused["message"].as_str().unwrap().contains("3 nudges"),
        "{refused:#}"
    );
    let sent: Vec<&Value> = tw
        .seen
        .iter()
        .filter(|v| v["type"] == "nudge" && v["result"] == "sent")
        .collect();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    let ts = |v: &Value| chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap();
    for pair in sent.windows(2) {
        let gap = ts(pair[1]) - ts(pair[0]);
        assert!(gap.num_milliseconds() >= 5000, "nudges {gap} apart");
    }
    let (_, recs, _) = tw.stop(libc::SIGTERM);
    let no_effect = nudges(&recs)
        .iter()
        .filter(|v| v["result"] == "no_effect")
        .count();
    assert_eq!(no_effect, 3);
}

/// An IPv6-only guest whose router was the tap's link-local address of its old MAC: the
/// nudge claims that router at the tap's MAC (an override Neighbour Advertisement) and
/// advertises the tap's link-local address of now as a router; Linux's own cache and
/// routing table take both.
#[test]
fn an_ipv6_guest_re_learns_its_router_and_moves_its_default_route() {
    let s = Stranded::speaking("v6", LINUX, false, LabIp::V6);
    s.strand();
    let (status, recs, err) = s.nudge(&["tapn0", "--wait", "3"]);
    assert_eq!(status.code(), Some(0), "{err}\n{recs:#?}");
    let n = nudges(&recs);
    assert_eq!(n.len(), 2, "{n:#?}");
    let (old_router, new_router) = (eui64_link_local(OLD), eui64_link_local(NEW));
    assert_eq!(n[0]["result"], "sent");
    assert_eq!(n[0]["frame"], "neighbor_advert");
    assert_eq!(n[0]["gateway_ip"], old_router.to_string());
    assert_eq!(n[0]["gateway_from"], "derived_from_old_mac");
    assert_eq!(n[0]["guest_ip"], GUEST6.to_string());
    assert_eq!(n[0]["guest_ip_from"], "stale_frames");
    let ra = &n[0]["more_frames"][0];
    assert_eq!(ra["frame"], "router_advert", "{:#}", n[0]);
    assert_eq!(ra["gateway_ip"], new_router.to_string());
    assert_eq!(ra["gateway_from"], "tap_link_local");
    assert_eq!(n[1]["result"], "recovered", "{n:#?}");
    let ms = u(n[1], "recovered_after_ms");
    assert!(ms < 100, "recovered {ms} ms after the nudge");
    // Linux's own cache and routes: the old router at the tap's MAC, and the tap's
    // link-local address of now a default router.
    let entry = s.router_entry();
    assert!(entry.contains(&NEW.to_string()), "{entry}");
    let routes = s.guest_ip(&["-6", "route", "show", "default"]);
    assert!(routes.contains(&new_router.to_string()), "{routes}");
    let w = s.guest.windows();
    assert!(w.last().is_some_and(|w| w.end_ns.is_some()), "{w:?}");
}

/// A dual-stack guest: one nudge writes the ARP request and the IPv6 frames, each said
/// with where its addresses came from, and both of its caches take them.
#[test]
fn a_dual_stack_guest_gets_both_nudges_in_one() {
    let s = Stranded::speaking("dual", LINUX, false, LabIp::Dual);
    s.strand();
    let (status, recs, err) = s.nudge(&["tapn0", "--gateway", GATEWAY, "--wait", "3"]);
    assert_eq!(status.code(), Some(0), "{err}\n{recs:#?}");
    let n = nudges(&recs);
    assert_eq!(n[0]["frame"], "arp", "{n:#?}");
    assert_eq!(n[0]["gateway_from"], "flag");
    let more: Vec<&str> = n[0]["more_frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["frame"].as_str().unwrap())
        .collect();
    assert_eq!(more, ["neighbor_advert", "router_advert"], "{:#}", n[0]);
    assert_eq!(
        n[0]["more_frames"][0]["gateway_from"],
        "derived_from_old_mac"
    );
    assert_eq!(n[1]["result"], "recovered", "{n:#?}");
    assert!(s.gateway_entry().contains(&NEW.to_string()));
    let entry = s.router_entry();
    assert!(entry.contains(&NEW.to_string()), "{entry}");
}
