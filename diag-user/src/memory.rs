//! What a run of weeks gives back to the system. glibc's allocator keeps what it once held:
//! one arena per thread that ever allocated (up to eight per CPU), each keeping its free
//! pages. A churn of taps (records, link changes and identities made on the collector's,
//! the pipeline's and the HTTP threads) leaves each arena at its own high-water mark, so
//! `serve` held about 60 MB more than the live taps needed. Two arenas bound that spread,
//! and trimming after departed taps are forgotten returns their pages.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Fewer malloc arenas for a long-running process; called before its threads start (it
/// applies to arenas made afterwards).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; any value is accepted.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Owes the system the pages of what was just freed (departed taps forgotten): returned
/// now, or by [`settle`] within a second.
pub fn give_back() {
    OWED.store(true, Ordering::Relaxed);
    settle();
}

/// Returns freed pages of every arena to the system if a trim is owed, at most once a
/// second (a trim walks the heaps; a churn of hundreds of taps a second must not pay it
/// each time); called at every stats interval, so the last of a churn is returned too.
pub fn settle() {
    if !OWED.load(Ordering::Relaxed) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_S.swap(now, Ordering::Relaxed) == now {
        return;
    }
    OWED.store(false, Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

static LAST_S: AtomicU64 = AtomicU64::new(0);
static OWED: AtomicBool = AtomicBool::new(false);
