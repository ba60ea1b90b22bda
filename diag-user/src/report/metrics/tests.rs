use std::time::Duration;

use super::*;
use crate::{
    model::{FrameKind, TapRow},
    verdict::{fixtures::*, EngineConfig},
};

fn pipeline(forget: Duration) -> (Arc<Pipeline>, Arc<Metrics>, Arc<Health>) {
    let metrics = Metrics::new().unwrap();
    let health = Health::new(Duration::from_secs(1));
    let config = EngineConfig {
        forget_after: Some(forget),
        ..EngineConfig::default()
    };
    let p = Pipeline::new(Engine::new(config), Vec::new());
    p.set_metrics(MetricsUpdater::new(metrics.clone(), health.clone()));
    metrics.follow(&p);
    crate::model::Sink::datapath(
        &mut crate::report::pipeline::Feed(p.clone()),
        DatapathKind::Drops,
    );
    (p, metrics, health)
}

fn row(tap: &str, mismatch: u64, rarp: u64) -> TapRow {
    TapRow {
        ifname: tap.into(),
        dst_mismatch_frames: mismatch,
        rarp_frames: rarp,
        kernel_drops: [("OTHERHOST".to_string(), mismatch)].into(),
        ..TapRow::default()
    }
}

fn stats_at(ms: i64, rows: Vec<TapRow>) -> Record {
    Record::Stats {
        ts: at(ms),
        taps: rows,
    }
}

fn text(m: &Metrics) -> String {
    String::from_utf8(m.encode().unwrap()).unwrap()
}

const TAP_A: [(&str, &str); 4] = [
    ("ifname", "tapA"),
    ("vm", "tapA"),
    ("nova_uuid", ""),
    ("domain", ""),
];

fn with<'a>(extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut v = TAP_A.to_vec();
    v.push(extra);
    v
}

/// While the blackout lasts: the state, the inbound gap known, the outbound one not.
fn during_the_blackout(t: &str) {
    assert_eq!(
        sample(t, "tapwatch_vm_state", &with(("state", "BLACKOUT"))),
        Some(1.0)
    );
    assert_eq!(
        sample(t, "tapwatch_inbound_gap_seconds_sum", &[]),
        Some(2.8)
    );
    assert_eq!(
        sample(t, "tapwatch_outbound_gap_seconds_count", &[]),
        Some(0.0),
        "not known during the blackout"
    );
    assert_eq!(sample(t, "tapwatch_vm_blackout_seconds", &TAP_A), Some(3.5));
}

/// After it: the host's distributions, one state series per tap, few series per tap.
fn host_after_the_blackout(t: &str) {
    let host = |name: &str| sample(t, name, &[]);
    assert_eq!(host("tapwatch_blackout_seconds_count"), Some(1.0));
    assert_eq!(host("tapwatch_blackout_seconds_sum"), Some(19.91));
    assert_eq!(
        sample(t, "tapwatch_blackout_seconds_bucket", &[("le", "15")]),
        Some(0.0)
    );
    assert_eq!(
        sample(t, "tapwatch_blackout_seconds_bucket", &[("le", "30")]),
        Some(1.0)
    );
    assert_eq!(host("tapwatch_inbound_gap_seconds_count"), Some(1.0));
    assert_eq!(host("tapwatch_outbound_gap_seconds_sum"), Some(20.21));
    // One state series per tap: the current one.
    for (state, want) in [("OK", None), ("BLACKOUT", None), ("RECOVERED", Some(1.0))] {
        assert_eq!(
            sample(t, "tapwatch_vm_state", &with(("state", state))),
            want,
            "{state}"
        );
    }
    let per_tap = t
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("ifname=\"tapA\""))
        .count();
    assert_eq!(per_tap, 9, "series of one tap:\n{t}");
    assert_eq!(sample(t, "tapwatch_vm_at_risk", &TAP_A), Some(0.0));
}

/// The stale-MAC story told by the metrics: exact counts, one blackout of 19.91 s, the
/// gaps of its switch-over, the state, the build.
#[test]
fn a_blackout_in_numbers() {
    let (p, m, health) = pipeline(Duration::from_secs(300));
    p.emit(&attached(0, "tapA", OLD, "routed"));
    p.emit(&stats_at(50, vec![row("tapA", 0, 0)]));
    for r in stale_mac_story("tapA", 0) {
        if matches!(&r, Record::Frame(f) if f.kind == FrameKind::DstMatch) {
            p.emit(&frame(3000, "tapA", "to_vm", "inbound", GUEST));
            p.emit(&stats_at(4000, vec![row("tapA", 2, 5)]));
            during_the_blackout(&text(&m));
        }
        p.emit(&r);
    }
    p.emit(&stats_at(21_000, vec![row("tapA", 2, 5)]));
    let t = text(&m);
    let v = |name: &str| sample(&t, name, &TAP_A);
    assert_eq!(v("tapwatch_dst_mismatch_frames_total"), Some(2.0));
    assert_eq!(v("tapwatch_rarp_frames_total"), Some(5.0));
    assert_eq!(v("tapwatch_garp_frames_total"), Some(0.0));
    assert_eq!(v("tapwatch_events_lost_total"), Some(0.0));
    assert_eq!(
        sample(
            &t,
            "tapwatch_kernel_drops_total",
            &with(("reason", "OTHERHOST"))
        ),
        Some(2.0)
    );
    assert_eq!(v("tapwatch_blackouts_total"), Some(1.0));
    assert_eq!(v("tapwatch_vm_blackout_seconds"), Some(19.91));
    host_after_the_blackout(&t);
    assert_eq!(sample(&t, "tapwatch_taps", &[]), Some(1.0));
    assert_eq!(
        sample(
            &t,
            "tapwatch_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("datapath", "drops")
            ]
        ),
        Some(1.0)
    );
    assert!(health.check().is_ok());
}

