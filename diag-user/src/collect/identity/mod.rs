//! Which VM is behind a tap: libvirt's status directory followed as it changes, or a fixed
//! table (the lab).

pub mod libvirt;

use self::libvirt::{LibvirtDir, LibvirtError, VmDirectory};
use crate::model::identity::VmInterface;

/// Where a run learns which VM is behind a tap.
#[derive(Clone)]
pub enum IdentitySource {
    None,
    /// libvirt's status directory (`/run/libvirt/qemu`), followed as it changes.
    Libvirt(std::path::PathBuf),
    /// A fixed table (the lab's simulated VMs).
    Fixed(std::sync::Arc<dyn VmDirectory + Sync>),
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentitySource::None => f.write_str("None"),
            IdentitySource::Libvirt(d) => write!(f, "Libvirt({})", d.display()),
            IdentitySource::Fixed(_) => f.write_str("Fixed"),
        }
    }
}

/// The identity source of a running watcher.
pub(super) enum Identities {
    None,
    Libvirt(std::path::PathBuf, Option<Box<LibvirtDir>>),
    Fixed(std::sync::Arc<dyn VmDirectory + Sync>),
}

impl From<&IdentitySource> for Identities {
    fn from(s: &IdentitySource) -> Self {
        match s {
            IdentitySource::None => Identities::None,
            IdentitySource::Libvirt(d) => Identities::Libvirt(d.clone(), None),
            IdentitySource::Fixed(t) => Identities::Fixed(t.clone()),
        }
    }
}

impl Identities {
    /// Reads the source once and starts following it; the files it could not read.
    pub(super) fn start(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(dir, slot @ None) => {
                let (d, errors) = LibvirtDir::open(dir);
                *slot = Some(Box::new(d));
                errors
            }
            _ => Vec::new(),
        }
    }

    pub(super) fn lookup(&self, tap: &str) -> Option<VmInterface> {
        match self {
            Identities::None | Identities::Libvirt(_, None) => None,
            Identities::Libvirt(_, Some(d)) => d.lookup(tap),
            Identities::Fixed(t) => t.lookup(tap),
        }
    }

    /// Waits until the source changes; never, for a table that does not.
    pub(super) async fn changed(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(_, Some(d)) => d.changed().await,
            Identities::Fixed(t) => match t.changes() {
                Some(n) => {
                    n.notified().await;
                    Vec::new()
                }
                None => std::future::pending().await,
            },
            _ => std::future::pending().await,
        }
    }

    /// Follows the directory once it exists (libvirt started after tapwatch).
    pub(super) fn retry(&mut self) -> Vec<LibvirtError> {
        match self {
            Identities::Libvirt(_, Some(d)) => d.retry(),
            _ => Vec::new(),
        }
    }
}
