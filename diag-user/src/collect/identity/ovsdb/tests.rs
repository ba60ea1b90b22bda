use super::*;

#[test]
fn messages_back_to_back_and_split_anywhere() {
    let stream = br#"{"id":0,"result":{"a":"}{[\"x"}} {"method":"echo","params":[],"id":"echo"}
[1,[2]]"#;
    // Every split of the stream gives the same three messages.
    for cut in 0..stream.len() {
        let mut f = Framer::default();
        let mut got = f.push(&stream[..cut]).unwrap();
        got.extend(f.push(&stream[cut..]).unwrap());
        let got: Vec<Value> = got
            .iter()
            .map(|m| serde_json::from_slice(m).unwrap())
            .collect();
        assert_eq!(got.len(), 3, "cut at {cut}");
        assert_eq!(got[0]["result"]["a"], "}{[\"x");
        assert_eq!(got[1]["method"], "echo");
    }
}

#[test]
fn hostile_streams_are_bounded() {
    let mut f = Framer::default();
    assert_eq!(f.push(b"  garbage"), Err(FrameError::NotJson(b'g')));
    // An object that never ends stops at the limit, not at the memory's end.
    let mut f = Framer::default();
    f.push(b"{\"a\":\"").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut result = Ok(Vec::new());
    for _ in 0..(MAX_MESSAGE >> 20) + 1 {
        result = f.push(&chunk);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(FrameError::TooLarge));
    assert!(f.buf.capacity() <= 2 * MAX_MESSAGE);
    // Deep nesting is framed (serde_json then refuses it: its recursion limit).
    let mut f = Framer::default();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let msgs = f.push(deep.as_bytes()).unwrap();
    assert!(serde_json::from_slice::<Value>(&msgs[0]).is_err());
}

fn row(name: &str, ids: &[(&str, &str)]) -> Value {
    let pairs: Vec<Value> = ids.iter().map(|(k, v)| json!([k, v])).collect();
    json!({"name": name, "external_ids": ["map", pairs]})
}

#[test]
fn rows_follow_inserts_changes_and_deletes() {
    let mut rows = Interfaces::default();
    let initial = json!({"Interface": {
        "u1": {"new": row("tap4f1c2a9e-07", &[
            ("iface-id", "4f1c2a9e-0711-4b7e-9d2c-1a2b3c4d5e6f"),
            ("attached-mac", "fa:16:3e:aa:bb:cc"),
            ("vm-uuid", "5c2d9e3f-0a1b-4c2d-8e3f-4a5b6c7d8e9f"),
            ("iface-status", "active"),
            ("something-else", "x"),
        ])},
        "u2": {"new": row("br-int", &[])},
        "u3": {"new": row("vnet7", &[("vm-id", "0d9c"), ("attached-mac", "not a mac")])},
    }});
    assert!(rows.apply(&initial));
    let t = rows.table();
    assert_eq!(t.len(), 2, "br-int names no VM: {t:?}");
    let p = &t["tap4f1c2a9e-07"];
    assert_eq!(
        p.iface_id.as_deref(),
        Some("4f1c2a9e-0711-4b7e-9d2c-1a2b3c4d5e6f")
    );
    assert_eq!(p.attached_mac, Some("fa:16:3e:aa:bb:cc".parse().unwrap()));
    assert_eq!(p.iface_status.as_deref(), Some("active"));
    assert_eq!(t["vnet7"].vm_id.as_deref(), Some("0d9c"));
    assert_eq!(t["vnet7"].attached_mac, None);
    // A modification: `old` has the changed columns, `new` the row.
    let change = json!({"Interface": {"u1": {
        "old": {"external_ids": ["map", []]},
        "new": row("tap4f1c2a9e-07", &[("iface-id", "p2"), ("iface-status", "inactive")]),
    }}});
    assert!(rows.apply(&change));
    assert_eq!(
        rows.table()["tap4f1c2a9e-07"].iface_id.as_deref(),
        Some("p2")
    );
    assert_eq!(rows.table()["tap4f1c2a9e-07"].vm_uuid, None);
    // The same again changes nothing; another table is not ours.
    assert!(!rows.apply(&change));
    assert!(!rows.apply(&json!({"Bridge": {"u1": {}}})));
    // A deletion.
    assert!(rows.apply(&json!({"Interface": {"u1": {"old": {}}}})));
    assert!(!rows.table().contains_key("tap4f1c2a9e-07"));
}

#[test]
fn hostile_rows_are_bounded() {
    let mut rows = Interfaces::default();
    let long = "x".repeat(MAX_VALUE + 1);
    rows.apply(&json!({"Interface": {
        "u1": {"new": row("tapA", &[("iface-id", &long), ("vm-uuid", "v")])},
        "u2": {"new": {"name": 7, "external_ids": {"not": "a map"}}},
        "u3": {"new": {"name": "tapB", "external_ids": ["map", [["iface-id"], 5, ["a", "b", "c"]]]}},
    }}));
    let t = rows.table();
    assert_eq!(t["tapA"].iface_id, None);
    assert_eq!(t["tapA"].vm_uuid.as_deref(), Some("v"));
    assert_eq!(t.len(), 1);
    let mut many = serde_json::Map::new();
    for i in 0..MAX_ROWS + 10 {
        many.insert(
            format!("u{i}"),
            json!({"new": row(&format!("tap{i}"), &[("iface-id", "p")])}),
        );
    }
    let mut rows = Interfaces::default();
    rows.apply(&json!({"Interface": many}));
    assert!(rows.overflowed);
    assert_eq!(rows.table().len(), MAX_ROWS);
}

/// A socket named by the user and missing is said once; the standard one missing (no OVS
/// on this host) is not said at all.
#[test]
fn a_missing_socket() {
    use crate::collect::identity::{HostSources, Identities, IdentitySource, OvsdbSocket};
    let dir = std::env::temp_dir().join(format!("tapwatch-ovsdb-missing-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    for explicit in [true, false] {
        let mut ids = Identities::from(&IdentitySource::Host(HostSources {
            ovsdb: Some(OvsdbSocket {
                path: dir.join("db.sock"),
                explicit,
            }),
            ..HostSources::libvirt(&dir)
        }));
        ids.start();
        let mut said = Vec::new();
        // Past two retries.
        let deadline = std::time::Instant::now() + RETRY * 5 / 2;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let changed = rt.block_on(async { tokio::time::timeout(left, ids.changed()).await });
            said.extend(changed.unwrap_or_default().iter().map(|e| e.notice().1));
            said.extend(ids.retry().iter().map(|e| e.notice().1));
        }
        match explicit {
            true => assert_eq!(said.len(), 1, "{said:?}"),
            false => assert!(said.is_empty(), "{said:?}"),
        }
    }
}
