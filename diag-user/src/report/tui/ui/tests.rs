use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, Terminal};

use super::*;
use crate::{
    model::{
        probe::{ProbeChange, ProbeReason},
        LabEvent, LabRecord, NoticeCode, Record, Scenario,
    },
    report::tui::handler::{on_key, Action},
    verdict::{fixtures::*, Engine, EngineConfig},
};

/// The view's state and the engine it shows, as in a run.
struct View {
    app: App,
    engine: Engine,
}

impl View {
    fn apply(&mut self, rec: &Record) {
        self.engine.apply(rec);
    }
    fn selected_tap(&self) -> Option<&crate::verdict::Tap> {
        self.app.selected_tap(self.app.taps(&self.engine))
    }
    fn rows(&self) -> Vec<usize> {
        self.app.rows(self.app.taps(&self.engine))
    }
}

fn app(recs: &[Record]) -> View {
    let mut engine = Engine::new(EngineConfig::default());
    for r in recs {
        engine.apply(r);
    }
    View {
        app: App::new(),
        engine,
    }
}

fn screen(v: &View, now: Ts, w: u16, h: u16) -> String {
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| draw(f, &v.app, &v.engine, now)).unwrap();
    let buf = term.backend().buffer();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn row_of<'a>(screen: &'a str, tap: &str) -> &'a str {
    screen
        .lines()
        .find(|l| {
            l.contains(tap) && l.contains("routed") || l.contains(tap) && l.contains("bridged")
        })
        .unwrap_or_else(|| panic!("no row for {tap} in\n{screen}"))
}

fn key(v: &mut View, code: KeyCode) -> Action {
    on_key(
        &mut v.app,
        &v.engine,
        KeyEvent::new(code, KeyModifiers::NONE),
    )
}

fn story(upto: usize) -> Vec<Record> {
    let mut v = vec![attached(0, "tapA", OLD, "routed")];
    v.extend(stale_mac_story("tapA", 0).into_iter().take(upto));
    v
}

/// The title says how the taps are watched, and which carry the per-frame probe.
#[test]
fn datapath_in_the_title() {
    let with = |datapath| {
        let mut rec = attached(0, "tapA", NEW, "routed");
        if let Record::Attached { datapath: d, .. } = &mut rec {
            *d = datapath;
        }
        rec
    };
    let probe = |ms, code: &str| {
        let change = if code == "probe_added" {
            ProbeChange::added(ProbeReason::Rarp, false)
        } else {
            ProbeChange::calm(std::time::Duration::from_secs(60))
        };
        Record::Notice {
            ts: at(ms),
            code: named(code),
            ifname: Some("tapA".into()),
            message: change.message("tapA"),
            probe: Some(change),
        }
    };
    let title = |recs: &[Record]| {
        let s = screen(&app(recs), at(2000), 160, 20);
        s.lines().next().unwrap().to_string()
    };
    let drops = Some(crate::model::DatapathKind::Drops);
    assert!(
        title(&[with(drops)]).contains("datapath drops (0 with a per-frame probe)"),
        "{}",
        title(&[with(drops)])
    );
    let t = title(&[with(drops), probe(10, "probe_added")]);
    assert!(t.contains("(1 with a per-frame probe)"), "{t}");
    let t = title(&[
        with(drops),
        probe(10, "probe_added"),
        probe(20, "probe_removed"),
    ]);
    assert!(t.contains("(0 with a per-frame probe)"), "{t}");
    let t = title(&[with(Some(crate::model::DatapathKind::Pcap))]);
    assert!(t.contains("datapath pcap") && !t.contains("probe"), "{t}");
    // Records of older versions say nothing of it.
    assert!(!title(&[with(None)]).contains("datapath"));
}

#[test]
fn ok_row() {
    let a = app(&[
        attached(0, "tapA", NEW, "routed"),
        stats(1000, "tapA", 10, 0),
    ]);
    let s = screen(&a, at(1500), 200, 30);
    let row = row_of(&s, "tapA");
    assert!(
        row.contains("OK") && row.contains("00:61:fe:ed:ca:fe") && !row.contains('*'),
        "{row}"
    );
    assert!(s.contains("1 taps, 0 in BLACKOUT"));
}

