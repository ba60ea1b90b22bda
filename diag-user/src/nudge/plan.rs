//! Whether a tap may be nudged, and with what frame: pure rules over what the registry knows
//! of the tap, so every refusal and every address's origin is decided (and tested) here.

use std::net::{IpAddr, Ipv4Addr};

use super::Gateways;
use crate::{
    frames,
    model::{
        mac::MacAddr,
        nudge::{AddrSource, NudgeFrame, NudgeTrigger},
        Mode,
    },
    registry::Tap,
};

/// What a nudge will send, and why it may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ifname: String,
    pub ifindex: u32,
    pub tap_mac: MacAddr,
    pub guest_mac: MacAddr,
    pub gateway: (IpAddr, AddrSource),
    pub guest_ip: (IpAddr, AddrSource),
    pub stale_mac: Option<MacAddr>,
    pub kind: NudgeFrame,
    pub frame: Vec<u8>,
    /// The evidence it acts on, in words.
    pub evidence: String,
}

/// Why a tap is not nudged; each says what would make it possible, if anything.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{0} is on a bridge: its guest's gateway is not this host, and a frame claiming it \
         could misdirect the guest's traffic; tapwatch never nudges a bridged tap"
    )]
    Bridged(String),
    #[error(
        "no stale window is open on {0} (its guest sends nothing to a MAC the tap does not \
         have); give --force to nudge it anyway"
    )]
    NoStaleWindow(String),
    #[error("{0} has no MAC known to tapwatch: nothing to claim the gateway at")]
    NoTapMac(String),
    #[error(
        "the guest MAC behind {0} is not known (libvirt does not say it and the VM sent no \
         frame yet)"
    )]
    NoGuestMac(String),
    #[error(
        "the guest's IP behind {0} is not known: it sent no IP or ARP frame and this host has \
         no route to it via the tap"
    )]
    NoGuestIp(String),
    #[error(
        "the gateway IP of the guest behind {ifname} is not known{asked}: give --gateway IP \
         (or --gateway CIDR=IP for hosts whose guests sit in several subnets)"
    )]
    NoGateway { ifname: String, asked: String },
    #[error(
        "{0}'s guest speaks IPv6 only here, and its nudge is not an ARP frame: give \
         --gateway with its router's IPv6 address once supported"
    )]
    Ipv6(String),
    #[error("{ifname}: {why}; --remediate acts only where a stale cache is certain")]
    NotMerelyStale { ifname: String, why: String },
}

/// What the operator or the run allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asked {
    pub trigger: NudgeTrigger,
    /// Nudge without an open stale window (the operator's explicit word).
    pub force: bool,
}

/// Decides the nudge for `tap`; `routed_ips` are this host's routes to the tap (their
/// addresses), the guest's IP when its frames did not say it.
pub fn plan(
    tap: &Tap,
    gateways: &Gateways,
    asked: Asked,
    routed_ips: &[IpAddr],
) -> Result<Plan, Refusal> {
    let name = || tap.ifname.clone();
    if tap.mode != Mode::Routed {
        return Err(Refusal::Bridged(name()));
    }
    let open = tap.blackout.filter(|b| b.end.is_none());
    if open.is_none() && !asked.force {
        return Err(Refusal::NoStaleWindow(name()));
    }
    let stale_mac = open.map(|b| b.stale_mac).filter(MacAddr::is_unicast);
    let evidence = match (asked.trigger, open) {
        (NudgeTrigger::Remediate, _) => {
            merely_stale(tap, stale_mac).map_err(|why| Refusal::NotMerelyStale {
                ifname: name(),
                why,
            })?
        }
        (NudgeTrigger::Operator, Some(b)) => format!(
            "the operator asked; the guest has sent to {} since {}",
            b.stale_mac, b.start
        ),
        (NudgeTrigger::Operator, None) => "the operator asked, with --force".to_string(),
    };
    let tap_mac = tap.mac.ok_or_else(|| Refusal::NoTapMac(name()))?;
    let guest_mac = tap
        .guest_mac()
        .or(tap.addrs.mac)
        .filter(MacAddr::is_unicast)
        .ok_or_else(|| Refusal::NoGuestMac(name()))?;
    let guest_ip = guest_ip(tap, routed_ips).ok_or_else(|| Refusal::NoGuestIp(name()))?;
    let gateway = gateway(tap, gateways, guest_ip.0)?;
    let (IpAddr::V4(gw), IpAddr::V4(ip)) = (gateway.0, guest_ip.0) else {
        return Err(Refusal::Ipv6(name()));
    };
    Ok(Plan {
        ifname: name(),
        ifindex: tap.key.ifindex,
        tap_mac,
        guest_mac,
        gateway,
        guest_ip,
        stale_mac,
        kind: NudgeFrame::Arp,
        frame: arp_nudge(tap_mac, guest_mac, gw, ip),
        evidence,
    })
}

