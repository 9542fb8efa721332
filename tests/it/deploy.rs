//! The files in `deploy/`: the Kubernetes manifests agree with the weir config they embed (ports,
//! probes, drain timing) and pass the Kubernetes schemas (`kubernetes-validate`), the Prometheus
//! rules pass `promtool` and name only metrics weir exports, and so does the Grafana dashboard.
//! Without a tool its test skips, or fails under `CI` (see [`crate::support::tool`]).

// Helpers here run outside a `#[test]` body.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;
use weir::Config;
use weir::internals::metrics as m;

use crate::support::tool;

/// DESIGN §4 names that weir does not export yet. The rules and the dashboard may use them (they
/// show no data until then); anything else must be a `pub const` of `src/metrics.rs`.
/// Once a name is exported there, remove it here.
const NOT_EXPORTED_YET: &[&str] = &[
    "weir_panic_mode",               // {upstream}: health-based panic routing
    "weir_endpoint_healthy",         // {upstream,endpoint}: active health checks and outliers
    "weir_endpoint_ejections_total", // {upstream}: outlier detection
];

/// The series suffixes a Prometheus histogram exports besides its name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// Seconds of slack `terminationGracePeriodSeconds` must leave beyond the drain it covers.
const GRACE_MARGIN: Duration = Duration::from_secs(5);

/// Where the weir container reads its config (deploy/Dockerfile's CMD).
const CONFIG_DIR: &str = "/etc/weir";
const CONFIG_KEY: &str = "weir.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn manifests() -> Vec<PathBuf> {
    ["deploy/k8s/sidecar.yaml", "deploy/k8s/edge.yaml"]
        .iter()
        .map(|p| root().join(p))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// === metric names ===

/// What `src/metrics.rs` exports: its `pub const X: &str = "weir_..."` names, and which
/// of them are histograms (described with `describe_histogram`).
struct Exported {
    names: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

impl Exported {
    fn read() -> Self {
        let src = read(&root().join("src/metrics.rs"));
        let mut consts = BTreeMap::new();
        for line in src.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else {
                continue;
            };
            let Some((ident, value)) = rest.split_once(": &str = \"") else {
                continue;
            };
            let Some(value) = value.strip_suffix("\";") else {
                continue;
            };
            if value.starts_with("weir_") {
                consts.insert(ident.to_owned(), value.to_owned());
            }
        }
        let mut histograms = BTreeSet::new();
        for piece in src.split("describe_histogram(").skip(1) {
            let inner = piece
                .split_once("d(")
                .and_then(|(_, r)| r.split_once(')'))
                .map(|(ident, _)| ident.trim())
                .expect("describe_histogram(d(NAME), ..)");
            let name = consts
                .get(inner)
                .unwrap_or_else(|| panic!("describe_histogram of unknown const {inner}"));
            histograms.insert(name.clone());
        }
        let names: BTreeSet<String> = consts.into_values().collect();
        // The parse found the consts the crate itself compiles with.
        for known in [m::REQUESTS_TOTAL, m::CIRCUIT_STATE, m::BUILD_INFO] {
            assert!(names.contains(known), "{known} not found in metrics.rs");
        }
        assert!(histograms.contains(m::REQUEST_DURATION_SECONDS));
        Exported { names, histograms }
    }

    /// True when `token` is a series weir exports, or a §4 name on the allow-list.
    fn knows(&self, token: &str) -> bool {
        self.names.contains(token)
            || NOT_EXPORTED_YET.contains(&token)
            || self.histograms.iter().any(|h| {
                HISTOGRAM_SUFFIXES
                    .iter()
                    .any(|s| token.strip_suffix(s) == Some(h.as_str()))
            })
    }

    fn assert_known(&self, tokens: &BTreeSet<String>, file: &str) {
        let unknown: Vec<&String> = tokens.iter().filter(|t| !self.knows(t)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics weir neither exports (src/metrics.rs) nor plans \
             (NOT_EXPORTED_YET): {unknown:?}"
        );
    }
}

