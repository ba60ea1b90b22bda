use super::{fixtures::*, *};
use crate::model::{Mode, State, TapRow};

fn run(engine: &mut Engine, recs: &[Record]) -> Vec<(String, &'static str, Option<u64>)> {
    let mut out = Vec::new();
    for r in recs {
        for v in engine.apply(r) {
            if let Record::Verdict { ifname, fields, .. } = v {
                out.push((ifname, fields.state.as_str(), fields.blackout_ms));
            }
        }
    }
    out
}

fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}

/// The incident's two parts on one clock: the network delivers to the VM 3.9 s after
/// its first RARP, the guest's stale gateway MAC keeps its frames dropped until 30.1 s;
/// the diagnosis names the longer part first, and the summary row carries the gaps.
#[test]
fn the_outage_in_its_parts() {
    let mut e = engine();
    let mut recs = vec![attached(0, "tapA", NEW, "routed")];
    // A stale frame a moment before QEMU's first RARP is still this migration's.
    recs.push(frame(995, "tapA", "from_vm", "dst_mismatch", OLD));
    recs.extend((0..5).map(|i| frame(1000 + i * 150, "tapA", "from_vm", "rarp", BCAST)));
    recs.push(frame(1200, "tapA", "from_vm", "dst_mismatch", OLD));
    recs.push(frame(4900, "tapA", "to_vm", "inbound", GUEST));
    // Only the first delivered frame counts.
    recs.push(frame(5900, "tapA", "to_vm", "inbound", GUEST));
    let before = e.apply(&recs[0]);
    assert_eq!(before.len(), 1);
    for r in &recs[1..] {
        e.apply(r);
    }
    let t = e.tap("tapA").unwrap();
    assert_eq!(t.switchover(), Some(at(1000)));
    assert_eq!(t.inbound_gap_ms(), Some(3900));
    assert_eq!(t.outbound_gap_ms(), None, "the stale frames go on");
    let f = e.fields(t, at(6000));
    assert_eq!(
        (f.switchover_ts, f.inbound_gap_ms, f.outbound_gap_ms),
        (Some(Some(at(1000))), Some(Some(3900)), Some(None))
    );
    let v = e.apply(&frame(31_100, "tapA", "from_vm", "dst_match", NEW));
    let Record::Verdict { fields, .. } = &v[0] else {
        panic!("{v:?}")
    };
    assert_eq!(fields.state, State::Recovered);
    assert_eq!(fields.outbound_gap_ms, Some(Some(30_100)));
    assert!(
        fields.diagnosis.contains(
            "the network took 3.9 s to deliver to the VM again; the guest's stale \
             gateway MAC kept its replies dropped for 26 s more"
        ),
        "{}",
        fields.diagnosis
    );
    assert!(
        fields.diagnosis.contains("RARP announce seen at")
            && fields.diagnosis.contains("(5 in all)"),
        "{}",
        fields.diagnosis
    );
    let json = serde_json::to_value(fields).unwrap();
    assert_eq!(json["inbound_gap_ms"], 3900);
    assert_eq!(json["outbound_gap_ms"], 30_100);
    assert_eq!(
        json["switchover_ts"],
        serde_json::to_value(at(1000)).unwrap()
    );
}

/// The destination's timeline has libvirt's pause and resume, also when the paused
/// domain was known before its tap's `attached` record.
#[test]
fn libvirt_pause_and_resume_in_the_timeline() {
    let mut e = engine();
    let vm = |state: &str, reason: &str| VmInterface {
        domain: "d".into(),
        tap: "tapA".into(),
        state: Some(state.into()),
        reason: Some(reason.into()),
        ..VmInterface::default()
    };
    let identity = |ms, vm| Record::Identity {
        ts: at(ms),
        ifname: "tapA".into(),
        libvirt: Some(vm),
    };
    e.apply(&identity(0, vm("paused", "migration")));
    e.apply(&attached(1, "tapA", NEW, "routed"));
    e.apply(&identity(70, vm("running", "migrated")));
    let t = e.tap("tapA").unwrap();
    assert_eq!((t.paused_at, t.resumed_at), (Some(at(1)), Some(at(70))));
    let notes: Vec<&str> = t.timeline.iter().map(|e| e.what.as_str()).collect();
    assert!(
        notes.contains(&"libvirt: the VM is paused for a migration")
            && notes.contains(&"libvirt: the VM runs again"),
        "{notes:?}"
    );
}

