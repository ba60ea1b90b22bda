//! A detached tmux terminal: how tests and benchmarks drive the full-screen view and read
//! the screen back.

use std::time::{Duration, Instant};

use super::{run, HarnessError};

/// A tmux session, killed on drop.
pub struct Tmux {
    session: String,
}

impl Tmux {
    /// Starts `cmd` (a shell command line) in a new `width`x`height` session.
    pub fn start(session: &str, width: u16, height: u16, cmd: &str) -> Result<Self, HarnessError> {
        let (w, h) = (width.to_string(), height.to_string());
        run(
            "tmux",
            &["new-session", "-d", "-s", session, "-x", &w, "-y", &h, cmd],
        )?;
        Ok(Self {
            session: session.to_string(),
        })
    }

    pub fn screen(&self) -> Result<String, HarnessError> {
        run("tmux", &["capture-pane", "-p", "-t", &self.session])
    }

    pub fn keys(&self, keys: &str) -> Result<(), HarnessError> {
        run("tmux", &["send-keys", "-t", &self.session, keys]).map(|_| ())
    }

    /// The process in the pane (the command itself when it was started with `exec`).
    pub fn pane_pid(&self) -> Result<u32, HarnessError> {
        let out = run(
            "tmux",
            &["display", "-p", "-t", &self.session, "#{pane_pid}"],
        )?;
        out.trim().parse().map_err(|_| HarnessError::Command {
            cmd: "tmux display #{pane_pid}".into(),
            stderr: format!("not a pid: {out:?}"),
        })
    }

    /// Polls the screen every `poll` (a terminal gives no other readiness signal) until
    /// `pred` accepts it; returns that screen.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if pred(&screen) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: what.to_string(),
                    screen,
                });
            }
            std::thread::sleep(poll);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = run("tmux", &["kill-session", "-t", &self.session]);
    }
}
