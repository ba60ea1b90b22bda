//! What a run of weeks gives back to the system. glibc's allocator keeps what it once held:
//! one arena per thread that ever allocated (up to eight per CPU), each keeping its free
//! pages. A churn of taps (records, link changes and identities made on the collector's,
//! the pipeline's and the HTTP threads) leaves each arena at its own high-water mark, so
//! `serve` held about 60 MB more than the live taps needed. Two arenas bound that spread,
//! and trimming after departed taps are forgotten returns their pages.

use std::{
    sync::atomic::{AtomicU64, Ordering},
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

/// Returns freed pages of every arena to the system, at most once a second (a trim walks
/// the heaps; a churn of hundreds of taps a second must not pay it each time).
pub fn give_back() {
    static LAST_S: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_S.swap(now, Ordering::Relaxed) == now {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