/// Every `weir_[a-z0-9_]+` token in `text` that does not continue an identifier.
fn weir_tokens(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("weir_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let len = text[at..]
            .bytes()
            .take_while(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            .count();
        out.insert(text[at..at + len].to_owned());
    }
    out
}

#[test]
fn the_metric_check_knows_exports_histogram_series_and_the_allow_list_only() {
    let e = Exported::read();
    assert!(e.knows(m::SHED_TOTAL));
    assert!(e.knows(&format!("{}_bucket", m::REQUEST_DURATION_SECONDS)));
    assert!(e.knows("weir_panic_mode"));
    assert!(!e.knows("weir_made_up_total"));
    assert!(!e.knows(&format!("{}_bucket", m::REQUESTS_TOTAL)));
    assert!(!e.knows(m::REQUEST_DURATION_SECONDS.trim_end_matches("_seconds")));
    let tokens = weir_tokens("rate(weir_shed_total{a=\"b\"}[5m]) / xweir_no + weir_in_flight");
    assert_eq!(
        tokens.into_iter().collect::<Vec<_>>(),
        ["weir_in_flight", "weir_shed_total"]
    );
}

// === Kubernetes manifests ===

/// Every YAML document of a multi-document file.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{} document {i}: not YAML: {e}", path.display()));
        docs.push(value);
    }
    assert!(!docs.is_empty(), "{}: no documents", path.display());
    docs
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn at<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter()
        .try_fold(v, |v, k| v.get(k))
        .unwrap_or_else(|| panic!("missing {}", keys.join(".")))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map_or(&[], |s| s.as_slice())
}

/// The resources of one manifest file, by kind.
struct Manifest {
    file: String,
    docs: Vec<Value>,
}

impl Manifest {
    fn load(path: &Path) -> Self {
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let docs = documents(path);
        for (i, d) in docs.iter().enumerate() {
            for key in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
                let got = str_at(d, key).unwrap_or("");
                assert!(
                    !got.is_empty(),
                    "{file} document {i}: no {} (got {d:?})",
                    key.join(".")
                );
            }
        }
        Manifest { file, docs }
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_owned();
        self.docs
            .iter()
            .filter(move |d| str_at(d, &["kind"]) == Some(kind.as_str()))
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .find(|d| str_at(d, &["metadata", "name"]) == Some(name))
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.file))
    }

    fn kinds(&self) -> BTreeSet<&str> {
        self.docs
            .iter()
            .filter_map(|d| str_at(d, &["kind"]))
            .collect()
    }
}

/// A container port reference (`port: admin` or `port: 9901`) as a number.
fn resolve_port(container: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = port.as_str().expect("a port is a number or a name");
    let found = seq(&container["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    u16::try_from(found["containerPort"].as_u64().unwrap()).unwrap()
}

/// How long a container's `preStop` hook holds its SIGTERM back: a `sleep` action, or an
/// `exec` whose command ends in `sleep N`; none is zero.
fn pre_stop(container: &Value) -> Duration {
    let Some(hook) = container.get("lifecycle").and_then(|l| l.get("preStop")) else {
        return Duration::ZERO;
    };
    if let Some(s) = hook.get("sleep") {
        return Duration::from_secs(s["seconds"].as_u64().expect("sleep.seconds"));
    }
    if let Some(exec) = hook.get("exec") {
        let words: Vec<&str> = seq(&exec["command"])
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_whitespace)
            .collect();
        if let [.., "sleep", n] = words.as_slice() {
            return Duration::from_secs(n.parse().expect("sleep N"));
        }
    }
    panic!("cannot tell how long this preStop hook takes: {hook:?}");
}

/// What a weir-bearing Deployment runs: its weir container, the config that container reads,
/// and the pod spec.
struct WeirPod<'a> {
    deployment: &'a Value,
    pod: &'a Value,
    weir: &'a Value,
    config: Config,
}

fn weir_pods(manifest: &Manifest) -> Vec<WeirPod<'_>> {
    let file = &manifest.file;
    let mut out = Vec::new();
    for deployment in manifest.of_kind("Deployment") {
        let pod = at(deployment, &["spec", "template", "spec"]);
        let Some(weir) = seq(&pod["containers"])
            .iter()
            .find(|c| str_at(c, &["name"]) == Some("weir"))
        else {
            continue;
        };
        // The config: the ConfigMap volume mounted at /etc/weir, key weir.toml.
        let mount = seq(&weir["volumeMounts"])
            .iter()
            .find(|v| str_at(v, &["mountPath"]) == Some(CONFIG_DIR))
            .unwrap_or_else(|| panic!("{file}: weir mounts nothing at {CONFIG_DIR}"));
        assert!(
            mount.get("subPath").is_none(),
            "{file}: a subPath mount never sees ConfigMap updates"
        );
        let volume_name = str_at(mount, &["name"]).unwrap();
        let volume = seq(&pod["volumes"])
            .iter()
            .find(|v| str_at(v, &["name"]) == Some(volume_name))
            .unwrap_or_else(|| panic!("{file}: no volume {volume_name}"));
        let map_name = str_at(volume, &["configMap", "name"])
            .unwrap_or_else(|| panic!("{file}: volume {volume_name} is not a ConfigMap"));
        let map = manifest.named("ConfigMap", map_name);
        let toml = str_at(map, &["data", CONFIG_KEY])
            .unwrap_or_else(|| panic!("{file}: ConfigMap {map_name} has no {CONFIG_KEY}"));
        let config = Config::from_toml(toml, &format!("{file}:{map_name}/{CONFIG_KEY}"))
            .unwrap_or_else(|e| panic!("the weir config in {file} is invalid:\n{e}"));
        // weir reads that file: the image's default, or args naming it.
        let args: Vec<&str> = seq(&weir["args"])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let path = format!("{CONFIG_DIR}/{CONFIG_KEY}");
        assert!(
            args.is_empty() || args.windows(2).any(|w| w == ["--config", path.as_str()]),
            "{file}: weir's args {args:?} do not read {path}"
        );
        out.push(WeirPod {
            deployment,
            pod,
            weir,
            config,
        });
    }
    assert!(
        !out.is_empty(),
        "{file}: no Deployment with a weir container"
    );
    out
}

