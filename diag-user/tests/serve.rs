//! `tapwatch serve` against the real kernel and a real Prometheus: frames played on taps in
//! the test's own namespace, `/metrics` read back exactly, checked by `promtool`, scraped
//! by Debian's `prometheus` whose alert rule (deploy/tapwatch-alerts.yml) fires during a
//! staged blackout; the systemd unit verified and its capability set shown to suffice. A
//! bundle per blackout is in serve_bundles.rs, scrapes under hostile connections in
//! serve_attack.rs.

mod common;

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{exporter::*, *};
use diag_testkit::child::Spawned;
use diag_user::frames;
use diag_user::{lab::netns::Netns, report::metrics::sample};
use serde_json::Value;

/// Frames played, `/metrics` read back: every contracted metric exact, the text format
/// accepted by `promtool check metrics`, and a departed tap's series gone after
/// `--forget-after`.
#[test]
fn metrics_count_exactly() {
    require_root();
    let ns = Netns::new("tws-count").unwrap();
    let tap = stale_tap(&ns, "tapsv0");
    let p = serve(&ns, &["--forget-after", "1"]);
    wait_metrics(&ns, "the tap", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(1.0)
    });
    for _ in 0..5 {
        tap.send(&frames::rarp_announce(GUEST, None)).unwrap();
    }
    for _ in 0..2 {
        tap.send(&frames::garp(GUEST, VM_IP)).unwrap();
    }
    stale(&tap, 7);
    let l = tap_labels("tapsv0");
    let m = wait_metrics(&ns, "7 stale frames in a blackout", |m| {
        sample(m, "tapwatch_dst_mismatch_frames_total", &l) == Some(7.0)
            && sample(m, "tapwatch_vm_state", &[l[0], l[1], ("state", "BLACKOUT")]) == Some(1.0)
    });
    assert_eq!(sample(&m, "tapwatch_blackouts_total", &l), Some(1.0));
    // The guest re-ARPed: a frame to the tap's own MAC ends the blackout.
    tap.send(&frames::udp(GUEST, TAP_CALICO, VM_IP, HOST_IP, 98))
        .unwrap();
    let m = wait_metrics(&ns, "RECOVERED", |m| {
        sample(
            m,
            "tapwatch_vm_state",
            &[l[0], l[1], ("state", "RECOVERED")],
        ) == Some(1.0)
    });
    assert_the_recovered_tap(&m, &l);
    assert_promtool_accepts(&m);

    drop(tap);
    let m = wait_metrics(&ns, "the departed tap forgotten", |m| {
        sample(m, "tapwatch_taps", &[]) == Some(0.0) && !m.contains("ifname=\"tapsv0\"")
    });
    assert!(m.contains("tapwatch_build_info"));
    let err = stop(p);
    assert!(err.contains("tapsv0 (tapsv0) is BLACKOUT"), "{err}");
}

/// The scrape `m` once the frames metrics_count_exactly played on tapsv0 (labels `l`) are
/// counted and its blackout is over: every counter exact, one state series, the host's
/// distribution and kernel drops, no more series than needed.
fn assert_the_recovered_tap(m: &str, l: &[(&str, &str); 2]) {
    let v = |name: &str| sample(m, name, l);
    assert_eq!(v("tapwatch_dst_mismatch_frames_total"), Some(7.0));
    assert_eq!(v("tapwatch_rarp_frames_total"), Some(5.0));
    assert_eq!(v("tapwatch_garp_frames_total"), Some(2.0));
    assert_eq!(v("tapwatch_events_lost_total"), Some(0.0));
    assert_eq!(v("tapwatch_blackouts_total"), Some(1.0));
    assert!(v("tapwatch_vm_blackout_seconds").is_some_and(|s| s < 10.0));
    // The distribution is the host's.
    assert_eq!(sample(m, "tapwatch_blackout_seconds_count", &[]), Some(1.0));
    assert_eq!(
        sample(
            m,
            "tapwatch_kernel_drops_total",
            &[l[0], ("reason", "OTHERHOST")]
        ),
        Some(7.0)
    );
    // One state series per tap: the current one.
    for state in ["OK", "BLACKOUT", "QUIET", "GONE"] {
        assert_eq!(
            sample(m, "tapwatch_vm_state", &[l[0], ("state", state)]),
            None,
            "{state}"
        );
    }
    let per_tap = m
        .lines()
        .filter(|line| !line.starts_with('#') && line.contains("ifname=\"tapsv0\""))
        .count();
    assert!(per_tap <= 12, "{per_tap} series for one tap:\n{m}");
    assert_eq!(sample(m, "tapwatch_taps", &[]), Some(1.0));
    assert_eq!(
        sample(m, "tapwatch_build_info", &[("datapath", "drops")]),
        Some(1.0)
    );
}

