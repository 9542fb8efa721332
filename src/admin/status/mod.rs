//! `/status` (HTML) and `/status.json`: what an engineer on call wants to see at a glance —
//! routes, upstreams, and per upstream its endpoints, the breaker state and time in it,
//! in-flight requests, the concurrency limit, the queue, the retry budget left, the
//! observed median latency, and the gRPC error ratio (calls whose code is one of the
//! upstream's `grpc.failure_codes`, since the config was loaded). This module owns the [`StatusSnapshot`] and [`collect`]s it;
//! [`json`] and [`html`] render it.
//!
//! Position: admin port, off the request path; reads the policies' handles of the live
//! generation once per page and never writes. Config: none. Metrics: none (the same facts
//! are gauges).
//!
//! [`collect`]: StatusSnapshot::collect

mod html;
mod json;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::RouteAction;
use crate::generation::Generation;
use crate::http::grpc::Code;
use crate::resilience::breaker::BreakerStatus;
use crate::resilience::shed::ShedStatus;
use crate::route::Route;
pub(crate) use crate::upstream::endpoints::EndpointView;

pub(crate) use html::html;
pub(crate) use json::json;

/// A read-only picture of one generation, taken once by [`StatusSnapshot::collect`] and
/// rendered by [`json`] and [`html`]; later changes to the live state do not show in it.
#[derive(Clone, Debug)]
pub(crate) struct StatusSnapshot {
    /// Weir's version (`CARGO_PKG_VERSION`).
    pub version: &'static str,
    /// Wall-clock time the snapshot was taken.
    pub taken_at: SystemTime,
    /// The admin port's configured address (`admin.listen`).
    pub admin: SocketAddr,
    /// The downstream listeners, in config order.
    pub listeners: Vec<ListenerView>,
    /// The routes, in match order.
    pub routes: Vec<RouteView>,
    /// The upstreams, in config order.
    pub upstreams: Vec<UpstreamView>,
}

/// One downstream listener as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListenerView {
    /// The listener's name.
    pub name: Arc<str>,
    /// The configured address (port 0 when the system picks it).
    pub listen: SocketAddr,
    /// Whether the listener terminates TLS.
    pub tls: bool,
}

/// One route as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteView {
    /// The route's name.
    pub name: Arc<str>,
    /// Its priority (`critical`, `default` or `sheddable`).
    pub priority: &'static str,
    /// Its total deadline (`timeout`).
    pub deadline: Duration,
    /// What serves it: upstreams with their weights, or a direct response.
    pub targets: Vec<TargetView>,
    /// Whether the route has a rate limit.
    pub rate_limited: bool,
}

/// One target of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetView {
    /// An upstream and its split weight (1 for a route with a single upstream).
    Upstream {
        /// The upstream's name.
        name: Arc<str>,
        /// Its weight in the split.
        weight: u32,
    },
    /// A direct response with this status code.
    Respond(u16),
}

/// One upstream: its endpoints and the state of its policies.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamView {
    /// The upstream's name.
    pub name: Arc<str>,
    /// The configured balancer (`p2c`, `round_robin`, `least_request` or `hash`).
    pub balance: &'static str,
    /// The name resolved for endpoints (`dns`); `None` for a static endpoint list.
    pub discovery: Option<String>,
    /// Whether every endpoint is unhealthy and traffic fails open to all of them.
    pub panic_mode: bool,
    /// The endpoints, in set order.
    pub endpoints: Vec<EndpointView>,
    /// The circuit breaker.
    pub breaker: BreakerStatus,
    /// Load shedding.
    pub shed: ShedStatus,
    /// Retries the budget would allow now (0 when spent).
    pub retry_budget_remaining: u64,
    /// Median try latency of the last 10 to 20 seconds; `None` before any timed try.
    pub median_latency: Option<Duration>,
    /// Its gRPC calls since the config was loaded.
    pub grpc: GrpcView,
    /// Its hedging, when it hedges: the configured `after` (`"p95"`, `"50ms"`) and the delay
    /// in force (`None` while too few tries were seen for a percentile).
    pub hedge: Option<(String, Option<Duration>)>,
}

/// The gRPC calls of an upstream, summed over the routes that send to it, since the config
/// generation was built: every answer its clients got, weir's own errors included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GrpcView {
    /// Calls answered.
    pub calls: u64,
    /// Those whose code is one of the upstream's `grpc.failure_codes`.
    pub failures: u64,
}

