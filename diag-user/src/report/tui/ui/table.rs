//! The table of VMs at any width: the columns that matter most stay, the others go as the
//! terminal narrows, and no cell is cut so that two rows read alike.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::Span,
    widgets::{Block, Borders, Cell, Row, Table},
    Frame,
};

use super::{ago, duration_ms, mac, tap_mac_cell, App};
use crate::{
    model::clock::Ts,
    report::text::one_line,
    verdict::{State, Tap as TapView},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Vm,
    Tap,
    Mode,
    TapMac,
    GuestMac,
    From,
    To,
    Mismatch,
    MmPs,
    RarpAgo,
    GarpAgo,
    State,
    Blackout,
}

/// Left to right, as shown.
const ORDER: [Col; 13] = [
    Col::Vm,
    Col::Tap,
    Col::Mode,
    Col::TapMac,
    Col::GuestMac,
    Col::From,
    Col::To,
    Col::Mismatch,
    Col::MmPs,
    Col::RarpAgo,
    Col::GarpAgo,
    Col::State,
    Col::Blackout,
];

/// Most important first: what a narrow terminal keeps. The VM, its state and its blackout
/// are always there.
const PRIORITY: [Col; 10] = [
    Col::Mismatch,
    Col::Tap,
    Col::TapMac,
    Col::MmPs,
    Col::RarpAgo,
    Col::Mode,
    Col::GarpAgo,
    Col::From,
    Col::To,
    Col::GuestMac,
];

impl Col {
    fn header(self) -> &'static str {
        match self {
            Col::Vm => "VM",
            Col::Tap => "TAP",
            Col::Mode => "MODE",
            Col::TapMac => "TAP MAC",
            Col::GuestMac => "GUEST MAC",
            Col::From => "FROM/s",
            Col::To => "TO/s",
            Col::Mismatch => "MISMATCH",
            Col::MmPs => "MM/s",
            Col::RarpAgo => "RARP AGO",
            Col::GarpAgo => "GARP AGO",
            Col::State => "STATE",
            Col::Blackout => "BLACKOUT",
        }
    }
}

/// The text of one cell (the state is styled apart).
fn text(col: Col, app: &App, t: &TapView, now: Ts, wide_mac: bool) -> String {
    match col {
        Col::Vm => one_line(t.vm_name()).into_owned(),
        Col::Tap => one_line(&t.ifname).into_owned(),
        Col::Mode => t.mode.as_str().into(),
        Col::TapMac if wide_mac => tap_mac_cell(t),
        Col::TapMac => format!(
            "{}{}",
            mac(t.mac),
            if t.prev_mac.is_some() { "*" } else { "" }
        ),
        Col::GuestMac => mac(t.guest_mac()),
        Col::From => format!("{:.0}", t.from_vm_fps),
        Col::To => format!("{:.0}", t.to_vm_fps),
        Col::Mismatch => app.mismatches(t).to_string(),
        Col::MmPs => format!("{:.0}", t.mismatch_ps),
        Col::RarpAgo => ago(t.last_rarp, now),
        Col::GarpAgo => ago(t.last_garp, now),
        Col::State => state_text(t).into(),
        Col::Blackout => duration_ms(t.blackout_ms(now)),
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// `name` in at most `w` characters: whole when it fits, else its beginning and its end
/// around an ellipsis (the end is where names of one family differ: `web-3`, `web-4`).
pub fn elide(name: &str, w: usize) -> String {
    let n = width(name);
    if n <= w {
        return name.to_string();
    }
    if w <= 1 {
        return "…".chars().take(w).collect();
    }
    let keep = w - 1;
    let head = keep / 2;
    let tail = keep - head;
    let chars: Vec<char> = name.chars().collect();
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[n - tail..]);
    out
}

/// The narrowest width, from `floor` up, at which the names still all read differently
/// (names that are equal stay equal).
pub fn distinct_width(names: &[String], floor: usize) -> usize {
    let full = names.iter().map(|n| width(n)).max().unwrap_or(0);
    let mut distinct: Vec<&String> = names.iter().collect();
    distinct.sort();
    distinct.dedup();
    (floor.min(full)..=full)
        .find(|&w| {
            let mut shown: Vec<String> = distinct.iter().map(|n| elide(n, w)).collect();
            shown.sort();
            shown.dedup();
            shown.len() == distinct.len()
        })
        .unwrap_or(full)
}

/// The columns shown and their widths, for rows whose cells are `cells` in a table
/// `room` characters wide (between its borders).
fn layout(cells: &[Vec<String>], room: usize) -> Vec<(Col, usize)> {
    let natural = |c: Col| {
        let i = ORDER
            .iter()
            .position(|o| *o == c)
            .expect("every column is in ORDER");
        cells
            .iter()
            .map(|r| width(&r[i]))
            .chain([width(c.header())])
            .max()
            .unwrap_or(0)
    };
    let names: Vec<String> = cells.iter().map(|r| r[0].clone()).collect();
    let vm_full = natural(Col::Vm);
    let vm_min = distinct_width(&names, 8).max(width(Col::Vm.header()));
    let state_w = natural(Col::State).max("RECOVERED".len());
    let mut shown = vec![
        (Col::Vm, vm_min.min(vm_full)),
        (Col::State, state_w),
        (Col::Blackout, natural(Col::Blackout)),
    ];
    let used = |shown: &[(Col, usize)]| {
        shown.iter().map(|(_, w)| w).sum::<usize>() + shown.len().saturating_sub(1)
    };
    // The VM's whole name, up to a sensible width, before anything else.
    let vm_want = vm_full.min(24).max(vm_min);
    let spare = room.saturating_sub(used(&shown));
    shown[0].1 = (shown[0].1 + spare).min(vm_want);
    for c in PRIORITY {
        let w = if c == Col::TapMac {
            "00:00:00:00:00:00*".len()
        } else {
            natural(c)
        };
        if used(&shown) + 1 + w <= room {
            shown.push((c, w));
        }
    }
    let spare = room.saturating_sub(used(&shown));
    shown[0].1 = (shown[0].1 + spare).min(vm_full);
    // The tap's MAC with the one it had before, when that fits too.
    if let Some(i) = shown.iter().position(|(c, _)| *c == Col::TapMac) {
        let wide = natural(Col::TapMac).max(shown[i].1);
        if used(&shown) - shown[i].1 + wide <= room {
            shown[i].1 = wide;
        }
    }
    shown.sort_by_key(|(c, _)| ORDER.iter().position(|o| o == c));
    shown
}

fn state_text(t: &TapView) -> &'static str {
    if at_risk(t) {
        "AT RISK"
    } else {
        t.state.as_str()
    }
}

