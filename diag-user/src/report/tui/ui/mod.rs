//! Rendering: a pure function of the app state and the time. The table ([`table`]), the
//! selected VM's timeline ([`timeline`]) and the lines around them ([`status`]) each have
//! a module of their own.

pub mod status;
pub mod table;
pub mod timeline;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Block, Borders, Clear, Paragraph, Sparkline, Wrap},
    Frame,
};

use super::app::App;
use crate::{
    model::clock::Ts,
    model::mac::MacAddr,
    report::{story::Story, text::one_line},
    verdict::{Engine, Tap as TapView},
};

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

pub(super) fn mac(m: Option<MacAddr>) -> String {
    crate::model::mac::show(m, "-")
}

/// The tap's MAC, marked with `*` and the previous one when it changed.
pub fn tap_mac_cell(t: &TapView) -> String {
    match t.prev_mac {
        Some((prev, _)) => format!("{}* (was {})", mac(t.mac), mac(prev)),
        None => mac(t.mac),
    }
}

/// Lines of the diagnosis kept before the table and the picture get theirs.
const DIAGNOSIS_LINES: u16 = 4;

/// The heights of the view's parts, top to bottom.
struct Heights {
    table: u16,
    picture: u16,
    detail: u16,
    diagnosis: u16,
    status: u16,
}

/// Shares `height` lines out: the title and the keys, the status line and a few lines of
/// the diagnosis first, then a few rows of the table, the timeline picture, the rest of
/// the diagnosis, and the rest to the table or, with the details open, to the list of
/// entries.
fn heights(
    height: u16,
    rows: usize,
    picture: bool,
    detail: bool,
    diag: u16,
    status: u16,
) -> Heights {
    let mut left = height.saturating_sub(2);
    let status = status.min(left);
    left -= status;
    // Open details ask for room: the diagnosis gives a line of its first ones.
    let first = DIAGNOSIS_LINES - u16::from(detail);
    let mut diagnosis = diag.min(first).min(left);
    left -= diagnosis;
    let wanted = table::wanted_height(rows);
    let table_min = wanted.min(5);
    let picture = if picture && left >= table_min + timeline::HEIGHT {
        timeline::HEIGHT
    } else {
        0
    };
    left -= picture;
    // The details, when open, come before the rest of the diagnosis.
    let more = if detail {
        0
    } else {
        diag.saturating_sub(diagnosis)
            .min(left.saturating_sub(wanted.min(left)))
    };
    diagnosis += more;
    left -= more;
    let (table, detail) = if detail {
        let table = wanted
            .min(left.saturating_sub(left / 2).max(table_min))
            .min(left);
        (table, left - table)
    } else {
        (left, 0)
    };
    Heights {
        table,
        picture,
        detail,
        diagnosis,
        status,
    }
}

/// Draws the view of `engine`'s taps as `app` says.
pub fn draw(f: &mut Frame, app: &App, engine: &Engine, now: Ts) {
    let now = app.now(engine, now);
    let area = f.area();
    let taps = app.taps(engine);
    let rows = app.rows(taps);
    let selected = app.selected_tap(taps);
    let story = selected.and_then(|t| Story::of(t, now));
    let diagnosis = match selected {
        Some(t) => format!("{}: {}", one_line(t.vm_name()), one_line(&t.diagnosis(now))),
        None => "No tap matches yet: tapwatch attaches to new ones as they appear.".into(),
    };
    let status_text = status::status(app, &app.run, taps, selected, now);
    let h = heights(
        area.height,
        rows.len(),
        story.is_some(),
        app.show_detail,
        status::lines_for(&diagnosis, area.width, 12) + 1,
        status::lines_for(&status_text, area.width, 2),
    );
    let [title, table_area, picture, detail, diag, status_area, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(h.table),
        Constraint::Length(h.picture),
        Constraint::Length(h.detail),
        Constraint::Length(h.diagnosis),
        Constraint::Length(h.status),
        Constraint::Length(1),
    ])
    .areas(area);

    f.render_widget(
        Paragraph::new(status::title(app, taps, area.width as usize)),
        title,
    );
    table::draw(f, app, taps, &rows, now, table_area);
    if let (Some(t), Some(story)) = (selected, &story) {
        if h.picture > 0 {
            timeline::draw_picture(f, t, story, picture);
        }
    }
    if let Some(t) = selected.filter(|_| h.detail > 0) {
        draw_detail(f, app, t, detail);
    }
    f.render_widget(
        Paragraph::new(diagnosis)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::TOP).title("diagnosis")),
        diag,
    );
    f.render_widget(
        Paragraph::new(status_text)
            .wrap(Wrap { trim: true })
            .style(Style::default().fg(Color::Yellow)),
        status_area,
    );
    f.render_widget(
        Paragraph::new(status::footer(app, area.width as usize))
            .style(Style::default().fg(Color::DarkGray)),
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

/// The details: the list of the selected VM's timeline entries, and its mismatch frames
/// per second.
fn draw_detail(f: &mut Frame, app: &App, t: &TapView, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(area);
    timeline::draw_entries(f, t, app.timeline_scroll, left);
    let data: Vec<u64> = t.mismatch_series.iter().copied().collect();
    let width = right.width.saturating_sub(2) as usize;
    let data = &data[data.len().saturating_sub(width)..];
    let peak = data.iter().max().copied().unwrap_or(0);
    let title = if right.width >= 30 {
        format!("mismatch frames/s (peak {peak})")
    } else {
        format!("stale/s (peak {peak})")
    };
    f.render_widget(
        Sparkline::default()
            .data(data)
            .style(Style::default().fg(Color::Red))
            .block(Block::default().borders(Borders::ALL).title(title)),
        right,
    );
}

fn draw_help(f: &mut Frame) {
    let text = vec![
        Line::from("q / Esc     quit (Esc first closes the details)"),
        Line::from("↑ ↓         select a VM"),
        Line::from("Enter       details: timeline entries and mismatch sparkline"),
        Line::from("[ ]         scroll the middle of the entries"),
        Line::from("/           filter by VM or tap name"),
        Line::from("s           sort: state, name, mismatches"),
        Line::from("p           pause the display (counting goes on)"),
        Line::from("c           clear the mismatch counters shown"),
        Line::from("n           nudge the VM (BLACKOUT): asks, then writes one ARP frame"),
        Line::from(""),
        Line::from("BLACKOUT   routed tap, the VM sends to a MAC the tap does not have"),
        Line::from("AT RISK    a blackout is foreseen for a VM migrating in"),
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
