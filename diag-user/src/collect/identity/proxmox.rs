//! Proxmox VE: a VM's taps are `tap<VMID>i<N>` (NIC `net<N>`), its name and NIC MACs are in
//! `qemu-server/<VMID>.conf` under `/etc/pve`.
//!
//! `/etc/pve` is pmxcfs, a FUSE file system replicated across the cluster: a change made on
//! another node (a VM migrating here has its file moved into this node's directory when
//! the migration ends) raises no inotify event here, so inotify cannot be relied on. A
//! VMID's file is read when a tap of it is first looked up (a tap appears), and the files
//! of the VMIDs looked up are checked again every [`POLL`] (a `stat` each; read again when
//! changed). While a VM migrates in, its file is still in the source node's directory, so
//! every node's directory (`nodes/*/qemu-server/`) is searched, VMIDs being unique in a
//! cluster.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use crate::model::{identity::ProxmoxNic, mac::MacAddr};

pub const DEFAULT_DIR: &str = "/etc/pve";

/// How often the files of the VMIDs looked up are checked for changes.
pub const POLL: Duration = Duration::from_secs(10);
/// Real files are a few kilobytes, snapshots' sections included.
pub const MAX_CONFIG: u64 = 1 << 20;
/// Nodes of a cluster searched for a VMID's file (clusters have tens).
const MAX_NODES: usize = 1024;
/// VMIDs remembered; those of taps gone long ago are forgotten first.
const MAX_CACHED: usize = 8192;
/// A VMID not looked up for this long is forgotten (its taps went).
const FORGET: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ProxmoxError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_CONFIG} bytes, not a VM's configuration")]
    TooLarge { path: PathBuf },
}

/// `tap<VMID>i<N>`: the VMID and the NIC's index.
pub fn tap_vmid(tap: &str) -> Option<(u32, u32)> {
    let (vmid, n) = tap.strip_prefix("tap")?.split_once('i')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(vmid) || !digits(n) {
        return None;
    }
    Some((vmid.parse().ok()?, n.parse().ok()?))
}

/// The main section of a VM's configuration: what the VM is now (snapshots' sections,
/// `[name]` after it, describe it as it was).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    pub name: Option<String>,
    /// `net<N>` by N.
    pub nets: BTreeMap<u32, NetConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: Option<MacAddr>,
    pub bridge: Option<String>,
}

/// NIC models Proxmox writes as `<model>=<MAC>`.
const MODELS: [&str; 8] = [
    "virtio", "e1000", "e1000e", "rtl8139", "vmxnet3", "i82551", "i82557b", "i82559er",
];

pub fn parse_config(text: &str) -> VmConfig {
    let mut vm = VmConfig::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        // `#` lines are the VM's description.
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "name" if !value.is_empty() => vm.name = Some(value.to_string()),
            k => {
                if let Some(n) = k.strip_prefix("net").and_then(|n| n.parse().ok()) {
                    vm.nets.insert(n, parse_net(value));
                }
            }
        }
    }
    vm
}

/// `virtio=BC:24:11:5E:7A:01,bridge=vmbr0,firewall=1` (or `model=virtio,macaddr=…`).
fn parse_net(value: &str) -> NetConfig {
    let mut net = NetConfig::default();
    for (k, v) in value.split(',').filter_map(|kv| kv.split_once('=')) {
        let (k, v) = (k.trim(), v.trim());
        match k {
            "bridge" => net.bridge = Some(v.to_string()),
            "macaddr" => net.mac = v.parse().ok().or(net.mac),
            k if MODELS.contains(&k) => net.mac = v.parse().ok().or(net.mac),
            _ => {}
        }
    }
    net
}

/// The NIC of `tap<VMID>i<N>` as a VM's configuration describes it.
pub fn nic(vmid: u32, n: u32, vm: &VmConfig) -> Option<ProxmoxNic> {
    let net = vm.nets.get(&n)?;
    Some(ProxmoxNic {
        vmid,
        name: vm.name.clone(),
        net: format!("net{n}"),
        mac: net.mac,
        bridge: net.bridge.clone(),
    })
}

