//! What the view shows besides the engine's taps: selection, filter, sort, pause.
//!
//! The taps themselves are the run's one verdict engine (see `pipeline`); the view reads
//! them while it draws and never keeps its own copy, except while paused.

use std::collections::HashMap;

use super::ui::status::RunStatus;
use crate::{
    model::clock::Ts,
    registry::TapKey,
    verdict::{Engine, State, Tap as TapView},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// Worst first: BLACKOUT, RECOVERED, QUIET, OK, GONE; then by name.
    #[default]
    State,
    Name,
    Mismatches,
}

impl SortBy {
    pub fn next(self) -> Self {
        match self {
            SortBy::State => SortBy::Name,
            SortBy::Name => SortBy::Mismatches,
            SortBy::Mismatches => SortBy::State,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            SortBy::State => "state",
            SortBy::Name => "name",
            SortBy::Mismatches => "mismatches",
        }
    }
}

fn severity(s: State) -> u8 {
    match s {
        State::Blackout => 0,
        State::Recovered => 1,
        State::Quiet => 2,
        State::Ok => 3,
        State::Gone => 4,
    }
}

#[derive(Default)]
pub struct App {
    /// Key and name of the selected tap (stable across re-sorting; the key keeps it
    /// across a rename).
    pub selected: Option<(TapKey, String)>,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing_filter: bool,
    pub sort: SortBy,
    /// Frozen copy shown while paused; the engine keeps counting underneath.
    pub paused: Option<Vec<TapView>>,
    pub show_detail: bool,
    pub show_help: bool,
    /// Counters at the last `c`, by tap name, subtracted from what is shown.
    pub baseline: HashMap<String, u64>,
    /// Set when the watcher has ended (SIGTERM, --duration).
    pub finished: bool,
    /// The view's own message (a key's effect), until the next key.
    pub status: String,
    /// The tap whose nudge waits for the operator's `y`.
    pub confirm_nudge: Option<String>,
    /// What the run says for the status line, copied from the pipeline at each redraw.
    pub run: RunStatus,
    /// How many entries the middle of the timeline's list is scrolled back from the
    /// newest.
    pub timeline_scroll: usize,
}

impl App {
    pub fn new() -> Self {
        Self::default()
    }

    /// The taps to show: the engine's, or the frozen copy while paused.
    pub fn taps<'a>(&'a self, engine: &'a Engine) -> &'a [TapView] {
        self.paused.as_deref().unwrap_or(engine.taps())
    }

    /// Indices into `taps` of the rows to show, filtered and sorted.
    pub fn rows(&self, taps: &[TapView]) -> Vec<usize> {
        let f = self.filter.to_lowercase();
        let mut idx: Vec<usize> = (0..taps.len())
            .filter(|&i| {
                f.is_empty()
                    || taps[i].vm_name().to_lowercase().contains(&f)
                    || taps[i].ifname.to_lowercase().contains(&f)
            })
            .collect();
        match self.sort {
            SortBy::State => idx.sort_by(|&a, &b| {
                (severity(taps[a].state), taps[a].vm_name())
                    .cmp(&(severity(taps[b].state), taps[b].vm_name()))
            }),
            SortBy::Name => idx.sort_by(|&a, &b| taps[a].vm_name().cmp(taps[b].vm_name())),
            SortBy::Mismatches => {
                idx.sort_by(|&a, &b| self.mismatches(&taps[b]).cmp(&self.mismatches(&taps[a])))
            }
        }
        idx
    }

    /// dst-mismatch frames since the last clear.
    pub fn mismatches(&self, t: &TapView) -> u64 {
        let base = self.baseline.get(&t.ifname).copied().unwrap_or(0);
        t.counters.dst_mismatch_frames.saturating_sub(base)
    }

    /// Position of the selected row in `rows`, selecting the first row if none is.
    pub fn selected_pos(&self, taps: &[TapView], rows: &[usize]) -> Option<usize> {
        match &self.selected {
            Some((key, name)) => rows
                .iter()
                .position(|&i| taps[i].key == *key && taps[i].ifname == *name)
                .or_else(|| rows.iter().position(|&i| taps[i].key == *key))
                .or(if rows.is_empty() { None } else { Some(0) }),
            None if rows.is_empty() => None,
            None => Some(0),
        }
    }

    pub fn selected_tap<'a>(&self, taps: &'a [TapView]) -> Option<&'a TapView> {
        let rows = self.rows(taps);
        let pos = self.selected_pos(taps, &rows)?;
        Some(&taps[rows[pos]])
    }

    pub fn move_selection(&mut self, engine: &Engine, delta: isize) {
        let taps = self.taps(engine);
        let rows = self.rows(taps);
        if rows.is_empty() {
            return;
        }
        let pos = self.selected_pos(taps, &rows).unwrap_or(0) as isize;
        let new = (pos + delta).clamp(0, rows.len() as isize - 1) as usize;
        let t = &taps[rows[new]];
        let (key, name) = (t.key, t.ifname.clone());
        if self.selected.as_ref().is_some_and(|(k, _)| *k != key) {
            self.timeline_scroll = 0;
        }
        self.selected = Some((key, name));
    }

    /// Scrolls the middle of the selected VM's timeline entries back (`delta` > 0) or on,
    /// within what `rows` lines leave hidden.
    pub fn scroll_timeline(&mut self, engine: &Engine, delta: isize, rows: usize) {
        let taps = self.taps(engine);
        let Some(t) = self.selected_tap(taps) else {
            return;
        };
        let max = super::ui::timeline::max_scroll(t, rows);
        let now = self.timeline_scroll.min(max) as isize;
        self.timeline_scroll = (now + delta).clamp(0, max as isize) as usize;
    }

    pub fn toggle_pause(&mut self, engine: &Engine) {
        self.paused = match self.paused {
            Some(_) => None,
            None => Some(engine.taps().to_vec()),
        };
    }

    pub fn clear_counters(&mut self, engine: &Engine) {
        self.baseline = engine
            .taps()
            .iter()
            .map(|t| (t.ifname.clone(), t.counters.dst_mismatch_frames))
            .collect();
        self.status = "mismatch counters cleared".into();
    }

    /// The time the view is "at": now, or the last record's time if later (replays).
    pub fn now(&self, engine: &Engine, wall: Ts) -> Ts {
        engine.now.map_or(wall, |n| n.max(wall))
    }
}
