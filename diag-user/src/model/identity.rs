//! Which VM is behind a tap, as the collectors learn it (libvirt's status files on the host
//! or in a KubeVirt pod, Open vSwitch's database, Proxmox's configuration, the lab's table):
//! the facts records carry, each with the source it came from.

use serde::{Deserialize, Serialize};

use super::mac::MacAddr;

/// What tapwatch knows of the VM behind one tap. The fields before `sources` are libvirt's
/// (empty or null when no libvirt status file names the tap); each other source has its
/// own object, so where every fact came from stays known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInterface {
    /// libvirt domain name (`instance-0000002a` under Nova).
    pub domain: String,
    pub uuid: Option<String>,
    /// Nova's instance name (`<nova:instance><nova:name>`), when Nova made the domain.
    pub nova_name: Option<String>,
    /// The tap (`<target dev=…>`).
    pub tap: String,
    /// The guest's MAC (`<mac address=…>`).
    pub guest_mac: Option<MacAddr>,
    /// `<interface type=…>`: `ethernet` (Calico, managed by Nova), `bridge`, `network`…
    pub iface_type: String,
    /// `<target managed=…>`; `None` when absent (libvirt then manages the tap).
    pub managed: Option<bool>,
    /// `<source bridge=…>` when the interface is on a bridge (under `<actual>` for a
    /// `type='network'` interface).
    pub bridge: Option<String>,
    /// Why the domain is in its state, from the status file's `<domstatus reason=…>`:
    /// running: `booted` (started here), `migrated` (came in by live migration); paused:
    /// `migration` (the final stop-and-copy of a migration away), …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The domain's state, from `<domstatus state=…>`: `running`, `paused`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The guest's CPU as the domain defines it: what a destination host must offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<GuestCpu>,
    /// Which sources named the tap, in the order of [`SourceKind`]; empty in records of
    /// older versions (libvirt was then the only one) and for the lab's table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceKind>,
    // The other sources' objects are boxed: most taps have none, and records carry this.
    /// What Open vSwitch's database says of the tap's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs: Option<Box<OvsPort>>,
    /// What Proxmox VE's configuration says of the VM and this NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxmox: Option<Box<ProxmoxNic>>,
    /// The KubeVirt VMI whose virt-launcher pod holds the tap (the libvirt facts above are
    /// then from the status file inside that pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubevirt: Option<Box<KubevirtVmi>>,
}

/// Where a fact about a VM came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A libvirt status file in the host's own directory (`--libvirt-dir`).
    Libvirt,
    /// A libvirt status file under a QEMU process's root in another mount namespace: a
    /// KubeVirt virt-launcher pod.
    Kubevirt,
    /// The `external_ids` of the tap's row in Open vSwitch's `Interface` table.
    Ovs,
    /// `/etc/pve/…/qemu-server/<VMID>.conf` of the VMID in the tap's name.
    Proxmox,
}

/// The `external_ids` os-vif (and libvirt) write on an OVS `Interface` row; each absent
/// when the row does not have it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvsPort {
    /// `iface-id`: the Neutron port (ml2/ovs), the OVN logical switch port (ml2/ovn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface_id: Option<String>,
    /// `vm-uuid`: Nova's instance UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_uuid: Option<String>,
    /// `vm-id`: the libvirt domain's UUID, when libvirt plugged the port itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// `attached-mac`: the guest's MAC on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_mac: Option<MacAddr>,
    /// `iface-status`: `active` once Neutron has wired the port, `inactive` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface_status: Option<String>,
}

impl OvsPort {
    /// Whether the row said none of it (a port not made for a VM: a bridge's own, a patch).
    pub fn is_empty(&self) -> bool {
        *self == OvsPort::default()
    }
}

/// A Proxmox VE VM's NIC, from the main section of its configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxmoxNic {
    pub vmid: u32,
    /// `name:`, when the VM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The NIC's key: `net0` for `tap<VMID>i0`.
    pub net: String,
    /// The NIC's MAC (`virtio=MAC` or `macaddr=`): the guest's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// `bridge=`: the bridge the NIC is on (with the firewall on, the tap is on
    /// `fwbr<VMID>i<N>` in between).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
}

