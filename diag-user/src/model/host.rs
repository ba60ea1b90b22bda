//! Facts about a hypervisor that matter when a VM migrates to or from it, as a bundle's
//! host.json holds them and the two-host merge compares them. Never a secret: versions,
//! the CPU's model and flags, the clock's state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{clock::Ts, mac::MacAddr, Mode};
use crate::model::identity::VmInterface;

/// A bundle's host.json: the run, the host's facts, and every tap it watched.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostJson {
    pub tool: String,
    pub version: String,
    #[serde(flatten)]
    pub host: HostFacts,
    pub started: Option<Ts>,
    pub ended: Option<Ts>,
    pub taps: BTreeMap<String, TapFacts>,
    pub frames_written: u64,
    pub frames_skipped: u64,
    pub max_bytes: u64,
    /// Why the recording stopped before the end (a full disk), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Whether room for the reports could not be reserved at the start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_reserve: bool,
}

/// Facts about one tap for host.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TapFacts {
    pub ifindex: u32,
    pub mac: Option<MacAddr>,
    pub mode: Option<Mode>,
    pub master: Option<String>,
    pub mtu: Option<u32>,
    /// How the tap's MAC came to be (see `tap_mac_derivation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_derivation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<VmInterface>,
}

/// How a tap's MAC came to be, in words, from what libvirt says of its interface.
pub fn tap_mac_derivation(vm: Option<&VmInterface>, mac: Option<MacAddr>) -> String {
    let Some(vm) = vm else {
        return "not known: no libvirt domain names this tap".into();
    };
    let Some(mac) = mac else {
        return "the tap has no MAC".into();
    };
    let libvirt_mac = vm.libvirt_tap_mac();
    match (vm.managed, libvirt_mac == Some(mac)) {
        (Some(false), true) => "fe: + guest MAC although the tap is managed='no' (libvirt \
                               before 9.5.0 overwrites it so)"
            .into(),
        (Some(false), false) => "as its creator set it (managed='no': libvirt 9.5.0 and later \
                                leave it alone; before, libvirt overwrote it with fe: + guest \
                                MAC)"
            .into(),
        (_, true) => "fe: + guest MAC (libvirt sets it on a tap it manages)".into(),
        (_, false) => "neither fe: + guest MAC nor managed='no': set by something else".into(),
    }
}

/// What host.json says about the host itself (its taps are beside this).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub hostname: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): with the hostname and the
    /// run's start, which recording a bundle is (absent in bundles of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// `libvirtd --version` (or the modular daemon's), when libvirt is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    /// `qemu-system-<arch> --version`, when QEMU is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_version: Option<String>,
    /// The CPU's model name and flags (`/proc/cpuinfo`): a guest whose CPU needs a flag
    /// the destination lacks cannot migrate there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
    /// How far the host's clock may be off (adjtimex), so two hosts' times are compared
    /// with their uncertainty stated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockFacts>,
}

/// The kernel's view of the system clock's discipline (`adjtimex(2)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockFacts {
    /// Whether NTP (chrony, ntpd, systemd-timesyncd) keeps the clock synchronised.
    pub synchronised: bool,
    /// The estimated and the maximum error, in microseconds.
    pub estimated_error_us: i64,
    pub maximum_error_us: i64,
}

impl ClockFacts {
    /// The error to allow for when comparing this clock with another: the estimated
    /// error when synchronised, else nothing is known (`None`).
    pub fn uncertainty_ms(&self) -> Option<f64> {
        self.synchronised
            .then_some(self.estimated_error_us as f64 / 1000.0)
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first line a program prints for `--version`, if it is there and answers within a
/// second (a hung binary never holds up a bundle).
fn version_of(candidates: &[&str]) -> Option<String> {
    use std::process::{Command, Stdio};
    for prog in candidates {
        let Ok(mut child) = Command::new(prog)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            continue;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        if let Some(line) = out.lines().next().filter(|l| !l.trim().is_empty()) {
            return Some(line.trim().to_string());
        }
    }
    None
}

/// The CPU's model name and flags, from /proc/cpuinfo's first processor.
pub fn cpu_of(cpuinfo: &str) -> (Option<String>, Vec<String>) {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let mut flags: Vec<String> = field("flags")
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    flags.sort();
    (field("model name"), flags)
}

fn clock() -> Option<ClockFacts> {
    // SAFETY: adjtimex(2) with modes 0 only reads; the struct is zeroed as it expects.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state < 0 {
        return None;
    }
    Some(ClockFacts {
        synchronised: state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0,
        estimated_error_us: t.esterror,
        maximum_error_us: t.maxerror,
    })
}

impl HostFacts {
    /// This host's facts now.
    pub fn gather() -> Self {
        let (cpu_model, cpu_flags) =
            cpu_of(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
        Self {
            kernel_release: read_trim("/proc/sys/kernel/osrelease"),
            hostname: read_trim("/proc/sys/kernel/hostname"),
            boot_id: Some(read_trim("/proc/sys/kernel/random/boot_id")).filter(|b| !b.is_empty()),
            libvirt_version: version_of(&["libvirtd", "virtqemud"]),
            qemu_version: version_of(&["qemu-system-x86_64", "qemu-system-aarch64", "qemu-kvm"]),
            cpu_model,
            cpu_flags,
            clock: clock(),
        }
    }
}

/// The flag name /proc/cpuinfo uses for a libvirt CPU feature name.
pub fn cpuinfo_flag(feature: &str) -> String {
    match feature {
        "pclmuldq" => "pclmulqdq".into(),
        "sse4.1" => "sse4_1".into(),
        "sse4.2" => "sse4_2".into(),
        "tsc-deadline" => "tsc_deadline_timer".into(),
        "cmp_legacy" => "cmp_legacy".into(),
        "lahf_lm" => "lahf_lm".into(),
        "ds_cpl" | "ds-cpl" => "ds_cpl".into(),
        "fxsr_opt" | "fxsr-opt" => "fxsr_opt".into(),
        "invtsc" => "constant_tsc".into(),
        other => other.replace(['.', '-'], "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_is_read_as_the_kernel_writes_it() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                    flags\t\t: fpu vme sse4_1 avx2 hypervisor\nprocessor\t: 1\n";
        let (model, flags) = cpu_of(info);
        assert_eq!(model.as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(flags, ["avx2", "fpu", "hypervisor", "sse4_1", "vme"]);
        assert_eq!(cpu_of(""), (None, Vec::new()));
    }

    #[test]
    fn libvirt_feature_names_map_to_cpuinfo_flags() {
        assert_eq!(cpuinfo_flag("sse4.2"), "sse4_2");
        assert_eq!(cpuinfo_flag("pclmuldq"), "pclmulqdq");
        assert_eq!(cpuinfo_flag("avx512-vp2intersect"), "avx512_vp2intersect");
        assert_eq!(cpuinfo_flag("hypervisor"), "hypervisor");
    }

    #[test]
    fn this_host_has_facts() {
        let h = HostFacts::gather();
        assert!(!h.kernel_release.is_empty());
        assert!(h.clock.is_some());
        assert_eq!(
            h.boot_id.as_ref().map(String::len),
            Some(36),
            "{:?}",
            h.boot_id
        );
        let json = serde_json::to_string(&h).unwrap();
        let back: HostFacts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }
}
