//! The lab's IPv6: which families its guests speak (`--ip`), their addresses, and the
//! Router Advertisement a hypervisor writes into a VM's tap so that the guest learns its
//! default router the way a real guest does (there is no radvd in the lab: the lab writes
//! the frame a router advertisement daemon on the host would send).
//!
//! The router a routed guest learns is its tap's own link-local address, which Linux
//! derives from the tap's MAC (EUI-64): a tap whose MAC changed across a migration has
//! another address, so the guest's router entry can only fail, and its kernel moves to
//! the router the destination advertised once its neighbour unreachability detection
//! gives the old one up (REACHABLE, STALE, DELAY 5 s, three unicast solicitations 1 s
//! apart). The host answers solicitations for its tap's own address natively: no proxy
//! NDP is needed.

use std::net::Ipv6Addr;

use crate::{
    frames::{self, eui64_link_local, RouterAdvert, V6Ends, ALL_NODES},
    lab::netns::{Netns, SandboxError},
    model::mac::MacAddr,
    nudge::send::TapWriter,
};

/// The address families the lab's guests speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LabIp {
    /// IPv4 only (the default).
    #[default]
    #[value(name = "4")]
    V4,
    /// IPv6 only: an address, and a default router learnt from a Router Advertisement.
    #[value(name = "6")]
    V6,
    /// Both: the guest's ARP and neighbour discovery caches go stale apart.
    #[value(name = "dual")]
    Dual,
}

impl LabIp {
    pub fn v4(self) -> bool {
        self != LabIp::V6
    }

    pub fn v6(self) -> bool {
        self != LabIp::V4
    }
}

/// The VM's IPv6 address (routed: a /128 routed to its tap; bridged: in the client's /64).
pub fn guest_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x65, 0, 0, 0, 0, 2 + i as u16)
}

/// The client's address on a hypervisor's link (`subnet` 10: the source's, 20: the
/// destination's), and the hypervisor's.
pub fn link6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, host)
}

/// The client's address on the bridged segment.
pub const CLIENT_BRIDGED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x65, 0, 0, 0, 0, 1);

/// Turns IPv6 on in a namespace the lab made (they start with it off), without duplicate
/// address detection (its second of waiting would only slow the lab; nothing else holds
/// the lab's addresses); `forwarding` for a hypervisor.
/// `devices`: interfaces already there, whose own setting must be off before IPv6 comes up
/// on them (detection is skipped only when both it and `all` say so).
pub fn enable(ns: &Netns, forwarding: bool, devices: &[&str]) -> Result<(), SandboxError> {
    let mut args: Vec<String> = vec!["-qw".into()];
    args.extend(
        devices
            .iter()
            .map(|d| format!("net.ipv6.conf.{d}.accept_dad=0")),
    );
    args.extend(
        [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
        ]
        .map(String::from),
    );
    args.push(format!("net.ipv6.conf.all.forwarding={}", forwarding as u8));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.exec("sysctl", &args)?;
    Ok(())
}

/// Writes a Router Advertisement into tap `tap` of hypervisor `hv`, from the tap's own
/// link-local address (EUI-64 of `tap_mac`) to all-nodes, with the tap's MAC: the guest
/// takes the tap as its default router.
pub fn advertise_router(hv: &Netns, tap: &str, tap_mac: MacAddr) -> Result<(), SandboxError> {
    let ra = frames::router_advert(
        V6Ends::to_group(tap_mac, eui64_link_local(tap_mac), ALL_NODES),
        RouterAdvert {
            router_lifetime: frames::DEFAULT_ROUTER_LIFETIME_S,
            prefix: None,
        },
    );
    let name = tap.to_string();
    let sent = hv.enter(move || {
        let c = std::ffi::CString::new(name.clone()).unwrap_or_default();
        // SAFETY: a valid C string; the call only reads it.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        TapWriter::open()
            .and_then(|w| w.send(&name, ifindex, &ra))
            .map_err(|e| e.to_string())
    })?;
    sent.map_err(|e| SandboxError::Io {
        what: format!("advertising the router on {tap}"),
        source: std::io::Error::other(e),
    })
}
