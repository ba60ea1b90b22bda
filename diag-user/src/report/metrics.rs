//! `tapwatch serve`'s metrics, in the Prometheus text exposition format (the `prometheus`
//! crate's registry and encoder).
//!
//! The pipeline updates them from what its engine knows, with each `stats` record and
//! each state change ([`MetricsUpdater`], on the pipeline's thread); a scrape only encodes
//! what is there ([`Metrics::encode`], on the HTTP server's thread). Per-tap series carry
//! the labels `ifname`, `vm`, `nova_uuid` and `domain` (empty when not known, which
//! Prometheus treats as absent) and are removed a grace period after their tap went away,
//! so memory follows the live taps.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::{
    model::{clock::Ts, DatapathKind, Record, State, TapRow},
    verdict::{Engine, Tap as TapView},
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The labels of every per-tap series, in this order.
const TAP_LABELS: [&str; 4] = ["ifname", "vm", "nova_uuid", "domain"];
const STATES: [State; 5] = [
    State::Ok,
    State::Blackout,
    State::Recovered,
    State::Quiet,
    State::Gone,
];
/// Without a blackout this long after a switch-over, the host accepted the VM at once
/// (an outbound gap of 0): a guest with a stale neighbour entry sends to it within
/// moments of resuming.
pub const OUTBOUND_SETTLE: Duration = Duration::from_secs(10);

/// The registry and its metrics: shared by the updater and the HTTP server.
pub struct Metrics {
    registry: Registry,
    dst_mismatch: IntCounterVec,
    rarp: IntCounterVec,
    garp: IntCounterVec,
    kernel_drops: IntCounterVec,
    events_lost: IntCounterVec,
    vm_state: IntGaugeVec,
    blackouts: IntCounterVec,
    blackout_seconds: HistogramVec,
    inbound_gap: HistogramVec,
    outbound_gap: HistogramVec,
    taps: IntGauge,
    build_info: IntGaugeVec,
}

fn with(extra: &str) -> Vec<&str> {
    let mut v = TAP_LABELS.to_vec();
    v.push(extra);
    v
}

