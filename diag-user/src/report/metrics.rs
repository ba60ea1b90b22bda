//! `tapwatch serve`'s metrics, in the Prometheus text exposition format (the `prometheus`
//! crate's encoder).
//!
//! Per-tap series are read from the run's registry of taps when a scrape comes (under the
//! pipeline's lock, briefly: a copy of a few numbers per tap), so the exporter keeps no
//! per-tap state of its own: a tap's counts are the registry's, its series go when the
//! registry forgets it, a VM named later is named at the next scrape. They carry the
//! labels `ifname`, `vm`, `nova_uuid` and `domain` (empty when not known, which Prometheus
//! treats as absent), and are few per tap (docs/metrics.md): distributions are per host,
//! in histograms that [`MetricsUpdater`] feeds from what the engine settles, each figure
//! once.

use std::sync::{Arc, OnceLock, Weak};

use prometheus::{
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub use super::health::{Health, Unhealthy};
use crate::{
    model::{nudge::NudgeResult, DatapathKind, Record, State},
    registry::Tap,
    report::pipeline::Pipeline,
    verdict::{Engine, Settled},
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The labels of every per-tap series, in this order.
const TAP_LABELS: [&str; 4] = ["ifname", "vm", "nova_uuid", "domain"];

/// Seconds, from a switch-over's 0.1 s to the incident's 30 s and beyond.
const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0,
];

/// The per-tap metrics: name, type, help.
const PER_TAP: [(&str, MetricType, &str); 9] = [
    (
        "tapwatch_dst_mismatch_frames_total",
        MetricType::COUNTER,
        "Frames from the VM to a unicast MAC its tap does not have (the host drops them).",
    ),
    (
        "tapwatch_rarp_frames_total",
        MetricType::COUNTER,
        "RARP announces from the VM (QEMU announces a VM that resumed after a migration).",
    ),
    (
        "tapwatch_garp_frames_total",
        MetricType::COUNTER,
        "Gratuitous ARPs from the VM.",
    ),
    (
        "tapwatch_kernel_drops_total",
        MetricType::COUNTER,
        "Frames the kernel dropped on the tap, by drop reason (drop-driven datapath).",
    ),
    (
        "tapwatch_events_lost_total",
        MetricType::COUNTER,
        "Frame events the kernel could not hand to tapwatch (its ring buffer was full); the \
         counters stay exact.",
    ),
    (
        "tapwatch_vm_state",
        MetricType::GAUGE,
        "1, labelled with the VM's current state on this tap (OK, BLACKOUT, RECOVERED, \
         QUIET, GONE).",
    ),
    (
        "tapwatch_blackouts_total",
        MetricType::COUNTER,
        "Blackouts seen: the VM started sending to a MAC its routed tap does not have.",
    ),
    (
        "tapwatch_vm_blackout_seconds",
        MetricType::GAUGE,
        "The tap's blackout so far while it lasts, else the length of its last one.",
    ),
    (
        "tapwatch_vm_at_risk",
        MetricType::GAUGE,
        "1 while a blackout is foreseen for a VM migrating in that has not resumed yet (its \
         tap's MAC is not the one its guest has cached), else 0.",
    ),
];

/// What a scrape shows of one tap, copied out of the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct TapSeries {
    labels: [String; 4],
    counters: [u64; 3],
    events_lost: u64,
    kernel_drops: Vec<(String, u64)>,
    state: State,
    blackouts: u64,
    blackout_seconds: Option<f64>,
    at_risk: bool,
}

impl TapSeries {
    pub fn of(t: &Tap, now: crate::model::clock::Ts) -> Self {
        let vm = t.vm.as_ref();
        let c = &t.counters;
        Self {
            labels: [
                t.ifname.clone(),
                t.vm_name().to_string(),
                // Nova's instance UUID: its libvirt domain's, else os-vif's on the OVS port.
                vm.and_then(|v| v.nova_uuid())
                    .unwrap_or_default()
                    .to_string(),
                vm.map(|v| v.domain.clone()).unwrap_or_default(),
            ],
            counters: [c.dst_mismatch_frames, c.rarp_frames, c.garp_frames],
            events_lost: c.events_lost,
            kernel_drops: c
                .kernel_drops
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
            state: t.state,
            blackouts: t.blackouts,
            blackout_seconds: t.blackout_ms(now).map(|ms| ms as f64 / 1000.0),
            at_risk: t
                .forecast
                .as_ref()
                .is_some_and(|f| f.at_risk && f.standing()),
        }
    }

