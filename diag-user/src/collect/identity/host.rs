//! This host's sources, running: libvirt's directory and Proxmox's files on the
//! collector's thread (inotify, and a `stat` now and then), KubeVirt's scan and the OVSDB
//! monitor on threads of their own.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{
    kubevirt, libvirt::LibvirtDir, merge::merge, merge::Parts, ovsdb, proxmox::PveDir, Background,
    HostSources, IdentityError, Said, VmDirectory,
};
use crate::{model::identity::VmInterface, registry::OWN_NETNS};

pub struct HostIdentities {
    sources: HostSources,
    /// Once started.
    libvirt: Option<Box<LibvirtDir>>,
    kubevirt: Option<Background<kubevirt::Table>>,
    ovs: Option<Background<ovsdb::Table>>,
    proxmox: Option<PveDir>,
    /// Woken by the sources' threads.
    notify: Arc<Notify>,
    /// Problems met while looking up, said at the next change or interval.
    pending: Vec<IdentityError>,
    said: Said,
}

impl HostIdentities {
    pub(super) fn new(sources: &HostSources) -> Self {
        Self {
            sources: sources.clone(),
            libvirt: None,
            kubevirt: None,
            ovs: None,
            proxmox: None,
            notify: Arc::new(Notify::new()),
            pending: Vec::new(),
            said: Said::default(),
        }
    }

    pub(super) fn start(&mut self) -> Vec<IdentityError> {
        let mut errors = Vec::new();
        if self.libvirt.is_none() {
            let (d, e) = LibvirtDir::open(&self.sources.libvirt_dir);
            self.libvirt = Some(Box::new(d));
            errors.extend(e.into_iter().map(IdentityError::from));
        }
        if let (Some(proc), None) = (&self.sources.proc, &self.kubevirt) {
            let proc = proc.clone();
            // Without a thread there is no scan; the other sources still name taps.
            self.kubevirt = Background::start("tapwatch-kubevirt", &self.notify, move |p| {
                let mut scanner = kubevirt::Scanner::new(&proc);
                loop {
                    let (changed, errors) = scanner.scan();
                    errors.into_iter().for_each(|e| p.report(e.into()));
                    if changed {
                        p.publish(scanner.table());
                    }
                    if !p.wait(kubevirt::PERIOD) {
                        return;
                    }
                }
            })
            .ok();
        }
        if let (Some(sock), None) = (&self.sources.ovsdb, &self.ovs) {
            let sock = sock.clone();
            self.ovs = Background::start("tapwatch-ovsdb", &self.notify, move |p| {
                ovsdb::follow(&sock.path, sock.explicit, p)
            })
            .ok();
        }
        if let (Some(dir), None) = (&self.sources.proxmox_dir, &self.proxmox) {
            self.proxmox = Some(PveDir::new(dir));
        }
        self.said.fresh(errors)
    }

    pub(super) fn lookup(&mut self, netns: u64, tap: &str) -> Option<VmInterface> {
        let own = netns == OWN_NETNS;
        let mut parts = Parts {
            kubevirt: self
                .kubevirt
                .as_ref()
                .and_then(|k| k.table().get(&(netns, tap.to_string())).cloned()),
            ..Parts::default()
        };
        // OVS ports and Proxmox's taps are the host's; libvirt's directory is tapwatch's.
        if own {
            parts.libvirt = self.libvirt.as_ref().and_then(|d| d.lookup(tap));
            parts.ovs = self.ovs.as_ref().and_then(|o| o.table().get(tap).cloned());
            if let Some(p) = self.proxmox.as_mut() {
                let (nic, error) = p.lookup(tap);
                parts.proxmox = nic;
                self.pending.extend(error.map(IdentityError::from));
            }
        }
        merge(tap, parts)
    }

    pub(super) async fn changed(&mut self) -> Vec<IdentityError> {
        let Self {
            libvirt, notify, ..
        } = self;
        let libvirt = async {
            match libvirt.as_mut() {
                Some(d) => d.changed().await,
                None => std::future::pending().await,
            }
        };
        let errors = tokio::select! {
            errors = libvirt => errors,
            _ = notify.notified() => Vec::new(),
        };
        let errors = errors.into_iter().map(IdentityError::from).collect();
        self.collect(errors)
    }

    pub(super) fn retry(&mut self) -> Vec<IdentityError> {
        let mut errors: Vec<IdentityError> = match self.libvirt.as_mut() {
            Some(d) => d.retry().into_iter().map(IdentityError::from).collect(),
            None => Vec::new(),
        };
        if let Some(p) = self.proxmox.as_mut() {
            // What changed shows in the lookups of this interval.
            errors.extend(p.poll().1.into_iter().map(IdentityError::from));
        }
        self.collect(errors)
    }

    /// `errors` with what the sources' threads and the lookups met, each said once.
    fn collect(&mut self, mut errors: Vec<IdentityError>) -> Vec<IdentityError> {
        errors.append(&mut self.pending);
        if let Some(k) = &self.kubevirt {
            errors.extend(k.take_errors());
        }
        if let Some(o) = &self.ovs {
            errors.extend(o.take_errors());
        }
        self.said.fresh(errors)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::identity::SourceKind;

    fn fixtures(dir: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir)
    }

    /// The host's sources name the host's taps, and only those: a pod's `tap100i0` is not
    /// Proxmox's VM 100, a pod's `tap4f1c2a9e-07` not the host's libvirt domain.
    #[test]
    fn host_sources_name_host_taps_only() {
        let mut h = HostIdentities::new(&HostSources {
            proxmox_dir: Some(fixtures("proxmox")),
            ..HostSources::libvirt(&fixtures("libvirt"))
        });
        h.start();
        let nova = h.lookup(OWN_NETNS, "tap4f1c2a9e-07").unwrap();
        assert_eq!(nova.sources, [SourceKind::Libvirt]);
        assert_eq!(nova.display_name(), "web-frontend-3");
        let pve = h.lookup(OWN_NETNS, "tap100i0").unwrap();
        assert_eq!(pve.sources, [SourceKind::Proxmox]);
        assert_eq!(pve.display_name(), "db-01");
        let pod = 4_026_532_999;
        assert_eq!(h.lookup(pod, "tap100i0"), None);
        assert_eq!(h.lookup(pod, "tap4f1c2a9e-07"), None);
        assert_eq!(h.lookup(OWN_NETNS, "tap0"), None);
    }
}
