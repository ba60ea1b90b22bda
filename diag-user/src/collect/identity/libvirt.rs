//! VM identities from libvirt's live domain XML (`/run/libvirt/qemu/<name>.xml`).
//!
//! Only the interface facts below are extracted; nothing else of the XML is kept, so
//! secrets such as `<graphics passwd=…>` never leave this module.
//!
//! The files are foreign input: whoever can write the directory can put anything there.
//! The XML parser recurses once per nesting level, checks each attribute against the
//! element's others and copies the namespaces in scope into every element that declares
//! one, so a file of a few hundred kilobytes could exhaust the stack (a crash) or take
//! minutes, and it reserves memory for every `<` and `=` in the file before it starts. A
//! file is therefore read only up to [`MAX_STATUS_FILE`] bytes and checked against the
//! limits below ([`Limit`]) before it is parsed: at most about 20 MB and well under a
//! second for any file. Real status files are far inside them (about 10 KB, 300
//! elements, 8 levels, a handful of namespaces). A file past any limit is reported and
//! skipped like a malformed one.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use futures::FutureExt;

use crate::model::{
    facts::{DiskFacts, IfaceFacts, VmFacts},
    identity::{GuestCpu, VmInterface},
};

mod limits;

pub use self::limits::*;

pub const DEFAULT_DIR: &str = "/run/libvirt/qemu";

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
    #[error("{path}: not a libvirt status file: {limit}")]
    Refused { path: PathBuf, limit: Limit },
}

const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text(n: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    n.and_then(|n| n.text()).map(|t| t.trim().to_string())
}

/// Parses one domain XML (a live `<domstatus>` or a plain `<domain>`), refusing one past
/// the [`Limit`].
pub fn parse_domain(xml: &str, path: &Path) -> Result<Vec<VmInterface>, LibvirtError> {
    let doc = document(xml, path)?;
    let domain = domain_of(&doc, path)?;
    let Some(devices) = child(domain, "devices") else {
        return Ok(Vec::new());
    };
    let vm = domain_facts(domain);
    let ifaces = devices
        .children()
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|iface| interface(iface, &vm))
        .collect();
    Ok(ifaces)
}

/// A status file's VM for `tapwatch facts`: its facts, its interfaces (the taps' MACs
/// are the caller's to fill in) and its disks.
pub fn parse_vm(xml: &str, path: &Path) -> Result<VmFacts, LibvirtError> {
    let doc = document(xml, path)?;
    let domain = domain_of(&doc, path)?;
    let vm = domain_facts(domain);
    let devices = child(domain, "devices");
    let all = |name: &'static str| {
        devices
            .into_iter()
            .flat_map(|d| d.children())
            .filter(move |n| n.has_tag_name(name))
    };
    Ok(VmFacts {
        domain: vm.domain.clone(),
        uuid: vm.uuid.clone(),
        nova_name: vm.nova_name.clone(),
        state: vm.state.clone(),
        cpu: vm.cpu.clone(),
        interfaces: all("interface")
            .filter_map(|i| interface(i, &vm))
            .map(|i| IfaceFacts::of(&i, None, None))
            .collect(),
        disks: Some(all("disk").filter_map(disk).collect()),
    })
}

