//! Whether a tap may be nudged, and with what frames: pure rules over what the registry
//! knows of the tap, so every refusal and every address's origin is decided (and tested)
//! here. An IPv4 guest gets an ARP request; an IPv6 guest an override Neighbour
//! Advertisement, and a Router Advertisement where its router's address went with the
//! tap's old MAC; a dual-stack guest both families' frames, in one nudge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use diag_common::frame::{NA_FLAG_OVERRIDE, NA_FLAG_ROUTER};

use super::Gateways;
use crate::{
    frames::{self, eui64_link_local, RouterAdvert, V6Ends},
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
    pub stale_mac: Option<MacAddr>,
    /// In the order they are written; never empty.
    pub frames: Vec<PlannedFrame>,
    /// The evidence it acts on, in words.
    pub evidence: String,
}

impl Plan {
    /// The first frame written: the one the kernel's record of it times the nudge by.
    pub fn first(&self) -> &PlannedFrame {
        &self.frames[0]
    }
}

/// One frame of a nudge: what it claims (the gateway or router address at the tap's MAC),
/// to whom, where each address came from, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFrame {
    pub kind: NudgeFrame,
    pub gateway: (IpAddr, AddrSource),
    pub guest_ip: (IpAddr, AddrSource),
    pub bytes: Vec<u8>,
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
        "the guest's IP behind {0} is not known: it sent no IP, ARP or neighbour discovery \
         frame and this host has no route to it via the tap"
    )]
    NoGuestIp(String),
    #[error(
        "the gateway IP of the guest behind {ifname} is not known{asked}: give --gateway IP \
         (or --gateway CIDR=IP for hosts whose guests sit in several subnets)"
    )]
    NoGateway { ifname: String, asked: String },
    #[error(
        "the IPv6 router of the guest behind {ifname} is not known{asked}: give --gateway \
         with its address (often a link-local fe80::…), or CIDR=IP with IPv6 prefixes"
    )]
    NoRouter6 { ifname: String, asked: String },
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

/// What every family's frames are planned from.
struct Ctx<'a> {
    tap: &'a Tap,
    gateways: &'a Gateways,
    routed: &'a [IpAddr],
    tap_mac: MacAddr,
    guest_mac: MacAddr,
    stale_mac: Option<MacAddr>,
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
    let c = Ctx {
        tap,
        gateways,
        routed: routed_ips,
        tap_mac,
        guest_mac,
        stale_mac,
    };
    let (frames, evidence) = per_family(&c, evidence)?;
    Ok(Plan {
        ifname: name(),
        ifindex: tap.key.ifindex,
        tap_mac,
        guest_mac,
        stale_mac,
        frames,
        evidence,
    })
}

/// The frames of every family the guest speaks. A family that cannot be nudged is said in
/// the evidence while the other's frames go; with none, its refusal (IPv4's first).
fn per_family(c: &Ctx, evidence: String) -> Result<(Vec<PlannedFrame>, String), Refusal> {
    let (v4, v6) = families(c.tap, c.routed);
    if !v4 && !v6 {
        return Err(Refusal::NoGuestIp(c.tap.ifname.clone()));
    }
    let mut frames = Vec::new();
    let mut refusals = Vec::new();
    for tried in [v4.then(|| plan_v4(c)), v6.then(|| plan_v6(c))]
        .into_iter()
        .flatten()
    {
        match tried {
            Ok(f) => frames.extend(f),
            Err(r) => refusals.push(r),
        }
    }
    if frames.is_empty() {
        return Err(refusals.remove(0));
    }
    let evidence = refusals
        .iter()
        .fold(evidence, |e, r| format!("{e}; not sent: {r}"));
    Ok((frames, evidence))
}

/// The families the guest is known to speak: its own frames' word, or this host's routes
/// to the tap (a dual-stack guest's first stale frames may all be of one family).
fn families(tap: &Tap, routed: &[IpAddr]) -> (bool, bool) {
    let a = &tap.addrs;
    let v4 = a.ip.is_some()
        || a.stale_probe.is_some()
        || !a.asked.is_empty()
        || tap.nd.stale.v4
        || routed.iter().any(IpAddr::is_ipv4);
    let v6 = a.ip6.is_some()
        || a.stale_probe6.is_some()
        || !a.asked6.is_empty()
        || a.solicited_routers
        || tap.nd.stale.v6
        || routed.iter().any(IpAddr::is_ipv6);
    (v4, v6)
}

