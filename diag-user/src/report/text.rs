//! Text for people: one line per record, notices on stderr.
//!
//! Much of what these lines show is text tapwatch does not control: a VM's name from
//! libvirt (Nova's display name, chosen by whoever owns the VM), interface names (the
//! kernel's allow an escape character; a capture's are any text), a bundle's host facts.
//! Every writer of text for people passes such text through [`one_line`], and Markdown
//! through [`markdown`], so none of it can end a line, write one of its own, reorder what
//! follows or talk to the terminal.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

use crate::{
    model::{clock::Ts, forecast::ForecastCounts, Record, Sink, SummaryRow},
    offline::Analysis,
};

/// Whether `c` would act instead of showing: control characters (C0 with `\n`, `\r`,
/// `\t` and ESC, DEL, C1 with NEL and CSI), the bidi controls that reorder the text
/// around them, and the line and paragraph separators.
fn acts(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
        || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Foreign text made safe for one line of output for people: each character that would act
/// (see [`acts`]) is shown as its escape instead, `\n`, `\r`, `\t`, else `\u{1b}`,
/// `\u{202e}`; everything else is kept, so a name in any script reads as itself.
///
/// A backslash is kept as it is, so text that went through once goes through again
/// unchanged and a sentence that embeds an escaped name can be escaped as a whole. The
/// price is that a name holding a backslash and an `n` reads like one holding a newline;
/// the JSON records have the exact text.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(acts) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if acts(c) => {
                let _ = write!(out, "{}", c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Foreign text made safe for one line of Markdown (a heading, a table cell, a sentence):
/// [`one_line`], then a backslash before each character that Markdown could read as
/// syntax, so no name makes a table cell, a heading's end, a link, raw HTML, a character
/// reference or emphasis of its own. It renders as the text itself.
pub fn markdown(s: &str) -> String {
    let s = one_line(s);
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '<' | '>' | '|' | '#' | '&' | '!' | '$'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One readable line per record, for a terminal without the full-screen view.
pub struct TextSink<W: Write>(pub W);

impl<W: Write> Sink for TextSink<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Summary {
                ts,
                taps,
                forecasts,
            } => write_summary(&mut self.0, *ts, taps, forecasts.as_ref()),
            _ => match line(rec) {
                Some(l) => writeln!(self.0, "{l}"),
                None => Ok(()),
            },
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The line of any record but the summary's (a stats record has none).
fn line(rec: &Record) -> Option<String> {
    let name = rec.ifname().map(one_line).unwrap_or_default();
    let show = crate::model::mac::show;
    Some(match rec {
        Record::Attached { ts, mac, mode, .. } => {
            format!("{ts} {name}: attached ({mode}, mac {})", show(*mac, "none"))
        }
        Record::Detached { ts, reason, .. } => {
            format!("{ts} {name}: detached ({})", one_line(reason))
        }
        Record::MacChange {
            ts,
            old_mac,
            new_mac,
            ..
        } => format!(
            "{ts} {name}: MAC changed {} -> {}",
            show(*old_mac, "none"),
            show(*new_mac, "none")
        ),
        Record::Frame(f) => frame_line(f, &name),
        Record::ModeChange {
            ts,
            old_mode,
            new_mode,
            ..
        } => format!("{ts} {name}: {old_mode} -> {new_mode}"),
        Record::Stats { .. } | Record::Summary { .. } => return None,
        Record::Renamed { ts, old_ifname, .. } => {
            format!("{ts} {}: renamed to {name}", one_line(old_ifname))
        }
        Record::Notice { ts, message, .. } => format!("{ts} notice: {}", one_line(message)),
        Record::Identity { ts, libvirt, .. } => match libvirt {
            Some(vm) => format!("{ts} {name}: VM {}", one_line(vm.display_name())),
            None => format!("{ts} {name}: no VM known"),
        },
        Record::Lab(l) => format!("{} lab: {}", l.ts, one_line(&l.describe())),
        Record::Migration(m) => migration_line(m),
        Record::Finding(f) => finding_text(f),
        Record::Nudge(n) => {
            let gw = n
                .gateway_ip
                .map(|ip| format!(" gateway {ip}"))
                .unwrap_or_default();
            format!(
                "{} {name}: nudge {}{gw} — {}",
                n.ts,
                n.result.as_str(),
                one_line(&n.message)
            )
        }
        Record::Forecast(f) => forecast_record_line(f, &name),
        Record::Verdict { ts, fields, .. } => {
            let ms = fields
                .blackout_ms
                .map(|m| format!(" ({m} ms)"))
                .unwrap_or_default();
            format!(
                "{ts} {name} [{}]: {}{ms} — {}",
                one_line(&fields.vm),
                fields.state,
                one_line(&fields.diagnosis)
            )
        }
    })
}

fn frame_line(f: &crate::model::FrameRecord, name: &str) -> String {
    let arp = match (&f.sender_ip, &f.target_ip) {
        (Some(s), Some(t)) => format!(" {s} -> {t}"),
        _ => String::new(),
    };
    format!(
        "{} {name}: {} {} {} -> {}{arp}",
        f.ts,
        f.direction.as_str(),
        f.kind.as_str(),
        f.src_mac,
        f.dst_mac
    )
}

fn forecast_record_line(f: &crate::model::forecast::ForecastRecord, name: &str) -> String {
    let fc = &f.forecast;
    let what = match (fc.outcome, fc.at_risk) {
        (Some(o), _) => format!("forecast settled: {}", o.as_str()),
        (None, true) => "AT RISK".to_string(),
        (None, false) => "no blackout expected".to_string(),
    };
    format!(
        "{} {name} [{}]: {what} — {}",
        f.ts,
        one_line(&f.vm),
        one_line(&fc.cause)
    )
}

/// A summary: each tap's verdict and counters, and how the run's forecasts turned out.
fn write_summary(
    w: &mut impl Write,
    ts: Ts,
    taps: &[SummaryRow],
    forecasts: Option<&ForecastCounts>,
) -> io::Result<()> {
    writeln!(w, "{ts} summary:")?;
    for t in taps {
        let name = one_line(&t.counters.ifname);
        if let Some(v) = &t.verdict {
            writeln!(
                w,
                "  {name} [{}]: {} — {}",
                one_line(&v.vm),
                v.state,
                one_line(&v.diagnosis)
            )?;
        }
        let c = &t.counters;
        writeln!(
            w,
            "  {name}: from_vm {} frames, to_vm {} frames, dst_mismatch {}, rarp {}, garp {}, arp req {} / rep {}{}, events lost {}",
            c.from_vm_frames, c.to_vm_frames, c.dst_mismatch_frames,
            c.rarp_frames, c.garp_frames, c.arp_requests, c.arp_replies, nd_counts(c), c.events_lost
        )?;
    }
    if let Some(f) = forecasts {
        writeln!(w, "  {}", forecast_line(f))?;
    }
    Ok(())
}

/// A row's neighbour discovery counts for a summary line, when the guest spoke IPv6.
pub fn nd_counts(c: &crate::model::TapRow) -> String {
    if c.nd_frames() == 0 {
        return String::new();
    }
    format!(
        ", nd rs {} / ra {} / ns {} / na {} (unsolicited {})",
        c.router_solicits,
        c.router_adverts,
        c.neighbor_solicits,
        c.neighbor_adverts,
        c.unsolicited_nas
    )
}

/// A preflight finding for people: what, why, and what to do, each on a line of its own.
pub fn finding_text(f: &crate::model::finding::Finding) -> String {
    use crate::model::finding::Severity;
    let severity = match f.severity {
        Severity::Blocks => "BLOCKS",
        Severity::Outage => "OUTAGE",
        Severity::Note => "note",
    };
    let vm = if f.vm.is_empty() {
        "both hosts".to_string()
    } else {
        one_line(&f.vm).into_owned()
    };
    let mut s = format!("{severity:<6} {vm}: {}", one_line(&f.what));
    for e in &f.evidence {
        s.push_str(&format!("\n         {}", one_line(e)));
    }
    s.push_str(&format!("\n         what to do: {}", one_line(&f.todo)));
    s
}

/// How a run's forecasts turned out, in words.
pub fn forecast_line(f: &ForecastCounts) -> String {
    format!(
        "forecasts: {} blackout(s) foreseen before the VM resumed, {} came true, {} false \
         alarm(s); {} blackout(s) after a migration that none foresaw",
        f.made, f.came_true, f.false_alarms, f.missed
    )
}

/// Prints `notice` records on stderr, one line each, for a terminal user; the rest goes
/// elsewhere.
pub struct NoticePrinter<W: Write>(pub W);

impl<W: Write> Sink for NoticePrinter<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Notice { message, .. } => writeln!(self.0, "tapwatch: {}", one_line(message)),
            _ => Ok(()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `serve`'s log (stderr, the journal under systemd): notices, and each VM's state
/// changes with the diagnosis.
pub struct ServiceLog<W: Write> {
    pub out: W,
    states: std::collections::HashMap<String, crate::model::State>,
}

impl<W: Write> ServiceLog<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            states: Default::default(),
        }
    }
}

impl<W: Write> Sink for ServiceLog<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Notice { message, .. } => {
                writeln!(self.out, "tapwatch: {}", one_line(message))
            }
            Record::Verdict { ifname, fields, .. } => {
                // Remembered while the tap lives: a run of weeks keeps no more.
                let before = if fields.state == crate::model::State::Gone {
                    self.states.remove(ifname)
                } else {
                    self.states.insert(ifname.clone(), fields.state)
                };
                if before == Some(fields.state) {
                    return Ok(());
                }
                writeln!(
                    self.out,
                    "tapwatch: {} ({}) is {}: {}",
                    one_line(&fields.vm),
                    one_line(ifname),
                    fields.state,
                    one_line(&fields.diagnosis)
                )
            }
            _ => Ok(()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A duration for people, or `-` when unknown.
fn ms(v: Option<u64>) -> String {
    v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into())
}

/// One migration in a line.
pub fn migration_line(m: &crate::model::MigrationRecord) -> String {
    format!(
        "{}: paused {} ({}), resumed {}: downtime {}, then the network delivered to it after \
         {}, the host accepted from it after {} (blackout {})",
        one_line(&m.vm),
        m.pause_ts.map_or("-".into(), |t| t.to_string()),
        one_line(&m.pause_from),
        m.resume_ts.map_or("-".into(), |t| t.to_string()),
        ms(m.downtime_ms),
        ms(m.inbound_gap_ms),
        ms(m.outbound_gap_ms),
        ms(m.blackout_ms)
    )
}

/// One VM's migration for people: the outage in its parts on one clock, and the two hosts'
/// facts side by side (`≠` where they differ).
pub fn migration_report(
    m: &crate::model::MigrationRecord,
    facts: &[crate::model::HostFact],
) -> String {
    let at = |t: Option<crate::model::clock::Ts>| t.map_or("-".into(), |t| t.to_string());
    let src = m.src_ifname.as_deref().unwrap_or("not found on the source");
    let mut out = format!(
        "{} ({} -> {})\n",
        one_line(&m.vm),
        one_line(src),
        one_line(&m.dst_ifname)
    );
    let clock = m
        .clock_uncertainty_ms
        .map_or(" (the hosts' clocks are not known to agree)".into(), |u| {
            format!(" (± {u:.1} ms between the hosts' clocks)")
        });
    let lines = [
        (
            "paused on the source",
            format!("{} ({})", at(m.pause_ts), one_line(&m.pause_from)),
        ),
        ("resumed (first RARP)", at(m.resume_ts)),
        ("downtime", format!("{}{clock}", ms(m.downtime_ms))),
        (
            "network delivers again",
            format!("{} after the resume (inbound gap)", ms(m.inbound_gap_ms)),
        ),
        (
            "host accepts the VM again",
            format!("{} after the resume (outbound gap)", ms(m.outbound_gap_ms)),
        ),
        ("blackout (stale MAC)", ms(m.blackout_ms)),
    ];
    for (label, value) in lines {
        out.push_str(&format!("  {label:<26} {value}\n"));
    }
    for n in &m.notes {
        out.push_str(&format!("  note: {}\n", one_line(n)));
    }
    out.push_str(&format!("\n  {:<32} {:<40} destination\n", "", "source"));
    for f in facts {
        let mark = if f.src != f.dst { "≠" } else { " " };
        let (fact, src, dst) = (one_line(&f.fact), one_line(&f.src), one_line(&f.dst));
        if src.chars().count() > 40 {
            // Too long for the column: one line per host.
            out.push_str(&format!("{mark} {fact}\n"));
            out.push_str(&format!("    {:<30} {src}\n", "source"));
            out.push_str(&format!("    {:<30} {dst}\n", "destination"));
        } else {
            out.push_str(&format!("{mark} {fact:<32} {src:<40} {dst}\n"));
        }
    }
    out.push('\n');
    out
}

/// The analysis as a table: one line per VM, then its diagnosis.
pub fn table(a: &Analysis) -> String {
    let mut out = String::new();
    for n in &a.notes {
        out.push_str(&format!("note: {}\n", one_line(n)));
    }
    let Some(Record::Summary { taps, .. }) = &a.summary else {
        return out;
    };
    out.push_str(&format!(
        "\n{:<22} {:<16} {:<8} {:<10} {:>10} {:>10} {:>10} {:>9} {:>5} {:>5}\n",
        "VM", "TAP", "MODE", "STATE", "BLACKOUT", "INBOUND", "OUTBOUND", "MISMATCH", "RARP", "GARP"
    ));
    for t in taps {
        let v = t.verdict.as_ref();
        out.push_str(&format!(
            "{:<22} {:<16} {:<8} {:<10} {:>10} {:>10} {:>10} {:>9} {:>5} {:>5}\n",
            one_line(v.map(|v| v.vm.as_str()).unwrap_or(&t.counters.ifname)),
            one_line(&t.counters.ifname),
            t.mode,
            v.map(|v| v.state.as_str()).unwrap_or("-"),
            ms(v.and_then(|v| v.blackout_ms)),
            ms(v.and_then(|v| v.inbound_gap_ms.flatten())),
            ms(v.and_then(|v| v.outbound_gap_ms.flatten())),
            t.counters.dst_mismatch_frames,
            t.counters.rarp_frames,
            t.counters.garp_frames,
        ));
        if let Some(v) = v {
            out.push_str(&format!("  {}\n", one_line(&v.diagnosis)));
        }
    }
    out
}

/// A nudge in words for the operator: what was (or would be) sent, where its addresses
/// came from, and what came of it.
pub fn nudge_words(n: &crate::model::nudge::NudgeRecord) -> String {
    use crate::model::nudge::NudgeResult;
    let who = match &n.vm {
        Some(vm) => format!("{} ({})", one_line(&n.ifname), one_line(vm)),
        None => one_line(&n.ifname).into_owned(),
    };
    let head = match n.result {
        NudgeResult::Refused => return format!("{who}: not nudged: {}", one_line(&n.message)),
        NudgeResult::Failed => return format!("{who}: not nudged: {}", one_line(&n.message)),
        NudgeResult::DryRun => format!("{who}: would send (dry run, nothing sent)"),
        NudgeResult::Sent => format!("{who}: nudged at {}", n.ts),
        NudgeResult::Recovered => format!("{who}: RECOVERED: {}", one_line(&n.message)),
        NudgeResult::NoEffect => format!("{who}: NO EFFECT: {}", one_line(&n.message)),
    };
    let mut s = head;
    let first = n
        .frame
        .zip(n.gateway_ip.zip(n.gateway_from))
        .zip(n.guest_ip.zip(n.guest_ip_from))
        .map(|((frame, gw), guest)| (frame, gw, guest, n.bytes.as_deref()));
    let more = n.more_frames.iter().map(|f| {
        (
            f.frame,
            (f.gateway_ip, f.gateway_from),
            (f.guest_ip, f.guest_ip_from),
            Some(f.bytes.as_str()),
        )
    });
    let tap = n.tap_mac.map(|m| m.to_string()).unwrap_or_default();
    let guest_mac = n.guest_mac.map(|m| m.to_string()).unwrap_or_default();
    for (frame, (gw, gw_from), (guest, guest_from), bytes) in first.into_iter().chain(more) {
        use crate::model::nudge::NudgeFrame;
        let (what, role) = match frame {
            NudgeFrame::Arp => (format!("ARP request: {gw} is at {tap}"), "gateway"),
            NudgeFrame::NeighborAdvert => (
                format!("Neighbour Advertisement (router, override): {gw} is at {tap}"),
                "router",
            ),
            NudgeFrame::RouterAdvert => (
                format!(
                    "Router Advertisement: {gw} at {tap} is a default router for {} s",
                    crate::frames::DEFAULT_ROUTER_LIFETIME_S
                ),
                "new router",
            ),
        };
        let _ = write!(
            s,
            "\n  frame: {tap} -> {guest_mac}, {what}, to {guest}\n  {role} {gw} ({}); guest \
             {guest} ({})",
            gw_from.words(),
            guest_from.words(),
        );
        if let Some(b) = bytes {
            let _ = write!(s, "\n  bytes: {b}");
        }
    }
    if matches!(n.result, NudgeResult::DryRun | NudgeResult::Sent) {
        let _ = write!(s, "\n  evidence: {}", one_line(&n.message));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{
            HostFact, MigrationRecord, Mode, NoticeCode, State, SummaryRow, TapRow, VerdictFields,
        },
        verdict::fixtures::{assert_inert, at, identity, NEWLINE_NAME, TERMINAL_NAME},
    };
    use proptest::prelude::*;

    /// A tap name as an offline capture may name it (pcapng's `if_name` is any text).
    const TAP: &str = "tap\u{1b}[8m0\n";

    fn verdict(vm: &str) -> Record {
        Record::Verdict {
            ts: at(0),
            ifname: TAP.into(),
            fields: VerdictFields {
                vm: vm.into(),
                state: State::Recovered,
                blackout_ms: Some(546),
                switchover_ts: None,
                inbound_gap_ms: None,
                outbound_gap_ms: None,
                diagnosis: "Blackout of 546 ms.".into(),
            },
        }
    }

    fn notice(vm: &str) -> Record {
        Record::Notice {
            ts: at(0),
            code: NoticeCode::ProbeAdded,
            ifname: Some(TAP.into()),
            message: format!("{TAP}: VM {vm}: a per-frame probe now times the end"),
            probe: None,
        }
    }

    #[test]
    fn one_line_shows_what_would_act() {
        assert_eq!(one_line("web-1"), "web-1");
        assert!(matches!(one_line("wéb-1 ウェブ"), Cow::Borrowed(_)));
        assert_eq!(
            one_line("a\nb\r\tc\u{1b}[2J\u{7f}\u{85}\u{9b}\u{202e}\u{2066}\u{200f}\u{2028}\u{2029}\0"),
            "a\\nb\\r\\tc\\u{1b}[2J\\u{7f}\\u{85}\\u{9b}\\u{202e}\\u{2066}\\u{200f}\\u{2028}\\u{2029}\\u{0}"
        );
        assert_eq!(markdown("web_1 | #2"), "web\\_1 \\| \\#2");
        assert_eq!(markdown("a\nb\\"), "a\\\\nb\\\\");
    }

    proptest! {
        /// Whatever the text: nothing in the result acts, it goes through a second time
        /// unchanged, and text with nothing that acts is kept as it is.
        #[test]
        fn one_line_holds_for_any_text(s in "\\PC*|[\\x00-\\x{a0}\\x{2000}-\\x{206f}a-z\\\\]*") {
            let once = one_line(&s);
            prop_assert!(!once.chars().any(acts), "{:?}", once);
            prop_assert_eq!(one_line(&once), once.clone());
            if !s.chars().any(acts) {
                prop_assert_eq!(&once, &s);
            }
            let md = markdown(&s);
            prop_assert!(!md.chars().any(acts));
            prop_assert!(!md.contains('\n'));
        }
    }

    /// Every record makes one line however its VM and tap are named, and the names show
    /// what they hold.
    #[test]
    fn foreign_names_stay_on_their_line_in_text() {
        for name in [NEWLINE_NAME, TERMINAL_NAME] {
            let mut sink = TextSink(Vec::new());
            for r in [identity(0, TAP, name), verdict(name), notice(name)] {
                sink.emit(&r).unwrap();
            }
            let out = String::from_utf8(sink.0).unwrap();
            assert_eq!(out.lines().count(), 3, "{out}");
            assert_inert(&out);
            assert!(
                out.contains("web-1\\ntapwatch") || out.contains("1\\u{202e}gnp"),
                "{out}"
            );
        }
    }

    /// `serve`'s log is read in the journal: no name may write a line that looks like
    /// tapwatch's own.
    #[test]
    fn foreign_names_cannot_forge_service_log_lines() {
        for name in [NEWLINE_NAME, TERMINAL_NAME] {
            let mut log = ServiceLog::new(Vec::new());
            log.emit(&verdict(name)).unwrap();
            log.emit(&notice(name)).unwrap();
            let mut notices = NoticePrinter(Vec::new());
            notices.emit(&notice(name)).unwrap();
            // The state change and the notice; the notice alone.
            for (out, lines) in [(log.out, 2), (notices.0, 1)] {
                let out = String::from_utf8(out).unwrap();
                assert_inert(&out);
                assert_eq!(out.lines().count(), lines, "{out}");
            }
        }
        let mut log = ServiceLog::new(Vec::new());
        log.emit(&verdict(NEWLINE_NAME)).unwrap();
        let out = String::from_utf8(log.out).unwrap();
        assert_eq!(
            out,
            "tapwatch: web-1\\ntapwatch: web-1 (tap0) is RECOVERED: forged (tap\\u{1b}[8m0\\n) \
             is RECOVERED: Blackout of 546 ms.\n"
        );
    }

    /// analyze's table and its report of a migration: one row per VM, one line per fact.
    #[test]
    fn foreign_names_stay_in_their_row_in_analyze() {
        for name in [NEWLINE_NAME, TERMINAL_NAME] {
            let Record::Verdict { fields, .. } = verdict(name) else {
                unreachable!()
            };
            let a = Analysis {
                notes: vec![format!("the tap {TAP} of {name} was inferred")],
                summary: Some(Record::Summary {
                    ts: at(0),
                    taps: vec![SummaryRow {
                        counters: TapRow {
                            ifname: TAP.into(),
                            ..TapRow::default()
                        },
                        ifindex: 1,
                        mode: Mode::Routed,
                        mac_history: Vec::new(),
                        detached: false,
                        verdict: Some(fields),
                    }],
                    forecasts: None,
                }),
                ..Analysis::default()
            };
            let t = table(&a);
            assert_inert(&t);
            // The note, a blank line, the header, the VM's row and its diagnosis.
            assert_eq!(t.lines().count(), 5, "{t}");
            let m = MigrationRecord {
                vm: name.into(),
                src_ifname: Some(TAP.into()),
                dst_ifname: TAP.into(),
                pause_from: "libvirt".into(),
                notes: vec![format!("{name} paused")],
                ..MigrationRecord::default()
            };
            let facts = [HostFact {
                fact: "CPU model".into(),
                src: name.into(),
                dst: "EPYC".into(),
            }];
            for out in [migration_report(&m, &facts), migration_line(&m)] {
                assert_inert(&out);
            }
            assert_eq!(migration_line(&m).lines().count(), 1);
            // The VM, six parts of the outage, its note, a blank line, the header, the
            // fact (too long for its column: its name, then a line per host), the closing
            // blank line.
            assert_eq!(migration_report(&m, &facts).lines().count(), 14);
        }
    }

    /// The table's columns line up whatever the values (typed modes and states pad).
    #[test]
    fn the_table_lines_up() {
        let row = |name: &str, mode, state, ms| SummaryRow {
            counters: TapRow {
                ifname: name.into(),
                ..TapRow::default()
            },
            ifindex: 1,
            mode,
            mac_history: Vec::new(),
            detached: false,
            verdict: Some(VerdictFields {
                vm: format!("vm-{name}"),
                state,
                blackout_ms: ms,
                switchover_ts: Some(None),
                inbound_gap_ms: Some(None),
                outbound_gap_ms: Some(None),
                diagnosis: "d".into(),
            }),
        };
        let a = Analysis {
            summary: Some(Record::Summary {
                ts: at(0),
                taps: vec![
                    row("tapA", Mode::Routed, State::Recovered, Some(546)),
                    row("vnet12", Mode::Bridged, State::Ok, None),
                ],
                forecasts: None,
            }),
            ..Analysis::default()
        };
        let t = table(&a);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("vm-")).collect();
        assert_eq!(lines.len(), 2, "{t}");
        for word in ["routed", "RECOVERED"] {
            assert_eq!(
                lines[0].find(word).unwrap(),
                t.lines()
                    .nth(1)
                    .unwrap()
                    .find(if word == "routed" { "MODE" } else { "STATE" })
                    .unwrap(),
                "{t}"
            );
        }
        assert_eq!(lines[1].find("bridged"), lines[0].find("routed"), "{t}");
        assert_eq!(lines[1].find("OK"), lines[0].find("RECOVERED"), "{t}");
    }

    /// An IPv6 nudge in words: each frame with what it claims and where its addresses
    /// came from.
    #[test]
    fn an_ipv6_nudge_says_each_frame() {
        let n: crate::model::nudge::NudgeRecord = serde_json::from_value(serde_json::json!({
            "ts": "2026-12-06T23:36:41.882310Z", "ifname": "tapn0", "trigger": "operator",
            "result": "sent", "frame": "neighbor_advert",
            "gateway_ip": "fe80::fc16:3eff:feaa:bbcc", "gateway_from": "derived_from_old_mac",
            "guest_ip": "2001:db8:65::2", "guest_ip_from": "stale_frames",
            "tap_mac": "00:61:fe:ed:ca:fe", "guest_mac": "fa:16:3e:aa:bb:cc", "bytes": "00",
            "more_frames": [{"frame": "router_advert", "gateway_ip": "fe80::261:feff:feed:cafe",
                "gateway_from": "tap_link_local", "guest_ip": "2001:db8:65::2",
                "guest_ip_from": "stale_frames", "bytes": "01"}],
            "message": "the operator asked"
        }))
        .unwrap();
        assert_eq!(n.claims(), "its router fe80::fc16:3eff:feaa:bbcc is");
        let w = nudge_words(&n);
        for want in [
            "Neighbour Advertisement (router, override): fe80::fc16:3eff:feaa:bbcc is at \
             00:61:fe:ed:ca:fe, to 2001:db8:65::2",
            "router fe80::fc16:3eff:feaa:bbcc (derived from the tap's previous MAC)",
            "Router Advertisement: fe80::261:feff:feed:cafe at 00:61:fe:ed:ca:fe is a default \
             router for 1800 s",
            "new router fe80::261:feff:feed:cafe (the tap's own link-local address now)",
            "bytes: 01",
        ] {
            assert!(w.contains(want), "{want:?} not in:\n{w}");
        }
    }
}