#[test]
fn blackout_row_and_diagnosis() {
    let a = app(&story(7));
    let s = screen(&a, at(2_500), 200, 30);
    let row = row_of(&s, "tapA");
    assert!(row.contains("BLACKOUT"), "{row}");
    assert!(
        row.contains("00:61:fe:ed:ca:fe* (was fe:16:3e:aa:bb:cc)"),
        "{row}"
    );
    assert!(row.contains("2.000s"), "blackout so far: {row}");
    assert!(row.contains("2.1s"), "time since the last RARP: {row}");
    assert!(s.contains("1 in BLACKOUT"));
    assert!(s.contains("VM still sends to fe:16:3e:aa:bb:cc"), "{s}");
    assert!(s.contains("PACKET_OTHERHOST"));
}

#[test]
fn recovered_row_keeps_the_measured_duration() {
    let a = app(&story(11));
    let s = screen(&a, at(60_000), 200, 30);
    let row = row_of(&s, "tapA");
    assert!(
        row.contains("RECOVERED") && row.contains("19.910s"),
        "{row}"
    );
    assert!(s.contains("Blackout of 19910 ms"), "{s}");
}

/// A VM that went silent is QUIET; a tap whose VM never sent anything (plugged ahead of
/// a migration) is waiting for it, not quiet.
#[test]
fn quiet_row() {
    let a = app(&[
        attached(0, "tapQ", NEW, "routed"),
        stats(1000, "tapQ", 4, 0),
        stats(7000, "tapQ", 4, 0),
    ]);
    let s = screen(&a, at(7000), 200, 30);
    assert!(row_of(&s, "tapQ").contains("QUIET"), "{s}");
    assert!(s.contains("sent nothing for 6 s."), "{s}");
    let a = app(&[
        attached(0, "tapW", NEW, "routed"),
        stats(1000, "tapW", 0, 0),
        stats(9000, "tapW", 0, 0),
    ]);
    let s = screen(&a, at(9000), 200, 30);
    assert!(row_of(&s, "tapW").contains("OK"), "{s}");
    assert!(s.contains("Waiting for the VM"), "{s}");
    assert!(!s.contains("sent nothing"), "{s}");
}

#[test]
fn gone_row_stays_with_its_totals() {
    let mut recs = story(7);
    recs.push(stats(800, "tapA", 9, 7));
    recs.push(Record::Detached {
        ts: at(900),
        ifname: "tapA".into(),
        reason: "interface removed".into(),
    });
    let a = app(&recs);
    let s = screen(&a, at(5000), 200, 30);
    let row = row_of(&s, "tapA");
    assert!(row.contains("GONE") && row.contains(" 7 "), "{row}");
    assert!(row.contains("0.400s"), "blackout frozen at removal: {row}");
}

#[test]
fn bridged_mismatch_stays_ok() {
    let a = app(&[
        attached(0, "vnet3", OLD, "bridged"),
        frame(10, "vnet3", "from_vm", "dst_mismatch", NEW),
        stats(1000, "vnet3", 5, 5),
    ]);
    let s = screen(&a, at(1100), 200, 30);
    let row = row_of(&s, "vnet3");
    assert!(row.contains("OK") && row.contains("bridged"), "{row}");
    assert!(s.contains("normal on a bridged tap"), "{s}");
}

#[test]
fn detail_pane_timeline_relative_to_the_switch_over() {
    let mut a = app(&story(11));
    key(&mut a, KeyCode::Enter);
    let s = screen(&a, at(30_000), 200, 40);
    assert!(s.contains("entries of tapA (from the switch-over"), "{s}");
    assert!(
        s.contains("+0.000s  RARP announce from fa:16:3e:aa:bb:cc"),
        "{s}"
    );
    assert!(
        s.contains("-0.100s  tap MAC fe:16:3e:aa:bb:cc → 00:61:fe:ed:ca:fe"),
        "{s}"
    );
    assert!(
        s.contains(
            "+20.210s  first frame to the tap's MAC 00:61:fe:ed:ca:fe: recovered after 19910 ms"
        ),
        "{s}"
    );
    assert!(s.contains("mismatch frames/s"));
    assert_eq!(
        key(&mut a, KeyCode::Esc),
        Action::Continue,
        "Esc closes the details first"
    );
    assert!(!a.app.show_detail);
    assert_eq!(key(&mut a, KeyCode::Char('q')), Action::Quit);
}

