//! The live full-screen view: `tapwatch watch` without `--json`.
//!
//! The watcher runs on a thread of its own and feeds the run's pipeline; the view reads the
//! pipeline's verdict engine while it draws, ten times a second, so a slow terminal never
//! holds the watcher up. The terminal is restored on every way out: quit keys, the signals
//! that end a run (they end the watcher), a watcher error, and panics (ratatui's hook).

pub mod app;
pub mod event;
pub mod handler;
pub mod ui;

use std::{io, io::IsTerminal, sync::Arc, time::Duration};

use chrono::Utc;
use ratatui::DefaultTerminal;
use tokio::sync::Notify;

use crate::{
    collect::{self, Outcome, WatchError, WatchOptions},
    model::clock::Ts,
    model::{Record, Sink},
    report::pipeline::{Ending, Feed, Pipeline},
    report::text::TextSink,
};
use app::App;
use event::{Events, UiEvent};
use handler::Action;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
    #[error("the watcher thread panicked")]
    Panicked,
}

const REDRAW: Duration = Duration::from_millis(100);

/// Why the live view cannot run here, if it cannot: it needs a terminal on stdout and a
/// controlling terminal for keys.
pub fn unavailable() -> Option<&'static str> {
    if !io::stdout().is_terminal() {
        return Some("stdout is not a terminal");
    }
    if std::fs::File::open("/dev/tty").is_err() {
        return Some("there is no controlling terminal for keys");
    }
    None
}

/// Runs the watcher (on its own thread) and the view until the user quits or the watcher
/// stops. `stop` ends the watcher; the view fires it on a quit key.
pub async fn run(
    opts: WatchOptions,
    pipeline: Arc<Pipeline>,
    stop: Arc<Notify>,
) -> Result<(Outcome, Ending), TuiError> {
    let (p, s) = (pipeline.clone(), stop.clone());
    let watcher = std::thread::Builder::new()
        .name("tapwatch-watch".into())
        .spawn(move || -> Result<Outcome, WatchError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WatchError::Setup {
                    what: "the watcher's runtime",
                    source,
                })?;
            let r = rt.block_on(collect::run(opts, &mut Feed(p.clone()), async move {
                s.notified().await
            }));
            p.finish();
            r
        })?;
    let shown = show(pipeline, || stop.notify_one()).await;
    // The view may have failed on its own (a terminal gone): the watcher must still end
    // cleanly, with its summary and nothing left attached.
    stop.notify_one();
    let watched = watcher.join().map_err(|_| TuiError::Panicked)?;
    let outcome = watched?;
    Ok((outcome, shown?))
}

/// Shows the pipeline's verdicts until its producer is done; a quit key calls `stop`.
pub async fn show(pipeline: Arc<Pipeline>, stop: impl Fn()) -> Result<Ending, TuiError> {
    let mut terminal = ratatui::try_init()?;
    let mut app = App::new();
    let shown = view(&mut terminal, &mut app, &pipeline, stop).await;
    ratatui::restore();
    shown?;
    let ending = pipeline.head().ending.clone();
    Ok(ending)
}

/// Prints the ending as text on stdout, where it stays in the scrollback.
pub fn print_ending(ending: &Ending) -> io::Result<()> {
    let mut out = TextSink(io::stdout().lock());
    if let Some(summary) = &ending.summary {
        out.emit(summary)?;
    }
    for l in &ending.lab {
        out.emit(&Record::Lab(l.clone()))?;
    }
    out.flush()
}

async fn view(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    pipeline: &Pipeline,
    stop: impl Fn(),
) -> Result<(), TuiError> {
    let mut events = Events::new(REDRAW);
    loop {
        match events.next().await {
            UiEvent::Key(key) => {
                let head = pipeline.head();
                if handler::on_key(app, &head.engine, key) == Action::Quit {
                    stop();
                }
            }
            UiEvent::Tick => {}
            UiEvent::InputClosed => stop(),
        }
        // The watcher ended: SIGINT, SIGTERM, SIGHUP, --duration, or our stop.
        if pipeline.is_finished() {
            break;
        }
        terminal.draw(|f| {
            // Held only while the frame is built, not while the terminal writes it.
            let head = pipeline.head();
            if app.status.is_empty() || app.status.starts_with("lab: ") {
                app.status.clone_from(&head.status);
            }
            ui::draw(f, app, &head.engine, Ts(Utc::now()))
        })?;
    }
    app.finished = true;
    Ok(())
}
