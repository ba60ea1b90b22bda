//! The report page in a real browser: the lab records a stale-MAC and a clean migration
//! (a bundle per hypervisor), `tapwatch analyze --html` makes the page of a bundle and of
//! the pair, and Debian's chromium, started here in a network namespace of its own (only
//! a loopback that is down: nothing can leave), reads it. The DOM must hold the VM, the
//! diagnosis and both gaps with the lab's values; the screenshot must show the lanes in
//! their colours; and chromium's own network log must hold no request made for the page.
//! A control page that does load things proves the log would show them.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use common::{require_root, Scratch};
use serde_json::Value;

/// The browser's run: killed (with its helpers, its process group) if still there when
/// the test ends, however it ends; its profile directory removed.
struct Chromium {
    child: Option<Child>,
    profile: Scratch,
}

impl Chromium {
    /// Runs chromium headless on `url` with `args` in a new network namespace and waits for
    /// it to finish; returns its stdout.
    fn run(name: &str, args: &[&str], url: &str) -> (String, PathBuf) {
        // One browser at a time: the tests run in parallel, each browser wants both cores.
        static ONE: Mutex<u32> = Mutex::new(0);
        let mut n = ONE.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        let profile = Scratch::new(&format!("chromium-{name}-{n}"));
        let netlog = profile.join("netlog.json");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-n",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", profile.join("p").display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(["--hide-scrollbars", "--no-first-run"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .expect("chromium is needed for this test (scripts/setup.sh installs it)");
        let mut run = Chromium {
            child: Some(child),
            profile,
        };
        let out = run.wait(Duration::from_secs(60));
        let kept = run.profile.0.with_extension("netlog.json");
        std::fs::copy(&netlog, &kept).expect("chromium wrote its network log");
        (out, kept)
    }

    /// Its exit is the signal; the deadline only bounds a browser that hangs.
    fn wait(&mut self, limit: Duration) -> String {
        let child = self.child.take().unwrap();
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => {
                let out = out.unwrap();
                assert!(out.status.success(), "chromium: {:?}", out.status);
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Err(_) => {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                panic!("chromium did not finish within {limit:?}");
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// Requests chromium's network log says were made for a page (browser housekeeping, made
/// for no page, has no initiator).
fn page_requests(netlog: &Path) -> Vec<String> {
    let log: Value = serde_json::from_slice(&std::fs::read(netlog).unwrap()).unwrap();
    let _ = std::fs::remove_file(netlog);
    let start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].clone();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == start)
        .filter_map(|e| {
            let url = e["params"]["url"].as_str()?;
            let made_for_a_page = e["params"]["initiator"].as_str() != Some("not an origin");
            made_for_a_page.then(|| url.to_string())
        })
        .collect()
}

/// The page's DOM as chromium built it, and the requests made for it.
fn open(page: &Path) -> (String, Vec<String>) {
    let url = format!("file://{}", page.display());
    let (dom, netlog) = Chromium::run("dom", &["--dump-dom"], &url);
    (dom, page_requests(&netlog))
}

/// A screenshot of the page: its pixels, RGB.
fn screenshot(page: &Path, dark: bool) -> Vec<[u8; 3]> {
    let png = page.with_extension(if dark { "dark.png" } else { "png" });
    let mut args = vec![format!("--screenshot={}", png.display())];
    args.push("--window-size=760,1000".into());
    if dark {
        args.push("--force-dark-mode".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, netlog) = Chromium::run("shot", &args, &format!("file://{}", page.display()));
    assert_eq!(page_requests(&netlog), Vec::<String>::new());
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// The lab's two recordings, made once for every test here: stale-mac and clean.
struct Recordings {
    dir: Scratch,
    /// The lab's truth and the destination's summary row (tapwatch's live verdict) of
    /// each scenario.
    stale: (Value, Value),
    clean: (Value, Value),
}

fn recordings() -> &'static Recordings {
    static R: OnceLock<Recordings> = OnceLock::new();
    R.get_or_init(|| {
        require_root();
        let dir = Scratch::new("page-lab");
        let truth = |scenario: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
                .args(["lab", "--json", "--scenario", scenario, "--record"])
                .arg(dir.join(scenario))
                .output()
                .unwrap();
            assert!(out.status.success(), "lab {scenario}: {out:?}");
            let recs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect();
            let truth = recs.iter().find(|v| v["event"] == "truth");
            let summary = recs.iter().rfind(|v| v["type"] == "summary");
            (
                truth.expect("the lab's truth").clone(),
                summary.expect("a summary")["taps"][0].clone(),
            )
        };
        let stale = truth("stale-mac");
        let clean = truth("clean");
        Recordings { dir, stale, clean }
    })
}

fn analyze_html(paths: &[PathBuf], out: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .arg("analyze")
        .args(paths)
        .arg("--html")
        .arg(out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "analyze --html: {status}");
}

/// The value a numbers row shows, in ms (`data-ms`).
fn dom_ms(dom: &str, key: &str) -> Option<u64> {
    let row = dom.split(&format!("<tr data-n=\"{key}\">")).nth(1)?;
    let row = row.split("</tr>").next()?;
    let cell = row.split("data-ms=\"").nth(1)?;
    cell.split('"').next()?.parse().ok()
}

fn has(pixels: &[[u8; 3]], rgb: [u8; 3]) -> usize {
    pixels.iter().filter(|p| **p == rgb).count()
}

/// The page shows both gaps as tapwatch measured them live, and beside them the lab's
/// own truth.
fn assert_gaps(dom: &str, (truth, row): &(Value, Value)) {
    for gap in ["inbound_gap_ms", "outbound_gap_ms"] {
        let shown = dom_ms(dom, gap).unwrap_or_else(|| panic!("no {gap} on the page"));
        assert_eq!(Some(shown), row[gap].as_u64(), "{gap} as measured live");
        let said = dom_ms(dom, &format!("truth_{gap}"));
        assert_eq!(said, truth[gap].as_u64(), "the lab's {gap} on the page");
    }
}

/// Pixels of the legend's swatch of a lane (14×8): a lane's colour beyond it is its bar.
const SWATCH: usize = 14 * 8;

const NET: [u8; 3] = [0x09, 0x69, 0xda];
const GUEST: [u8; 3] = [0xcf, 0x22, 0x2e];

#[test]
fn stale_mac_bundle_page_in_a_browser() {
    let r = recordings();
    let page = r.dir.join("stale.html");
    analyze_html(&[r.dir.join("stale-mac/dst")], &page);
    let (dom, requests) = open(&page);
    assert_eq!(requests, Vec::<String>::new(), "requests made for the page");
    assert!(
        dom.contains("lab-vm-1") && dom.contains("RECOVERED"),
        "{dom}"
    );
    assert!(
        dom.contains("VM sent to fe:16:3e:aa:bb:cc"),
        "the diagnosis: {dom}"
    );
    assert!(dom.contains("<svg class=\"timeline\""));
    let truth = |k: &str| r.stale.0[k].as_u64();
    assert_gaps(&dom, &r.stale);
    assert_eq!(
        dom_ms(&dom, "blackout_ms"),
        r.stale.1["blackout_ms"].as_u64()
    );
    assert_eq!(
        dom_ms(&dom, "truth_stale_window_ms"),
        truth("stale_window_ms")
    );
    assert_eq!(
        dom_ms(&dom, "truth_client_outage_ms"),
        truth("client_outage_ms")
    );
    let pixels = screenshot(&page, false);
    assert!(
        has(&pixels, GUEST) > 20 * SWATCH,
        "the guest's lane drawn in its colour"
    );
    assert!(has(&pixels, [0xff, 0xff, 0xff]) > pixels.len() / 2, "light");
    // Light on dark when the reader prefers it.
    let dark = screenshot(&page, true);
    assert!(
        has(&dark, [0x0d, 0x11, 0x17]) > dark.len() / 2,
        "dark background"
    );
    // The bundle carries the same story as report.html.
    let (bundled, requests) = open(&r.dir.join("stale-mac/dst/report.html"));
    assert_eq!(requests, Vec::<String>::new());
    assert_eq!(
        dom_ms(&bundled, "blackout_ms"),
        r.stale.1["blackout_ms"].as_u64()
    );
    assert_eq!(
        dom_ms(&bundled, "truth_stale_window_ms"),
        truth("stale_window_ms")
    );
}

#[test]
fn clean_bundle_page_in_a_browser() {
    let r = recordings();
    let page = r.dir.join("clean.html");
    analyze_html(&[r.dir.join("clean/dst")], &page);
    let (dom, requests) = open(&page);
    assert_eq!(requests, Vec::<String>::new());
    assert!(
        dom.contains("lab-vm-1") && !dom.contains("RECOVERED"),
        "{dom}"
    );
    assert_eq!(dom_ms(&dom, "truth_stale_window_ms"), Some(0));
    assert_gaps(&dom, &r.clean);
    assert_eq!(dom_ms(&dom, "outbound_gap_ms"), Some(0));
    assert_eq!(dom_ms(&dom, "blackout_ms"), None, "no blackout");
    let pixels = screenshot(&page, false);
    assert!(
        has(&pixels, NET) > SWATCH + 16,
        "the network's lane beyond its key"
    );
    assert!(
        has(&pixels, GUEST) <= SWATCH,
        "no guest lane drawn, only its key"
    );
}

#[test]
fn pair_page_in_a_browser() {
    let r = recordings();
    let page = r.dir.join("pair.html");
    let dirs = [r.dir.join("stale-mac/src"), r.dir.join("stale-mac/dst")];
    analyze_html(&dirs, &page);
    let (dom, requests) = open(&page);
    assert_eq!(requests, Vec::<String>::new());
    for want in ["source host", "downtime", "paused on the source", "≠ "] {
        assert!(dom.contains(want), "{want}: {dom}");
    }
    let truth = |k: &str| r.stale.0[k].as_u64();
    assert_gaps(&dom, &r.stale);
    let down = dom_ms(&dom, "downtime_ms").expect("a downtime");
    let real = truth("downtime_ms").unwrap();
    assert!(
        down.abs_diff(real) < 50,
        "downtime {down} ms, the lab paused {real} ms"
    );
    let pixels = screenshot(&page, false);
    assert!(has(&pixels, GUEST) > 20 * SWATCH);
    assert!(
        pixels
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 16
    );
}

/// The check of requests sees what a page loads: a control page's image, style sheet and
/// CSS background each show in chromium's network log.
#[test]
fn the_request_check_sees_loads() {
    require_root();
    let dir = Scratch::new("page-control");
    let page = dir.join("control.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><img src=\"http://tapwatch.invalid/i.png\">\
         <link rel=stylesheet href=\"https://tapwatch.invalid/s.css\">\
         <div style=\"background:url(http://tapwatch.invalid/b.png)\">x</div>",
    )
    .unwrap();
    let started = Instant::now();
    let (_, requests) = open(&page);
    assert_eq!(requests.len(), 3, "{requests:?} ({:?})", started.elapsed());
    assert!(requests.iter().all(|u| u.contains("tapwatch.invalid")));
}
