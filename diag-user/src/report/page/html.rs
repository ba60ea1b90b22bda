//! The page itself. Foreign text goes through [`one_line`] (so no control or bidi
//! character acts in the browser either) and then through maud's escaping.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{svg, Input, Page, Vm};
use crate::{
    model::{clock::Ts, host::HostJson, mac::show, HostFact},
    registry::Tap,
    report::{
        story::{length, Story},
        text::one_line,
    },
};

/// The page's CSS, inline: fixed sizes, system fonts, no URL.
const STYLE: &str = include_str!("style.css");

fn ms(v: Option<u64>) -> String {
    v.map_or("-".into(), length)
}

fn text(s: &str) -> String {
    one_line(s).into_owned()
}

fn clock(t: Option<Ts>) -> String {
    t.map_or("-".into(), |t| t.to_string())
}

/// The whole page, as one HTML document.
pub fn render(page: &Page) -> String {
    let title = match page.vms.as_slice() {
        [] => "tapwatch report".to_string(),
        [one] => format!("tapwatch: {} {}", text(one.tap.vm_name()), state(one)),
        many => format!("tapwatch: {} VMs", many.len() + page.others.len()),
    };
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="color-scheme" content="light dark";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (title) }
                    p class="sub" { "Made by tapwatch " (env!("CARGO_PKG_VERSION")) " from:" }
                    ul class="inputs" {
                        @for i in &page.inputs {
                            li { span class="role" { (i.role) } " " code { (text(&i.path)) } }
                        }
                    }
                }
                (overview(page))
                @for (n, vm) in page.vms.iter().enumerate() {
                    (vm_section(page, vm, n))
                }
                (hosts(&page.inputs))
                (notes(page))
                footer {
                    "One self-contained file: no script, nothing fetched when it is opened. "
                    "Times are UTC; lengths are measured on the kernel's timestamps."
                }
            }
        }
    };
    doc.into_string()
}

fn state(vm: &Vm) -> &'static str {
    vm.tap.state.as_str()
}

/// The table of every VM at the top.
fn overview(page: &Page) -> Markup {
    let pair = page.vms.iter().any(|v| v.migration.is_some());
    html! {
        section class="overview" {
            h2 { "VMs" }
            table {
                thead { tr {
                    th { "VM" } th { "tap" } th { "state" } th { "blackout" }
                    th { "network part" } th { "guest part" }
                    @if pair { th { "downtime" } }
                } }
                tbody {
                    @for (n, vm) in page.vms.iter().enumerate() {
                        (overview_row(&vm.tap, page.now, Some(n), vm.migration.as_ref().map(|m| m.downtime_ms)))
                    }
                    @for t in &page.others {
                        (overview_row(t, page.now, None, None))
                    }
                }
            }
            @if page.unlisted > 0 {
                p class="note" { (page.unlisted) " more taps are not listed." }
            }
        }
    }
}

fn overview_row(t: &Tap, now: Ts, told: Option<usize>, downtime: Option<Option<u64>>) -> Markup {
    html! {
        tr {
            td {
                @if let Some(n) = told {
                    a href=(format!("#vm-{n}")) { (text(t.vm_name())) }
                } @else {
                    (text(t.vm_name()))
                }
            }
            td { code { (text(&t.ifname)) } }
            td { span class=(format!("state {}", t.state.as_str().to_lowercase())) { (t.state.as_str()) } }
            td class="num" { (ms(t.blackout_ms(now))) }
            td class="num" { (ms(t.inbound_gap_ms())) }
            td class="num" { (ms(t.outbound_gap_ms())) }
            @if let Some(d) = downtime { td class="num" { (ms(d)) } }
        }
    }
}

fn vm_section(page: &Page, vm: &Vm, n: usize) -> Markup {
    let t = &vm.tap;
    let story = Story::of(t, page.now).map(|s| match &vm.migration {
        Some(m) => match m.pause_ts {
            Some(p) => s.with_pause(p, m.resume_ts, None),
            None => s,
        },
        None => s,
    });
    html! {
        section class="vm" id=(format!("vm-{n}")) {
            h2 {
                (text(t.vm_name())) " "
                span class=(format!("state {}", t.state.as_str().to_lowercase())) { (t.state.as_str()) }
            }
            p class="meta" {
                "tap " code { (text(&t.ifname)) } ", " (t.mode.as_str())
                ", tap MAC " code { (show(t.mac, "none")) }
                @if let Some((prev, _)) = t.prev_mac { " (was " code { (show(prev, "none")) } ")" }
                ", guest MAC " code { (show(t.guest_mac(), "unknown")) }
            }
            p class=(format!("diagnosis {}", if t.blackout.is_some() { "troubled" } else { "calm" }))
                data-n="diagnosis" { (text(&t.diagnosis(page.now))) }
            @match &story {
                Some(s) => (figure(s)),
                None => p class="note" {
                    "No migration was seen on this tap (no RARP, and the tap was there from \
                     the start): there is no outage to draw."
                },
            }
            (numbers(page, vm))
            (counters(t))
            @if !vm.compared.is_empty() { (facts(&vm.compared)) }
            (entries(t, story.as_ref().map(|s| s.origin)))
        }
    }
}

