use super::*;
use std::sync::Arc;

use crate::{
    report::pipeline::Writer,
    verdict::{fixtures::*, Engine, EngineConfig},
};

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tw-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(dir: &Path, keep: usize) -> RecorderOptions {
    RecorderOptions {
        dir: dir.to_path_buf(),
        max_bundle_bytes: 1 << 20,
        max_total_bytes: 100 << 20,
        keep,
    }
}

/// Plays `recs` through a pipeline whose only output is a recorder of `o`; the
/// pipeline (whose registry the recorder reads) with it.
fn play(o: RecorderOptions, recs: &[Record]) -> (Recorder, Arc<Pipeline>) {
    let p = Pipeline::new(Engine::new(EngineConfig::default()), Vec::new());
    let rec = Recorder::new(o, Arc::downgrade(&p)).unwrap();
    let (w, pusher) = Writer::spawn("recorder", rec, |_| {}).unwrap();
    p.add_output(pusher);
    for r in recs {
        p.emit(r);
    }
    (w.close(Duration::from_secs(30)).unwrap(), p)
}

/// A fixture frame with its bytes, as the datapath reports it: `analyze` reads the
/// frames back from frames.pcapng.
fn real(ms: i64, kind: &'static str, dst: crate::model::mac::MacAddr) -> Record {
    use crate::frames;
    let mut r = frame(ms, "tapA", "from_vm", kind, dst);
    if let Record::Frame(f) = &mut r {
        let ip = |d| std::net::Ipv4Addr::new(10, 65, 0, d);
        f.data = match kind {
            "rarp" => frames::rarp_announce(GUEST, None),
            _ => frames::udp(GUEST, dst, ip(2), ip(1), 98),
        };
        f.len = f.data.len() as u32;
        f.dst_mismatch = kind == "dst_mismatch";
    }
    r
}

/// Two blackouts of one tap, an hour apart: two bundles, each with the MAC change and
/// RARPs that came before it, each read back by `analyze` to the same blackout.
#[test]
fn a_bundle_per_blackout_that_analyze_reads() {
    let dir = scratch("two");
    let _c = Cleanup(dir.clone());
    let mut recs = vec![
        attached(0, "tapA", OLD, "routed"),
        Record::MacChange {
            ts: at(100),
            ifname: "tapA".into(),
            old_mac: Some(OLD),
            new_mac: Some(NEW),
        },
    ];
    recs.extend((0..5).map(|i| real(200 + i * 50, "rarp", BCAST)));
    recs.push(real(500, "dst_mismatch", OLD));
    recs.push(real(700, "dst_mismatch", OLD));
    // Counted while the stale frames were sent, as the interval's stats records do.
    recs.push(stats(800, "tapA", 8, 2));
    recs.push(real(20_410, "dst_match", NEW));
    recs.push(stats(20_420, "tapA", 10, 2));
    recs.push(stats(31_000, "tapA", 20, 2));
    let hour = 3_600_000;
    recs.push(Record::MacChange {
        ts: at(hour),
        ifname: "tapA".into(),
        old_mac: Some(NEW),
        new_mac: Some(OLD),
    });
    recs.push(real(hour + 300, "dst_mismatch", NEW));
    recs.push(stats(hour + 1000, "tapA", 25, 3));
    recs.push(real(hour + 5300, "dst_match", OLD));
    recs.push(stats(hour + 16_000, "tapA", 30, 3));
    let (r, _pipeline) = play(opts(&dir, 10), &recs);
    let bundles: Vec<PathBuf> = r.bundles().map(Path::to_path_buf).collect();
    assert_eq!(bundles.len(), 2, "{bundles:?}");
    let name = bundles[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        name.starts_with("blackout-") && name.ends_with("-tapA"),
        "{name}"
    );
    for (b, want) in bundles.iter().zip([19_910, 5000]) {
        let mut verdicts = Vec::new();
        let a = crate::offline::analyze_path(b, None, &mut |r| {
            if let Record::Verdict { fields, .. } = r {
                verdicts.push(fields.clone());
            }
            Ok(())
        })
        .unwrap();
        assert!(a.notes.is_empty(), "{:?}", a.notes);
        let Some(Record::Summary { taps, .. }) = a.summary else {
            panic!("no summary in {}", b.display())
        };
        let v = taps[0].verdict.as_ref().unwrap();
        assert_eq!((v.state, v.blackout_ms), (State::Recovered, Some(want)));
        let summary = std::fs::read_to_string(b.join("summary.md")).unwrap();
        assert!(summary.contains("RECOVERED"), "{summary}");
    }
    // The first one has what led up to it: the MAC change and QEMU's RARPs.
    let events = std::fs::read_to_string(bundles[0].join("events.ndjson")).unwrap();
    assert_eq!(events.matches("\"kind\":\"rarp\"").count(), 5);
    assert!(events.contains("\"type\":\"mac_change\""));
}

