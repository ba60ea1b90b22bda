//! The report page: one self-contained HTML file that tells a migration's outage on one
//! page (the VMs, the diagnosis, the timeline drawn, the counters, what the hosts differ
//! in, and where each number came from), for a ticket. `tapwatch analyze … --html FILE`
//! writes it, and every bundle carries it as report.html.
//!
//! It needs nothing when opened: the CSS and the SVG are inline, there is no script and no
//! reference to anything outside the file, and it reads the same in any window, dark or
//! light, and on A4 paper. Every text from input (VM and interface names, diagnoses, host
//! facts) is escaped by the template engine ([`maud`]), which escapes whatever it inserts
//! unless told otherwise; this module never tells it otherwise.

mod html;
mod svg;

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use crate::{
    model::{clock::Ts, host::HostJson, HostFact, LabEvent, LabRecord, MigrationRecord, Record},
    registry::Tap,
    verdict::{Engine, EngineConfig, State},
};

pub use html::render;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}: the directory {1} does not exist; give a file in an existing directory")]
    NoDirectory(PathBuf, PathBuf),
    #[error("{0}: is a directory; give the name of the HTML file to write")]
    IsDirectory(PathBuf),
    #[error("{path}: cannot write the report page: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// VMs told in full; a recording of more taps lists the others in the table at the top.
pub const MAX_TOLD: usize = 24;
/// Rows of that table, at most.
pub const MAX_LISTED: usize = 500;

/// One input the page was made from.
#[derive(Clone, Debug)]
pub struct Input {
    /// What it is: "bundle", "capture", "source bundle", "destination bundle", "recording".
    pub role: String,
    pub path: String,
    /// Its host.json, when it has one.
    pub host: Option<HostJson>,
}

/// One VM as the page tells it.
#[derive(Clone, Debug)]
pub struct Vm {
    /// Its tap on the host that watched it (for a pair: the destination).
    pub tap: Tap,
    /// Told from both hosts.
    pub migration: Option<MigrationRecord>,
    /// Every fact compared between the two hosts (the record keeps those that differ).
    pub compared: Vec<HostFact>,
    /// The lab's ground truth of it.
    pub truth: Option<LabRecord>,
}

/// Everything the page says.
#[derive(Clone, Debug)]
pub struct Page {
    pub inputs: Vec<Input>,
    /// The VMs told in full, the most troubled first.
    pub vms: Vec<Vm>,
    /// The other taps, for the table at the top only.
    pub others: Vec<Tap>,
    /// Taps beyond [`MAX_LISTED`], counted.
    pub unlisted: usize,
    /// The time the page is "at": the end of the recording.
    pub now: Ts,
    /// What the analysis noticed or had to assume.
    pub notes: Vec<String>,
}

/// Most troubled first: a blackout, then a migration seen, then by name.
fn interest(t: &Tap) -> (u8, bool, String) {
    let rank = match t.state {
        State::Blackout => 0,
        State::Recovered => 1,
        _ if t.blackout.is_some() => 1,
        _ if t.switchover().is_some() => 2,
        State::Gone => 4,
        _ => 3,
    };
    (rank, t.switchover().is_none(), t.vm_name().to_string())
}

impl Page {
    /// The page of one host's taps (a bundle, a capture, or a run's registry).
    pub fn of_taps(inputs: Vec<Input>, taps: &[Tap], now: Ts, truths: &[LabRecord]) -> Page {
        let mut order: Vec<&Tap> = taps.iter().collect();
        order.sort_by_cached_key(|t| interest(t));
        let unlisted = order.len().saturating_sub(MAX_LISTED);
        order.truncate(MAX_LISTED);
        let told = order.len().min(MAX_TOLD);
        let vms = order[..told]
            .iter()
            .map(|t| Vm {
                tap: (*t).clone(),
                migration: None,
                compared: Vec::new(),
                truth: truth_of(truths, t.vm_name()),
            })
            .collect();
        Page {
            inputs,
            vms,
            others: order[told..].iter().map(|t| (*t).clone()).collect(),
            unlisted,
            now,
            notes: Vec::new(),
        }
    }

    /// The page of a migration told from both hosts: one VM per merged record, its tap as
    /// the destination saw it.
    pub fn of_pair(
        inputs: Vec<Input>,
        merged: &[(MigrationRecord, Vec<HostFact>)],
        dst: &Collector,
    ) -> Page {
        let vms = merged
            .iter()
            .take(MAX_TOLD)
            .filter_map(|(m, compared)| {
                let tap = dst.engine.tap(&m.dst_ifname)?.clone();
                Some(Vm {
                    truth: truth_of(&dst.truths, &m.vm),
                    tap,
                    migration: Some(m.clone()),
                    compared: compared.clone(),
                })
            })
            .collect();
        Page {
            inputs,
            vms,
            others: Vec::new(),
            unlisted: merged.len().saturating_sub(MAX_TOLD),
            now: dst.now(),
            notes: Vec::new(),
        }
    }
}

