//! The picture of one VM's outage around a migration, as the live view and the report page
//! draw it: lanes along one time axis (the network's part, the guest's part and, told
//! from both hosts, the VM on the source and the downtime between them) and marks where
//! things happened (announces, MAC changes, libvirt's pause and resume, a forecast, a
//! nudge). Both drawings read the same [`Story`], so they cannot tell different stories.

use crate::{
    model::{clock::Ts, mac::show, nudge::NudgeResult},
    registry::{Announce, Tap},
};

/// A stretch of time on one lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub from: Ts,
    pub to: Ts,
    /// Still going: `to` is the story's "now".
    pub open: bool,
}

impl Bar {
    pub fn ms(&self) -> u64 {
        self.to.ms_since(self.from).max(0) as u64
    }
}

/// What a mark on the timeline stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MarkKind {
    /// QEMU's RARP announce.
    Rarp,
    /// The guest's gratuitous ARP.
    Garp,
    /// The tap's MAC changed.
    MacChange,
    /// libvirt paused the VM for the migration (the stop-and-copy on a source).
    Pause,
    /// libvirt's VM runs again.
    Resume,
    /// A blackout was foreseen (or ruled out) before the VM resumed.
    Forecast,
    /// A frame written into the tap to make the guest re-learn its gateway.
    Nudge,
}

impl MarkKind {
    /// One character for a terminal, where several marks may share a column.
    pub fn glyph(self) -> char {
        match self {
            MarkKind::Rarp => 'R',
            MarkKind::Garp => 'G',
            MarkKind::MacChange => 'M',
            MarkKind::Pause => 'P',
            MarkKind::Resume => '▲',
            MarkKind::Forecast => 'F',
            MarkKind::Nudge => 'N',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MarkKind::Rarp => "RARP",
            MarkKind::Garp => "GARP",
            MarkKind::MacChange => "tap MAC",
            MarkKind::Pause => "pause",
            MarkKind::Resume => "resume",
            MarkKind::Forecast => "forecast",
            MarkKind::Nudge => "nudge",
        }
    }

    /// Which mark shows when several share a column: the rare ones first.
    fn rank(self) -> u8 {
        match self {
            MarkKind::Nudge => 0,
            MarkKind::Resume | MarkKind::Pause => 1,
            MarkKind::MacChange => 2,
            MarkKind::Forecast => 3,
            MarkKind::Garp => 4,
            MarkKind::Rarp => 5,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub ts: Ts,
    pub kind: MarkKind,
    /// In words, for the page's labels and tooltips.
    pub what: String,
}

/// One VM's outage on one time axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Story {
    /// The switch-over (time zero): the first RARP, else the VM's first frame here.
    pub origin: Ts,
    /// The window drawn.
    pub from: Ts,
    pub to: Ts,
    /// From the switch-over to the first data frame delivered to the VM.
    pub network: Option<Bar>,
    /// From the first stale frame to the first correctly addressed one.
    pub guest: Option<Bar>,
    /// Told from both hosts: the VM running on the source until it paused there.
    pub source: Option<Bar>,
    /// Told from both hosts: from the pause on the source to the resume here.
    pub downtime: Option<Bar>,
    pub marks: Vec<Mark>,
    /// Marks too far from the outage to draw (they stay in the list of entries).
    pub outside: usize,
}

/// Shortest window drawn, so a clean switch-over of a few milliseconds is not stretched
/// into a wall of bars.
const MIN_SPAN_MS: i64 = 1000;

impl Story {
    /// The story of `t` as of `now`, if its VM came up on it (a switch-over).
    pub fn of(t: &Tap, now: Ts) -> Option<Story> {
        let origin = t.switchover()?;
        let until = t.gone_at.map_or(now, |g| g.min(now));
        let network = Some(match t.first_inbound {
            Some(end) => Bar {
                from: origin,
                to: end.max(origin),
                open: false,
            },
            None => Bar {
                from: origin,
                to: until.max(origin),
                open: true,
            },
        });
        // Only a blackout of this migration (its first stale frame may come a moment
        // before the first RARP).
        let guest = t
            .blackout
            .filter(|b| b.end.is_none_or(|e| e >= origin))
            .map(|b| Bar {
                from: b.start,
                to: b.end.unwrap_or(until).max(b.start),
                open: b.end.is_none(),
            });
        let mut story = Story {
            origin,
            from: origin,
            to: origin,
            network,
            guest,
            source: None,
            downtime: None,
            marks: marks(t),
            outside: 0,
        };
        story.frame();
        Some(story)
    }