impl Metrics {
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        // Seconds, from a switch-over's 0.1 s to the incident's 30 s and beyond.
        let seconds = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
                ]),
                &TAP_LABELS,
            )
        };
        let m = Self {
            registry: Registry::new(),
            dst_mismatch: counter(
                "tapwatch_dst_mismatch_frames_total",
                "Frames from the VM to a unicast MAC its tap does not have (the host drops them).",
                &TAP_LABELS,
            )?,
            rarp: counter(
                "tapwatch_rarp_frames_total",
                "RARP announces from the VM (QEMU announces a VM that resumed after a migration).",
                &TAP_LABELS,
            )?,
            garp: counter(
                "tapwatch_garp_frames_total",
                "Gratuitous ARPs from the VM.",
                &TAP_LABELS,
            )?,
            kernel_drops: counter(
                "tapwatch_kernel_drops_total",
                "Frames the kernel dropped on the tap, by drop reason (drop-driven datapath).",
                &with("reason"),
            )?,
            events_lost: counter(
                "tapwatch_events_lost_total",
                "Frame events the kernel could not hand to tapwatch (its ring buffer was full); \
                 the counters stay exact.",
                &TAP_LABELS,
            )?,
            vm_state: IntGaugeVec::new(
                Opts::new(
                    "tapwatch_vm_state",
                    "1 for the VM's current state on this tap (OK, BLACKOUT, RECOVERED, QUIET, GONE), else 0.",
                ),
                &with("state"),
            )?,
            blackouts: counter(
                "tapwatch_blackouts_total",
                "Blackouts seen: the VM started sending to a MAC its routed tap does not have.",
                &TAP_LABELS,
            )?,
            blackout_seconds: seconds(
                "tapwatch_blackout_seconds",
                "Length of each ended blackout, first stale frame to the first frame to the tap's MAC.",
            )?,
            inbound_gap: seconds(
                "tapwatch_inbound_gap_seconds",
                "From a migration's switch-over to the first data frame delivered to the VM: the network's part.",
            )?,
            outbound_gap: seconds(
                "tapwatch_outbound_gap_seconds",
                "From a migration's switch-over to the first frame from the VM the host accepted: the guest's stale neighbour cache.",
            )?,
            taps: IntGauge::new("tapwatch_taps", "Taps watched now.")?,
            build_info: IntGaugeVec::new(
                Opts::new(
                    "tapwatch_build_info",
                    "1, labelled with tapwatch's version and the datapath this run uses.",
                ),
                &["version", "datapath"],
            )?,
        };
        let r = &m.registry;
        r.register(Box::new(m.dst_mismatch.clone()))?;
        r.register(Box::new(m.rarp.clone()))?;
        r.register(Box::new(m.garp.clone()))?;
        r.register(Box::new(m.kernel_drops.clone()))?;
        r.register(Box::new(m.events_lost.clone()))?;
        r.register(Box::new(m.vm_state.clone()))?;
        r.register(Box::new(m.blackouts.clone()))?;
        r.register(Box::new(m.blackout_seconds.clone()))?;
        r.register(Box::new(m.inbound_gap.clone()))?;
        r.register(Box::new(m.outbound_gap.clone()))?;
        r.register(Box::new(m.taps.clone()))?;
        r.register(Box::new(m.build_info.clone()))?;
        Ok(Arc::new(m))
    }

    /// The text exposition format (version 0.0.4) of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, MetricsError> {
        let mut out = Vec::with_capacity(16 << 10);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }

    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Every metric's name (as a query names it; a histogram's series add `_bucket`,
    /// `_sum` and `_count`), whether or not it has series yet.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 12] = [
            &self.dst_mismatch,
            &self.rarp,
            &self.garp,
            &self.kernel_drops,
            &self.events_lost,
            &self.vm_state,
            &self.blackouts,
            &self.blackout_seconds,
            &self.inbound_gap,
            &self.outbound_gap,
            &self.taps,
            &self.build_info,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }
}

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

    fn tick(&self, taps: usize) {
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

/// What the exporter has said of one tap.
#[derive(Default)]
struct Series {
    labels: [String; 4],
    last: TapRow,
    reasons: BTreeSet<String>,
    state: Option<State>,
    gone_at: Option<Ts>,
    /// The switch-over whose gaps were observed already.
    inbound_of: Option<Ts>,
    outbound_of: Option<Ts>,
}

impl Series {
    fn labels(&self) -> [&str; 4] {
        self.labels.each_ref().map(String::as_str)
    }
}

fn labels_of(ifname: &str, view: Option<&TapView>) -> [String; 4] {
    let vm = view.and_then(|v| v.vm.as_ref());
    [
        ifname.to_string(),
        view.map_or(ifname, |v| v.vm_name()).to_string(),
        // Nova's instance UUID is its libvirt domain's.
        vm.filter(|v| v.nova_name.is_some())
            .and_then(|v| v.uuid.clone())
            .unwrap_or_default(),
        vm.map(|v| v.domain.clone()).unwrap_or_default(),
    ]
}

/// Keeps the metrics in step with the engine; owned by the pipeline.
pub struct MetricsUpdater {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    series: HashMap<String, Series>,
    forget_after: Duration,
    chosen: Option<Arc<OnceLock<DatapathKind>>>,
    build_said: bool,
}

impl MetricsUpdater {
    pub fn new(
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        forget_after: Duration,
        chosen: Option<Arc<OnceLock<DatapathKind>>>,
    ) -> Self {
        Self {
            metrics,
            health,
            series: HashMap::new(),
            forget_after,
            chosen,
            build_said: false,
        }
    }

    /// One record the engine applied, with the verdicts it caused.
    pub fn observe(&mut self, engine: &Engine, rec: &Record, changes: &[Record]) {
        // A tap by a name that was there before (a VM rebooted hard, migrated back within
        // the grace period, libvirt reusing vnetN) starts from zero: the gone tap's series
        // go first, with its counts and its grace period.
        let fresh = match rec {
            Record::Attached { ifname, .. } => Some(ifname),
            Record::Renamed { ifname, .. } => Some(ifname),
            _ => None,
        };
        if let Some(old) = fresh.and_then(|n| self.series.remove(n)) {
            self.remove(&old);
        }
        for c in changes {
            if let Record::Verdict { ifname, fields, .. } = c {
                self.state(engine, ifname, fields.state, fields.blackout_ms);
            }
        }
        match rec {
            Record::Detached { ts, ifname, .. } => {
                if let Some(s) = self.series.get_mut(ifname) {
                    s.gone_at = Some(*ts);
                }
            }
            Record::Renamed {
                ifname, old_ifname, ..
            } => {
                // The same tap: its series are relabelled with the next look at it.
                if let Some(s) = self.series.remove(old_ifname) {
                    self.series.insert(ifname.clone(), s);
                }
            }
            Record::Stats { ts, taps } => self.stats(engine, *ts, taps),
            _ => {}
        }
    }

    fn series(&mut self, engine: &Engine, ifname: &str) -> &mut Series {
        let labels = labels_of(ifname, engine.tap(ifname));
        if self.series.get(ifname).is_some_and(|s| s.labels != labels) {
            if let Some(old) = self.series.remove(ifname) {
                self.relabel(ifname, old, labels.clone());
            }
        }
        self.series
            .entry(ifname.to_string())
            .or_insert_with(|| Series {
                labels,
                ..Series::default()
            })
    }

    /// The VM behind a tap became known (or changed, or the tap was renamed): its counts
    /// and state go on under the new labels. Observations already in the histograms stay
    /// with the old labels, which go.
    fn relabel(&mut self, ifname: &str, old: Series, labels: [String; 4]) {
        let blackouts = self
            .metrics
            .blackouts
            .with_label_values(&old.labels())
            .get();
        self.remove(&old);
        let totals = old.last.clone();
        let state = old.state;
        self.series.insert(
            ifname.to_string(),
            Series {
                labels,
                last: TapRow::default(),
                reasons: BTreeSet::new(),
                state: None,
                ..old
            },
        );
        self.count(ifname, &totals);
        if let Some(st) = state {
            self.set_state(ifname, st);
        }
        if let Some(s) = self.series.get(ifname) {
            self.metrics
                .blackouts
                .with_label_values(&s.labels())
                .inc_by(blackouts);
        }
    }

    fn state(&mut self, engine: &Engine, ifname: &str, state: State, blackout_ms: Option<u64>) {
        let s = self.series(engine, ifname);
        let was = s.state;
        if was == Some(state) {
            return;
        }
        let labels = s.labels.clone();
        let l = labels.each_ref().map(String::as_str);
        let m = &self.metrics;
        if state == State::Blackout {
            m.blackouts.with_label_values(&l).inc();
        }
        if state == State::Recovered && was == Some(State::Blackout) {
            if let Some(ms) = blackout_ms {
                m.blackout_seconds
                    .with_label_values(&l)
                    .observe(ms as f64 / 1000.0);
            }
        }
        self.set_state(ifname, state);
    }

    fn set_state(&mut self, ifname: &str, state: State) {
        let Some(s) = self.series.get_mut(ifname) else {
            return;
        };
        s.state = Some(state);
        for st in STATES {
            let mut l = s.labels().to_vec();
            l.push(st.as_str());
            self.metrics
                .vm_state
                .with_label_values(&l)
                .set(i64::from(st == state));
        }
    }

    /// Counters up to `row`'s cumulative values (a tap created anew under the same name
    /// counts from zero again).
    fn count(&mut self, ifname: &str, row: &TapRow) {
        let Some(s) = self.series.get_mut(ifname) else {
            return;
        };
        let m = &self.metrics;
        let owned = s.labels.clone();
        let l = owned.each_ref().map(String::as_str);
        let up = |c: &IntCounterVec, labels: &[&str], now: u64, before: u64| {
            let delta = if now >= before { now - before } else { now };
            if delta > 0 {
                c.with_label_values(labels).inc_by(delta);
            } else {
                // The series exists from the start, at 0.
                c.with_label_values(labels);
            }
        };
        up(
            &m.dst_mismatch,
            &l,
            row.dst_mismatch_frames,
            s.last.dst_mismatch_frames,
        );
        up(&m.rarp, &l, row.rarp_frames, s.last.rarp_frames);
        up(&m.garp, &l, row.garp_frames, s.last.garp_frames);
        up(&m.events_lost, &l, row.events_lost, s.last.events_lost);
        // At 0 from the start, so that the first blackout is an increase.
        m.blackouts.with_label_values(&l);
        for (reason, &n) in &row.kernel_drops {
            let before = s.last.kernel_drops.get(reason).copied().unwrap_or(0);
            let mut lr = l.to_vec();
            lr.push(reason);
            up(&m.kernel_drops, &lr, n, before);
            s.reasons.insert(reason.clone());
        }
        s.last = row.clone();
    }

    fn stats(&mut self, engine: &Engine, ts: Ts, rows: &[TapRow]) {
        for row in rows {
            self.series(engine, &row.ifname);
            self.count(&row.ifname, row);
            if let Some(view) = engine.tap(&row.ifname) {
                self.gaps(view, ts);
            }
        }
        self.metrics.taps.set(rows.len() as i64);
        self.health.tick(rows.len());
        if !self.build_said {
            if let Some(kind) = self.chosen.as_ref().and_then(|c| c.get()) {
                self.metrics
                    .build_info
                    .with_label_values(&[env!("CARGO_PKG_VERSION"), kind.as_str()])
                    .set(1);
                self.build_said = true;
            }
        }
        let grace = self.forget_after.as_millis() as i64;
        let gone: Vec<String> = self
            .series
            .iter()
            .filter(|(_, s)| s.gone_at.is_some_and(|g| ts.ms_since(g) >= grace))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if let Some(s) = self.series.remove(&name) {
                self.remove(&s);
            }
        }
    }

    /// Each gap once per switch-over, when it is known: the inbound one when the first
    /// data frame reached the VM, the outbound one when the blackout ended, or as 0 once
    /// the VM has run [`OUTBOUND_SETTLE`] without one.
    fn gaps(&mut self, view: &TapView, now: Ts) {
        let Some(sw) = view.switchover() else { return };
        let Some(s) = self.series.get_mut(&view.ifname) else {
            return;
        };
        let labels = s.labels.clone();
        let l = labels.each_ref().map(String::as_str);
        if s.inbound_of != Some(sw) {
            if let Some(ms) = view.inbound_gap_ms() {
                s.inbound_of = Some(sw);
                self.metrics
                    .inbound_gap
                    .with_label_values(&l)
                    .observe(ms as f64 / 1000.0);
            }
        }
        if s.outbound_of != Some(sw) {
            let settled = match view.outbound_gap_ms() {
                Some(0) => now.ms_since(sw) >= OUTBOUND_SETTLE.as_millis() as i64,
                Some(_) => true,
                None => false,
            };
            if let (true, Some(ms)) = (settled, view.outbound_gap_ms()) {
                s.outbound_of = Some(sw);
                self.metrics
                    .outbound_gap
                    .with_label_values(&l)
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Removes every series of a tap.
    fn remove(&self, s: &Series) {
        let m = &self.metrics;
        let l = s.labels();
        for c in [
            &m.dst_mismatch,
            &m.rarp,
            &m.garp,
            &m.events_lost,
            &m.blackouts,
        ] {
            let _ = c.remove_label_values(&l);
        }
        for h in [&m.blackout_seconds, &m.inbound_gap, &m.outbound_gap] {
            let _ = h.remove_label_values(&l);
        }
        for reason in &s.reasons {
            let mut lr = l.to_vec();
            lr.push(reason);
            let _ = m.kernel_drops.remove_label_values(&lr);
        }
        for st in STATES {
            let mut lr = l.to_vec();
            lr.push(st.as_str());
            let _ = m.vm_state.remove_label_values(&lr);
        }
    }
}

/// Reads one sample out of the text format: `name` with every `labels` pair (others may
/// be there too). For tests and tools that check what a scrape says.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::FrameKind,
        report::pipeline::Pipeline,
        verdict::{fixtures::*, EngineConfig},
    };

    fn pipeline(forget: Duration) -> (Arc<Pipeline>, Arc<Metrics>, Arc<Health>) {
        let metrics = Metrics::new().unwrap();
        let health = Health::new(Duration::from_secs(1));
        let config = EngineConfig {
            forget_after: Some(forget),
            ..EngineConfig::default()
        };
        let p = Pipeline::new(Engine::new(config), Vec::new());
        let chosen = Arc::new(OnceLock::new());
        chosen.set(DatapathKind::Drops).unwrap();
        p.set_metrics(MetricsUpdater::new(
            metrics.clone(),
            health.clone(),
            forget,
            Some(chosen),
        ));
        (p, metrics, health)
    }

    fn row(tap: &str, mismatch: u64, rarp: u64) -> TapRow {
        TapRow {
            ifname: tap.into(),
            dst_mismatch_frames: mismatch,
            rarp_frames: rarp,
            kernel_drops: [("OTHERHOST".to_string(), mismatch)].into(),
            ..TapRow::default()
        }
    }

    fn stats_at(ms: i64, rows: Vec<TapRow>) -> Record {
        Record::Stats {
            ts: at(ms),
            taps: rows,
        }
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode().unwrap()).unwrap()
    }

    const TAP_A: [(&str, &str); 4] = [
        ("ifname", "tapA"),
        ("vm", "tapA"),
        ("nova_uuid", ""),
        ("domain", ""),
    ];

    fn with<'a>(extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
        let mut v = TAP_A.to_vec();
        v.push(extra);
        v
    }

    /// The stale-MAC story told by the metrics: exact counts, one blackout of 19.91 s, the
    /// gaps of its switch-over, the state, the build.
    #[test]
    fn a_blackout_in_numbers() {
        let (p, m, health) = pipeline(Duration::from_secs(300));
        p.emit(&attached(0, "tapA", OLD, "routed"));
        p.emit(&stats_at(50, vec![row("tapA", 0, 0)]));
        for r in stale_mac_story("tapA", 0) {
            if matches!(&r, Record::Frame(f) if f.kind == FrameKind::DstMatch) {
                p.emit(&frame(3000, "tapA", "to_vm", "inbound", GUEST));
                p.emit(&stats_at(4000, vec![row("tapA", 2, 5)]));
                let t = text(&m);
                assert_eq!(
                    sample(&t, "tapwatch_vm_state", &with(("state", "BLACKOUT"))),
                    Some(1.0)
                );
                assert_eq!(
                    sample(&t, "tapwatch_inbound_gap_seconds_sum", &TAP_A),
                    Some(2.8)
                );
                assert_eq!(
                    sample(&t, "tapwatch_outbound_gap_seconds_count", &TAP_A),
                    None,
                    "not known during the blackout"
                );
            }
            p.emit(&r);
        }
        p.emit(&stats_at(21_000, vec![row("tapA", 2, 5)]));
        let t = text(&m);
        let v = |name: &str| sample(&t, name, &TAP_A);
        assert_eq!(v("tapwatch_dst_mismatch_frames_total"), Some(2.0));
        assert_eq!(v("tapwatch_rarp_frames_total"), Some(5.0));
        assert_eq!(v("tapwatch_garp_frames_total"), Some(0.0));
        assert_eq!(v("tapwatch_events_lost_total"), Some(0.0));
        assert_eq!(
            sample(
                &t,
                "tapwatch_kernel_drops_total",
                &with(("reason", "OTHERHOST"))
            ),
            Some(2.0)
        );
        assert_eq!(v("tapwatch_blackouts_total"), Some(1.0));
        assert_eq!(v("tapwatch_blackout_seconds_count"), Some(1.0));
        assert_eq!(v("tapwatch_blackout_seconds_sum"), Some(19.91));
        assert_eq!(
            sample(&t, "tapwatch_blackout_seconds_bucket", &with(("le", "15"))),
            Some(0.0)
        );
        assert_eq!(
            sample(&t, "tapwatch_blackout_seconds_bucket", &with(("le", "30"))),
            Some(1.0)
        );
        assert_eq!(v("tapwatch_inbound_gap_seconds_count"), Some(1.0));
        assert_eq!(v("tapwatch_outbound_gap_seconds_sum"), Some(20.21));
        for (state, want) in [("OK", 0.0), ("BLACKOUT", 0.0), ("RECOVERED", 1.0)] {
            assert_eq!(
                sample(&t, "tapwatch_vm_state", &with(("state", state))),
                Some(want),
                "{state}"
            );
        }
        assert_eq!(sample(&t, "tapwatch_taps", &[]), Some(1.0));
        assert_eq!(
            sample(
                &t,
                "tapwatch_build_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("datapath", "drops")
                ]
            ),
            Some(1.0)
        );
        assert!(health.check().is_ok());
    }

    /// A tap that went away is forgotten after the grace period, by the engine too.
    #[test]
    fn departed_taps_are_forgotten() {
        let (p, m, _) = pipeline(Duration::from_secs(60));
        p.emit(&attached(0, "tapA", NEW, "routed"));
        p.emit(&attached(0, "tapB", NEW, "routed"));
        p.emit(&stats_at(1000, vec![row("tapA", 3, 0), row("tapB", 0, 0)]));
        p.emit(&Record::Detached {
            ts: at(2000),
            ifname: "tapA".into(),
            reason: "deleted".into(),
        });
        p.emit(&stats_at(3000, vec![row("tapB", 0, 0)]));
        let t = text(&m);
        assert_eq!(
            sample(&t, "tapwatch_vm_state", &with(("state", "GONE"))),
            Some(1.0),
            "said while in grace"
        );
        assert_eq!(sample(&t, "tapwatch_taps", &[]), Some(1.0));
        p.emit(&stats_at(62_000, vec![row("tapB", 0, 0)]));
        let t = text(&m);
        assert!(!t.contains("ifname=\"tapA\""), "{t}");
        assert!(t.contains("ifname=\"tapB\""));
        assert_eq!(p.head().engine.taps().len(), 1, "the engine forgot it too");
    }

    /// A tap created again under a gone tap's name (within the grace period) starts from
    /// zero, and the old one's forgetting does not take the new one's series with it.
    #[test]
    fn a_tap_back_under_the_same_name_starts_from_zero() {
        let (p, m, _) = pipeline(Duration::from_secs(60));
        p.emit(&attached(0, "tapA", NEW, "routed"));
        p.emit(&stats_at(1000, vec![row("tapA", 3, 2)]));
        p.emit(&Record::Detached {
            ts: at(2000),
            ifname: "tapA".into(),
            reason: "deleted".into(),
        });
        p.emit(&attached(3000, "tapA", NEW, "routed"));
        p.emit(&stats_at(4000, vec![row("tapA", 0, 1)]));
        let t = text(&m);
        assert_eq!(
            sample(&t, "tapwatch_dst_mismatch_frames_total", &TAP_A),
            Some(0.0)
        );
        assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &TAP_A), Some(1.0));
        assert_eq!(
            sample(&t, "tapwatch_vm_state", &with(("state", "GONE"))),
            Some(0.0)
        );
        // Past the old tap's grace period: the new one is still there.
        p.emit(&stats_at(63_000, vec![row("tapA", 0, 1)]));
        let t = text(&m);
        assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &TAP_A), Some(1.0));
        assert_eq!(
            sample(&t, "tapwatch_vm_state", &with(("state", "OK"))),
            Some(1.0)
        );
    }

    /// The VM's name becomes known after the tap's first counts: they go on under its
    /// labels, none lost, none twice.
    #[test]
    fn a_vm_named_later_keeps_its_counts() {
        let (p, m, _) = pipeline(Duration::from_secs(60));
        p.emit(&attached(0, "tapA", NEW, "routed"));
        p.emit(&stats_at(1000, vec![row("tapA", 3, 1)]));
        let vm = crate::verdict::libvirt::VmInterface {
            domain: "instance-0000002b".into(),
            uuid: Some("5c2d9e3f".into()),
            nova_name: Some("web-1".into()),
            tap: "tapA".into(),
            ..Default::default()
        };
        p.emit(&Record::Identity {
            ts: at(1500),
            ifname: "tapA".into(),
            libvirt: Some(vm),
        });
        p.emit(&stats_at(2000, vec![row("tapA", 5, 1)]));
        let t = text(&m);
        let named = [
            ("ifname", "tapA"),
            ("vm", "web-1"),
            ("nova_uuid", "5c2d9e3f"),
            ("domain", "instance-0000002b"),
        ];
        assert_eq!(
            sample(&t, "tapwatch_dst_mismatch_frames_total", &named),
            Some(5.0)
        );
        assert_eq!(sample(&t, "tapwatch_rarp_frames_total", &named), Some(1.0));
        assert!(!t.contains("vm=\"tapA\""), "the unnamed series went: {t}");
    }

    /// No stale frame after a switch-over: an outbound gap of 0, once it has settled.
    #[test]
    fn no_stale_window_is_an_outbound_gap_of_zero() {
        let (p, m, _) = pipeline(Duration::from_secs(60));
        let mut a = attached(0, "tapA", NEW, "routed");
        if let Record::Attached { appeared, .. } = &mut a {
            *appeared = true;
        }
        p.emit(&a);
        p.emit(&frame(100, "tapA", "from_vm", "rarp", BCAST));
        p.emit(&stats_at(1000, vec![row("tapA", 0, 1)]));
        assert_eq!(
            sample(&text(&m), "tapwatch_outbound_gap_seconds_count", &TAP_A),
            None
        );
        p.emit(&stats_at(10_200, vec![row("tapA", 0, 1)]));
        let t = text(&m);
        assert_eq!(
            sample(&t, "tapwatch_outbound_gap_seconds_count", &TAP_A),
            Some(1.0)
        );
        assert_eq!(
            sample(&t, "tapwatch_outbound_gap_seconds_sum", &TAP_A),
            Some(0.0)
        );
        assert_eq!(sample(&t, "tapwatch_blackouts_total", &TAP_A), Some(0.0));
    }
}
