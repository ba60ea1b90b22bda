//! The live full-screen view: `tapwatch watch` without `--json`.
//!
//! The watcher runs beside the view in the same task and hands it records over a channel;
//! the view feeds them to the verdict engine and redraws ten times a second. The terminal
//! is restored on every way out: quit keys, SIGINT/SIGTERM (they end the watcher), a
//! watcher error, and panics (ratatui's hook).

pub mod app;
pub mod event;
pub mod handler;
pub mod ui;

use std::{io, time::Duration};

use chrono::Utc;
use ratatui::DefaultTerminal;
use tokio::sync::{mpsc, oneshot};

use crate::{
    bundle::{Bundle, Tee},
    clock::Ts,
    output::{ChannelSink, Record, Sink, TextSink},
    verdict::Engine,
    verdict::VerdictSink,
    watch::{self, WatchError, WatchOptions},
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
}

const REDRAW: Duration = Duration::from_millis(100);

/// Runs the watcher and the view until the user quits or the watcher stops; then prints
/// the final verdicts on the normal screen so they stay in the scrollback.
///
/// `verdicts` adds verdict records to what goes to `bundle`, so a bundle recorded under the
/// view holds the same stream as one recorded with `--json`.
pub async fn run(
    opts: WatchOptions,
    engine: Engine,
    verdicts: Engine,
    bundle: Option<&mut Bundle>,
) -> Result<(), TuiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = async move {
        let mut channel = ChannelSink(tx);
        let mut tee = Tee {
            primary: &mut channel,
            bundle,
            failed: false,
        };
        let mut sink = VerdictSink {
            engine: verdicts,
            inner: &mut tee,
        };
        watch::run(opts, &mut sink, async {
            let _ = stop_rx.await;
        })
        .await
    };
    let (watched, shown) = tokio::join!(watcher, show(rx, stop_tx, engine));
    watched?;
    print_ending(&shown?)
}

/// What is left when the view closes: the summary (with verdicts) and lab findings.
#[derive(Default)]
pub struct Ending {
    pub summary: Option<Record>,
    pub lab: Vec<crate::output::LabRecord>,
}

/// Shows records from a watcher running elsewhere (another task or thread) until they
/// end; a quit key fires `stop`.
pub async fn show(
    records: mpsc::UnboundedReceiver<Record>,
    stop: oneshot::Sender<()>,
    engine: Engine,
) -> Result<Ending, TuiError> {
    let mut terminal = ratatui::init();
    let mut app = App::new(engine);
    let shown = view(&mut terminal, &mut app, records, stop).await;
    ratatui::restore();
    shown
}

/// Prints the ending as text on stdout, where it stays in the scrollback.
pub fn print_ending(ending: &Ending) -> Result<(), TuiError> {
    let mut out = TextSink(io::stdout().lock());
    if let Some(summary) = &ending.summary {
        out.emit(summary)?;
    }
    for l in &ending.lab {
        out.emit(&Record::Lab(l.clone()))?;
    }
    out.flush()?;
    Ok(())
}

async fn view(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    mut records: mpsc::UnboundedReceiver<Record>,
    stop: oneshot::Sender<()>,
) -> Result<Ending, TuiError> {
    let mut events = Events::new(REDRAW);
    let mut stop = Some(stop);
    let mut ending = Ending::default();
    loop {
        tokio::select! {
            rec = records.recv() => match rec {
                Some(rec) => {
                    match &rec {
                        Record::Summary { .. } => ending.summary = Some(rec.clone()),
                        Record::Lab(l) if l.event == "truth" => {
                            ending.lab.retain(|t| t.vm != l.vm);
                            ending.lab.push(l.clone());
                        }
                        _ => {}
                    }
                    app.apply(&rec);
                    continue;
                }
                // The watcher ended: SIGINT, SIGTERM, --duration, or our stop.
                None => break,
            },
            ev = events.next() => match ev {
                UiEvent::Key(key) => {
                    if handler::on_key(app, key) == Action::Quit {
                        if let Some(s) = stop.take() {
                            let _ = s.send(());
                        }
                    }
                }
                UiEvent::Tick => {}
                UiEvent::InputClosed => {
                    if let Some(s) = stop.take() {
                        let _ = s.send(());
                    }
                }
            },
        }
        terminal.draw(|f| ui::draw(f, app, Ts(Utc::now())))?;
    }
    app.finished = true;
    if let Some(s) = ending.summary.as_mut() {
        app.engine.annotate_summary(s);
    }
    Ok(ending)
}
