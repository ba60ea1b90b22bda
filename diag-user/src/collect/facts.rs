//! `tapwatch facts`: this host's facts and its VMs', read without watching anything.

use std::path::Path;

use super::{
    identity::libvirt::{scan_vms, LibvirtError},
    links,
};
use crate::model::{
    clock::Ts,
    facts::{Facts, InstancesDir, FACTS_VERSION},
    host::HostFacts,
};

/// Where Nova keeps instances' local disks by default.
pub const DEFAULT_INSTANCES_DIR: &str = "/var/lib/nova/instances";

/// File systems whose files other hosts see too: a VM whose disks are there keeps them
/// across a live migration.
const SHARED_FS: [&str; 13] = [
    "nfs",
    "nfs4",
    "ceph",
    "fuse.ceph-fuse",
    "glusterfs",
    "fuse.glusterfs",
    "gfs2",
    "ocfs2",
    "cifs",
    "smb3",
    "lustre",
    "gpfs",
    "beegfs",
];

/// This host's facts now: libvirt's status files in `libvirt_dir`, each tap's MAC as the
/// kernel has it, the instances directory's file system; the status files that could not
/// be read.
pub fn gather(libvirt_dir: &Path, instances_dir: &Path) -> (Facts, Vec<LibvirtError>) {
    let (mut vms, errors) = scan_vms(libvirt_dir);
    for iface in vms.iter_mut().flat_map(|v| v.interfaces.iter_mut()) {
        if let Some(link) = link_named(&iface.tap) {
            iface.tap_mac = link.mac;
            iface.mtu = link.mtu;
        }
    }
    let facts = Facts {
        tool: "tapwatch".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        facts: FACTS_VERSION,
        taken: Some(Ts(chrono::Utc::now())),
        host: HostFacts::gather(),
        instances_dir: instances(instances_dir),
        vms,
    };
    (facts, errors)
}

fn link_named(name: &str) -> Option<links::Link> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return None;
    }
    links::lookup(ifindex).ok().flatten()
}

fn instances(dir: &Path) -> Option<InstancesDir> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let real = std::fs::canonicalize(dir).ok()?;
    let fs_type = fs_type_of(&mountinfo, &real);
    Some(InstancesDir {
        path: dir.display().to_string(),
        shared: fs_type.as_deref().is_some_and(shared_fs),
        fs_type,
    })
}

/// Whether a file system of this type is shared between hosts.
pub fn shared_fs(fs_type: &str) -> bool {
    SHARED_FS.contains(&fs_type)
}

/// The type of the file system `path` is on: the mount with the longest mount point that
/// contains it, from `/proc/self/mountinfo`'s lines (`… mountpoint … - fstype source …`).
pub fn fs_type_of(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let point = fields.nth(4)?;
            let (_, after) = l.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            Some((unescape(point), fstype.to_string()))
        })
        .filter(|(point, _)| path.starts_with(point))
        .max_by_key(|(point, _)| point.len())
        .map(|(_, t)| t)
}

/// mountinfo escapes spaces, tabs, newlines and backslashes in octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_system_of_a_path() {
        let info = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 0:40 / /var/lib/nova/instances rw shared:20 - nfs4 nfs:/srv rw\n\
                    41 22 0:41 / /var/lib/nova/instances\\040old rw - xfs /dev/vdb rw\n";
        let t = |p: &str| fs_type_of(info, Path::new(p));
        assert_eq!(
            t("/var/lib/nova/instances/abc/disk").as_deref(),
            Some("nfs4")
        );
        assert_eq!(t("/var/lib/nova/instances old/x").as_deref(), Some("xfs"));
        assert_eq!(t("/etc").as_deref(), Some("ext4"));
        assert!(shared_fs("nfs4") && shared_fs("fuse.glusterfs") && !shared_fs("ext4"));
    }
}
