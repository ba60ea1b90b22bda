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

/// The state, or AT RISK while a blackout is foreseen for a VM that has not resumed (the
/// reason is in the diagnosis, under the table).
fn state_cell(t: &TapView) -> Cell<'static> {
    let at_risk = t
        .forecast
        .as_ref()
        .is_some_and(|f| f.at_risk && f.standing());
    if at_risk && t.state == State::Ok {
        let style = Style::default()
            .fg(Color::Magenta)
            .add_modifier(Modifier::BOLD);
        return Cell::from(Span::styled("AT RISK", style));
    }
    Cell::from(Span::styled(t.state.as_str(), state_style(t.state)))
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
        state_cell(t),
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
mod tests;
