//! Writing one frame into a tap from the host side: a packet socket in the tap's network
//! namespace sends it out of the tap, which hands it to the tap's reader (the VM) and to
//! nothing else. Before each send the device at that index is checked to be the tap, by
//! name and driver, on the socket itself (so in the socket's own namespace).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::model::mac::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(
        "cannot open a packet socket: {0} (writing a frame into a tap needs CAP_NET_RAW: run \
         as root or give the binary cap_net_raw)"
    )]
    Socket(io::Error),
    #[error("{ifname} is gone (no interface has index {ifindex} now): nothing was sent")]
    Gone { ifname: String, ifindex: u32 },
    #[error(
        "interface {ifindex} is now {found:?}, not {ifname}: nothing was sent (it is only ever \
         written into the VM's own tap)"
    )]
    Renamed {
        ifname: String,
        ifindex: u32,
        found: String,
    },
    #[error("{ifname} is not a tap (its driver is {driver:?}): nothing was sent")]
    NotATap { ifname: String, driver: String },
    #[error("sending into {ifname}: {source}")]
    Send { ifname: String, source: io::Error },
}

/// A packet socket that receives nothing (protocol 0) and sends into taps of the namespace
/// it was opened in.
#[derive(Debug)]
pub struct TapWriter {
    sock: OwnedFd,
    /// The namespace the socket sends in, for the route lookups done there.
    netns: Option<std::fs::File>,
}

const SIOCGIFNAME: libc::c_ulong = 0x8910;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

#[repr(C)]
struct IfReqIndex {
    name: [u8; libc::IFNAMSIZ],
    ifindex: libc::c_int,
    _pad: [u8; 20],
}

#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl TapWriter {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SendError> {
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(SendError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            sock,
            netns: crate::collect::setns::current().ok(),
        })
    }

    /// This namespace's host routes out of interface `ifindex` (their addresses), looked
    /// up from the socket's namespace whatever thread asks; none when that fails.
    pub fn routes_to(&self, ifindex: u32) -> Vec<std::net::IpAddr> {
        let Some(ns) = &self.netns else {
            return Vec::new();
        };
        crate::collect::setns::run_in(ns, move || {
            crate::collect::netlink::host_routes_via(ifindex).unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// The name of the interface with index `ifindex` in the socket's namespace.
    fn name_of(&self, ifindex: u32) -> io::Result<String> {
        let mut req = IfReqIndex {
            name: [0; libc::IFNAMSIZ],
            ifindex: ifindex as libc::c_int,
            _pad: [0; 20],
        };
        // SAFETY: SIOCGIFNAME fills the name of a properly sized ifreq.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), SIOCGIFNAME, &mut req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(c_str(&req.name))
    }

    /// The driver of interface `ifname` (`tun` for a tap).
    fn driver_of(&self, ifname: &str) -> io::Result<String> {
        // SAFETY: all-zero is a valid ethtool_drvinfo.
        let mut info: DrvInfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        let mut req = IfReqData {
            name: [0; libc::IFNAMSIZ],
            data: (&mut info as *mut DrvInfo).cast(),
            _pad: [0; 16],
        };
        let n = ifname.len().min(libc::IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
        // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a live drvinfo.
        if unsafe { libc::ioctl(self.sock.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(c_str(&info.driver))
    }

    /// Checks that interface `ifindex` is still the tap `ifname`.
    pub fn check(&self, ifname: &str, ifindex: u32) -> Result<(), SendError> {
        let found = self.name_of(ifindex).map_err(|_| SendError::Gone {
            ifname: ifname.to_string(),
            ifindex,
        })?;
        if found != ifname {
            return Err(SendError::Renamed {
                ifname: ifname.to_string(),
                ifindex,
                found,
            });
        }
        let driver = self.driver_of(ifname).unwrap_or_default();
        if driver != "tun" {
            return Err(SendError::NotATap {
                ifname: ifname.to_string(),
                driver,
            });
        }
        Ok(())
    }

    /// Writes `frame` into tap `ifname` (index `ifindex`) after checking it is that tap.
    pub fn send(&self, ifname: &str, ifindex: u32, frame: &[u8]) -> Result<(), SendError> {
        self.check(ifname, ifindex)?;
        let dst = MacAddr(
            frame
                .get(..6)
                .and_then(|d| d.try_into().ok())
                .unwrap_or([0; 6]),
        );
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain integers.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as libc::c_int;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst.0);
        // SAFETY: sendto(2) with a valid buffer and sockaddr_ll.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ENXIO)
                || source.raw_os_error() == Some(libc::ENODEV)
            {
                return Err(SendError::Gone {
                    ifname: ifname.to_string(),
                    ifindex,
                });
            }
            return Err(SendError::Send {
                ifname: ifname.to_string(),
                source,
            });
        }
        Ok(())
    }
}