/// One VMID's file as last read.
struct Cached {
    /// Modification time and size when read; `None` when there was no file.
    stamp: Option<(SystemTime, u64)>,
    config: Option<VmConfig>,
    used: Instant,
}

/// The configurations of the VMIDs whose taps were looked up.
pub struct PveDir {
    dir: PathBuf,
    cache: HashMap<u32, Cached>,
    polled: Instant,
}

impl PveDir {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            cache: HashMap::new(),
            polled: Instant::now(),
        }
    }

    /// What Proxmox says of `tap`; its file is read the first time its VMID is asked for.
    pub fn lookup(&mut self, tap: &str) -> (Option<ProxmoxNic>, Option<ProxmoxError>) {
        let Some((vmid, n)) = tap_vmid(tap) else {
            return (None, None);
        };
        let mut error = None;
        if !self.cache.contains_key(&vmid) {
            if self.cache.len() >= MAX_CACHED {
                self.forget_oldest();
            }
            let (cached, e) = self.read(vmid);
            error = e;
            self.cache.insert(vmid, cached);
        }
        let c = self.cache.get_mut(&vmid).expect("just inserted");
        c.used = Instant::now();
        (c.config.as_ref().and_then(|vm| nic(vmid, n, vm)), error)
    }

    /// Every [`POLL`]: reads again the files that changed; whether any did, and the files
    /// that could not be read.
    pub fn poll(&mut self) -> (bool, Vec<ProxmoxError>) {
        if self.polled.elapsed() < POLL {
            return (false, Vec::new());
        }
        self.polled = Instant::now();
        self.cache.retain(|_, c| c.used.elapsed() < FORGET);
        let mut changed = false;
        let mut errors = Vec::new();
        let vmids: Vec<u32> = self.cache.keys().copied().collect();
        for vmid in vmids {
            let stamp = self.find(vmid).and_then(|p| stamp(&p));
            if stamp == self.cache[&vmid].stamp && stamp.is_some() {
                continue;
            }
            let (fresh, e) = self.read(vmid);
            errors.extend(e);
            let c = self.cache.get_mut(&vmid).expect("listed");
            changed |= fresh.config != c.config;
            (c.stamp, c.config) = (fresh.stamp, fresh.config);
        }
        (changed, errors)
    }

    fn forget_oldest(&mut self) {
        if let Some(&oldest) = self
            .cache
            .iter()
            .min_by_key(|(_, c)| c.used)
            .map(|(v, _)| v)
        {
            self.cache.remove(&oldest);
        }
    }

    /// The VMID's file: in any node's directory, else in this node's.
    fn find(&self, vmid: u32) -> Option<PathBuf> {
        let file = format!("{vmid}.conf");
        let nodes = std::fs::read_dir(self.dir.join("nodes"))
            .into_iter()
            .flatten();
        nodes
            .take(MAX_NODES)
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("qemu-server").join(&file))
            .chain(std::iter::once(self.dir.join("qemu-server").join(&file)))
            .find(|p| p.is_file())
    }

    fn read(&self, vmid: u32) -> (Cached, Option<ProxmoxError>) {
        let mut cached = Cached {
            stamp: None,
            config: None,
            used: Instant::now(),
        };
        let Some(path) = self.find(vmid) else {
            return (cached, None);
        };
        cached.stamp = stamp(&path);
        match super::read_bounded(&path, MAX_CONFIG) {
            Ok(Some(text)) => {
                cached.config = Some(parse_config(&text));
                (cached, None)
            }
            Ok(None) => (cached, Some(ProxmoxError::TooLarge { path })),
            // Gone between the search and the read: a VM migrating away.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (cached, None),
            Err(source) => (cached, Some(ProxmoxError::Read { path, source })),
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests;
