use super::*;
use crate::verdict::{fixtures::*, Engine, EngineConfig};

fn tap(recs: &[crate::model::Record]) -> Tap {
    let mut e = Engine::new(EngineConfig::default());
    for r in recs {
        e.apply(r);
    }
    e.tap("tapA").unwrap().clone()
}

#[test]
fn no_switch_over_no_story() {
    let t = tap(&[
        attached(0, "tapA", NEW, "routed"),
        stats(1000, "tapA", 5, 0),
    ]);
    assert_eq!(Story::of(&t, at(2000)), None);
}

/// While the blackout lasts and nothing has reached the VM, both lanes run to "now".
#[test]
fn open_lanes_run_to_now() {
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
    let s = Story::of(&tap(&recs), at(3000)).unwrap();
    let (net, guest) = (s.network.unwrap(), s.guest.unwrap());
    assert!(net.open && guest.open);
    assert_eq!((net.from, net.to), (at(200), at(3000)));
    assert_eq!((guest.from, guest.to), (at(500), at(3000)));
    assert!(
        s.from < at(100) && s.to > at(3000),
        "the MAC change and now in view"
    );
}

/// Told from both hosts: the source's lane ends at the pause, the downtime runs to the
/// resume, and a mark says where the VM paused.
#[test]
fn pause_on_the_source() {
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    recs.extend(stale_mac_story("tapA", 0));
    let s = Story::of(&tap(&recs), at(30_000)).unwrap().with_pause(
        at(-300),
        Some(at(200)),
        Some(at(-60_000)),
    );
    let (src, down) = (s.source.unwrap(), s.downtime.unwrap());
    assert_eq!((down.from, down.to, down.ms()), (at(-300), at(200), 500));
    assert_eq!(src.to, at(-300));
    assert_eq!(src.from, s.from.max(src.from), "not its whole life");
    assert!(src.from > at(-60_000));
    assert!(s.shows(at(-300)) && s.shows(at(20_410)));
    assert!(s.marks.iter().any(|m| m.kind == MarkKind::Pause));
}

/// Marks far from the outage are counted, not drawn.
#[test]
fn far_marks_stay_off_the_axis() {
    let mut recs = vec![
        attached(-3_600_000, "tapA", OLD, "routed"),
        crate::model::Record::MacChange {
            ts: at(-3_000_000),
            ifname: "tapA".into(),
            old_mac: Some(OLD),
            new_mac: Some(GUEST),
        },
    ];
    recs.extend(stale_mac_story("tapA", 0));
    let s = Story::of(&tap(&recs), at(30_000)).unwrap();
    assert_eq!(s.outside, 1);
    assert!(s.from > at(-20_000));
}

#[test]
fn ticks_and_lengths() {
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    recs.extend(stale_mac_story("tapA", 0));
    let s = Story::of(&tap(&recs), at(30_000)).unwrap();
    let ticks = s.ticks(60, 10);
    assert!(ticks.iter().any(|&(_, ms)| ms == 0), "{ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1].0 >= w[0].0 + 10), "{ticks:?}");
    assert_eq!(tick_label(0), "0");
    assert_eq!(tick_label(-500), "-0.5s");
    assert_eq!(tick_label(20_000), "+20s");
    assert_eq!(tick_label(120_000), "+2m");
    assert_eq!(length(120), "120 ms");
    assert_eq!(length(5867), "5.87 s");
    assert_eq!(length(6000), "6 s");
    assert_eq!(length(125_000), "2 min 05 s");
}
