//! The timeline as inline SVG: lanes along one time axis, marks where things happened.
//! Fixed sizes in pixels, colours from the page's CSS classes (so dark and light schemes
//! and print each get theirs), and a `<title>` on each part for its words.

use maud::{html, Markup};

use crate::{
    model::clock::Ts,
    report::story::{length, tick_label, Bar, Story},
};

/// The drawing's width: the page's text width, which fits A4 with its margins.
pub const WIDTH: f64 = 700.0;
const LABEL: f64 = 150.0;
const RIGHT: f64 = 70.0;
const LANE: f64 = 26.0;
const MARKS: f64 = 30.0;
const AXIS: f64 = 34.0;

struct Scale<'a> {
    story: &'a Story,
}

impl Scale<'_> {
    fn x(&self, ts: Ts) -> f64 {
        let at = ts.ms_since(self.story.from).clamp(0, self.story.span_ms()) as f64;
        LABEL + at / self.story.span_ms() as f64 * (WIDTH - LABEL - RIGHT)
    }
}

/// One lane: what it stands for, its class (colour), its bar, and what the bar means.
pub struct Lane {
    pub name: &'static str,
    pub class: &'static str,
    pub bar: Option<Bar>,
    pub what: String,
}

/// The lanes of `story`: the source's and the downtime when told from both hosts, then the
/// network's part and the guest's.
pub fn lanes(story: &Story) -> Vec<Lane> {
    let mut out = Vec::new();
    if story.source.is_some() || story.downtime.is_some() {
        out.push(Lane {
            name: "source host",
            class: "src",
            bar: story.source,
            what: "the VM runs on the source until it pauses for the stop-and-copy".into(),
        });
        out.push(Lane {
            name: "downtime",
            class: "down",
            bar: story.downtime,
            what: "paused on the source until it runs on the destination".into(),
        });
    }
    out.push(Lane {
        name: "network (inbound)",
        class: "net",
        bar: story.network,
        what: "from the switch-over to the first frame delivered to the VM".into(),
    });
    out.push(Lane {
        name: "guest (outbound)",
        class: "guest",
        bar: story.guest,
        what: "the guest sends to a MAC its tap does not have: the host drops it".into(),
    });
    out
}

/// The picture of `story`.
pub fn timeline(story: &Story) -> Markup {
    let scale = Scale { story };
    let lanes = lanes(story);
    let height = MARKS + LANE * lanes.len() as f64 + AXIS;
    let axis_y = MARKS + LANE * lanes.len() as f64;
    let zero = scale.x(story.origin);
    html! {
        svg class="timeline" width=(WIDTH) height=(height)
            viewBox=(format!("0 0 {WIDTH} {height}")) role="img"
            aria-label="timeline of the outage" {
            @for (i, lane) in lanes.iter().enumerate() {
                (lane_row(&scale, lane, MARKS + LANE * i as f64))
            }
            (marks(&scale, story, axis_y))
            line class="zero" x1=(zero) x2=(zero) y1=(MARKS - 6.0) y2=(axis_y) {}
            text class="zero-label" x=(zero) y=(MARKS - 18.0) text-anchor="middle" {
                "switch-over"
            }
            (axis(&scale, story, axis_y))
        }
    }
}

fn lane_row(scale: &Scale, lane: &Lane, y: f64) -> Markup {
    let mid = y + LANE / 2.0;
    html! {
        g class=(format!("lane {}", lane.class)) {
            title { (lane.name) ": " (lane.what) }
            text class="lane-label" x="0" y=(mid + 4.0) { (lane.name) }
            line class="lane-rule" x1=(LABEL) x2=(WIDTH - RIGHT) y1=(mid) y2=(mid) {}
            @if let Some(bar) = lane.bar {
                // Whole pixels: a bar of a few milliseconds still shows, crisp.
                @let (a, b) = (scale.x(bar.from).round(), scale.x(bar.to).round());
                rect class="bar" x=(a) y=(y + 5.0) width=((b - a).max(4.0)) height=(LANE - 10.0)
                    data-from=(bar.from) data-to=(bar.to) {}
                text class="bar-label" x=(b + 4.0) y=(mid + 4.0) {
                    @if lane.class == "src" { "paused" } @else {
                        (length(bar.ms())) @if bar.open { " so far" }
                    }
                }
            }
        }
    }
}

/// A thin line per mark across the lanes, and its glyph above them where glyphs do not
/// collide (the rarer kind wins a crowded spot; every mark keeps its line and its words).
fn marks(scale: &Scale, story: &Story, bottom: f64) -> Markup {
    let slots = ((WIDTH - LABEL - RIGHT) / 9.0) as usize;
    let glyphs = story.marks_in_cells(slots);
    html! {
        g class="marks" {
            @for m in story.marks.iter().filter(|m| story.shows(m.ts)) {
                @let x = scale.x(m.ts);
                g class=(format!("mark {}", m.kind.name().replace(' ', "-"))) {
                    title { (m.ts.clock()) " " (m.what) }
                    line x1=(x) x2=(x) y1=(MARKS - 4.0) y2=(bottom) {}
                }
            }
            @for (_, m) in glyphs {
                text class="glyph" x=(scale.x(m.ts)) y=(MARKS - 6.0) text-anchor="middle" {
                    (m.kind.glyph())
                }
            }
        }
    }
}

fn axis(scale: &Scale, story: &Story, y: f64) -> Markup {
    let px = (WIDTH - LABEL - RIGHT) as usize;
    html! {
        g class="axis" {
            line x1=(LABEL) x2=(WIDTH - RIGHT) y1=(y) y2=(y) {}
            @for (_, ms) in story.ticks(px, 70) {
                @let x = scale.x(Ts(story.origin.0 + chrono::Duration::milliseconds(ms)));
                line x1=(x) x2=(x) y1=(y) y2=(y + 5.0) {}
                text x=(x) y=(y + 18.0) text-anchor="middle" { (tick_label(ms)) }
            }
            text class="unit" x="0" y=(y + 18.0) { "from the switch-over" }
        }
    }
}
