//! VM identities from libvirt's live domain XML (`/run/libvirt/qemu/<name>.xml`).
//!
//! Only the interface facts below are extracted; nothing else of the XML is kept, so
//! secrets such as `<graphics passwd=…>` never leave this module.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::mac::MacAddr;

pub const DEFAULT_DIR: &str = "/run/libvirt/qemu";

/// What libvirt says about the VM behind one tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// `<source bridge=…>` when the interface is on a bridge.
    pub bridge: Option<String>,
}

impl VmInterface {
    /// The name to show: Nova's instance name, else the domain name.
    pub fn display_name(&self) -> &str {
        self.nova_name.as_deref().unwrap_or(&self.domain)
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

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid XML: {source}")]
    Xml {
        path: PathBuf,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{path}: no <domain> element")]
    NoDomain { path: PathBuf },
}

const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    n.and_then(|n| n.text()).map(|t| t.trim().to_string())
}

/// Parses one domain XML (a live `<domstatus>` or a plain `<domain>`).
pub fn parse_domain(xml: &str, path: &Path) -> Result<Vec<VmInterface>, LibvirtError> {
    let doc = roxmltree::Document::parse(xml).map_err(|source| LibvirtError::Xml {
        path: path.to_path_buf(),
        source,
    })?;
    let domain = doc
        .descendants()
        .find(|n| n.has_tag_name("domain"))
        .ok_or_else(|| LibvirtError::NoDomain {
            path: path.to_path_buf(),
        })?;
    let name = text(child(domain, "name")).unwrap_or_default();
    let uuid = text(child(domain, "uuid"));
    let nova_name = child(domain, "metadata")
        .and_then(|m| {
            m.descendants()
                .find(|n| n.has_tag_name((NOVA_NS, "instance")))
        })
        .and_then(|i| i.children().find(|n| n.has_tag_name((NOVA_NS, "name"))))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string());
    let Some(devices) = child(domain, "devices") else {
        return Ok(Vec::new());
    };
    let ifaces = devices
        .children()
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|iface| {
            let target = child(iface, "target")?;
            let tap = target.attribute("dev")?.to_string();
            Some(VmInterface {
                domain: name.clone(),
                uuid: uuid.clone(),
                nova_name: nova_name.clone(),
                tap,
                guest_mac: child(iface, "mac")
                    .and_then(|m| m.attribute("address"))
                    .and_then(|a| a.parse().ok()),
                iface_type: iface.attribute("type").unwrap_or("").to_string(),
                managed: target.attribute("managed").map(|m| m == "yes"),
                bridge: child(iface, "source")
                    .and_then(|s| s.attribute("bridge"))
                    .map(str::to_string),
            })
        })
        .collect();
    Ok(ifaces)
}

/// Every tap named in the `*.xml` files of `dir`, keyed by tap name. A missing directory
/// (no libvirt here) is an empty map; unreadable or malformed files are reported in the
/// second value and skipped.
pub fn scan_dir(dir: &Path) -> (HashMap<String, VmInterface>, Vec<LibvirtError>) {
    let mut taps = HashMap::new();
    let mut errors = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return (taps, errors);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    paths.sort();
    for path in paths {
        let xml = match fs::read_to_string(&path) {
            Ok(x) => x,
            Err(source) => {
                errors.push(LibvirtError::Read { path, source });
                continue;
            }
        };
        match parse_domain(&xml, &path) {
            Ok(ifaces) => taps.extend(ifaces.into_iter().map(|i| (i.tap.clone(), i))),
            Err(e) => errors.push(e),
        }
    }
    (taps, errors)
}

/// VM identities from a libvirt directory, re-read when an unknown tap shows up (its
/// domain XML may be written just after the tap), at most every two seconds.
pub struct LibvirtDir {
    dir: PathBuf,
    taps: HashMap<String, VmInterface>,
    last_scan: Option<std::time::Instant>,
    reported: std::collections::HashSet<String>,
    /// Unreadable or malformed files, each reported once; printed to stderr if set.
    pub report: bool,
}

impl LibvirtDir {
    pub fn new(dir: impl Into<PathBuf>, report: bool) -> Self {
        Self {
            dir: dir.into(),
            taps: HashMap::new(),
            last_scan: None,
            reported: Default::default(),
            report,
        }
    }

    fn rescan(&mut self) {
        let (taps, errors) = scan_dir(&self.dir);
        self.taps = taps;
        self.last_scan = Some(std::time::Instant::now());
        for e in errors {
            let msg = e.to_string();
            if self.report && self.reported.insert(msg.clone()) {
                eprintln!("tapwatch: skipping libvirt domain file {msg}");
            }
        }
    }
}

impl crate::verdict::VmDirectory for LibvirtDir {
    fn lookup(&mut self, tap: &str) -> Option<VmInterface> {
        let stale = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
        if !self.taps.contains_key(tap) && stale {
            self.rescan();
        }
        self.taps.get(tap).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt")
    }

    #[test]
    fn nova_calico_instance() {
        let (taps, _) = scan_dir(&fixtures());
        let vm = &taps["tap4f1c2a9e-07"];
        assert_eq!(vm.domain, "instance-0000002a");
        assert_eq!(vm.nova_name.as_deref(), Some("web-frontend-3"));
        assert_eq!(vm.display_name(), "web-frontend-3");
        assert_eq!(
            vm.uuid.as_deref(),
            Some("3b1f8c2e-9d4a-4c61-8f0e-5a7b2c9d1e04")
        );
        assert_eq!(vm.guest_mac, Some("fa:16:3e:aa:bb:cc".parse().unwrap()));
        assert_eq!(
            vm.libvirt_tap_mac(),
            Some("fe:16:3e:aa:bb:cc".parse().unwrap())
        );
        assert_eq!(vm.iface_type, "ethernet");
        assert_eq!(vm.managed, Some(false));
        assert_eq!(vm.bridge, None);
    }

    #[test]
    fn plain_libvirt_bridged_domain() {
        let (taps, _) = scan_dir(&fixtures());
        let vm = &taps["vnet3"];
        assert_eq!(
            (vm.display_name(), vm.nova_name.as_deref()),
            ("build-runner", None)
        );
        assert_eq!(vm.iface_type, "bridge");
        assert_eq!(vm.bridge.as_deref(), Some("br0"));
        assert_eq!(vm.managed, None);
        assert_eq!(taps["vnet4"].bridge.as_deref(), Some("virbr0"));
        assert_eq!(
            taps["vnet4"].guest_mac,
            Some("52:54:00:65:43:21".parse().unwrap())
        );
    }

    #[test]
    fn secrets_are_never_extracted() {
        let (taps, _) = scan_dir(&fixtures());
        let vm = &taps["tap9d8c7b6a-5f"];
        assert_eq!(vm.domain, "legacy-desktop");
        let all = serde_json::to_string(&taps).unwrap();
        assert!(!all.contains("s3cr3t") && !all.contains("vnc-pa55") && !all.contains("passwd"));
    }

    #[test]
    fn bad_files_are_reported_and_skipped() {
        let (taps, errors) = scan_dir(&fixtures());
        assert_eq!(taps.len(), 4);
        let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("not-a-domain.xml")));
        assert!(msgs
            .iter()
            .any(|m| m.contains("truncated.xml") && m.contains("not valid XML")));
    }

    #[test]
    fn no_libvirt_is_no_error() {
        let (taps, errors) = scan_dir(Path::new("/nonexistent/libvirt/qemu"));
        assert!(taps.is_empty() && errors.is_empty());
    }
}
