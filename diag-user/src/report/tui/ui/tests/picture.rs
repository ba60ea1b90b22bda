//! The view at the sizes on-call terminals have: the table at 80 columns, the timeline
//! picture with its lanes and marks where the migration's moments were, the status line.

use super::*;
use crate::report::{story::Story, tui::ui::timeline::LABEL};

const VM1: &str = "tap4f1c2a9e-07";
const VM2: &str = "tap4f1c2a9e-08";

/// Two VMs migrated in at once, as the lab plays it, at known times: the tap's MAC changes
/// at 1.0 s, QEMU's RARPs at 2.0 s (the switch-over) and after, the guest's GARP at
/// 2.06 s, its stale frames from 2.1 s, the first frame delivered to it at 3.0 s (the
/// network's part: 1 s), and its first correctly addressed frame at 8.1 s (the guest's
/// part). The second VM recovers at 4.1 s.
fn migration() -> Vec<Record> {
    let mut v = Vec::new();
    for (tap, name, end) in [(VM1, "lab-vm-1", 8100), (VM2, "lab-vm-2", 4100)] {
        v.push(identity(0, tap, name));
        v.push(attached(0, tap, OLD, "routed"));
        v.push(Record::MacChange {
            ts: at(1000),
            ifname: tap.into(),
            old_mac: Some(OLD),
            new_mac: Some(NEW),
        });
        for ms in [2000, 2050, 2200, 2450, 2800] {
            v.push(frame(ms, tap, "from_vm", "rarp", BCAST));
        }
        v.push(frame(2060, tap, "from_vm", "garp", BCAST));
        v.push(frame(2100, tap, "from_vm", "dst_mismatch", OLD));
        v.push(frame(3000, tap, "to_vm", "inbound", GUEST));
        v.push(frame(3000, tap, "from_vm", "dst_mismatch", OLD));
        v.push(frame(end - 100, tap, "from_vm", "arp_request", BCAST));
        v.push(frame(end, tap, "from_vm", "dst_match", NEW));
    }
    v.push(stats(8500, VM1, 300, 290));
    v
}

fn lines(s: &str) -> Vec<Vec<String>> {
    s.lines()
        .map(|l| l.chars().map(|c| c.to_string()).collect())
        .collect()
}

/// The screen line whose text after the border starts with `label`.
fn lane<'a>(rows: &'a [Vec<String>], label: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.len() > 1 && r[1..].concat().starts_with(&format!("{label:<LABEL$}")))
        .unwrap_or_else(|| panic!("no lane {label}"))
}

/// The column of `ms` on an axis `cells` wide over the window [645 ms, 8455 ms]: the
/// outage (1000 ms before the switch-over for the MAC change, to the recovery at 8100)
/// with a twentieth of it as margin on each side.
fn col(ms: i64, cells: usize) -> usize {
    let x = (ms - 645) as f64 / 7810.0 * (cells - 1) as f64;
    1 + LABEL + x.round() as usize
}

#[test]
fn the_story_spans_the_outage() {
    let a = app(&migration());
    let t = a.engine.tap(VM1).unwrap();
    let story = Story::of(t, at(9000)).unwrap();
    assert_eq!(story.origin, at(2000), "the first RARP");
    assert_eq!((story.from, story.to), (at(645), at(8455)));
    let net = story.network.unwrap();
    assert_eq!((net.from, net.to, net.open), (at(2000), at(3000), false));
    let guest = story.guest.unwrap();
    assert_eq!(
        (guest.from, guest.to, guest.open),
        (at(2100), at(8100), false)
    );
    assert_eq!(story.marks.len(), 7, "5 RARPs, a GARP, a MAC change");
    assert_eq!(story.outside, 0);
}

