//! docs/json.md checked against the types: every example reads into a typed record and
//! writes back unchanged, every record type has an example, and every field the types can
//! write is named on the page. Root-free.

use std::collections::BTreeSet;

use diag_user::{
    model::forecast::{Forecast, ForecastCounts, ForecastOutcome, ForecastRecord},
    model::identity::{KubevirtVmi, OvsPort, ProxmoxNic, SourceKind, VmInterface},
    model::netns,
    model::nudge::{AddrSource, NudgeFrame, NudgeRecord, NudgeResult, NudgeTrigger, SentFrame},
    model::{
        clock::Ts, mac::MacAddr, Backend, Direction, FrameKind, FrameRecord, HostFact, LabEvent,
        LabRecord, Line, MacHistoryEntry, MigrationRecord, Mode, NaFlags, NoticeCode, Record,
        Scenario, State, SummaryRow, TapRow, VerdictFields, SCHEMA_VERSION,
    },
};
use serde_json::Value;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/json.md")).unwrap()
}

/// The lines of every ```json block.
fn examples(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        match line.trim() {
            "```json" => inside = true,
            "```" => inside = false,
            l if inside && !l.is_empty() => out.push(l.to_string()),
            _ => {}
        }
    }
    out
}

fn line(rec: &Record) -> Value {
    serde_json::to_value(Line {
        record: rec,
        schema: SCHEMA_VERSION,
    })
    .unwrap()
}

#[test]
fn every_example_reads_into_the_types_and_writes_back() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(examples.len() >= 12, "{} examples", examples.len());
    for e in &examples {
        let v: Value =
            serde_json::from_str(e).unwrap_or_else(|err| panic!("not JSON ({err}): {e}"));
        // A tap of another namespace: read and written as tapwatch reads and writes lines.
        let mut joined = v.clone();
        netns::join_names(&mut joined);
        let rec: Record = serde_json::from_value(joined).unwrap_or_else(|err| panic!("{err}: {e}"));
        let written = serde_json::to_vec(&Line {
            record: &rec,
            schema: SCHEMA_VERSION,
        })
        .unwrap();
        let written: Value = serde_json::from_slice(&netns::split_line(&written)).unwrap();
        assert_eq!(written, v, "the types write this example otherwise: {e}");
    }
}

/// One of each record, every optional field set: all that the types can write.
fn samples() -> Vec<Record> {
    let ts = Ts(chrono::DateTime::from_timestamp_millis(1_790_000_000_000).unwrap());
    let mac = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    let row = TapRow {
        ifname: "tapA".into(),
        kernel_drops: [("OTHERHOST".to_string(), 1)].into(),
        ..TapRow::default()
    };
    let verdict = VerdictFields {
        vm: "web-1".into(),
        state: State::Recovered,
        blackout_ms: Some(1),
        switchover_ts: Some(Some(ts)),
        inbound_gap_ms: Some(Some(3900)),
        outbound_gap_ms: Some(Some(30_100)),
        diagnosis: "d".into(),
    };
    let mut all = tap_life_samples(ts, mac);
    all.extend([
        Record::Frame(frame_sample(ts, mac)),
        Record::Stats {
            ts,
            taps: vec![row.clone()],
        },
        Record::Verdict {
            ts,
            ifname: "tapA".into(),
            fields: verdict.clone(),
        },
        Record::Summary {
            ts,
            taps: vec![SummaryRow {
                counters: row,
                ifindex: 1,
                mode: Mode::Routed,
                mac_history: vec![MacHistoryEntry { ts, mac: Some(mac) }],
                detached: true,
                verdict: Some(verdict),
            }],
            forecasts: Some(ForecastCounts {
                made: 1,
                came_true: 1,
                false_alarms: 0,
                missed: 0,
            }),
        },
        Record::Forecast(ForecastRecord {
            ts,
            ifname: "tapA".into(),
            vm: "web-1".into(),
            forecast: Forecast {
                at_risk: true,
                certain: false,
                tap_mac: Some(mac),
                cached_mac: Some(mac),
                cause: "c".into(),
                expected_ms: Some([15_000, 45_000]),
                outcome: Some(ForecastOutcome::CameTrue),
            },
        }),
        Record::Lab(lab_sample(ts)),
        Record::Migration(migration_sample(ts)),
        Record::Nudge(nudge_sample(ts, mac)),
    ]);
    all
}