/// Ports, probes, drain timing, resources and security of every weir pod in a manifest.
fn check_weir_pods(manifest: &Manifest) {
    let file = &manifest.file;
    for WeirPod {
        deployment,
        pod,
        weir,
        config,
    } in weir_pods(manifest)
    {
        // Container ports are exactly the admin port and the listeners' ports.
        let admin = config.admin.listen.port();
        let mut expected: BTreeSet<u16> =
            config.listeners.iter().map(|l| l.listen.port()).collect();
        expected.insert(admin);
        let declared: BTreeSet<u16> = seq(&weir["ports"])
            .iter()
            .map(|p| u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap())
            .collect();
        assert_eq!(
            declared, expected,
            "{file}: weir's containerPorts differ from its config's admin and listener ports"
        );
        for addr in
            std::iter::once(config.admin.listen).chain(config.listeners.iter().map(|l| l.listen))
        {
            assert!(
                addr.ip().is_unspecified(),
                "{file}: weir listens on {addr}, which the kubelet and Services cannot reach"
            );
        }

        // Probes on the admin port: liveness /healthz, readiness /readyz.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = at(weir, &[probe, "httpGet"]);
            assert_eq!(str_at(get, &["path"]), Some(path), "{file}: {probe} path");
            assert_eq!(
                resolve_port(weir, &get["port"]),
                admin,
                "{file}: {probe} is not on the admin port {admin}"
            );
        }

        // The grace period covers weir's whole drain, and every other container outlives it.
        let drain = config.drain.delay + config.drain.timeout;
        let grace = Duration::from_secs(
            pod.get("terminationGracePeriodSeconds")
                .map_or(30, |g| g.as_u64().unwrap()),
        );
        let weir_needs = pre_stop(weir) + drain;
        assert!(
            grace >= weir_needs + GRACE_MARGIN,
            "{file}: terminationGracePeriodSeconds {grace:?} < preStop + drain.delay + \
             drain.timeout ({weir_needs:?}) + {GRACE_MARGIN:?}"
        );
        for c in seq(&pod["containers"]) {
            let name = str_at(c, &["name"]).unwrap();
            if name == "weir" {
                continue;
            }
            let hold = pre_stop(c);
            assert!(
                hold >= drain,
                "{file}: container {name} gets SIGTERM after {hold:?}, before weir has drained \
                 ({drain:?}): requests weir still forwards would find it gone"
            );
            assert!(
                grace >= hold + GRACE_MARGIN,
                "{file}: container {name} has no time to stop after its preStop ({hold:?})"
            );
        }

        // Every container: requests and limits, non-root, read-only root file system.
        assert_eq!(
            pod.get("securityContext")
                .and_then(|s| s.get("runAsNonRoot"))
                .and_then(Value::as_bool),
            Some(true),
            "{file}: pod securityContext.runAsNonRoot"
        );
        for c in seq(&pod["containers"]) {
            let name = str_at(c, &["name"]).unwrap();
            for key in ["requests", "limits"] {
                for res in ["cpu", "memory"] {
                    assert!(
                        c.get("resources")
                            .and_then(|r| r.get(key))
                            .and_then(|r| r.get(res))
                            .is_some(),
                        "{file}: container {name} has no resources.{key}.{res}"
                    );
                }
            }
            let sc = at(c, &["securityContext"]);
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{file}: {name}"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{file}: {name}"
            );
        }
        let uid = weir
            .get("securityContext")
            .and_then(|s| s.get("runAsUser"))
            .or_else(|| pod.get("securityContext").and_then(|s| s.get("runAsUser")));
        assert_eq!(
            uid.and_then(Value::as_u64),
            Some(10001),
            "{file}: weir runs as the image's user 10001"
        );

        // Services that select this pod send traffic to a weir listener, never around it.
        let labels = at(deployment, &["spec", "template", "metadata", "labels"]);
        let selects = |selector: &Value| {
            selector
                .as_mapping()
                .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        assert!(
            selects(at(deployment, &["spec", "selector", "matchLabels"])),
            "{file}: the Deployment's selector does not match its pods"
        );
        let listeners: BTreeSet<u16> = config.listeners.iter().map(|l| l.listen.port()).collect();
        for svc in manifest.of_kind("Service") {
            if !selects(at(svc, &["spec", "selector"])) {
                continue;
            }
            for p in seq(at(svc, &["spec", "ports"])) {
                let target = resolve_port(weir, p.get("targetPort").unwrap_or(&p["port"]));
                assert!(
                    listeners.contains(&target),
                    "{file}: Service port {target} is not a weir listener {listeners:?}"
                );
            }
        }
    }
}