    /// Adds what the source host saw: the VM ran there until `pause`.
    pub fn with_pause(mut self, pause: Ts, resume: Option<Ts>, started: Option<Ts>) -> Story {
        let resume = resume.unwrap_or(self.origin);
        // Unknown, it ran there from before the window: the lane starts at its edge.
        let from = started
            .filter(|s| *s < pause)
            .unwrap_or(Ts(pause.0 - chrono::Duration::hours(1)));
        self.source = Some(Bar {
            from,
            to: pause,
            open: false,
        });
        self.downtime = Some(Bar {
            from: pause.min(resume),
            to: resume.max(pause),
            open: false,
        });
        self.marks.push(Mark {
            ts: pause,
            kind: MarkKind::Pause,
            what: "paused on the source".into(),
        });
        self.marks.sort_by_key(|m| m.ts);
        self.frame();
        self
    }

    /// Sets the window: the lanes, padded, and the marks near them.
    fn frame(&mut self) {
        let bars = [self.network, self.guest, self.downtime]
            .into_iter()
            .flatten()
            .chain(self.source.map(|s| Bar { from: s.to, ..s }));
        let (mut from, mut to) = (self.origin, self.origin);
        for b in bars {
            from = from.min(b.from);
            to = to.max(b.to);
        }
        for m in &self.marks {
            if matches!(m.kind, MarkKind::Nudge | MarkKind::Resume | MarkKind::Pause) {
                from = from.min(m.ts);
                to = to.max(m.ts);
            }
        }
        let span = to.ms_since(from).max(MIN_SPAN_MS);
        // Marks within half the outage's length of it are drawn; the rest would squeeze
        // the outage into a few columns.
        let reach = chrono::Duration::milliseconds(span / 2);
        let (near_from, near_to) = (Ts(from.0 - reach), Ts(to.0 + reach));
        self.outside = 0;
        for m in &self.marks {
            if m.ts < near_from || m.ts > near_to {
                self.outside += 1;
            } else {
                from = from.min(m.ts);
                to = to.max(m.ts);
            }
        }
        let span = to.ms_since(from).max(MIN_SPAN_MS);
        let pad = chrono::Duration::milliseconds(span / 20);
        self.from = Ts(from.0 - pad);
        self.to = Ts(from.0 + chrono::Duration::milliseconds(span) + pad);
        if let Some(s) = &mut self.source {
            // The source lane shows the VM's last stretch there, not its whole life.
            s.from = s.from.max(self.from);
        }
    }

    /// Whether `ts` lies in the window drawn.
    pub fn shows(&self, ts: Ts) -> bool {
        ts >= self.from && ts <= self.to
    }

