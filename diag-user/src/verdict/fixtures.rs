//! Records for the engine's tests and those of what reads it.

use chrono::{DateTime, Utc};

use crate::model::{clock::Ts, mac::MacAddr, FrameRecord, Record, TapRow};

pub const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
pub const OLD: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
pub const NEW: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);
pub const BCAST: MacAddr = MacAddr([0xff; 6]);

/// Time `ms` milliseconds into the test.
pub fn at(ms: i64) -> Ts {
    Ts(DateTime::<Utc>::from_timestamp_millis(1_790_000_000_000 + ms).unwrap())
}

/// A JSON name as the typed value it names.
pub fn named<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

pub fn attached(ms: i64, tap: &str, mac: MacAddr, mode: &'static str) -> Record {
    Record::Attached {
        ts: at(ms),
        ifname: tap.into(),
        ifindex: 7,
        mac: Some(mac),
        mode: named(mode),
        backend: crate::model::Backend::Ebpf,
        // As tapwatch 0.1 wrote it.
        datapath: None,
        appeared: false,
        mtu: Some(1500),
        master: None,
    }
}

pub fn frame(ms: i64, tap: &str, dir: &'static str, kind: &'static str, dst: MacAddr) -> Record {
    let arp = matches!(kind, "rarp" | "garp" | "arp_request" | "arp_reply");
    Record::Frame(FrameRecord {
        ts: at(ms),
        ifname: tap.into(),
        direction: named(dir),
        kind: named(kind),
        src_mac: GUEST,
        dst_mac: dst,
        sender_ip: arp.then(|| "10.65.0.2".into()),
        target_ip: arp.then(|| "10.65.0.1".into()),
        vlan: None,
        outer_vlan: None,
        dst_mismatch: false,
        len: 98,
        data: Vec::new(),
    })
}

pub fn stats(ms: i64, tap: &str, from_vm: u64, mismatch: u64) -> Record {
    let row = TapRow {
        ifname: tap.into(),
        from_vm_frames: from_vm,
        dst_mismatch_frames: mismatch,
        ..TapRow::default()
    };
    Record::Stats {
        ts: at(ms),
        taps: vec![row],
    }
}

/// A stats record with the datapath's mismatch window: open since `since` ms, or
/// closed.
pub fn stats_window(ms: i64, tap: &str, from_vm: u64, mismatch: u64, since: Option<i64>) -> Record {
    let Record::Stats { ts, mut taps } = stats(ms, tap, from_vm, mismatch) else {
        unreachable!()
    };
    taps[0].mismatch_since = Some(since.map(at));
    Record::Stats { ts, taps }
}

pub fn stale_mac_story(tap: &str, t0: i64) -> Vec<Record> {
    let mut v = vec![Record::MacChange {
        ts: at(t0 + 100),
        ifname: tap.into(),
        old_mac: Some(OLD),
        new_mac: Some(NEW),
    }];
    v.extend((0..5).map(|i| frame(t0 + 200 + i * 50, tap, "from_vm", "rarp", BCAST)));
    v.push(frame(t0 + 500, tap, "from_vm", "dst_mismatch", OLD));
    v.push(frame(t0 + 700, tap, "from_vm", "dst_mismatch", OLD));
    v.push(frame(t0 + 20_400, tap, "from_vm", "arp_request", BCAST));
    v.push(frame(t0 + 20_401, tap, "to_vm", "arp_reply", GUEST));
    v.push(frame(t0 + 20_410, tap, "from_vm", "dst_match", NEW));
    v
}
