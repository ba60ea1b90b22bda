//! 6. The nudge: the lab's stale-mac migration with Linux's default neighbour timers
//!    (reachable time 30 s), its real guest's stale window without and with `--remediate`,
//!    against a clean migration's (none), as the lab's truth measures them.

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::report::Report;

const SECTION: &str = "6 nudge";

/// One headless lab run; its truth record for the one VM.
fn truth(args: &[&str]) -> Result<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["lab", "--json", "--reachable-time", "30"])
        .args(args)
        .output()
        .context("tapwatch lab")?;
    if !out.status.success() {
        bail!(
            "tapwatch lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "lab" && v["event"] == "truth")
        .context("the lab wrote no truth")
}

fn window(v: &Value) -> Result<u64> {
    v["stale_window_ms"]
        .as_u64()
        .with_context(|| format!("no stale window in {v}"))
}

pub fn run(report: &mut Report) -> Result<()> {
    let clean = window(&truth(&["--scenario", "clean"])?)?;
    let stale = truth(&["--scenario", "stale-mac"])?;
    let nudged = truth(&["--scenario", "stale-mac", "--remediate"])?;
    let (without, with) = (window(&stale)?, window(&nudged)?);
    report.info(
        SECTION,
        "lab, reachable time 30 s: stale window of a clean migration / stale-mac without \
         the nudge",
        format!("{clean} / {without} ms"),
    );
    report.target(
        SECTION,
        "stale-mac with --remediate: stale window (the guest's own timers would have made it)",
        format!(
            "{with} ms ({} ms)",
            nudged["unnudged_window_ms"].as_u64().unwrap_or(0)
        ),
        "within 100 ms of the clean migration",
        nudged["nudged"] == true && with <= clean + 100,
    );
    Ok(())
}
