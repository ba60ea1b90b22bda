//! Text for people: one line per record, notices on stderr.

use std::io::{self, Write};

use crate::{
    model::{Record, Sink},
    offline::Analysis,
};

/// One readable line per record, for a terminal without the full-screen view.
pub struct TextSink<W: Write>(pub W);

impl<W: Write> Sink for TextSink<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        let w = &mut self.0;
        match rec {
            Record::Attached {
                ts,
                ifname,
                mac,
                mode,
                ..
            } => {
                writeln!(
                    w,
                    "{ts} {ifname}: attached ({mode}, mac {})",
                    crate::model::mac::show(*mac, "none")
                )
            }
            Record::Detached { ts, ifname, reason } => {
                writeln!(w, "{ts} {ifname}: detached ({reason})")
            }
            Record::MacChange {
                ts,
                ifname,
                old_mac,
                new_mac,
            } => {
                writeln!(
                    w,
                    "{ts} {ifname}: MAC changed {} -> {}",
                    crate::model::mac::show(*old_mac, "none"),
                    crate::model::mac::show(*new_mac, "none")
                )
            }
            Record::Frame(f) => {
                let arp = match (&f.sender_ip, &f.target_ip) {
                    (Some(s), Some(t)) => format!(" {s} -> {t}"),
                    _ => String::new(),
                };
                writeln!(
                    w,
                    "{} {}: {} {} {} -> {}{arp}",
                    f.ts,
                    f.ifname,
                    f.direction.as_str(),
                    f.kind.as_str(),
                    f.src_mac,
                    f.dst_mac
                )
            }
            Record::ModeChange {
                ts,
                ifname,
                old_mode,
                new_mode,
                ..
            } => {
                writeln!(w, "{ts} {ifname}: {old_mode} -> {new_mode}")
            }
            Record::Stats { .. } => Ok(()),
            Record::Renamed {
                ts,
                ifname,
                old_ifname,
                ..
            } => writeln!(w, "{ts} {old_ifname}: renamed to {ifname}"),
            Record::Notice { ts, message, .. } => writeln!(w, "{ts} notice: {message}"),
            Record::Identity {
                ts,
                ifname,
                libvirt,
            } => match libvirt {
                Some(vm) => writeln!(w, "{ts} {ifname}: VM {}", vm.display_name()),
                None => writeln!(w, "{ts} {ifname}: no VM known"),
            },
            Record::Lab(l) => writeln!(w, "{} lab: {}", l.ts, l.describe()),
            Record::Migration(m) => writeln!(w, "{}", migration_line(m)),
            Record::Verdict { ts, ifname, fields } => {
                let ms = fields
                    .blackout_ms
                    .map(|m| format!(" ({m} ms)"))
                    .unwrap_or_default();
                writeln!(
                    w,
                    "{ts} {ifname} [{}]: {}{ms} — {}",
                    fields.vm, fields.state, fields.diagnosis
                )
            }
            Record::Summary { ts, taps } => {
                writeln!(w, "{ts} summary:")?;
                for t in taps {
                    if let Some(v) = &t.verdict {
                        writeln!(
                            w,
                            "  {} [{}]: {} — {}",
                            t.counters.ifname, v.vm, v.state, v.diagnosis
                        )?;
                    }
                    let c = &t.counters;
                    writeln!(
                        w,
                        "  {}: from_vm {} frames, to_vm {} frames, dst_mismatch {}, rarp {}, garp {}, arp req {} / rep {}, events lost {}",
                        c.ifname, c.from_vm_frames, c.to_vm_frames, c.dst_mismatch_frames,
                        c.rarp_frames, c.garp_frames, c.arp_requests, c.arp_replies, c.events_lost
                    )?;
                }
                Ok(())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Prints `notice` records on stderr, one line each, for a terminal user; the rest goes
/// elsewhere.
pub struct NoticePrinter<W: Write>(pub W);

impl<W: Write> Sink for NoticePrinter<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        match rec {
            Record::Notice { message, .. } => writeln!(self.0, "tapwatch: {message}"),
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
            Record::Notice { message, .. } => writeln!(self.out, "tapwatch: {message}"),
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
                    "tapwatch: {} ({ifname}) is {}: {}",
                    fields.vm, fields.state, fields.diagnosis
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
        m.vm,
        m.pause_ts.map_or("-".into(), |t| t.to_string()),
        m.pause_from,
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
    let mut out = format!("{} ({src} -> {})\n", m.vm, m.dst_ifname);
    let clock = m
        .clock_uncertainty_ms
        .map_or(" (the hosts' clocks are not known to agree)".into(), |u| {
            format!(" (± {u:.1} ms between the hosts' clocks)")
        });
    let lines = [
        (
            "paused on the source",
            format!("{} ({})", at(m.pause_ts), m.pause_from),
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
        out.push_str(&format!("  note: {n}\n"));
    }
    out.push_str(&format!("\n  {:<32} {:<40} destination\n", "", "source"));
    for f in facts {
        let mark = if f.src != f.dst { "≠" } else { " " };
        if f.src.chars().count() > 40 {
            // Too long for the column: one line per host.
            out.push_str(&format!("{mark} {}\n", f.fact));
            out.push_str(&format!("    {:<30} {}\n", "source", f.src));
            out.push_str(&format!("    {:<30} {}\n", "destination", f.dst));
        } else {
            out.push_str(&format!("{mark} {:<32} {:<40} {}\n", f.fact, f.src, f.dst));
        }
    }
    out.push('\n');
    out
}

/// The analysis as a table: one line per VM, then its diagnosis.
pub fn table(a: &Analysis) -> String {
    let mut out = String::new();
    for n in &a.notes {
        out.push_str(&format!("note: {n}\n"));
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
            v.map(|v| v.vm.as_str()).unwrap_or(&t.counters.ifname),
            t.counters.ifname,
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
            out.push_str(&format!("  {}\n", v.diagnosis));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Mode, State, SummaryRow, TapRow, VerdictFields},
        verdict::fixtures::at,
    };

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
}
