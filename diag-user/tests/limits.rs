//! What parsing foreign input may cost in memory, measured by a counting allocator (this
//! test binary's own, so nothing else runs beside it): the worst libvirt status files
//! within the limits (docs/failures.md), and files past them.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
};

use diag_user::collect::identity::libvirt::{
    parse_domain, MAX_ELEMENT_ATTRIBUTES, MAX_MARKUP, MAX_NODES, MAX_STATUS_FILE,
};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = NOW.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            NOW.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A status file with `body` in its metadata.
fn status_file(body: &str) -> String {
    format!(
        "<domstatus state='running' reason='booted'><domain type='kvm'><name>web-1</name>\
         <metadata>{body}</metadata><devices><interface type='ethernet'>\
         <mac address='fa:16:3e:aa:bb:cc'/><target dev='tap0' managed='no'/></interface>\
         </devices></domain></domstatus>"
    )
}

/// As many `unit`s as fit in a status file within `room` bytes and `markup` of each of
/// '<' and '='.
fn filled(unit: &str, room: usize) -> String {
    let plain = status_file("");
    let fit = |c: char| {
        let per = unit.matches(c).count();
        (per > 0).then(|| (MAX_MARKUP - plain.matches(c).count()) / per)
    };
    let n = [fit('<'), fit('='), Some((room - plain.len()) / unit.len())]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
    status_file(&unit.repeat(n))
}

/// Bytes allocated at most while `xml` is parsed (beyond what was allocated before).
fn peak_of(xml: &str) -> (usize, bool) {
    let before = NOW.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let read = parse_domain(xml, Path::new("x.xml")).is_ok();
    (PEAK.load(Ordering::Relaxed) - before, read)
}

/// The parse of one status file never takes more than this, whatever the file.
const MEMORY_BOUND: usize = 32 << 20;

/// One test: the counters are the whole process's.
#[test]
fn the_worst_status_files_cost_a_bounded_memory() {
    let size = MAX_STATUS_FILE as usize;
    let attrs: String = (0..MAX_ELEMENT_ATTRIBUTES)
        .map(|i| format!(" a{i}=''"))
        .collect();
    let within = [
        ("elements", filled("<a/>", size)),
        (
            "texts and elements",
            // The plain file's own nodes are fewer than 32.
            status_file(&"x<a/>".repeat((MAX_NODES as usize - 32) / 2)),
        ),
        ("attributes", filled(&format!("<a{attrs}/>"), size)),
        ("'=' in text", filled("=", size)),
        ("entities", filled("&lt;&#x202e;", size)),
        (
            "one huge attribute",
            filled("&amp;", size - 16)
                .replacen("<metadata>", "<metadata><a b='", 1)
                .replacen("</metadata>", "'/></metadata>", 1),
        ),
        (
            "deep",
            status_file(&format!("{}{}", "<a>".repeat(60), "</a>".repeat(60))),
        ),
    ];
    for (what, xml) in within {
        let (peak, read) = peak_of(&xml);
        assert!(read, "{what} is within the limits");
        assert!(
            peak < MEMORY_BOUND,
            "{what}: {peak} bytes for a file of {}",
            xml.len()
        );
    }
    // Past a limit: refused before the parser reserves anything.
    let past = [
        ("'<'", status_file(&"<a/>".repeat(MAX_MARKUP))),
        ("'='", status_file(&"=".repeat(MAX_MARKUP + 1))),
        ("size", status_file(&"x".repeat(size))),
        ("depth", status_file(&"<a>".repeat(size / 3 - 100))),
    ];
    for (what, xml) in past {
        let (peak, read) = peak_of(&xml);
        assert!(!read, "{what} is past a limit");
        assert!(peak < 1 << 20, "{what}: {peak} bytes to refuse it");
    }
}
