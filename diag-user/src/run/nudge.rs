//! `tapwatch nudge TAP|VM`: watch the VM's taps for a moment (the ordinary collector into a
//! pipeline with a nudger), nudge those with a stale window open, and watch for the stale
//! frames' end: the outcome in words, or as `nudge` records.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use diag_user::{
    collect::{
        ebpf::AttachMode, identity::libvirt::scan_vms, identity::HostSources, links::Link, netlink,
        Collecting, IdentitySource, WatchOptions,
    },
    model::{
        nudge::{NudgeRecord, NudgeResult},
        NoticeCode, Record, Sink, State,
    },
    nudge::{Gateways, NudgeConfig, Nudger},
    report::{
        json::JsonSink,
        pipeline::{Feed, Pipeline, Writer},
        text,
    },
    verdict::{Engine, EngineConfig},
};

use super::EXIT_USAGE;
use crate::cli::NudgeArgs;

/// Nothing was written: every nudge was refused or failed.
pub const EXIT_NOT_SENT: u8 = 5;

/// Records into a channel: the command waits on what the run says, never on a timer alone.
struct Tx(mpsc::Sender<Record>);

impl Sink for Tx {
    fn emit(&mut self, rec: &Record) -> std::io::Result<()> {
        let _ = self.0.send(rec.clone());
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn run(args: NudgeArgs) -> anyhow::Result<ExitCode> {
    let gateways = match Gateways::new(&args.gateway) {
        Ok(g) => g,
        Err(e) => return usage(&e),
    };
    let taps = match targets(&args) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let pipeline = Pipeline::new(Engine::new(EngineConfig::default()), Vec::new());
    pipeline.set_nudger(Nudger::new(NudgeConfig {
        gateways,
        remediate: false,
        watch: args.wait,
    }));
    let (tx, rx) = mpsc::channel();
    let (writer, pusher) = Writer::spawn("nudge", Tx(tx), |_| {})?;
    pipeline.add_output(pusher);
    let opts = WatchOptions {
        patterns: taps.iter().map(|t| glob::Pattern::escape(t)).collect(),
        // Outcomes are judged as records arrive: a short interval keeps them prompt.
        interval: Duration::from_millis(200),
        duration: None,
        attach_mode: AttachMode::Auto,
        datapath: args.datapath,
        probe_linger: Duration::from_secs(60),
        identities: IdentitySource::Host(HostSources::libvirt(&args.libvirt_dir)),
        forget_after: None,
        all_namespaces: false,
        namespace_prefix: None,
    };
    let p = pipeline.clone();
    let collecting = Collecting::start(opts, Feed(pipeline.clone()), move || p.finish())
        .context("starting to watch the tap")?;
    let mut watch = Watch::new(&rx, &taps);
    let results = watch.nudge_all(&pipeline, &args);
    collecting.stop();
    let outcome = collecting.join();
    let _ = writer.close(Duration::from_secs(2));
    outcome?;
    let results = results?;
    print(&results, args.json)?;
    Ok(ExitCode::from(exit_code(&results)))
}

fn usage(e: &str) -> anyhow::Result<ExitCode> {
    eprintln!("tapwatch nudge: {}", text::one_line(e));
    Ok(ExitCode::from(EXIT_USAGE))
}

/// The taps `args.target` names: an interface of that name, else the taps of the VM of
/// that name (libvirt's status files).
fn targets(args: &NudgeArgs) -> Result<Vec<String>, String> {
    let links: Vec<Link> = netlink::dump_links()
        .map_err(|e| format!("cannot list interfaces: {e}"))?
        .iter()
        .filter_map(Link::from_message)
        .collect();
    if links.iter().any(|l| l.name == args.target) {
        return Ok(vec![args.target.clone()]);
    }
    let (vms, _) = scan_vms(&args.libvirt_dir);
    let Some(vm) = vms.iter().find(|v| v.is_named(&args.target)) else {
        return Err(format!(
            "no interface and no VM is named {:?} here (VMs from {}: {})",
            args.target,
            args.libvirt_dir.display(),
            if vms.is_empty() {
                "none".to_string()
            } else {
                vms.iter()
                    .map(|v| v.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    };
    let taps: Vec<String> = vm
        .interfaces
        .iter()
        .map(|i| i.tap.clone())
        .filter(|t| links.iter().any(|l| &l.name == t))
        .collect();
    if taps.is_empty() {
        return Err(format!("VM {} has no tap on this host now", vm.name()));
    }
    Ok(taps)
}

/// The command's view of the run: which taps are attached, in a blackout, and the nudges'
/// records as they come.
struct Watch<'a> {
    rx: &'a mpsc::Receiver<Record>,
    taps: Vec<String>,
    attached: HashSet<String>,
    blackout: HashSet<String>,
    /// Taps that cannot be watched, and why.
    failed: HashMap<String, String>,
    finals: HashMap<String, NudgeRecord>,
}

impl<'a> Watch<'a> {
    fn new(rx: &'a mpsc::Receiver<Record>, taps: &[String]) -> Self {
        Self {
            rx,
            taps: taps.to_vec(),
            attached: HashSet::new(),
            blackout: HashSet::new(),
            failed: HashMap::new(),
            finals: HashMap::new(),
        }
    }

    /// Takes what the run said until `done` holds or `until` passes.
    fn until(&mut self, until: Instant, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.rx.recv_timeout(left) {
                Ok(r) => self.take(r),
                Err(mpsc::RecvTimeoutError::Timeout) => return,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn take(&mut self, r: Record) {
        match r {
            Record::Attached { ifname, .. } => {
                self.attached.insert(ifname);
            }
            Record::Verdict { ifname, fields, .. } if fields.state == State::Blackout => {
                self.blackout.insert(ifname);
            }
            Record::Notice {
                code: NoticeCode::AttachFailed,
                ifname: Some(ifname),
                message,
                ..
            } => {
                self.failed.insert(ifname, message);
            }
            Record::Nudge(n) if n.result.is_final() => {
                self.finals.insert(n.ifname.clone(), n);
            }
            _ => {}
        }
    }

    /// Watches, nudges, and waits for the outcomes: one record per tap.
    fn nudge_all(&mut self, pipeline: &Pipeline, args: &NudgeArgs) -> anyhow::Result<Vec<Nudged>> {
        let all = |w: &Self, f: &dyn Fn(&str) -> bool| w.taps.iter().all(|t| f(t));
        self.until(Instant::now() + Duration::from_secs(10), |w| {
            all(w, &|t| w.attached.contains(t) || w.failed.contains_key(t))
        });
        for t in &self.taps {
            if let Some(why) = self.failed.get(t) {
                anyhow::bail!("cannot watch {t}: {why}");
            }
            if !self.attached.contains(t) {
                anyhow::bail!("{t} could not be watched within 10 s (see -v)");
            }
        }
        // Ready: a stale window open, and every frame from the VM seen (so that the first
        // to the tap's MAC after the nudge is timed).
        let ready = |t: &str| {
            let h = pipeline.head();
            h.engine
                .tap(t)
                .is_some_and(|t| t.state == State::Blackout && t.frames_timed())
        };
        self.until(Instant::now() + args.wait, |w| {
            all(w, &|t| w.blackout.contains(t) && ready(t))
        });
        // A VM's taps without a stale window are left alone, unless there is only one
        // (whose refusal then says why) or the operator insists.
        let chosen: Vec<String> = if self.taps.len() > 1 && !args.force && !self.blackout.is_empty()
        {
            self.taps
                .iter()
                .filter(|t| self.blackout.contains(*t))
                .cloned()
                .collect()
        } else {
            self.taps.clone()
        };
        let mut first = Vec::new();
        for t in &chosen {
            let rec = pipeline
                .nudge(t, args.force, args.dry_run)
                .context("the run cannot nudge")?;
            first.push(rec);
        }
        let sent: Vec<String> = first
            .iter()
            .filter(|r| r.result == NudgeResult::Sent)
            .map(|r| r.ifname.clone())
            .collect();
        self.until(Instant::now() + args.wait + Duration::from_secs(2), |w| {
            sent.iter().all(|t| w.finals.contains_key(t))
        });
        Ok(first
            .into_iter()
            .map(|r| {
                let outcome = match r.result {
                    NudgeResult::Sent => self.finals.remove(&r.ifname),
                    _ => None,
                };
                Nudged { first: r, outcome }
            })
            .collect())
    }
}

/// One tap's nudge: what was done, and (sent) what came of it.
struct Nudged {
    first: NudgeRecord,
    outcome: Option<NudgeRecord>,
}

impl Nudged {
    fn result(&self) -> NudgeResult {
        self.outcome.as_ref().unwrap_or(&self.first).result
    }
}

fn print(results: &[Nudged], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in results {
        if json {
            let mut sink = JsonSink(&mut out);
            for n in std::iter::once(&r.first).chain(&r.outcome) {
                sink.emit(&Record::Nudge(n.clone()))?;
            }
        } else {
            writeln!(out, "{}", text::nudge_words(&r.first))?;
            if let Some(o) = &r.outcome {
                writeln!(
                    out,
                    "  {}",
                    text::nudge_words(o).lines().next().unwrap_or("")
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn exit_code(results: &[Nudged]) -> u8 {
    let any = |r: NudgeResult| results.iter().any(|n| n.result() == r);
    if any(NudgeResult::NoEffect) || any(NudgeResult::Sent) {
        1
    } else if any(NudgeResult::Refused) || any(NudgeResult::Failed) {
        EXIT_NOT_SENT
    } else {
        0
    }
}
