//! What the view shows: the verdict engine's taps plus selection, filter, sort, pause.

use std::collections::HashMap;

use crate::{
    clock::Ts,
    output::Record,
    verdict::{Engine, State, TapView},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Worst first: BLACKOUT, RECOVERED, QUIET, OK, GONE; then by name.
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

pub struct App {
    pub engine: Engine,
    /// Name of the selected tap (stable across re-sorting).
    pub selected: Option<String>,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing_filter: bool,
    pub sort: SortBy,
    /// Frozen copy shown while paused; the engine keeps counting underneath.
    pub paused: Option<Vec<TapView>>,
    pub show_detail: bool,
    pub show_help: bool,
    /// Counters at the last `c`, subtracted from what is shown.
    pub baseline: HashMap<String, u64>,
    /// Set when the watcher has ended (SIGTERM, --duration).
    pub finished: bool,
    pub status: String,
}

impl App {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            selected: None,
            filter: String::new(),
            editing_filter: false,
            sort: SortBy::State,
            paused: None,
            show_detail: false,
            show_help: false,
            baseline: HashMap::new(),
            finished: false,
            status: String::new(),
        }
    }

    pub fn apply(&mut self, rec: &Record) {
        if let Record::Lab(l) = rec {
            self.status = format!("lab: {}", l.describe());
        }
        self.engine.apply(rec);
    }

    pub fn taps(&self) -> &[TapView] {
        self.paused.as_deref().unwrap_or(&self.engine.taps)
    }

    /// Indices into `taps()` of the rows to show, filtered and sorted.
    pub fn rows(&self) -> Vec<usize> {
        let taps = self.taps();
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
    pub fn selected_pos(&self, rows: &[usize]) -> Option<usize> {
        let taps = self.taps();
        match &self.selected {
            Some(name) => rows
                .iter()
                .position(|&i| &taps[i].ifname == name)
                .or(if rows.is_empty() { None } else { Some(0) }),
            None if rows.is_empty() => None,
            None => Some(0),
        }
    }

    pub fn selected_tap(&self) -> Option<&TapView> {
        let rows = self.rows();
        let pos = self.selected_pos(&rows)?;
        Some(&self.taps()[rows[pos]])
    }

    pub fn move_selection(&mut self, delta: isize) {
        let rows = self.rows();
        if rows.is_empty() {
            return;
        }
        let pos = self.selected_pos(&rows).unwrap_or(0) as isize;
        let new = (pos + delta).clamp(0, rows.len() as isize - 1) as usize;
        self.selected = Some(self.taps()[rows[new]].ifname.clone());
    }

    pub fn toggle_pause(&mut self) {
        self.paused = match self.paused {
            Some(_) => None,
            None => Some(self.engine.taps.clone()),
        };
    }

    pub fn clear_counters(&mut self) {
        self.baseline = self
            .engine
            .taps
            .iter()
            .map(|t| (t.ifname.clone(), t.counters.dst_mismatch_frames))
            .collect();
        self.status = "mismatch counters cleared".into();
    }

    /// The time the view is "at": now, or the last record's time if later (replays).
    pub fn now(&self, wall: Ts) -> Ts {
        self.engine.now.map_or(wall, |n| n.max(wall))
    }
}