fn figure(story: &Story) -> Markup {
    let kinds = story.shown_kinds();
    html! {
        figure {
            (svg::timeline(story))
            figcaption {
                "0 is the switch-over at " (story.origin.clock()) " UTC (the VM's first RARP, else its first frame here). "
                @for k in &kinds {
                    span class="key" { b { (k.glyph()) } " " (k.name()) } " "
                }
                @for lane in svg::lanes(story) {
                    span class=(format!("key {}", lane.class)) { span class="swatch" {} " " (lane.name) } " "
                }
                @if story.outside > 0 {
                    (story.outside) " more marks lie too far from the outage to draw (see the entries)."
                }
            }
        }
    }
}

/// A number with where it came from.
struct Number {
    key: &'static str,
    name: &'static str,
    value: String,
    ms: Option<u64>,
    from: String,
}

fn number(
    key: &'static str,
    name: &'static str,
    ms_: Option<u64>,
    from: impl Into<String>,
) -> Number {
    Number {
        key,
        name,
        value: ms(ms_),
        ms: ms_,
        from: from.into(),
    }
}

fn numbers(page: &Page, vm: &Vm) -> Markup {
    let t = &vm.tap;
    let mut rows = vec![Number {
        key: "switchover",
        name: "switch-over",
        value: clock(t.switchover()),
        ms: None,
        from: if t.first_rarp.is_some() {
            "the VM's first RARP on this tap (kernel timestamp)".into()
        } else {
            "the VM's first frame on a tap that appeared while watched".into()
        },
    }];
    rows.push(number(
        "inbound_gap_ms",
        "network's part (inbound gap)",
        t.inbound_gap_ms(),
        "switch-over → the first data frame delivered to the VM (kernel timestamps)",
    ));
    rows.push(number(
        "outbound_gap_ms",
        "guest's part (outbound gap)",
        t.outbound_gap_ms(),
        "switch-over → the first frame from the VM the host accepted, after its stale ones",
    ));
    let stale = t
        .blackout
        .map(|b| b.stale_mac.to_string())
        .unwrap_or_else(|| "the old MAC".into());
    rows.push(number(
        "blackout_ms",
        "blackout (stale MAC)",
        t.blackout_ms(page.now),
        format!(
            "the first frame to {stale} (not the tap's MAC) → the first frame to the tap's MAC"
        ),
    ));
    if let Some(m) = &vm.migration {
        rows.extend(pair_numbers(m));
    }
    if let Some(l) = &vm.truth {
        rows.push(number(
            "truth_stale_window_ms",
            "lab truth: stale window",
            l.stale_window_ms,
            "the lab's guest: how long it sent to a MAC its tap did not have",
        ));
        rows.push(number(
            "truth_client_outage_ms",
            "lab truth: client outage",
            l.client_outage_ms,
            "the lab's client: the longest its pings went unanswered",
        ));
        rows.push(number(
            "truth_inbound_gap_ms",
            "lab truth: inbound gap",
            l.inbound_gap_ms,
            "the lab's guest: switch-over → the first data frame it received",
        ));
        rows.push(number(
            "truth_outbound_gap_ms",
            "lab truth: outbound gap",
            l.outbound_gap_ms,
            "the lab's guest: switch-over → its first frame to the tap's real MAC",
        ));
    }
    html! {
        h3 { "The numbers, and where they come from" }
        table class="numbers" {
            @for r in &rows {
                tr data-n=(r.key) {
                    th { (r.name) }
                    td class="num" data-ms=[r.ms] { (r.value) }
                    td class="from" { (text(&r.from)) }
                }
            }
        }
    }
}

