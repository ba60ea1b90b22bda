//! A run's nudger: it lives in the pipeline beside the verdict engine, nudges a tap on the
//! operator's word (`tapwatch nudge`, the live view's key) or, with `--remediate`, when a
//! blackout begins on the evidence of a merely stale cache, and says each nudge's outcome:
//! the guest's first frame to the tap's MAC after the nudge (both kernel-timed), or that
//! none came while it was watched.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::{
    limits::{Limits, Wait},
    plan::{plan, Asked, Plan, Refusal},
    send::{SendError, TapWriter},
    Gateways,
};
use crate::{
    collect::namespaces,
    model::{
        clock::Ts,
        nudge::{NudgeFrame, NudgeRecord, NudgeResult, NudgeTrigger, SentFrame},
        Direction, FrameKind, Record, State,
    },
    registry::{Tap, TapKey},
    verdict::Engine,
};

/// What the run's nudges may do.
#[derive(Clone, Debug)]
pub struct NudgeConfig {
    pub gateways: Gateways,
    /// Nudge a VM when its blackout begins (`--remediate`), within [`super::limits`].
    pub remediate: bool,
    /// How long each nudge's outcome is watched.
    pub watch: Duration,
}

impl Default for NudgeConfig {
    fn default() -> Self {
        Self {
            gateways: Gateways::default(),
            remediate: false,
            watch: super::OUTCOME_WATCH,
        }
    }
}

/// A nudge sent whose outcome is not known yet.
#[derive(Clone, Debug)]
struct Pending {
    sent: NudgeRecord,
    /// When the kernel saw the nudge go into the tap (its frame record), once it did.
    kernel_ts: Option<Ts>,
    stale_before: u64,
    /// The stale window open when it was sent (its start), if one was.
    window: Option<Ts>,
}

impl Pending {
    /// The nudge's time: the kernel's, else when it was sent.
    fn at(&self) -> Ts {
        self.kernel_ts.unwrap_or(self.sent.ts)
    }
}

pub struct Nudger {
    config: NudgeConfig,
    writer: Result<TapWriter, String>,
    pending: HashMap<TapKey, Pending>,
    limits: Limits,
    /// Blackouts (by start) `--remediate` declined, said once each.
    declined: HashMap<TapKey, Ts>,
}

impl Nudger {
    /// A nudger writing into taps of the calling thread's network namespace. Without the
    /// privilege to write, every nudge says so (and the run watches on).
    pub fn new(config: NudgeConfig) -> Self {
        Self {
            config,
            writer: TapWriter::open().map_err(|e| e.to_string()),
            pending: HashMap::new(),
            limits: Limits::default(),
            declined: HashMap::new(),
        }
    }

    pub fn config(&self) -> &NudgeConfig {
        &self.config
    }

    /// The operator's nudge of tap `ifname`: the record of what was done (sent, refused,
    /// failed, or shown with `dry_run`). A sent nudge's outcome follows from
    /// [`Nudger::after`].
    pub fn nudge(
        &mut self,
        engine: &Engine,
        ifname: &str,
        force: bool,
        dry_run: bool,
    ) -> NudgeRecord {
        let now = Ts(chrono::Utc::now());
        let asked = Asked {
            trigger: NudgeTrigger::Operator,
            force,
        };
        let Some(tap) = engine.live_taps().find(|t| t.ifname == ifname) else {
            return refused_record(ifname, None, asked.trigger, now, format!("{ifname} is not watched (gone, or not a tap this run follows): nothing was sent"));
        };
        self.act(tap, asked, dry_run, now)
    }

    /// Plans, then sends (unless `dry_run`), for `tap`.
    fn act(&mut self, tap: &Tap, asked: Asked, dry_run: bool, now: Ts) -> NudgeRecord {
        let routed = self.routed_ips(tap);
        match plan(tap, &self.config.gateways, asked, &routed) {
            Err(r) => refusal_record(tap, asked.trigger, now, &r),
            Ok(p) if dry_run => planned_record(
                tap,
                &p,
                asked.trigger,
                NudgeResult::DryRun,
                now,
                "dry run: nothing was sent".into(),
            ),
            Ok(p) => self.send(tap, &p, asked.trigger, now),
        }
    }

