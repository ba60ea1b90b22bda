//! 3c. The live view with 1000 VMs: feeding a stats record of 1000 taps to the view's
//!     state, and drawing the frame (layout and widgets, then the terminal escape codes).

use std::time::Instant;

use anyhow::Result;
use diag_user::{
    model::clock::Ts,
    model::{Record, TapRow},
    report::tui::{app::App, ui},
    verdict::{Engine, EngineConfig},
};
use ratatui::{backend::CrosstermBackend, backend::TestBackend, Terminal};

use crate::{
    measure::{ms, percentile},
    report::Report,
    Settings, TAP_MAC,
};

const SECTION: &str = "3 scale";
const TAPS: usize = 1000;
const FRAMES: usize = 300;
/// A large terminal: more visible rows cost more.
const SIZE: (u16, u16) = (220, 60);

fn stats(t: Ts, round: u64) -> Record {
    Record::Stats {
        ts: t,
        taps: (0..TAPS)
            .map(|i| TapRow {
                ifname: format!("tap{i:04}"),
                from_vm_frames: round * 100 + i as u64,
                to_vm_frames: round * 90,
                dst_mismatch_frames: if i % 50 == 0 { round * 7 } else { 0 },
                ..TapRow::default()
            })
            .collect(),
    }
}

pub fn run(_: &Settings, report: &mut Report) -> Result<()> {
    let t0 = chrono::Utc::now();
    let mut app = App::new();
    let mut engine = Engine::new(EngineConfig::default());
    for i in 0..TAPS {
        engine.apply(&Record::Attached {
            ts: Ts(t0),
            ifname: format!("tap{i:04}"),
            ifindex: i as u32 + 10,
            mac: Some(TAP_MAC),
            mode: diag_user::model::Mode::Routed,
            backend: diag_user::model::Backend::Ebpf,
            datapath: Some(diag_user::model::DatapathKind::Drops),
            appeared: false,
            mtu: Some(1500),
            master: None,
        });
    }
    let at = |k: usize| Ts(t0 + chrono::Duration::milliseconds(100 * k as i64));
    let mut apply = Vec::with_capacity(FRAMES);
    let mut widgets = Vec::with_capacity(FRAMES);
    let mut full = Vec::with_capacity(FRAMES);
    let mut test = Terminal::new(TestBackend::new(SIZE.0, SIZE.1))?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::sink()))?;
    term.resize(ratatui::layout::Rect::new(0, 0, SIZE.0, SIZE.1))?;
    for k in 1..=FRAMES {
        let rec = stats(at(k), k as u64);
        let t = Instant::now();
        engine.apply(&rec);
        apply.push(ms(t.elapsed()));
        // Every few frames the selection moves, as when an engineer scrolls.
        if k % 10 == 0 {
            app.move_selection(&engine, 1);
        }
        let t = Instant::now();
        test.draw(|f| ui::draw(f, &app, &engine, at(k)))?;
        widgets.push(ms(t.elapsed()));
        let t = Instant::now();
        term.draw(|f| ui::draw(f, &app, &engine, at(k)))?;
        full.push(ms(t.elapsed()));
    }
    let p = |v: &mut Vec<f64>| (percentile(v, 50.0), percentile(v, 99.0));
    let (a50, a99) = p(&mut apply);
    let (w50, w99) = p(&mut widgets);
    let (f50, f99) = p(&mut full);
    report.info(
        SECTION,
        format!("view: apply a stats record of {TAPS} taps, p50 / p99"),
        format!("{a50:.2} / {a99:.2} ms"),
    );
    report.info(
        SECTION,
        format!(
            "view: layout+widgets of {TAPS} rows at {}x{}, p50 / p99",
            SIZE.0, SIZE.1
        ),
        format!("{w50:.2} / {w99:.2} ms"),
    );
    report.target(
        SECTION,
        format!("view: full draw of {TAPS} rows to a terminal, p99 ({FRAMES} frames)"),
        format!("{f99:.2} ms (p50 {f50:.2})"),
        "< 16 ms",
        f99 < 16.0,
    );
    Ok(())
}
