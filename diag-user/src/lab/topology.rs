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
    /// `kubevirt`: the virt-launcher pods' namespaces (dropped first, their veths with them).
    pods: std::sync::Mutex<Vec<Netns>>,
    pub(super) client: Netns,
    pub(super) src: Netns,
    pub(super) dst: Netns,
    /// The families the guests speak: IPv6 routes and addresses besides IPv4's.
    pub(super) ip: LabIp,
    scenario: Scenario,
}

/// The MAC of the pod network's gateway for VM `i` on the source or destination node: a
/// different one on each node, as ovn-kubernetes' (its `0a:58` prefix).
pub(super) fn node_gateway_mac(dst: bool, i: usize) -> MacAddr {
    MacAddr([
        0x0a,
        0x58,
        0xa9,
        0xfe,
        if dst { 20 } else { 10 },
        i as u8 + 1,
    ])
}

impl Topology {
    pub(super) fn build(scenario: Scenario, ip: LabIp) -> Result<Self, SandboxError> {
        let pid = std::process::id();
        let ns = |role: &str| Netns::named(&format!("{PREFIX}-{pid}-{role}"));
        let topo = Self {
            pods: Default::default(),
            client: ns("client")?,
            src: ns("src")?,
            dst: ns("dst")?,
            ip,
            scenario,
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

    /// The pin of VM `i`'s virt-launcher pod on the source or destination node
    /// (`kubevirt`): the node's name and `pod{i}`.
    pub(super) fn pod_name(&self, dst: bool, i: usize) -> String {
        format!("{}{i}", self.pod_prefix(dst))
    }

    /// What the pins of a node's pods start with.
    pub(super) fn pod_prefix(&self, dst: bool) -> String {
        let node = if dst { &self.dst } else { &self.src };
        format!("{}pod", node.name())
    }

    /// The pod's virt-launcher network as KubeVirt's bridge binding makes it: the VM's
    /// `tap0` and the pod's `eth0` on the bridge `k6t-eth0`; the node's end of the pod's
    /// veth is the VM's gateway (169.254.1.1), with this node's MAC for it.
    fn plug_pod(
        &self,
        hv: &Netns,
        vm: &VmSpec,
        tap_mac: MacAddr,
    ) -> Result<Arc<VmTap>, SandboxError> {
        let dst = hv.name() == self.dst.name();
        let pod = Netns::named(&self.pod_name(dst, vm.index))?;
        pod.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &vm.node_dev,
            "netns",
            hv.name(),
        ])?;
        pod.ip(&["link", "add", "k6t-eth0", "type", "bridge"])?;
        pod.ip(&["link", "set", "eth0", "master", "k6t-eth0", "up"])?;
        pod.ip(&["link", "set", "k6t-eth0", "up"])?;
        let tap = VmTap::create(&pod, &vm.tap, tap_mac)?;
        pod.ip(&["link", "set", &vm.tap, "master", "k6t-eth0"])?;
        let mac = node_gateway_mac(dst, vm.index).to_string();
        hv.ip(&["link", "set", &vm.node_dev, "address", &mac, "up"])?;
        hv.ip(&["addr", "add", "169.254.1.1/32", "dev", &vm.node_dev])?;
        // OVN knows each VM's MAC from its port: the node never asks the guest, so no ARP
        // request of the new gateway's corrects the guest's entry for it.
        let (ip, mac) = (vm.ip.to_string(), vm.mac.to_string());
        hv.ip(&[
            "neigh",
            "replace",
            &ip,
            "lladdr",
            &mac,
            "dev",
            &vm.node_dev,
            "nud",
            "permanent",
        ])?;
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pod);
        Ok(Arc::new(tap))
    }

    /// Removes the VM's tap from the source's pod (`kubevirt`) or the source hypervisor.
    pub(super) fn unplug_src(&self, vm: &VmSpec) -> Result<(), SandboxError> {
        if self.scenario == Scenario::Kubevirt {
            let pod = self.pod_name(false, vm.index);
            super::run("ip", &["-n", &pod, "link", "del", &vm.tap])?;
            return Ok(());
        }
        self.src.ip(&["link", "del", &vm.tap])?;
        Ok(())
    }

    /// Plugs a VM's tap on hypervisor `hv` as Nova/libvirt would (or KubeVirt, in a pod).
    pub(super) fn plug(
        &self,
        hv: &Netns,
        vm: &VmSpec,
        tap_mac: MacAddr,
        scenario: Scenario,
    ) -> Result<Arc<VmTap>, SandboxError> {
        if scenario == Scenario::Kubevirt {
            return self.plug_pod(hv, vm, tap_mac);
        }
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
            hv.ip(&["route", "replace", &ip, "dev", &vm.node_dev])?;
        }
        if self.ip.v6() {
            let ip6 = format!("{}/128", vm.ip6);
            hv.ip(&["-6", "route", "replace", &ip6, "dev", &vm.node_dev])?;
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