/// An ARP request to the guest, from the gateway's IP at the tap's MAC: Linux updates an
/// existing entry for the sender of any request addressed to it, whatever `arp_accept`.
pub fn arp_nudge(
    tap_mac: MacAddr,
    guest_mac: MacAddr,
    gateway: Ipv4Addr,
    guest: Ipv4Addr,
) -> Vec<u8> {
    frames::arp(
        diag_common::frame::ARP_OP_REQUEST,
        guest_mac,
        tap_mac,
        gateway,
        MacAddr::default(),
        guest,
        None,
    )
}

/// The evidence that the guest's cache is merely stale (so that claiming the gateway at
/// the tap's MAC only says now what the host would answer anyway), or why it is not
/// certain.
fn merely_stale(tap: &Tap, stale: Option<MacAddr>) -> Result<String, String> {
    let stale = stale.ok_or("no stale MAC is known (a cooked capture, or no window open)")?;
    if let Some(until) = tap.mac_until(stale) {
        return Ok(format!(
            "the guest sends to {stale}, which this tap had until {until}"
        ));
    }
    if let Some(vm) = &tap.vm {
        if vm.libvirt_tap_mac() == Some(stale) {
            return Ok(format!(
                "the guest sends to {stale}, the MAC libvirt gives a tap of guest MAC {} \
                 (fe: and the guest MAC): the tap it had on its source host",
                vm.guest_mac.map(|m| m.to_string()).unwrap_or_default()
            ));
        }
    }
    if let Some(f) = tap.forecast.as_ref().filter(|f| f.certain) {
        if f.cached_mac == Some(stale) {
            return Ok(format!(
                "the guest sends to {stale}, its tap's MAC on its source host (the source's \
                 facts say so)"
            ));
        }
    }
    Err(format!(
        "the guest sends to {stale}, which is not a MAC this VM's tap is known to have had"
    ))
}

/// The guest's own address: its frames' word, else the host's one route to it via the tap.
fn guest_ip(tap: &Tap, routed: &[IpAddr]) -> Option<(IpAddr, AddrSource)> {
    if let Some(ip) = tap.addrs.ip {
        return Some((ip, AddrSource::StaleFrames));
    }
    let v4: Vec<&IpAddr> = routed.iter().filter(|a| a.is_ipv4()).collect();
    match v4.as_slice() {
        [one] => Some((**one, AddrSource::HostRoute)),
        _ => None,
    }
}

/// The gateway: the operator's word for the guest's subnet, else the address whose stale
/// entry the guest probed, else the one address it asked for; never a guess.
fn gateway(tap: &Tap, gateways: &Gateways, guest: IpAddr) -> Result<(IpAddr, AddrSource), Refusal> {
    if let Some(gw) = gateways.for_guest(guest) {
        return Ok((gw, AddrSource::Flag));
    }
    if let Some(gw) = tap.addrs.stale_probe {
        return Ok((gw, AddrSource::GuestProbe));
    }
    let others: Vec<&IpAddr> = tap.addrs.asked.iter().filter(|a| **a != guest).collect();
    match others.as_slice() {
        [one] => Ok((**one, AddrSource::GuestProbe)),
        [] => Err(Refusal::NoGateway {
            ifname: tap.ifname.clone(),
            asked: String::new(),
        }),
        many => Err(Refusal::NoGateway {
            ifname: tap.ifname.clone(),
            asked: format!(
                " (the guest asked for {}: which is its gateway is not certain)",
                many.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}
