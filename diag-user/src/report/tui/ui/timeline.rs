//! The selected VM's outage drawn along a time axis, and its list of timeline entries.

use ratatui::{
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph},
    Frame,
};

use crate::{
    model::clock::Ts,
    report::{
        story::{length, tick_label, Bar, Story},
        text::one_line,
    },
    verdict::Tap as TapView,
};

/// Lane labels take this many columns; the axis the rest.
pub const LABEL: usize = 9;
/// The picture's lines: marks, network, guest, ticks and their labels, and borders.
pub const HEIGHT: u16 = 7;

const NETWORK: char = '━';
const GUEST: char = '█';

fn network_style() -> Style {
    Style::default().fg(Color::Cyan)
}

fn guest_style() -> Style {
    Style::default().fg(Color::Red)
}

/// The picture's lines for an axis `cells` wide (the label column comes first).
pub fn lines(story: &Story, cells: usize) -> Vec<Line<'static>> {
    let mut marks = vec![' '; cells];
    for (x, m) in story.marks_in_cells(cells) {
        marks[x] = m.kind.glyph();
    }
    let zero = story.cell(story.origin, cells);
    let mut tick_row = vec!['─'; cells];
    let mut label_row = vec![' '; cells];
    for (x, ms) in story.ticks(cells, 10) {
        tick_row[x] = if ms == 0 { '┼' } else { '┬' };
        let label = tick_label(ms);
        // A label starts at its tick, or ends there when it would run off the axis.
        let start = if x + label.chars().count() > cells {
            (x + 1).saturating_sub(label.chars().count())
        } else {
            x
        };
        if label_row[start..]
            .iter()
            .take(label.len() + 1)
            .all(|c| *c == ' ')
        {
            for (i, ch) in label.chars().enumerate() {
                if let Some(slot) = label_row.get_mut(start + i) {
                    *slot = ch;
                }
            }
        }
    }
    if zero < cells && story.shows(story.origin) {
        tick_row[zero] = '┼';
    }
    vec![
        labelled("marks", marks.into_iter().collect(), Style::default()),
        lane(
            "network",
            story,
            story.network,
            NETWORK,
            network_style(),
            cells,
        ),
        lane("guest", story, story.guest, GUEST, guest_style(), cells),
        labelled(
            "",
            tick_row.into_iter().collect(),
            Style::default().fg(Color::DarkGray),
        ),
        labelled("", label_row.into_iter().collect(), Style::default()),
    ]
}

fn labelled(label: &str, body: String, style: Style) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            format!("{label:<LABEL$}"),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(body, style),
    ])
}

/// One lane: its bar where it lies on the axis, and its length beside it when that fits.
fn lane(
    label: &str,
    story: &Story,
    bar: Option<Bar>,
    fill: char,
    style: Style,
    cells: usize,
) -> Line<'static> {
    let Some(bar) = bar else {
        return labelled(label, "-".into(), Style::default().fg(Color::DarkGray));
    };
    let (a, b) = (story.cell(bar.from, cells), story.cell(bar.to, cells));
    let mut spans = vec![
        Span::styled(
            format!("{label:<LABEL$}"),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(" ".repeat(a)),
        Span::styled(fill.to_string().repeat(b - a + 1), style),
    ];
    let words = format!(
        " {}{}",
        length(bar.ms()),
        if bar.open { " so far" } else { "" }
    );
    if b + 1 + words.chars().count() <= cells {
        spans.push(Span::raw(words));
    }
    Line::from(spans)
}

/// The picture's title: the longest that fits in `width`.
fn title(t: &TapView, story: &Story, width: usize) -> String {
    let name = one_line(t.vm_name());
    let part = |b: Option<Bar>| {
        b.map_or("-".to_string(), |b| {
            format!("{}{}", length(b.ms()), if b.open { "…" } else { "" })
        })
    };
    let parts = format!(
        "network {} · guest {}",
        part(story.network),
        part(story.guest)
    );
    let at = story.origin.clock();
    [
        format!("timeline of {name}: 0 = switch-over at {at} · {parts}"),
        format!("{name}: 0 = switch-over {at} · {parts}"),
        format!("{name} · {parts}"),
        format!("{name} · {at}"),
        name.to_string(),
    ]
    .into_iter()
    .find(|s| s.chars().count() + 2 <= width)
    .unwrap_or_else(|| super::table::elide(&name, width.saturating_sub(2)))
}

