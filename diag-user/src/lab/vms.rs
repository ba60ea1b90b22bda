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
            switched: Default::default(),
            changes: Default::default(),
        }
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
    fn lookup(&self, tap: &str) -> Option<crate::model::identity::VmInterface> {
        let spec = (0..self.count).map(VmSpec::new).find(|v| v.tap == tap)?;
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
            iface_type: if self.scenario.bridged() {
                "bridge".into()
            } else {
                "ethernet".into()
            },
            managed: (!self.scenario.bridged()).then_some(self.scenario != Scenario::StaleMac),
            bridge: self.scenario.bridged().then(|| "br0".into()),
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

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changes.clone())
    }
}
