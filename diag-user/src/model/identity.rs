//! Which VM is behind a tap, as the collectors learn it (libvirt's status files, the lab's
//! table): the facts records carry, whatever their source.

use serde::{Deserialize, Serialize};

use super::mac::MacAddr;

/// What libvirt says about the VM behind one tap.
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
    /// The name to show: Nova's instance name, else the domain name.
    pub fn display_name(&self) -> &str {
        self.nova_name.as_deref().unwrap_or(&self.domain)
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
