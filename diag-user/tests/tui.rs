//! The full-screen view end to end: the real binary in a tmux terminal, a tap in a fresh
//! namespace, the stale-MAC story played through /dev/net/tun, the screen read back.

mod common;

use std::time::{Duration, Instant};

use common::{require_root, GUEST, TAP_CALICO, TAP_LIBVIRT, TIMEOUT};
use diag_testkit::tmux::Tmux;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};

/// Waits for the screen `pred` accepts, polling every 50 ms; fails the test with the
/// screen otherwise.
fn wait(tmux: &Tmux, what: &str, pred: impl Fn(&str) -> bool) -> String {
    tmux.wait(what, TIMEOUT, Duration::from_millis(50), pred)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn row<'a>(screen: &'a str, tap: &str) -> Option<&'a str> {
    screen
        .lines()
        .find(|l| l.contains(tap) && l.contains("routed"))
}

/// The blackout column: the last "S.mmms" on the row.
fn blackout_ms(row: &str) -> Option<u64> {
    let cell = row
        .split_whitespace()
        .rev()
        .find(|w| w.ends_with('s') && w.contains('.'))?;
    let (s, ms) = cell.trim_end_matches('s').split_once('.')?;
    Some(s.parse::<u64>().ok()? * 1000 + ms.parse::<u64>().ok()?)
}

/// The selected VM's timeline: its lanes, the guest's drawn, the RARPs marked, time zero
/// on the axis.
fn assert_picture(s: &str) {
    let lane = |name: &str| {
        s.lines()
            .find(|l| l.trim_start_matches('│').starts_with(&format!("{name:<9}")))
            .unwrap_or_else(|| panic!("no {name} lane in\n{s}"))
    };
    assert!(lane("marks").contains('R'), "{s}");
    assert!(lane("guest").contains('█'), "{s}");
    lane("network");
    assert!(s.contains("0 = switch-over"), "{s}");
    assert!(s.lines().any(|l| l.contains('┼')), "{s}");
}

#[test]
fn stale_mac_story_on_screen() {
    require_root();
    let ns = Netns::new("tw-tui").unwrap();
    let tap = VmTap::create(&ns, "tapvm1", TAP_LIBVIRT).unwrap();
    let cmd = format!(
        "ip netns exec {} {} watch --interval 0.2 --libvirt-dir /nonexistent; echo TAPWATCH-EXIT=$?; sleep 600",
        ns.name(),
        env!("CARGO_BIN_EXE_tapwatch")
    );
    let session = format!("tw-tui-{}", std::process::id());
    let tmux = Tmux::start(&session, 220, 50, &cmd)
        .expect("tmux is needed for this test (scripts/setup.sh installs it)");
    wait(&tmux, "the tap's row", |s| {
        row(s, "tapvm1").is_some_and(|r| r.contains("OK"))
    });

    // Nova re-plugs the tap with the fixed port MAC; QEMU announces the VM.
    ns.ip(&["link", "set", "tapvm1", "address", &TAP_CALICO.to_string()])
        .unwrap();
    wait(&tmux, "the MAC change", |s| {
        s.contains("00:61:fe:ed:ca:fe* (was fe:16:3e:aa:bb:cc)")
    });
    for _ in 0..5 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    // The guest keeps answering to its cached gateway MAC, every 20 ms, for 400 ms.
    let vm_ip = "10.65.0.2".parse().unwrap();
    let peer = "10.65.9.9".parse().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(400) {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, vm_ip, peer, 98))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = wait(&tmux, "BLACKOUT", |s| {
        row(s, "tapvm1").is_some_and(|r| r.contains("BLACKOUT"))
    });
    assert!(s.contains("VM still sends to fe:16:3e:aa:bb:cc"), "{s}");

    // The guest's ARP entry expires: it re-ARPs and sends to the new MAC.
    tap.send(&frames::arp_request(
        GUEST,
        vm_ip,
        "10.65.0.1".parse().unwrap(),
    ))
    .unwrap();
    tap.send(&frames::udp(GUEST, TAP_CALICO, vm_ip, peer, 98))
        .unwrap();
    let s = wait(&tmux, "RECOVERED", |s| {
        row(s, "tapvm1").is_some_and(|r| r.contains("RECOVERED"))
    });
    let ms = blackout_ms(row(&s, "tapvm1").unwrap()).expect("a measured blackout");
    // Kernel timestamps of frames written at least 380 ms apart.
    assert!(
        (380..10_000).contains(&ms),
        "blackout {ms} ms; screen:\n{s}"
    );
    assert!(s.contains(&format!("Blackout of {ms} ms")), "{s}");
    assert_picture(&s);

    // An on-call terminal: the same story at 80×24, rows whole, the picture still there.
    let resized = std::process::Command::new("tmux")
        .args(["resize-window", "-t", &session, "-x", "80", "-y", "24"])
        .status()
        .unwrap();
    assert!(resized.success());
    let s = wait(&tmux, "the view at 80 columns", |s| {
        s.lines().all(|l| l.chars().count() <= 80) && s.contains("RECOVERED")
    });
    assert!(
        s.lines()
            .any(|l| l.starts_with("│tapvm1") && l.contains("RECOVERED")),
        "{s}"
    );
    assert_picture(&s);

    tmux.keys("q").unwrap();
    let s = wait(&tmux, "exit", |s| s.contains("TAPWATCH-EXIT="));
    assert!(s.contains("TAPWATCH-EXIT=0"), "{s}");
    assert!(
        s.contains("tapvm1 [tapvm1]: RECOVERED"),
        "the verdict stays on screen:\n{s}"
    );
}

/// The nudge key in the lab's live view, against the lab's real Linux guest: `n` on the
/// VM in BLACKOUT asks, `y` nudges, and the row turns RECOVERED long before the guest's own
/// timers would have (a reachable time of 60 s), with the nudge marked on its timeline.
#[test]
fn the_nudge_key_ends_a_lab_blackout() {
    require_root();
    let cmd = format!(
        "{} lab --reachable-time 60; echo TAPWATCH-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_tapwatch")
    );
    let session = format!("tw-tui-nudge-{}", std::process::id());
    let tmux = Tmux::start(&session, 200, 50, &cmd)
        .expect("tmux is needed for this test (scripts/setup.sh installs it)");
    let blackout = |s: &str| {
        s.lines()
            .any(|l| l.contains("lab-vm-1") && l.contains("BLACKOUT"))
    };
    wait(&tmux, "the VM in BLACKOUT", blackout);
    tmux.keys("n").unwrap();
    wait(&tmux, "the question", |s| s.contains("y sends it"));
    let asked = Instant::now();
    tmux.keys("y").unwrap();
    let s = wait(&tmux, "RECOVERED", |s| {
        s.lines()
            .any(|l| l.contains("lab-vm-1") && l.contains("RECOVERED"))
    });
    assert!(asked.elapsed() < Duration::from_secs(10), "{s}");
    assert!(
        s.contains("nudged at"),
        "the nudge said on the status line:\n{s}"
    );
    let marks = s
        .lines()
        .find(|l| l.trim_start_matches('│').starts_with("marks"))
        .unwrap_or_else(|| panic!("no marks lane in\n{s}"));
    assert!(marks.contains('N'), "{s}");
    tmux.keys("q").unwrap();
    let s = wait(&tmux, "exit", |s| s.contains("TAPWATCH-EXIT="));
    assert!(s.contains("TAPWATCH-EXIT=0"), "{s}");
}
