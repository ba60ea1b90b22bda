//! Identity from the sources that need a real system: libvirt status files inside
//! KubeVirt-style pods (a process of its own mount and network namespaces whose `comm` is
//! QEMU's), and a real `ovsdb-server` with its own database and socket. Needs root; every
//! process, namespace and file is gone when a test ends, failed or not.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use diag_user::{
    collect::identity::{
        kubevirt::{self, ns_inode},
        HostSources, Identities, IdentitySource, OvsdbSocket,
    },
    lab::netns::VmTap,
    model::identity::{SourceKind, VmInterface},
    registry::OWN_NETNS,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root");
}

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("tapwatch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A libvirt status file written by libvirtd, adapted to `domain` with a `managed='no'`
/// tap `tap` as KubeVirt's are.
fn status_file(domain: &str, tap: &str) -> String {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/libvirt-status/eth-managed.xml"
    );
    std::fs::read_to_string(fixture)
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

/// Waits for the sources to say something until `done` holds.
fn wait_until(
    ids: &mut Identities,
    rt: &tokio::runtime::Runtime,
    what: &str,
    mut done: impl FnMut(&mut Identities) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(ids) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("timed out waiting for {what}"));
        let _ = rt.block_on(async { tokio::time::timeout(left, ids.changed()).await });
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A process that looks like a virt-launcher pod's QEMU: its own mount and network
/// namespaces, a `/run` of its own holding the status file, `comm` `qemu-kvm`. Killed
/// (with `unshare`, which would kill it too) on drop.
struct Pod {
    unshare: Child,
    qemu: u32,
}

impl Pod {
    fn start(dir: &Path, status_dir: &str, domain: &str) -> Self {
        let qemu = dir.join("qemu-kvm");
        if !qemu.exists() {
            std::fs::copy("/bin/sleep", &qemu).unwrap();
        }
        let file = dir.join(format!("{domain}.xml"));
        std::fs::write(&file, status_file(domain, "tap0")).unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /{status_dir} && cp {file} /{status_dir}/ \
             && echo $$ && exec {qemu} 600",
            file = file.display(),
            qemu = qemu.display(),
        );
        let mut unshare = Command::new("unshare")
            .args([
                "--net",
                "--mount",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The pid comes once the pod's files are in place, just before the exec.
        let mut line = String::new();
        BufReader::new(unshare.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let qemu = line.trim().parse().unwrap_or_else(|_| {
            let _ = unshare.kill();
            panic!("the pod did not start: {line:?}")
        });
        Self { unshare, qemu }
    }

    fn netns(&self) -> u64 {
        ns_inode(Path::new(&format!("/proc/{}/ns/net", self.qemu))).unwrap()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // SAFETY: kill(2) of a process this test started.
        unsafe { libc::kill(self.qemu as i32, libc::SIGKILL) };
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn vmi(vm: &VmInterface) -> Option<&str> {
    Some(vm.kubevirt.as_ref()?.qualified())
}

/// KubeVirt's status file in both of its places, found through the QEMU process's root and
/// keyed by its network namespace: the pod's `tap0` names the VMI, the host's `tap0` (here
/// named by the host's own libvirt directory) stays the host's.
#[test]
fn kubevirt_pods_in_both_modes() {
    require_root();
    let dir = TempDir::new("kubevirt");
    let host_libvirt = dir.0.join("host-libvirt");
    std::fs::create_dir_all(&host_libvirt).unwrap();
    std::fs::write(
        host_libvirt.join("instance-00000001.xml"),
        status_file("instance-00000001", "tap0"),
    )
    .unwrap();
    let rt = runtime();
    for status_dir in ["var/run/libvirt/qemu/run", "run/libvirt/qemu"] {
        assert!(kubevirt::STATUS_DIRS.contains(&status_dir));
        let mut ids = Identities::from(&IdentitySource::Host(HostSources {
            proc: Some("/proc".into()),
            ..HostSources::libvirt(&host_libvirt)
        }));
        let _guard = rt.enter();
        assert!(ids.start().is_empty());
        let pod = Pod::start(&dir.0, status_dir, "default_vmi-a");
        let netns = pod.netns();
        assert_ne!(netns, ns_inode(Path::new("/proc/self/ns/net")).unwrap());
        wait_until(&mut ids, &rt, "the pod's identity", |ids| {
            ids.lookup(netns, "tap0").is_some()
        });
        let vm = ids.lookup(netns, "tap0").unwrap();
        assert_eq!(vmi(&vm), Some("default/vmi-a"), "{status_dir}: {vm:?}");
        assert_eq!(vm.sources, [SourceKind::Kubevirt]);
        assert_eq!(vm.display_name(), "default/vmi-a");
        assert_eq!(vm.kubevirt.as_ref().unwrap().qemu_pid(), pod.qemu);
        assert_eq!(
            (vm.domain.as_str(), vm.managed),
            ("default_vmi-a", Some(false))
        );
        let host = ids.lookup(OWN_NETNS, "tap0").unwrap();
        assert_eq!(
            (host.domain.as_str(), vmi(&host), host.sources.as_slice()),
            ("instance-00000001", None, [SourceKind::Libvirt].as_slice())
        );
        assert_eq!(ids.lookup(netns, "tap1"), None);
        // The pod goes: so does what it said.
        drop(pod);
        wait_until(&mut ids, &rt, "the pod's identity to go", |ids| {
            ids.lookup(netns, "tap0").is_none()
        });
    }
}

/// `tapwatch watch --netns PID` pointed at a pod's QEMU: it watches the pod's `tap0` from
/// the test's own namespace and names it by the VMI whose status file is in the pod.
#[test]
fn watching_a_pod_by_its_qemu_names_the_vmi() {
    require_root();
    let dir = TempDir::new("kubevirt-watch");
    let pod = Pod::start(&dir.0, "var/run/libvirt/qemu/run", "prod_vmi-b");
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", pod.qemu)).unwrap();
    // The pod's tap, made inside its namespace as virt-launcher makes it.
    let tap = diag_user::collect::setns::run_in(&ns, || {
        let tap = VmTap::open("tap0").unwrap();
        let up = Command::new("ip")
            .args(["link", "set", "tap0", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        tap
    })
    .unwrap();
    let mut tw = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        // --duration bounds the test if the identity never comes.
        .args(["watch", "--json", "--interval", "0.1", "--iface", "tap0"])
        .args(["--duration", "30"])
        .args(["--libvirt-dir", "/nonexistent", "--netns"])
        .arg(pod.qemu.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(tw.stdout.take().unwrap()).lines();
    let identity = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|v| v["type"] == "identity" && v["ifname"] == "tap0");
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(tw.id() as i32, libc::SIGINT) };
    let status = tw.wait().unwrap();
    drop(tap);
    let identity = identity.expect("no identity record for the pod's tap0");
    let vm = &identity["libvirt"];
    assert_eq!(vm["domain"], "prod_vmi-b", "{identity}");
    assert_eq!(vm["sources"], serde_json::json!(["kubevirt"]), "{identity}");
    assert_eq!(vm["kubevirt"]["namespace"], "prod", "{identity}");
    assert_eq!(vm["kubevirt"]["name"], "vmi-b", "{identity}");
    assert!(status.success(), "{status:?}");
}

/// `ovsdb-server` with a database of its own, killed on drop.
struct Ovsdb {
    dir: TempDir,
    server: Option<Child>,
}

impl Ovsdb {
    fn start() -> Self {
        let dir = TempDir::new("ovsdb");
        let status = Command::new("ovsdb-tool")
            .arg("create")
            .arg(dir.0.join("conf.db"))
            .arg("/usr/share/openvswitch/vswitch.ovsschema")
            .status()
            .expect("ovsdb-tool (Debian's openvswitch-common; scripts/setup.sh installs it)");
        assert!(status.success());
        let mut s = Self { dir, server: None };
        s.restart();
        s.vsctl(&["init"]);
        s
    }

    fn sock(&self) -> PathBuf {
        self.dir.0.join("db.sock")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server and waits until its socket accepts.
    fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.sock());
        let d = &self.dir.0;
        let server = Command::new("ovsdb-server")
            .arg(d.join("conf.db"))
            .arg(format!("--remote=punix:{}", self.sock().display()))
            .arg(format!("--unixctl={}", d.join("ctl").display()))
            .arg(format!("--log-file={}", d.join("log").display()))
            .arg("--no-chdir")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovsdb-server (Debian's openvswitch-switch)");
        self.server = Some(server);
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(self.sock()).is_err() {
            assert!(Instant::now() < deadline, "ovsdb-server did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn vsctl(&self, args: &[&str]) {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.sock().display()))
            .arg("--no-wait")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ovs-vsctl {args:?}: {out:?}");
    }
}

impl Drop for Ovsdb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn iface_id(ids: &mut Identities, tap: &str) -> Option<String> {
    ids.lookup(OWN_NETNS, tap)?.ovs?.iface_id
}

/// A port's `external_ids` as os-vif writes them name the VM; a change is followed as it is
/// made, and the server's restart is survived.
#[test]
fn ovs_external_ids_followed_across_a_restart() {
    require_root();
    let mut db = Ovsdb::start();
    db.vsctl(&[
        "add-br",
        "br-int",
        "--",
        "add-port",
        "br-int",
        "tapovs1",
        "--",
        "set",
        "Interface",
        "tapovs1",
        "type=internal",
        "external_ids:iface-id=4f1c2a9e-0711-4b7e-9d2c-1a2b3c4d5e6f",
        "external_ids:attached-mac=fa:16:3e:aa:bb:cc",
        "external_ids:vm-uuid=5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f",
        "external_ids:iface-status=active",
    ]);
    let rt = runtime();
    let _guard = rt.enter();
    let mut ids = Identities::from(&IdentitySource::Host(HostSources {
        ovsdb: Some(OvsdbSocket {
            path: db.sock(),
            explicit: true,
        }),
        ..HostSources::libvirt(&db.dir.0.join("no-libvirt"))
    }));
    assert!(ids.start().is_empty());
    wait_until(&mut ids, &rt, "the port's identity", |ids| {
        iface_id(ids, "tapovs1").is_some()
    });
    let vm = ids.lookup(OWN_NETNS, "tapovs1").unwrap();
    assert_eq!(vm.sources, [SourceKind::Ovs]);
    let ovs = vm.ovs.as_ref().unwrap();
    assert_eq!(ovs.attached_mac, Some("fa:16:3e:aa:bb:cc".parse().unwrap()));
    assert_eq!(ovs.iface_status.as_deref(), Some("active"));
    assert_eq!(vm.display_name(), "5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f");
    assert_eq!(ids.lookup(OWN_NETNS, "br-int"), None);

    // A change, as when the port is bound again.
    db.vsctl(&[
        "set",
        "Interface",
        "tapovs1",
        "external_ids:iface-id=port-2",
    ]);
    wait_until(&mut ids, &rt, "the changed port", |ids| {
        iface_id(ids, "tapovs1").as_deref() == Some("port-2")
    });

    // The server restarts; a change made afterwards arrives over the new connection.
    db.restart();
    db.vsctl(&[
        "set",
        "Interface",
        "tapovs1",
        "external_ids:iface-id=port-3",
    ]);
    wait_until(&mut ids, &rt, "the port after a restart", |ids| {
        iface_id(ids, "tapovs1").as_deref() == Some("port-3")
    });
    // A deleted port names no VM any more.
    db.vsctl(&["del-port", "br-int", "tapovs1"]);
    wait_until(&mut ids, &rt, "the port's deletion", |ids| {
        ids.lookup(OWN_NETNS, "tapovs1").is_none()
    });
}
