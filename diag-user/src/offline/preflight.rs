//! `tapwatch preflight --from SRC --to DST`: what would break a VM's live migration from
//! one host to another, read off the two hosts' facts before it starts. Pure: it compares
//! two [`Facts`]; reading them is [`super::facts`].

use std::collections::HashSet;

use crate::model::{
    facts::{Derivation, Facts, VmFacts},
    finding::{Check, Finding, Severity},
    host::cpuinfo_flag,
};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "{0} and {1} are facts of the same host ({2}, one boot): give the source host's \
         facts, then the destination's"
    )]
    SameHost(String, String, String),
    #[error("no VM named {name} in {src}'s facts (its VMs: {known})")]
    NoSuchVm {
        name: String,
        src: String,
        known: String,
    },
}

/// The findings for the VMs named (every VM of SRC when none is), most serious first.
pub fn check(
    src: &Facts,
    dst: &Facts,
    names: &[String],
    labels: (&str, &str),
) -> Result<Vec<Finding>, PreflightError> {
    if same_host(src, dst) {
        return Err(PreflightError::SameHost(
            labels.0.into(),
            labels.1.into(),
            src.host.hostname.clone(),
        ));
    }
    let vms: Vec<&VmFacts> = if names.is_empty() {
        src.vms.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                src.vms
                    .iter()
                    .find(|v| v.is_named(n))
                    .ok_or_else(|| PreflightError::NoSuchVm {
                        name: n.clone(),
                        src: labels.0.into(),
                        known: src
                            .vms
                            .iter()
                            .map(VmFacts::name)
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut out = pair_findings(src, dst);
    let dst_flags: HashSet<&str> = dst.host.cpu_flags.iter().map(String::as_str).collect();
    for vm in vms {
        out.extend(cpu(src, dst, vm, &dst_flags));
        out.extend(storage(src, dst, vm));
        out.extend(stale_mac(dst, vm));
        out.extend(mtu(dst, vm));
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(out)
}

/// Whether a finding stops the migration or its network (exit status 1).
pub fn blocking(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity >= Severity::Outage)
}

fn same_host(a: &Facts, b: &Facts) -> bool {
    a.host.hostname == b.host.hostname
        && match (&a.host.boot_id, &b.host.boot_id) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// What the two hosts differ in for every VM: versions, clocks.
fn pair_findings(src: &Facts, dst: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    for (what, s, d) in [
        (
            "libvirt",
            &src.host.libvirt_version,
            &dst.host.libvirt_version,
        ),
        ("QEMU", &src.host.qemu_version, &dst.host.qemu_version),
    ] {
        let (Some(s), Some(d)) = (s, d) else { continue };
        if let (Some(sv), Some(dv)) = (version(s), version(d)) {
            if dv < sv {
                out.push(Finding {
                    vm: String::new(),
                    check: Check::Versions,
                    severity: Severity::Blocks,
                    what: format!(
                        "{what} on the destination is older than on the source: migrating to \
                         an older {what} is not supported"
                    ),
                    evidence: vec![format!("source: {s}"), format!("destination: {d}")],
                    todo: format!(
                        "upgrade {what} on the destination first, or migrate to a host with \
                         the same or a newer {what}"
                    ),
                });
            }
        }
    }
    let synced = |f: &Facts| f.host.clock.is_some_and(|c| c.synchronised);
    if !synced(src) || !synced(dst) {
        out.push(Finding {
            vm: String::new(),
            check: Check::Clock,
            severity: Severity::Note,
            what: "a host's clock is not synchronised: the two hosts' times of the migration \
                   cannot be compared exactly"
                .into(),
            evidence: vec![
                format!("source synchronised: {}", synced(src)),
                format!("destination synchronised: {}", synced(dst)),
            ],
            todo: "run chrony (or ntpd) on both hosts".into(),
        });
    }
    out
}

/// `x.y.z` out of a `--version` line (`libvirtd (libvirt) 9.0.0`, `QEMU emulator version
/// 7.2.0 (Debian 1:7.2+dfsg-7)`).
pub fn version(line: &str) -> Option<Vec<u64>> {
    line.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find(|w| w.contains('.') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .and_then(|w| {
            w.split('.')
                .map(|p| {
                    p.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse()
                        .ok()
                })
                .collect()
        })
}

/// The guest CPU needs flags the destination lacks: libvirt refuses the migration
/// (Nova's `InvalidCPUInfo`).
fn cpu(src: &Facts, dst: &Facts, vm: &VmFacts, dst_flags: &HashSet<&str>) -> Option<Finding> {
    if dst.host.cpu_flags.is_empty() {
        return None;
    }
    let cpu = vm.cpu.as_ref();
    let mode = cpu.and_then(|c| c.mode.as_deref()).unwrap_or("");
    // host-passthrough (and host-model, as the source's CPU expanded) needs every flag
    // of the source's CPU; a custom model, the features it requires.
    let (needs, what): (Vec<String>, String) = match mode {
        "host-passthrough" | "host-model" => (
            src.host.cpu_flags.clone(),
            format!("{mode}: every flag of the source's CPU"),
        ),
        _ => (
            cpu.map(|c| c.features.iter().map(|f| cpuinfo_flag(f)).collect())
                .unwrap_or_default(),
            format!(
                "{} {}: the features it requires",
                if mode.is_empty() { "custom" } else { mode },
                cpu.and_then(|c| c.model.as_deref()).unwrap_or("")
            ),
        ),
    };
    let mut missing: Vec<String> = needs
        .into_iter()
        .filter(|f| !dst_flags.contains(f.as_str()))
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        return None;
    }
    Some(Finding {
        vm: vm.name().into(),
        check: Check::CpuFlags,
        severity: Severity::Blocks,
        what: format!(
            "the guest's CPU needs {} flag(s) the destination's CPU lacks: {} (Nova: \
             InvalidCPUInfo)",
            missing.len(),
            shown(&missing)
        ),
        evidence: vec![
            format!("guest CPU: {what}"),
            format!(
                "source CPU: {}",
                src.host.cpu_model.as_deref().unwrap_or("unknown")
            ),
            format!(
                "destination CPU: {}",
                dst.host.cpu_model.as_deref().unwrap_or("unknown")
            ),
        ],
        todo: "give the VM a CPU model both hosts offer: `virsh cpu-baseline` over both \
               hosts' `virsh capabilities` names one (Nova: [libvirt] cpu_mode=custom and \
               cpu_models=...)"
            .into(),
    })
}

/// At most 20 flags named, then how many more.
fn shown(flags: &[String]) -> String {
    let mut s = flags
        .iter()
        .take(20)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if flags.len() > 20 {
        s.push_str(&format!(" and {} more", flags.len() - 20));
    }
    s
}

/// Local disks without shared storage: Nova refuses a live migration that does not copy
/// them (`InvalidSharedStorage`).
fn storage(src: &Facts, dst: &Facts, vm: &VmFacts) -> Option<Finding> {
    let disks = vm.disks.as_ref()?;
    let local: Vec<&str> = disks
        .iter()
        .filter(|d| d.local())
        .map(|d| d.source.as_str())
        .collect();
    if local.is_empty() {
        return None;
    }
    let shared = |f: &Facts| f.instances_dir.as_ref().map(|i| i.shared);
    if shared(src) == Some(true) && shared(dst) == Some(true) {
        return None;
    }
    let fs = |f: &Facts| {
        f.instances_dir
            .as_ref()
            .map_or("not known".to_string(), |i| {
                format!(
                    "{} on {}",
                    i.path,
                    i.fs_type.as_deref().unwrap_or("(missing)")
                )
            })
    };
    Some(Finding {
        vm: vm.name().into(),
        check: Check::SharedStorage,
        severity: Severity::Blocks,
        what: format!(
            "{} local disk(s) and no instances directory shared by both hosts: Nova \
             refuses a live migration that does not copy them (InvalidSharedStorage)",
            local.len()
        ),
        evidence: vec![
            format!("disks: {}", local.join(", ")),
            format!("source instances directory: {}", fs(src)),
            format!("destination instances directory: {}", fs(dst)),
        ],
        todo: "migrate with the disks copied (`nova live-migration --block-migrate`, \
               `openstack server migrate --live-migration --block-migration`), or put the \
               instances directory on shared storage on both hosts"
            .into(),
    })
}

/// The destination gives its taps another MAC than the one this VM's guest has cached
/// (the source's): a stale-MAC blackout after the resume.
fn stale_mac(dst: &Facts, vm: &VmFacts) -> Option<Finding> {
    let iface = vm
        .interfaces
        .iter()
        .find(|i| i.derivation() == Some(Derivation::Libvirt))?;
    let dst_taps: Vec<_> = dst
        .vms
        .iter()
        .flat_map(|v| v.interfaces.iter())
        .filter(|i| i.iface_type == "ethernet")
        .collect();
    let others = dst_taps
        .iter()
        .filter(|i| i.derivation() == Some(Derivation::Other) && i.managed == Some(false))
        .count();
    let known = dst_taps.iter().filter(|i| i.derivation().is_some()).count();
    if others == 0 {
        return None;
    }
    let example = dst_taps
        .iter()
        .find(|i| i.derivation() == Some(Derivation::Other))
        .and_then(|i| i.tap_mac)
        .map(|m| m.to_string())
        .unwrap_or_default();
    let all = others == known;
    Some(Finding {
        vm: vm.name().into(),
        check: Check::StaleMac,
        severity: if all {
            Severity::Outage
        } else {
            Severity::Note
        },
        what: format!(
            "the destination gives {} of its {known} routed taps a MAC other than \
             fe:+guest MAC (managed='no', the port binding's MAC, e.g. {example}); this \
             VM's guest has cached {} for its gateway on the source: {}",
            others,
            iface.tap_mac.map(|m| m.to_string()).unwrap_or_default(),
            if all {
                "a stale-MAC blackout of 15 to 45 s after the resume"
            } else {
                "a stale-MAC blackout after the resume if its tap gets such a MAC"
            }
        ),
        evidence: vec![
            format!(
                "source tap {}: {} (fe: + guest MAC, libvirt's)",
                iface.tap,
                iface.tap_mac.map(|m| m.to_string()).unwrap_or_default()
            ),
            format!("destination: {others} of {known} taps with another MAC, managed='no'"),
        ],
        todo: "make the destination derive tap MACs as the source does (networking-calico \
               derives fe:+the port MAC's last five octets since its fix; or let libvirt \
               manage the tap), or end the blackout right after the resume with `tapwatch \
               nudge`"
            .into(),
    })
}

/// The VM's taps have another MTU than the destination's: a guest whose MTU is larger than
/// the path's loses its large packets after the move.
fn mtu(dst: &Facts, vm: &VmFacts) -> Option<Finding> {
    let here = vm.interfaces.iter().find_map(|i| i.mtu)?;
    let mut there: Vec<u32> = dst
        .vms
        .iter()
        .flat_map(|v| v.interfaces.iter())
        .filter_map(|i| i.mtu)
        .collect();
    there.sort_unstable();
    there.dedup();
    if there.is_empty() || there.contains(&here) {
        return None;
    }
    Some(Finding {
        vm: vm.name().into(),
        check: Check::Mtu,
        severity: Severity::Note,
        what: format!(
            "the VM's tap has MTU {here} on the source; the destination's taps have {}",
            there
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        evidence: vec![format!("source MTU {here}")],
        todo: "check that the network's MTU is the same on both hosts (a guest that keeps \
               its larger MTU loses its large packets)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        facts::{DiskFacts, IfaceFacts, InstancesDir},
        host::{ClockFacts, HostFacts},
        identity::GuestCpu,
        mac::MacAddr,
    };

    const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    const FE: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    const CALICO: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);

    fn host(name: &str, libvirt: &str, qemu: &str, flags: &[&str]) -> Facts {
        Facts {
            tool: "tapwatch".into(),
            version: "0.2.0".into(),
            facts: 1,
            taken: None,
            host: HostFacts {
                kernel_release: "6.8.0".into(),
                hostname: name.into(),
                libvirt_version: Some(format!("libvirtd (libvirt) {libvirt}")),
                qemu_version: Some(format!("QEMU emulator version {qemu}")),
                cpu_model: Some("AMD EPYC".into()),
                cpu_flags: flags.iter().map(|f| f.to_string()).collect(),
                clock: Some(ClockFacts {
                    synchronised: true,
                    estimated_error_us: 100,
                    maximum_error_us: 1000,
                }),
                boot_id: Some(format!("boot-{name}")),
            },
            instances_dir: Some(InstancesDir {
                path: "/var/lib/nova/instances".into(),
                fs_type: Some("ext4".into()),
                shared: false,
            }),
            vms: Vec::new(),
        }
    }

    fn vm(name: &str, mode: &str, tap_mac: MacAddr, managed: bool, disks: bool) -> VmFacts {
        VmFacts {
            domain: format!("instance-{name}"),
            uuid: Some(format!("uuid-{name}")),
            nova_name: Some(name.into()),
            state: Some("running".into()),
            cpu: Some(GuestCpu {
                mode: Some(mode.into()),
                model: Some("EPYC".into()),
                features: vec!["avx2".into(), "sse4.2".into()],
            }),
            interfaces: vec![IfaceFacts {
                tap: format!("tap{name}"),
                tap_mac: Some(tap_mac),
                mtu: Some(1500),
                guest_mac: Some(GUEST),
                managed: Some(managed),
                iface_type: "ethernet".into(),
                bridge: None,
            }],
            disks: Some(if disks {
                vec![DiskFacts {
                    target: "vda".into(),
                    kind: "file".into(),
                    source: format!("/var/lib/nova/instances/{name}/disk"),
                }]
            } else {
                vec![DiskFacts {
                    target: "vda".into(),
                    kind: "network".into(),
                    source: "rbd:vms/disk".into(),
                }]
            }),
        }
    }

    fn checks(f: &[Finding]) -> Vec<(Check, Severity)> {
        f.iter().map(|f| (f.check, f.severity)).collect()
    }

    /// The Ceph/Icehouse write-up's and the stale-MAC incident's failures, read off the
    /// two hosts: a host-passthrough guest to a host without avx512f, a newer QEMU and
    /// libvirt to older ones (Jammy to Noble is the other way), local disks without shared
    /// storage, and the destination's taps given the port's MAC.
    #[test]
    fn everything_that_would_break_a_migration() {
        let mut src = host("noble-1", "10.0.0", "8.2.2", &["avx2", "avx512f", "sse4_2"]);
        let mut dst = host("jammy-1", "8.0.0", "6.2.0", &["avx2", "sse4_2"]);
        src.vms
            .push(vm("web-1", "host-passthrough", FE, true, true));
        dst.vms.push(vm("db-1", "custom", CALICO, false, false));
        let f = check(&src, &dst, &[], ("SRC", "DST")).unwrap();
        let found = checks(&f);
        for want in [
            (Check::Versions, Severity::Blocks),
            (Check::CpuFlags, Severity::Blocks),
            (Check::SharedStorage, Severity::Blocks),
            (Check::StaleMac, Severity::Outage),
        ] {
            assert!(found.contains(&want), "{want:?} not in {found:?}");
        }
        let cpu = f.iter().find(|f| f.check == Check::CpuFlags).unwrap();
        assert!(cpu.what.contains("avx512f") && cpu.what.contains("InvalidCPUInfo"));
        assert!(cpu.todo.contains("virsh cpu-baseline"));
        assert_eq!(f.iter().filter(|f| f.check == Check::Versions).count(), 2);
        assert!(blocking(&f));
        // Most serious first.
        assert_eq!(f[0].severity, Severity::Blocks);
    }

    /// A custom CPU model needs only its features; network disks need no shared storage;
    /// the destination's taps with libvirt's MAC leave nothing stale; same versions.
    #[test]
    fn a_pair_that_is_fine() {
        let mut src = host("hv-1", "9.0.0", "7.2.0", &["avx2", "sse4_2"]);
        let mut dst = host("hv-2", "9.0.0", "7.2.0", &["avx2", "sse4_2"]);
        src.vms.push(vm("web-1", "custom", FE, true, false));
        dst.vms.push(vm("db-1", "custom", FE, true, false));
        let f = check(&src, &dst, &["web-1".into()], ("SRC", "DST")).unwrap();
        assert!(f.is_empty(), "{f:#?}");
        assert!(!blocking(&f));
        // host-passthrough between identical CPUs is fine too.
        src.vms[0].cpu.as_mut().unwrap().mode = Some("host-passthrough".into());
        assert!(check(&src, &dst, &[], ("SRC", "DST")).unwrap().is_empty());
        // Local disks on shared storage on both hosts.
        src.vms[0] = vm("web-1", "custom", FE, true, true);
        for h in [&mut src, &mut dst] {
            h.instances_dir = Some(InstancesDir {
                path: "/var/lib/nova/instances".into(),
                fs_type: Some("nfs4".into()),
                shared: true,
            });
        }
        assert!(check(&src, &dst, &[], ("SRC", "DST")).unwrap().is_empty());
    }

    #[test]
    fn wrong_input_is_said() {
        let src = host("hv-1", "9.0.0", "7.2.0", &[]);
        let err = check(&src, &src.clone(), &[], ("a.json", "b.json")).unwrap_err();
        assert!(err.to_string().contains("the same host"), "{err}");
        let dst = host("hv-2", "9.0.0", "7.2.0", &[]);
        let err = check(&src, &dst, &["nope".into()], ("a.json", "b.json")).unwrap_err();
        assert!(err.to_string().contains("no VM named nope"), "{err}");
        assert_eq!(
            version("QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)"),
            Some(vec![7, 2, 0])
        );
        assert_eq!(version("libvirtd (libvirt) 10.0.0"), Some(vec![10, 0, 0]));
    }
}