fn truth_of(truths: &[LabRecord], vm: &str) -> Option<LabRecord> {
    truths
        .iter()
        .rfind(|l| l.vm.as_deref() == Some(vm))
        .cloned()
}

/// Follows an analysis's records into a verdict engine of its own, for the page: the
/// taps as the analysis saw them, and the lab's truths.
pub struct Collector {
    pub engine: Engine,
    pub truths: Vec<LabRecord>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector {
    pub fn new() -> Self {
        Self {
            engine: Engine::new(EngineConfig::default()),
            truths: Vec::new(),
        }
    }

    pub fn take(&mut self, rec: &Record) {
        match rec {
            Record::Lab(l) if l.event == LabEvent::Truth => {
                self.truths.retain(|t| t.vm != l.vm);
                self.truths.push(l.clone());
            }
            Record::Verdict { .. } => {}
            _ => {
                self.engine.apply(rec);
            }
        }
    }

    pub fn now(&self) -> Ts {
        self.engine.now.unwrap_or_default()
    }

    pub fn page(&self, inputs: Vec<Input>, notes: &[String]) -> Page {
        let mut page = Page::of_taps(inputs, self.engine.taps(), self.now(), &self.truths);
        page.notes = notes.to_vec();
        page
    }
}

/// Whether a page can go to `path` (its directory exists, it is no directory itself):
/// checked before an analysis, so a long one is not run for nothing. Returns the
/// directory.
pub fn check_target(path: &Path) -> Result<PathBuf, PageError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(PageError::NoDirectory(path.to_path_buf(), dir));
    }
    if path.is_dir() {
        return Err(PageError::IsDirectory(path.to_path_buf()));
    }
    Ok(dir)
}

/// Writes `html` to `path` whole or not at all: into a new file beside it, renamed over
/// it once complete, so a full disk or a crash never leaves half a page (nor destroys a
/// page that was there).
pub fn write(path: &Path, html: &str) -> Result<(), PageError> {
    let dir = check_target(path)?;
    let err = |source| PageError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(io::ErrorKind::InvalidInput.into()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(html.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// What in `html` could make a browser fetch something: an element that loads (script,
/// img, link, iframe…), an attribute that names a resource (`src`, `href` other than a
/// fragment, `xlink:href`, `srcset`, `action`, `poster`), a CSS `url(` or `@import`, any
/// `http:`/`https:`/`//` in markup or style. Foreign text is escaped, so every raw `<` in
/// the page opens a real tag and only tags and the style sheet need looking at; text
/// that merely reads like a URL cannot load anything. Empty for the pages this module
/// writes (the tests hold it to that).
pub fn outside_references(html: &str) -> Vec<String> {
    const LOADERS: [&str; 12] = [
        "script", "img", "image", "link", "iframe", "object", "embed", "use", "video", "audio",
        "source", "base",
    ];
    const ATTRS: [&str; 6] = [
        "src=",
        "srcset=",
        "xlink:href=",
        "action=",
        "poster=",
        "data=",
    ];
    let mut found = Vec::new();
    for tag in html.split('<').skip(1).filter_map(|t| t.split('>').next()) {
        let tag = tag.to_ascii_lowercase();
        let name = tag.split([' ', '/', '\n']).next().unwrap_or("");
        let attrs = tag[name.len()..].to_string();
        let named = |a: &str| attrs.split_whitespace().any(|w| w.starts_with(a));
        if LOADERS.contains(&name)
            || ATTRS.iter().any(|a| named(a))
            || attrs.contains("href=") && !attrs.contains("href=\"#")
            || ["http:", "https:", "//", "url("]
                .iter()
                .any(|u| attrs.contains(u))
        {
            found.push(format!("<{tag}>"));
        }
    }
    let style = html
        .split("<style>")
        .nth(1)
        .and_then(|s| s.split("</style>").next())
        .unwrap_or("")
        .to_ascii_lowercase();
    for bad in ["url(", "@import", "http:", "https:", "//"] {
        if style.contains(bad) {
            found.push(format!("style: {bad}"));
        }
    }
    found
}

#[cfg(test)]
mod tests;
