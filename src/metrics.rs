//! Metric names (the DESIGN §4 contract), their descriptions and buckets, the instance-owned
//! Prometheus recorder, and the per-route handle structs resolved once per generation.
//!
//! Position: a leaf beside [`crate::http`]: every stage records through it, and nothing on the
//! request path imports [`crate::admin`], which only renders what is recorded here. Labels come
//! from config names and closed sets only, never request data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::http::grpc::Code;
use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// `weir_requests_total{route,upstream,status,reason,grpc_code}`: requests answered;
/// `grpc_code` is a gRPC call's status name (`OK` … `UNAUTHENTICATED`), empty for other
/// requests.
pub const REQUESTS_TOTAL: &str = "weir_requests_total";
/// `weir_hedges_total{upstream,result}`: hedged tries, `won` or `lost` once sent, or not sent:
/// `skipped_budget` (the retry budget was spent), `skipped_deadline` (the deadline left
/// could not hold one).
pub const HEDGES_TOTAL: &str = "weir_hedges_total";
/// `weir_grpc_responses_total{route,upstream,code}`: gRPC calls answered, by status name.
pub const GRPC_RESPONSES_TOTAL: &str = "weir_grpc_responses_total";
/// `weir_request_duration_seconds{route,upstream}`: time from request head to the end of the
/// response body.
pub const REQUEST_DURATION_SECONDS: &str = "weir_request_duration_seconds";
/// `weir_upstream_attempts_total{upstream,outcome}`: tries sent to an upstream.
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "weir_upstream_attempts_total";
/// `weir_in_flight{upstream}`: requests admitted by the upstream's load shedding and not yet
/// answered (every try and backoff included).
pub const IN_FLIGHT: &str = "weir_in_flight";
/// `weir_retries_total{route,upstream,reason}`: retries started (after budget and deadline
/// checks); `reason` is what the failed try ended with.
pub const RETRIES_TOTAL: &str = "weir_retries_total";
/// `weir_retry_budget_exhausted_total{route,upstream}`: retries refused by the budget.
pub const RETRY_BUDGET_EXHAUSTED_TOTAL: &str = "weir_retry_budget_exhausted_total";
/// `weir_retry_budget_remaining{upstream}`: retries the budget would allow now.
pub const RETRY_BUDGET_REMAINING: &str = "weir_retry_budget_remaining";
/// `weir_circuit_state{upstream}`: 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_STATE: &str = "weir_circuit_state";
/// `weir_circuit_transitions_total{upstream,to,reason}`: breaker state changes.
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "weir_circuit_transitions_total";
/// `weir_shed_total{upstream,reason}`: requests refused by load shedding.
pub const SHED_TOTAL: &str = "weir_shed_total";
/// `weir_concurrency_limit{upstream}`: the shedding limit in force (adaptive or fixed).
pub const CONCURRENCY_LIMIT: &str = "weir_concurrency_limit";
/// `weir_dry_run_rejections_total{upstream,policy}`: what a dry-run policy would have refused.
pub const DRY_RUN_REJECTIONS_TOTAL: &str = "weir_dry_run_rejections_total";
/// `weir_rate_limited_total{route}`: requests refused by the route's rate limit.
pub const RATE_LIMITED_TOTAL: &str = "weir_rate_limited_total";
/// `weir_faults_total{route,kind}`: faults injected by a route's `fault` settings or asked for
/// by header; `kind` is `abort`, `delay`, `reset`, `truncate` or `slow_body`.
pub const FAULTS_TOTAL: &str = "weir_faults_total";
/// `weir_endpoint_healthy{upstream,endpoint}`: 1 while the endpoint may serve (neither ejected
/// nor failing its active checks), else 0.
pub const ENDPOINT_HEALTHY: &str = "weir_endpoint_healthy";
/// `weir_endpoint_ejections_total{upstream}`: endpoints ejected by outlier detection.
pub const ENDPOINT_EJECTIONS_TOTAL: &str = "weir_endpoint_ejections_total";
/// `weir_panic_mode{upstream}`: 1 while every endpoint is down and all serve anyway.
pub const PANIC_MODE: &str = "weir_panic_mode";
/// `weir_drain_requests_total{result}`: requests that ended during a drain (`completed`) or
/// were still in flight when it ended (`cut`).
pub const DRAIN_REQUESTS_TOTAL: &str = "weir_drain_requests_total";
/// `weir_config_reloads_total{result}`: config reloads, `success` or `error`.
pub const CONFIG_RELOADS_TOTAL: &str = "weir_config_reloads_total";
/// `weir_dns_resolutions_total{upstream,result}`: DNS resolutions of an upstream's `dns` name,
/// `ok` (the answer became its endpoints) or `error` (failed, empty or timed out; the last
/// endpoints stay).
pub const DNS_RESOLUTIONS_TOTAL: &str = "weir_dns_resolutions_total";
/// `weir_downstream_connections{listener}`: open downstream connections.
pub const DOWNSTREAM_CONNECTIONS: &str = "weir_downstream_connections";
/// `weir_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "weir_build_info";