/// The file parsed, within the limits.
fn document<'x>(xml: &'x str, path: &Path) -> Result<roxmltree::Document<'x>, LibvirtError> {
    let refused = |limit| LibvirtError::Refused {
        path: path.to_path_buf(),
        limit,
    };
    if xml.len() as u64 > MAX_STATUS_FILE {
        return Err(refused(Limit::Size));
    }
    within_limits(xml).map_err(refused)?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    roxmltree::Document::parse_with_options(xml, options).map_err(|source| match source {
        roxmltree::Error::NodesLimitReached => refused(Limit::Nodes),
        source => LibvirtError::Xml {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn domain_of<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    path: &Path,
) -> Result<roxmltree::Node<'a, 'i>, LibvirtError> {
    doc.descendants()
        .find(|n| n.has_tag_name("domain"))
        .ok_or_else(|| LibvirtError::NoDomain {
            path: path.to_path_buf(),
        })
}

/// One `<disk>` with a source (`<source file|dev|volume=…>`, or network storage's
/// `protocol` and `name`).
fn disk(d: roxmltree::Node<'_, '_>) -> Option<DiskFacts> {
    let source = child(d, "source")?;
    let what = match (source.attribute("protocol"), source.attribute("name")) {
        (Some(p), Some(n)) => format!("{p}:{n}"),
        _ => ["file", "dev", "volume", "name"]
            .iter()
            .find_map(|a| source.attribute(*a))?
            .to_string(),
    };
    Some(DiskFacts {
        target: child(d, "target")
            .and_then(|t| t.attribute("dev"))
            .unwrap_or("")
            .to_string(),
        kind: d.attribute("type").unwrap_or("").to_string(),
        source: what,
    })
}

/// What the domain says of all its interfaces: its names, state and guest CPU (an
/// interface without its tap yet).
fn domain_facts(domain: roxmltree::Node<'_, '_>) -> VmInterface {
    // A live status file wraps the domain: `<domstatus state='running' reason='migrated'>`.
    let status = domain
        .parent_element()
        .filter(|p| p.has_tag_name("domstatus"));
    let attr = |name| status.and_then(|p| p.attribute(name)).map(str::to_string);
    let cpu = child(domain, "cpu").map(|c| GuestCpu {
        mode: c.attribute("mode").map(str::to_string),
        model: text(child(c, "model")),
        features: c
            .children()
            .filter(|f| f.has_tag_name("feature"))
            .filter(|f| matches!(f.attribute("policy"), Some("require" | "force") | None))
            .filter_map(|f| f.attribute("name").map(str::to_string))
            .collect(),
    });
    let nova_name = child(domain, "metadata")
        .and_then(|m| {
            m.descendants()
                .find(|n| n.has_tag_name((NOVA_NS, "instance")))
        })
        .and_then(|i| i.children().find(|n| n.has_tag_name((NOVA_NS, "name"))))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string());
    VmInterface {
        domain: text(child(domain, "name")).unwrap_or_default(),
        uuid: text(child(domain, "uuid")),
        nova_name,
        reason: attr("reason"),
        state: attr("state"),
        cpu,
        ..VmInterface::default()
    }
}

/// One `<interface>` with a tap (`<target dev=…>`), with the domain's facts.
fn interface(iface: roxmltree::Node<'_, '_>, vm: &VmInterface) -> Option<VmInterface> {
    let target = child(iface, "target")?;
    Some(VmInterface {
        tap: target.attribute("dev")?.to_string(),
        guest_mac: child(iface, "mac")
            .and_then(|m| m.attribute("address"))
            .and_then(|a| a.parse().ok()),
        iface_type: iface.attribute("type").unwrap_or("").to_string(),
        managed: target.attribute("managed").map(|m| m == "yes"),
        bridge: child(iface, "source")
            .and_then(|s| s.attribute("bridge"))
            .or_else(|| {
                // type='network': the bridge libvirt chose is only under <actual>.
                child(iface, "actual")
                    .and_then(|a| child(a, "source"))
                    .and_then(|s| s.attribute("bridge"))
            })
            .map(str::to_string),
        ..vm.clone()
    })
}

/// Every tap named in the `*.xml` files of `dir`, keyed by tap name. A missing directory
/// (no libvirt here) is an empty map; unreadable or malformed files are reported in the
/// second value and skipped.
pub fn scan_dir(dir: &Path) -> (HashMap<String, VmInterface>, Vec<LibvirtError>) {
    let mut d = LibvirtDir::unwatched(dir);
    let errors = d.rescan();
    (d.taps, errors)
}

/// Every VM of a status directory, for `tapwatch facts`; the files that could not be
/// read.
pub fn scan_vms(dir: &Path) -> (Vec<VmFacts>, Vec<LibvirtError>) {
    let mut names: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let (mut vms, mut errors) = (Vec::new(), Vec::new());
    for path in names {
        let xml = match read_regular(&path) {
            Ok(Some(x)) => x,
            Ok(None) => {
                errors.push(LibvirtError::Refused {
                    path,
                    limit: Limit::Size,
                });
                continue;
            }
            Err(source) => {
                errors.push(LibvirtError::Read { path, source });
                continue;
            }
        };
        match parse_vm(&xml, &path) {
            Ok(vm) => vms.push(vm),
            Err(e) => errors.push(e),
        }
    }
    (vms, errors)
}

/// Where VM identities come from: libvirt's status directory, or a fixed table (the lab).
pub trait VmDirectory: Send {
    /// The VM behind `tap` now.
    fn lookup(&self, tap: &str) -> Option<VmInterface>;
    /// The VM behind `tap` of network namespace `netns` (by its inode; `OWN_NETNS` for
    /// tapwatch's): a table of tapwatch's own namespace knows no other's.
    fn lookup_in(&self, netns: u64, tap: &str) -> Option<VmInterface> {
        (netns == crate::registry::OWN_NETNS)
            .then(|| self.lookup(tap))
            .flatten()
    }
    /// Notified when what `lookup` answers may have changed; `None` for a table that never
    /// changes.
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// VM identities that follow libvirt's status directory as it changes: a domain's file
/// appears (a VM started or migrating in; the tap may already exist), is rewritten, or goes
/// (the domain was destroyed or left), and the taps it names change VM with it.
pub struct LibvirtDir {
    dir: PathBuf,
    /// What each `*.xml` file named, by file name.
    files: HashMap<PathBuf, Vec<VmInterface>>,
    /// Derived from `files`: the VM behind each tap.
    taps: HashMap<String, VmInterface>,
    /// inotify on `dir`, once it exists.
    events: Option<inotify::EventStream<Vec<u8>>>,
    /// Errors already reported (a bad file is reported once, not at every rewrite).
    reported: std::collections::HashSet<String>,
}

impl VmDirectory for LibvirtDir {
    fn lookup(&self, tap: &str) -> Option<VmInterface> {
        self.taps.get(tap).cloned()
    }
}

impl LibvirtDir {
    fn unwatched(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
            taps: HashMap::new(),
            events: None,
            reported: Default::default(),
        }
    }

    /// Reads `dir` and starts following it (if it exists yet; see [`LibvirtDir::retry`]).
    /// Returns the files that could not be read, each once.
    pub fn open(dir: &Path) -> (Self, Vec<LibvirtError>) {
        let mut d = Self::unwatched(dir);
        let errors = d.retry();
        (d, errors)
    }

    /// Starts following the directory if that has not worked yet (libvirt not running when
    /// tapwatch started); reads it all when it does.
    pub fn retry(&mut self) -> Vec<LibvirtError> {
        if self.events.is_some() {
            return Vec::new();
        }
        self.events = watch_dir(&self.dir);
        let errors = self.rescan();
        self.fresh(errors)
    }

    /// Waits until the directory changes and reads what changed. Pending forever when the
    /// directory is not followed.
    pub async fn changed(&mut self) -> Vec<LibvirtError> {
        use futures::StreamExt;
        let Some(events) = self.events.as_mut() else {
            return std::future::pending().await;
        };
        let mut names = Vec::new();
        let mut overflow = false;
        let mut gone = false;
        // The first event, then whatever else is already queued.
        let first = events.next().await;
        let mut batch = vec![first];
        while let Some(more) = events.next().now_or_never() {
            batch.push(more);
        }
        for ev in batch {
            match ev {
                Some(Ok(ev)) => {
                    if ev.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                        overflow = true;
                    }
                    if ev.mask.intersects(
                        inotify::EventMask::DELETE_SELF
                            | inotify::EventMask::MOVE_SELF
                            | inotify::EventMask::IGNORED,
                    ) {
                        gone = true;
                    }
                    if let Some(n) = ev.name {
                        names.push(PathBuf::from(n));
                    }
                }
                // The stream ended or failed: stop following, read it all again.
                Some(Err(_)) | None => gone = true,
            }
        }
        if gone {
            self.events = None;
            let errors = self.retry();
            return errors;
        }
        let errors = if overflow {
            self.rescan()
        } else {
            let mut errors = Vec::new();
            for n in names {
                if n.extension().is_some_and(|x| x == "xml") {
                    errors.extend(self.reread(&n));
                }
            }
            self.derive();
            errors
        };
        self.fresh(errors)
    }

    /// Errors not reported before.
    fn fresh(&mut self, errors: Vec<LibvirtError>) -> Vec<LibvirtError> {
        errors
            .into_iter()
            .filter(|e| self.reported.insert(e.to_string()))
            .collect()
    }

    /// Reads every `*.xml` file again.
    fn rescan(&mut self) -> Vec<LibvirtError> {
        self.files.clear();
        let mut errors = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| PathBuf::from(e.file_name())))
                .filter(|p| p.extension().is_some_and(|x| x == "xml"))
                .collect();
            names.sort();
            for n in names {
                errors.extend(self.reread(&n));
            }
        }
        self.derive();
        errors
    }

    /// Reads one file again: gone (the domain was destroyed) forgets what it named.
    fn reread(&mut self, name: &Path) -> Option<LibvirtError> {
        let path = self.dir.join(name);
        let xml = match read_regular(&path) {
            Ok(Some(x)) => Ok(x),
            Ok(None) => Err(LibvirtError::Refused {
                path: path.clone(),
                limit: Limit::Size,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.files.remove(name);
                return None;
            }
            Err(source) => {
                self.files.remove(name);
                return Some(LibvirtError::Read { path, source });
            }
        };
        match xml.and_then(|xml| parse_domain(&xml, &path)) {
            Ok(ifaces) => {
                self.files.insert(name.to_path_buf(), ifaces);
                None
            }
            Err(e) => {
                self.files.remove(name);
                Some(e)
            }
        }
    }

    /// The tap map from the files, in file-name order (a tap named twice, as while a
    /// domain is being replaced, goes to the later file).
    fn derive(&mut self) {
        let mut names: Vec<&PathBuf> = self.files.keys().collect();
        names.sort();
        self.taps = names
            .into_iter()
            .flat_map(|n| self.files[n].iter())
            .map(|i| (i.tap.clone(), i.clone()))
            .collect();
    }
}

/// The file at `path` if it is a regular file of at most [`MAX_STATUS_FILE`] bytes (`None`
/// when it is longer), without following a symlink or blocking on a FIFO.
fn read_regular(path: &Path) -> std::io::Result<Option<String>> {
    super::read_bounded(path, MAX_STATUS_FILE)
}

fn watch_dir(dir: &Path) -> Option<inotify::EventStream<Vec<u8>>> {
    use inotify::{Inotify, WatchMask};
    // The stream registers with the async runtime; without one the directory is read once.
    tokio::runtime::Handle::try_current().ok()?;
    let ino = Inotify::init().ok()?;
    ino.watches()
        .add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::CREATE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR,
        )
        .ok()?;
    ino.into_event_stream(vec![0u8; 64 * 1024]).ok()
}

#[cfg(test)]
mod tests;
