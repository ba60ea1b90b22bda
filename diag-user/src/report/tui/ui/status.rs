//! The lines around the table: the title, the status line (the lab's truth, a notice while
//! it is true) and the keys.

use ratatui::{
    style::{Color, Modifier, Style},
    text::{Line, Span},
};

use super::App;
use crate::{
    model::{clock::Ts, LabRecord, NoticeCode, Scenario},
    report::{pipeline::Notice, story::length, text::one_line},
    verdict::{State, Tap as TapView},
};

/// A notice stays this long on the status line, unless something says sooner that it no
/// longer holds.
const NOTICE_MS: i64 = 30_000;

/// What the status line can say beside the view's own state: the run's last notice and
/// the lab's last step and truths.
#[derive(Clone, Debug, Default)]
pub struct RunStatus {
    pub notice: Option<Notice>,
    pub lab_step: Option<LabRecord>,
    pub truths: Vec<LabRecord>,
}

/// The title line, its parts dropped from the least useful on until it fits `width`.
pub fn title(app: &App, taps: &[TapView], width: usize) -> Line<'static> {
    let blackouts = taps.iter().filter(|t| t.state == State::Blackout).count();
    let counts = format!("  {} taps, {} in BLACKOUT", taps.len(), blackouts);
    let mut tail: Vec<Span> = Vec::new();
    if !app.filter.is_empty() {
        tail.push(Span::raw(format!("  filter: {}", one_line(&app.filter))));
    }
    if app.paused.is_some() {
        tail.push(Span::styled("  PAUSED", Style::default().fg(Color::Yellow)));
    }
    if app.finished {
        tail.push(Span::styled(
            "  (stopped: q to quit)",
            Style::default().fg(Color::Yellow),
        ));
    }
    let sort = format!("  sort: {}", app.sort.label());
    let datapath = super::datapath_line(taps).map(|d| format!("  {d}"));
    let short_datapath = super::datapath_line(taps).map(|d| {
        let d = d.replace(" with a per-frame probe", " probed");
        format!("  {}", d.trim_start_matches("datapath "))
    });
    let fixed =
        "tapwatch".len() + counts.chars().count() + tail.iter().map(|s| s.width()).sum::<usize>();
    let optional = [
        [Some(sort.clone()), datapath.clone()],
        [Some(sort), short_datapath.clone()],
        [None, short_datapath],
        [None, None],
    ]
    .into_iter()
    .find(|parts| {
        fixed
            + parts
                .iter()
                .flatten()
                .map(|p| p.chars().count())
                .sum::<usize>()
            <= width
    })
    .unwrap_or([None, None]);
    let mut head = vec![
        Span::styled("tapwatch", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(counts),
    ];
    head.extend(optional.into_iter().flatten().map(Span::raw));
    head.extend(tail);
    Line::from(head)
}

/// Whether a notice still says something true of the run as it is now.
fn holds(n: &Notice, taps: &[TapView], now: Ts) -> bool {
    match n.code {
        // Said when nothing matched; any tap that appeared since proves it wrong.
        NoticeCode::NoMatch => taps.iter().all(|t| t.gone_at.is_some()),
        // The title says how the taps are watched, and each tap's timeline when its probe
        // came and went.
        NoticeCode::Datapath | NoticeCode::ProbeAdded | NoticeCode::ProbeRemoved => false,
        _ => now.ms_since(n.ts) < NOTICE_MS,
    }
}

/// The lab's truth of one VM in few words.
fn truth_words(l: &LabRecord) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_string(), length);
    let mut s = format!(
        "lab truth{}{}: stale MAC {} · client outage {}",
        l.vm.as_deref()
            .map(|v| format!(" {}", one_line(v)))
            .unwrap_or_default(),
        l.scenario
            .map(|s| format!(" ({})", Scenario::as_str(s)))
            .unwrap_or_default(),
        ms(l.stale_window_ms),
        ms(l.client_outage_ms),
    );
    if l.inbound_gap_ms.is_some() || l.outbound_gap_ms.is_some() {
        s.push_str(&format!(
            " · inbound gap {} · outbound gap {}",
            ms(l.inbound_gap_ms),
            ms(l.outbound_gap_ms)
        ));
    }
    if let Some(d) = l.downtime_ms {
        s.push_str(&format!(" · paused {}", length(d)));
    }
    s
}

/// The status line: the view's own message, a notice that still holds, the lab's step,
/// and the lab's truth of the selected VM (else of every VM it has one for). Empty when
/// there is nothing to say.
pub fn status(
    app: &App,
    run: &RunStatus,
    taps: &[TapView],
    selected: Option<&TapView>,
    now: Ts,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !app.status.is_empty() {
        parts.push(one_line(&app.status).into_owned());
    }
    if let Some(n) = run.notice.as_ref().filter(|n| holds(n, taps, now)) {
        parts.push(one_line(&n.message).into_owned());
    }
    let mine: Vec<&LabRecord> = run
        .truths
        .iter()
        .filter(|l| selected.is_some_and(|t| l.vm.as_deref() == Some(t.vm_name())))
        .collect();
    let truths = if mine.is_empty() {
        run.truths.iter().collect()
    } else {
        mine
    };
    match (truths.is_empty(), &run.lab_step) {
        (true, Some(step)) => parts.push(format!("lab: {}", one_line(&step.describe()))),
        _ => parts.extend(truths.iter().map(|l| truth_words(l))),
    }
    parts.join("  ·  ")
}

/// How many lines `text` takes, wrapped word by word at `width` as the view wraps it (at
/// most `max`).
pub fn lines_for(text: &str, width: u16, max: u16) -> u16 {
    let width = width as usize;
    if text.is_empty() || width == 0 {
        return 0;
    }
    let (mut lines, mut used) = (1usize, 0usize);
    for word in text.split_whitespace() {
        let w = word.chars().count();
        if used > 0 && used + 1 + w > width {
            lines += 1 + (w.saturating_sub(1)) / width;
            used = w % width;
        } else if used == 0 {
            lines += w.saturating_sub(1) / width;
            used = w % width;
        } else {
            used += 1 + w;
        }
    }
    lines.min(max as usize) as u16
}

pub fn footer(app: &App, width: usize) -> String {
    if app.editing_filter {
        return format!(
            "filter: {}▏ (Enter apply, Esc clear)",
            one_line(&app.filter)
        );
    }
    let long = "q quit  ↑↓ select  Enter details  [ ] scroll entries  / filter  s sort  p pause  c clear  ? help";
    let short = "q quit  ↑↓ select  Enter details  / filter  s sort  p pause  ? help";
    if long.chars().count() <= width {
        long.into()
    } else {
        short.into()
    }
}
