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
        na_flags: None,
        src_ip: (!arp).then(|| "10.65.0.2".into()),
        dst_ip: (!arp).then(|| "192.168.10.1".into()),
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

/// libvirt names the VM behind `tap` (Nova's display name, text tapwatch does not
/// control).
pub fn identity(ms: i64, tap: &str, name: &str) -> Record {
    Record::Identity {
        ts: at(ms),
        ifname: tap.into(),
        libvirt: Some(crate::model::identity::VmInterface {
            domain: "instance-0000002a".into(),
            nova_name: Some(name.into()),
            tap: tap.into(),
            guest_mac: Some(GUEST),
            iface_type: "ethernet".into(),
            ..Default::default()
        }),
    }
}

/// Names a guest's owner could give its VM in Nova: one that writes a line of its own
/// into a log, and one that talks to the terminal and turns the text around.
pub const NEWLINE_NAME: &str = "web-1\ntapwatch: web-1 (tap0) is RECOVERED: forged";
pub const TERMINAL_NAME: &str =
    "web-\u{1b}[2J\u{1b}]0;x\u{7}1\u{202e}gnp.exe\r\t\u{7f}\u{85}\u{9b}\u{2028}\u{2029}\u{2066}|#";

/// Fails unless every line of `out` is free of what a foreign name could use to forge
/// or hide output: control characters (a line's own end aside), bidi controls, line
/// and paragraph separators.
pub fn assert_inert(out: &str) {
    for (n, line) in out.split('\n').enumerate() {
        if let Some(c) = line.chars().find(|&c| {
            c.is_control()
                || matches!(
                    c,
                    '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                )
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        }) {
            panic!("line {n} holds {c:?}: {line:?}\n{out}");
        }
    }
}

/// An IPv6 frame record of `kind` from the guest (2001:db8::10, or its link-local for
/// neighbour discovery) or to it; `target`: a solicitation's or advertisement's.
pub fn frame6(
    ms: i64,
    tap: &str,
    dir: &'static str,
    kind: &'static str,
    dst: MacAddr,
    target: Option<&str>,
) -> Record {
    let Record::Frame(mut f) = frame(ms, tap, dir, kind, dst) else {
        unreachable!()
    };
    let nd = kind.contains("solicit") || kind.contains("advert") || kind == "unsolicited_na";
    f.sender_ip = None;
    f.src_ip = Some(
        if nd {
            "fe80::f816:3eff:feaa:bbcc"
        } else {
            "2001:db8::10"
        }
        .into(),
    );
    f.dst_ip = Some(if nd { "ff02::1" } else { "2001:db8:1::9" }.into());
    f.target_ip = target.map(str::to_string);
    f.dst_mismatch = nd && dst == OLD;
    Record::Frame(f)
}
