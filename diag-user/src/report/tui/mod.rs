//! The live full-screen view: `tapwatch watch` without `--json`.
//!
//! The collector runs on a thread of its own and feeds the run's pipeline; the view reads
//! the pipeline's registry while it draws, ten times a second, so a slow terminal never
//! holds the collector up. The terminal is restored on every way out: quit keys, the
//! signals that end a run (they end the collector), a collector error, and panics
//! (ratatui's hook).

pub mod app;
pub mod event;
pub mod handler;
pub mod ui;

use std::{io, io::IsTerminal, sync::Arc, time::Duration};

use chrono::Utc;
use ratatui::DefaultTerminal;

use crate::{
    model::clock::Ts,
    model::{Record, Sink},
    report::pipeline::{Ending, Pipeline},
    report::text::{one_line, TextSink},
};
use app::App;
use event::{Events, UiEvent};
use handler::Action;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error("terminal: {0}")]
    Terminal(#[from] io::Error),
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
                let action = handler::on_key(app, &pipeline.head().engine, key);
                match action {
                    Action::Quit => stop(),
                    Action::Nudge(tap) => {
                        // The head is not held here: the nudge takes it.
                        app.status = match pipeline.nudge(&tap, false, false) {
                            Some(n) => one_line(
                                crate::report::text::nudge_words(&n)
                                    .lines()
                                    .next()
                                    .unwrap_or_default(),
                            )
                            .into_owned(),
                            None => "this run cannot nudge".into(),
                        };
                    }
                    Action::Continue => {}
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
            app.run = ui::status::RunStatus {
                notice: head.notice.clone(),
                lab_step: head.lab_step.clone(),
                truths: head.ending.lab.clone(),
            };
            ui::draw(f, app, &head.engine, Ts(Utc::now()))
        })?;
    }
    app.finished = true;
    Ok(())
}
