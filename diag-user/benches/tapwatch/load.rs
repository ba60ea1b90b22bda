//! The frame generator (a VM writing into its tap) and the observers compared: nothing,
//! an empty tc program, tapwatch (by default and with its tc probe), tcpdump.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use diag_testkit::child::Spawned;
use diag_user::lab::netns::{Netns, VmTap};
use serde_json::Value;

use crate::{floor::EmptyProgram, measure::ProcSample};

/// Writer threads pushing one frame over and over until stopped; each returns its count.
pub struct Generator {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Generator {
    /// `writers` threads writing `frame` into the VM side of `tap`, one write per frame as
    /// QEMU does without vhost.
    pub fn tap(tap: &Arc<VmTap>, frame: &[u8], writers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..writers)
            .map(|_| {
                let (tap, frame, stop) = (tap.clone(), frame.to_vec(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            if tap.send(&frame).is_ok() {
                                n += 1;
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        Self { stop, threads }
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum()
    }
}

/// What watches the interface during a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observer {
    Nothing,
    /// An empty tc program: the floor of any per-frame hook.
    Floor,
    /// `tapwatch` as it starts by default (the drop-driven datapath).
    Tapwatch,
    /// `tapwatch --datapath tc`: the per-frame probe on the tap.
    TapwatchTc,
    Tcpdump,
}

impl Observer {
    pub const ALL: [Observer; 5] = [
        Observer::Nothing,
        Observer::Floor,
        Observer::Tapwatch,
        Observer::TapwatchTc,
        Observer::Tcpdump,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Observer::Nothing => "no probe",
            Observer::Floor => "empty tc program (floor)",
            Observer::Tapwatch => "tapwatch (default: drops)",
            Observer::TapwatchTc => "tapwatch --datapath tc",
            Observer::Tcpdump => "tcpdump -w /dev/null",
        }
    }
}

pub enum Running {
    Nothing,
    Floor(EmptyProgram),
    Tapwatch(Tapwatch),
    Tcpdump(Tcpdump),
}

impl Running {
    pub fn start(obs: Observer, ns: &Netns, ifname: &str) -> Result<Self> {
        let tapwatch = |extra: &[&str]| {
            let mut args = vec!["--interval", "1", "--iface", ifname];
            args.extend_from_slice(extra);
            Tapwatch::json(ns, &args).map(Running::Tapwatch)
        };
        Ok(match obs {
            Observer::Nothing => Running::Nothing,
            Observer::Floor => Running::Floor(EmptyProgram::attach(ns, ifname)?),
            Observer::Tapwatch => tapwatch(&[])?,
            Observer::TapwatchTc => tapwatch(&["--datapath", "tc"])?,
            Observer::Tcpdump => Running::Tcpdump(Tcpdump::start(ns, ifname)?),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Nothing | Running::Floor(_) => None,
            Running::Tapwatch(t) => Some(t.pid()),
            Running::Tcpdump(t) => Some(t.child.id()),
        }
    }

    pub fn cpu_s(&self) -> f64 {
        self.pid()
            .and_then(|p| ProcSample::of(p).ok())
            .map_or(0.0, |s| s.cpu_s)
    }

    /// Stops the observer; tapwatch's last records (the summary last).
    pub fn stop(self) -> Result<Vec<Value>> {
        match self {
            Running::Nothing => Ok(Vec::new()),
            Running::Floor(p) => p.stop().map(|_| Vec::new()),
            Running::Tapwatch(t) => t.stop(),
            Running::Tcpdump(t) => t.stop().map(|_| Vec::new()),
        }
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `tapwatch watch --json` in a namespace, its records read as they come.
pub struct Tapwatch {
    pub proc: Spawned,
    pub start: Instant,
}

impl Tapwatch {
    pub fn json(ns: &Netns, args: &[&str]) -> Result<Self> {
        let mut argv = vec![env!("CARGO_BIN_EXE_tapwatch"), "watch", "--json"];
        argv.extend_from_slice(args);
        let start = Instant::now();
        let proc = Spawned::start(ns.name(), &argv)?;
        let mut t = Self { proc, start };
        if let Some(ifname) = args.windows(2).find(|w| w[0] == "--iface").map(|w| w[1]) {
            if !ifname.contains('*') {
                t.wait_for(|v| v["type"] == "attached" && v["ifname"] == ifname)?;
            }
        }
        Ok(t)
    }

    /// The next record; errors when tapwatch ended or said nothing for `TIMEOUT`.
    pub fn next(&mut self) -> Result<(Instant, Value)> {
        self.next_within(TIMEOUT)?
            .ok_or_else(|| anyhow::anyhow!("tapwatch said nothing for {TIMEOUT:?}"))
    }

    pub fn next_within(&mut self, t: Duration) -> Result<Option<(Instant, Value)>> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.proc.recv_timeout(t) {
            Ok(line) => match line.value {
                Ok(v) => Ok(Some((line.at, v))),
                Err(text) => bail!("tapwatch printed a line that is not JSON: {text}"),
            },
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                bail!("tapwatch ended: {}", self.proc.stderr())
            }
        }
    }

    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Result<(Instant, Value)> {
        loop {
            let (at, v) = self.next()?;
            if pred(&v) {
                return Ok((at, v));
            }
        }
    }

    /// SIGINT; returns every record not read yet, the summary last.
    pub fn stop(self) -> Result<Vec<Value>> {
        self.stop_timed().map(|(records, _)| records)
    }

    /// As `stop`, and the time from the signal to the process's exit.
    pub fn stop_timed(mut self) -> Result<(Vec<Value>, Duration)> {
        let t0 = Instant::now();
        self.proc.signal(libc::SIGINT);
        let mut rest = Vec::new();
        loop {
            let (_, v) = self.next()?;
            let done = v["type"] == "summary";
            rest.push(v);
            if done {
                break;
            }
        }
        self.proc.wait_timeout(TIMEOUT)?;
        Ok((rest, t0.elapsed()))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// `tcpdump -i IF -w /dev/null`, as an engineer would run it.
pub struct Tcpdump {
    child: Child,
    stderr: JoinHandle<String>,
}

impl Tcpdump {
    fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "tcpdump", "-n", "-i", ifname])
            .args(["-w", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("tcpdump (scripts/setup.sh installs it)")?;
        let mut err = BufReader::new(child.stderr.take().expect("piped"));
        // tcpdump says "listening on IF" once its socket is bound and its filter set.
        let mut line = String::new();
        loop {
            line.clear();
            if err.read_line(&mut line)? == 0 {
                bail!("tcpdump ended before listening");
            }
            if line.contains("listening on") {
                break;
            }
        }
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut rest);
            rest
        });
        Ok(Self { child, stderr })
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        let _ = self.stderr.join();
        Ok(())
    }
}
