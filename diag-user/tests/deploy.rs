//! What deploy/ ships, checked against the exporter: every metric the alert rules and the
//! Grafana dashboard query is one tapwatch serves; the Kubernetes DaemonSet is valid against
//! Kubernetes' own schema and gives `tapwatch serve` what it needs. Root-free; promtool and
//! systemd check the same files in the kernel suite (serve.rs).

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

/// Every document of a YAML file, as JSON values.
fn yaml_documents(file: &str) -> Vec<serde_json::Value> {
    fn json(y: &yaml_rust2::Yaml) -> serde_json::Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::Real(r) => r.parse::<f64>().map_or(serde_json::Value::Null, Into::into),
            Yaml::Integer(i) => (*i).into(),
            Yaml::String(s) => s.clone().into(),
            Yaml::Boolean(b) => (*b).into(),
            Yaml::Array(a) => a.iter().map(json).collect(),
            Yaml::Hash(h) => h
                .iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), json(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => serde_json::Value::Null,
        }
    }
    yaml_rust2::YamlLoader::load_from_str(&deploy(file))
        .unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
        .iter()
        .map(json)
        .collect()
}

const DAEMONSET: &str = "kubernetes/daemonset.yaml";

/// `kubernetes-validate` (PyPI), with the JSON schemas of every Kubernetes release since
/// 1.25 inside it: scripts/setup.sh installs it.
fn kubernetes_validate() -> std::path::PathBuf {
    let installed = std::path::Path::new("/opt/tapwatch-tools/venv/bin/kubernetes-validate");
    std::env::var_os("TAPWATCH_KUBERNETES_VALIDATE")
        .map(Into::into)
        .or_else(|| installed.exists().then(|| installed.to_path_buf()))
        .unwrap_or_else(|| "kubernetes-validate".into())
}

/// Valid against Kubernetes' schema, strictly (no field it does not know), for the oldest
/// release whose fields it uses (`appArmorProfile`: 1.30) and for the newest.
#[test]
fn the_daemonset_is_valid_kubernetes() {
    let file = format!("{}/../deploy/{DAEMONSET}", env!("CARGO_MANIFEST_DIR"));
    let tool = kubernetes_validate();
    for version in [Some("1.30.0"), None] {
        let mut cmd = std::process::Command::new(&tool);
        cmd.args(["--strict", "--no-warn"]);
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.arg(&file).output().unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the schema validator is missing; run scripts/setup.sh (or name it \
                 in TAPWATCH_KUBERNETES_VALIDATE)",
                tool.display()
            )
        });
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{version:?}: {said}");
        // Each of the three objects was checked.
        assert_eq!(said.matches(" passed for resource ").count(), 3, "{said}");
    }
}

/// The manifest's object of that kind.
fn daemonset_object(kind: &str) -> serde_json::Value {
    yaml_documents(DAEMONSET)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// `tapwatch serve` with flags it knows, listening where its probes ask.
#[test]
fn the_daemonset_runs_serve_and_probes_it() {
    let ns = daemonset_object("Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let ds = daemonset_object("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        (&pod["hostPID"], &pod["hostNetwork"]),
        (&true.into(), &true.into())
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tapwatch"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "tapwatch serve has no {flag}");
    }
    let listen = args[args.iter().position(|a| *a == "--listen").unwrap() + 1];
    assert_eq!(listen, "$(NODE_IP):9464");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"], c["ports"][0]["name"],
            "{probe}"
        );
    }
}

/// The privileges and mounts `tapwatch serve` needs, each explained in README.
#[test]
fn the_daemonset_has_the_privileges_and_mounts_serve_needs() {
    let ds = daemonset_object("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    caps.sort();
    let needed = [
        "BPF",
        "DAC_READ_SEARCH",
        "NET_ADMIN",
        "NET_RAW",
        "PERFMON",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "SYS_RESOURCE",
    ];
    assert_eq!(caps, needed);
    // README says why each is there.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for cap in needed {
        assert!(
            readme.contains(&format!("`{cap}`")),
            "README does not explain {cap}"
        );
    }
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} is not mounted"))
    };
    for (path, read_only) in [
        ("/sys/fs/bpf", false),
        ("/run/libvirt", true),
        ("/var/run/openvswitch", true),
        ("/etc/pve", true),
    ] {
        let m = mount(path);
        assert_eq!(
            m["readOnly"].as_bool().unwrap_or(false),
            read_only,
            "{path}"
        );
        assert!(volumes.contains(&m["name"].as_str().unwrap()), "{path}");
    }
}