/// A tap that went away is forgotten after the grace period, by the engine too.
#[test]
fn departed_taps_are_forgotten() {
    let (p, m, _) = pipeline(Duration::from_secs(60));
    p.emit(&attached(0, "tapA", NEW, "routed"));
    p.emit(&attached(0, "tapB", NEW, "routed"));
    p.emit(&stats_at(1000, vec![row("tapA", 3, 0), row("tapB", 0, 0)]));
    p.emit(&Record::Detached {
        ts: at(2000),
        ifname: "tapA".into(),
        reason: "deleted".into(),
    });
    p.emit(&stats_at(3000, vec![row("tapB", 0, 0)]));
    let t = text(&m);
    assert_eq!(
        sample(&t, "tapwatch_vm_state", &with(("state", "GONE"))),
        Some(1.0),
        "said while in grace"
    );
    assert_eq!(sample(&t, "tapwatch_taps", &[]), Some(1.0));
    p.emit(&stats_at(62_000, vec![row("tapB", 0, 0)]));
    let t = text(&m);
    assert!(!t.contains("ifname=\"tapA\""), "{t}");
    assert!(t.contains("ifname=\"tapB\""));
    assert_eq!(p.head().engine.taps().len(), 1, "the engine forgot it too");
}

/// A tap created again under a gone tap's name (within the grace period) starts from
/// zero, and the old one's forgetting does not take the new one's series with it.
#[test]
fn a_tap_back_under_the_same_name_starts_from_zero() {
    let (p, m, _) = pipeline(Duration::from_secs(60));
    p.emit(&attached(0, "tapA", NEW, "routed"));
    p.emit(&stats_at(1000, vec![row("tapA", 3, 2)]));
    p.emit(&Record::Detached {
        ts: at(2000),
        ifname: "tapA".into(),
        reason: "deleted".into(),
    });
    p.emit(&attached(3000, "tapA", NEW, "routed"));
    p.emit(&stats_at(4000, vec![row("tapA", 0, 1)]));
    let t = text(&m);
    assert_eq!(
        sample(&t, "tapwatch_dst_mismatch_frames_total", &TAP_A),
        Some(0.0)
    );
    assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &TAP_A), Some(1.0));
    assert_eq!(
        sample(&t, "tapwatch_vm_state", &with(("state", "GONE"))),
        None
    );
    // Past the old tap's grace period: the new one is still there.
    p.emit(&stats_at(63_000, vec![row("tapA", 0, 1)]));
    let t = text(&m);
    assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &TAP_A), Some(1.0));
    assert_eq!(
        sample(&t, "tapwatch_vm_state", &with(("state", "OK"))),
        Some(1.0)
    );
}

/// The VM's name becomes known after the tap's first counts: they go on under its
/// labels, none lost, none twice.
#[test]
fn a_vm_named_later_keeps_its_counts() {
    let (p, m, _) = pipeline(Duration::from_secs(60));
    p.emit(&attached(0, "tapA", NEW, "routed"));
    p.emit(&stats_at(1000, vec![row("tapA", 3, 1)]));
    let vm = crate::model::identity::VmInterface {
        domain: "instance-0000002b".into(),
        uuid: Some("5c2d9e3f".into()),
        nova_name: Some("web-1".into()),
        tap: "tapA".into(),
        ..Default::default()
    };
    p.emit(&Record::Identity {
        ts: at(1500),
        ifname: "tapA".into(),
        libvirt: Some(vm),
    });
    p.emit(&stats_at(2000, vec![row("tapA", 5, 1)]));
    let t = text(&m);
    let named = [
        ("ifname", "tapA"),
        ("vm", "web-1"),
        ("nova_uuid", "5c2d9e3f"),
        ("domain", "instance-0000002b"),
    ];
    assert_eq!(
        sample(&t, "tapwatch_dst_mismatch_frames_total", &named),
        Some(5.0)
    );
    assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &named), Some(1.0));
    assert!(!t.contains("vm=\"tapA\""), "the unnamed series went: {t}");
}

/// No stale frame after a switch-over: an outbound gap of 0, once it has settled.
#[test]
fn no_stale_window_is_an_outbound_gap_of_zero() {
    let (p, m, _) = pipeline(Duration::from_secs(60));
    let mut a = attached(0, "tapA", NEW, "routed");
    if let Record::Attached { appeared, .. } = &mut a {
        *appeared = true;
    }
    p.emit(&a);
    p.emit(&frame(100, "tapA", "from_vm", "rarp", BCAST));
    p.emit(&stats_at(1000, vec![row("tapA", 0, 1)]));
    assert_eq!(
        sample(&text(&m), "tapwatch_outbound_gap_seconds_count", &[]),
        Some(0.0)
    );
    p.emit(&stats_at(10_200, vec![row("tapA", 0, 1)]));
    let t = text(&m);
    assert_eq!(
        sample(&t, "tapwatch_outbound_gap_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&t, "tapwatch_outbound_gap_seconds_sum", &[]),
        Some(0.0)
    );
    // Once per switch-over.
    p.emit(&stats_at(20_200, vec![row("tapA", 0, 1)]));
    assert_eq!(
        sample(&text(&m), "tapwatch_outbound_gap_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&t, "tapwatch_blackouts_total", &TAP_A), Some(0.0));
}
