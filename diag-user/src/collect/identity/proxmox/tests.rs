use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/proxmox")
}

fn mac(s: &str) -> Option<MacAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn tap_names() {
    assert_eq!(tap_vmid("tap100i0"), Some((100, 0)));
    assert_eq!(tap_vmid("tap123456i12"), Some((123456, 12)));
    for not in [
        "tap100",
        "tapi0",
        "tap100i",
        "tap10xi0",
        "vnet0",
        "tap4f1c2a9e-07",
        "fwbr100i0",
    ] {
        assert_eq!(tap_vmid(not), None, "{not}");
    }
    assert_eq!(tap_vmid("tap99999999999i0"), None);
}

/// Only the main section counts: a snapshot's `[name]` section (and `[PENDING]`) describe
/// the VM as it was or will be.
#[test]
fn the_main_section_only() {
    let text = std::fs::read_to_string(fixtures().join("nodes/pve1/qemu-server/100.conf")).unwrap();
    let vm = parse_config(&text);
    assert_eq!(vm.name.as_deref(), Some("db-01"));
    assert_eq!(vm.nets.len(), 2, "{vm:?}");
    assert_eq!(vm.nets[&0].mac, mac("bc:24:11:5e:7a:01"));
    assert_eq!(vm.nets[&0].bridge.as_deref(), Some("vmbr0"));
    assert_eq!(vm.nets[&1].mac, mac("bc:24:11:5e:7a:02"));
    let pending =
        std::fs::read_to_string(fixtures().join("nodes/pve1/qemu-server/101.conf")).unwrap();
    let vm = parse_config(&pending);
    assert_eq!(vm.name, None);
    assert_eq!(vm.nets[&0].mac, mac("bc:24:11:3c:4d:5e"));
}

#[test]
fn nic_forms() {
    let vm = parse_config(
        "name: x\nnet0: model=virtio,macaddr=BC:24:11:7E:57:02,bridge=vmbr0\n\
         net3: vmxnet3=bc:24:11:00:00:03\nnet4: virtio=not-a-mac,bridge=vmbr4\nnetx: junk\n\
         net5\n",
    );
    assert_eq!(vm.nets[&0].mac, mac("bc:24:11:7e:57:02"));
    assert_eq!(vm.nets[&3].mac, mac("bc:24:11:00:00:03"));
    assert_eq!(vm.nets[&3].bridge, None);
    assert_eq!(vm.nets[&4].mac, None);
    assert_eq!(vm.nets.len(), 3);
    assert_eq!(
        nic(7, 0, &vm),
        Some(ProxmoxNic {
            vmid: 7,
            name: Some("x".into()),
            net: "net0".into(),
            mac: mac("bc:24:11:7e:57:02"),
            bridge: Some("vmbr0".into()),
        })
    );
    assert_eq!(nic(7, 1, &vm), None);
}

/// A VMID's file is found in any node's directory: a VM migrating in still has its file
/// in the source node's.
#[test]
fn lookup_by_tap_in_any_node() {
    let mut d = PveDir::new(&fixtures());
    let (db, e) = d.lookup("tap100i1");
    assert!(e.is_none());
    let db = db.unwrap();
    assert_eq!(
        (db.vmid, db.name.as_deref(), db.net.as_str()),
        (100, Some("db-01"), "net1")
    );
    let (web, _) = d.lookup("tap102i0");
    assert_eq!(web.unwrap().name.as_deref(), Some("web-7"));
    assert_eq!(d.lookup("tap100i2").0, None, "net2 is only in a snapshot");
    assert_eq!(d.lookup("tap999i0").0, None);
    assert_eq!(d.lookup("vnet0").0, None);
    // The VMIDs asked for are remembered (a tap name only), nothing else.
    assert_eq!(d.cache.len(), 3);
}

#[test]
fn follows_changes_when_polled() {
    let dir = std::env::temp_dir().join(format!("tapwatch-pve-{}", std::process::id()));
    let conf = dir.join("qemu-server");
    std::fs::create_dir_all(&conf).unwrap();
    let file = conf.join("200.conf");
    std::fs::write(
        &file,
        "name: before\nnet0: virtio=BC:24:11:00:00:01,bridge=vmbr0\n",
    )
    .unwrap();
    let mut d = PveDir::new(&dir);
    assert_eq!(
        d.lookup("tap200i0").0.unwrap().name.as_deref(),
        Some("before")
    );
    std::fs::write(
        &file,
        "name: after-rename\nnet0: virtio=BC:24:11:00:00:01,bridge=vmbr0\n",
    )
    .unwrap();
    // Not before the poll is due.
    assert!(!d.poll().0);
    assert_eq!(
        d.lookup("tap200i0").0.unwrap().name.as_deref(),
        Some("before")
    );
    d.polled -= POLL;
    let (changed, errors) = d.poll();
    assert!(changed && errors.is_empty());
    assert_eq!(
        d.lookup("tap200i0").0.unwrap().name.as_deref(),
        Some("after-rename")
    );
    // The VM went (migrated away, destroyed): its file with it.
    std::fs::remove_file(&file).unwrap();
    d.polled -= POLL;
    assert!(d.poll().0);
    assert_eq!(d.lookup("tap200i0").0, None);
    // A file that appears later (a VM created after its tap was first seen) is read too.
    std::fs::write(&file, "name: new\nnet0: virtio=BC:24:11:00:00:02\n").unwrap();
    d.polled -= POLL;
    assert!(d.poll().0);
    assert_eq!(d.lookup("tap200i0").0.unwrap().name.as_deref(), Some("new"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_huge_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("tapwatch-pve-big-{}", std::process::id()));
    let conf = dir.join("qemu-server");
    std::fs::create_dir_all(&conf).unwrap();
    let f = std::fs::File::create(conf.join("300.conf")).unwrap();
    f.set_len(MAX_CONFIG + 10).unwrap();
    let mut d = PveDir::new(&dir);
    let (nic, e) = d.lookup("tap300i0");
    assert_eq!(nic, None);
    assert!(matches!(e, Some(ProxmoxError::TooLarge { .. })), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