/// The text format as Prometheus reads it: `promtool check metrics` accepts `m`.
fn assert_promtool_accepts(m: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    check.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The whole way a fleet uses it: Debian's Prometheus scrapes tapwatch on the namespace's
/// loopback with the shipped alert rules; its PromQL answers the played count, and
/// TapwatchVMBlackout fires while the staged blackout lasts.
#[test]
fn prometheus_scrapes_and_the_alert_fires() {
    require_root();
    let ns = Netns::new("tws-prom").unwrap();
    let tap = stale_tap(&ns, "tapsv1");
    let p = serve(&ns, &[]);
    let dir = Scratch::new("prometheus");
    let mut prom = start_prometheus(&ns, &dir);
    let mut wait = |what: &str, pred: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !pred() {
            if let Ok(Some(status)) = prom.wait_timeout(Duration::from_millis(0)) {
                panic!("prometheus exited ({status})");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("Prometheus to scrape tapwatch", &|| {
        query_value(&ns, "up{job=\"tapwatch\"}").as_deref() == Some("1")
    });

    stale(&tap, 12);
    let count = || query_value(&ns, "tapwatch_dst_mismatch_frames_total{ifname=\"tapsv1\"}");
    wait("PromQL to answer 12", &|| count().as_deref() == Some("12"));
    // The stale frames go on (the guest has not re-ARPed): the page fires after `for`.
    wait("TapwatchVMBlackout to fire", &|| {
        stale(&tap, 1);
        blackout_alert(&ns).is_some_and(|a| a["state"] == "firing")
    });
    let a = blackout_alert(&ns).unwrap();
    assert_eq!(a["labels"]["vm"], "tapsv1");
    assert_eq!(a["labels"]["severity"], "page");
    assert!(a["annotations"]["description"]
        .as_str()
        .unwrap()
        .contains("sends to a MAC its tap does not have"));
    prom.signal(libc::SIGTERM);
    let _ = prom.wait_timeout(TIMEOUT);
    stop(p);
}

/// Debian's Prometheus in `ns`, its files in `dir`: it scrapes tapwatch on the namespace's
/// loopback every second, with the shipped alert rules.
fn start_prometheus(ns: &Netns, dir: &Path) -> Spawned {
    std::fs::copy(
        deploy("tapwatch-alerts.yml"),
        dir.join("tapwatch-alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [tapwatch-alerts.yml]\n\
             scrape_configs:\n  - job_name: tapwatch\n    static_configs:\n      \
             - targets: ['127.0.0.1:{PORT}']\n"
        ),
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    let data = dir.join("data");
    Spawned::start(
        ns.name(),
        &[
            "prometheus",
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--web.listen-address=127.0.0.1:9090",
        ],
    )
    .expect("prometheus (Debian's prometheus package; scripts/setup.sh installs it)")
}

/// The first value of a PromQL query's answer, from the Prometheus in `ns`.
fn query_value(ns: &Netns, q: &str) -> Option<String> {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (status, body) = get(ns, 9090, &format!("/api/v1/query?query={enc}"))?;
    let v: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .map(String::from)
}

/// TapwatchVMBlackout, pending or firing, as the Prometheus in `ns` has it.
fn blackout_alert(ns: &Netns) -> Option<Value> {
    let (_, body) = get(ns, 9090, "/api/v1/alerts")?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == "TapwatchVMBlackout")
        .cloned()
}

/// The alert rules as promtool reads them, and their own unit tests.
#[test]
fn the_alert_rules_check_and_pass_their_tests() {
    require_root();
    for args in [
        vec!["check", "rules", "tapwatch-alerts.yml"],
        vec!["test", "rules", "tapwatch-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(deploy(""))
            .output()
            .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The shipped unit: systemd accepts it, and tapwatch counts with nothing but the
/// capabilities it bounds it to, with no new privileges.
#[test]
fn the_unit_is_valid_and_its_capabilities_suffice() {
    require_root();
    let unit = std::fs::read_to_string(deploy("tapwatch.service")).unwrap();
    let dir = Scratch::new("unit");
    // As installed: the binary where the unit says, the man page left out of the check
    // (the package installs it).
    let local: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| l.replace("/usr/bin/tapwatch", env!("CARGO_BIN_EXE_tapwatch")) + "\n")
        .collect();
    let path = dir.join("tapwatch.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a bounding set");
    let bounding: String = std::iter::once("-all".to_string())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",");
    assert!(unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("ProtectSystem=strict"));

    let ns = Netns::new("tws-unit").unwrap();
    let tap = stale_tap(&ns, "tapsv2");
    let p = serve_via(
        &ns,
        &[
            "setpriv",
            "--bounding-set",
            &bounding,
            "--no-new-privs",
            "--",
        ],
        &[],
    );
    stale(&tap, 3);
    let l = tap_labels("tapsv2");
    wait_metrics(&ns, "3 stale frames under the unit's capabilities", |m| {
        sample(m, "tapwatch_dst_mismatch_frames_total", &l) == Some(3.0)
    });
    stop(p);
}