/// Buckets of `weir_request_duration_seconds`, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// `reason` label of a response that came from the upstream.
pub const REASON_UPSTREAM: &str = "upstream";
/// `reason` label of a response a direct-response route produced.
pub const REASON_DIRECT: &str = "direct";
/// `reason` label of a response whose upstream body broke off after the head was sent (the
/// same token as a reset before the head).
pub const REASON_UPSTREAM_BODY: &str = "upstream-reset";

static METADATA: Metadata<'static> = Metadata::new("weir", Level::INFO, Some("weir"));

/// The metrics of one weir instance: its own recorder, so that several weirs in one process
/// (tests) do not mix their series. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A new recorder with weir's buckets and descriptions, and `weir_build_info` set.
    pub fn new() -> Result<Self, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
                DURATION_BUCKETS,
            )?
            .build_recorder();
        let handle = recorder.handle();
        let metrics = Self {
            inner: Arc::new(Inner { recorder, handle }),
        };
        metrics.describe();
        metrics
            .gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION").into())])
            .set(1.0);
        Ok(metrics)
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Drains histogram samples into their buckets; run on a timer (the admin task does).
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// A counter handle; resolve once, increment per request.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, Arc<str>)]) -> Counter {
        self.inner
            .recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    /// A gauge handle.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, Arc<str>)]) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&key(name, labels), &METADATA)
    }

    /// A histogram handle.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, Arc<str>)]) -> Histogram {
        self.inner
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    fn describe(&self) {
        let r = &self.inner.recorder;
        let d = |name: &'static str| KeyName::from_const_str(name);
        r.describe_counter(
            d(REQUESTS_TOTAL),
            None,
            "Requests answered, by outcome.".into(),
        );
        r.describe_histogram(
            d(REQUEST_DURATION_SECONDS),
            Some(Unit::Seconds),
            "Time from the request head to the end of the response body.".into(),
        );
        r.describe_counter(
            d(UPSTREAM_ATTEMPTS_TOTAL),
            None,
            "Tries sent to an upstream, by outcome.".into(),
        );
        r.describe_gauge(
            d(IN_FLIGHT),
            None,
            "Requests being forwarded to an upstream.".into(),
        );
        let counters: [(&'static str, &'static str); 12] = [
            (
                HEDGES_TOTAL,
                "Hedged tries: won or lost once sent, or skipped (budget, deadline).",
            ),
            (
                GRPC_RESPONSES_TOTAL,
                "gRPC calls answered, by gRPC status (from the head or the trailers).",
            ),
            (
                CONFIG_RELOADS_TOTAL,
                "Config reloads; an error keeps the running config.",
            ),
            (
                DRAIN_REQUESTS_TOTAL,
                "Requests that ended during a drain, or were cut when it ended.",
            ),
            (
                RETRIES_TOTAL,
                "Retries started, by the outcome of the failed try.",
            ),
            (
                RETRY_BUDGET_EXHAUSTED_TOTAL,
                "Retries the retry budget refused; the failed try's answer went back.",
            ),
            (
                CIRCUIT_TRANSITIONS_TOTAL,
                "Circuit breaker state changes, by new state and reason.",
            ),
            (SHED_TOTAL, "Requests refused by load shedding, by reason."),
            (
                DRY_RUN_REJECTIONS_TOTAL,
                "Requests a policy in dry-run mode would have refused.",
            ),
            (
                RATE_LIMITED_TOTAL,
                "Requests refused by the route's rate limit.",
            ),
            (
                ENDPOINT_EJECTIONS_TOTAL,
                "Endpoints ejected by outlier detection.",
            ),
            (
                DNS_RESOLUTIONS_TOTAL,
                "DNS resolutions of an upstream's name; an error keeps the last endpoints.",
            ),
        ];
        for (name, help) in counters {
            r.describe_counter(d(name), None, help.into());
        }
        r.describe_counter(
            d(FAULTS_TOTAL),
            None,
            "Faults injected into a route's requests, by kind.".into(),
        );
        let gauges: [(&'static str, &'static str); 5] = [
            (
                ENDPOINT_HEALTHY,
                "1 while the endpoint may serve (not ejected, not failing its checks).",
            ),
            (
                PANIC_MODE,
                "1 while every endpoint of the upstream is down and all serve anyway.",
            ),
            (
                RETRY_BUDGET_REMAINING,
                "Retries the upstream's retry budget would allow now.",
            ),
            (
                CIRCUIT_STATE,
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ),
            (
                CONCURRENCY_LIMIT,
                "Concurrency limit of the upstream's load shedding (adaptive or fixed).",
            ),
        ];
        for (name, help) in gauges {
            r.describe_gauge(d(name), None, help.into());
        }
        r.describe_gauge(
            d(DOWNSTREAM_CONNECTIONS),
            None,
            "Open downstream connections per listener.".into(),
        );
        r.describe_gauge(d(BUILD_INFO), None, "Build information; always 1.".into());
    }
}

