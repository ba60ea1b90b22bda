//! The cleanup helper: clsact filters are owned by the interface's qdisc, not by the
//! process, so a run killed with SIGKILL would leave its filters running on every frame.
//! Each run that attaches clsact filters starts one small child process (the same binary,
//! `tapwatch cleanup-helper`) and tells it, over a pipe, its program ids and every interface
//! it holds filters on. When the pipe closes, however the run ended, the helper removes the
//! filters of those programs that are still attached, and exits. It ignores the signals
//! that end a run, so a Ctrl-C or a dropped ssh session reaches the run, which cleans up
//! itself; the helper then finds nothing left to do.
//!
//! Only the filters whose program id is one of the run's are removed: never another run's.

use std::{
    collections::{BTreeSet, HashSet},
    io::{self, BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
};

use crate::collect::netlink::{bpf_filters, delete_filter, CLSACT_EGRESS, CLSACT_INGRESS};

/// The hidden subcommand the helper runs as.
pub const SUBCOMMAND: &str = "cleanup-helper";

/// What the run says to its helper, one line each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// A program of the run (its filters are the ones to remove).
    Program(u32),
    /// The run holds filters on this interface.
    Holds(u32),
    /// The run removed its filters from this interface.
    Released(u32),
}

impl Line {
    fn render(self) -> String {
        match self {
            Line::Program(id) => format!("p {id}\n"),
            Line::Holds(i) => format!("+ {i}\n"),
            Line::Released(i) => format!("- {i}\n"),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let (tag, n) = s.trim_end().split_once(' ')?;
        let n = n.parse().ok()?;
        match tag {
            "p" => Some(Line::Program(n)),
            "+" => Some(Line::Holds(n)),
            "-" => Some(Line::Released(n)),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the cleanup helper ({what}): {source}")]
pub struct ReaperError {
    what: &'static str,
    #[source]
    source: io::Error,
}

/// The run's side: the helper's stdin. Dropping it lets the helper go.
pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the helper and waits until it runs; `programs` are the run's program ids.
    pub fn start(programs: &[u32]) -> Result<Self, ReaperError> {
        let err = |what| move |source| ReaperError { what, source };
        let mut child = Command::new("/proc/self/exe")
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(err("start"))?;
        let stdin = child.stdin.take();
        let mut reaper = Self { child, stdin };
        // The helper says it is ready once its signals are ignored: from then on no signal
        // meant for the run can take it away first.
        let mut ready = String::new();
        if let Some(out) = reaper.child.stdout.take() {
            BufReader::new(out)
                .take(64)
                .read_line(&mut ready)
                .map_err(err("handshake"))?;
        }
        if ready.trim() != "ready" {
            return Err(ReaperError {
                what: "handshake",
                source: io::Error::other("it did not start"),
            });
        }
        for &id in programs {
            reaper.send(Line::Program(id)).map_err(err("write"))?;
        }
        Ok(reaper)
    }

    fn send(&mut self, line: Line) -> io::Result<()> {
        match self.stdin.as_mut() {
            Some(s) => s.write_all(line.render().as_bytes()),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// The run now holds filters on `ifindex`.
    pub fn holds(&mut self, ifindex: u32) -> io::Result<()> {
        self.send(Line::Holds(ifindex))
    }

    /// The run removed its filters from `ifindex`.
    pub fn released(&mut self, ifindex: u32) -> io::Result<()> {
        self.send(Line::Released(ifindex))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // EOF: the helper removes what is left (nothing after a clean exit) and ends.
        self.stdin.take();
        let _ = self.child.wait();
    }
}

/// The helper's side: follows the run's lines until the pipe closes, then removes what is
/// left. Never returns.
pub fn run() -> ! {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting a signal's disposition to "ignore" has no handler to be unsafe.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let mut out = io::stdout();
    let _ = out.write_all(b"ready\n").and_then(|_| out.flush());
    // SAFETY: closing our own stdout: nothing else is written to it.
    unsafe { libc::close(libc::STDOUT_FILENO) };
    let (programs, held) = follow(io::stdin().lock());
    for ifindex in held {
        let _ = remove(ifindex, &programs);
    }
    std::process::exit(0)
}

/// Reads the run's lines to the end: the run's programs, and the interfaces it still holds.
fn follow(input: impl BufRead) -> (HashSet<u32>, BTreeSet<u32>) {
    let (mut programs, mut held) = (HashSet::new(), BTreeSet::new());
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        match Line::parse(&String::from_utf8_lossy(&line)) {
            Some(Line::Program(id)) => {
                programs.insert(id);
            }
            Some(Line::Holds(i)) => {
                held.insert(i);
            }
            Some(Line::Released(i)) => {
                held.remove(&i);
            }
            None => {}
        }
    }
    (programs, held)
}

/// Removes the filters of `programs` from both clsact hooks of `ifindex`.
fn remove(ifindex: u32, programs: &HashSet<u32>) -> io::Result<usize> {
    let mut removed = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        for f in bpf_filters(ifindex, parent)? {
            if programs.contains(&f.prog_id) && delete_filter(ifindex, &f).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_keeps_what_the_run_still_holds() {
        let lines = [
            Line::Program(7),
            Line::Program(8),
            Line::Holds(3),
            Line::Holds(4),
            Line::Released(3),
            Line::Holds(5),
        ];
        let text: String = lines.iter().map(|l| l.render()).collect();
        // Garbage is skipped; a last line without its newline (the run died mid-write)
        // still counts: at worst the helper looks for the run's filters on one more tap.
        let text = format!("{text}garbage\n+ 9");
        let (programs, held) = follow(text.as_bytes());
        assert_eq!(programs, HashSet::from([7, 8]));
        assert_eq!(held, BTreeSet::from([4, 5, 9]));
        for l in lines {
            assert_eq!(Line::parse(&l.render()), Some(l));
        }
        assert_eq!(Line::parse("+ x"), None);
    }
}