    /// The kinds of marks drawn in the window, once each, in their order: a legend's.
    pub fn shown_kinds(&self) -> Vec<MarkKind> {
        let mut kinds: Vec<MarkKind> = self
            .marks
            .iter()
            .filter(|m| self.shows(m.ts))
            .map(|m| m.kind)
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// The window's length in milliseconds.
    pub fn span_ms(&self) -> i64 {
        self.to.ms_since(self.from).max(1)
    }

    /// Where `ts` falls on an axis `cells` wide (0 ..= cells-1), clamped to it.
    pub fn cell(&self, ts: Ts, cells: usize) -> usize {
        if cells <= 1 {
            return 0;
        }
        let at = ts.ms_since(self.from).clamp(0, self.span_ms()) as f64;
        let x = at / self.span_ms() as f64 * (cells - 1) as f64;
        x.round() as usize
    }

    /// The marks to draw, one per cell of an axis `cells` wide: where several fall into
    /// one cell, the rarest kind shows.
    pub fn marks_in_cells(&self, cells: usize) -> Vec<(usize, &Mark)> {
        let mut out: Vec<(usize, &Mark)> = Vec::new();
        for m in self.marks.iter().filter(|m| self.shows(m.ts)) {
            let x = self.cell(m.ts, cells);
            match out.iter_mut().find(|(c, _)| *c == x) {
                Some(slot) if m.kind.rank() < slot.1.kind.rank() => slot.1 = m,
                Some(_) => {}
                None => out.push((x, m)),
            }
        }
        out.sort_by_key(|(x, _)| *x);
        out
    }

    /// Ticks for an axis `cells` wide, at least `gap` cells apart: (cell, milliseconds
    /// from the switch-over), on a round step.
    pub fn ticks(&self, cells: usize, gap: usize) -> Vec<(usize, i64)> {
        let per_cell = self.span_ms() as f64 / cells.max(1) as f64;
        let want = (per_cell * gap.max(1) as f64).ceil() as i64;
        let step = STEPS
            .iter()
            .copied()
            .find(|s| *s >= want)
            .unwrap_or_else(|| (want + 59_999) / 60_000 * 60_000);
        let first = self.from.ms_since(self.origin).div_euclid(step) * step;
        let mut out = Vec::new();
        let mut rel = first;
        while rel <= self.to.ms_since(self.origin) {
            let ts = Ts(self.origin.0 + chrono::Duration::milliseconds(rel));
            if self.shows(ts) {
                out.push((self.cell(ts, cells), rel));
            }
            rel += step;
        }
        out
    }
}

const STEPS: [i64; 16] = [
    10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 15_000, 20_000, 30_000, 60_000,
    120_000,
];

/// A tick's label: `0`, `+2s`, `-0.5s`, `+1m`.
pub fn tick_label(ms: i64) -> String {
    let sign = if ms < 0 {
        "-"
    } else if ms > 0 {
        "+"
    } else {
        return "0".into();
    };
    let a = ms.unsigned_abs();
    if a >= 60_000 && a.is_multiple_of(60_000) {
        format!("{sign}{}m", a / 60_000)
    } else if a.is_multiple_of(1000) {
        format!("{sign}{}s", a / 1000)
    } else {
        let s = format!("{:.3}", a as f64 / 1000.0);
        format!("{sign}{}s", s.trim_end_matches('0'))
    }
}

/// A length for people: `120 ms`, `5.87 s`, `2 min 05 s`.
pub fn length(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        let s = format!("{:.2}", ms as f64 / 1000.0);
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// Every mark `t` knows of, in time order.
fn marks(t: &Tap) -> Vec<Mark> {
    let mut out: Vec<Mark> = t
        .announces
        .iter()
        .map(|&(ts, a)| match a {
            Announce::Rarp => Mark {
                ts,
                kind: MarkKind::Rarp,
                what: "RARP announce".into(),
            },
            Announce::Garp => Mark {
                ts,
                kind: MarkKind::Garp,
                what: "gratuitous ARP".into(),
            },
        })
        .collect();
    // The first entry is the MAC the tap had when it was first seen: no change.
    for pair in t.mac_history.windows(2) {
        let ((_, old), (ts, new)) = (pair[0], pair[1]);
        out.push(Mark {
            ts,
            kind: MarkKind::MacChange,
            what: format!("tap MAC {} → {}", show(old, "none"), show(new, "none")),
        });
    }
    if let Some(ts) = t.paused_at {
        out.push(Mark {
            ts,
            kind: MarkKind::Pause,
            what: "libvirt: paused for the migration".into(),
        });
    }
    if let Some(ts) = t.resumed_at {
        out.push(Mark {
            ts,
            kind: MarkKind::Resume,
            what: "libvirt: runs again".into(),
        });
    }
    if let (Some(f), Some(ts)) = (&t.forecast, t.forecast_at) {
        let what = if f.at_risk {
            "forecast: AT RISK"
        } else {
            "forecast: no blackout"
        };
        out.push(Mark {
            ts,
            kind: MarkKind::Forecast,
            what: what.into(),
        });
    }
    if let Some(n) = &t.nudge {
        let what = match (n.result, n.recovered_after_ms) {
            (NudgeResult::Recovered, Some(ms)) => format!("nudge: worked after {}", length(ms)),
            (r, _) => format!("nudge: {}", r.as_str()),
        };
        out.push(Mark {
            ts: n.ts,
            kind: MarkKind::Nudge,
            what,
        });
    }
    out.sort_by_key(|m| m.ts);
    out
}

#[cfg(test)]
mod tests;
