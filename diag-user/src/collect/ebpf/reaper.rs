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
//!
//! A tap of another network namespace (a pod's, with `--netns all`) is named by its
//! namespace too: the helper opens the namespace when told of it (through the run's own
//! descriptor of it, while the run lives) and holds it, so it can go in and clean up.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::fs::MetadataExt,
    process::{Child, ChildStdin, Command, Stdio},
};

use crate::collect::netlink::{bpf_filters, delete_filter, CLSACT_EGRESS, CLSACT_INGRESS};

/// The hidden subcommand the helper runs as.
pub const SUBCOMMAND: &str = "cleanup-helper";

/// What the run says to its helper, one line each. An interface is an ifindex and the
/// inode of its network namespace (0: the run's own).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    /// A program of the run (its filters are the ones to remove).
    Program(u32),
    /// Another network namespace the run hooks taps in: its inode, and a path the helper
    /// opens it by at once.
    Netns(u64, String),
    /// The run holds filters on this interface.
    Holds(u32, u64),
    /// The run removed its filters from this interface.
    Released(u32, u64),
}

impl Line {
    fn render(&self) -> String {
        let iface = |i: u32, ns: u64| match ns {
            0 => format!("{i}"),
            ns => format!("{i} {ns}"),
        };
        match self {
            Line::Program(id) => format!("p {id}\n"),
            Line::Netns(ns, path) => format!("n {ns} {path}\n"),
            Line::Holds(i, ns) => format!("+ {}\n", iface(*i, *ns)),
            Line::Released(i, ns) => format!("- {}\n", iface(*i, *ns)),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        let (tag, rest) = s.trim_end().split_once(' ')?;
        let mut words = rest.splitn(2, ' ');
        let first = words.next()?;
        let second = words.next();
        let iface = || -> Option<(u32, u64)> {
            let ns = match second {
                Some(ns) => ns.parse().ok()?,
                None => 0,
            };
            Some((first.parse().ok()?, ns))
        };
        match tag {
            "p" if second.is_none() => Some(Line::Program(first.parse().ok()?)),
            "n" => Some(Line::Netns(first.parse().ok()?, second?.to_string())),
            "+" => iface().map(|(i, ns)| Line::Holds(i, ns)),
            "-" => iface().map(|(i, ns)| Line::Released(i, ns)),
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

impl ReaperError {
    /// It could not be started at all.
    pub fn spawn(source: io::Error) -> Self {
        Self {
            what: "start",
            source,
        }
    }
}

/// The run's side: the helper's stdin. Dropping it lets the helper go.
pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Namespaces the helper was told of, by inode.
    told: HashSet<u64>,
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
        let mut reaper = Self {
            child,
            stdin,
            told: HashSet::new(),
        };
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

    /// The run now holds filters on `ifindex` of `ns` (`None`: its own namespace).
    pub fn holds(
        &mut self,
        ifindex: u32,
        ns: Option<&crate::collect::namespaces::Netns>,
    ) -> io::Result<()> {
        let inode = ns.map_or(0, |n| n.inode);
        if let Some(ns) = ns {
            if self.told.insert(ns.inode) {
                self.send(Line::Netns(ns.inode, ns.path_for_children()))?;
            }
        }
        self.send(Line::Holds(ifindex, inode))
    }

    /// The run removed its filters from `ifindex` of the namespace with `inode` (0: its
    /// own).
    pub fn released(&mut self, ifindex: u32, inode: u64) -> io::Result<()> {
        self.send(Line::Released(ifindex, inode))
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
    let (programs, held, namespaces) = follow(io::stdin().lock());
    for (ns, ifindex) in held {
        if ns == 0 {
            let _ = remove(ifindex, &programs);
        } else if let Some(file) = namespaces.get(&ns) {
            let programs = programs.clone();
            let _ = crate::collect::setns::run_in(file, move || remove(ifindex, &programs));
        }
    }
    std::process::exit(0)
}

/// Reads the run's lines to the end: the run's programs, the interfaces it still holds
/// (by namespace inode and ifindex), and the namespaces it was told of, open.
#[allow(clippy::type_complexity)]
fn follow(input: impl BufRead) -> (HashSet<u32>, BTreeSet<(u64, u32)>, HashMap<u64, File>) {
    let (mut programs, mut held, mut namespaces) =
        (HashSet::new(), BTreeSet::new(), HashMap::new());
    for line in input.split(b'\n') {
        let Ok(line) = line else { break };
        match Line::parse(&String::from_utf8_lossy(&line)) {
            Some(Line::Program(id)) => {
                programs.insert(id);
            }
            // Opened now, while the run (whose descriptor the path is) lives; kept only if
            // it is the namespace the run named.
            Some(Line::Netns(ns, path)) => {
                if let Ok(f) = File::open(&path) {
                    if f.metadata().is_ok_and(|m| m.ino() == ns) {
                        namespaces.insert(ns, f);
                    }
                }
            }
            Some(Line::Holds(i, ns)) => {
                held.insert((ns, i));
            }
            Some(Line::Released(i, ns)) => {
                held.remove(&(ns, i));
            }
            None => {}
        }
    }
    (programs, held, namespaces)
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
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let lines = [
            Line::Program(7),
            Line::Program(8),
            Line::Holds(3, 0),
            Line::Holds(4, 0),
            Line::Released(3, 0),
            Line::Holds(5, 0),
            Line::Netns(own, "/proc/self/ns/net".into()),
            Line::Netns(42, "/proc/self/ns/net".into()),
            Line::Holds(3, own),
            Line::Holds(2, own),
            Line::Released(2, own),
        ];
        let text: String = lines.iter().map(|l| l.render()).collect();
        // Garbage is skipped; a last line without its newline (the run died mid-write)
        // still counts: at worst the helper looks for the run's filters on one more tap.
        let text = format!("{text}garbage\n+ 9");
        let (programs, held, namespaces) = follow(text.as_bytes());
        assert_eq!(programs, HashSet::from([7, 8]));
        assert_eq!(held, BTreeSet::from([(0, 4), (0, 5), (0, 9), (own, 3)]));
        // A path that is not the namespace it was said to be is not kept.
        assert_eq!(namespaces.keys().collect::<Vec<_>>(), [&own]);
        for l in lines {
            assert_eq!(Line::parse(&l.render()), Some(l));
        }
        assert_eq!(Line::parse("+ x"), None);
    }
}