/// Without a RARP, a tap that appeared while watched switches over at the VM's first
/// frame; without stale frames the host accepted the VM at once (0); a tap that was
/// there from the start, with a running VM, saw no migration at all.
#[test]
fn without_an_announce_the_first_frame_is_the_switch_over() {
    let mut e = engine();
    let mut new_tap = attached(0, "tapN", NEW, "routed");
    if let Record::Attached { appeared, .. } = &mut new_tap {
        *appeared = true;
    }
    run(
        &mut e,
        &[
            new_tap,
            attached(0, "tapO", NEW, "routed"),
            frame(700, "tapN", "from_vm", "arp_request", BCAST),
            stats(1000, "tapO", 10, 0),
        ],
    );
    let n = e.tap("tapN").unwrap();
    assert_eq!(n.switchover(), Some(at(700)));
    assert_eq!((n.inbound_gap_ms(), n.outbound_gap_ms()), (None, Some(0)));
    let o = e.tap("tapO").unwrap();
    assert_eq!((o.switchover(), o.outbound_gap_ms()), (None, None));
    assert!(o.diagnosis(at(1000)).contains("No RARP seen."));
    let empty = engine();
    assert!(empty.taps().is_empty());
}

/// Records of older versions read back without the anatomy and write back without it.
#[test]
fn older_verdicts_keep_their_bytes() {
    let line = r#"{"vm":"v","state":"OK","blackout_ms":null,"diagnosis":"d"}"#;
    let f: VerdictFields = serde_json::from_str(line).unwrap();
    assert_eq!(f.inbound_gap_ms, None);
    assert_eq!(serde_json::to_string(&f).unwrap(), line);
    let line = r#"{"vm":"v","state":"OK","blackout_ms":null,"switchover_ts":null,"inbound_gap_ms":null,"outbound_gap_ms":null,"diagnosis":"d"}"#;
    let f: VerdictFields = serde_json::from_str(line).unwrap();
    assert_eq!(f.inbound_gap_ms, Some(None));
    assert_eq!(serde_json::to_string(&f).unwrap(), line);
}

#[test]
fn stale_mac_blackout_and_recovery() {
    let mut e = engine();
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    recs.extend(stale_mac_story("tapA", 0));
    let verdicts = run(&mut e, &recs);
    assert_eq!(
        verdicts,
        [
            ("tapA".to_string(), "OK", None),
            ("tapA".to_string(), "BLACKOUT", Some(0)),
            ("tapA".to_string(), "RECOVERED", Some(19_910)),
        ]
    );
    let t = e.tap("tapA").unwrap();
    assert_eq!(t.blackout.unwrap().stale_mac, OLD);
    assert_eq!(t.first_announce, Some(at(200)));
    let d = t.diagnosis(at(30_000));
    assert!(d.contains("Blackout of 19910 ms"), "{d}");
    assert!(d.contains("after the guest re-ARPed"), "{d}");
    assert!(t
        .timeline
        .iter()
        .any(|e| e.what.contains("recovered after 19910 ms")));
}

#[test]
fn blackout_diagnosis_names_both_macs() {
    let mut e = engine();
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
    run(&mut e, &recs);
    let t = e.tap("tapA").unwrap();
    assert_eq!(t.state, State::Blackout);
    let d = t.diagnosis(at(1000));
    assert!(
        d.starts_with(&format!(
            "VM still sends to fe:16:3e:aa:bb:cc (the tap's MAC until {}, now 00:61:fe:ed:ca:fe); \
             the kernel drops these frames as PACKET_OTHERHOST.",
            at(100).clock()
        )),
        "{d}"
    );
    assert!(d.contains("The blackout ends when the guest re-ARPs, or at once when told"));
    assert!(d.contains("RARP announce seen"));
    assert!(d.contains("No GARP seen."));
    assert_eq!(t.blackout_ms(at(1500)), Some(1000));
}