/// AT RISK is shown in place of OK while a blackout is foreseen for a VM that has not
/// resumed (the reason is in the diagnosis, under the table).
fn at_risk(t: &TapView) -> bool {
    t.state == State::Ok
        && t.forecast
            .as_ref()
            .is_some_and(|f| f.at_risk && f.standing())
}

fn state_style(t: &TapView) -> Style {
    if at_risk(t) {
        return Style::default()
            .fg(Color::Magenta)
            .add_modifier(Modifier::BOLD);
    }
    match t.state {
        State::Ok => Style::default().fg(Color::Green),
        State::Blackout => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        State::Recovered => Style::default().fg(Color::Yellow),
        State::Quiet => Style::default().fg(Color::Gray),
        State::Gone => Style::default().add_modifier(Modifier::DIM),
    }
}

/// How many lines the table wants for `rows` rows (borders and header included).
pub fn wanted_height(rows: usize) -> u16 {
    (rows.max(1) + 3).min(u16::MAX as usize) as u16
}

pub fn draw(f: &mut Frame, app: &App, taps: &[TapView], rows: &[usize], now: Ts, area: Rect) {
    // Only the visible window is built: smooth with thousands of taps.
    let height = area.height.saturating_sub(3) as usize;
    let sel = app.selected_pos(taps, rows);
    let offset = match sel {
        Some(s) if height > 0 && s >= height => s + 1 - height,
        _ => 0,
    };
    let visible: Vec<(usize, &TapView)> = rows
        .iter()
        .enumerate()
        .skip(offset)
        .take(height.max(1))
        .map(|(pos, &i)| (pos, &taps[i]))
        .collect();
    let full: Vec<Vec<String>> = visible
        .iter()
        .map(|(_, t)| ORDER.iter().map(|&c| text(c, app, t, now, true)).collect())
        .collect();
    let cols = layout(&full, area.width.saturating_sub(2) as usize);
    let wide_mac = cols
        .iter()
        .any(|&(c, w)| c == Col::TapMac && w > "00:00:00:00:00:00*".len());
    let built = visible.iter().map(|&(pos, t)| {
        let cells = cols.iter().map(|&(c, w)| match c {
            Col::State => Cell::from(Span::styled(state_text(t), state_style(t))),
            Col::Vm | Col::Tap => Cell::from(elide(&text(c, app, t, now, wide_mac), w)),
            _ => Cell::from(text(c, app, t, now, wide_mac)),
        });
        let style = if Some(pos) == sel {
            Style::default().add_modifier(Modifier::REVERSED)
        } else if t.state == State::Gone {
            Style::default().add_modifier(Modifier::DIM)
        } else {
            Style::default()
        };
        Row::new(cells).style(style)
    });
    let header = Row::new(cols.iter().map(|(c, _)| Cell::from(c.header())))
        .style(Style::default().add_modifier(Modifier::BOLD));
    let widths = cols.iter().map(|&(_, w)| Constraint::Length(w as u16));
    let table = Table::new(built, widths).header(header).block(
        Block::default()
            .borders(Borders::ALL)
            .title(format!("VMs ({} shown)", rows.len())),
    );
    f.render_widget(table, area);
}
