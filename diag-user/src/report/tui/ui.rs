//! Rendering: a pure function of the app state and the time.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap},
    Frame,
};

use super::app::App;
use crate::{
    model::clock::Ts,
    model::mac::MacAddr,
    report::text::one_line,
    verdict::{Engine, State, Tap as TapView},
};

const HEADER: [&str; 13] = [
    "VM",
    "TAP",
    "MODE",
    "TAP MAC",
    "GUEST MAC",
    "FROM/s",
    "TO/s",
    "MISMATCH",
    "MM/s",
    "RARP AGO",
    "GARP AGO",
    "STATE",
    "BLACKOUT",
];

fn widths() -> [Constraint; 13] {
    [
        Constraint::Length(22),
        Constraint::Length(15),
        Constraint::Length(7),
        Constraint::Length(42),
        Constraint::Length(17),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
    ]
}

fn state_style(s: State) -> Style {
    match s {
        State::Ok => Style::default().fg(Color::Green),
        State::Blackout => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        State::Recovered => Style::default().fg(Color::Yellow),
        State::Quiet => Style::default().fg(Color::Gray),
        State::Gone => Style::default().add_modifier(Modifier::DIM),
    }
}

/// "3.2s", "4m05s", "-".
pub fn ago(t: Option<Ts>, now: Ts) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let ms = now.ms_since(t).max(0);
            if ms < 60_000 {
                format!("{:.1}s", ms as f64 / 1000.0)
            } else {
                format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
            }
        }
    }
}

/// "19.910s", "-".
pub fn duration_ms(ms: Option<u64>) -> String {
    ms.map(|ms| format!("{}.{:03}s", ms / 1000, ms % 1000))
        .unwrap_or_else(|| "-".into())
}

fn mac(m: Option<MacAddr>) -> String {
    crate::model::mac::show(m, "-")
}

/// The tap's MAC, marked with `*` and the previous one when it changed.
pub fn tap_mac_cell(t: &TapView) -> String {
    match t.prev_mac {
        Some((prev, _)) => format!("{}* (was {})", mac(t.mac), mac(prev)),
        None => mac(t.mac),
    }
}

fn row<'a>(app: &App, t: &'a TapView, now: Ts) -> Row<'a> {
    let cells = vec![
        Cell::from(one_line(t.vm_name()).into_owned()),
        Cell::from(one_line(&t.ifname).into_owned()),
        Cell::from(t.mode.as_str()),
        Cell::from(tap_mac_cell(t)),
        Cell::from(mac(t.guest_mac())),
        Cell::from(format!("{:.0}", t.from_vm_fps)),
        Cell::from(format!("{:.0}", t.to_vm_fps)),
        Cell::from(app.mismatches(t).to_string()),
        Cell::from(format!("{:.0}", t.mismatch_ps)),
        Cell::from(ago(t.last_rarp, now)),
        Cell::from(ago(t.last_garp, now)),
        Cell::from(Span::styled(t.state.as_str(), state_style(t.state))),
        Cell::from(duration_ms(t.blackout_ms(now))),
    ];
    let style = if t.state == State::Gone {
        Style::default().add_modifier(Modifier::DIM)
    } else {
        Style::default()
    };
    Row::new(cells).style(style)
}

/// Draws the view of `engine`'s taps as `app` says.
pub fn draw(f: &mut Frame, app: &App, engine: &Engine, now: Ts) {
    let now = app.now(engine, now);
    let detail_h = if app.show_detail { 14 } else { 0 };
    let [title, table, detail, diag, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(detail_h),
        Constraint::Length(5),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let taps = app.taps(engine);
    let rows = app.rows(taps);
    let blackouts = taps.iter().filter(|t| t.state == State::Blackout).count();
    let mut head = vec![
        Span::styled("tapwatch", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {} taps, {} in BLACKOUT  sort: {}",
            taps.len(),
            blackouts,
            app.sort.label()
        )),
    ];
    if let Some(dp) = datapath_line(taps) {
        head.push(Span::raw(format!("  {dp}")));
    }
    if !app.filter.is_empty() {
        head.push(Span::raw(format!("  filter: {}", one_line(&app.filter))));
    }
    if app.paused.is_some() {
        head.push(Span::styled("  PAUSED", Style::default().fg(Color::Yellow)));
    }
    if app.finished {
        head.push(Span::styled(
            "  (stopped: q to quit)",
            Style::default().fg(Color::Yellow),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(head)), title);

    draw_table(f, app, taps, &rows, now, table);
    let selected = app.selected_tap(taps);
    if app.show_detail {
        if let Some(t) = selected {
            draw_detail(f, t, detail);
        }
    }
    let diagnosis = match selected {
        Some(t) => format!("{}: {}", one_line(t.vm_name()), one_line(&t.diagnosis(now))),
        None => "No tap matches yet: tapwatch attaches to new ones as they appear.".into(),
    };
    f.render_widget(
        Paragraph::new(diagnosis)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::TOP).title("diagnosis")),
        diag,
    );
    let foot = if app.editing_filter {
        format!(
            "filter: {}▏ (Enter apply, Esc clear)",
            one_line(&app.filter)
        )
    } else if !app.status.is_empty() {
        one_line(&app.status).into_owned()
    } else {
        "q quit  ↑↓ select  Enter details  / filter  s sort  p pause  c clear  ? help".into()
    };
    f.render_widget(
        Paragraph::new(foot).style(Style::default().fg(Color::DarkGray)),
        footer,
    );

    if app.show_help {
        draw_help(f);
    }
}

