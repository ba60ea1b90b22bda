//! How `tapwatch watch` attaches and lets go, against the real kernel: many taps under a
//! low descriptor limit, TCX and clsact hooks gone after every kind of exit (a killed run's
//! too), no tap at all, missing privileges and the libpcap fallback, another tool's qdisc.
//! Each test has its own namespace.

mod common;

use common::*;
use diag_user::frames;
use diag_user::lab::netns::{Netns, VmTap};

/// A host with many VMs under a 1024-descriptor soft limit: each tap needs two, so
/// tapwatch lifts its soft limit to the hard one. Here the soft limit (64) is below what
/// 40 taps need.
#[test]
fn many_taps_under_a_low_descriptor_limit() {
    require_root();
    let ns = Netns::new("tw-fds").unwrap();
    let names: Vec<String> = (0..40).map(|i| format!("fdtap{i}")).collect();
    let taps: Vec<VmTap> = names
        .iter()
        .map(|n| VmTap::create(&ns, n, TAP_LIBVIRT).unwrap())
        .collect();
    let mut tw = Tapwatch::start_via(
        &ns,
        &["prlimit", "--nofile=64:4096", "--"],
        &["watch", "--json", "--interval", "0.1", "--iface", "fdtap*"],
    );
    for n in &names {
        tw.wait_attached(n);
    }
    taps[39].send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("fdtap39", |t| u(t, "garp_frames") == 1);
    let (status, recs, err) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{err}");
    assert_eq!(of_type(&recs, "attached").len(), 40, "{err}");
}

/// `tc filter show dev IF ingress|egress`: tapwatch's clsact filters.
fn tc_filters(ns: &Netns, ifname: &str, dir: &str) -> String {
    ns.exec("tc", &["filter", "show", "dev", ifname, dir])
        .unwrap()
}

fn tcx_names(ns: &Netns, ifname: &str) -> Vec<String> {
    let ifname = ifname.to_string();
    ns.enter(move || diag_user::collect::ebpf::tcx_program_names(&ifname).expect("query tcx"))
        .unwrap()
}

#[test]
fn nothing_stays_attached_after_exit() {
    require_root();
    let ns = Netns::new("tw-exit").unwrap();
    let tap = VmTap::create(&ns, "tapexit", TAP_LIBVIRT).unwrap();

    // --duration: ends by itself with a summary and exit code 0.
    let mut tw = json_watch(
        &ns,
        &[
            "--datapath",
            "tc",
            "--attach-mode",
            "tcx",
            "--duration",
            "1",
        ],
    );
    tw.wait_attached("tapexit");
    assert_eq!(tcx_names(&ns, "tapexit"), ["tap_ingress", "tap_egress"]);
    let (status, recs, _) = tw.finish();
    assert!(status.success());
    assert_eq!(of_type(&recs, "summary").len(), 1);
    assert!(tcx_names(&ns, "tapexit").is_empty());

    // SIGTERM.
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "tcx"]);
    tw.wait_attached("tapexit");
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    assert_eq!(of_type(&recs, "summary").len(), 1);
    assert!(tcx_names(&ns, "tapexit").is_empty());

    // SIGKILL: TCX links die with their file descriptors.
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "tcx"]);
    tw.wait_attached("tapexit");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(tcx_names(&ns, "tapexit").is_empty());
    drop(tap);
}

/// Kernels before 6.6 have no TCX, and large hosts choose clsact: forced here.
#[test]
fn clsact_attach_counts_and_cleans_up() {
    require_root();
    let ns = Netns::new("tw-clsact").unwrap();
    let tap = VmTap::create(&ns, "tapcls", TAP_CALICO).unwrap();
    let filters = |dir: &str| tc_filters(&ns, "tapcls", dir);
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "clsact"]);
    tw.wait_attached("tapcls");
    assert!(
        filters("ingress").contains("tap_ingress"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("tap_egress"),
        "{}",
        filters("egress")
    );
    assert!(tcx_names(&ns, "tapcls").is_empty());
    for _ in 0..3 {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 64))
            .unwrap();
    }
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tw.wait_stats("tapcls", |t| u(t, "from_vm_frames") == 4);
    let (status, recs, _) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    let row = summary_row(&recs, "tapcls");
    assert_eq!(
        (u(row, "dst_mismatch_frames"), u(row, "rarp_frames")),
        (3, 1)
    );
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");
}