/// A KubeVirt VMI, named without the Kubernetes API: from its libvirt domain
/// `<namespace>_<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "KubevirtFields", into = "KubevirtFields")]
pub struct KubevirtVmi {
    fields: KubevirtFields,
    /// `namespace/name`, as `kubectl` names it (the name alone without a namespace).
    qualified: String,
}

/// What a [`KubevirtVmi`] says, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KubevirtFields {
    /// Absent when the domain's name is not `<namespace>_<name>` (libvirt in some other
    /// container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    /// The QEMU process, in the host's PID namespace.
    qemu_pid: u32,
}

impl From<KubevirtFields> for KubevirtVmi {
    fn from(fields: KubevirtFields) -> Self {
        let qualified = match &fields.namespace {
            Some(ns) => format!("{ns}/{}", fields.name),
            None => fields.name.clone(),
        };
        Self { fields, qualified }
    }
}

impl From<KubevirtVmi> for KubevirtFields {
    fn from(v: KubevirtVmi) -> Self {
        v.fields
    }
}

impl KubevirtVmi {
    /// The VMI of a domain KubeVirt named `<namespace>_<name>` (a namespace, a DNS label,
    /// has no `_`), run by QEMU process `qemu_pid`.
    pub fn of_domain(domain: &str, qemu_pid: u32) -> Self {
        let (namespace, name) = match domain.split_once('_') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                (Some(ns.to_string()), name.to_string())
            }
            _ => (None, domain.to_string()),
        };
        KubevirtFields {
            namespace,
            name,
            qemu_pid,
        }
        .into()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.fields.namespace.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.fields.name
    }

    pub fn qemu_pid(&self) -> u32 {
        self.fields.qemu_pid
    }

    /// `namespace/name`.
    pub fn qualified(&self) -> &str {
        &self.qualified
    }
}

/// `<cpu mode=…><model>…</model><feature policy='require' name='…'/></cpu>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCpu {
    /// `host-passthrough` (the guest sees the host's CPU: it depends on all its flags),
    /// `host-model`, `custom`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Features the guest requires (`policy='require'` or `'force'`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl VmInterface {
    /// The name to show, the one its users know it by: Nova's instance name, else
    /// Proxmox's, else the KubeVirt VMI (`namespace/name`), else the libvirt domain, else
    /// what OVS says (Nova's instance UUID, the port), else the tap.
    pub fn display_name(&self) -> &str {
        self.nova_name
            .as_deref()
            .or_else(|| self.proxmox.as_ref()?.name.as_deref())
            .or_else(|| Some(self.kubevirt.as_ref()?.qualified()))
            .or_else(|| (!self.domain.is_empty()).then_some(self.domain.as_str()))
            .or_else(|| {
                let ovs = self.ovs.as_ref()?;
                ovs.vm_uuid.as_deref().or(ovs.iface_id.as_deref())
            })
            .unwrap_or(&self.tap)
    }

    /// Nova's instance UUID: the domain's when Nova made it, else what os-vif wrote on the
    /// OVS port.
    pub fn nova_uuid(&self) -> Option<&str> {
        self.nova_name
            .as_ref()
            .and(self.uuid.as_deref())
            .or_else(|| self.ovs.as_ref()?.vm_uuid.as_deref())
    }

    /// Whether `source` named the tap.
    pub fn from_source(&self, source: SourceKind) -> bool {
        self.sources.contains(&source)
    }

    /// Whether libvirt paused the domain for a migration away (the stop-and-copy).
    pub fn paused_for_migration(&self) -> bool {
        self.state.as_deref() == Some("paused") && self.reason.as_deref() == Some("migration")
    }

    /// Whether the VM came to this host by live migration: `Some(false)` when libvirt says
    /// it was started here, `None` when it does not say.
    pub fn migrated_in(&self) -> Option<bool> {
        match self.reason.as_deref()? {
            "migrated" => Some(true),
            "booted" => Some(false),
            _ => None,
        }
    }

    /// The tap MAC libvirt sets when it manages the tap: the guest MAC with its first
    /// byte replaced by 0xfe, so the guest never sees its own MAC as its gateway's.
    pub fn libvirt_tap_mac(&self) -> Option<MacAddr> {
        self.guest_mac.map(|m| {
            let mut b = m.0;
            b[0] = 0xfe;
            MacAddr(b)
        })
    }
}