/// How the live taps are watched: `datapath drops (2 with a per-frame probe)`, or each
/// datapath with its count when they differ.
pub fn datapath_line(taps: &[TapView]) -> Option<String> {
    let live: Vec<&TapView> = taps.iter().filter(|t| t.gone_at.is_none()).collect();
    let mut kinds: Vec<crate::model::DatapathKind> =
        live.iter().filter_map(|t| t.datapath).collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    let name = match kinds.as_slice() {
        [] => return None,
        [one] => one.as_str().to_string(),
        many => many
            .iter()
            .map(|k| {
                let n = live.iter().filter(|t| t.datapath == Some(*k)).count();
                format!("{k} ×{n}")
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let drops = live
        .iter()
        .filter(|t| t.datapath == Some(crate::model::DatapathKind::Drops))
        .count();
    let probes = live.iter().filter(|t| t.probe).count();
    Some(if drops > 0 {
        format!("datapath {name} ({probes} with a per-frame probe)")
    } else {
        format!("datapath {name}")
    })
}

fn draw_table(f: &mut Frame, app: &App, taps: &[TapView], rows: &[usize], now: Ts, area: Rect) {
    // Only the visible window is built: smooth with thousands of taps.
    let height = area.height.saturating_sub(3) as usize;
    let sel = app.selected_pos(taps, rows);
    let offset = match sel {
        Some(s) if height > 0 && s >= height => s + 1 - height,
        _ => 0,
    };
    let visible = rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(height.max(1))
        .map(|(pos, &i)| {
            let r = row(app, &taps[i], now);
            if Some(pos) == sel {
                r.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                r
            }
        });
    let header =
        Row::new(HEADER.map(Cell::from)).style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(visible, widths()).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!("VMs ({} shown)", rows.len())),
    );
    f.render_widget(table, area);
}

fn draw_detail(f: &mut Frame, t: &TapView, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(area);
    let origin = t.first_announce;
    let rel = |ts: Ts| match origin {
        Some(o) => {
            let ms = ts.ms_since(o);
            format!(
                "{}{}.{:03}s",
                if ms < 0 { "-" } else { "+" },
                ms.abs() / 1000,
                ms.abs() % 1000
            )
        }
        None => ts.clock(),
    };
    let mut entries: Vec<(Ts, String)> =
        t.timeline.iter().map(|e| (e.ts, e.what.clone())).collect();
    if let Some(first) = t.first_mismatch {
        entries.push((first, "first frame to a foreign MAC".into()));
    }
    if let Some(last) = t.last_mismatch {
        entries.push((last, "last frame to a foreign MAC".into()));
    }
    entries.sort_by_key(|(ts, _)| *ts);
    let keep = area.height.saturating_sub(2) as usize;
    let skip = entries.len().saturating_sub(keep);
    let entries: Vec<Line> = entries
        .into_iter()
        .skip(skip)
        .map(|(ts, what)| Line::from(format!("{:>10}  {}", rel(ts), one_line(&what))))
        .collect();
    let mut title = match origin {
        Some(o) => format!(
            "timeline of {} (times from the first announce, {})",
            one_line(t.vm_name()),
            o.clock()
        ),
        None => format!("timeline of {} (no announce seen)", one_line(t.vm_name())),
    };
    if t.switchover().is_some() {
        let gap = |v: Option<u64>| {
            v.map_or("…".to_string(), |ms| {
                format!("+{:.1}s", ms as f64 / 1000.0)
            })
        };
        title.push_str(&format!(
            " · delivered to {} · accepted from {}",
            gap(t.inbound_gap_ms()),
            gap(t.outbound_gap_ms())
        ));
    }
    f.render_widget(
        Paragraph::new(entries).block(Block::default().borders(Borders::ALL).title(title)),
        left,
    );
    let data: Vec<u64> = t.mismatch_series.iter().copied().collect();
    let width = right.width.saturating_sub(2) as usize;
    let data = &data[data.len().saturating_sub(width)..];
    let peak = data.iter().max().copied().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .data(data)
            .style(Style::default().fg(Color::Red))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("mismatch frames/s (peak {peak})")),
            ),
        right,
    );
}

fn draw_help(f: &mut Frame) {
    let text = vec![
        Line::from("q / Esc     quit (Esc first closes the details)"),
        Line::from("↑ ↓         select a VM"),
        Line::from("Enter       details: timeline and mismatch sparkline"),
        Line::from("/           filter by VM or tap name"),
        Line::from("s           sort: state, name, mismatches"),
        Line::from("p           pause the display (counting goes on)"),
        Line::from("c           clear the mismatch counters shown"),
        Line::from(""),
        Line::from("BLACKOUT   routed tap, the VM sends to a MAC the tap does not have"),
        Line::from("RECOVERED  correctly addressed frames again after a blackout"),
        Line::from("QUIET      nothing from the VM for 5 s"),
        Line::from("GONE       the tap was removed"),
    ];
    let area = f.area();
    let w = 74.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: (area.width - w) / 2,
        y: (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text).block(
            Block::default()
                .borders(Borders::ALL)
                .title("help (any key)"),
        ),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::{
        model::{
            probe::{ProbeChange, ProbeReason},
            Record,
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
    fn detail_pane_timeline_relative_to_the_first_announce() {
        let mut a = app(&story(11));
        key(&mut a, KeyCode::Enter);
        let s = screen(&a, at(30_000), 200, 40);
        assert!(s.contains("times from the first announce"), "{s}");
        assert!(
            s.contains("+0.000s  RARP announce from fa:16:3e:aa:bb:cc"),
            "{s}"
        );
        assert!(
            s.contains("-0.100s  tap MAC fe:16:3e:aa:bb:cc → 00:61:fe:ed:ca:fe"),
            "{s}"
        );
        assert!(s.contains("+20.210s  first frame to the tap's MAC 00:61:fe:ed:ca:fe: recovered after 19910 ms"), "{s}");
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
}