/// Past `keep`, the oldest bundles go; bundles of an earlier run count too; nothing
/// else in the directory is touched.
#[test]
fn old_bundles_are_rotated_out() {
    let dir = scratch("rot");
    let _c = Cleanup(dir.clone());
    std::fs::create_dir_all(dir.join("blackout-20000101T000000.000Z-old")).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let mut recs = vec![attached(0, "tapA", OLD, "routed")];
    for i in 0..3 {
        let t0 = i * 100_000;
        let (from, to) = if i % 2 == 0 { (OLD, NEW) } else { (NEW, OLD) };
        recs.push(Record::MacChange {
            ts: at(t0 + 10),
            ifname: "tapA".into(),
            old_mac: Some(from),
            new_mac: Some(to),
        });
        recs.push(frame(t0 + 100, "tapA", "from_vm", "dst_mismatch", from));
        recs.push(frame(t0 + 200, "tapA", "from_vm", "dst_match", to));
        recs.push(stats(t0 + 20_000, "tapA", 3, 1));
    }
    let (r, _pipeline) = play(opts(&dir, 2), &recs);
    assert_eq!(r.bundles().count(), 2);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(!left.iter().any(|n| n.ends_with("-old")), "{left:?}");
    assert!(left.contains(&"notes.txt".to_string()));
    assert!(left.contains(&SPARE.to_string()));
}

/// A blackout still going when the run ends gets its bundle closed, not lost.
#[test]
fn an_open_blackout_is_closed_at_the_end() {
    let dir = scratch("open");
    let _c = Cleanup(dir.clone());
    let recs = vec![
        attached(0, "tapA", NEW, "routed"),
        frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
        stats(1000, "tapA", 1, 1),
    ];
    let (r, _pipeline) = play(opts(&dir, 5), &recs);
    assert_eq!(r.bundles().count(), 0);
    r.finish_all();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != SPARE)
        .collect();
    assert_eq!(entries.len(), 1);
    let summary = std::fs::read_to_string(entries[0].path().join("summary.md")).unwrap();
    assert!(summary.contains("BLACKOUT"), "{summary}");
}

/// A bundle whose reports cannot be written (here something stands where host.json
/// goes) still takes room: the rotation counts it, by number and by bytes, and removes
/// it like any other.
#[test]
fn an_unfinished_bundle_counts_for_the_rotation() {
    let dir = scratch("unfinished");
    let _c = Cleanup(dir.clone());
    let recs = vec![
        attached(0, "tapA", NEW, "routed"),
        frame(100, "tapA", "from_vm", "dst_mismatch", OLD),
        stats(1000, "tapA", 1, 1),
    ];
    let (mut r, _pipeline) = play(opts(&dir, 5), &recs);
    let b = r.open["tapA"].bundle.dir().to_path_buf();
    std::fs::create_dir(b.join("host.json")).unwrap();
    r.finish("tapA");
    assert_eq!(r.bundles().collect::<Vec<_>>(), [b.as_path()]);
    let size = r.done[0].1;
    assert!(size > 0, "its events count");
    assert!(!b.join("host.json.tmp").exists());
    r.opts.max_total_bytes = size - 1;
    r.rotate();
    assert_eq!(r.bundles().count(), 0);
    assert!(!b.exists());
    // The room kept for reports is the recorder's own, never rotated.
    assert!(dir.join(".reserve").exists());
}

#[test]
fn a_directory_others_can_write_is_refused() {
    let dir = scratch("open-to-all");
    let _c = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Recorder::new(opts(&dir, 5), Weak::new())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("chmod go-w"), "{err}");
}
