//! KubeVirt: each VMI's QEMU runs in its virt-launcher pod, with the pod's own mount and
//! network namespaces. Its libvirt status file is inside the pod
//! (`/var/run/libvirt/qemu/run/<domain>.xml` in KubeVirt's default non-root mode,
//! `/run/libvirt/qemu/<domain>.xml` in root mode), read here through the QEMU process's
//! root, and its taps (`tap0` in every pod) are in the pod's network namespace: what a file
//! says is keyed by that namespace (the inode of `/proc/<pid>/ns/net`) and the tap's name.
//!
//! QEMU processes are found by a scan of `/proc` every [`PERIOD`]: procfs raises no inotify
//! events, and the kernel's process-event connector needs the host's PID namespace and
//! CAP_NET_ADMIN and drops events under load, so a full scan would be needed to resync
//! anyway. A scan reads each process's `comm` (a few microseconds each: some tens of
//! milliseconds for 10,000 processes) and keeps nothing of the others; a status file is
//! read again only when its size or modification time changed.
//!
//! The pod is foreign ground: its files are opened with `openat2(RESOLVE_IN_ROOT)` below
//! the process's root, so a symlink in it (even an absolute one, or `/var/run` → `/run`)
//! resolves inside the pod and never reaches the host's files.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io::Read,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use super::libvirt::{parse_domain, LibvirtError, Limit, MAX_STATUS_FILE};
use crate::{
    model::identity::{KubevirtVmi, VmInterface},
    registry::OWN_NETNS,
};

pub const PROC: &str = "/proc";
/// How often `/proc` is scanned for QEMU processes.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The status directories, non-root mode's first, relative to the pod's root.
pub const STATUS_DIRS: [&str; 2] = ["var/run/libvirt/qemu/run", "run/libvirt/qemu"];
/// QEMU processes followed at most (a node runs a few hundred VMIs at most).
pub const MAX_QEMU: usize = 4096;
/// `*.xml` files read per status directory (a pod runs one domain).
pub const MAX_FILES: usize = 16;
/// Entries of a status directory looked at (libvirt keeps a few per domain there).
const MAX_ENTRIES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum KubevirtError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(
        "more than {MAX_QEMU} QEMU processes in other mount namespaces: the VMs of the others \
         are not named"
    )]
    TooMany,
    #[error(
        "cannot read KubeVirt pods' status files: openat2 is not available (Linux 5.6 or \
         later is needed)"
    )]
    NoOpenat2,
}

/// What the status files of all pods say, by (network namespace, tap).
pub type Table = HashMap<(u64, String), (VmInterface, KubevirtVmi)>;

/// A status file as last seen: name, size, modification time.
type Stamp = (Vec<u8>, u64, i64, i64);

/// One QEMU process in a pod, as last read.
struct Pod {
    netns: u64,
    stamps: Vec<Stamp>,
    ifaces: Vec<VmInterface>,
    /// The scan that last saw it.
    seen: u64,
}

/// The QEMU processes of other mount namespaces and what their status files say.
pub struct Scanner {
    proc: PathBuf,
    own_mnt: Option<u64>,
    own_net: Option<u64>,
    pods: HashMap<u32, Pod>,
    scans: u64,
}

impl Scanner {
    /// `proc` is `/proc` (another procfs mount in tests).
    pub fn new(proc: &Path) -> Self {
        Self {
            proc: proc.to_path_buf(),
            own_mnt: ns_inode(&proc.join("self/ns/mnt")),
            own_net: ns_inode(&proc.join("self/ns/net")),
            pods: HashMap::new(),
            scans: 0,
        }
    }

    /// Scans `/proc` once: whether what the table says changed, and what could not be read.
    pub fn scan(&mut self) -> (bool, Vec<KubevirtError>) {
        self.scans += 1;
        let mut errors = Vec::new();
        let mut changed = false;
        let Ok(entries) = std::fs::read_dir(&self.proc) else {
            return (false, errors);
        };
        for entry in entries.flatten() {
            let Some(pid) = pid_of(&entry.file_name()) else {
                continue;
            };
            match self.visit(pid, &mut errors) {
                Ok(c) => changed |= c,
                Err(e) => errors.push(e),
            }
        }
        let before = self.pods.len();
        let scans = self.scans;
        self.pods.retain(|_, p| p.seen == scans);
        changed |= self.pods.len() != before;
        (changed, errors)
    }

