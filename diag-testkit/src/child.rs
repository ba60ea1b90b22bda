//! A `tapwatch` process running inside a namespace, its NDJSON output read line by line as
//! it comes, each line stamped with the moment it was read (for latency measurements).

use std::{
    ffi::OsStr,
    io::{self, BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::HarnessError;

/// One line of output: when it was read and what it said (or the text, if not JSON).
#[derive(Debug)]
pub struct Line {
    pub at: Instant,
    pub value: Result<Value, String>,
}

pub struct Spawned {
    child: Child,
    lines: Receiver<Line>,
    stderr: Option<JoinHandle<String>>,
}

impl Spawned {
    /// Starts `<argv…>` inside the network namespace `ns` (`ip netns exec`) with stdout and
    /// stderr piped.
    pub fn start<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<Self, HarnessError> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                cmd: format!("a process in {ns}"),
                source,
            })?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let at = Instant::now();
                let value = serde_json::from_str(&line).map_err(|_| line);
                if tx.send(Line { at, value }).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Ok(Self {
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    /// The next line; `Disconnected` once the process closed its stdout.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Line, RecvTimeoutError> {
        self.lines.recv_timeout(timeout)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stderr; waits for it to close the pipe.
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
