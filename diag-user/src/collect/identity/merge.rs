//! One identity from every source that names a tap, each fact kept where its source put
//! it: libvirt's (the host's, or a KubeVirt pod's) at the top, the others in their own
//! objects, and `sources` saying which named it.

use crate::model::identity::{KubevirtVmi, OvsPort, ProxmoxNic, SourceKind, VmInterface};

/// What each source says of one tap (the caller asks each for the tap's namespace).
#[derive(Clone, Debug, Default)]
pub struct Parts {
    /// From the host's libvirt status directory.
    pub libvirt: Option<VmInterface>,
    /// From a libvirt status file inside a KubeVirt pod, with its VMI.
    pub kubevirt: Option<(VmInterface, KubevirtVmi)>,
    pub ovs: Option<OvsPort>,
    pub proxmox: Option<ProxmoxNic>,
}

/// The tap's identity, or `None` when no source names it.
pub fn merge(tap: &str, parts: Parts) -> Option<VmInterface> {
    let Parts {
        libvirt,
        kubevirt,
        ovs,
        proxmox,
    } = parts;
    let ovs = ovs.filter(|o| !o.is_empty());
    let mut sources = Vec::new();
    // The host's file first: a tap of the host's namespace that a pod's file also named
    // would be the host's (a pod sharing the host's network).
    let mut vm = match (libvirt, kubevirt) {
        (Some(vm), _) => {
            sources.push(SourceKind::Libvirt);
            vm
        }
        (None, Some((vm, vmi))) => {
            sources.push(SourceKind::Kubevirt);
            VmInterface {
                kubevirt: Some(Box::new(vmi)),
                ..vm
            }
        }
        (None, None) if ovs.is_none() && proxmox.is_none() => return None,
        (None, None) => VmInterface {
            tap: tap.to_string(),
            ..VmInterface::default()
        },
    };
    if let Some(o) = ovs {
        sources.push(SourceKind::Ovs);
        vm.ovs = Some(Box::new(o));
    }
    if let Some(p) = proxmox {
        sources.push(SourceKind::Proxmox);
        vm.proxmox = Some(Box::new(p));
    }
    vm.sources = sources;
    Some(vm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::mac::MacAddr;

    const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);

    fn libvirt() -> VmInterface {
        VmInterface {
            domain: "instance-0000002b".into(),
            uuid: Some("5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f".into()),
            nova_name: Some("web-1".into()),
            tap: "tap4f1c2a9e-07".into(),
            guest_mac: Some(GUEST),
            iface_type: "ethernet".into(),
            managed: Some(false),
            ..VmInterface::default()
        }
    }

    fn ovs() -> OvsPort {
        OvsPort {
            iface_id: Some("4f1c2a9e-0711-4b7e-9d2c-1a2b3c4d5e6f".into()),
            vm_uuid: Some("5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f".into()),
            attached_mac: Some(GUEST),
            iface_status: Some("active".into()),
            vm_id: None,
        }
    }

    fn proxmox() -> ProxmoxNic {
        ProxmoxNic {
            vmid: 100,
            name: Some("db-01".into()),
            net: "net0".into(),
            mac: Some("bc:24:11:5e:7a:01".parse().unwrap()),
            bridge: Some("vmbr0".into()),
        }
    }

    #[test]
    fn nothing_known_is_none() {
        assert_eq!(merge("tap0", Parts::default()), None);
        // A port os-vif did not make (no external_ids we read) names no VM.
        let bare = Parts {
            ovs: Some(OvsPort::default()),
            ..Parts::default()
        };
        assert_eq!(merge("tap0", bare), None);
    }

    /// A host-namespace tap known to libvirt alone writes what it wrote before, plus its
    /// source.
    #[test]
    fn libvirt_alone_is_as_before_plus_its_source() {
        let vm = merge(
            "tap4f1c2a9e-07",
            Parts {
                libvirt: Some(libvirt()),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.sources, [SourceKind::Libvirt]);
        let mut before = serde_json::to_value(libvirt()).unwrap();
        before["sources"] = serde_json::json!(["libvirt"]);
        assert_eq!(serde_json::to_value(&vm).unwrap(), before);
        assert_eq!(vm.display_name(), "web-1");
    }

    #[test]
    fn libvirt_and_ovs_keep_their_own_facts() {
        let vm = merge(
            "tap4f1c2a9e-07",
            Parts {
                libvirt: Some(libvirt()),
                ovs: Some(ovs()),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.sources, [SourceKind::Libvirt, SourceKind::Ovs]);
        assert_eq!(vm.domain, "instance-0000002b");
        assert_eq!(vm.guest_mac, Some(GUEST));
        assert_eq!(vm.ovs.as_deref(), Some(&ovs()));
        assert!(vm.from_source(SourceKind::Ovs) && !vm.from_source(SourceKind::Proxmox));
        assert_eq!(vm.display_name(), "web-1");
    }

    /// OVS alone: libvirt's fields stay empty (not borrowed from OVS), the name is Nova's
    /// instance UUID, which also feeds the metrics' `nova_uuid`.
    #[test]
    fn ovs_alone() {
        let vm = merge(
            "tap4f1c2a9e-07",
            Parts {
                ovs: Some(ovs()),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.sources, [SourceKind::Ovs]);
        assert_eq!((vm.domain.as_str(), vm.guest_mac), ("", None));
        assert_eq!(vm.tap, "tap4f1c2a9e-07");
        assert_eq!(vm.display_name(), "5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f");
        assert_eq!(vm.nova_uuid(), Some("5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f"));
        // Without libvirt's guest MAC nothing expects libvirt's fe: tap MAC of it.
        assert_eq!(vm.libvirt_tap_mac(), None);
        let port_only = OvsPort {
            iface_id: Some("lsp-1".into()),
            ..OvsPort::default()
        };
        let vm = merge(
            "tapX",
            Parts {
                ovs: Some(port_only),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.display_name(), "lsp-1");
    }

    #[test]
    fn proxmox_with_ovs() {
        let vm = merge(
            "tap100i0",
            Parts {
                ovs: Some(OvsPort {
                    iface_id: None,
                    vm_uuid: None,
                    ..ovs()
                }),
                proxmox: Some(proxmox()),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.sources, [SourceKind::Ovs, SourceKind::Proxmox]);
        assert_eq!(vm.display_name(), "db-01");
        assert_eq!(vm.proxmox.as_ref().unwrap().vmid, 100);
        let unnamed = ProxmoxNic {
            name: None,
            ..proxmox()
        };
        let vm = merge(
            "tap100i0",
            Parts {
                proxmox: Some(unnamed),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.display_name(), "tap100i0");
    }

    #[test]
    fn kubevirt_names_the_vmi() {
        let pod = VmInterface {
            domain: "default_vmi-a".into(),
            tap: "tap0".into(),
            managed: Some(false),
            ..VmInterface::default()
        };
        let vmi = KubevirtVmi::of_domain("default_vmi-a", 4242);
        let vm = merge(
            "tap0",
            Parts {
                kubevirt: Some((pod.clone(), vmi)),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(vm.sources, [SourceKind::Kubevirt]);
        assert_eq!(vm.display_name(), "default/vmi-a");
        assert_eq!(vm.domain, "default_vmi-a");
        let json = serde_json::to_value(&vm).unwrap();
        assert_eq!(
            json["kubevirt"],
            serde_json::json!({"namespace": "default", "name": "vmi-a", "qemu_pid": 4242})
        );
        // It reads back whole, the shown name with it.
        let back: VmInterface = serde_json::from_value(json).unwrap();
        assert_eq!((back.display_name(), &back), ("default/vmi-a", &vm));
        // The host's libvirt wins over a pod's file for one tap.
        let both = merge(
            "tap0",
            Parts {
                libvirt: Some(libvirt()),
                kubevirt: Some((pod, KubevirtVmi::of_domain("default_vmi-a", 1))),
                ..Parts::default()
            },
        )
        .unwrap();
        assert_eq!(both.sources, [SourceKind::Libvirt]);
        assert_eq!(both.kubevirt, None);
    }

    #[test]
    fn a_domain_not_kubevirt_shaped() {
        let vmi = KubevirtVmi::of_domain("plain", 7);
        assert_eq!(
            (vmi.namespace(), vmi.name(), vmi.qualified()),
            (None, "plain", "plain")
        );
        let vmi = KubevirtVmi::of_domain("_x", 7);
        assert_eq!(vmi.qualified(), "_x");
        let vmi = KubevirtVmi::of_domain("ns_name_with_underscores", 7);
        assert_eq!(
            (vmi.namespace(), vmi.name()),
            (Some("ns"), "name_with_underscores")
        );
    }

    /// Records of older versions (no `sources`) read as before.
    #[test]
    fn old_records_read() {
        let old = r#"{"domain":"d","uuid":null,"nova_name":null,"tap":"vnet0","guest_mac":null,"iface_type":"bridge","managed":null,"bridge":"br0"}"#;
        let vm: VmInterface = serde_json::from_str(old).unwrap();
        assert!(vm.sources.is_empty() && vm.ovs.is_none());
        assert_eq!(vm.display_name(), "d");
    }
}
