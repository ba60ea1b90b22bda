//! The scan against a made-up `/proc`: a directory per process with its `comm`, namespace
//! files (plain files: their inodes tell them apart as the kernel's do) and `root`.

use std::{fs, os::unix::fs::symlink};

use super::*;

struct FakeProc(PathBuf);

impl Drop for FakeProc {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn status_xml(domain: &str, tap: &str) -> String {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/libvirt-status/eth-managed.xml");
    fs::read_to_string(fixture)
        .unwrap()
        .replace(
            "<name>eth-managed</name>",
            &format!("<name>{domain}</name>"),
        )
        .replace(
            "<target dev='tapmanaged-01'/>",
            &format!("<target dev='{tap}' managed='no'/>"),
        )
}

impl FakeProc {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tapwatch-proc-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("self/ns")).unwrap();
        fs::write(dir.join("self/ns/mnt"), "").unwrap();
        fs::write(dir.join("self/ns/net"), "").unwrap();
        Self(dir)
    }

    /// A process: its own namespaces unless it shares tapwatch's.
    fn process(&self, pid: u32, comm: &str, own_mnt: bool, own_net: bool) -> PathBuf {
        let p = self.0.join(pid.to_string());
        fs::create_dir_all(p.join("ns")).unwrap();
        fs::create_dir_all(p.join("root")).unwrap();
        fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        for (ns, own) in [("mnt", own_mnt), ("net", own_net)] {
            match own {
                true => fs::hard_link(self.0.join("self/ns").join(ns), p.join("ns").join(ns)),
                false => fs::write(p.join("ns").join(ns), ""),
            }
            .unwrap();
        }
        p.join("root")
    }

    fn file(&self, root: &Path, dir: &str, domain: &str, tap: &str) {
        let d = root.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{domain}.xml")), status_xml(domain, tap)).unwrap();
    }
}

fn netns_of(proc: &FakeProc, pid: u32) -> u64 {
    ns_inode(&proc.0.join(format!("{pid}/ns/net"))).unwrap()
}

#[test]
fn pods_in_both_modes_keyed_by_namespace() {
    let proc = FakeProc::new("modes");
    let a = proc.process(100, "qemu-kvm", false, false);
    proc.file(&a, STATUS_DIRS[0], "default_vmi-a", "tap0");
    let b = proc.process(200, "qemu-system-x86", false, false);
    proc.file(&b, STATUS_DIRS[1], "prod_vmi-b", "tap0");
    // Not QEMU, or a QEMU of tapwatch's own mount namespace (the host's libvirt).
    let c = proc.process(300, "virt-launcher", false, false);
    proc.file(&c, STATUS_DIRS[0], "default_not-qemu", "tap0");
    let d = proc.process(400, "qemu-kvm", true, true);
    proc.file(&d, STATUS_DIRS[1], "instance-00000001", "tap1234");

    let mut s = Scanner::new(&proc.0);
    let (changed, errors) = s.scan();
    assert!(changed && errors.is_empty(), "{errors:?}");
    let t = s.table();
    assert_eq!(t.len(), 2, "{:?}", t.keys());
    let (vm, vmi) = &t[&(netns_of(&proc, 100), "tap0".to_string())];
    assert_eq!(
        (vm.domain.as_str(), vmi.qualified()),
        ("default_vmi-a", "default/vmi-a")
    );
    assert_eq!((vm.managed, vmi.qemu_pid()), (Some(false), 100));
    let (_, vmi) = &t[&(netns_of(&proc, 200), "tap0".to_string())];
    assert_eq!(vmi.qualified(), "prod/vmi-b");
    assert!(!t.contains_key(&(OWN_NETNS, "tap0".to_string())));

    // Nothing changed: nothing read again, nothing said.
    let (changed, errors) = s.scan();
    assert!(!changed && errors.is_empty());
    // The pod went.
    fs::remove_dir_all(proc.0.join("200")).unwrap();
    assert!(s.scan().0);
    assert_eq!(s.table().len(), 1);
    // Its file changed (the VMI migrated in and libvirt rewrote it).
    proc.file(&a, STATUS_DIRS[0], "default_vmi-a", "tap1");
    assert!(s.scan().0);
    assert!(s
        .table()
        .contains_key(&(netns_of(&proc, 100), "tap1".to_string())));
}

/// A QEMU sharing tapwatch's network namespace but not its mount namespace (tapwatch in a
/// container with the host's network): its taps are the host's.
#[test]
fn own_network_namespace_is_own_netns() {
    let proc = FakeProc::new("ownnet");
    let r = proc.process(10, "qemu-kvm", false, true);
    proc.file(&r, STATUS_DIRS[1], "instance-0000000a", "tapabc");
    let mut s = Scanner::new(&proc.0);
    s.scan();
    assert!(s.table().contains_key(&(OWN_NETNS, "tapabc".to_string())));
}

/// The pod's symlinks resolve inside the pod: an absolute `/var/run` → `/run` finds the
/// pod's own `/run`, and a status file that is a symlink to a host file is not read.
#[test]
fn symlinks_stay_inside_the_pod() {
    let proc = FakeProc::new("links");
    let root = proc.process(7, "qemu-kvm", false, false);
    fs::create_dir_all(root.join("var")).unwrap();
    symlink("/run", root.join("var/run")).unwrap();
    proc.file(&root, "run/libvirt/qemu/run", "default_vmi-l", "tap0");
    let hostile = root.join("run/libvirt/qemu");
    let secret = proc.0.join("host-secret.xml");
    fs::write(&secret, status_xml("host_secret", "tapsecret")).unwrap();
    symlink(&secret, hostile.join("escape.xml")).unwrap();
    let mut s = Scanner::new(&proc.0);
    let (_, errors) = s.scan();
    assert!(errors.is_empty(), "{errors:?}");
    let t = s.table();
    let names: Vec<&str> = t.values().map(|(_, v)| v.qualified()).collect();
    assert_eq!(names, ["default/vmi-l"]);
}

#[test]
fn bad_and_huge_files_are_reported_once() {
    let proc = FakeProc::new("bad");
    let root = proc.process(8, "qemu-kvm", false, false);
    let d = root.join(STATUS_DIRS[0]);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("a_broken.xml"), "<domstatus><domain>").unwrap();
    let f = fs::File::create(d.join("b_huge.xml")).unwrap();
    f.set_len(MAX_STATUS_FILE + 1).unwrap();
    let mut s = Scanner::new(&proc.0);
    let (_, errors) = s.scan();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(s.table().is_empty());
    // Unchanged files are not read again, so not reported again.
    assert!(s.scan().1.is_empty());
}

#[test]
fn process_names() {
    assert_eq!(pid_of(OsStr::new("123")), Some(123));
    for not in ["self", "", "12a", "99999999999"] {
        assert_eq!(pid_of(OsStr::new(not)), None);
    }
}

/// The real `/proc`, as any user: no QEMU here, nothing found, nothing kept.
#[test]
fn the_real_proc() {
    let mut s = Scanner::new(Path::new(PROC));
    s.scan();
    assert!(s.pods.len() < MAX_QEMU);
}