    fn send(&mut self, tap: &Tap, p: &Plan, trigger: NudgeTrigger, now: Ts) -> NudgeRecord {
        let sent = match (&self.writer, namespaces::split(&p.ifname)) {
            // A pod's tap: written from a socket of its own namespace, by its name there.
            (_, (Some(label), ifname)) => send_elsewhere(label, ifname, p),
            (Err(e), _) => Err(e.clone()),
            (Ok(w), _) => p
                .frames
                .iter()
                .try_for_each(|f| w.send(&p.ifname, p.ifindex, &f.bytes))
                .map_err(|e: SendError| e.to_string()),
        };
        match sent {
            Err(e) => planned_record(tap, p, trigger, NudgeResult::Failed, now, e),
            Ok(()) => {
                let rec =
                    planned_record(tap, p, trigger, NudgeResult::Sent, now, p.evidence.clone());
                self.pending.insert(
                    tap.key,
                    Pending {
                        sent: rec.clone(),
                        kernel_ts: None,
                        stale_before: tap.counters.dst_mismatch_frames,
                        window: tap.blackout.filter(|b| b.end.is_none()).map(|b| b.start),
                    },
                );
                rec
            }
        }
    }

    /// This host's routes to the tap, when the guest's frames did not say its addresses.
    fn routed_ips(&self, tap: &Tap) -> Vec<IpAddr> {
        if tap.addrs.ip.is_some() && tap.addrs.ip6.is_some() {
            return Vec::new();
        }
        // Those of tapwatch's namespace do not lead into a pod's.
        if namespaces::split(&tap.ifname).0.is_some() {
            return Vec::new();
        }
        match &self.writer {
            Ok(w) => w.routes_to(tap.key.ifindex),
            Err(_) => Vec::new(),
        }
    }

    /// After the engine applied `rec` (and `changes`, the verdicts it caused): the outcome
    /// of nudges sent, and `--remediate`'s nudges. The records to emit.
    pub fn after(&mut self, engine: &Engine, rec: &Record, changes: &[Record]) -> Vec<Record> {
        let mut out = Vec::new();
        if let Record::Frame(f) = rec {
            self.note_nudge_frame(engine, f);
        }
        self.outcomes(engine, &mut out);
        let began = changes.iter().any(
            |c| matches!(c, Record::Verdict { fields, .. } if fields.state == State::Blackout),
        );
        if self.config.remediate && (began || matches!(rec, Record::Stats { .. })) {
            self.remediate(engine, &mut out);
        }
        if matches!(rec, Record::Stats { .. }) {
            let live: std::collections::HashSet<TapKey> =
                engine.live_taps().map(|t| t.key).collect();
            self.limits.retain(|k| live.contains(k));
            self.declined.retain(|k, _| live.contains(k));
        }
        out
    }

    /// The kernel's record of a nudge's first frame going into its tap times it exactly:
    /// an ARP request from the gateway to the guest, or an advertisement of the router.
    fn note_nudge_frame(&mut self, engine: &Engine, f: &crate::model::FrameRecord) {
        let ip = |a: Option<IpAddr>| a.map(|g| g.to_string());
        let (claimed, to) = match f.kind {
            FrameKind::ArpRequest => (&f.sender_ip, &f.target_ip),
            FrameKind::UnsolicitedNa => (&f.target_ip, &None),
            _ => return,
        };
        if f.direction != Direction::ToVm {
            return;
        }
        let Some(tap) = engine.live_taps().find(|t| t.ifname == f.ifname) else {
            return;
        };
        let Some(p) = self.pending.get_mut(&tap.key) else {
            return;
        };
        let is_it = p.kernel_ts.is_none()
            && Some(f.src_mac) == p.sent.tap_mac
            && *claimed == ip(p.sent.gateway_ip)
            && (to.is_none() || *to == ip(p.sent.guest_ip));
        if is_it {
            p.kernel_ts = Some(f.ts);
        }
    }

    /// Settles every pending nudge whose outcome is known.
    fn outcomes(&mut self, engine: &Engine, out: &mut Vec<Record>) {
        let now = engine.now.unwrap_or_default();
        let watch_ms = self.config.watch.as_millis() as i64;
        let mut done = Vec::new();
        for (key, p) in &self.pending {
            let tap = engine.live_taps().find(|t| t.key == *key);
            if let Some(o) = outcome(p, tap, now, watch_ms) {
                out.push(Record::Nudge(o));
                done.push(*key);
            }
        }
        for k in done {
            self.pending.remove(&k);
        }
    }