/// The records of a tap's life, every optional field set: attached, detached, renamed, its
/// VM's identity, a notice, MAC and mode changes.
fn tap_life_samples(ts: Ts, mac: MacAddr) -> Vec<Record> {
    let vm = VmInterface {
        domain: "d".into(),
        uuid: Some("u".into()),
        nova_name: Some("n".into()),
        tap: "tapA".into(),
        guest_mac: Some(mac),
        iface_type: "ethernet".into(),
        managed: Some(false),
        bridge: Some("br0".into()),
        reason: Some("migrated".into()),
        state: Some("running".into()),
        cpu: Some(diag_user::model::identity::GuestCpu {
            mode: Some("custom".into()),
            model: Some("qemu64".into()),
            features: vec!["lahf_lm".into()],
        }),
        sources: vec![SourceKind::Libvirt, SourceKind::Ovs, SourceKind::Proxmox],
        ovs: Some(Box::new(OvsPort {
            iface_id: Some("i".into()),
            vm_uuid: Some("u".into()),
            vm_id: Some("v".into()),
            attached_mac: Some(mac),
            iface_status: Some("active".into()),
        })),
        proxmox: Some(Box::new(ProxmoxNic {
            vmid: 100,
            name: Some("n".into()),
            net: "net0".into(),
            mac: Some(mac),
            bridge: Some("vmbr0".into()),
        })),
        kubevirt: Some(Box::new(KubevirtVmi::of_domain("default_vmi-a", 1))),
    };
    vec![
        Record::Attached {
            ts,
            ifname: "tapA".into(),
            ifindex: 1,
            mac: Some(mac),
            mode: Mode::Bridged,
            backend: Backend::Pcap,
            datapath: Some(diag_user::model::DatapathKind::Pcap),
            appeared: true,
            mtu: Some(1500),
            master: Some("br0".into()),
        },
        Record::Detached {
            ts,
            ifname: "tapA".into(),
            reason: "r".into(),
        },
        Record::Renamed {
            ts,
            ifname: "tapB".into(),
            old_ifname: "tapA".into(),
            ifindex: 1,
        },
        Record::Identity {
            ts,
            ifname: "tapA".into(),
            libvirt: Some(vm),
        },
        Record::Notice {
            ts,
            code: NoticeCode::NetlinkOverflow,
            ifname: Some("tapA".into()),
            message: "m".into(),
            probe: None,
        },
        Record::MacChange {
            ts,
            ifname: "tapA".into(),
            old_mac: Some(mac),
            new_mac: Some(mac),
        },
        Record::ModeChange {
            ts,
            ifname: "tapA".into(),
            old_mode: Mode::Routed,
            new_mode: Mode::Bridged,
            master: Some("br0".into()),
        },
    ]
}

/// A frame record, every optional field set.
fn frame_sample(ts: Ts, mac: MacAddr) -> FrameRecord {
    FrameRecord {
        ts,
        ifname: "tapA".into(),
        direction: Direction::ToVm,
        kind: FrameKind::ArpReply,
        src_mac: mac,
        dst_mac: mac,
        sender_ip: Some("10.0.0.1".into()),
        target_ip: Some("10.0.0.2".into()),
        na_flags: Some(NaFlags::default()),
        src_ip: Some("10.0.0.2".into()),
        dst_ip: Some("192.0.2.7".into()),
        vlan: Some(1),
        outer_vlan: Some(2),
        dst_mismatch: true,
        len: 60,
        data: Vec::new(),
    }
}

/// A nudge record, every optional field set.
fn nudge_sample(ts: Ts, mac: MacAddr) -> NudgeRecord {
    NudgeRecord {
        ts,
        ifname: "tapA".into(),
        vm: Some("web-1".into()),
        trigger: NudgeTrigger::Remediate,
        result: NudgeResult::Recovered,
        frame: Some(NudgeFrame::Arp),
        gateway_ip: Some("169.254.1.1".parse().unwrap()),
        gateway_from: Some(AddrSource::Flag),
        guest_ip: Some("10.65.0.2".parse().unwrap()),
        guest_ip_from: Some(AddrSource::StaleFrames),
        tap_mac: Some(mac),
        guest_mac: Some(mac),
        stale_mac: Some(mac),
        recovered_after_ms: Some(2),
        stale_after: Some(0),
        watched_ms: Some(5000),
        bytes: Some("00".into()),
        more_frames: vec![SentFrame {
            frame: NudgeFrame::NeighborAdvert,
            gateway_ip: "fe80::fc16:3eff:feaa:bbcc".parse().unwrap(),
            gateway_from: AddrSource::DerivedFromOldMac,
            guest_ip: "2001:db8:65::2".parse().unwrap(),
            guest_ip_from: AddrSource::StaleFrames,
            bytes: "00".into(),
        }],
        message: "m".into(),
    }
}

/// A lab record, every optional field set.
fn lab_sample(ts: Ts) -> LabRecord {
    LabRecord {
        ts,
        event: LabEvent::Truth,
        vm: Some("lab-vm-1".into()),
        scenario: Some(Scenario::StaleMac),
        stale_window_ms: Some(1),
        client_outage_ms: Some(1),
        inbound_gap_ms: Some(1),
        outbound_gap_ms: Some(1),
        downtime_ms: Some(1),
        foreseen: Some(true),
        forecast_right: Some(true),
        nudged: Some(true),
        unnudged_window_ms: Some(21_000),
        detail: Some("d".into()),
    }
}

/// A migration record, every optional field set.
fn migration_sample(ts: Ts) -> MigrationRecord {
    MigrationRecord {
        ts,
        vm: "web-1".into(),
        src_ifname: Some("tapA".into()),
        dst_ifname: "tapA".into(),
        pause_ts: Some(ts),
        pause_from: "libvirt".into(),
        resume_ts: Some(ts),
        downtime_ms: Some(1),
        clock_uncertainty_ms: Some(1.0),
        inbound_gap_ms: Some(1),
        outbound_gap_ms: Some(1),
        blackout_ms: Some(1),
        host_diff: vec![HostFact {
            fact: "tap MAC".into(),
            src: "a".into(),
            dst: "b".into(),
        }],
        notes: vec!["n".into()],
    }
}

fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.clone());
                keys(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn every_record_type_has_an_example_and_every_field_is_named() {
    let doc = doc();
    let documented: BTreeSet<String> = examples(&doc)
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut fields = BTreeSet::new();
    for rec in samples() {
        let v = line(&rec);
        let ty = v["type"].as_str().unwrap().to_string();
        assert!(
            documented.contains(&ty),
            "no example of `{ty}` in docs/json.md"
        );
        keys(&v, &mut fields);
    }
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !doc.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "fields written but not named in docs/json.md: {missing:?}"
    );
}
