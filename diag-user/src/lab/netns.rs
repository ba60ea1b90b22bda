//! Real network namespaces and taps for tests, the lab and benchmarks.
//!
//! A [`VmTap`] is opened through `/dev/net/tun` exactly as QEMU opens a VM's interface:
//! frames written to it arrive as ingress on the host side of the tap, frames the host
//! sends leave through it. Everything here cleans up on drop, also when a test panics.

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::{AsRawFd, OwnedFd},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::model::mac::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("`{cmd}` could not run: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for {what}; screen:\n{screen}")]
    Timeout { what: String, screen: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Runs a command, turning a non-zero exit into an error that quotes its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, SandboxError> {
    let line = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| SandboxError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// A fresh namespace named `{prefix}-{pid}-{n}`, loopback up, IPv6 off so the host
    /// sends nothing to a tap on its own (no DAD, router or MLD solicitations).
    pub fn new(prefix: &str) -> Result<Self, SandboxError> {
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        Self::named(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, SandboxError> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n NS …`
    pub fn ip(&self, args: &[&str]) -> Result<String, SandboxError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered the namespace (setns affects one thread only).
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SandboxError> {
        self.spawn(f)?.join().expect("namespace thread panicked")
    }

    /// Starts `f` on a new thread inside the namespace; sockets and devices it opens belong
    /// to the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T, SandboxError>>, SandboxError> {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).map_err(io_err(format!("open {path}")))?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only this new thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io_err("setns")(io::Error::last_os_error()));
            }
            Ok(f())
        }))
    }

    /// Creates the namespace `name` as is (no suffix), set up as [`Netns::new`] does; for
    /// callers that manage names.
    pub fn named(name: &str) -> Result<Self, SandboxError> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        ns.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// The VM's end of a tap: what QEMU holds. The device lives as long as this fd, unless
/// someone deletes it first (`ip link del`), as happens when a VM migrates away.
#[derive(Debug)]
pub struct VmTap {
    fd: OwnedFd,
    name: String,
}

impl VmTap {
    /// Creates tap `name` in `ns`, sets its host-side MAC, brings it up.
    pub fn create(ns: &Netns, name: &str, host_mac: MacAddr) -> Result<Self, SandboxError> {
        let ifname = name.to_string();
        let fd = ns.enter(move || open_tap(&ifname))??;
        let tap = Self {
            fd,
            name: name.to_string(),
        };
        ns.ip(&["link", "set", name, "address", &host_mac.to_string(), "up"])?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one frame from the VM into the host.
    pub fn send(&self, frame: &[u8]) -> Result<(), SandboxError> {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io_err(format!("write to {}", self.name))(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The next frame the host sent to the VM, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Vec<u8>>, SandboxError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if r < 0 {
            return Err(io_err("poll")(io::Error::last_os_error()));
        }
        if r == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io_err(format!("read from {}", self.name))(
                io::Error::last_os_error(),
            ));
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }
}

impl AsRawFd for VmTap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl VmTap {
    /// Opens tap `name` in the calling thread's namespace, as it is (random MAC, down):
    /// the cheapest way to make many taps.
    pub fn open(name: &str) -> Result<Self, SandboxError> {
        Ok(Self {
            fd: open_tap(name)?,
            name: name.to_string(),
        })
    }

    /// Keeps the device after this fd closes, as `ip tuntap add` does; it then lives until
    /// deleted or until its namespace goes.
    pub fn persist(self) -> Result<(), SandboxError> {
        // SAFETY: TUNSETPERSIST on our own tap fd takes an integer argument.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
            return Err(io_err(format!("TUNSETPERSIST {}", self.name))(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

fn open_tap(name: &str) -> Result<OwnedFd, SandboxError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io_err(format!("tap name {name:?}"))(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io_err("open /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a properly sized, initialised ifreq.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(io_err(format!("TUNSETIFF {name}"))(
            io::Error::last_os_error(),
        ));
    }
    Ok(file.into())
}
