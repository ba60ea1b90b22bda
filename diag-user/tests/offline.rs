//! What needs no kernel and no root: `tapwatch analyze` on hostile, huge, cut and cooked
//! inputs, and the command line's numbers. Runs as a normal user.

mod common;

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::Scratch;
use diag_user::{
    frames,
    model::clock::Ts,
    model::identity::VmInterface,
    model::mac::MacAddr,
    model::{Backend, Direction, FrameKind, FrameRecord, Mode, Record, TapRow},
    report::bundle::{Bundle, BundleOptions},
    report::pipeline::{Feed, Pipeline, Writer},
    verdict::{Engine, EngineConfig},
};
use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    DataLink,
};
use serde_json::Value;

const GUEST: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
const OLD: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
const NEW: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);

fn tw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tapwatch"))
}

/// Runs a command to its end; returns its output and its peak memory (KiB).
fn run_measured(cmd: &mut Command, limit: Duration) -> (Output, i64) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    let started = Instant::now();
    let pid = child.id() as libc::pid_t;
    let (status, rss) = loop {
        let mut st = 0;
        // SAFETY: wait4 on our own child with valid pointers.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut st, libc::WNOHANG, &mut ru) };
        if r == pid {
            break (st, ru.ru_maxrss);
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Reaped by wait4 above (for its rusage); this only settles the handle.
    let _ = child.wait();
    use std::os::unix::process::ExitStatusExt;
    (
        Output {
            status: std::process::ExitStatus::from_raw(status),
            stdout: o.join().unwrap(),
            stderr: e.join().unwrap(),
        },
        rss,
    )
}

fn summary_of(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| {
            panic!(
                "no summary; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn analyze_refuses_what_is_not_a_file() {
    let s = Scratch::new("nonfile");
    let fifo = s.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let zero = s.0.join("zero.pcap");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for (path, says) in [(&fifo, "a FIFO"), (&zero, "a character device")] {
        let (out, _) = run_measured(tw().arg("analyze").arg(path), Duration::from_secs(10));
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("not a regular file"),
            "{err}"
        );
    }
}

/// A 1 MB .tar.gz that expands to 1 GiB: refused in bounded memory, quickly.
#[test]
fn analyze_refuses_a_decompression_bomb() {
    let s = Scratch::new("bomb");
    let path = s.0.join("bundle.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            BufWriter::new(File::create(&path).unwrap()),
            flate2::Compression::best(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(1 << 30);
        h.set_mode(0o600);
        tar.append_data(
            &mut h,
            "b/events.ndjson",
            std::io::repeat(b' ').take(1 << 30),
        )
        .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 4 << 20, "{size} bytes");
    let (out, rss_kib) = run_measured(
        tw().args(["analyze", "--json"]).arg(&path),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expands to more than"), "{err}");
    // What analyzing a real bundle takes: the memory the binary needs anyway.
    let (_, base_kib) = run_measured(
        tw().args(["analyze", "--json"]).arg(fixture("bundle-v1")),
        Duration::from_secs(60),
    );
    assert!(
        rss_kib < base_kib + 64 * 1024,
        "peak memory {rss_kib} KiB, {base_kib} KiB for a small bundle"
    );
}

/// Writes a pcap of `frames` (Ethernet), `gap` apart from a fixed start.
fn write_pcap(path: &Path, frames: impl Iterator<Item = Vec<u8>>, gap: Duration) -> u64 {
    let mut w = PcapWriter::with_header(
        BufWriter::new(File::create(path).unwrap()),
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ts_correction: 0,
            ..PcapHeader::default()
        },
    )
    .unwrap();
    let t0 = Duration::from_secs(1_790_000_000);
    let mut n = 0;
    for (i, f) in frames.enumerate() {
        w.write_packet(&PcapPacket::new(t0 + gap * i as u32, f.len() as u32, &f))
            .unwrap();
        n += 1;
    }
    w.into_writer().flush().unwrap();
    n
}

fn ip(last: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 65, 0, last)
}

/// The stale-MAC story as the VM's side of a `tcpdump -i tapX` capture: QEMU's RARP, frames
/// to the old MAC, a re-ARP, frames to the new one. The host sent nothing in it.
fn vm_story(stale: usize, fresh: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let to = move |mac| frames::udp(GUEST, mac, ip(2), ip(9), len);
    std::iter::once(frames::rarp_announce(GUEST, None))
        .chain(std::iter::repeat_with(move || to(OLD)).take(stale))
        .chain(std::iter::once(frames::arp_request(GUEST, ip(2), ip(1))))
        .chain(std::iter::repeat_with(move || to(NEW)).take(fresh))
}

/// A 76 MB capture: the verdict and exact counts, in bounded memory.
#[test]
fn analyze_streams_a_large_capture() {
    let s = Scratch::new("large");
    let path = s.0.join("big.pcap");
    let (stale, fresh) = (60_000, 60_000);
    write_pcap(
        &path,
        vm_story(stale, fresh, 630),
        Duration::from_micros(250),
    );
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 75_000_000, "{size}");
    // The same story at a hundredth of the size: what memory the binary needs anyway.
    let small = s.0.join("small.pcap");
    write_pcap(&small, vm_story(600, 600, 630), Duration::from_micros(250));
    let analyze = |p: &Path| {
        run_measured(
            tw().args(["analyze", "--json", "--tap-mac", &NEW.to_string()])
                .arg(p),
            Duration::from_secs(300),
        )
    };
    let (_, base_kib) = analyze(&small);
    let (out, rss_kib) = analyze(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = &summary_of(&out)["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(row["dst_mismatch_frames"], stale as u64);
    assert_eq!(row["from_vm_frames"], (stale + fresh + 2) as u64);
    assert_eq!(row["rarp_frames"], 1);
    // 60,000 frames 250 us apart.
    let ms = row["blackout_ms"].as_u64().unwrap();
    assert!((15_000..15_002).contains(&ms), "{ms}");
    assert!(
        rss_kib < base_kib + 16 * 1024,
        "peak memory {rss_kib} KiB for {size} bytes, {base_kib} KiB for a hundredth of it"
    );
}

/// With the host silent, the tap's MAC is inferred from where the VM's traffic settled,
/// and the analysis says how sure it is.
#[test]
fn the_tap_mac_inference_says_how_sure_it_is() {
    let s = Scratch::new("infer");
    let moved = s.0.join("moved.pcap");
    write_pcap(&moved, vm_story(50, 20, 98), Duration::from_millis(20));
    let out = tw()
        .args(["analyze", "--json"])
        .arg(&moved)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{NEW} is taken as the tap's MAC")),
        "{err}"
    );
    assert!(err.contains("fairly sure"), "{err}");
    let row = &summary_of(&out)["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(row["dst_mismatch_frames"], 50);
    let d = row["diagnosis"].as_str().unwrap();
    assert!(d.contains(&format!("the VM sent to {OLD}")), "{d}");

    // Only ever the one destination: said to be unsure, and how to be sure.
    let stuck = s.0.join("stuck.pcap");
    write_pcap(&stuck, vm_story(50, 0, 98), Duration::from_millis(20));
    let out = tw()
        .args(["analyze", "--json"])
        .arg(&stuck)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not sure") && err.contains("--tap-mac"),
        "{err}"
    );
    let out = tw()
        .args(["analyze", "--json", "--tap-mac", &NEW.to_string()])
        .arg(&stuck)
        .output()
        .unwrap();
    assert_eq!(summary_of(&out)["taps"][0]["state"], "BLACKOUT");
}

/// `tcpdump -i any` keeps the kernel's verdict but not the destination MAC: the diagnosis
/// never names 00:00:00:00:00:00.
#[test]
fn cooked_captures_never_name_an_unknown_mac() {
    let s = Scratch::new("cooked");
    let path = s.0.join("any.pcap");
    let mut w = PcapWriter::with_header(
        BufWriter::new(File::create(&path).unwrap()),
        PcapHeader {
            datalink: DataLink::LINUX_SLL2,
            ..PcapHeader::default()
        },
    )
    .unwrap();
    // SLL2: protocol, reserved, ifindex 7, hatype 1, pkttype, halen 6, the source MAC.
    let sll2 = |pkttype: u8, proto: [u8; 2], payload: &[u8]| {
        let mut f = vec![proto[0], proto[1], 0, 0, 0, 0, 0, 7, 0, 1, pkttype, 6];
        f.extend_from_slice(&GUEST.0);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    };
    let udp = frames::udp(GUEST, OLD, ip(2), ip(9), 98);
    let mut t = Duration::from_secs(1_790_000_000);
    let rarp = frames::rarp_announce(GUEST, None);
    let mut all = vec![sll2(1, [0x80, 0x35], &rarp[14..])];
    all.extend((0..5).map(|_| sll2(3, [0x08, 0x00], &udp[14..])));
    all.extend((0..3).map(|_| sll2(0, [0x08, 0x00], &udp[14..])));
    for f in &all {
        t += Duration::from_millis(100);
        w.write_packet(&PcapPacket::new(t, f.len() as u32, f))
            .unwrap();
    }
    w.into_writer().flush().unwrap();
    let out = tw()
        .args(["analyze", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let all_out = String::from_utf8_lossy(&out.stdout);
    assert!(!all_out.contains("00:00:00:00:00:00"), "{all_out}");
    let row = &summary_of(&out)["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(
        (&row["dst_mismatch_frames"], &row["blackout_ms"]),
        (&5.into(), &500.into())
    );
    // Frames are as long as the VM wrote them, not as long as their cooked records.
    assert_eq!(row["from_vm_bytes"], rarp.len() + 8 * udp.len(), "{row:#}");
}

fn at(ms: i64) -> Ts {
    Ts(chrono::DateTime::from_timestamp_millis(1_790_000_000_000 + ms).unwrap())
}

/// A bundle cut short (a full disk, a crash) in the middle of a line and of a block: read
/// up to the cut, said where and why, and the verdicts given.
#[test]
fn a_cut_bundle_is_read_up_to_the_cut() {
    let s = Scratch::new("cut");
    let dir = s.0.join("b");
    let bundle = Bundle::create(BundleOptions {
        dir: dir.clone(),
        max_bytes: 1 << 30,
        pack: false,
    })
    .unwrap();
    let (writer, pusher) = Writer::spawn("bundle", bundle, |_| {}).unwrap();
    let pipeline = Pipeline::new(Engine::new(EngineConfig::default()), vec![pusher]);
    let mut feed = Feed(pipeline.clone());
    let frame = |ms: i64, kind: FrameKind, dst: MacAddr| {
        let bytes = frames::udp(GUEST, dst, ip(2), ip(9), 98);
        Record::Frame(FrameRecord {
            ts: at(ms),
            ifname: "tapcut".into(),
            direction: Direction::FromVm,
            kind,
            src_mac: GUEST,
            dst_mac: dst,
            sender_ip: None,
            target_ip: None,
            na_flags: None,
            src_ip: None,
            dst_ip: None,
            vlan: None,
            outer_vlan: None,
            dst_mismatch: false,
            len: 98,
            data: bytes,
        })
    };
    use diag_user::model::Sink;
    feed.emit(&Record::Attached {
        ts: at(0),
        ifname: "tapcut".into(),
        ifindex: 7,
        mac: Some(OLD),
        mode: Mode::Routed,
        backend: Backend::Ebpf,
        datapath: Some(diag_user::model::DatapathKind::Drops),
        appeared: false,
        mtu: Some(1500),
        master: None,
    })
    .unwrap();
    feed.emit(&Record::MacChange {
        ts: at(10),
        ifname: "tapcut".into(),
        old_mac: Some(OLD),
        new_mac: Some(NEW),
    })
    .unwrap();
    for i in 0..20 {
        feed.emit(&frame(100 + i * 100, FrameKind::DstMismatch, OLD))
            .unwrap();
        feed.emit(&Record::Stats {
            ts: at(150 + i * 100),
            taps: vec![TapRow {
                ifname: "tapcut".into(),
                from_vm_frames: i as u64 + 1,
                dst_mismatch_frames: i as u64 + 1,
                ..TapRow::default()
            }],
        })
        .unwrap();
    }
    let b = writer.close(Duration::from_secs(10)).unwrap();
    drop(b); // as a crash would: no reports, files as they are
             // Cut both files in the middle of their last line and block.
    for (f, cut) in [("events.ndjson", 40), ("frames.pcapng", 30)] {
        let p = dir.join(f);
        let len = std::fs::metadata(&p).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        file.set_len(len - cut).unwrap();
    }
    let out = tw().args(["analyze", "--json"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ends with an incomplete line"), "{err}");
    assert!(err.contains("frames.pcapng stops early"), "{err}");
    let row = &summary_of(&out)["taps"][0];
    assert_eq!(row["state"], "BLACKOUT", "{row:#}");
    assert_eq!(
        row["dst_mismatch_frames"], 19,
        "the last complete stats line"
    );
}

#[test]
fn command_line_numbers_are_checked() {
    for args in [
        &["watch", "--duration", "1e30"][..],
        &["watch", "--interval", "1e-12"],
        &["watch", "--interval", "0"],
        &["watch", "--duration", "NaN"],
        &["watch", "--duration=-1"],
        &["watch", "--record-max-mb", "99999999999"],
        &["lab", "--vms", "0"],
        &["lab", "--vms", "1000"],
        &["lab", "--reachable-time", "1e300"],
    ] {
        let out = tw().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("out of range") || err.contains("not in") || err.contains("invalid value"),
            "{args:?}: {err}"
        );
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A bundle written by tapwatch 0.1, before records were typed: every line reads into the
/// typed records and writes back to the very same bytes, and analyze gives its verdicts.
#[test]
fn a_bundle_written_before_the_typed_records_replays() {
    let dir = fixture("bundle-v1");
    let events = std::fs::read_to_string(dir.join("events.ndjson")).unwrap();
    for line in events.lines() {
        let rec: Record = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(serde_json::to_string(&rec).unwrap(), line);
    }
    let out = tw().args(["analyze", "--json"]).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = &summary_of(&out)["taps"][0];
    assert_eq!(row["state"], "RECOVERED", "{row:#}");
    assert_eq!(row["blackout_ms"], 546);
    for (field, n) in [
        ("rarp_frames", 5),
        ("garp_frames", 2),
        ("dst_mismatch_frames", 5),
        ("from_vm_frames", 14),
    ] {
        assert_eq!(row[field], n, "{field}");
    }
}

/// Records `story` into a finished bundle at `dir`, as `watch --record` writes one (host.json
/// and summary.md from the run's verdicts).
fn record_bundle(dir: &Path, story: &[Record]) {
    let bundle = Bundle::create(BundleOptions {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        pack: false,
    })
    .unwrap();
    let (writer, pusher) = Writer::spawn("bundle", bundle, |_| {}).unwrap();
    let pipeline = Pipeline::new(Engine::new(EngineConfig::default()), vec![pusher]);
    for rec in story {
        pipeline.emit(rec);
    }
    let b = writer.close(Duration::from_secs(10)).unwrap();
    let snap = b.snapshot(&pipeline.head().engine);
    b.finish(&snap).unwrap();
}

/// A VM on `tap` from `t0` (ms): libvirt's identity when known, the tap, and its frames;
/// `resumed`: it came in by migration (QEMU's RARP), as on a destination.
fn vm_on_tap(tap: &str, vm: Option<VmInterface>, t0: i64, resumed: bool) -> Vec<Record> {
    let frame = |ms: i64, kind: FrameKind, data: Vec<u8>, dst: MacAddr| {
        Record::Frame(FrameRecord {
            ts: at(t0 + ms),
            ifname: tap.into(),
            direction: Direction::FromVm,
            kind,
            src_mac: GUEST,
            dst_mac: dst,
            sender_ip: None,
            target_ip: None,
            na_flags: None,
            src_ip: None,
            dst_ip: None,
            vlan: None,
            outer_vlan: None,
            dst_mismatch: false,
            len: data.len() as u32,
            data,
        })
    };
    let mut story = vec![
        Record::Identity {
            ts: at(t0),
            ifname: tap.into(),
            libvirt: vm,
        },
        Record::Attached {
            ts: at(t0),
            ifname: tap.into(),
            ifindex: 7,
            mac: Some(OLD),
            mode: Mode::Routed,
            backend: Backend::Ebpf,
            datapath: Some(diag_user::model::DatapathKind::Drops),
            appeared: resumed,
            mtu: Some(1500),
            master: None,
        },
    ];
    if resumed {
        let rarp = frames::rarp_announce(GUEST, None);
        story.push(frame(100, FrameKind::Rarp, rarp, MacAddr([0xff; 6])));
    }
    let garp = frames::garp(GUEST, ip(2));
    story.push(frame(200, FrameKind::Garp, garp, MacAddr([0xff; 6])));
    story.push(Record::Stats {
        ts: at(t0 + 1000),
        taps: vec![TapRow {
            ifname: tap.into(),
            from_vm_frames: 1 + resumed as u64,
            rarp_frames: resumed as u64,
            garp_frames: 1,
            ..TapRow::default()
        }],
    });
    story
}

fn libvirt_vm(uuid: &str, domain: &str, guest: MacAddr) -> VmInterface {
    VmInterface {
        domain: domain.into(),
        uuid: Some(uuid.into()),
        tap: "vnet0".into(),
        guest_mac: Some(guest),
        iface_type: "bridge".into(),
        state: Some("running".into()),
        ..VmInterface::default()
    }
}

fn merged(src: &Path, dst: &Path) -> (Output, Vec<Value>) {
    let out = tw()
        .args(["analyze", "--json"])
        .args([src, dst])
        .output()
        .unwrap();
    let recs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "migration")
        .collect();
    (out, recs)
}

/// libvirt names taps vnet0, vnet1… on every host: a tap name shared by two bundles pairs
/// two VMs only when neither bundle knows which VM is behind it. When the identities say
/// they are different VMs, the destination's VM is said not to be in the source's bundle.
#[test]
fn a_shared_tap_name_pairs_only_vms_nobody_knows() {
    let s = Scratch::new("pairing");
    let other = MacAddr([0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33]);
    let (src, dst) = (s.0.join("src"), s.0.join("dst"));
    record_bundle(
        &src,
        &vm_on_tap(
            "vnet0",
            Some(libvirt_vm("uuid-a", "tenant-a", other)),
            0,
            false,
        ),
    );
    record_bundle(
        &dst,
        &vm_on_tap(
            "vnet0",
            Some(libvirt_vm("uuid-b", "tenant-b", GUEST)),
            5000,
            true,
        ),
    );
    let (out, recs) = merged(&src, &dst);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(recs.len(), 1, "{recs:?} {err}");
    let m = &recs[0];
    assert_eq!(m["vm"], "tenant-b", "{m:#}");
    assert_eq!(m["src_ifname"], Value::Null, "{m:#}");
    assert_eq!(m["pause_ts"], Value::Null, "{m:#}");
    assert_eq!(m["downtime_ms"], Value::Null, "{m:#}");
    let notes = m["notes"].to_string();
    assert!(
        notes.contains("not found in the source's bundle"),
        "{notes}"
    );
    assert!(notes.contains("tenant-a"), "{notes}");
    // No VM found on both sides: said, and not a success.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no VM of"), "{err}");
    let text = tw().arg("analyze").args([&src, &dst]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("not found on the source"), "{text}");

    // One side does not know its VM: still not enough to pair by name.
    let unknown = s.0.join("unknown");
    record_bundle(&unknown, &vm_on_tap("vnet0", None, 0, false));
    let (_, recs) = merged(&unknown, &dst);
    assert_eq!(recs[0]["src_ifname"], Value::Null, "{recs:?}");

    // Neither knows: the tap name is all there is (Nova keeps it across hosts).
    let dst_unknown = s.0.join("dst-unknown");
    record_bundle(&dst_unknown, &vm_on_tap("vnet0", None, 5000, true));
    let (out, recs) = merged(&unknown, &dst_unknown);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(recs[0]["src_ifname"], "vnet0", "{recs:?}");

    // The same VM under another tap name: found by its identity.
    let moved = s.0.join("moved");
    record_bundle(
        &moved,
        &vm_on_tap(
            "vnet3",
            Some(libvirt_vm("uuid-b", "tenant-b", GUEST)),
            0,
            false,
        ),
    );
    let (out, recs) = merged(&moved, &dst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        (&recs[0]["src_ifname"], &recs[0]["dst_ifname"]),
        (&"vnet3".into(), &"vnet0".into())
    );
    assert_eq!(recs[0]["pause_from"], "frames");
}

/// `dir` packed as `--pack` packs it, beside it.
fn pack(dir: &Path) -> PathBuf {
    let out = dir.with_extension("tar.gz");
    let gz =
        flate2::write::GzEncoder::new(File::create(&out).unwrap(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let base = Path::new(dir.file_name().unwrap());
    for f in ["events.ndjson", "frames.pcapng", "host.json", "summary.md"] {
        tar.append_path_with_name(dir.join(f), base.join(f))
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
    out
}

/// One bundle given as both the source and the destination (`DIR/dst DIR/dst`), under
/// another path, or packed: one host and one run, never a migration. Refused as a bad
/// command line, saying what to give instead.
#[test]
fn one_run_given_twice_is_refused() {
    let s = Scratch::new("twice");
    let (src, dst) = (s.0.join("src"), s.0.join("dst"));
    let vm = libvirt_vm("uuid-b", "tenant-b", GUEST);
    record_bundle(&src, &vm_on_tap("vnet0", Some(vm.clone()), 0, false));
    record_bundle(&dst, &vm_on_tap("vnet0", Some(vm), 5000, true));
    let copy = s.0.join("copy");
    std::fs::create_dir(&copy).unwrap();
    for f in ["events.ndjson", "frames.pcapng", "host.json", "summary.md"] {
        std::fs::copy(dst.join(f), copy.join(f)).unwrap();
    }
    let packed = pack(&dst);
    for (a, b) in [(&dst, &dst), (&src, &src), (&dst, &copy), (&packed, &dst)] {
        let (out, recs) = merged(a, b);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{a:?} {b:?}: {err} {recs:?}");
        assert!(recs.is_empty(), "{recs:?}");
        assert!(
            err.contains("one recording") && err.contains("the source host's bundle"),
            "{err}"
        );
    }
    // Two runs of one host (as `lab --record` writes them) are two bundles.
    let (out, recs) = merged(&src, &dst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(recs[0]["src_ifname"], "vnet0");
}

/// Neither the pause nor the resume known: the record is dated when the destination first
/// saw the VM's tap, never 1970-01-01.
#[test]
fn a_migration_without_pause_or_resume_is_dated_by_the_destination() {
    let s = Scratch::new("undated");
    let (src, dst) = (s.0.join("src"), s.0.join("dst"));
    let vm = libvirt_vm("uuid-b", "tenant-b", GUEST);
    let no_frames = |story: Vec<Record>| -> Vec<Record> {
        story
            .into_iter()
            .filter(|r| !matches!(r, Record::Frame(_)))
            .collect()
    };
    record_bundle(
        &src,
        &no_frames(vm_on_tap("vnet0", Some(vm.clone()), 0, false)),
    );
    record_bundle(&dst, &no_frames(vm_on_tap("vnet4", Some(vm), 5000, false)));
    let (out, recs) = merged(&src, &dst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = &recs[0];
    assert_eq!(
        (&m["pause_ts"], &m["resume_ts"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(m["ts"], serde_json::to_value(at(5000)).unwrap(), "{m:#}");
}

/// What a line of events.ndjson costs to read is in its JSON values (each held as a node
/// of tens of bytes however short its text), not its bytes: a 16 MB line of small objects
/// (5 million values) is refused where the reading stops, and one just under the limit is
/// read, both in bounded memory.
#[test]
fn analyze_reads_a_line_of_many_values_in_bounded_memory() {
    let s = Scratch::new("values");
    let attached = r#"{"type":"attached","ts":"2026-11-22T09:07:04.821526Z","ifname":"tapA","ifindex":2,"mac":"fe:16:3e:aa:bb:cc","mode":"routed","backend":"ebpf","schema":2}"#;
    let bundle = |name: &str, objects: usize| {
        let dir = s.0.join(name);
        std::fs::create_dir(&dir).unwrap();
        let mut f = BufWriter::new(File::create(dir.join("events.ndjson")).unwrap());
        writeln!(f, "{attached}").unwrap();
        write!(
            f,
            r#"{{"type":"stats","ts":"2026-11-22T09:07:05Z","taps":[],"x":["#
        )
        .unwrap();
        for i in 0..objects {
            f.write_all(if i == 0 {
                br#"{"a":0}"#
            } else {
                br#",{"a":0}"#
            })
            .unwrap();
        }
        writeln!(f, "]}}").unwrap();
        f.flush().unwrap();
        dir
    };
    let (_, base_kib) = run_measured(
        tw().args(["analyze", "--json"]).arg(fixture("bundle-v1")),
        Duration::from_secs(60),
    );
    // Three values an object: just under the limit of 1,048,576, then far past it.
    for (name, objects, refused) in [("near", 349_000, false), ("over", 2_000_000, true)] {
        let dir = bundle(name, objects);
        let (out, rss_kib) = run_measured(
            tw().args(["analyze", "--json"]).arg(&dir),
            Duration::from_secs(120),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert_eq!(summary_of(&out)["taps"][0]["ifname"], "tapA");
        assert_eq!(
            err.contains("which is not a tapwatch record (more than 1048576 JSON values)"),
            refused,
            "{name}: {err}"
        );
        assert!(
            rss_kib < base_kib + 128 * 1024,
            "{name}: peak memory {rss_kib} KiB, {base_kib} KiB for a small bundle"
        );
    }
}

/// An error is said once, with its cause: not again as the cause of itself.
#[test]
fn analyze_says_an_error_once() {
    let s = Scratch::new("once");
    let path = s.0.join("notes.txt");
    std::fs::write(&path, "hello world, not a capture").unwrap();
    let out = tw().arg("analyze").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("not a pcap or pcapng file").count(), 1, "{err}");
}

/// A bundle written by a newer tapwatch: what this version knows is read, and the
/// analysis says so.
#[test]
fn a_bundle_of_a_newer_version_says_so() {
    let s = Scratch::new("newer");
    let dir = s.0.join("b");
    std::fs::create_dir(&dir).unwrap();
    let events = std::fs::read_to_string(fixture("bundle-v1").join("events.ndjson")).unwrap();
    let newer: String = events
        .lines()
        .map(|l| format!("{},\"schema\":99}}\n", l.strip_suffix('}').unwrap()))
        .chain(std::iter::once(
            "{\"type\":\"hologram\",\"ts\":\"2026-11-22T09:07:05Z\",\"schema\":99}\n".into(),
        ))
        .collect();
    std::fs::write(dir.join("events.ndjson"), newer).unwrap();
    std::fs::copy(
        fixture("bundle-v1").join("frames.pcapng"),
        dir.join("frames.pcapng"),
    )
    .unwrap();
    let out = tw().args(["analyze", "--json"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("written by a newer tapwatch (record format 99"),
        "{err}"
    );
    assert_eq!(summary_of(&out)["taps"][0]["state"], "RECOVERED");
}
