use super::*;
use crate::verdict::fixtures::*;

fn collector(recs: &[Record]) -> Collector {
    let mut c = Collector::new();
    for r in recs {
        c.take(r);
    }
    c
}

fn stale(name: &str) -> Vec<Record> {
    let mut v = vec![
        identity(0, "tapA", name),
        attached(0, "tapA", OLD, "routed"),
    ];
    v.extend(stale_mac_story("tapA", 0));
    v.push(frame(1200, "tapA", "to_vm", "inbound", GUEST));
    v
}

fn input() -> Vec<Input> {
    vec![Input {
        role: "bundle".into(),
        path: "/tmp/b".into(),
        host: None,
    }]
}

/// Whatever a page holds, it refers to nothing outside itself.
fn assert_self_contained(html: &str) {
    let found = outside_references(html);
    assert!(found.is_empty(), "{found:?}");
    assert!(!html.contains("<script"));
}

/// The check itself finds what would load.
#[test]
fn the_check_finds_references() {
    for bad in [
        "<img src=x>",
        "<a href=\"https://x\">",
        "<link rel=stylesheet href=a.css>",
        "<svg><use xlink:href=\"#a\"/></svg>",
        "<style>body{background:url(x.png)}</style>",
        "<style>@import 'a.css';</style>",
        "<div style=\"background:url(//x)\">",
    ] {
        assert!(!outside_references(bad).is_empty(), "{bad}");
    }
    assert!(outside_references("<a href=\"#vm-0\">&lt;img src=x&gt;</a>").is_empty());
}

#[test]
fn a_stale_mac_migration_on_one_page() {
    let c = collector(&stale("web-1"));
    let html = render(&c.page(input(), &[]));
    assert_self_contained(&html);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        html.contains("<title>tapwatch: web-1 RECOVERED</title>"),
        "{html}"
    );
    assert!(html.contains("<svg class=\"timeline\""));
    assert!(html.contains("VM still sends") || html.contains("Blackout of 19910 ms"));
    assert!(
        html.contains(r#"<tr data-n="inbound_gap_ms"><th>network's part (inbound gap)</th><td class="num" data-ms="1000">1 s</td>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"data-n="outbound_gap_ms""#) && html.contains(r#"data-ms="20210""#),
        "{html}"
    );
    assert!(html.contains("@page") && html.contains("size: A4"));
    assert!(html.contains("prefers-color-scheme: dark"));
}

/// Names are hostile input: they are text on the page, never markup.
#[test]
fn hostile_names_are_text() {
    let name = "<script>alert(1)</script><img src=x onerror=alert(2)>\u{202e}&amp;\"'";
    let c = collector(&stale(name));
    let html = render(&c.page(input(), &[name.to_string()]));
    assert_self_contained(&html);
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&amp;amp;"));
    assert!(
        !html.contains('\u{202e}'),
        "bidi controls are shown escaped"
    );
    assert!(html.contains("\\u{202e}"));
}

#[test]
fn no_migration_no_picture() {
    let c = collector(&[
        attached(0, "tapQ", NEW, "routed"),
        stats(1000, "tapQ", 10, 0),
    ]);
    let html = render(&c.page(input(), &[]));
    assert_self_contained(&html);
    assert!(html.contains("No migration was seen on this tap"));
    assert!(!html.contains("<svg"));
}

/// A recording of thousands of taps: a page of bounded size, the troubled VMs first.
#[test]
fn many_taps_stay_bounded() {
    let mut recs: Vec<Record> = (0..2000)
        .map(|i| attached(0, &format!("tap{i:05}"), NEW, "routed"))
        .collect();
    recs.extend(stale("web-1"));
    let page = collector(&recs).page(input(), &[]);
    assert_eq!(page.vms.len(), MAX_TOLD);
    assert_eq!(page.vms[0].tap.ifname, "tapA", "the blackout first");
    assert_eq!(page.vms.len() + page.others.len(), MAX_LISTED);
    assert_eq!(page.unlisted, 2001 - MAX_LISTED);
    let html = render(&page);
    assert!(html.len() < 2 << 20, "{} bytes", html.len());
    assert!(html.contains(&format!("{} more taps are not listed", 2001 - MAX_LISTED)));
}

#[test]
fn a_pair_on_one_axis() {
    let c = collector(&stale("web-1"));
    let m = MigrationRecord {
        ts: at(200),
        vm: "web-1".into(),
        src_ifname: Some("tapS".into()),
        dst_ifname: "tapA".into(),
        pause_ts: Some(at(-150)),
        pause_from: "libvirt's status file".into(),
        resume_ts: Some(at(200)),
        downtime_ms: Some(350),
        clock_uncertainty_ms: Some(1.5),
        inbound_gap_ms: Some(1000),
        outbound_gap_ms: Some(20_210),
        blackout_ms: Some(19_910),
        host_diff: vec![],
        notes: vec!["a <b>note</b>".into()],
    };
    let facts = vec![HostFact {
        fact: "kernel".into(),
        src: "6.1".into(),
        dst: "6.18".into(),
    }];
    let page = Page::of_pair(input(), &[(m, facts)], &c);
    let html = render(&page);
    assert_self_contained(&html);
    for want in [
        "source host",
        "downtime",
        r#"data-n="downtime_ms""#,
        r#"data-ms="350""#,
        "± 1.5 ms",
        "≠ kernel",
        "a &lt;b&gt;note&lt;/b&gt;",
    ] {
        assert!(html.contains(want), "{want}: {html}");
    }
}

#[test]
fn where_the_page_cannot_go() {
    let dir = std::env::temp_dir().join(format!("tw-page-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nope/report.html");
    let e = write(&missing, "x").unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = write(&dir, "x").unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
    let e = write(Path::new("/proc/self/report.html"), "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot write the report page"), "{e}");
    // A page written over another is whole or not there; nothing half-written is left.
    let f = dir.join("r.html");
    write(&f, "old").unwrap();
    write(&f, "new").unwrap();
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "new");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
