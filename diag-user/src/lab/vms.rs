//! The lab's VMs as libvirt on each hypervisor would describe them.

use std::sync::Arc;

use super::{Bridged, LabOptions, Scenario, VmSpec};
use crate::collect::identity::libvirt::VmDirectory;

/// Which simulated hypervisor a table of VMs describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// The lab's VMs as libvirt would describe them (Nova-style `ethernet` interfaces, or
/// bridged ones) on one hypervisor, so tapwatch names them and knows their guest MACs, and
/// their domain state as libvirt's status files say it: on the source running (booted)
/// until libvirt pauses it for the final stop-and-copy; on the destination paused (the
/// incoming migration) until it resumes there.
pub struct LabVms {
    scenario: Scenario,
    count: usize,
    side: Side,
    /// `kubevirt`: VM i's pod is the namespace pinned as `{pods}{i}`.
    pods: Option<String>,
    /// VMs past their switch-over (paused on the source, resumed on the destination).
    switched: std::sync::Mutex<std::collections::HashSet<String>>,
    changes: Arc<tokio::sync::Notify>,
}

impl LabVms {
    pub fn new(opts: &LabOptions, side: Side) -> Self {
        Self {
            scenario: opts.scenario,
            count: opts.vms,
            side,
            pods: None,
            switched: Default::default(),
            changes: Default::default(),
        }
    }

    /// The VMs' pods (`kubevirt`): VM i's is the namespace pinned as `{prefix}{i}`.
    pub fn in_pods(mut self, prefix: String) -> Self {
        self.pods = Some(prefix);
        self
    }

    /// libvirt's status file changes for `vm`: paused for the migration (source), resumed
    /// (destination).
    pub fn switch(&self, vm: &str) {
        self.switched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm.to_string());
        self.changes.notify_one();
    }
}

impl VmDirectory for LabVms {
    /// KubeVirt's pods each have a `tap0`: the VM is the one whose pod the namespace is,
    /// named as the libvirt status file inside a virt-launcher pod names it.
    fn lookup_in(&self, netns: u64, tap: &str) -> Option<crate::model::identity::VmInterface> {
        use std::os::unix::fs::MetadataExt;
        let Some(prefix) = &self.pods else {
            return (netns == crate::registry::OWN_NETNS)
                .then(|| self.lookup(tap))
                .flatten();
        };
        let i = (0..self.count).find(|i| {
            std::fs::metadata(format!("/run/netns/{prefix}{i}")).is_ok_and(|m| m.ino() == netns)
        })?;
        let spec = VmSpec::new(i, self.scenario);
        let mut vm = self.interface(spec)?;
        let domain = format!("default_{}", vm.domain);
        vm.kubevirt = Some(Box::new(crate::model::identity::KubevirtVmi::of_domain(
            &domain, 0,
        )));
        vm.domain = domain;
        vm.sources = vec![crate::model::identity::SourceKind::Kubevirt];
        Some(vm)
    }

    fn lookup(&self, tap: &str) -> Option<crate::model::identity::VmInterface> {
        let spec = (0..self.count)
            .map(|i| VmSpec::new(i, self.scenario))
            .find(|v| v.tap == tap)?;
        self.interface(spec)
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changes.clone())
    }
}

impl LabVms {
    fn interface(&self, spec: VmSpec) -> Option<crate::model::identity::VmInterface> {
        let switched = self
            .switched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&spec.name);
        let (state, reason) = match (self.side, switched) {
            (Side::Src, false) => ("running", "booted"),
            (Side::Src, true) | (Side::Dst, false) => ("paused", "migration"),
            (Side::Dst, true) => ("running", "migrated"),
        };
        Some(crate::model::identity::VmInterface {
            domain: spec.name.clone(),
            uuid: None,
            nova_name: None,
            tap: spec.tap,
            guest_mac: Some(spec.mac),
            iface_type: if self.scenario.bridged() || self.scenario == Scenario::Kubevirt {
                "bridge".into()
            } else {
                "ethernet".into()
            },
            managed: (!self.scenario.bridged() && self.scenario != Scenario::Kubevirt)
                .then_some(self.scenario != Scenario::StaleMac),
            bridge: match self.scenario {
                Scenario::Bridged => Some("br0".into()),
                Scenario::Kubevirt => Some("k6t-eth0".into()),
                _ => None,
            },
            reason: Some(reason.into()),
            state: Some(state.into()),
            cpu: Some(crate::model::identity::GuestCpu {
                mode: Some("custom".into()),
                model: Some("qemu64".into()),
                features: vec!["hypervisor".into(), "lahf_lm".into()],
            }),
            ..Default::default()
        })
    }
}