#[test]
fn mismatch_on_a_bridged_tap_is_no_blackout() {
    let mut e = engine();
    let recs = [
        attached(0, "vnet3", OLD, "bridged"),
        frame(10, "vnet3", "from_vm", "dst_mismatch", NEW),
        stats(1000, "vnet3", 40, 40),
        frame(1200, "vnet3", "from_vm", "dst_mismatch", NEW),
    ];
    let verdicts = run(&mut e, &recs);
    assert_eq!(verdicts, [("vnet3".to_string(), "OK", None)]);
    let d = e.tap("vnet3").unwrap().diagnosis(at(1300));
    assert!(
        d.contains("40 frames to other MACs: normal on a bridged tap"),
        "{d}"
    );
}

#[test]
fn joining_a_bridge_ends_a_blackout() {
    let mut e = engine();
    let recs = [
        attached(0, "vnet5", NEW, "routed"),
        frame(10, "vnet5", "from_vm", "dst_mismatch", OLD),
        Record::ModeChange {
            ts: at(40),
            ifname: "vnet5".into(),
            old_mode: Mode::Routed,
            new_mode: Mode::Bridged,
            master: Some("br0".into()),
        },
        frame(50, "vnet5", "from_vm", "dst_mismatch", OLD),
    ];
    let states: Vec<_> = run(&mut e, &recs).into_iter().map(|v| v.1).collect();
    assert_eq!(states, ["OK", "BLACKOUT", "OK"]);
    assert_eq!(e.tap("vnet5").unwrap().mode, Mode::Bridged);
}

#[test]
fn tap_deleted_mid_blackout() {
    let mut e = engine();
    let recs = [
        attached(0, "tapA", NEW, "routed"),
        frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
        Record::Detached {
            ts: at(2600),
            ifname: "tapA".into(),
            reason: "interface removed".into(),
        },
        stats(3000, "tapA", 10, 10),
    ];
    let verdicts = run(&mut e, &recs);
    assert_eq!(
        verdicts.last().unwrap(),
        &("tapA".to_string(), "GONE", Some(2500))
    );
    let t = e.tap("tapA").unwrap();
    assert_eq!(t.blackout_ms(at(9999)), Some(2500), "frozen at removal");
    let d = t.diagnosis(at(9999));
    assert!(d.contains("removed 2500 ms into the blackout"), "{d}");
}

