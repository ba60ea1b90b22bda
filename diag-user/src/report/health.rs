//! Whether `tapwatch serve`'s counting loop is alive, for `/healthz` and for the 503 that
//! keeps frozen metrics from reading as "all quiet".

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Whether the watch loop is alive, for `/healthz`: it ticks once per stats interval.
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the last stats record, plus one (0: none yet).
    last_tick: AtomicU64,
    interval: Duration,
    taps: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl Health {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_tick: AtomicU64::new(0),
            interval,
            taps: AtomicU64::new(0),
            failed: Mutex::new(None),
        })
    }

    pub(super) fn tick(&self, taps: usize) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.last_tick.store(ms, Ordering::Relaxed);
        self.taps.store(taps as u64, Ordering::Relaxed);
    }

    /// The run stopped counting (its error).
    pub fn fail(&self, why: String) {
        if let Ok(mut f) = self.failed.lock() {
            *f = Some(why);
        }
    }

    /// `Ok(what)` when healthy, else why not.
    pub fn check(&self) -> Result<String, Unhealthy> {
        if let Some(why) = self.failed.lock().ok().and_then(|f| f.clone()) {
            return Err(Unhealthy::Failed(why));
        }
        let last = self.last_tick.load(Ordering::Relaxed);
        if last == 0 {
            return Err(Unhealthy::Starting);
        }
        let since = self
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last - 1));
        // A few missed intervals are a busy host; more is a stalled loop.
        let allowed = self.interval * 3 + Duration::from_secs(5);
        if since > allowed {
            return Err(Unhealthy::Stalled {
                since,
                interval: self.interval,
            });
        }
        Ok(format!(
            "ok: {} taps watched",
            self.taps.load(Ordering::Relaxed)
        ))
    }
}

/// Why `/healthz` says no.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("starting: no stats interval has completed yet")]
    Starting,
    #[error("stalled: no stats for {:.1} s (interval {:.1} s)", since.as_secs_f64(), interval.as_secs_f64())]
    Stalled { since: Duration, interval: Duration },
    #[error("not counting: {0}")]
    Failed(String),
}

impl Unhealthy {
    /// Whether the metrics would mislead: values frozen while frames go uncounted. A scrape
    /// then fails, so Prometheus's `up` is 0 and the alert on it fires.
    pub fn stale_metrics(&self) -> bool {
        !matches!(self, Unhealthy::Starting)
    }
}