/// IPv4: one ARP request claiming the gateway at the tap's MAC.
fn plan_v4(c: &Ctx) -> Result<Vec<PlannedFrame>, Refusal> {
    let guest_ip =
        guest_ip(c.tap, c.routed).ok_or_else(|| Refusal::NoGuestIp(c.tap.ifname.clone()))?;
    let gateway = gateway(c.tap, c.gateways, guest_ip.0)?;
    let (IpAddr::V4(gw), IpAddr::V4(ip)) = (gateway.0, guest_ip.0) else {
        return Err(Refusal::NoGateway {
            ifname: c.tap.ifname.clone(),
            asked: String::new(),
        });
    };
    Ok(vec![PlannedFrame {
        kind: NudgeFrame::Arp,
        gateway,
        guest_ip,
        bytes: arp_nudge(c.tap_mac, c.guest_mac, gw, ip),
    }])
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

/// IPv6: an override Neighbour Advertisement for the router the guest uses, and a Router
/// Advertisement from the tap's own link-local address where that router's address was
/// the tap's old one (EUI-64 of a MAC it no longer has): the advertisement alone moves
/// the guest's frames to the tap's MAC now, but its router entry for an address no host
/// answers for would fail at its next reachability probe, so the guest is also given a
/// router that stays.
fn plan_v6(c: &Ctx) -> Result<Vec<PlannedFrame>, Refusal> {
    let guest = guest_ip6(c.tap, c.routed);
    let router = router6(c, guest.0)?;
    let own = eui64_link_local(c.tap_mac);
    // Sent to the guest's MAC only. Linux takes either destination address: an
    // advertisement to its own address is delivered to it, and one to all-nodes too (a
    // multicast destination in a unicast frame passes `ip6_rcv_core`, and
    // `ndisc_recv_na` refuses a multicast one only when the solicited flag is set).
    // All-nodes serves a guest whose address is not known.
    let ends = V6Ends {
        src_mac: c.tap_mac,
        dst_mac: c.guest_mac,
        src: own,
        dst: guest.0,
    };
    let to = (IpAddr::V6(guest.0), guest.1);
    let mut out = vec![PlannedFrame {
        kind: NudgeFrame::NeighborAdvert,
        gateway: (IpAddr::V6(router.0), router.1),
        guest_ip: to,
        bytes: na_nudge(ends, router.0),
    }];
    if went_with_old_mac(c, router.0) {
        out.push(PlannedFrame {
            kind: NudgeFrame::RouterAdvert,
            gateway: (IpAddr::V6(own), AddrSource::TapLinkLocal),
            guest_ip: to,
            bytes: ra_nudge(ends),
        });
    }
    Ok(out)
}

/// An unsolicited Neighbour Advertisement for `router` at the tap's MAC (the target
/// link-layer address option). Linux's `ndisc_recv_na` updates an existing entry with it
/// (to STALE, at the new address) only with the override flag; the router flag keeps the
/// entry a router's (without it Linux drops the default routes through it).
pub fn na_nudge(ends: V6Ends, router: Ipv6Addr) -> Vec<u8> {
    frames::neighbor_advert(ends, router, NA_FLAG_ROUTER | NA_FLAG_OVERRIDE)
}

/// A Router Advertisement from the tap's link-local address with its MAC as source
/// link-layer address, no prefix (the guest's addresses are not the nudge's business) and
/// RFC 4861's default router lifetime: a host whose own router advertisements go on
/// refreshes it, and one without them keeps the guest's route for that long.
pub fn ra_nudge(ends: V6Ends) -> Vec<u8> {
    frames::router_advert(
        ends,
        RouterAdvert {
            router_lifetime: frames::DEFAULT_ROUTER_LIFETIME_S,
            prefix: None,
        },
    )
}

/// Whether `router` is the link-local address of a MAC the tap had (or its guest sends
/// to) and not of the one it has: the router's address went with the old MAC.
fn went_with_old_mac(c: &Ctx, router: Ipv6Addr) -> bool {
    let vm_tap = c.tap.vm.as_ref().and_then(|v| v.libvirt_tap_mac());
    let mut old = c
        .stale_mac
        .into_iter()
        .chain(c.tap.mac_history.iter().filter_map(|(_, m)| *m))
        .chain(vm_tap)
        .filter(|m| *m != c.tap_mac);
    router != eui64_link_local(c.tap_mac) && old.any(|m| eui64_link_local(m) == router)
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

/// The guest's own IPv6 address: its frames' word, else the host's one route to it via
/// the tap, else all-nodes (its MAC alone takes the frame to it).
fn guest_ip6(tap: &Tap, routed: &[IpAddr]) -> (Ipv6Addr, AddrSource) {
    if let Some(ip) = tap.addrs.ip6 {
        return (ip, AddrSource::StaleFrames);
    }
    let v6: Vec<Ipv6Addr> = routed
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    match v6.as_slice() {
        [one] => (*one, AddrSource::HostRoute),
        _ => (frames::ALL_NODES, AddrSource::AllNodes),
    }
}

/// The router the guest uses: the operator's word, else the address whose stale entry it
/// probed, else the one address it solicited, else the link-local address of the MAC it
/// sends to (a routed tap's router is its own link-local, derived from its MAC); never a
/// guess it does not say.
fn router6(c: &Ctx, guest: Ipv6Addr) -> Result<(Ipv6Addr, AddrSource), Refusal> {
    if let Some(IpAddr::V6(r)) = c.gateways.for_guest(IpAddr::V6(guest)) {
        return Ok((r, AddrSource::Flag));
    }
    let a = &c.tap.addrs;
    if let Some(r) = a.stale_probe6 {
        return Ok((r, AddrSource::GuestProbe));
    }
    let asked: Vec<&Ipv6Addr> = a.asked6.iter().filter(|t| Some(**t) != a.ip6).collect();
    if let [one] = asked.as_slice() {
        return Ok((**one, AddrSource::GuestProbe));
    }
    if let Some(old) = c.stale_mac.filter(|m| *m != c.tap_mac) {
        let from = if a.solicited_routers {
            AddrSource::RouterSolicitation
        } else {
            AddrSource::DerivedFromOldMac
        };
        return Ok((eui64_link_local(old), from));
    }
    Err(Refusal::NoRouter6 {
        ifname: c.tap.ifname.clone(),
        asked: match asked.as_slice() {
            [] => " (no stale MAC to derive it from)".to_string(),
            many => format!(
                " (the guest solicited {}: which is its router is not certain)",
                many.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    })
}