    /// One process: whether it is a QEMU of another mount namespace whose files changed;
    /// the files it could not read go to `errors`.
    fn visit(&mut self, pid: u32, errors: &mut Vec<KubevirtError>) -> Result<bool, KubevirtError> {
        let dir = self.proc.join(pid.to_string());
        if !is_qemu(&dir) {
            return Ok(false);
        }
        // Gone meanwhile, or not ours to look into.
        let (Some(mnt), Some(net)) = (ns_inode(&dir.join("ns/mnt")), ns_inode(&dir.join("ns/net")))
        else {
            return Ok(false);
        };
        // A QEMU of tapwatch's own mount namespace has its file in `--libvirt-dir`.
        if Some(mnt) == self.own_mnt {
            return Ok(false);
        }
        let netns = if Some(net) == self.own_net {
            OWN_NETNS
        } else {
            net
        };
        if !self.pods.contains_key(&pid) && self.pods.len() >= MAX_QEMU {
            return Err(KubevirtError::TooMany);
        }
        let root = open_root(&dir)?;
        let files = status_files(&root, &dir)?;
        let stamps: Vec<Stamp> = files.iter().map(|f| f.stamp.clone()).collect();
        if let Some(p) = self.pods.get_mut(&pid) {
            if p.netns == netns && p.stamps == stamps {
                p.seen = self.scans;
                return Ok(false);
            }
        }
        let mut ifaces = Vec::new();
        for f in files {
            match f.read().and_then(|xml| Ok(parse_domain(&xml, &f.path)?)) {
                Ok(i) => ifaces.extend(i),
                Err(e) => errors.push(e),
            }
        }
        let changed = self
            .pods
            .get(&pid)
            .is_none_or(|old| old.netns != netns || old.ifaces != ifaces);
        let pod = Pod {
            netns,
            stamps,
            ifaces,
            seen: self.scans,
        };
        self.pods.insert(pid, pod);
        Ok(changed)
    }

    /// Every pod's taps, keyed by (network namespace, tap).
    pub fn table(&self) -> Table {
        let mut pids: Vec<&u32> = self.pods.keys().collect();
        // The newest process last, so it wins a key two processes name (a pod's QEMU
        // replaced); pids grow until they wrap.
        pids.sort();
        let mut table = Table::new();
        for pid in pids {
            let pod = &self.pods[pid];
            for i in &pod.ifaces {
                let vmi = KubevirtVmi::of_domain(&i.domain, *pid);
                table.insert((pod.netns, i.tap.clone()), (i.clone(), vmi));
            }
        }
        table
    }
}

fn pid_of(name: &OsStr) -> Option<u32> {
    let b = name.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// `comm` is `qemu-kvm` (RHEL's build, which KubeVirt's images ship) or
/// `qemu-system-<arch>` (truncated to 15 bytes by the kernel).
fn is_qemu(dir: &Path) -> bool {
    let mut comm = [0u8; 32];
    let n = std::fs::File::open(dir.join("comm"))
        .and_then(|mut f| f.read(&mut comm))
        .unwrap_or(0);
    let comm = comm[..n].trim_ascii_end();
    comm == b"qemu-kvm" || comm.starts_with(b"qemu-system-")
}

/// The inode of a namespace file (`/proc/<pid>/ns/net`): which namespace it is.
pub fn ns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn read_error(path: PathBuf) -> impl FnOnce(rustix::io::Errno) -> KubevirtError {
    move |e| match e {
        rustix::io::Errno::NOSYS => KubevirtError::NoOpenat2,
        e => KubevirtError::Read {
            path,
            source: e.into(),
        },
    }
}

fn open_root(dir: &Path) -> Result<OwnedFd, KubevirtError> {
    let path = dir.join("root");
    rustix::fs::open(
        &path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(read_error(path))
}

/// One `*.xml` file of a status directory, opened.
struct StatusFile {
    path: PathBuf,
    fd: OwnedFd,
    stamp: Stamp,
}

impl StatusFile {
    fn read(&self) -> Result<String, KubevirtError> {
        if self.stamp.1 > MAX_STATUS_FILE {
            return Err(LibvirtError::Refused {
                path: self.path.clone(),
                limit: Limit::Size,
            }
            .into());
        }
        let mut f =
            std::fs::File::from(self.fd.try_clone().map_err(|source| KubevirtError::Read {
                path: self.path.clone(),
                source,
            })?);
        let mut s = String::new();
        // One byte more than allowed tells a file at the limit from one that grew.
        match (&mut f).take(MAX_STATUS_FILE + 1).read_to_string(&mut s) {
            Ok(_) if s.len() as u64 <= MAX_STATUS_FILE => Ok(s),
            Ok(_) => Err(LibvirtError::Refused {
                path: self.path.clone(),
                limit: Limit::Size,
            }
            .into()),
            Err(source) => Err(KubevirtError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// The regular `*.xml` files of the pod's status directories, at most [`MAX_FILES`] of
/// each, in name order.
fn status_files(root: &OwnedFd, dir: &Path) -> Result<Vec<StatusFile>, KubevirtError> {
    let mut out = Vec::new();
    for sub in STATUS_DIRS {
        let shown = dir.join("root").join(sub);
        let d = match rustix::fs::openat2(
            root,
            sub,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => continue,
            Err(e) => return Err(read_error(shown)(e)),
        };
        let mut names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(&d)
            .map_err(read_error(shown.clone()))?
            // A directory that keeps failing ends the listing too.
            .take(MAX_ENTRIES)
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n.ends_with(b".xml"))
            .take(MAX_FILES)
            .collect();
        names.sort();
        for name in names {
            let path = shown.join(OsStr::from_bytes(&name));
            // The name has no `/`: NOFOLLOW refuses a symlink in its place, NONBLOCK a
            // FIFO's wait.
            let Ok(fd) = rustix::fs::openat(
                &d,
                name.as_slice(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let st = rustix::fs::fstat(&fd).map_err(read_error(path.clone()))?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                continue;
            }
            let stamp = (
                name,
                st.st_size as u64,
                st.st_mtime,
                st.st_mtime_nsec as i64,
            );
            out.push(StatusFile { path, fd, stamp });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
