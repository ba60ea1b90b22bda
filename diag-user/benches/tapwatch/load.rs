//! Frame generators (a VM writing into its tap; a host sending through a veth) and the
//! observers compared: nothing, tapwatch, tcpdump.

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

use crate::measure::ProcSample;

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

    /// `writers` threads in `ns` sending `frame` out of `ifname` with a packet socket, in
    /// batches of 64 (sendmmsg) and past the qdisc, as fast as the kernel takes them.
    pub fn packet_socket(ns: &Netns, ifname: &str, frame: &[u8], writers: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..writers {
            let (ifname, frame, stop) = (ifname.to_string(), frame.to_vec(), stop.clone());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let handle = ns.spawn(move || {
                let sock = match PacketSocket::open(&ifname) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return 0;
                    }
                };
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += sock.send_batch(&frame);
                }
                n
            })?;
            ready_rx.recv().context("sender thread")??;
            threads.push(std::thread::spawn(move || {
                handle.join().ok().and_then(|r| r.ok()).unwrap_or(0)
            }));
        }
        Ok(Self { stop, threads })
    }

    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum()
    }
}

struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    const BATCH: usize = 64;

    fn open(ifname: &str) -> Result<Self> {
        use std::os::fd::FromRawFd;
        let c = std::ffi::CString::new(ifname)?;
        // SAFETY: plain syscalls with valid arguments; the fd is owned right away.
        unsafe {
            let ifindex = libc::if_nametoindex(c.as_ptr());
            if ifindex == 0 {
                bail!("no interface {ifname}");
            }
            // Protocol 0: this socket sends only, so the receive path never sees it.
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("packet socket: {}", std::io::Error::last_os_error());
            }
            let sock = Self(std::os::fd::OwnedFd::from_raw_fd(fd));
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                bail!("bind to {ifname}: {}", std::io::Error::last_os_error());
            }
            Ok(sock)
        }
    }

    fn send_batch(&self, frame: &[u8]) -> u64 {
        use std::os::fd::AsRawFd;
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut _,
            iov_len: frame.len(),
        };
        // SAFETY: every header points at the one iovec, which outlives the call.
        unsafe {
            let mut hdrs: [libc::mmsghdr; Self::BATCH] = std::mem::zeroed();
            for h in hdrs.iter_mut() {
                h.msg_hdr.msg_iov = &mut iov;
                h.msg_hdr.msg_iovlen = 1;
            }
            let n = libc::sendmmsg(self.0.as_raw_fd(), hdrs.as_mut_ptr(), Self::BATCH as u32, 0);
            n.max(0) as u64
        }
    }
}

/// What watches the interface during a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observer {
    Nothing,
    Tapwatch,
    Tcpdump,
}

impl Observer {
    pub const ALL: [Observer; 3] = [Observer::Nothing, Observer::Tapwatch, Observer::Tcpdump];

    pub fn label(self) -> &'static str {
        match self {
            Observer::Nothing => "no probe",
            Observer::Tapwatch => "tapwatch",
            Observer::Tcpdump => "tcpdump -w /dev/null",
        }
    }
}

pub enum Running {
    Nothing,
    Tapwatch(Tapwatch),
    Tcpdump(Tcpdump),
}

impl Running {
    pub fn start(obs: Observer, ns: &Netns, ifname: &str) -> Result<Self> {
        Ok(match obs {
            Observer::Nothing => Running::Nothing,
            Observer::Tapwatch => {
                Running::Tapwatch(Tapwatch::json(ns, &["--interval", "1", "--iface", ifname])?)
            }
            Observer::Tcpdump => Running::Tcpdump(Tcpdump::start(ns, ifname)?),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Nothing => None,
            Running::Tapwatch(t) => Some(t.pid()),
            Running::Tcpdump(t) => Some(t.child.id()),
        }
    }

    pub fn cpu_s(&self) -> f64 {
        self.pid()
            .and_then(|p| ProcSample::of(p).ok())
            .map_or(0.0, |s| s.cpu_s)
    }

    pub fn stop(self) -> Result<()> {
        match self {
            Running::Nothing => Ok(()),
            Running::Tapwatch(t) => t.stop().map(|_| ()),
            Running::Tcpdump(t) => t.stop(),
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
    pub fn stop(mut self) -> Result<Vec<Value>> {
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
        Ok(rest)
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