fn key(name: &'static str, labels: &[(&'static str, Arc<str>)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.clone()))
        .collect();
    Key::from_parts(name, labels)
}

/// The request counter and latency histogram of one (route, upstream) pair.
///
/// `weir_requests_total` also carries `status` and `reason`; their handles are resolved on
/// first use and kept in a copy-on-write list, so the request path takes no lock.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    inner: Arc<RouteInner>,
}

#[derive(Debug)]
struct RouteInner {
    metrics: Metrics,
    route: Arc<str>,
    upstream: Arc<str>,
    duration: Histogram,
    /// Few distinct (status, reason, gRPC code) keys per route: a linear scan beats hashing.
    requests: ArcSwap<Vec<(RequestKey, Counter)>>,
    /// `weir_grpc_responses_total` per code, resolved on first use, so a route that serves no
    /// gRPC has no such series.
    grpc: [OnceLock<Counter>; 17],
    /// gRPC calls answered per code since these handles were built (the config generation),
    /// for the status page.
    grpc_tally: [AtomicU64; 17],
}

/// What one `weir_requests_total` series is keyed by.
type RequestKey = (u16, &'static str, Option<Code>);

impl RouteMetrics {
    /// Handles for `route` and `upstream` (empty when the request reached none).
    pub fn new(metrics: &Metrics, route: Arc<str>, upstream: Arc<str>) -> Self {
        let duration = metrics.histogram(
            REQUEST_DURATION_SECONDS,
            &[("route", route.clone()), ("upstream", upstream.clone())],
        );
        Self {
            inner: Arc::new(RouteInner {
                metrics: metrics.clone(),
                route,
                upstream,
                duration,
                requests: ArcSwap::default(),
                grpc: Default::default(),
                grpc_tally: Default::default(),
            }),
        }
    }

    /// The route label of these handles.
    pub fn route(&self) -> &Arc<str> {
        &self.inner.route
    }

    /// The upstream label of these handles.
    pub fn upstream(&self) -> &Arc<str> {
        &self.inner.upstream
    }

    /// gRPC calls answered per code (indexed by number) since these handles were built.
    pub fn grpc_tally(&self) -> [u64; 17] {
        self.inner
            .grpc_tally
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    /// Counts one answered request (a gRPC call with its `grpc` code) and records its
    /// duration.
    pub fn record(
        &self,
        status: http::StatusCode,
        reason: &'static str,
        grpc: Option<Code>,
        seconds: f64,
    ) {
        self.inner.duration.record(seconds);
        if let Some(code) = grpc {
            self.record_grpc(code);
        }
        let key = (status.as_u16(), reason, grpc);
        if let Some((_, counter)) = self.inner.requests.load().iter().find(|(k, _)| *k == key) {
            counter.increment(1);
            return;
        }
        let counter = self.inner.metrics.counter(
            REQUESTS_TOTAL,
            &[
                ("route", self.inner.route.clone()),
                ("upstream", self.inner.upstream.clone()),
                ("status", Arc::from(status.as_str())),
                ("reason", Arc::from(reason)),
                ("grpc_code", Arc::from(grpc.map_or("", Code::as_str))),
            ],
        );
        counter.increment(1);
        self.inner.requests.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(k, _)| *k == key) {
                list.push((key, counter.clone()));
            }
            list
        });
    }

    fn record_grpc(&self, code: Code) {
        let i = usize::from(code.as_u8());
        if let Some(n) = self.inner.grpc_tally.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = self.inner.grpc.get(i) {
            slot.get_or_init(|| {
                self.inner.metrics.counter(
                    GRPC_RESPONSES_TOTAL,
                    &[
                        ("route", self.inner.route.clone()),
                        ("upstream", self.inner.upstream.clone()),
                        ("code", Arc::from(code.as_str())),
                    ],
                )
            })
            .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_a_real_histogram() {
        let m = Metrics::new().unwrap();
        let rm = RouteMetrics::new(&m, "api".into(), "backend".into());
        rm.record(http::StatusCode::OK, REASON_UPSTREAM, None, 0.003);
        rm.record(http::StatusCode::OK, REASON_UPSTREAM, None, 0.004);
        rm.record(
            http::StatusCode::BAD_GATEWAY,
            "upstream-connect",
            None,
            0.001,
        );
        rm.record(
            http::StatusCode::OK,
            REASON_UPSTREAM,
            Some(Code::Unavailable),
            0.001,
        );
        m.run_upkeep();
        let text = m.render();
        assert!(
            text.contains(
                "weir_requests_total{route=\"api\",upstream=\"backend\",status=\"200\",reason=\"upstream\",grpc_code=\"\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("reason=\"upstream-connect\",grpc_code=\"\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("reason=\"upstream\",grpc_code=\"UNAVAILABLE\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "weir_grpc_responses_total{route=\"api\",upstream=\"backend\",code=\"UNAVAILABLE\"} 1"
            ),
            "{text}"
        );
        assert_eq!(rm.grpc_tally()[14], 1);
        assert!(
            text.contains("weir_request_duration_seconds_bucket{route=\"api\",upstream=\"backend\",le=\"0.005\"} 4"),
            "{text}"
        );
        assert!(text.contains("weir_build_info{version=\""), "{text}");
    }

    #[test]
    fn instances_do_not_share_series() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.counter(UPSTREAM_ATTEMPTS_TOTAL, &[("upstream", "x".into())])
            .increment(5);
        assert!(
            a.render()
                .contains("weir_upstream_attempts_total{upstream=\"x\"} 5")
        );
        assert!(!b.render().contains("weir_upstream_attempts_total"));
    }
}