#[test]
fn lanes_and_marks_at_their_columns() {
    let mut v = app(&migration());
    v.app.selected = Some((v.engine.tap(VM1).unwrap().key, VM1.into()));
    for (w, h) in [(80u16, 24u16), (200, 50)] {
        let s = screen(&v, at(9000), w, h);
        let rows = lines(&s);
        let cells = w as usize - 2 - LABEL;
        let marks = lane(&rows, "marks");
        assert_eq!(
            marks[col(1000, cells)],
            "M",
            "the MAC change at {w}×{h}\n{s}"
        );
        assert_eq!(marks[col(2450, cells)], "R", "a RARP at {w}×{h}\n{s}");
        assert_eq!(
            marks[col(2800, cells)],
            "R",
            "the last RARP at {w}×{h}\n{s}"
        );
        // The GARP shares a column with the first RARP at 80 columns: the rarer shows.
        assert_eq!(marks[col(2060, cells)], "G", "the GARP at {w}×{h}\n{s}");
        let network = lane(&rows, "network");
        let (a, b) = (col(2000, cells), col(3000, cells));
        assert!(network[a..=b].iter().all(|c| c == "━"), "{w}×{h}\n{s}");
        assert_ne!(network[a - 1], "━");
        assert_ne!(network[b + 1], "━");
        assert!(network[b + 1..].concat().contains("1 s"), "{s}");
        let guest = lane(&rows, "guest");
        let (a, b) = (col(2100, cells), col(8100, cells));
        assert!(guest[a..=b].iter().all(|c| c == "█"), "{w}×{h}\n{s}");
        assert_ne!(guest[a - 1], "█");
        assert_eq!(guest.get(b + 1).map(String::as_str).unwrap_or(" "), " ");
        // Time zero is the switch-over; the axis says so.
        let axis = rows
            .iter()
            .find(|r| r.concat().contains('┼'))
            .expect("an axis");
        assert_eq!(axis[col(2000, cells)], "┼", "{s}");
        let title = s.lines().find(|l| l.contains("switch-over")).unwrap();
        assert!(
            title.contains("lab-vm-1") && title.contains("network 1 s · guest 6 s"),
            "the title whole: {title}"
        );
        let legend = s.lines().find(|l| l.contains("R RARP")).expect("a legend");
        assert!(
            legend.contains("G GARP") && legend.contains("M tap MAC"),
            "{legend}"
        );
    }
}

/// At 80 columns two VMs of one family stay apart: whole names, taps, states.
#[test]
fn eighty_columns_keep_rows_apart() {
    let v = app(&migration());
    let s = screen(&v, at(9000), 80, 24);
    let row = |name: &str| {
        s.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row of {name}\n{s}"))
            .to_string()
    };
    let (r1, r2) = (row("lab-vm-1"), row("lab-vm-2"));
    assert!(r1.contains(VM1) && r2.contains(VM2), "{s}");
    assert!(r1.contains("RECOVERED") && r1.contains("6.000s"), "{r1}");
    assert!(r2.contains("RECOVERED") && r2.contains("2.000s"), "{r2}");
    assert!(r1.contains("00:61:fe:ed:ca:fe*"), "{r1}");
    assert!(s.lines().all(|l| l.chars().count() <= 80));
    // Wider terminals get more columns.
    let wide = screen(&v, at(9000), 200, 50);
    let header = wide.lines().find(|l| l.contains("STATE")).unwrap();
    for h in [
        "MODE",
        "GUEST MAC",
        "FROM/s",
        "RARP AGO",
        "GARP AGO",
        "MISMATCH",
    ] {
        assert!(header.contains(h), "{h} at 200 columns: {header}");
    }
    assert!(wide.contains("00:61:fe:ed:ca:fe* (was fe:16:3e:aa:bb:cc)"));
}

/// Names longer than the room: cut in the middle, never to a prefix two VMs share.
#[test]
fn long_names_stay_distinct() {
    let names = [
        "web-frontend-production-eu-west-1",
        "web-frontend-production-eu-west-2",
        "web-frontend-staging-eu-west-1",
    ];
    let mut recs = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let tap = format!("tap4f1c2a9e-0{i}");
        recs.push(identity(0, &tap, n));
        recs.push(attached(0, &tap, NEW, "routed"));
    }
    let v = app(&recs);
    let s = screen(&v, at(1000), 60, 20);
    let rows: Vec<&str> = s.lines().filter(|l| l.contains("OK")).collect();
    assert_eq!(rows.len(), 3, "{s}");
    let firsts: Vec<&str> = rows
        .iter()
        .map(|r| r.trim_start_matches('│').split(' ').next().unwrap())
        .collect();
    let mut unique = firsts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        3,
        "three names read differently: {firsts:?}\n{s}"
    );
    assert!(firsts.iter().all(|n| n.contains('…')), "{firsts:?}");
    assert!(
        firsts[0].ends_with("west-1") || firsts[0].ends_with("west-2"),
        "{firsts:?}\n{s}"
    );
}