/// The legend under the picture: the marks it draws.
fn legend(story: &Story) -> String {
    let kinds = story.shown_kinds();
    let mut out: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} {}", k.glyph(), k.name()))
        .collect();
    if story.outside > 0 {
        out.push(format!("{} more off the axis", story.outside));
    }
    out.join("  ")
}

pub fn draw_picture(f: &mut Frame, t: &TapView, story: &Story, area: Rect) {
    let cells = (area.width as usize).saturating_sub(2 + LABEL).max(1);
    let block = Block::default()
        .borders(Borders::ALL)
        .title(title(t, story, area.width as usize))
        .title_bottom(legend(story));
    f.render_widget(Paragraph::new(lines(story, cells)).block(block), area);
}

/// The tap's entries in time order, the first stale frame and the last one among them.
fn entries(t: &TapView) -> Vec<(Ts, String)> {
    let mut entries: Vec<(Ts, String)> =
        t.timeline.iter().map(|e| (e.ts, e.what.clone())).collect();
    if let Some(first) = t.first_mismatch {
        entries.push((first, "first frame to a foreign MAC".into()));
    }
    if let Some(last) = t.last_mismatch {
        entries.push((last, "last frame to a foreign MAC".into()));
    }
    entries.sort_by_key(|(ts, _)| *ts);
    entries
}

/// A line of the list of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    Entry(usize),
    /// That many entries hidden here, before (true) or after the window.
    Hidden(usize, bool),
}

/// Which entries `rows` lines show: the first and the last always, and a window of the
/// middle that ends `scroll` entries before the last.
pub fn window(len: usize, rows: usize, scroll: usize) -> Vec<Shown> {
    if len <= rows {
        return (0..len).map(Shown::Entry).collect();
    }
    if rows < 3 {
        return [0, len - 1]
            .into_iter()
            .take(rows)
            .map(Shown::Entry)
            .collect();
    }
    // The middle, without the first and the last.
    let middle = len - 2;
    // Scrolled, the window needs a line for what is hidden on each side of it.
    let after = if rows < 5 {
        0
    } else {
        scroll.min(middle - (rows - 3))
    };
    let mut room = rows - 2 - usize::from(after > 0);
    let end = middle - after;
    let start = if end <= room {
        0
    } else {
        room -= 1;
        end - room
    };
    let mut out = vec![Shown::Entry(0)];
    if start > 0 {
        out.push(Shown::Hidden(start, true));
    }
    out.extend((start..end).map(|i| Shown::Entry(i + 1)));
    if after > 0 {
        out.push(Shown::Hidden(after, false));
    }
    out.push(Shown::Entry(len - 1));
    out
}

/// How far the middle of `t`'s entries can scroll back in `rows` lines.
pub fn max_scroll(t: &TapView, rows: usize) -> usize {
    let len = entries(t).len();
    if len <= rows || rows < 5 {
        0
    } else {
        len - 2 - (rows - 3)
    }
}

pub fn draw_entries(f: &mut Frame, t: &TapView, scroll: usize, area: Rect) {
    let origin = t.switchover().or(t.first_announce);
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
    let all = entries(t);
    let rows = area.height.saturating_sub(2) as usize;
    let hidden = Style::default().fg(Color::DarkGray);
    let lines: Vec<Line> = window(all.len(), rows, scroll)
        .into_iter()
        .map(|shown| match shown {
            Shown::Entry(i) => {
                let (ts, what) = &all[i];
                Line::from(format!("{:>10}  {}", rel(*ts), one_line(what)))
            }
            Shown::Hidden(n, true) => {
                Line::styled(format!("{:>10}  {n} earlier ([ scrolls back)", "⋮"), hidden)
            }
            Shown::Hidden(n, false) => {
                Line::styled(format!("{:>10}  {n} later (] scrolls on)", "⋮"), hidden)
            }
        })
        .collect();
    let title = match origin {
        Some(o) => format!(
            "entries of {} (from the switch-over, {})",
            one_line(t.vm_name()),
            o.clock()
        ),
        None => format!("entries of {}", one_line(t.vm_name())),
    };
    let width = area.width as usize;
    let title = [
        title,
        format!("entries ({}), from the switch-over", all.len()),
    ]
    .into_iter()
    .find(|t| t.chars().count() + 2 <= width)
    .unwrap_or_else(|| format!("entries ({})", all.len()));
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}