    /// `--remediate`: nudges every tap whose blackout is open, as the limits allow.
    fn remediate(&mut self, engine: &Engine, out: &mut Vec<Record>) {
        let now = Ts(chrono::Utc::now());
        let asked = Asked {
            trigger: NudgeTrigger::Remediate,
            force: false,
        };
        let open: Vec<&Tap> = engine
            .live_taps()
            .filter(|t| t.state == State::Blackout && t.blackout.is_some_and(|b| b.end.is_none()))
            .filter(|t| !self.pending.contains_key(&t.key))
            // Its outcome must be seen: on the drop-driven datapath, once the tap's probe
            // is on (moments after its first stale frame).
            .filter(|t| t.frames_timed())
            .collect();
        for tap in open {
            let Some(b) = tap.blackout else { continue };
            if self.declined.get(&tap.key) == Some(&b.start) {
                continue;
            }
            match self.limits.check(tap.key, b.start, now) {
                Ok(()) => {}
                Err(Wait::Later) => continue,
                Err(Wait::Spent) => {
                    self.declined.insert(tap.key, b.start);
                    out.push(Record::Nudge(refused_record(&tap.ifname, Some(tap), asked.trigger, now, format!("{} nudges did not end this blackout: --remediate leaves it to the operator", super::limits::PER_BLACKOUT))));
                    continue;
                }
            }
            let rec = self.act(tap, asked, false, now);
            match rec.result {
                NudgeResult::Refused | NudgeResult::Failed => {
                    self.declined.insert(tap.key, b.start);
                }
                _ => self.limits.spend(tap.key, b.start, now),
            }
            out.push(Record::Nudge(rec));
        }
    }
}

/// A pending nudge's outcome, once known: the blackout ended after it (recovered), or the
/// watch is over, or the tap went.
fn outcome(p: &Pending, tap: Option<&Tap>, now: Ts, watch_ms: i64) -> Option<NudgeRecord> {
    let mut o = p.sent.clone();
    let Some(tap) = tap else {
        o.result = NudgeResult::NoEffect;
        o.message = "the tap went before the nudge's effect could be seen".into();
        return Some(o);
    };
    o.stale_after = Some(
        tap.counters
            .dst_mismatch_frames
            .saturating_sub(p.stale_before),
    );
    // Only the window that was open when the nudge went says whether it worked.
    let ended = tap
        .blackout
        .filter(|b| Some(b.start) == p.window)
        .and_then(|b| b.end);
    match ended {
        Some(end) if end >= p.at() => {
            let ms = end.ms_since(p.at()).max(0) as u64;
            o.ts = end;
            o.result = NudgeResult::Recovered;
            o.recovered_after_ms = Some(ms);
            o.message = format!(
                "the guest sent to the tap's MAC {ms} ms after the nudge (kernel-timed): its \
                 stale window ended"
            );
            return Some(o);
        }
        Some(end) if p.kernel_ts.is_some() || now.ms_since(p.at()) >= watch_ms => {
            o.result = NudgeResult::NoEffect;
            o.message = format!(
                "the guest had re-learnt its gateway on its own {} ms before the nudge",
                p.at().ms_since(end).max(0)
            );
            return Some(o);
        }
        _ => {}
    }
    if now.ms_since(p.sent.ts) < watch_ms {
        return None;
    }
    o.ts = now;
    o.result = NudgeResult::NoEffect;
    o.watched_ms = Some(watch_ms as u64);
    o.message = if p.window.is_none() {
        format!(
            "no stale window was open when it was sent; the guest sent {} stale frames in the \
             {} s after it",
            o.stale_after.unwrap_or(0),
            watch_ms / 1000
        )
    } else {
        no_effect_words(&o, tap, watch_ms)
    };
    Some(o)
}

