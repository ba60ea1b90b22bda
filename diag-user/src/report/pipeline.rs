//! One run's pipeline: the records a watcher (or the lab) produces go through one verdict
//! engine, then to every output through a queue of its own, written by a thread of its
//! own. A slow output (a pager, a stalled terminal, a slow disk) therefore never stalls
//! the watcher: interfaces are still followed and attached, the ring buffer still read.
//!
//! An output's queue is bounded. When it is full, `frame` and `stats` records for that
//! output are left out and counted (later `stats` records are cumulative, so no counter is
//! lost), and the output gets a `notice` saying how many once it catches up. Every other
//! record is always kept: they are rare and each one matters.

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    model::clock::{Ts, WallClock},
    model::nudge::NudgeRecord,
    model::{DatapathKind, LabEvent, LabRecord, NoticeCode, Record, Sink},
    nudge::Nudger,
    report::metrics::MetricsUpdater,
    verdict::Engine,
};

/// What a queue may hold before it starts leaving out frames and stats (estimated bytes).
const QUEUE_BUDGET: usize = 32 << 20;

/// A rough size of a record in memory, for the queue's budget.
fn weight(rec: &Record) -> usize {
    match rec {
        Record::Stats { taps, .. } => 64 + 320 * taps.len(),
        Record::Summary { taps, .. } => 64 + 1024 * taps.len(),
        _ => 512,
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Record>,
    bytes: usize,
    closed: bool,
    /// Frames and stats left out since the last notice, and when that started.
    dropped_frames: u64,
    dropped_stats: u64,
    dropped_since: Option<Ts>,
    /// The writer stopped: its output failed.
    failed: Option<io::ErrorKind>,
    /// The writer is writing a batch it took.
    busy: bool,
}

struct Shared {
    /// Records the writer has taken so far: progress, for `close`.
    taken: std::sync::atomic::AtomicU64,
    queue: Mutex<Queue>,
    cv: Condvar,
    /// The writer has written everything it was given (or given up).
    idle: Condvar,
    clock: WallClock,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The pipeline's end of an output: takes records without ever blocking.
#[derive(Clone)]
pub struct Pusher {
    shared: Arc<Shared>,
}

impl Pusher {
    pub fn push(&self, rec: &Record) {
        let mut q = self.shared.lock();
        if q.closed || q.failed.is_some() {
            return;
        }
        let w = weight(rec);
        if q.bytes + w > QUEUE_BUDGET {
            match rec {
                Record::Frame(_) => q.dropped_frames += 1,
                Record::Stats { .. } => q.dropped_stats += 1,
                _ => {
                    q.bytes += w;
                    q.items.push_back(rec.clone());
                    self.shared.cv.notify_one();
                    return;
                }
            }
            if q.dropped_since.is_none() {
                q.dropped_since = Some(Ts(self.shared.clock.now()));
            }
            return;
        }
        q.bytes += w;
        q.items.push_back(rec.clone());
        self.shared.cv.notify_one();
    }

    /// How the output failed, if it did.
    pub fn failed(&self) -> Option<io::ErrorKind> {
        self.shared.lock().failed
    }
}

/// The owner's end of an output: closes it and gets the sink back.
pub struct Writer<S> {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<S>>,
}

/// Why closing an output did not get everything written.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("the output took nothing for {0:?}: {1} records were not written")]
    Timeout(Duration, usize),
    #[error("the output's writer thread panicked")]
    Panicked,
}

impl<S: Sink + Send + 'static> Writer<S> {
    /// Starts a writer thread for `sink`. `on_fail` runs once, on the writer thread, if
    /// writing fails (a closed pipe, a full disk).
    pub fn spawn(
        name: &str,
        sink: S,
        on_fail: impl FnOnce(&io::Error) + Send + 'static,
    ) -> io::Result<(Self, Pusher)> {
        let shared = Arc::new(Shared {
            taken: std::sync::atomic::AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            idle: Condvar::new(),
            clock: WallClock::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tapwatch-{name}"))
            .spawn(move || write_loop(&s, sink, on_fail))?;
        Ok((
            Self {
                shared: shared.clone(),
                thread: Some(thread),
            },
            Pusher { shared },
        ))
    }

    /// Waits until everything queued is written, then stops the thread and returns the
    /// sink. A slow output gets all the time it needs while it makes progress; one that
    /// takes nothing for `timeout` (a pager nobody scrolls) is left behind, and said so.
    pub fn close(mut self, timeout: Duration) -> Result<S, CloseError> {
        let mut deadline = Instant::now() + timeout;
        let mut taken = self.shared.taken.load(Ordering::Relaxed);
        {
            let mut q = self.shared.lock();
            q.closed = true;
            self.shared.cv.notify_all();
            while (!q.items.is_empty() || q.busy) && q.failed.is_none() {
                let now_taken = self.shared.taken.load(Ordering::Relaxed);
                if now_taken != taken {
                    taken = now_taken;
                    deadline = Instant::now() + timeout;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(CloseError::Timeout(timeout, q.items.len()));
                }
                // Wakes at least every 100 ms to see whether the writer got on.
                q = self
                    .shared
                    .idle
                    .wait_timeout(q, left.min(Duration::from_millis(100)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        let thread = self.thread.take().ok_or(CloseError::Panicked)?;
        // The queue is empty and closed: the thread is at most finishing a flush.
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return Err(CloseError::Timeout(timeout, 0));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        thread.join().map_err(|_| CloseError::Panicked)
    }

    pub fn pusher(&self) -> Pusher {
        Pusher {
            shared: self.shared.clone(),
        }
    }
}

fn write_loop<S: Sink>(
    shared: &Shared,
    mut sink: S,
    on_fail: impl FnOnce(&io::Error) + Send + 'static,
) -> S {
    let mut on_fail = Some(on_fail);
    loop {
        let (batch, notice, closed) = {
            let mut q = shared.lock();
            while q.items.is_empty() && !q.closed && q.dropped_since.is_none() {
                q = shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            let batch = std::mem::take(&mut q.items);
            q.bytes = 0;
            q.busy = true;
            let notice = q.dropped_since.take().map(|since| {
                let n = (q.dropped_frames, q.dropped_stats);
                q.dropped_frames = 0;
                q.dropped_stats = 0;
                Record::Notice {
                    ts: Ts(shared.clock.now()),
                    code: NoticeCode::OutputBehind,
                    ifname: None,
                    message: format!(
                        "this output did not keep up: {} frame and {} stats records since {since} \
                         were left out (later stats records are cumulative, so no counter is lost)",
                        n.0, n.1
                    ),
                    probe: None,
                }
            });
            (batch, notice, q.closed)
        };
        let result = notice
            .iter()
            .chain(batch.iter())
            .try_for_each(|r| {
                shared.taken.fetch_add(1, Ordering::Relaxed);
                sink.emit(r)
            })
            .and_then(|_| sink.flush());
        let mut q = shared.lock();
        q.busy = false;
        if let Err(e) = result {
            q.failed = Some(e.kind());
            q.items.clear();
            shared.idle.notify_all();
            drop(q);
            if let Some(f) = on_fail.take() {
                f(&e);
            }
            return sink;
        }
        if q.items.is_empty() {
            shared.idle.notify_all();
            if closed || q.closed {
                return sink;
            }
        }
    }
}

/// What is left for the end of a view: the summary (with verdicts) and lab findings.
#[derive(Clone, Debug, Default)]
pub struct Ending {
    pub summary: Option<Record>,
    pub lab: Vec<LabRecord>,
}

/// A notice as the view's status line shows it.
#[derive(Clone, Debug)]
pub struct Notice {
    pub ts: Ts,
    pub code: NoticeCode,
    pub message: String,
}

/// The head of a run: the one verdict engine, the outputs, and what a view needs.
pub struct Head {
    pub engine: Engine,
    outputs: Vec<Pusher>,
    /// `serve`'s metrics, kept in step with the engine.
    metrics: Option<MetricsUpdater>,
    pub ending: Ending,
    /// The last notice of the run, for the view's status line (which drops it once it is
    /// no longer true).
    pub notice: Option<Notice>,
    /// The lab's last step, for the view's status line.
    pub lab_step: Option<LabRecord>,
    /// The run's datapath, once the collector has loaded it.
    pub datapath: Option<DatapathKind>,
    /// Writes nudges into taps and says their outcome (`tapwatch nudge`, the live view's
    /// key, `--remediate`); none in a run that may not write.
    pub nudger: Option<Nudger>,
}

/// The pipeline of one run, shared by the watcher, the lab and the view.
pub struct Pipeline {
    head: Mutex<Head>,
    finished: AtomicBool,
}

impl Pipeline {
    pub fn new(engine: Engine, outputs: Vec<Pusher>) -> Arc<Self> {
        Arc::new(Self {
            head: Mutex::new(Head {
                engine,
                outputs,
                metrics: None,
                ending: Ending::default(),
                notice: None,
                lab_step: None,
                datapath: None,
                nudger: None,
            }),
            finished: AtomicBool::new(false),
        })
    }

    /// One more output, from the next record on (an output that reads the pipeline's
    /// registry itself is made after the pipeline).
    pub fn add_output(&self, output: Pusher) {
        self.head().outputs.push(output);
    }

    /// Keeps `metrics` in step with every record from now on.
    pub fn set_metrics(&self, metrics: MetricsUpdater) {
        self.head().metrics = Some(metrics);
    }

    /// The head, for a view to read or the end of a run to finish with. Hold it briefly:
    /// the watcher waits for it.
    pub fn head(&self) -> MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets the run write nudges into its taps.
    pub fn set_nudger(&self, nudger: Nudger) {
        self.head().nudger = Some(nudger);
    }

    /// The operator's nudge of tap `ifname` (see [`Nudger::nudge`]): its record, also
    /// emitted. `None` when the run may not nudge.
    pub fn nudge(&self, ifname: &str, force: bool, dry_run: bool) -> Option<NudgeRecord> {
        let rec = {
            let mut h = self.head();
            let Head { engine, nudger, .. } = &mut *h;
            nudger.as_mut()?.nudge(engine, ifname, force, dry_run)
        };
        self.emit(&Record::Nudge(rec.clone()));
        Some(rec)
    }

    /// Feeds one record through the engine and hands it, with the verdicts it caused, to
    /// every output; then what the nudger made of it, the same way.
    pub fn emit(&self, rec: &Record) {
        let mut h = self.head();
        let changes = Self::emit_one(&mut h, rec);
        let more = match &mut *h {
            Head {
                engine,
                nudger: Some(n),
                ..
            } => n.after(engine, rec, &changes),
            _ => Vec::new(),
        };
        for m in &more {
            Self::emit_one(&mut h, m);
        }
    }

    /// One record through the engine and to the outputs; the verdicts it caused.
    fn emit_one(h: &mut Head, rec: &Record) -> Vec<Record> {
        let changes = h.engine.apply(rec);
        if let Head {
            engine,
            metrics: Some(m),
            ..
        } = &mut *h
        {
            m.observe(engine, rec);
        }
        let annotated;
        let rec = match rec {
            Record::Summary { .. } => {
                let mut r = rec.clone();
                h.engine.annotate_summary(&mut r);
                h.ending.summary = Some(r.clone());
                annotated = r;
                &annotated
            }
            Record::Notice {
                ts, code, message, ..
            } => {
                h.notice = Some(Notice {
                    ts: *ts,
                    code: *code,
                    message: message.clone(),
                });
                rec
            }
            Record::Lab(l) => {
                h.lab_step = Some(l.clone());
                if l.event == LabEvent::Truth {
                    h.ending.lab.retain(|t| t.vm != l.vm);
                    h.ending.lab.push(l.clone());
                }
                rec
            }
            _ => rec,
        };
        for o in &h.outputs {
            o.push(rec);
            for v in &changes {
                o.push(v);
            }
        }
        changes
    }

    /// The producer is done (its summary is in).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// A [`Sink`] that feeds a pipeline: what the watcher and the lab write into.
pub struct Feed(pub Arc<Pipeline>);

impl Sink for Feed {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        self.0.emit(rec);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn datapath(&mut self, kind: DatapathKind) {
        let mut h = self.0.head();
        h.datapath = Some(kind);
        if let Some(m) = h.metrics.as_mut() {
            m.datapath(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::{fixtures::*, EngineConfig};

    /// A sink that blocks until released, like a pager nobody scrolls.
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<Record>>>,
    }

    impl Sink for Gate {
        fn emit(&mut self, rec: &Record) -> io::Result<()> {
            let (m, cv) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().push(rec.clone());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_never_blocks_and_loses_only_droppable_records() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        let (writer, pusher) = Writer::spawn("test", gate, |_| {}).unwrap();
        let p = Pipeline::new(Engine::new(EngineConfig::default()), vec![pusher]);
        let started = Instant::now();
        p.emit(&attached(0, "tapA", NEW, "routed"));
        // Far more than the budget: must return at once, keeping the attach records.
        let big = stats(1, "tapA", 1, 0);
        for i in 0..200_000 {
            p.emit(&big);
            if i % 1000 == 0 {
                p.emit(&attached(i, &format!("tap{i}"), NEW, "routed"));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        {
            let (m, cv) = &*open;
            *m.lock().unwrap() = true;
            cv.notify_all();
        }
        writer.close(Duration::from_secs(30)).unwrap();
        let got = got.lock().unwrap();
        let attached = got
            .iter()
            .filter(|r| matches!(r, Record::Attached { .. }))
            .count();
        assert_eq!(attached, 201, "no attach record is ever left out");
        let notice = got
            .iter()
            .find_map(|r| match r {
                Record::Notice { code, message, .. } => Some((*code, message.clone())),
                _ => None,
            })
            .expect("a notice that stats records were left out");
        assert_eq!(notice.0, NoticeCode::OutputBehind);
        assert!(notice.1.contains("stats records"), "{}", notice.1);
    }

    #[test]
    fn a_failed_output_is_reported_once() {
        struct Broken;
        impl Sink for Broken {
            fn emit(&mut self, _: &Record) -> io::Result<()> {
                Err(io::Error::from(io::ErrorKind::BrokenPipe))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let (writer, pusher) =
            Writer::spawn("test", Broken, move |_| *c.lock().unwrap() += 1).unwrap();
        pusher.push(&attached(0, "tapA", NEW, "routed"));
        pusher.push(&attached(0, "tapB", NEW, "routed"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while pusher.failed().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(pusher.failed(), Some(io::ErrorKind::BrokenPipe));
        pusher.push(&attached(0, "tapC", NEW, "routed"));
        writer.close(Duration::from_secs(5)).unwrap();
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
