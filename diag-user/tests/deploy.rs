//! What deploy/ ships, checked against the exporter: every metric the alert rules and the
//! Grafana dashboard query is one tapwatch serves. Root-free; promtool and systemd check
//! the same files in the kernel suite (serve.rs).

use std::collections::BTreeSet;

use diag_user::report::metrics::Metrics;

fn deploy(file: &str) -> String {
    std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// The `tapwatch_…` names a text queries, a histogram's series named by the histogram.
fn queried(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tapwatch_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_string());
    }
    out
}

fn served() -> BTreeSet<String> {
    Metrics::new().unwrap().names().into_iter().collect()
}

#[test]
fn the_alert_rules_query_served_metrics() {
    let rules = deploy("tapwatch-alerts.yml");
    let names = queried(&rules);
    assert!(names.contains("tapwatch_vm_state"), "{names:?}");
    let served = served();
    let unknown: Vec<_> = names.difference(&served).collect();
    assert!(unknown.is_empty(), "not served: {unknown:?}");
}

#[test]
fn the_dashboard_queries_served_metrics() {
    let text = deploy("grafana-tapwatch.json");
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    let names = queried(&exprs.join("\n"));
    let served = served();
    let unknown: Vec<_> = names.difference(&served).collect();
    assert!(unknown.is_empty(), "not served: {unknown:?}");
    // Every metric of the contract is on the dashboard but the build and lost counters'
    // details.
    for m in [
        "tapwatch_dst_mismatch_frames_total",
        "tapwatch_vm_state",
        "tapwatch_blackout_seconds",
        "tapwatch_inbound_gap_seconds",
        "tapwatch_outbound_gap_seconds",
        "tapwatch_kernel_drops_total",
    ] {
        assert!(names.contains(m), "{m} not on the dashboard");
    }
}

/// The metric names are a contract.
#[test]
fn the_contracted_names_are_served() {
    let served = served();
    for m in [
        "tapwatch_dst_mismatch_frames_total",
        "tapwatch_rarp_frames_total",
        "tapwatch_garp_frames_total",
        "tapwatch_kernel_drops_total",
        "tapwatch_vm_state",
        "tapwatch_blackouts_total",
        "tapwatch_blackout_seconds",
        "tapwatch_inbound_gap_seconds",
        "tapwatch_outbound_gap_seconds",
        "tapwatch_taps",
        "tapwatch_events_lost_total",
        "tapwatch_build_info",
    ] {
        assert!(served.contains(m), "{m} missing from {served:?}");
    }
}