    fn labels(&self, extra: Option<(&str, &str)>) -> Vec<LabelPair> {
        let pair = |name: &str, value: &str| {
            let mut l = LabelPair::default();
            l.set_name(name.to_string());
            l.set_value(value.to_string());
            l
        };
        let mut v: Vec<LabelPair> = TAP_LABELS
            .iter()
            .zip(&self.labels)
            .map(|(n, v)| pair(n, v))
            .collect();
        if let Some((n, value)) = extra {
            v.push(pair(n, value));
        }
        v
    }

    /// This tap's samples of the metric at `which` in [`PER_TAP`].
    fn samples(&self, which: usize) -> Vec<Metric> {
        let counter = |labels: Vec<LabelPair>, n: u64| {
            let mut m = Metric::from_label(labels);
            let mut c = Counter::default();
            c.set_value(n as f64);
            m.set_counter(c);
            m
        };
        let gauge = |labels: Vec<LabelPair>, v: f64| {
            let mut g = Gauge::default();
            g.set_value(v);
            let mut m = Metric::from_gauge(g);
            m.set_label(labels);
            m
        };
        match which {
            0..=2 => vec![counter(self.labels(None), self.counters[which])],
            3 => self
                .kernel_drops
                .iter()
                .map(|(r, n)| counter(self.labels(Some(("reason", r))), *n))
                .collect(),
            4 => vec![counter(self.labels(None), self.events_lost)],
            5 => vec![gauge(
                self.labels(Some(("state", self.state.as_str()))),
                1.0,
            )],
            6 => vec![counter(self.labels(None), self.blackouts)],
            8 => vec![gauge(self.labels(None), f64::from(u8::from(self.at_risk)))],
            _ => self
                .blackout_seconds
                .map(|s| gauge(self.labels(None), s))
                .into_iter()
                .collect(),
        }
    }
}

/// The host-wide metrics, and where the per-tap ones come from: shared by the updater and
/// the HTTP server.
pub struct Metrics {
    registry: Registry,
    blackout_seconds: Histogram,
    inbound_gap: Histogram,
    outbound_gap: Histogram,
    taps: IntGauge,
    build_info: IntGaugeVec,
    nudges: IntCounterVec,
    /// The run's pipeline, whose registry the per-tap series are read from.
    source: OnceLock<Weak<Pipeline>>,
}