#[test]
fn sidecar_manifest_matches_its_weir_config() {
    let manifest = Manifest::load(&root().join("deploy/k8s/sidecar.yaml"));
    check_weir_pods(&manifest);
    for kind in ["ConfigMap", "Deployment", "Service"] {
        assert!(manifest.kinds().contains(kind), "sidecar.yaml: no {kind}");
    }
    let pods = weir_pods(&manifest);
    let containers = seq(&pods[0].pod["containers"]).len();
    assert!(containers >= 2, "sidecar.yaml: weir has no app beside it");
    // weir forwards to the app over loopback, on a port that is not weir's own.
    let config = &pods[0].config;
    let weir_ports: BTreeSet<u16> = std::iter::once(config.admin.listen.port())
        .chain(config.listeners.iter().map(|l| l.listen.port()))
        .collect();
    let endpoints: Vec<_> = config.upstreams.iter().flat_map(|u| &u.endpoints).collect();
    assert!(!endpoints.is_empty(), "sidecar.yaml: weir has no endpoint");
    for e in endpoints {
        assert!(
            ["127.0.0.1", "localhost", "[::1]"].contains(&e.host()),
            "sidecar.yaml: endpoint {e} is not in the pod"
        );
        let port = e.port_u16().unwrap();
        assert!(
            !weir_ports.contains(&port),
            "sidecar.yaml: {e} is weir itself"
        );
    }
}