/// "No interface matches" goes once a tap is there; the lab's truth stays on the status
/// line, whole at 80 columns.
#[test]
fn status_line_says_what_is_true() {
    let mut v = app(&[Record::Notice {
        ts: at(0),
        code: NoticeCode::NoMatch,
        ifname: None,
        message: "no interface matches tap*; watching for new ones".into(),
        probe: None,
    }]);
    v.app.run.notice = Some(crate::report::pipeline::Notice {
        ts: at(0),
        code: NoticeCode::NoMatch,
        message: "no interface matches tap*; watching for new ones".into(),
    });
    assert!(screen(&v, at(100), 80, 24).contains("no interface matches"));
    for r in migration() {
        v.apply(&r);
    }
    let s = screen(&v, at(9000), 80, 24);
    assert!(!s.contains("no interface matches"), "{s}");
    v.app.run.truths = vec![LabRecord {
        ts: at(9000),
        event: LabEvent::Truth,
        vm: Some("lab-vm-1".into()),
        scenario: Some(Scenario::StaleMac),
        stale_window_ms: Some(5867),
        client_outage_ms: Some(5939),
        inbound_gap_ms: Some(1000),
        outbound_gap_ms: Some(6100),
        ..LabRecord::default()
    }];
    let s = screen(&v, at(9000), 80, 24);
    let status: String = s
        .lines()
        .skip_while(|l| !l.contains("lab truth"))
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "lab-vm-1",
        "stale MAC 5.87 s",
        "client outage 5.94 s",
        "inbound gap 1 s",
        "outbound gap 6.1 s",
    ] {
        assert!(status.contains(want), "{want}: {status}\n{s}");
    }
}

/// A long list of entries keeps its first and its last in view; `[` and `]` scroll the
/// middle.
#[test]
fn entries_keep_first_and_last() {
    let mut recs = migration();
    for i in 0..40 {
        recs.push(frame(8200 + i * 10, VM1, "from_vm", "arp_request", BCAST));
    }
    let mut v = app(&recs);
    v.app.selected = Some((v.engine.tap(VM1).unwrap().key, VM1.into()));
    key(&mut v, KeyCode::Enter);
    let s = screen(&v, at(9000), 80, 24);
    let entries: Vec<&str> = s
        .lines()
        .skip_while(|l| !l.contains("entries"))
        .skip(1)
        .take_while(|l| !l.starts_with('└'))
        .collect();
    assert!(entries.len() >= 3, "{s}");
    assert!(entries[0].contains("tap attached"), "the first: {s}");
    assert!(
        entries.last().unwrap().contains("guest ARP"),
        "the last: {s}"
    );
    assert!(entries[1].contains("earlier"), "{s}");
    let before = s.clone();
    key(&mut v, KeyCode::Char('['));
    let s = screen(&v, at(9000), 80, 24);
    assert_ne!(s, before);
    assert!(s.contains("1 later"), "{s}");
    key(&mut v, KeyCode::Char(']'));
    assert_eq!(screen(&v, at(9000), 80, 24), before);
}

#[test]
fn window_of_entries() {
    use crate::report::tui::ui::timeline::{window, Shown::*};
    assert_eq!(window(3, 5, 0), vec![Entry(0), Entry(1), Entry(2)]);
    assert_eq!(
        window(10, 5, 0),
        vec![Entry(0), Hidden(6, true), Entry(7), Entry(8), Entry(9)]
    );
    assert_eq!(
        window(10, 5, 6),
        vec![Entry(0), Entry(1), Entry(2), Hidden(6, false), Entry(9)]
    );
    assert_eq!(
        window(10, 5, 3),
        vec![
            Entry(0),
            Hidden(4, true),
            Entry(5),
            Hidden(3, false),
            Entry(9)
        ]
    );
    assert_eq!(window(10, 2, 0), vec![Entry(0), Entry(9)]);
}

/// Every screen at 80×24 and 200×50: nothing runs past the edge, the picture and the
/// diagnosis are there, and the help fits.
#[test]
fn every_screen_at_both_sizes() {
    let mut v = app(&migration());
    for (w, h) in [(80u16, 24u16), (200, 50)] {
        for keys in [vec![], vec![KeyCode::Enter], vec![KeyCode::Char('?')]] {
            let mut v2 = app(&migration());
            for k in keys {
                key(&mut v2, k);
            }
            let s = screen(&v2, at(9000), w, h);
            assert!(s.lines().all(|l| l.chars().count() <= w as usize), "{s}");
            assert!(s.lines().next().unwrap().contains("2 taps, 0 in BLACKOUT"));
            if !v2.app.show_help {
                assert!(s.contains("network") && s.contains("diagnosis"), "{s}");
            }
        }
    }
    key(&mut v, KeyCode::Down);
    let s = screen(&v, at(9000), 80, 24);
    assert!(
        s.lines()
            .any(|l| l.starts_with("┌lab-vm-2") && l.contains("switch-over")),
        "the selected VM's picture: {s}"
    );
}
