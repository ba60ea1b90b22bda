//! IPv6 neighbour discovery on a real tap, in every datapath: router and neighbour
//! solicitations and advertisements are named and counted exactly, the guest's announcing
//! advertisement too, a unicast solicitation to the tap's old MAC is a stale probe, IPv6
//! data to the old MAC makes the blackout, and only data to the new MAC ends it (an
//! answer to the host's solicitation does not). Each test has its own namespace.

mod common;

use std::net::Ipv6Addr;

use common::*;
use diag_common::frame::{NA_FLAG_OVERRIDE, NA_FLAG_SOLICITED};
use diag_user::{
    frames::{self, eui64_link_local, solicited_node, RouterAdvert, V6Ends, ALL_NODES},
    lab::netns::{Netns, VmTap},
    nudge::send::TapWriter,
};
use serde_json::Value;

every_datapath!(an_ipv6_guest_s_blackout_in_neighbour_discovery_words);

/// An ND counter of a row: absent when none.
fn nd(row: &Value, field: &str) -> u64 {
    row[field].as_u64().unwrap_or(0)
}

fn an_ipv6_guest_s_blackout_in_neighbour_discovery_words(datapath: &str) {
    require_root();
    let ns = Netns::new("tw-v6").unwrap();
    // A tap there from the start, so that the one under test appears while watched (the
    // drop-driven datapath probes it as it would a migration's destination tap).
    let _there = VmTap::create(&ns, "tapv6x", TAP_LIBVIRT).unwrap();
    let mut tw = json_watch_with(
        &ns,
        datapath,
        &["--libvirt-dir", "/nonexistent", "--probe-linger", "60"],
    );
    tw.wait_attached("tapv6x");
    let tap = VmTap::create(&ns, "tapv6a", TAP_LIBVIRT).unwrap();
    let ifindex = u(&tw.wait_attached("tapv6a"), "ifindex") as u32;

    let guest: Ipv6Addr = "2001:db8::10".parse().unwrap();
    let guest_ll = eui64_link_local(GUEST);
    let old_router = eui64_link_local(TAP_LIBVIRT);
    let new_router = eui64_link_local(TAP_CALICO);
    let all = V6Ends::to_group(GUEST, guest_ll, ALL_NODES);
    // The guest comes up: it asks for routers and announces itself; the host advertises.
    tap.send(&frames::router_solicit(GUEST, guest_ll)).unwrap();
    tap.send(&frames::neighbor_advert(all, guest, NA_FLAG_OVERRIDE))
        .unwrap();
    let ra = frames::router_advert(
        V6Ends::to_group(TAP_LIBVIRT, old_router, ALL_NODES),
        RouterAdvert {
            router_lifetime: 1800,
            prefix: None,
        },
    );
    ns.enter(move || TapWriter::open().unwrap().send("tapv6a", ifindex, &ra))
        .unwrap()
        .unwrap();
    let to_router_group = V6Ends::to_group(GUEST, guest_ll, solicited_node(old_router));
    tap.send(&frames::neighbor_solicit(to_router_group, old_router))
        .unwrap();
    tw.wait_stats("tapv6a", |t| {
        nd(t, "router_solicits") == 1
            && nd(t, "router_adverts") == 1
            && nd(t, "neighbor_solicits") == 1
            && nd(t, "unsolicited_nas") == 1
    });

    ns.ip(&["link", "set", "tapv6a", "address", &TAP_CALICO.to_string()])
        .unwrap();
    tw.wait_for("mac_change", |v| v["type"] == "mac_change");
    let unicast = |dst_mac, dst| V6Ends {
        src_mac: GUEST,
        dst_mac,
        src: guest,
        dst,
    };
    let peer: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
    for _ in 0..3 {
        tap.send(&frames::udp6(unicast(TAP_LIBVIRT, peer), 100))
            .unwrap();
    }
    // Linux probing its stale router entry: unicast solicitations to the cached MAC.
    let probe = frames::neighbor_solicit(
        V6Ends {
            src: guest_ll,
            ..unicast(TAP_LIBVIRT, old_router)
        },
        old_router,
    );
    for _ in 0..2 {
        tap.send(&probe).unwrap();
    }
    // The guest answers the host's solicitation at the tap's new MAC: not a sign that its
    // traffic is addressed right; the blackout goes on.
    let answer = frames::neighbor_advert(
        V6Ends {
            src: guest_ll,
            ..unicast(TAP_CALICO, new_router)
        },
        guest_ll,
        NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
    );
    tap.send(&answer).unwrap();
    tw.wait_stats("tapv6a", |t| nd(t, "neighbor_adverts") == 2);
    tap.send(&frames::udp6(unicast(TAP_CALICO, peer), 100))
        .unwrap();
    tw.wait_for("dst_match", |v| v["kind"] == "dst_match");
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");

    let row = summary_row(&recs, "tapv6a");
    let counts: Vec<u64> = [
        "router_solicits",
        "router_adverts",
        "neighbor_solicits",
        "neighbor_adverts",
        "unsolicited_nas",
        "dst_mismatch_frames",
    ]
    .iter()
    .map(|f| nd(row, f))
    .collect();
    assert_eq!(counts, [1, 1, 3, 2, 1, 5], "{row:#}");
    let one = |kind: &str| {
        let f = frames(&recs, "tapv6a", kind);
        assert!(!f.is_empty(), "no {kind} in {recs:#?}");
        f
    };
    let rs = one("router_solicit");
    assert_eq!(rs[0]["src_ip"], guest_ll.to_string());
    let ann = one("unsolicited_na");
    assert_eq!(ann[0]["target_ip"], guest.to_string());
    assert_eq!(
        ann[0]["na_flags"],
        serde_json::json!({"router": false, "solicited": false, "override": true})
    );
    let ra = one("router_advert");
    assert_eq!(ra[0]["direction"], "to_vm");
    assert_eq!(ra[0]["src_ip"], old_router.to_string());
    let ns_frames = one("neighbor_solicit");
    assert_eq!(ns_frames.len(), 3);
    assert!(ns_frames
        .iter()
        .all(|f| f["target_ip"] == old_router.to_string()));
    let stale: Vec<_> = ns_frames
        .iter()
        .filter(|f| f["dst_mismatch"] == true)
        .collect();
    assert_eq!(stale.len(), 2, "the unicast probes to the old MAC");
    let na = one("neighbor_advert");
    assert_eq!(na[0]["na_flags"]["solicited"], true);
    assert_eq!(na[0]["na_flags"]["router"], false);
    let verdicts: Vec<_> = of_type(&recs, "verdict")
        .into_iter()
        .filter(|v| v["ifname"] == "tapv6a")
        .collect();
    let states: Vec<&str> = verdicts
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["OK", "BLACKOUT", "RECOVERED"], "{verdicts:#?}");
    let matched = one("dst_match");
    assert_eq!(matched.len(), 1);
    assert!(matched[0]["ts"].as_str() > na[0]["ts"].as_str());
    assert_eq!(row["state"], "RECOVERED");
}
