//! A run's outputs besides the live view: NDJSON on stdout, notices on stderr, the bundle;
//! each written by a thread of its own.

use std::{
    io,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use diag_user::report::{
    bundle::Bundle,
    json::JsonSink,
    pipeline::{Pipeline, Writer},
    text::{one_line, NoticePrinter},
};
use tokio::sync::Notify;

use super::{close_bundle, STDOUT_CLOSE};

pub struct Outputs {
    stdout: Option<Writer<JsonSink<io::BufWriter<io::Stdout>>>>,
    /// Notices on stderr, when there is no full-screen view to show them.
    notices: Option<Writer<NoticePrinter<io::Stderr>>>,
    /// Why stdout failed, if it did (a closed pipe ends the run quietly).
    stdout_error: Arc<Mutex<Option<io::Error>>>,
    bundle: Option<Writer<Bundle>>,
}

impl Outputs {
    /// Adds them to `pipeline`. `json`: NDJSON on stdout; `stop` is notified when stdout
    /// fails, ending the run.
    pub fn start(
        pipeline: &Pipeline,
        json: bool,
        bundle: Option<Bundle>,
        stop: &Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let stdout_error = Arc::new(Mutex::new(None));
        let stdout = if json {
            let (err, stop) = (stdout_error.clone(), stop.clone());
            let sink = JsonSink(io::BufWriter::new(io::stdout()));
            Some(
                Writer::spawn("stdout", sink, move |e| {
                    if let Ok(mut slot) = err.lock() {
                        *slot = Some(io::Error::new(e.kind(), e.to_string()));
                    }
                    stop.notify_one();
                })?
                .0,
            )
        } else {
            None
        };
        let notices = if json {
            Some(Writer::spawn("notices", NoticePrinter(io::stderr()), |_| {})?.0)
        } else {
            None
        };
        let bundle = match bundle {
            Some(b) => Some(bundle_writer("bundle", b)?),
            None => None,
        };
        let o = Self {
            stdout,
            notices,
            stdout_error,
            bundle,
        };
        for p in [
            o.stdout.as_ref().map(Writer::pusher),
            o.notices.as_ref().map(Writer::pusher),
            o.bundle.as_ref().map(Writer::pusher),
        ]
        .into_iter()
        .flatten()
        {
            pipeline.add_output(p);
        }
        Ok(o)
    }

    /// Writes the rest: the bundle (its reports from the run's registry) first, then
    /// stdout. Returns the exit status so far.
    pub fn close(self, pipeline: &Pipeline) -> anyhow::Result<ExitCode> {
        let mut code = ExitCode::SUCCESS;
        if let Some(w) = self.bundle {
            if let Some(c) = close_bundle(w, pipeline, "the bundle")? {
                code = c;
            }
        }
        if let Some(w) = self.stdout {
            if let Err(e) = w.close(STDOUT_CLOSE) {
                eprintln!("tapwatch: stdout: {e}");
            }
        }
        if let Some(w) = self.notices {
            let _ = w.close(STDOUT_CLOSE);
        }
        let failed = self.stdout_error.lock().ok().and_then(|mut e| e.take());
        if let Some(e) = failed {
            // `tapwatch … | head`: a reader that has seen enough is not an error.
            if e.kind() != io::ErrorKind::BrokenPipe {
                eprintln!("tapwatch: cannot write output: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
        Ok(code)
    }
}

/// A bundle on a writer thread of its own: a full disk stops it, never the live output.
pub fn bundle_writer(name: &str, b: Bundle) -> anyhow::Result<Writer<Bundle>> {
    let dir = b.dir().display().to_string();
    Ok(Writer::spawn(name, b, move |e| {
        eprintln!(
            "tapwatch: the bundle in {} stopped: {}",
            one_line(&dir),
            one_line(&e.to_string())
        );
    })?
    .0)
}
