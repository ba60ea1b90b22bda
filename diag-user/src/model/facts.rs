//! `tapwatch facts`: what tapwatch knows of a host and its VMs without watching anything;
//! what `tapwatch preflight` compares between a migration's source and destination.

use serde::{Deserialize, Serialize};

use super::{
    clock::Ts,
    host::HostFacts,
    identity::{GuestCpu, VmInterface},
    mac::MacAddr,
};

/// The facts of one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// `tapwatch`, and its version: what wrote the file.
    pub tool: String,
    pub version: String,
    /// What this file is: `facts` (a bundle's host.json has no such field).
    pub facts: u32,
    pub taken: Option<Ts>,
    #[serde(flatten)]
    pub host: HostFacts,
    /// Where Nova keeps the VMs' local disks, and whether it is shared with other hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances_dir: Option<InstancesDir>,
    pub vms: Vec<VmFacts>,
}

/// This version of the facts file.
pub const FACTS_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancesDir {
    pub path: String,
    /// The file system's type as the kernel names it (`ext4`, `xfs`, `nfs4`, `ceph`,
    /// `fuse.glusterfs`, …); absent when the directory does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Whether that file system is shared between hosts (network or cluster file systems).
    pub shared: bool,
}

/// One VM as libvirt's status file describes it, with its taps as they are now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFacts {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nova_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<GuestCpu>,
    pub interfaces: Vec<IfaceFacts>,
    /// The VM's disks; `None` when not known (a bundle does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskFacts>>,
}

impl VmFacts {
    /// The name to show: Nova's instance name, else the domain name.
    pub fn name(&self) -> &str {
        self.nova_name.as_deref().unwrap_or(&self.domain)
    }

    /// Whether `name` is this VM's (Nova name, domain, or UUID).
    pub fn is_named(&self, name: &str) -> bool {
        self.nova_name.as_deref() == Some(name)
            || self.domain == name
            || self.uuid.as_deref() == Some(name)
    }

    /// The same VM as `other` (its UUID, else its domain, else a guest MAC they share).
    pub fn same_as(&self, other: &VmFacts) -> bool {
        match (&self.uuid, &other.uuid) {
            (Some(a), Some(b)) => a == b,
            _ => {
                self.domain == other.domain
                    || self.interfaces.iter().any(|i| {
                        i.guest_mac.is_some()
                            && other.interfaces.iter().any(|o| o.guest_mac == i.guest_mac)
                    })
            }
        }
    }
}

/// One interface of a VM: its tap (and the tap's MAC now), the guest's MAC, how libvirt
/// treats it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceFacts {
    pub tap: String,
    /// The tap's MAC now (absent when the tap is not there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// `<target managed=…>`; absent when libvirt's status file does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    pub iface_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

impl IfaceFacts {
    pub fn of(vm: &VmInterface, tap_mac: Option<MacAddr>, mtu: Option<u32>) -> Self {
        Self {
            tap: vm.tap.clone(),
            tap_mac,
            mtu,
            guest_mac: vm.guest_mac,
            managed: vm.managed,
            iface_type: vm.iface_type.clone(),
            bridge: vm.bridge.clone(),
        }
    }

    /// How the tap's MAC came to be, as far as a migration goes: libvirt's `fe:`+guest
    /// MAC, or another (a port binding's, with `managed='no'`); `None` when not known.
    pub fn derivation(&self) -> Option<Derivation> {
        let (tap, guest) = (self.tap_mac?, self.guest_mac?);
        let mut fe = guest.0;
        fe[0] = 0xfe;
        Some(if tap.0 == fe {
            Derivation::Libvirt
        } else {
            Derivation::Other
        })
    }
}

/// How a tap's MAC came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Derivation {
    /// `fe:` + the guest's MAC: libvirt's, on a tap it manages.
    Libvirt,
    /// Something else: a port binding's MAC (Nova with `managed='no'`), a fixed one.
    Other,
}

/// One disk of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFacts {
    /// The guest's device (`vda`).
    pub target: String,
    /// libvirt's `<disk type=…>`: `file`, `block`, `network`, `volume`.
    pub kind: String,
    /// The file, device or volume; for network storage, `protocol:name` (`rbd:vms/…`).
    pub source: String,
}

impl DiskFacts {
    /// Stored on this host (a file or a block device), not network storage.
    pub fn local(&self) -> bool {
        matches!(self.kind.as_str(), "file" | "block")
    }
}