#[test]
fn filter_sort_select_pause_clear_help() {
    let mut recs = story(7);
    recs.push(attached(0, "tapB", NEW, "routed"));
    recs.push(attached(0, "vnet9", NEW, "bridged"));
    recs.push(stats(900, "tapA", 9, 7));
    let mut a = app(&recs);
    // Worst first.
    assert_eq!(a.selected_tap().unwrap().ifname, "tapA");
    key(&mut a, KeyCode::Down);
    assert_eq!(a.selected_tap().unwrap().ifname, "tapB");
    key(&mut a, KeyCode::Char('s'));
    assert_eq!(a.app.sort, crate::report::tui::app::SortBy::Name);
    key(&mut a, KeyCode::Char('/'));
    for c in "vnet".chars() {
        key(&mut a, KeyCode::Char(c));
    }
    key(&mut a, KeyCode::Enter);
    let s = screen(&a, at(1000), 200, 30);
    assert!(
        s.contains("VMs (1 shown)") && s.contains("filter: vnet"),
        "{s}"
    );
    key(&mut a, KeyCode::Char('/'));
    key(&mut a, KeyCode::Esc);
    assert_eq!(a.rows().len(), 3);
    key(&mut a, KeyCode::Char('p'));
    a.apply(&Record::Detached {
        ts: at(950),
        ifname: "tapB".into(),
        reason: "x".into(),
    });
    let s = screen(&a, at(1000), 200, 30);
    assert!(s.contains("PAUSED") && !s.contains("GONE"), "{s}");
    key(&mut a, KeyCode::Char('p'));
    assert!(screen(&a, at(1000), 200, 30).contains("GONE"));
    key(&mut a, KeyCode::Char('c'));
    let t = a.engine.tap("tapA").unwrap().clone();
    assert_eq!(a.app.mismatches(&t), 0);
    key(&mut a, KeyCode::Char('?'));
    let s = screen(&a, at(1000), 200, 30);
    assert!(
        s.contains("help (any key)") && s.contains("BLACKOUT   routed tap"),
        "{s}"
    );
    key(&mut a, KeyCode::Char('x'));
    assert!(!a.app.show_help);
}

/// A VM's name from libvirt and a tap's name are shown as text on their row, in the
/// diagnosis and in the timeline: escaped, on one line, never a line of their own.
#[test]
fn foreign_names_stay_on_their_line_in_the_view() {
    for (name, shown) in [
        (NEWLINE_NAME, "web-1\\ntapwatch"),
        (TERMINAL_NAME, "web-\\u{1b}[2J"),
    ] {
        let old = "tap\u{1b}[8m\u{202e}0";
        let mut recs = vec![
            attached(0, old, OLD, "routed"),
            Record::Renamed {
                ts: at(1),
                ifname: "tapA".into(),
                old_ifname: old.into(),
                ifindex: 7,
            },
            identity(2, "tapA", name),
        ];
        recs.extend(stale_mac_story("tapA", 0).into_iter().take(7));
        let mut a = app(&recs);
        key(&mut a, KeyCode::Enter);
        let s = screen(&a, at(2_500), 250, 40);
        let row = s
            .lines()
            .find(|l| l.contains("BLACKOUT") && l.contains("routed"))
            .unwrap_or_else(|| panic!("no row in\n{s}"));
        assert!(row.contains(shown), "{row}");
        let diagnosis = s
            .lines()
            .skip_while(|l| !l.contains("diagnosis"))
            .nth(1)
            .unwrap();
        assert!(
            diagnosis.contains(shown) && diagnosis.contains("VM still sends"),
            "the name and the diagnosis on one line: {s}"
        );
        assert!(
            s.lines()
                .any(|l| l.contains("timeline of web-") && l.contains(shown)),
            "{s}"
        );
        assert!(
            s.contains("tap renamed from tap\\u{1b}[8m\\u{202e}0"),
            "{s}"
        );
        assert!(
            !s.lines()
                .any(|l| l.trim_start_matches(['│', ' ']).starts_with("tapwatch: ")),
            "no line of a name's own: {s}"
        );
    }
}

mod picture;

#[test]
fn small_terminal_does_not_panic() {
    let a = app(&story(11));
    for (w, h) in [(20, 8), (80, 12), (1, 1)] {
        screen(&a, at(1000), w, h);
    }
}

#[test]
fn thousand_taps_render_only_the_visible_rows() {
    let recs: Vec<Record> = (0..1000)
        .map(|i| attached(0, &format!("tap{i:04}"), NEW, "routed"))
        .collect();
    let mut a = app(&recs);
    for _ in 0..500 {
        key(&mut a, KeyCode::Down);
    }
    let s = screen(&a, at(1000), 200, 40);
    assert!(s.contains("VMs (1000 shown)"));
    assert!(s.contains("tap0500"), "the selection stays in view");
    assert!(!s.contains("tap0000"));
}
