//! The drop-driven datapath's kernel attachments, made once per run whatever the number
//! of taps: the `tap_drops` program on the `skb:kfree_skb` tracepoint, and the `tap_arp`
//! socket filter on two packet sockets bound to ARP and RARP in tapwatch's namespace (and
//! two more per tap of another namespace, bound to it there: a packet socket sees only its
//! own namespace's frames).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use aya::{
    programs::{BtfTracePoint, ProgramFd, SocketFilter},
    Btf, Ebpf,
};

use super::{describe, layout::Layout, ProbeError};

pub(super) const DROPS_PROG: &str = "tap_drops";
pub(super) const ARP_PROG: &str = "tap_arp";

/// The attachments; they go when this (the sockets) and the `Ebpf` (the tracepoint's
/// link) are dropped, also when the process is killed.
pub(super) struct DropHook {
    pub layout: Layout,
    _sockets: Vec<OwnedFd>,
    /// The ARP program, for the sockets of taps in other namespaces.
    arp: ProgramFd,
}

fn failed(what: &str, why: impl std::fmt::Display) -> ProbeError {
    ProbeError::Drops(format!("{what}: {why}"))
}

impl DropHook {
    /// Attaches both; on an error nothing stays attached.
    pub fn start(ebpf: &mut Ebpf, layout: Layout) -> Result<Self, ProbeError> {
        let filter: &mut SocketFilter = ebpf
            .program_mut(ARP_PROG)
            .ok_or(ProbeError::Missing(ARP_PROG))?
            .try_into()
            .map_err(|e| failed("the ARP program", describe(&e)))?;
        filter
            .load()
            .map_err(|e| failed("the kernel refused the ARP program", describe(&e)))?;
        let arp = filter
            .fd()
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|e| failed("the ARP program", describe(&e)))?;
        let sockets = arp_sockets(&arp, 0).map_err(|e| failed("the ARP sockets", e))?;
        // Last: once attached it runs for every drop on the host.
        let btf = Btf::from_sys_fs().map_err(|e| failed("the kernel's BTF", e))?;
        let tp: &mut BtfTracePoint = ebpf
            .program_mut(DROPS_PROG)
            .ok_or(ProbeError::Missing(DROPS_PROG))?
            .try_into()
            .map_err(|e| failed("the drop program", describe(&e)))?;
        tp.load("kfree_skb", &btf)
            .map_err(|e| failed("the kernel refused the drop program", describe(&e)))?;
        tp.attach()
            .map_err(|e| failed("cannot attach to skb:kfree_skb", describe(&e)))?;

        Ok(Self {
            layout,
            _sockets: sockets,
            arp,
        })
    }

    /// Sockets that see the ARP and RARP of tap `ifindex` of the calling thread's
    /// namespace (another than tapwatch's: its own sockets see only its own). They stay
    /// filtered while open; closing them (the tap detached) is all the cleaning there is.
    pub fn sockets_for(&self, ifindex: u32) -> std::io::Result<Vec<OwnedFd>> {
        arp_sockets(&self.arp, ifindex)
    }
}

/// Closes the ARP sockets of taps that went, off the watch loop's thread and many at once:
/// the kernel waits for an RCU grace period to release each bound packet socket (about
/// 10 ms), and the waits of sockets closed together overlap. Dropping it closes what is
/// left before it returns (at the process's exit the kernel would close them one by one).
pub(super) struct Closer {
    tx: Option<std::sync::mpsc::Sender<Vec<OwnedFd>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Sockets closed at once, at most.
const CLOSE_AT_ONCE: usize = 64;

impl Closer {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<OwnedFd>>();
        let thread = std::thread::Builder::new()
            .name("tapwatch-close".into())
            .stack_size(256 << 10)
            .spawn(move || {
                while let Ok(mut all) = rx.recv() {
                    while let Ok(more) = rx.try_recv() {
                        all.extend(more);
                    }
                    close_all(all);
                }
            })
            .ok();
        Self {
            tx: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    pub fn close(&self, fds: Vec<OwnedFd>) {
        if fds.is_empty() {
            return;
        }
        match &self.tx {
            Some(tx) => {
                // The thread is gone only if it panicked: close them here.
                if let Err(std::sync::mpsc::SendError(fds)) = tx.send(fds) {
                    close_all(fds);
                }
            }
            None => close_all(fds),
        }
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Closes `fds` on up to CLOSE_AT_ONCE threads.
fn close_all(fds: Vec<OwnedFd>) {
    let threads = fds.len().clamp(1, CLOSE_AT_ONCE);
    let mut parts: Vec<Vec<OwnedFd>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, fd) in fds.into_iter().enumerate() {
        parts[i % threads].push(fd);
    }
    std::thread::scope(|s| {
        for part in parts {
            // A thread that cannot start leaves its part to be closed here.
            let _ = std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn_scoped(s, move || drop(part));
        }
    });
}

/// The two filtered sockets, bound to ARP and RARP on `ifindex` (0: every interface).
/// Filtered with a plain `SO_ATTACH_BPF`: the filter goes with the socket, and nothing
/// keeps its descriptor's number after it is closed.
fn arp_sockets(prog: &ProgramFd, ifindex: u32) -> std::io::Result<Vec<OwnedFd>> {
    let mut sockets = Vec::new();
    for ethertype in [diag_common::ETH_P_ARP, diag_common::ETH_P_RARP] {
        let sock = packet_socket()?;
        set_int(&sock, libc::SO_ATTACH_BPF, prog.as_fd().as_raw_fd())?;
        // Bound only once filtered: the socket never holds a frame.
        bind(&sock, ethertype, ifindex)?;
        sockets.push(sock);
    }
    Ok(sockets)
}

/// A packet socket that receives nothing yet (protocol 0 until bound).
fn packet_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            std::io::Error::new(
                e.kind(),
                format!("{e} (ARP and RARP are seen through packet sockets: CAP_NET_RAW)"),
            )
        } else {
            e
        });
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Nothing is ever queued (the filter keeps no frame): the smallest buffer will do;
    // failing that, the default size.
    let _ = set_int(&sock, libc::SO_RCVBUF, 0);
    Ok(sock)
}

/// Sets the socket option `name` (of SOL_SOCKET) that takes an int.
fn set_int(sock: &OwnedFd, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt with a valid int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds to `ethertype` on interface `ifindex` (0: every interface of the namespace).
fn bind(sock: &OwnedFd, ethertype: u16, ifindex: u32) -> std::io::Result<()> {
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain integers.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: bind(2) with a valid sockaddr_ll and its size.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