fn pair_numbers(m: &crate::model::MigrationRecord) -> Vec<Number> {
    let clocks = m.clock_uncertainty_ms.map_or(
        "; the hosts' clocks are not known to agree, so this is only as good as their NTP"
            .to_string(),
        |u| format!(", ± {u:.1} ms between the hosts' clocks"),
    );
    vec![
        Number {
            key: "pause",
            name: "paused on the source",
            value: clock(m.pause_ts),
            ms: None,
            from: format!("the source's bundle: {}", m.pause_from),
        },
        Number {
            key: "resume",
            name: "resumed on the destination",
            value: clock(m.resume_ts),
            ms: None,
            from: "the destination's bundle: the VM's first RARP".into(),
        },
        number(
            "downtime_ms",
            "downtime",
            m.downtime_ms,
            format!("resume − pause, across the two hosts{clocks}"),
        ),
    ]
}

fn counters(t: &Tap) -> Markup {
    let c = &t.counters;
    let mut rows: Vec<(&str, u64)> = vec![
        ("frames from the VM", c.from_vm_frames),
        ("frames to the VM", c.to_vm_frames),
        (
            "to a MAC not the tap's (dst-mismatch)",
            c.dst_mismatch_frames,
        ),
        ("RARP", c.rarp_frames),
        ("GARP", c.garp_frames),
        ("ARP requests", c.arp_requests),
        ("ARP replies", c.arp_replies),
        ("bytes from the VM", c.from_vm_bytes),
        ("events lost", c.events_lost),
    ];
    if c.nd_frames() > 0 {
        rows.extend([
            ("unsolicited NA (override)", c.unsolicited_nas),
            ("neighbour solicitations", c.neighbor_solicits),
            ("neighbour advertisements", c.neighbor_adverts),
            ("router solicitations", c.router_solicits),
            ("router advertisements", c.router_adverts),
        ]);
    }
    html! {
        h3 { "Counters" }
        p class="note" { "The kernel's counts for the tap over the whole recording (the last stats record)." }
        table class="counters" {
            @for (name, v) in rows { tr { th { (name) } td class="num" { (v) } } }
            @for (reason, v) in &c.kernel_drops {
                tr { th { "kernel drops: " (text(reason)) } td class="num" { (v) } }
            }
        }
    }
}

fn facts(compared: &[HostFact]) -> Markup {
    html! {
        h3 { "What the two hosts differ in" }
        table class="facts" {
            thead { tr { th {} th { "source" } th { "destination" } } }
            @for f in compared {
                tr class=(if f.src != f.dst { "differs" } else { "same" }) {
                    th { @if f.src != f.dst { "≠ " } (text(&f.fact)) }
                    td { (text(&f.src)) }
                    td { (text(&f.dst)) }
                }
            }
        }
    }
}

fn entries(t: &Tap, origin: Option<Ts>) -> Markup {
    html! {
        h3 { "Entries" }
        table class="entries" {
            @for e in &t.timeline {
                tr {
                    td class="num" { (e.ts.clock()) }
                    td class="num" {
                        @if let Some(o) = origin {
                            @let d = e.ts.ms_since(o);
                            (format!("{}{:.3}s", if d < 0 { "-" } else { "+" }, d.abs() as f64 / 1000.0))
                        }
                    }
                    td { (text(&e.what)) }
                }
            }
        }
    }
}

fn hosts(inputs: &[Input]) -> Markup {
    let known: Vec<(&Input, &HostJson)> = inputs
        .iter()
        .filter_map(|i| Some((i, i.host.as_ref()?)))
        .collect();
    html! {
        @if !known.is_empty() {
            section class="hosts" {
                h2 { "Hosts" }
                table {
                    @for (i, h) in known {
                        tr { th colspan="2" { (i.role) ": " (text(&h.host.hostname)) } }
                        tr { td { "kernel" } td { (text(&h.host.kernel_release)) } }
                        tr { td { "libvirt" } td { (text(h.host.libvirt_version.as_deref().unwrap_or("-"))) } }
                        tr { td { "QEMU" } td { (text(h.host.qemu_version.as_deref().unwrap_or("-"))) } }
                        tr { td { "CPU" } td { (text(h.host.cpu_model.as_deref().unwrap_or("-"))) } }
                        tr { td { "recorded" } td { (clock(h.started)) " to " (clock(h.ended)) } }
                        tr { td { "frames" } td { (h.frames_written) " written, " (h.frames_skipped) " left out by the size cap" } }
                    }
                }
            }
        }
    }
}

fn notes(page: &Page) -> Markup {
    let mut all: Vec<String> = page.notes.clone();
    for m in page.vms.iter().filter_map(|v| v.migration.as_ref()) {
        all.extend(m.notes.iter().map(|n| format!("{}: {n}", m.vm)));
    }
    html! {
        @if !all.is_empty() {
            section class="notes" {
                h2 { "Notes" }
                ul { @for n in &all { li { (text(n)) } } }
            }
        }
    }
}