fn no_effect_words(o: &NudgeRecord, tap: &Tap, watch_ms: i64) -> String {
    if o.stale_after == Some(0) && tap.last_from_vm < o.ts {
        return format!(
            "the guest sent nothing in the {} s after the nudge: its effect cannot be seen yet \
             (a guest without traffic, or paused)",
            watch_ms / 1000
        );
    }
    // Every address claimed at the tap's MAC (a router advertisement's source is the tap's
    // own), and what the guest may ignore.
    let claimed: Vec<(NudgeFrame, String, &str)> = o
        .frame
        .zip(o.gateway_ip.zip(o.gateway_from))
        .map(|(k, (ip, from))| (k, ip, from))
        .into_iter()
        .chain(
            o.more_frames
                .iter()
                .map(|f| (f.frame, f.gateway_ip, f.gateway_from)),
        )
        .filter(|(k, ..)| *k != NudgeFrame::RouterAdvert)
        .map(|(k, ip, from)| (k, ip.to_string(), from.words()))
        .collect();
    let gw = claimed
        .iter()
        .map(|(_, ip, from)| format!("{ip} ({from})"))
        .collect::<Vec<_>>()
        .join(" and ");
    let ignores = match (
        claimed.iter().any(|(k, ..)| *k == NudgeFrame::Arp),
        claimed
            .iter()
            .any(|(k, ..)| *k == NudgeFrame::NeighborAdvert),
    ) {
        (true, true) => "ARP updates and neighbour advertisements",
        (false, true) => "neighbour advertisements",
        _ => "ARP updates",
    };
    format!(
        "the guest kept sending to {} for {} s after the nudge ({} stale frames): {gw} may \
         not be the gateway it uses (give --gateway), or it ignores {ignores} (a firewall in \
         the guest, a non-Linux stack)",
        o.stale_mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "a MAC the tap does not have".into()),
        watch_ms / 1000,
        o.stale_after.unwrap_or(0)
    )
}

fn planned_record(
    tap: &Tap,
    p: &Plan,
    trigger: NudgeTrigger,
    result: NudgeResult,
    ts: Ts,
    message: String,
) -> NudgeRecord {
    NudgeRecord {
        ts,
        ifname: tap.ifname.clone(),
        vm: tap.vm.as_ref().map(|v| v.display_name().to_string()),
        trigger,
        result,
        frame: Some(p.first().kind),
        gateway_ip: Some(p.first().gateway.0),
        gateway_from: Some(p.first().gateway.1),
        guest_ip: Some(p.first().guest_ip.0),
        guest_ip_from: Some(p.first().guest_ip.1),
        tap_mac: Some(p.tap_mac),
        guest_mac: Some(p.guest_mac),
        stale_mac: p.stale_mac,
        recovered_after_ms: None,
        stale_after: None,
        watched_ms: None,
        bytes: Some(hex(&p.first().bytes)),
        more_frames: p.frames[1..]
            .iter()
            .map(|f| SentFrame {
                frame: f.kind,
                gateway_ip: f.gateway.0,
                gateway_from: f.gateway.1,
                guest_ip: f.guest_ip.0,
                guest_ip_from: f.guest_ip.1,
                bytes: hex(&f.bytes),
            })
            .collect(),
        message,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn refusal_record(tap: &Tap, trigger: NudgeTrigger, ts: Ts, r: &Refusal) -> NudgeRecord {
    refused_record(&tap.ifname, Some(tap), trigger, ts, r.to_string())
}

fn refused_record(
    ifname: &str,
    tap: Option<&Tap>,
    trigger: NudgeTrigger,
    ts: Ts,
    message: String,
) -> NudgeRecord {
    NudgeRecord {
        ts,
        ifname: ifname.to_string(),
        vm: tap
            .and_then(|t| t.vm.as_ref())
            .map(|v| v.display_name().to_string()),
        trigger,
        result: NudgeResult::Refused,
        frame: None,
        gateway_ip: None,
        gateway_from: None,
        guest_ip: None,
        guest_ip_from: None,
        tap_mac: tap.and_then(|t| t.mac),
        guest_mac: None,
        stale_mac: tap.and_then(|t| t.blackout).map(|b| b.stale_mac),
        recovered_after_ms: None,
        stale_after: None,
        watched_ms: None,
        bytes: None,
        more_frames: Vec::new(),
        message,
    }
}

/// Writes the plan's frames into the tap `ifname` of the watched namespace `label`, from a
/// socket opened inside it.
fn send_elsewhere(label: &str, ifname: &str, p: &Plan) -> Result<(), String> {
    let ns = namespaces::named(label)
        .ok_or_else(|| format!("the network namespace {label} is no longer watched"))?;
    let (ifname, ifindex) = (ifname.to_string(), p.ifindex);
    let frames: Vec<Vec<u8>> = p.frames.iter().map(|f| f.bytes.clone()).collect();
    ns.run_in(move || {
        let w = TapWriter::open()?;
        frames.iter().try_for_each(|f| w.send(&ifname, ifindex, f))
    })
    .map_err(|e| format!("cannot enter the network namespace {label}: {e}"))?
    .map_err(|e: SendError| e.to_string())
}
