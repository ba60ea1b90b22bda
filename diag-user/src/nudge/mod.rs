//! Ending a blackout: one frame written into a VM's own tap from the host side tells a guest
//! with a stale neighbour entry that its gateway's IP is at the tap's MAC now, which is all
//! it needs to send to the right MAC again: an ARP request for IPv4, an override Neighbour
//! Advertisement for IPv6 (and a Router Advertisement where the router's address itself
//! went with the tap's old MAC).
//!
//! - [`plan`]: whether a tap may be nudged and with what frame (pure rules: never a bridged
//!   tap, never without an open stale window unless the operator insists, never a guessed
//!   address).
//! - [`send`]: the packet socket that writes the frame into the tap, and only the tap.
//! - [`limits`]: how often `--remediate` may act.
//! - [`nudger`]: the run's nudger, kept in the pipeline: nudges on the operator's word or on
//!   a blackout's start (`--remediate`), and says each nudge's outcome from the frames that
//!   follow (kernel-timed).

pub mod limits;
pub mod nudger;
pub mod plan;
pub mod send;

use std::{net::IpAddr, str::FromStr, time::Duration};

use ipnet::IpNet;

pub use self::{
    nudger::{NudgeConfig, Nudger},
    plan::{Asked, Plan, Refusal},
};

/// How long a nudge's outcome is watched for by default: a guest that took the update
/// sends to the right MAC at its next frame (milliseconds when it has traffic).
pub const OUTCOME_WATCH: Duration = Duration::from_secs(5);

/// The gateway addresses the operator gave (`--gateway`): one for every guest, or one per
/// subnet of guests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gateways {
    /// `CIDR=IP` pairs, in the order given; the most specific subnet wins.
    by_subnet: Vec<(IpNet, IpAddr)>,
    /// Plain `IP`s, one per family: the gateway of guests no subnet names (a dual-stack
    /// host gives its IPv4 gateway and its guests' IPv6 router).
    default: Vec<IpAddr>,
}

/// One `--gateway` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayArg {
    All(IpAddr),
    Subnet(IpNet, IpAddr),
}

impl FromStr for GatewayArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip = |v: &str| {
            v.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{v:?} is not an IP address"))
        };
        match s.split_once('=') {
            None => Ok(GatewayArg::All(ip(s)?)),
            Some((net, gw)) => {
                let net: IpNet = net
                    .trim()
                    .parse()
                    .map_err(|_| format!("{net:?} is not a subnet (CIDR, like 10.65.0.0/16)"))?;
                let gw = ip(gw)?;
                if net.addr().is_ipv4() != gw.is_ipv4() {
                    return Err(format!(
                        "{s}: the subnet and the gateway are of two families"
                    ));
                }
                Ok(GatewayArg::Subnet(net.trunc(), gw))
            }
        }
    }
}

impl Gateways {
    pub fn new(args: &[GatewayArg]) -> Result<Self, String> {
        let mut g = Self::default();
        for a in args {
            match a {
                GatewayArg::All(ip)
                    if g.default
                        .iter()
                        .any(|d| d != ip && d.is_ipv4() == ip.is_ipv4()) =>
                {
                    return Err(format!(
                        "--gateway {ip}: a gateway of its family for every guest was given \
                         already; give CIDR=IP pairs for guests in several subnets"
                    ))
                }
                GatewayArg::All(ip) if !g.default.contains(ip) => g.default.push(*ip),
                GatewayArg::All(_) => {}
                GatewayArg::Subnet(net, ip) => g.by_subnet.push((*net, *ip)),
            }
        }
        Ok(g)
    }

    pub fn is_empty(&self) -> bool {
        self.by_subnet.is_empty() && self.default.is_empty()
    }

    /// The gateway of a guest at `guest`: its most specific subnet's, else the default
    /// (of its family).
    pub fn for_guest(&self, guest: IpAddr) -> Option<IpAddr> {
        self.by_subnet
            .iter()
            .filter(|(net, _)| net.contains(&guest))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, gw)| *gw)
            .or_else(|| self.default_for(guest.is_ipv4()))
    }

    /// The gateway given for every guest of a family (`v4`, else IPv6).
    pub fn default_for(&self, v4: bool) -> Option<IpAddr> {
        self.default.iter().copied().find(|d| d.is_ipv4() == v4)
    }
}

#[cfg(test)]
mod tests;