impl GrpcView {
    /// Failures over calls; `None` before any call.
    pub(crate) fn error_ratio(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.failures as f64 / self.calls as f64)
    }
}

impl StatusSnapshot {
    /// Reads `generation` once: its config and every upstream's policy handles.
    pub(crate) fn collect(generation: &Generation) -> Self {
        let config = &generation.config;
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerView {
                name: l.name.clone(),
                listen: l.listen,
                tls: l.tls.is_some(),
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteView {
                name: r.name.clone(),
                priority: r.priority.as_str(),
                deadline: r.timeout,
                targets: match &r.action {
                    RouteAction::Upstream(u) => vec![TargetView::Upstream {
                        name: u.clone(),
                        weight: 1,
                    }],
                    RouteAction::Split(split) => split
                        .iter()
                        .map(|t| TargetView::Upstream {
                            name: t.upstream.clone(),
                            weight: t.weight,
                        })
                        .collect(),
                    RouteAction::Respond(resp) => vec![TargetView::Respond(resp.status.as_u16())],
                },
                rate_limited: r.rate_limit.is_some(),
            })
            .collect();
        let upstreams = generation
            .upstreams
            .iter()
            .map(|u| {
                let cfg = config.upstreams.iter().find(|c| c.name == u.name);
                let (endpoints, panic_mode) = u.endpoints.views();
                let failures = cfg.map(|c| c.grpc.failures()).unwrap_or_default();
                let mut grpc = GrpcView::default();
                let targets = generation.router.routes().flat_map(Route::targets);
                for t in targets.filter(|t| !t.direct && *t.metrics.upstream() == u.name) {
                    for (code, n) in Code::ALL.into_iter().zip(t.metrics.grpc_tally()) {
                        grpc.calls += n;
                        if failures.contains(code) {
                            grpc.failures += n;
                        }
                    }
                }
                UpstreamView {
                    name: u.name.clone(),
                    balance: cfg.map_or("p2c", |c| c.balance.as_str()),
                    discovery: cfg.and_then(|c| c.dns.as_ref()).map(ToString::to_string),
                    panic_mode,
                    endpoints,
                    breaker: u.breaker.status(),
                    shed: u.shed.status(),
                    retry_budget_remaining: u.retry.budget_remaining(),
                    median_latency: u.retry.median_latency(),
                    grpc,
                    hedge: u
                        .retry
                        .hedge()
                        .map(|(after, delay)| (after.render(), delay)),
                }
            })
            .collect();
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION"),
            taken_at: SystemTime::now(),
            admin: config.admin.listen,
            listeners,
            routes,
            upstreams,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    pub(super) const TWO_UPSTREAMS: &str = r#"
[[routes]]
name = "api"
upstream = "backend"
[[routes]]
name = "canary"
split = [{ upstream = "backend", weight = 9 }, { upstream = "v2", weight = 1 }]
[upstreams."backend"]
endpoints = ["127.0.0.1:1"]
[upstreams.v2]
endpoints = ["127.0.0.1:2", "127.0.0.1:3", "localhost:4"]
shed = { mode = "dry_run", adaptive = true }
"#;

    /// What `f` makes of a generation built from `toml`.
    fn with_generation<T>(toml: &str, f: impl FnOnce(&Generation) -> T) -> T {
        let cfg = Config::from_toml(toml, "t.toml").unwrap();
        let metrics = Metrics::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let generation = Generation::build(Arc::new(cfg), &metrics).unwrap();
        f(&generation)
    }

    /// The snapshot of a generation built from `toml`.
    pub(super) fn snapshot(toml: &str) -> StatusSnapshot {
        with_generation(toml, StatusSnapshot::collect)
    }

    /// The view of upstream `name` in `s`, to change before rendering.
    pub(super) fn upstream<'a>(s: &'a mut StatusSnapshot, name: &str) -> &'a mut UpstreamView {
        s.upstreams.iter_mut().find(|u| &*u.name == name).unwrap()
    }

    #[test]
    fn the_grpc_error_ratio_sums_the_routes_of_an_upstream_by_its_failure_codes() {
        let toml = format!("{TWO_UPSTREAMS}[upstreams.backend.grpc]\nfailure_codes = [14]\n");
        let ok = http::StatusCode::OK;
        let s = with_generation(&toml, |generation| {
            for t in generation.router.routes().flat_map(Route::targets) {
                // Per (route, upstream): 3 calls, UNAVAILABLE, INTERNAL and OK, and a plain
                // request that is no gRPC call.
                for code in [Code::Unavailable, Code::Internal, Code::Ok] {
                    t.metrics.record(ok, "upstream", Some(code), 0.001);
                }
                t.metrics.record(ok, "upstream", None, 0.001);
            }
            StatusSnapshot::collect(generation)
        });
        let view = |name: &str| s.upstreams.iter().find(|u| &*u.name == name).unwrap().grpc;
        // backend: two routes; only UNAVAILABLE is a failure there.
        assert_eq!(
            view("backend"),
            GrpcView {
                calls: 6,
                failures: 2
            }
        );
        // v2: one route, the default failure codes (UNAVAILABLE and INTERNAL among them).
        assert_eq!(
            view("v2"),
            GrpcView {
                calls: 3,
                failures: 2
            }
        );
        let doc: serde_json::Value = serde_json::from_slice(&json(&s)).unwrap();
        let v2 = doc["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "v2");
        let ratio = v2.unwrap()["grpc"]["error_ratio"].as_f64().unwrap();
        assert_eq!(ratio, 0.667, "JSON floats carry 3 decimals");
        assert!(html(&s).contains("66.7 % of 3"));
    }

    #[test]
    fn a_hedged_upstream_shows_its_delay_in_force() {
        let toml = format!("{TWO_UPSTREAMS}[upstreams.v2.hedge]\nafter = \"50ms\"\n");
        let s = snapshot(&toml);
        let doc: serde_json::Value = serde_json::from_slice(&json(&s)).unwrap();
        let ups = doc["upstreams"].as_array().unwrap();
        let v2 = ups.iter().find(|u| u["name"] == "v2").unwrap();
        assert_eq!(v2["hedge"]["after"], "50ms");
        assert_eq!(v2["hedge"]["delay_ms"], 50.0);
        let backend = ups.iter().find(|u| u["name"] == "backend").unwrap();
        assert_eq!(backend["hedge"], serde_json::Value::Null);
        assert!(html(&s).contains("after <b>50ms</b> &middot; delay in force <b>50ms</b>"));
        // A percentile waits for enough tries.
        let toml = format!("{TWO_UPSTREAMS}[upstreams.v2.hedge]\n");
        let s = snapshot(&toml);
        let doc: serde_json::Value = serde_json::from_slice(&json(&s)).unwrap();
        let v2 = &doc["upstreams"].as_array().unwrap()[1];
        assert_eq!(v2["hedge"]["after"], "p95");
        assert_eq!(v2["hedge"]["delay_ms"], serde_json::Value::Null);
    }

    #[test]
    fn status_names_every_route_and_upstream_with_its_policies() {
        let s = snapshot(TWO_UPSTREAMS);
        let doc: serde_json::Value = serde_json::from_slice(&json(&s)).unwrap();
        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["routes"][0]["name"], "api");
        assert_eq!(doc["routes"][1]["targets"][1]["weight"], 1);
        let ups = doc["upstreams"].as_array().unwrap();
        assert_eq!(ups.len(), 2);
        let backend = ups.iter().find(|u| u["name"] == "backend").unwrap();
        assert_eq!(backend["balance"], "p2c");
        assert_eq!(backend["discovery"], serde_json::Value::Null);
        assert_eq!(backend["panic_mode"], false);
        assert_eq!(backend["breaker"]["state"], "closed");
        assert_eq!(backend["shed"]["in_flight"], 0);
        assert_eq!(backend["shed"]["limit"], 1024);
        assert!(backend["retry"]["budget_remaining"].as_u64().unwrap() > 0);
        let v2 = ups.iter().find(|u| u["name"] == "v2").unwrap();
        assert_eq!(v2["shed"]["mode"], "dry_run");
        assert_eq!(v2["shed"]["adaptive"], true);
        let e = &v2["endpoints"][0];
        assert_eq!(e["address"], "127.0.0.1:2");
        assert_eq!(e["serving"], true);
        assert_eq!(e["health"], "unchecked");
        assert_eq!(e["ejected_for_seconds"], serde_json::Value::Null);
        assert_eq!(e["ejections"], 0);
        assert_eq!(e["ramp_share"], serde_json::Value::Null);
        // Before any response, the prior latency (30 ms), decaying.
        let ewma = e["ewma_ms"].as_f64().unwrap();
        assert!(ewma > 29.0 && ewma <= 30.0, "{ewma}");
        assert_eq!(e["in_flight"], 0);
        assert_eq!(e["penalized_for_seconds"], serde_json::Value::Null);
        assert_eq!(v2["endpoints"].as_array().unwrap().len(), 3);
    }
}