#[test]
fn edge_manifest_matches_its_weir_config_and_scales() {
    let manifest = Manifest::load(&root().join("deploy/k8s/edge.yaml"));
    check_weir_pods(&manifest);
    let kinds = manifest.kinds();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(kind), "edge.yaml: no {kind}");
    }
    let pods = weir_pods(&manifest);
    let deployment = pods[0].deployment;
    let name = str_at(deployment, &["metadata", "name"]).unwrap();
    let replicas = at(deployment, &["spec", "replicas"]).as_u64().unwrap();
    assert!(replicas >= 2, "edge.yaml: {replicas} replica");
    let labels = at(deployment, &["spec", "template", "metadata", "labels"]);

    let pdb = manifest.of_kind("PodDisruptionBudget").next().unwrap();
    let selector = at(pdb, &["spec", "selector", "matchLabels"]);
    assert!(
        selector
            .as_mapping()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v)),
        "edge.yaml: the PodDisruptionBudget does not select the weir pods"
    );

    let hpa = manifest.of_kind("HorizontalPodAutoscaler").next().unwrap();
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "kind"]),
        Some("Deployment")
    );
    assert_eq!(str_at(hpa, &["spec", "scaleTargetRef", "name"]), Some(name));
    let min = at(hpa, &["spec", "minReplicas"]).as_u64().unwrap();
    assert!(min >= 2 && min <= replicas, "edge.yaml: minReplicas {min}");
    assert!(
        seq(at(hpa, &["spec", "metrics"]))
            .iter()
            .any(|mt| str_at(mt, &["resource", "name"]) == Some("cpu")),
        "edge.yaml: the autoscaler does not scale on CPU"
    );
    // Utilization is relative to the CPU request: the weir container must have one.
    assert!(pods[0].weir["resources"]["requests"].get("cpu").is_some());
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    // kubernetes-validate is on PyPI: python3 -m pip install kubernetes-validate.
    let Some(validate) = tool("kubernetes-validate") else {
        return;
    };
    for path in manifests() {
        // --strict: unknown fields (a typo such as `readinesProbe`) are errors too.
        let out = Command::new(&validate)
            .args(["--strict", "--no-warn"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate rejects {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// === Prometheus rules ===

/// A Prometheus duration: one or more `<n><unit>`, units ms, s, m, h, d, w, y.
fn is_prometheus_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

#[test]
fn prometheus_rules_are_complete_and_name_exported_metrics() {
    let path = root().join("deploy/prometheus/rules.yaml");
    let doc: Value = serde_norway::from_str(&read(&path)).expect("rules.yaml is YAML");
    let exported = Exported::read();
    let groups = seq(at(&doc, &["groups"]));
    assert!(!groups.is_empty(), "rules.yaml: no groups");
    let mut alerts = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for g in groups {
        let group = str_at(g, &["name"]).expect("every group has a name");
        let rules = seq(at(g, &["rules"]));
        assert!(!rules.is_empty(), "rules.yaml: group {group} has no rules");
        for r in rules {
            let alert = str_at(r, &["alert"]).unwrap_or_else(|| panic!("{group}: {r:?}"));
            assert!(alerts.insert(alert.to_owned()), "alert {alert} twice");
            let expr = str_at(r, &["expr"]).unwrap_or_else(|| panic!("{alert}: no expr"));
            let for_ = str_at(r, &["for"]).unwrap_or_else(|| panic!("{alert}: no for"));
            assert!(is_prometheus_duration(for_), "{alert}: for: {for_}");
            let severity = str_at(r, &["labels", "severity"]).unwrap_or("");
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{alert}: labels.severity {severity:?}"
            );
            let summary = str_at(r, &["annotations", "summary"]).unwrap_or("");
            assert!(!summary.is_empty(), "{alert}: no annotations.summary");
            let found = weir_tokens(expr);
            assert!(!found.is_empty(), "{alert}: its expr names no weir metric");
            tokens.extend(found);
        }
    }
    exported.assert_known(&tokens, "rules.yaml");
    // The alerts DESIGN asks for: breaker, budget, shedding, latency, reloads, panic mode.
    for metric in [
        m::CIRCUIT_STATE,
        m::RETRY_BUDGET_EXHAUSTED_TOTAL,
        m::SHED_TOTAL,
        &format!("{}_bucket", m::REQUEST_DURATION_SECONDS),
        "weir_config_reloads_total",
        "weir_panic_mode",
    ] {
        assert!(tokens.contains(metric), "rules.yaml: no alert on {metric}");
    }
}

#[test]
fn prometheus_rules_pass_promtool() {
    let path = root().join("deploy/prometheus/rules.yaml");
    // promtool comes with Debian's `prometheus` package.
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool rejects rules.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// === Grafana dashboard ===

/// Every panel, rows' nested panels included.
fn panels(list: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for p in list.as_array().map_or(&[][..], Vec::as_slice) {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// Every string in a JSON value.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let path = root().join("deploy/grafana/weir.json");
    let dash: serde_json::Value = serde_json::from_str(&read(&path)).expect("weir.json is JSON");
    let exported = Exported::read();
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    let mut exprs = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "weir.json: a panel has no title");
        assert!(ids.insert(p["id"].as_u64().unwrap()), "weir.json: id twice");
        if p["type"] == "row" {
            continue;
        }
        graphs += 1;
        let targets = p["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(
            !targets.is_empty(),
            "weir.json: panel {title} has no targets"
        );
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            let found = weir_tokens(expr);
            assert!(
                !found.is_empty(),
                "weir.json: {title}: {expr:?} names no weir metric"
            );
            exprs.extend(found);
        }
    }
    assert!(graphs >= 10, "weir.json: only {graphs} panels");
    // Every string (queries, template variables, descriptions) names known metrics only.
    let mut texts = Vec::new();
    strings(&dash, &mut texts);
    let tokens: BTreeSet<String> = texts.iter().flat_map(|s| weir_tokens(s)).collect();
    exported.assert_known(&tokens, "weir.json");
    // The panels DESIGN §4 calls for.
    for metric in [
        m::REQUESTS_TOTAL,
        &format!("{}_bucket", m::REQUEST_DURATION_SECONDS),
        m::UPSTREAM_ATTEMPTS_TOTAL,
        m::RETRIES_TOTAL,
        m::RETRY_BUDGET_EXHAUSTED_TOTAL,
        m::RETRY_BUDGET_REMAINING,
        m::CIRCUIT_STATE,
        m::SHED_TOTAL,
        m::IN_FLIGHT,
        m::CONCURRENCY_LIMIT,
        m::RATE_LIMITED_TOTAL,
        m::DOWNSTREAM_CONNECTIONS,
    ] {
        assert!(
            exprs.contains(metric),
            "weir.json: no panel queries {metric}"
        );
    }
}