impl Metrics {
    pub fn new() -> Result<Arc<Self>, MetricsError> {
        let seconds = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        };
        let m = Self {
            registry: Registry::new(),
            blackout_seconds: seconds(
                "tapwatch_blackout_seconds",
                "Length of each ended blackout on this host, first stale frame to the first \
                 frame to the tap's MAC.",
            )?,
            inbound_gap: seconds(
                "tapwatch_inbound_gap_seconds",
                "From a migration's switch-over to the first data frame delivered to the VM: \
                 the network's part.",
            )?,
            outbound_gap: seconds(
                "tapwatch_outbound_gap_seconds",
                "From a migration's switch-over to the first frame from the VM the host \
                 accepted: the guest's stale neighbour cache.",
            )?,
            taps: IntGauge::new("tapwatch_taps", "Taps watched now.")?,
            build_info: IntGaugeVec::new(
                Opts::new(
                    "tapwatch_build_info",
                    "1, labelled with tapwatch's version and the datapath this run uses.",
                ),
                &["version", "datapath"],
            )?,
            nudges: IntCounterVec::new(
                Opts::new(
                    "tapwatch_nudges_total",
                    "Nudges written into taps on this host, by outcome: recovered (the guest \
                     sent to the tap's MAC after it), no_effect, refused (nothing sent), failed.",
                ),
                &["result"],
            )?,
            source: OnceLock::new(),
        };
        // Every outcome is a series from the start, so that a rate over it is defined.
        for r in [
            NudgeResult::Recovered,
            NudgeResult::NoEffect,
            NudgeResult::Refused,
            NudgeResult::Failed,
        ] {
            m.nudges.with_label_values(&[r.as_str()]);
        }
        let r = &m.registry;
        r.register(Box::new(m.blackout_seconds.clone()))?;
        r.register(Box::new(m.inbound_gap.clone()))?;
        r.register(Box::new(m.outbound_gap.clone()))?;
        r.register(Box::new(m.taps.clone()))?;
        r.register(Box::new(m.build_info.clone()))?;
        r.register(Box::new(m.nudges.clone()))?;
        Ok(Arc::new(m))
    }

    /// Reads the per-tap series from `pipeline`'s registry from now on.
    pub fn follow(&self, pipeline: &Arc<Pipeline>) {
        let _ = self.source.set(Arc::downgrade(pipeline));
    }

    /// The series of every tap the registry holds, live or gone (until it forgets them).
    fn tap_series(&self) -> Vec<TapSeries> {
        match self.source.get().and_then(Weak::upgrade) {
            Some(p) => {
                let head = p.head();
                let e = &head.engine;
                let now = e.now.unwrap_or_default();
                // A name taken again by a new tap (a VM rebooted hard, libvirt reusing
                // vnetN) is the new tap's: the one that went is no longer shown under it.
                let mut seen = std::collections::HashSet::new();
                let mut v: Vec<TapSeries> = e
                    .taps()
                    .iter()
                    .rev()
                    .filter(|t| seen.insert((t.key.netns, t.ifname.as_str())))
                    .map(|t| TapSeries::of(t, now))
                    .collect();
                v.reverse();
                v
            }
            None => Vec::new(),
        }
    }

    /// The text exposition format (version 0.0.4) of every metric.
    pub fn encode(&self) -> Result<Vec<u8>, MetricsError> {
        let taps = self.tap_series();
        let mut families = self.registry.gather();
        for (i, (name, kind, help)) in PER_TAP.iter().enumerate() {
            let metrics: Vec<Metric> = taps.iter().flat_map(|t| t.samples(i)).collect();
            if metrics.is_empty() {
                continue;
            }
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(*kind);
            f.set_metric(metrics);
            families.push(f);
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(256 + 1024 * taps.len());
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(out)
    }

    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Every metric's name (as a query names it; a histogram's series add `_bucket`,
    /// `_sum` and `_count`), whether or not it has series yet.
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 6] = [
            &self.blackout_seconds,
            &self.inbound_gap,
            &self.outbound_gap,
            &self.taps,
            &self.build_info,
            &self.nudges,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .chain(PER_TAP.iter().map(|(n, _, _)| n.to_string()))
            .collect()
    }
}

/// Keeps the host-wide metrics in step with the engine; owned by the pipeline.
pub struct MetricsUpdater {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl MetricsUpdater {
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self { metrics, health }
    }

    /// The run's datapath, for `tapwatch_build_info`.
    pub fn datapath(&mut self, kind: DatapathKind) {
        self.metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kind.as_str()])
            .set(1);
    }

    /// One record the engine applied: what it settled goes into the histograms; a stats
    /// record says the loop is alive.
    pub fn observe(&mut self, engine: &Engine, rec: &Record) {
        let m = &self.metrics;
        for s in engine.settled() {
            let (h, ms) = match *s {
                Settled::Blackout { ms } => (&m.blackout_seconds, ms),
                Settled::InboundGap { ms } => (&m.inbound_gap, ms),
                Settled::OutboundGap { ms } => (&m.outbound_gap, ms),
            };
            h.observe(ms as f64 / 1000.0);
        }
        match rec {
            Record::Stats { taps, .. } => {
                m.taps.set(taps.len() as i64);
                self.health.tick(taps.len());
            }
            // A nudge is counted once, by its last word (a dry run is no nudge).
            Record::Nudge(n) if n.result.is_final() && n.result != NudgeResult::DryRun => {
                m.nudges.with_label_values(&[n.result.as_str()]).inc();
            }
            _ => {}
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
mod tests;
