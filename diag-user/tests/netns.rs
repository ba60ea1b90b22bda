//! `--netns`: tapwatch started in one namespace watches the taps of another (a KubeVirt
//! pod's, a container's) by namespace file or by a process in it, in every datapath, with
//! exact counts and nothing from the namespaces it was not pointed at (which have a `tap0`
//! of the same ifindex); `serve` keeps its endpoint where it started; a namespace that does
//! not exist is refused. `--netns all`: one run watches its own namespace and every other,
//! those there at start and those that appear or go while it runs, each pod's tap counted
//! apart though all have the same name and ifindex. Each test has its own namespaces (and
//! tap names of its own, as a run watching all namespaces sees every test's).

mod common;

use std::{
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use diag_user::{
    frames,
    lab::netns::{Netns, VmTap},
    report::metrics::sample,
};
use serde_json::Value;

every_datapath!(
    a_pod_s_tap_is_watched_from_outside_it,
    one_run_watches_every_namespace_as_they_come_and_go
);

/// Frames from the VM behind `tap` to its tap's old MAC: each a stale frame.
fn send_stale(tap: &VmTap, n: usize) {
    for _ in 0..n {
        tap.send(&frames::udp(GUEST, TAP_LIBVIRT, VM_IP, HOST_IP, 80))
            .unwrap();
    }
}

/// A process inside `ns`, as a pod's QEMU is; killed on drop.
struct Resident(Child);

impl Resident {
    /// Returns once the process is in the namespace (`ip netns exec` enters, then execs).
    fn start(ns: &Netns) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let r = Self(child);
        let ino = std::fs::metadata(format!("/run/netns/{}", ns.name()))
            .unwrap()
            .ino();
        let want = Some(format!("net:[{ino}]").into());
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{}/ns/net", r.pid())).ok() != want {
            assert!(
                Instant::now() < deadline,
                "the process never entered {}",
                ns.name()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        r
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_pod_s_tap_is_watched_from_outside_it(datapath: &str) {
    require_root();
    let host = Netns::new("twns-host").unwrap();
    let pod = Netns::new("twns-pod").unwrap();
    let other = Netns::new("twns-other").unwrap();
    // Every one of them has a tap0; the pod's and the other pod's have the same ifindex.
    let mine = VmTap::create(&pod, "tap0", TAP_CALICO).unwrap();
    let theirs = VmTap::create(&other, "tap0", TAP_CALICO).unwrap();
    let hosts = VmTap::create(&host, "tap0", TAP_CALICO).unwrap();
    let idx = |ns: &Netns| {
        let out = ns.ip(&["-j", "link", "show", "tap0"]).unwrap();
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["ifindex"].as_u64()
    };
    assert_eq!(idx(&pod), idx(&other), "the same ifindex in both pods");

    // By process for the drop-driven datapath, by namespace file for the others.
    let resident = Resident::start(&pod);
    let target = if datapath == "drops" {
        resident.pid().to_string()
    } else {
        format!("/run/netns/{}", pod.name())
    };
    let mut tw = json_watch_with(
        &host,
        datapath,
        &[
            "--netns",
            &target,
            "--iface",
            "tap0",
            "--libvirt-dir",
            "/nonexistent",
        ],
    );
    let att = tw.wait_attached("tap0");
    assert_eq!(att["ifindex"].as_u64(), idx(&pod));
    send_stale(&theirs, 5);
    send_stale(&hosts, 3);
    send_stale(&mine, 7);
    tw.wait_stats("tap0", |t| u(t, "dst_mismatch_frames") == 7);
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("in the network namespace of"), "{stderr}");
    let rows = recs.iter().find(|r| r["type"] == "summary").unwrap()["taps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = summary_row(&recs, "tap0");
    assert_eq!(
        (u(row, "dst_mismatch_frames"), u(row, "from_vm_frames")),
        (7, 7),
        "{row:#}"
    );
    assert_eq!(row["state"], "BLACKOUT", "{row:#}");
    // Nothing of tapwatch's stays in the pod's namespace.
    assert_eq!(our_filters(&pod, "tap0"), 0);
}

/// A namespace that is not there or a file that is not a namespace fails before anything
/// is attached (exit 1).
#[test]
fn namespaces_that_cannot_be_watched_are_refused() {
    require_root();
    let host = Netns::new("twns-refuse").unwrap();
    let run = |arg: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", host.name(), tw_bin()])
            .args(["watch", "--json", "--netns", arg])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("/run/netns/twns-not-there");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/run/netns/twns-not-there"), "{err}");
    let (code, err) = run("/proc/self/status");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot enter the network namespace"), "{err}");
}

/// `serve --netns`: the endpoint stays in the namespace tapwatch started in (where
/// Prometheus reaches it), the taps counted are the pod's.
#[test]
fn serve_listens_where_it_started_and_counts_the_pod_s_taps() {
    require_root();
    let host = Netns::new("twns-serve").unwrap();
    let pod = Netns::new("twns-spod").unwrap();
    let mine = VmTap::create(&pod, "tap0", TAP_CALICO).unwrap();
    let _hosts = VmTap::create(&host, "tap0", TAP_CALICO).unwrap();
    let pod_ns = format!("/run/netns/{}", pod.name());
    let p = common::exporter::serve(&host, &["--iface", "tap0", "--netns", &pod_ns]);
    send_stale(&mine, 4);
    let labels = common::exporter::tap_labels("tap0");
    common::exporter::wait_metrics(&host, "the pod's stale frames", |m| {
        sample(m, "tapwatch_dst_mismatch_frames_total", &labels) == Some(4.0)
            && sample(m, "tapwatch_taps", &[]) == Some(1.0)
    });
    let err = common::exporter::stop(p);
    assert!(err.contains(&pod_ns), "{err}");
}

/// Every namespace's taps called `ifname` (no other test's have that name), no libvirt.
fn every_namespace(ifname: &str) -> [&str; 6] {
    [
        "--netns",
        "all",
        "--iface",
        ifname,
        "--libvirt-dir",
        "/nonexistent",
    ]
}

/// The record `v` is of the tap `ifname` in namespace `netns` (`None`: tapwatch's own,
/// whose records carry no `netns`).
fn is_tap(v: &Value, ifname: &str, netns: Option<&str>) -> bool {
    v["ifname"] == ifname
        && match netns {
            Some(ns) => v["netns"] == ns,
            None => v.get("netns").is_none(),
        }
}

/// The stats row of a tap in the last stats record that has it.
fn stats_row<'a>(v: &'a Value, ifname: &str, netns: Option<&str>) -> Option<&'a Value> {
    v["taps"]
        .as_array()?
        .iter()
        .find(|t| is_tap(t, ifname, netns))
}

fn one_run_watches_every_namespace_as_they_come_and_go(datapath: &str) {
    require_root();
    // A name only this test's taps have: a run watching every namespace sees all taps.
    let name = format!("tapall{}", &datapath[..2]);
    let host = Netns::new("twall-host").unwrap();
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("twall-pod").unwrap()).collect();
    let taps: Vec<VmTap> = pods
        .iter()
        .map(|p| VmTap::create(p, &name, TAP_CALICO).unwrap())
        .collect();
    let own = VmTap::create(&host, &name, TAP_CALICO).unwrap();
    let idx = |ns: &Netns| {
        let out = ns.ip(&["-j", "link", "show", &name]).unwrap();
        serde_json::from_str::<Value>(&out).unwrap()[0]["ifindex"].as_u64()
    };
    assert_eq!(idx(&pods[0]), idx(&pods[1]), "the same ifindex in two pods");

    let mut tw = json_watch_with(&host, datapath, &every_namespace(&name));
    // Every tap there at start, in whatever order they come.
    let labels: Vec<String> = pods.iter().map(|p| p.name().to_string()).collect();
    tw.wait_for("a stats record of every tap", |v| {
        v["type"] == "stats"
            && stats_row(v, &name, None).is_some()
            && labels
                .iter()
                .all(|ns| stats_row(v, &name, Some(ns)).is_some())
    });
    let attached = |ns: Option<&str>| {
        tw.seen
            .iter()
            .find(|v| v["type"] == "attached" && is_tap(v, &name, ns))
            .cloned()
            .unwrap_or_else(|| panic!("no attached record for {ns:?}"))
    };
    attached(None);
    for p in &pods {
        let att = attached(Some(p.name()));
        assert_eq!(att["ifindex"].as_u64(), idx(p), "its own ifindex: {att:#}");
        assert_ne!(att["appeared"], true, "there at start: {att:#}");
    }
    if datapath == "drops" {
        // A routed tap of a pod is watched as one of the host's: nothing per frame until
        // it has trouble, its ARP seen by sockets of its own there.
        let att = attached(Some(pods[0].name()));
        assert_eq!(att["datapath"], "drops", "{att:#}");
        let ifname = name.clone();
        let hooked = pods[0]
            .enter(move || diag_user::collect::ebpf::tcx_program_names(&ifname).unwrap())
            .unwrap();
        assert!(hooked.is_empty(), "{hooked:?}");
    }
    taps[0]
        .send(&frames::arp_request(GUEST, VM_IP, HOST_IP))
        .unwrap();
    for (i, t) in taps.iter().enumerate() {
        send_stale(t, 2 + i);
    }
    send_stale(&own, 9);

    // A pod that starts while the run watches: its tap is found, as one that appeared.
    let late = Netns::new("twall-late").unwrap();
    let started = Instant::now();
    let late_tap = VmTap::create(&late, &name, TAP_CALICO).unwrap();
    let att = tw.wait_for("the late pod's tap", |v| {
        v["type"] == "attached" && is_tap(v, &name, Some(late.name()))
    });
    eprintln!("the late pod's tap attached after {:?}", started.elapsed());
    assert_eq!(att["appeared"], true, "{att:#}");
    send_stale(&late_tap, 6);
    tw.wait_for("every tap's stale frames", |v| {
        if v["type"] != "stats" {
            return false;
        }
        let n = |ns: Option<&str>| stats_row(v, &name, ns).map(|t| u(t, "dst_mismatch_frames"));
        pods.iter()
            .enumerate()
            .all(|(i, p)| n(Some(p.name())) == Some(2 + i as u64))
            && n(None) == Some(9)
            && n(Some(late.name())) == Some(6)
            && stats_row(v, &name, Some(pods[0].name())).map(|t| u(t, "arp_requests")) == Some(1)
            && stats_row(v, &name, Some(pods[1].name())).map(|t| u(t, "arp_requests")) == Some(0)
    });

    // A pod that goes: its tap is detached, whatever else its namespace held, and the run
    // lets the namespace go (no descriptor, no thread of it left there).
    let gone: Vec<String> = pods.iter().map(|p| p.name().to_string()).collect();
    let inodes: Vec<String> = gone
        .iter()
        .map(|ns| {
            let ino = std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
            format!("net:[{ino}]")
        })
        .collect();
    let holds = |pid: u32| -> Vec<String> {
        let links = |dir: String| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        };
        let mut all: Vec<String> = links(format!("/proc/{pid}/fd"))
            .into_iter()
            .filter(|l| inodes.contains(l))
            .map(|l| format!("a descriptor of {l}"))
            .collect();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            if let Ok(ns) = std::fs::read_link(task.path().join("ns/net")) {
                let ns = ns.to_string_lossy().into_owned();
                if inodes.contains(&ns) {
                    let comm =
                        std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                    all.push(format!("thread {} in {ns}", comm.trim()));
                }
            }
        }
        all
    };
    // While they are there, its threads are inside them.
    assert!(holds(tw.pid()).len() >= gone.len(), "{:?}", holds(tw.pid()));
    drop(taps);
    drop(pods);
    for ns in &gone {
        tw.wait_for(&format!("the tap of {ns} detached"), |v| {
            v["type"] == "detached" && is_tap(v, &name, Some(ns))
        });
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !holds(tw.pid()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "tapwatch still holds gone pods' namespaces: {:?}",
            holds(tw.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, recs, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    let summary = recs.iter().find(|r| r["type"] == "summary").unwrap();
    let rows = summary["taps"].as_array().unwrap();
    let row = |ns: Option<&str>| {
        rows.iter()
            .find(|t| is_tap(t, &name, ns))
            .unwrap_or_else(|| panic!("no summary row for {ns:?}: {rows:#?}"))
    };
    for (i, ns) in gone.iter().enumerate() {
        assert_eq!(u(row(Some(ns)), "dst_mismatch_frames"), 2 + i as u64);
    }
    assert_eq!(u(row(Some(late.name())), "dst_mismatch_frames"), 6);
    assert_eq!(u(row(None), "dst_mismatch_frames"), 9);
    assert_eq!(row(None)["state"], "BLACKOUT", "{rows:#?}");
    assert_eq!(our_filters(&late, &name), 0);
}

/// 200 pods with a tap of the same name each, most there at start and the rest started
/// while the run watches: every tap attached, each counted apart to the frame, none
/// confused with another though their ifindexes are all the same.
#[test]
fn two_hundred_pods_each_counted_apart() {
    require_root();
    const AT_START: usize = 150;
    const LATER: usize = 50;
    let name = "tapmany0";
    let host = Netns::new("twmany-host").unwrap();
    let mut pods: Vec<(Netns, VmTap)> = (0..AT_START)
        .map(|_| {
            let p = Netns::new("twmany").unwrap();
            let t = VmTap::create(&p, name, TAP_CALICO).unwrap();
            (p, t)
        })
        .collect();
    let mut tw = json_watch_with(&host, "drops", &every_namespace(name));
    let rows = |v: &Value| {
        v["taps"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|t| t["ifname"] == name).count())
    };
    tw.wait_for("every pod's tap", |v| {
        v["type"] == "stats" && rows(v) == AT_START
    });
    for _ in 0..LATER {
        let p = Netns::new("twmany").unwrap();
        let t = VmTap::create(&p, name, TAP_CALICO).unwrap();
        pods.push((p, t));
    }
    tw.wait_for("the later pods' taps", |v| {
        v["type"] == "stats" && rows(v) == AT_START + LATER
    });
    // A different count for each pod: 1 to 7 stale frames.
    let want = |i: usize| (i % 7 + 1) as u64;
    for (i, (_, t)) in pods.iter().enumerate() {
        send_stale(t, want(i) as usize);
    }
    let counted = tw.wait_for("every pod's stale frames", |v| {
        v["type"] == "stats"
            && pods.iter().enumerate().all(|(i, (p, _))| {
                stats_row(v, name, Some(p.name())).map(|t| u(t, "dst_mismatch_frames"))
                    == Some(want(i))
            })
    });
    assert_eq!(rows(&counted), AT_START + LATER);
    let appeared = tw
        .seen
        .iter()
        .filter(|v| v["type"] == "attached" && v["ifname"] == name && v["appeared"] == true)
        .count();
    assert_eq!(appeared, LATER);
    let (status, _, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
}

/// A pod's bridged tap (KubeVirt's `tap0` on `k6t-eth0`) carries clsact filters, like the
/// host's: a run killed with SIGKILL leaves none in the pod, its cleanup helper going into
/// the pod's namespace to remove them (and a run that ends removes its own).
#[test]
fn a_killed_run_leaves_no_filter_in_a_pod() {
    require_root();
    let name = "tapkillpod0";
    let host = Netns::new("twkill-host").unwrap();
    let pod = Netns::new("twkill-pod").unwrap();
    pod.ip(&["link", "add", "k6t-eth0", "type", "bridge"])
        .unwrap();
    let _tap = VmTap::create(&pod, name, TAP_CALICO).unwrap();
    pod.ip(&["link", "set", name, "master", "k6t-eth0"])
        .unwrap();
    let args = every_namespace(name);
    let attached = |tw: &mut Tapwatch| {
        let att = tw.wait_for("the pod's bridged tap", |v| {
            v["type"] == "attached" && is_tap(v, name, Some(pod.name()))
        });
        assert_eq!(
            (&att["mode"], &att["datapath"]),
            (&"bridged".into(), &"tc".into())
        );
    };

    let mut tw = json_watch_with(&host, "drops", &args);
    attached(&mut tw);
    assert_eq!(our_filters(&pod, name), 2, "the full probe, in the pod");
    let helper = cleanup_helper_of(tw.pid()).expect("a cleanup helper");
    let (status, _, _) = tw.stop(libc::SIGKILL);
    assert!(!status.success());
    wait_gone(helper);
    assert_eq!(our_filters(&pod, name), 0, "the helper went into the pod");

    let mut tw = json_watch_with(&host, "drops", &args);
    attached(&mut tw);
    assert_eq!(our_filters(&pod, name), 2);
    let (status, _, stderr) = tw.stop(libc::SIGINT);
    assert!(status.success(), "{stderr}");
    assert_eq!(our_filters(&pod, name), 0);
}

/// On the host (in the namespace of PID 1) tapwatch watches every namespace without being
/// told: a pod's tap is found with no option.
#[test]
fn on_the_host_every_namespace_is_watched_by_default() {
    use std::io::BufRead;
    require_root();
    let name = "tapnoopt0";
    let pod = Netns::new("twnoopt-pod").unwrap();
    let _tap = VmTap::create(&pod, name, TAP_CALICO).unwrap();
    let mut child = Command::new(tw_bin())
        .args([
            "watch",
            "--json",
            "--iface",
            name,
            "--libvirt-dir",
            "/nonexistent",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap();
                if v["type"] == "attached" && is_tap(&v, name, Some(pod.name())) {
                    break Some(v);
                }
            }
            Err(_) => break None,
        }
    };
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let found = found.expect("the pod's tap, found with no option");
    assert_eq!(found["datapath"], "drops", "{found:#}");
    assert!(status.success(), "{status:?}");
}