/// clsact filters outlive their process: a killed run's cleanup helper removes them; if
/// the helper is killed too, the next run removes them before attaching, so nothing is
/// counted twice and nothing is left after it.
#[test]
fn clsact_filters_of_a_killed_run_are_removed() {
    require_root();
    let ns = Netns::new("tw-kill").unwrap();
    let tap = VmTap::create(&ns, "tapkill", TAP_LIBVIRT).unwrap();
    let filters = |dir: &str| tc_filters(&ns, "tapkill", dir);
    let args = ["--datapath", "tc", "--attach-mode", "clsact"];

    // SIGKILL of the run alone: its helper sees the pipe close and removes the filters.
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    assert!(filters("ingress").contains("tap_ingress"));
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    wait_gone(helper);
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");

    // SIGKILL of both (kill -9 of the process group): the filters stay...
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    // SAFETY: kill(2) of a process of this test.
    unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) };
    wait_gone(helper);
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    assert!(filters("ingress").contains("tap_ingress"));

    // ...until the next run, which removes them before it attaches.
    let mut tw = json_watch(&ns, &args);
    tw.wait_attached("tapkill");
    // One filter line per filter ("… handle 0x1 tap_ingress … name tap_ingress …").
    let count = |dir: &str| {
        filters(dir)
            .lines()
            .filter(|l| l.contains(" handle "))
            .count()
    };
    assert_eq!((count("ingress"), count("egress")), (1, 1));
    tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    tw.wait_stats("tapkill", |t| u(t, "garp_frames") == 1);
    let (status, recs, err) = tw.stop(libc::SIGTERM);
    assert!(status.success());
    assert!(err.contains("was killed"), "{err}");
    assert_eq!(u(summary_row(&recs, "tapkill"), "from_vm_frames"), 1);
    assert_eq!(filters("ingress").trim(), "");
    assert_eq!(filters("egress").trim(), "");
}

#[test]
fn no_matching_tap_is_not_an_error() {
    require_root();
    let ns = Netns::new("tw-none").unwrap();
    let mut tw = json_watch(&ns, &["--iface", "vm-*"]);
    // Readiness without a tap: the first stats record, with no rows.
    let stats = tw.wait_for("empty stats", |v| v["type"] == "stats");
    assert_eq!(stats["taps"].as_array().unwrap().len(), 0);
    let _ignored = VmTap::create(&ns, "tapother", TAP_LIBVIRT).unwrap();
    let tap = VmTap::create(&ns, "vm-a", TAP_LIBVIRT).unwrap();
    tw.wait_attached("vm-a");
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tw.wait_stats("vm-a", |t| u(t, "rarp_frames") == 1);
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(stderr.contains("no interface matches vm-*"), "{stderr}");
    assert!(of_type(&recs, "attached")
        .iter()
        .all(|a| a["ifname"] == "vm-a"));
}

#[test]
fn missing_privileges_say_what_to_do() {
    require_root();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([env!("CARGO_BIN_EXE_tapwatch"), "watch", "--json"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(err.contains("sudo"), "{err}");
    assert!(out.stdout.is_empty());
}

/// `--backend auto` (the default) without the right to load eBPF: libpcap, saying why.
#[test]
fn falls_back_to_libpcap_when_ebpf_cannot_load() {
    require_root();
    let ns = Netns::new("tw-fallback").unwrap();
    let tap = VmTap::create(&ns, "tapfb0", TAP_LIBVIRT).unwrap();
    // Only CAP_NET_RAW: enough for libpcap, not for BPF.
    let drop_to_raw = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_raw",
        "--ambient-caps=-all,+net_raw",
    ];
    let mut tw = Tapwatch::start_via(&ns, &drop_to_raw, &["watch", "--json", "--interval", "0.1"]);
    let att = tw.wait_attached("tapfb0");
    assert_eq!(att["backend"], "pcap");
    tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 64))
        .unwrap();
    tw.wait_stats("tapfb0", |t| u(t, "from_vm_frames") == 2);
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success());
    assert!(
        stderr.contains("eBPF is not available here") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert!(
        stderr.contains("capturing with libpcap instead"),
        "{stderr}"
    );
    let row = summary_row(&recs, "tapfb0");
    assert_eq!(
        (u(row, "rarp_frames"), u(row, "dst_mismatch_frames")),
        (1, 1)
    );
}

/// Another tool's clsact qdisc on the tap is used, not an error.
#[test]
fn clsact_tolerates_an_existing_qdisc() {
    require_root();
    let ns = Netns::new("tw-qdisc").unwrap();
    let _tap = VmTap::create(&ns, "tapqd0", TAP_LIBVIRT).unwrap();
    ns.exec("tc", &["qdisc", "add", "dev", "tapqd0", "clsact"])
        .unwrap();
    let mut tw = json_watch(&ns, &["--datapath", "tc", "--attach-mode", "clsact"]);
    tw.wait_attached("tapqd0");
    let (status, _, stderr) = tw.stop(libc::SIGTERM);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("cannot"), "{stderr}");
}
