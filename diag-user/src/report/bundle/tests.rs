use std::os::unix::fs::PermissionsExt;

use super::*;

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("tw-dir-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}

/// The directory's checks, which need no root: every spelling of a symlink, a file,
/// a non-empty directory, names that are not names.
#[test]
fn the_bundle_directory_is_checked_once_and_strictly() {
    let s = scratch("checks");
    let target = s.0.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = s.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for spelling in [
        link.clone(),
        PathBuf::from(format!("{}/", link.display())),
        PathBuf::from(format!("{}/.", link.display())),
    ] {
        let e = Dir::open(&spelling).err().expect("refused");
        assert!(matches!(e, BundleError::Symlink(_)), "{spelling:?}: {e}");
    }
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o755,
        "the target was not touched"
    );
    let file = s.0.join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(matches!(
        Dir::open(&file),
        Err(BundleError::NotADirectory(_))
    ));
    let full = s.0.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), "x").unwrap();
    assert!(matches!(Dir::open(&full), Err(BundleError::NotEmpty(_))));
    for bad in ["/", ".", "..", "a/.."] {
        assert!(
            matches!(Dir::open(Path::new(bad)), Err(BundleError::BadName(_))),
            "{bad}"
        );
    }
    let fresh = s.0.join("new");
    let d = Dir::open(&fresh).unwrap();
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Files only through the open directory, never over an existing one.
    d.create("events.ndjson").unwrap();
    assert!(d.create("events.ndjson").is_err());
    // An existing, empty directory of our own is fine too.
    std::fs::create_dir(s.0.join("empty")).unwrap();
    Dir::open(&s.0.join("empty/")).unwrap();
}

/// A reserve gives its room back whole and takes it back whole when there is room.
#[test]
fn a_reserve_lends_its_room_and_takes_it_back() {
    let s = scratch("reserve");
    let f = File::create(s.0.join("spare")).unwrap();
    let mut r = Reserve::new(f, 1 << 20);
    assert_eq!(r.held(), 1 << 20);
    r.release();
    assert_eq!(r.held(), 0);
    assert_eq!(std::fs::metadata(s.0.join("spare")).unwrap().len(), 0);
    assert!(r.refill());
    assert_eq!(r.held(), 1 << 20);
}

/// A report that cannot be put in place leaves no half-written `.tmp` behind (it
/// would be taken for the report).
#[test]
fn a_report_that_fails_leaves_nothing_half_written() {
    let s = scratch("replace");
    let d = Dir::open(&s.0.join("b")).unwrap();
    // A directory where host.json goes: the rename fails after the write.
    std::fs::create_dir(s.0.join("b/host.json")).unwrap();
    assert!(d.replace("host.json", b"{}").is_err());
    assert!(!s.0.join("b/host.json.tmp").exists());
    d.replace("summary.md", b"# ok\n").unwrap();
    assert_eq!(std::fs::read(s.0.join("b/summary.md")).unwrap(), b"# ok\n");
}

/// The characters of `md` outside a backslash escape.
fn unescaped(md: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in md.chars() {
        match (escaped, c) {
            (false, '\\') => escaped = true,
            (false, c) => out.push(c),
            (true, _) => escaped = false,
        }
    }
    out
}

/// summary.md of a blackout of tapA whose VM libvirt calls `name`, on a tap renamed
/// from `old`.
fn summary_md(name: &str, old: &str) -> String {
    use crate::verdict::{fixtures::*, EngineConfig};
    let s = scratch("summary-names");
    let dir = s.0.join("b");
    let mut b = Bundle::create(BundleOptions {
        dir: dir.clone(),
        max_bytes: 1 << 20,
        pack: false,
    })
    .unwrap();
    let mut engine = Engine::new(EngineConfig::default());
    let mut recs = vec![
        attached(0, old, NEW, "routed"),
        Record::Renamed {
            ts: at(1),
            ifname: "tapA".into(),
            old_ifname: old.into(),
            ifindex: 7,
        },
        identity(2, "tapA", name),
    ];
    recs.extend(stale_mac_story("tapA", 0));
    for r in &recs {
        engine.apply(r);
        b.emit(r).unwrap();
    }
    let snap = b.snapshot(&engine);
    b.finish(&snap).unwrap();
    std::fs::read_to_string(dir.join("summary.md")).unwrap()
}

/// summary.md shows a VM's name, its taps' names and its timeline as text: no name makes
/// a heading, a table row, a link or markup of its own, or talks to the terminal that
/// shows the file.
#[test]
fn foreign_names_are_text_in_summary_md() {
    use crate::verdict::fixtures::{assert_inert, NEWLINE_NAME, TERMINAL_NAME};
    let markup = "| web | 1 |\n## pwned <img src=x> [a](b) *b* `c` &#x202e; _d_ ~e~ \\";
    let plain = summary_md("web-1", "tapold");
    let syntax = |md: &str| -> Vec<usize> {
        let md = unescaped(md);
        "|#<>[]*`&_~!$"
            .chars()
            .map(|c| md.matches(c).count())
            .collect()
    };
    for name in [NEWLINE_NAME, TERMINAL_NAME, markup] {
        let md = summary_md(name, &format!("tap{name}"));
        assert_inert(&md);
        assert_eq!(
            md.lines().count(),
            plain.lines().count(),
            "a line per line: {md}"
        );
        assert_eq!(syntax(&md), syntax(&plain), "Markdown of its own: {md}");
    }
}
