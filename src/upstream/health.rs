//! Active health checks (`[upstreams.<name>.health]`): every `interval` (± 10 % jitter, so
//! many weirs do not check in step) each endpoint gets `GET path` through its own connection
//! handle, bounded by `timeout`. A 2xx passes; anything else, an error or the timeout fails.
//! `unhealthy_threshold` failures in a row take the endpoint out; `healthy_threshold` passes
//! in a row bring it back, ramping (see [`crate::upstream::endpoints`]). Endpoints start
//! healthy and serve until the checks say otherwise.
//!
//! Position: a background task per upstream; it writes the verdict atomics of the endpoint
//! set and never touches the request path. It ends when the upstream is gone. Config:
//! `upstreams.<name>.health`. Metrics: `weir_endpoint_healthy{upstream,endpoint}` (set by the
//! endpoint set).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use http::header::USER_AGENT;
use http::{HeaderValue, Method};
use http_body_util::BodyExt;
use rand::Rng;

use crate::http::{Body, Request};
use crate::upstream::endpoints::{Endpoint, WeakEndpointSet};

/// Active health checks of an upstream (`upstreams.NAME.health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Path of the HTTP GET probe; default `/healthz`.
    pub path: String,
    /// Time between probes of one endpoint; default 5s.
    pub interval: Duration,
    /// Timeout of one probe; default 1s.
    pub timeout: Duration,
    /// Consecutive successes that make an endpoint healthy; default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy; default 3.
    pub unhealthy_threshold: u32,
    /// Whether the probe is the standard gRPC health check (`grpc.health.v1.Health/Check`)
    /// instead of `GET path`; default false.
    pub grpc: bool,
    /// The service the gRPC check asks about; default `""`, the server as a whole.
    pub grpc_service: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            path: String::from("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            grpc: false,
            grpc_service: String::new(),
        }
    }
}

/// The most of a check's response body read (so the connection can be reused).
const MAX_BODY: usize = 64 * 1024;

/// Starts the checks of an upstream's endpoint set; the task ends with the set.
pub(crate) fn spawn(set: WeakEndpointSet, settings: Settings) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(run(set, settings));
    }
}

/// Consecutive passes and failures of one endpoint.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

async fn run(set: WeakEndpointSet, s: Settings) {
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    let Some(stop) = set.upgrade().map(|s| s.stopped()) else {
        return;
    };
    loop {
        let Some(live) = set.upgrade() else { return };
        let snap = live.load_full();
        let results = join_all(snap.endpoints().iter().map(|e| check(e, &s))).await;
        let mut kept = HashMap::with_capacity(results.len());
        for (e, passed) in snap.endpoints().iter().zip(results) {
            let key = e.addr().to_string();
            let mut st = streaks.get(&key).copied().unwrap_or_default();
            if passed {
                st.passes = st.passes.saturating_add(1);
                st.failures = 0;
            } else {
                st.failures = st.failures.saturating_add(1);
                st.passes = 0;
            }
            let failing = e.check_failing();
            if !failing && st.failures >= s.unhealthy_threshold.max(1) {
                if e.set_check_failing(true) {
                    tracing::warn!(upstream = %live.name(), endpoint = %e.addr(), "health checks failing: endpoint out");
                    live.check_changed(e, true);
                }
            } else if failing
                && st.passes >= s.healthy_threshold.max(1)
                && e.set_check_failing(false)
            {
                tracing::info!(upstream = %live.name(), endpoint = %e.addr(), "health checks passing: endpoint back");
                live.check_changed(e, false);
            }
            kept.insert(key, st);
        }
        streaks = kept;
        drop(snap);
        drop(live);
        if stop
            .run_until_cancelled(tokio::time::sleep(jittered(s.interval)))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// One check of endpoint `e`: true when it answered 2xx within the timeout. The endpoint's
/// connection sets `Host` to its address.
async fn check(e: &Arc<Endpoint>, s: &Settings) -> bool {
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    match s.path.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return false,
    }
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("weir-health-check"));
    let exchange = async {
        let resp = e.conn().send(req).ok()?.await.ok()?;
        let ok = resp.status().is_success();
        // Read a small body to its end so the connection goes back to the pool.
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
        let _ = body.collect().await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(s.timeout, exchange).await,
        Ok(Some(true))
    )
}

/// `interval` ± 10 %.
fn jittered(interval: Duration) -> Duration {
    let f = rand::rng().random_range(0.9..=1.1);
    interval.mul_f64(f)
}