#[test]
fn two_vms_at_once() {
    let mut e = engine();
    let mut recs = vec![
        attached(0, "tapA", OLD, "routed"),
        attached(0, "tapB", OLD, "routed"),
    ];
    recs.extend(stale_mac_story("tapA", 0));
    // tapB: a clean migration, its frames all reach the tap.
    recs.push(frame(300, "tapB", "from_vm", "rarp", BCAST));
    recs.push(stats(1000, "tapB", 50, 0));
    let verdicts = run(&mut e, &recs);
    let of = |tap: &str| {
        verdicts
            .iter()
            .filter(|v| v.0 == tap)
            .map(|v| v.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("tapA"), ["OK", "BLACKOUT", "RECOVERED"]);
    assert_eq!(of("tapB"), ["OK"]);
    assert_eq!(e.tap("tapB").unwrap().blackout, None);
}

#[test]
fn quiet_and_back() {
    let mut e = engine();
    let recs = [
        attached(0, "tapQ", NEW, "routed"),
        stats(1000, "tapQ", 10, 0),
        stats(2000, "tapQ", 10, 0),
        stats(6000, "tapQ", 10, 0),
        stats(7000, "tapQ", 12, 0),
    ];
    let verdicts = run(&mut e, &recs);
    let states: Vec<_> = verdicts.iter().map(|v| v.1).collect();
    assert_eq!(states, ["OK", "QUIET", "OK"]);
    assert!(e.tap("tapQ").unwrap().from_vm_fps > 1.9);
}

/// The stale frames of a real guest race the stats interval: counted after the
/// kernel-timed recovery, they are the closed window's, in records with the window and
/// in older records alike; a stale frame timed before the recovery but reported after
/// it is the closed window's too. Only a stale frame after the recovery, or a window
/// the datapath says opened after it, is a new blackout, from the kernel's time.
#[test]
fn counts_and_frames_older_than_the_recovery_belong_to_it() {
    for with_window in [true, false] {
        let st = |ms, n, since: Option<i64>| {
            if with_window {
                stats_window(ms, "tapA", 100 + n, n, since)
            } else {
                stats(ms, "tapA", 100 + n, n)
            }
        };
        let mut e = engine();
        let recs = [
            attached(0, "tapA", NEW, "routed"),
            frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
            st(1000, 406, Some(100)),
            // Four more stale frames, sampled out, then the recovery at 1950.
            frame(1950, "tapA", "from_vm", "dst_match", NEW),
            // Another CPU's stale frame from before the recovery, reported after it.
            frame(1940, "tapA", "from_vm", "dst_mismatch", OLD),
            st(2000, 410, None),
            st(3000, 410, None),
        ];
        let states: Vec<_> = run(&mut e, &recs).into_iter().map(|v| v.1).collect();
        assert_eq!(
            states,
            ["OK", "BLACKOUT", "RECOVERED"],
            "window {with_window}"
        );
        let t = e.tap("tapA").unwrap();
        assert_eq!(t.blackout.unwrap().end, Some(at(1950)));
        assert_eq!(t.blackout_ms(at(3000)), Some(1850));

        // A stale frame after the recovery is a new blackout at its own time.
        let v = run(
            &mut e,
            &[frame(3100, "tapA", "from_vm", "dst_mismatch", OLD)],
        );
        assert_eq!(v, [("tapA".to_string(), "BLACKOUT", Some(0))]);
        assert_eq!(e.tap("tapA").unwrap().blackout.unwrap().start, at(3100));
    }
}

/// A window that only the counters show (its frames' events lost), opened after the
/// last recovery: a blackout from the window's kernel time, not the interval's.
#[test]
fn a_new_window_only_the_counters_show() {
    let mut e = engine();
    let recs = [
        attached(0, "tapA", NEW, "routed"),
        frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
        frame(500, "tapA", "from_vm", "dst_match", NEW),
        stats_window(1000, "tapA", 20, 10, None),
        stats_window(2000, "tapA", 30, 12, Some(1400)),
    ];
    let mut out = Vec::new();
    for r in &recs {
        out.extend(e.apply(r));
    }
    let Record::Verdict { ts, fields, .. } = out.last().unwrap() else {
        panic!("{out:?}")
    };
    assert_eq!((fields.state, *ts), (State::Blackout, at(1400)));
    assert_eq!(e.tap("tapA").unwrap().blackout_ms(at(2000)), Some(600));
    // The window the blackout came from stays one blackout.
    assert!(e
        .apply(&stats_window(3000, "tapA", 40, 14, Some(1400)))
        .is_empty());
}

#[test]
fn lost_mismatch_samples_still_make_a_blackout() {
    let mut e = engine();
    let recs = [
        attached(0, "tapL", NEW, "routed"),
        stats(1000, "tapL", 10, 0),
        stats(2000, "tapL", 30, 20),
    ];
    let verdicts = run(&mut e, &recs);
    assert_eq!(verdicts.last().unwrap().1, "BLACKOUT");
}

fn vm(reason: &str) -> VmInterface {
    VmInterface {
        domain: "instance-0000002b".into(),
        uuid: None,
        nova_name: Some("web-1".into()),
        tap: "tapA".into(),
        guest_mac: Some(GUEST),
        iface_type: "ethernet".into(),
        managed: Some(false),
        bridge: None,
        reason: Some(reason.into()),
        state: None,
        cpu: None,
        ..VmInterface::default()
    }
}

#[test]
fn a_vm_booted_here_is_not_told_its_announce_failed() {
    for (reason, complains) in [("booted", false), ("migrated", true)] {
        let mut e = engine();
        let recs = [
            Record::Identity {
                ts: at(0),
                ifname: "tapA".into(),
                libvirt: Some(vm(reason)),
            },
            attached(0, "tapA", NEW, "routed"),
            stats(1000, "tapA", 10, 0),
        ];
        run(&mut e, &recs);
        let d = e.tap("tapA").unwrap().diagnosis(at(1000));
        assert_eq!(
            d.contains("announce-self did not run"),
            complains,
            "{reason}: {d}"
        );
        assert_eq!(
            d.contains("started on this host"),
            !complains,
            "{reason}: {d}"
        );
    }
}

/// A domain that appears, changes or goes while the tap is watched renames its row, and
/// a verdict record says so.
#[test]
fn identities_that_change_while_watched() {
    let mut e = engine();
    let mut recs = vec![attached(0, "tapA", NEW, "routed")];
    let mut web2 = vm("migrated");
    web2.nova_name = Some("web-2".into());
    for (ms, v) in [(100, Some(vm("migrated"))), (200, Some(web2)), (300, None)] {
        recs.push(Record::Identity {
            ts: at(ms),
            ifname: "tapA".into(),
            libvirt: v,
        });
    }
    let mut names = Vec::new();
    for r in &recs {
        for v in e.apply(r) {
            if let Record::Verdict { fields, .. } = v {
                names.push(fields.vm);
            }
        }
    }
    assert_eq!(names, ["tapA", "web-1", "web-2", "tapA"]);
}

#[test]
fn libvirt_identity_and_unusual_tap_mac() {
    let vm = VmInterface {
        domain: "instance-0000002a".into(),
        uuid: None,
        nova_name: Some("web-frontend-3".into()),
        tap: "tapA".into(),
        guest_mac: Some(GUEST),
        iface_type: "ethernet".into(),
        managed: Some(false),
        bridge: None,
        reason: None,
        state: None,
        cpu: None,
        ..VmInterface::default()
    };
    let mut e = Engine::new(EngineConfig::default());
    let mut recs = vec![
        Record::Identity {
            ts: at(0),
            ifname: "tapA".into(),
            libvirt: Some(vm),
        },
        attached(0, "tapA", OLD, "routed"),
    ];
    recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
    let mut out = Vec::new();
    for r in &recs {
        out.extend(e.apply(r));
    }
    let Record::Verdict { fields, .. } = out.last().unwrap() else {
        panic!()
    };
    assert_eq!(fields.vm, "web-frontend-3");
    assert_eq!(fields.state, "BLACKOUT");
    assert!(fields
        .diagnosis
        .contains("The tap MAC is not fe:+guest MAC, as happens with interface managed='no'"));
    let t = e.tap("tapA").unwrap();
    assert!(t.tap_mac_unusual());
    assert_eq!(t.guest_mac(), Some(GUEST));
}

/// A summary row finds its tap at once: a replayed bundle of 65,536 taps (the most an
/// analysis follows) searched every tap for every row.
#[test]
fn a_summary_of_65536_taps_is_applied_in_linear_time() {
    let mut e = engine();
    let n = 65_536;
    let names: Vec<String> = (0..n).map(|i| format!("tap{i}")).collect();
    for name in &names {
        e.apply(&attached(0, name, NEW, "routed"));
    }
    let row = |name: &String| crate::model::SummaryRow {
        counters: TapRow {
            ifname: name.clone(),
            rarp_frames: 1,
            ..TapRow::default()
        },
        // One ifindex for all, as a hostile bundle may give: names tell them apart.
        ifindex: 7,
        mode: Mode::Routed,
        mac_history: Vec::new(),
        detached: false,
        verdict: None,
    };
    // A row of a tap never attached is passed over.
    let mut rows = vec![row(&"gone".to_string())];
    rows.extend(names.iter().map(row));
    let mut summary = Record::Summary {
        ts: at(1000),
        taps: rows,
        forecasts: None,
    };
    e.apply(&summary);
    e.annotate_summary(&mut summary);
    let Record::Summary { taps, .. } = summary else {
        unreachable!()
    };
    assert!(taps[1..].iter().all(|r| r.verdict.is_some()) && taps[0].verdict.is_none());
    assert!(e.taps().iter().all(|t| t.counters.rarp_frames == 1));
}

/// A tap whose MAC changed 100,000 times (a hostile bundle) keeps a bounded history:
/// each verdict's diagnosis looked through all of it.
#[test]
fn a_tap_whose_mac_keeps_changing_keeps_a_bounded_history() {
    let mut e = engine();
    e.apply(&attached(0, "tapA", NEW, "routed"));
    let n = 100_000;
    for i in 0..n {
        e.apply(&Record::MacChange {
            ts: at(i),
            ifname: "tapA".into(),
            old_mac: Some(if i % 2 == 0 { NEW } else { OLD }),
            new_mac: Some(if i % 2 == 0 { OLD } else { NEW }),
        });
    }
    let mut verdicts = 0;
    for i in 0..n {
        let t = n + i * 2;
        verdicts += e
            .apply(&frame(t, "tapA", "from_vm", "dst_mismatch", GUEST))
            .len();
        verdicts += e
            .apply(&frame(t + 1, "tapA", "from_vm", "dst_match", NEW))
            .len();
    }
    assert_eq!(verdicts as i64, 2 * n);
    assert!(e.taps()[0].mac_history.len() <= 256);
}

/// The tap's link-local address as the guest's router had it with the old MAC.
const OLD_ROUTER: &str = "fe80::fc16:3eff:feaa:bbcc";

fn ipv6_blackout(dual: bool) -> Vec<Record> {
    let mut v = vec![
        attached(0, "tap6", OLD, "routed"),
        Record::MacChange {
            ts: at(100),
            ifname: "tap6".into(),
            old_mac: Some(OLD),
            new_mac: Some(NEW),
        },
        frame(200, "tap6", "from_vm", "rarp", BCAST),
        frame6(
            250,
            "tap6",
            "from_vm",
            "unsolicited_na",
            BCAST,
            Some("2001:db8::10"),
        ),
        frame6(500, "tap6", "from_vm", "dst_mismatch", OLD, None),
    ];
    if dual {
        v.push(frame(600, "tap6", "from_vm", "dst_mismatch", OLD));
    }
    // Linux probes its stale router entry with unicast solicitations to the old MAC.
    v.push(frame6(
        6_500,
        "tap6",
        "from_vm",
        "neighbor_solicit",
        OLD,
        Some(OLD_ROUTER),
    ));
    v
}

fn diagnosis_after(e: &mut Engine, recs: &[Record]) -> String {
    let mut last = String::new();
    for r in recs {
        for v in e.apply(r) {
            if let Record::Verdict { fields, .. } = v {
                last = fields.diagnosis;
            }
        }
    }
    last
}

/// An IPv6-only guest's blackout in neighbour discovery's words: its router's address
/// went with the old MAC, a Router Advertisement ends it, its announce is an unsolicited
/// NA; no word of ARP.
#[test]
fn an_ipv6_guest_is_told_in_neighbour_discovery_words() {
    let mut e = engine();
    let recs = ipv6_blackout(false);
    diagnosis_after(&mut e, &recs);
    let t = e.tap("tap6").unwrap();
    assert_eq!(t.state, State::Blackout);
    let on = t.diagnosis(at(7_000));
    for words in [
        "The router address it uses, fe80::fc16:3eff:feaa:bbcc, was derived from the tap's \
         old MAC and is no longer on this tap (the tap's is fe80::261:feff:feed:cafe now)",
        "ends when the guest re-resolves its router by neighbour discovery",
        "Unsolicited NA (override) seen at",
    ] {
        assert!(on.contains(words), "{words:?} not in {on}");
    }
    assert!(!on.contains("GARP") && !on.contains("re-ARP"), "{on}");
    let end = diagnosis_after(
        &mut e,
        &[
            frame6(9_000, "tap6", "to_vm", "router_advert", BCAST, None),
            frame6(9_010, "tap6", "from_vm", "dst_match", NEW, None),
        ],
    );
    assert!(
        end.contains("Blackout of 8510 ms")
            && end.contains(", after a Router Advertisement reached the guest at"),
        "{end}"
    );
    assert!(!end.contains("GARP") && !end.contains("re-ARP"), "{end}");
}

/// A dual-stack guest's two caches: the diagnosis names both families' recovery.
#[test]
fn a_dual_stack_guest_s_recovery_names_both_families() {
    let mut e = engine();
    let mut recs = ipv6_blackout(true);
    recs.push(frame(20_400, "tap6", "from_vm", "arp_request", BCAST));
    recs.push(frame6(
        20_405,
        "tap6",
        "from_vm",
        "neighbor_solicit",
        BCAST,
        Some(OLD_ROUTER),
    ));
    diagnosis_after(&mut e, &recs);
    let on = e.tap("tap6").unwrap().diagnosis(at(20_406));
    assert!(
        on.contains("re-ARPs its gateway and re-resolves its IPv6 router"),
        "{on}"
    );
    // Both families' frames reach the tap's MAC again: only then is it over.
    let end = diagnosis_after(
        &mut e,
        &[
            frame(20_410, "tap6", "from_vm", "dst_match", NEW),
            frame6(20_412, "tap6", "from_vm", "dst_match", NEW, None),
        ],
    );
    assert!(
        end.contains("after the guest re-ARPed at")
            && end.contains(
                "and the guest's neighbour discovery gave its old router up (last asked for at"
            ),
        "{end}"
    );
    assert!(
        end.contains("GARP") && end.contains("Unsolicited NA"),
        "{end}"
    );
}

/// A frame of `kind` from the VM to `dst`, IPv6 when `v6`.
fn from_vm_ip(ms: i64, kind: &'static str, dst: crate::model::mac::MacAddr, v6: bool) -> Record {
    let mut r = frame(ms, "tap0", "from_vm", kind, dst);
    if let Record::Frame(f) = &mut r {
        if v6 {
            f.src_ip = Some("2001:db8:65::2".into());
            f.dst_ip = Some("2001:db8:10::1".into());
        }
    }
    r
}

/// A dual-stack guest that re-learns its IPv4 gateway while its IPv6 router entry stays
/// stale: one blackout, until both families' frames reach the tap's MAC.
#[test]
fn a_dual_stack_blackout_ends_when_both_families_recovered() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(&attached(0, "tap0", NEW, "routed"));
    let mut verdicts = Vec::new();
    for r in [
        from_vm_ip(100, "dst_mismatch", OLD, false),
        from_vm_ip(110, "dst_mismatch", OLD, true),
        from_vm_ip(2000, "dst_match", NEW, false),
        from_vm_ip(2010, "dst_mismatch", OLD, true),
        from_vm_ip(2020, "dst_match", NEW, false),
        from_vm_ip(2030, "dst_mismatch", OLD, true),
        from_vm_ip(5000, "dst_match", NEW, true),
    ] {
        verdicts.extend(e.apply(&r));
    }
    let states: Vec<String> = verdicts
        .iter()
        .filter_map(|v| match v {
            Record::Verdict { fields, .. } => Some(fields.state.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(states, ["BLACKOUT", "RECOVERED"], "no flapping");
    let t = e.tap("tap0").unwrap();
    assert_eq!(t.blackout.unwrap().ms(at(0)), 4900);
    assert!(t.timeline.iter().any(|e| e
        .what
        .contains("IPv4 frames reach the tap's MAC again; IPv6 frames are still stale")));
}

/// An IPv6-only stale router on a dual-stack guest: its IPv4 frames to the tap's MAC do
/// not end the blackout.
#[test]
fn frames_of_the_other_family_do_not_end_a_blackout() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(&attached(0, "tap0", NEW, "routed"));
    e.apply(&from_vm_ip(100, "dst_mismatch", OLD, true));
    e.apply(&from_vm_ip(200, "dst_match", NEW, false));
    assert_eq!(e.tap("tap0").unwrap().state, State::Blackout);
    e.apply(&from_vm_ip(900, "dst_match", NEW, true));
    assert_eq!(e.tap("tap0").unwrap().state, State::Recovered);
}

/// The last stale family's return to the tap's MAC makes no event while the window is
/// closed: once an interval counts no stale frame, the blackout ends at the window's last
/// close.
#[test]
fn a_dual_stack_blackout_ends_when_the_last_family_goes_quiet() {
    let mut e = Engine::new(EngineConfig::default());
    e.apply(&attached(0, "tap0", NEW, "routed"));
    e.apply(&from_vm_ip(100, "dst_mismatch", OLD, false));
    e.apply(&from_vm_ip(110, "dst_mismatch", OLD, true));
    e.apply(&from_vm_ip(2000, "dst_match", NEW, false));
    e.apply(&from_vm_ip(2010, "dst_mismatch", OLD, true));
    e.apply(&from_vm_ip(2020, "dst_match", NEW, false));
    e.apply(&stats_window(2500, "tap0", 90, 40, None));
    assert_eq!(e.tap("tap0").unwrap().state, State::Blackout);
    // Still stale frames counted: not over.
    e.apply(&stats_window(3500, "tap0", 140, 41, None));
    assert_eq!(e.tap("tap0").unwrap().state, State::Blackout);
    e.apply(&from_vm_ip(3600, "dst_mismatch", OLD, true));
    e.apply(&from_vm_ip(3620, "dst_match", NEW, false));
    e.apply(&stats_window(4000, "tap0", 160, 42, None));
    e.apply(&stats_window(5000, "tap0", 200, 42, None));
    let t = e.tap("tap0").unwrap();
    assert_eq!(t.state, State::Recovered);
    assert_eq!(t.blackout.unwrap().end, Some(at(3620)));
}
