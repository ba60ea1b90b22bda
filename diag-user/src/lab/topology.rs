//! The lab's three namespaces and their wiring: a client, and two hypervisors.

use std::sync::Arc;

use super::{
    ipv6::{self, LabIp},
    Bridged, Scenario, VmSpec, CLIENT_BRIDGED, PREFIX,
};
use crate::{
    lab::netns::{Netns, SandboxError, VmTap},
    model::mac::MacAddr,
};

/// The three namespaces; deleted (with everything in them) when dropped.
pub(super) struct Topology {
    pub(super) client: Netns,
    pub(super) src: Netns,
    pub(super) dst: Netns,
    /// The families the guests speak: IPv6 routes and addresses besides IPv4's.
    pub(super) ip: LabIp,
}

impl Topology {
    pub(super) fn build(scenario: Scenario, ip: LabIp) -> Result<Self, SandboxError> {
        let pid = std::process::id();
        let ns = |role: &str| Netns::named(&format!("{PREFIX}-{pid}-{role}"));
        let topo = Self {
            client: ns("client")?,
            src: ns("src")?,
            dst: ns("dst")?,
            ip,
        };
        if ip.v6() {
            // Before any interface is made, so that each comes up with IPv6 on: a tap's
            // link-local address is what a routed guest's router is called.
            ipv6::enable(&topo.client, false, &[])?;
            ipv6::enable(&topo.src, true, &[])?;
            ipv6::enable(&topo.dst, true, &[])?;
        }
        let c = &topo.client;
        if scenario.bridged() {
            topo.client_bridge()?;
        }
        for (hv, link, subnet) in [(&topo.src, "src", 10), (&topo.dst, "dst", 20)] {
            topo.uplink(scenario, hv, link, subnet)?;
        }
        c.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        Ok(topo)
    }

    /// The client's bridge, where the bridged scenario's hypervisors are one L2 with it.
    fn client_bridge(&self) -> Result<(), SandboxError> {
        let c = &self.client;
        c.ip(&["link", "add", "brc", "type", "bridge"])?;
        c.ip(&["addr", "add", &format!("{CLIENT_BRIDGED}/24"), "dev", "brc"])?;
        if self.ip.v6() {
            let a = format!("{}/64", ipv6::CLIENT_BRIDGED6);
            c.ip(&["-6", "addr", "add", &a, "dev", "brc", "nodad"])?;
        }
        c.ip(&["link", "set", "brc", "up"])?;
        Ok(())
    }

    /// A hypervisor's link to the client: routed (a /30 and a default route) or bridged.
    fn uplink(
        &self,
        scenario: Scenario,
        hv: &Netns,
        link: &str,
        subnet: u16,
    ) -> Result<(), SandboxError> {
        let c = &self.client;
        let (cside, hside) = (format!("vc-{link}"), format!("vh-{link}"));
        c.ip(&[
            "link",
            "add",
            &cside,
            "type",
            "veth",
            "peer",
            "name",
            &hside,
            "netns",
            hv.name(),
        ])?;
        hv.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )?;
        if self.ip.v6() && !scenario.bridged() {
            self.link6(hv, &cside, &hside, subnet)?;
        }
        if scenario.bridged() {
            c.ip(&["link", "set", &cside, "master", "brc", "up"])?;
            hv.ip(&["link", "add", "br0", "type", "bridge"])?;
            hv.ip(&["link", "set", &hside, "master", "br0", "up"])?;
            hv.ip(&["link", "set", "br0", "up"])?;
        } else {
            c.ip(&[
                "addr",
                "add",
                &format!("192.168.{subnet}.1/30"),
                "dev",
                &cside,
            ])?;
            c.ip(&["link", "set", &cside, "up"])?;
            hv.ip(&[
                "addr",
                "add",
                &format!("192.168.{subnet}.2/30"),
                "dev",
                &hside,
            ])?;
            hv.ip(&["link", "set", &hside, "up"])?;
            hv.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("192.168.{subnet}.1"),
            ])?;
        }
        Ok(())
    }

    /// The IPv6 addresses of a hypervisor's link to the client, and its default route.
    fn link6(&self, hv: &Netns, cside: &str, hside: &str, subnet: u16) -> Result<(), SandboxError> {
        let (c6, h6) = (ipv6::link6(subnet, 1), ipv6::link6(subnet, 2));
        let c = &self.client;
        c.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{c6}/64"),
            "dev",
            cside,
            "nodad",
        ])?;
        hv.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{h6}/64"),
            "dev",
            hside,
            "nodad",
        ])?;
        hv.ip(&["link", "set", hside, "up"])?;
        hv.ip(&["-6", "route", "add", "default", "via", &c6.to_string()])?;
        Ok(())
    }

    /// Plugs a VM's tap on hypervisor `hv` as Nova/libvirt would.
    pub(super) fn plug(
        &self,
        hv: &Netns,
        vm: &VmSpec,
        tap_mac: MacAddr,
        scenario: Scenario,
    ) -> Result<Arc<VmTap>, SandboxError> {
        let tap = VmTap::create(hv, &vm.tap, tap_mac)?;
        if scenario.bridged() {
            hv.ip(&["link", "set", &vm.tap, "master", "br0"])?;
        } else {
            // What Calico's agent sets on a workload's tap.
            hv.exec(
                "sysctl",
                &[
                    "-qw",
                    &format!("net.ipv4.conf.{}.proxy_arp=1", vm.tap),
                    &format!("net.ipv4.neigh.{}.proxy_delay=0", vm.tap),
                ],
            )?;
        }
        Ok(Arc::new(tap))
    }

    /// Routes traffic for `vm` to hypervisor `hv` (Calico: the /32 route on the host and
    /// the fabric's route, which BGP would move).
    pub(super) fn route_to(&self, hv_is_dst: bool, vm: &VmSpec) -> Result<(), SandboxError> {
        let hv = if hv_is_dst { &self.dst } else { &self.src };
        self.routes(hv, vm)?;
        self.client_route(hv_is_dst, vm)
    }

    /// A hypervisor's routes to the VM via its tap, of the families the guests speak (a
    /// host route says the guest has an address of its family: the nudge reads them so).
    fn routes(&self, hv: &Netns, vm: &VmSpec) -> Result<(), SandboxError> {
        if self.ip.v4() {
            let ip = format!("{}/32", vm.ip);
            hv.ip(&["route", "replace", &ip, "dev", &vm.tap])?;
        }
        if self.ip.v6() {
            let ip6 = format!("{}/128", vm.ip6);
            hv.ip(&["-6", "route", "replace", &ip6, "dev", &vm.tap])?;
        }
        Ok(())
    }

    /// The destination host's /32 (and /128) route to the VM via its tap (what Calico's agent sets
    /// when the tap is plugged and the VM is there).
    pub(super) fn host_route(&self, vm: &VmSpec) -> Result<(), SandboxError> {
        self.routes(&self.dst, vm)
    }

    /// The fabric's route to the VM (the client's): to the source or the destination.
    pub(super) fn client_route(&self, to_dst: bool, vm: &VmSpec) -> Result<(), SandboxError> {
        let via = if to_dst {
            "192.168.20.2"
        } else {
            "192.168.10.2"
        };
        let ip = format!("{}/32", vm.ip);
        self.client.ip(&["route", "replace", &ip, "via", via])?;
        if self.ip.v6() {
            let via6 = ipv6::link6(if to_dst { 20 } else { 10 }, 2).to_string();
            let ip6 = format!("{}/128", vm.ip6);
            self.client
                .ip(&["-6", "route", "replace", &ip6, "via", &via6])?;
        }
        Ok(())
    }
}
