//! Retries of one upstream: only when safe, from a replayable body, after backoff, within a budget.
//! Position: upstream stack, shed → breaker → RETRY → per-try timeout → forward.
//! Config: `upstreams.<name>.retry.*`. Metrics: `weir_retries_total`,
//! `weir_retry_budget_exhausted_total`, `weir_retry_budget_remaining`.
//!
//! A retry is scheduled only when all of these hold, checked in this order: the policy calls
//! for one (`policy.rs`); retries are left (`max_retries`); the upstream's `Retry-After`, if any,
//! fits under `backoff_cap` (beyond it the upstream asked for more patience than this policy
//! has, and its answer goes back); the route's deadline can hold the backoff plus the
//! upstream's median try latency; and the budget grants it. The budget is spent when the retry
//! is scheduled, before its backoff sleep, so retries waiting in backoff count against it.
//!
//! The layer and service live here, with the decision after each try; the futures that run
//! the tries are in `future.rs`, what a retry re-sends in `template.rs` (head, headers, context)
//! and `replay.rs` (the body).

pub(crate) mod backoff;
mod budget;
mod future;
pub(crate) mod hedge;
mod latency;
mod policy;
mod replay;
mod template;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use tokio::time::Instant;
use tower::{Layer, Service};

pub(crate) use self::future::ResponseFuture;
use crate::error::ProxyError;
use crate::http::{Request, Response, retry_after};
use crate::metrics::{
    Metrics, RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL, RETRY_BUDGET_REMAINING,
};
use crate::resilience::grpc::Settings as GrpcSettings;
use backoff::Backoff;
use budget::Budget;
use latency::Latency;
use policy::{Policy, Retryable};
use template::Template;

/// Retry policy of an upstream (`upstreams.NAME.retry`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Most retries after the first try; default 2. 0 turns retries off.
    pub max_retries: u32,
    /// Response statuses that are retried; default 502, 503, 504.
    pub statuses: Vec<u16>,
    /// Whether any method carrying `Idempotency-Key` may be retried; default false.
    pub idempotency_key: bool,
    /// Largest body (bytes) buffered for replay; larger bodies are never retried. Default 64 KiB.
    pub max_body: u64,
    /// Base of the exponential backoff with full jitter; default 25ms.
    pub backoff_base: Duration,
    /// Cap of the backoff; default 1s.
    pub backoff_cap: Duration,
    /// Retries allowed as a fraction of requests in the budget window (0..=1); default 0.2.
    pub budget_ratio: f64,
    /// Retries per second always allowed, whatever the ratio; default 10.
    pub budget_min_per_sec: u32,
    /// Window over which the budget counts requests (1s..=60s); default 10s.
    pub budget_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_retries: 2,
            statuses: vec![502, 503, 504],
            idempotency_key: false,
            max_body: 65_536,
            backoff_base: Duration::from_millis(25),
            backoff_cap: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// Wraps a service in [`Retry`]. Clones (and every [`Retry`] they make) share one budget, one
/// latency estimate and one set of metric handles: build one per upstream and keep it for as
/// long as the upstream's retry settings are unchanged.
#[derive(Clone, Debug)]
pub(crate) struct RetryLayer {
    shared: Arc<Shared>,
}

/// Retries failed tries of the inner service (see the module docs and DESIGN §2 "Retries").
///
/// What it needs from the request: nothing; it reads
/// [`RequestContext`](crate::http::context::RequestContext) from the extensions when present
/// (the `route` label, the `deadline`) and sets its `last_endpoint` before the first try so the
/// leaf can avoid the endpoint that failed.
#[derive(Clone, Debug)]
pub(crate) struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A read-only view of a [`RetryLayer`]'s state, for the admin side and the gauge timer.
#[derive(Clone, Debug)]
pub struct RetryHandle {
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Arc<str>,
    max_retries: u32,
    max_body: u64,
    policy: Policy,
    backoff: Backoff,
    budget: Budget,
    latency: Latency,
    metrics: Metrics,
    budget_remaining: Gauge,
    /// Whether the leaf has several endpoints to choose from, so that remembering the one a try
    /// used (`RequestContext::last_endpoint`) can steer the next try elsewhere.
    endpoint_memo: bool,
    /// Hedged tries (`upstreams.<name>.hedge`); `None`: no hedging.
    hedging: Option<hedge::Hedging>,
    /// Counters per (route, what), resolved on first use. Few routes per upstream: a linear
    /// scan of a copy-on-write list, never a lock.
    counters: ArcSwap<Vec<(Arc<str>, Count, Counter)>>,
}

/// Which counter of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Count {
    Retry(Retryable),
    Exhausted,
}

// === impl RetryLayer ===

impl RetryLayer {
    /// The retry policy of `upstream` (its name labels the metrics). The budget starts now,
    /// with its floor at one second's worth of `budget_min_per_sec`.
    pub(crate) fn new(upstream: Arc<str>, settings: &Settings, metrics: &Metrics) -> Self {
        let now = Instant::now();
        let budget_remaining =
            metrics.gauge(RETRY_BUDGET_REMAINING, &[("upstream", upstream.clone())]);
        let shared = Shared {
            max_retries: settings.max_retries,
            max_body: settings.max_body,
            policy: Policy::new(settings),
            backoff: Backoff::new(settings.backoff_base, settings.backoff_cap),
            budget: Budget::new(
                settings.budget_ratio,
                settings.budget_min_per_sec,
                settings.budget_window,
                now,
            ),
            latency: Latency::new(now),
            metrics: metrics.clone(),
            budget_remaining,
            endpoint_memo: true,
            hedging: None,
            counters: ArcSwap::default(),
            upstream,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Whether tries should record their endpoint so the next one avoids it (default on). Turn
    /// it off for a leaf with one endpoint: it saves an allocation per request. Call it before
    /// the layer is cloned or used; later calls change nothing.
    pub(crate) fn with_endpoint_memo(mut self, on: bool) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.endpoint_memo = on;
        }
        self
    }

    /// Retries the gRPC calls whose trailers-only status is one of `grpc.retry_codes` (by
    /// default UNAVAILABLE).
    pub(crate) fn with_grpc(mut self, grpc: &GrpcSettings) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.policy.grpc_retried = grpc.retried();
        }
        self
    }

    /// Hedges the tries of requests that may be sent twice (`hedge`; `None`: no hedging),
    /// judged against the upstream's `breaker`.
    pub(crate) fn with_hedge(
        mut self,
        hedge: Option<&hedge::Settings>,
        breaker: Option<crate::resilience::breaker::BreakerHandle>,
        metrics: &Metrics,
    ) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.hedging =
                hedge.map(|h| hedge::Hedging::new(&shared.upstream, h, breaker, metrics));
        }
        self
    }

    /// A handle on this layer's budget and latency estimate.
    pub(crate) fn handle(&self) -> RetryHandle {
        RetryHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl RetryHandle ===

impl RetryHandle {
    /// Retries the upstream's budget would allow now (0 when spent).
    pub fn budget_remaining(&self) -> u64 {
        self.shared.budget.remaining(Instant::now())
    }

    /// The median try latency of the last 10 to 20 seconds; `None` before any try (and always
    /// when `max_retries = 0`, since tries are then not timed).
    pub fn median_latency(&self) -> Option<Duration> {
        self.shared.latency.median(Instant::now())
    }

    /// The upstream's hedging, when it hedges: its configured `after` and the delay in force
    /// (`None` while too few tries were seen for a percentile).
    pub fn hedge(&self) -> Option<(hedge::After, Option<Duration>)> {
        let s = &self.shared;
        s.hedging
            .as_ref()
            .map(|h| (h.after(), h.delay(&s.latency, Instant::now())))
    }

    /// Sets `weir_retry_budget_remaining{upstream}` to [`RetryHandle::budget_remaining`];
    /// call it on a timer.
    pub fn publish(&self) {
        // u64 → f64: exact below 2^53 retries, far beyond any budget.
        self.shared
            .budget_remaining
            .set(self.budget_remaining() as f64);
    }
}

// === impl Retry ===

impl<S> Service<Request> for Retry<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Asks the inner service (always ready below); each retry drives the readiness of its
        // own clone (`oneshot`).
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let hedging = self.shared.hedging.is_some();
        if self.shared.max_retries == 0 && !hedging {
            return ResponseFuture::direct(self.inner.call(req));
        }
        // A hedged upstream runs every request through the loop, which races its tries.
        if hedging || !http_body::Body::is_end_stream(req.body()) {
            return ResponseFuture::buffering(self.shared.clone(), self.inner.clone(), req);
        }
        ResponseFuture::first_inline(&self.shared, &mut self.inner, req)
    }
}

// === impl Shared ===

impl Shared {
    /// Records the try that began at `started` (the `n`th retry; 0 is the first try) and
    /// decides: `Some(delay)` to retry after `delay` (the budget is already charged), `None` to
    /// answer with `result`.
    fn after_try(
        &self,
        result: &Result<Response, ProxyError>,
        n: u32,
        t: &Template,
        started: Instant,
    ) -> Option<Duration> {
        let now = Instant::now();
        self.latency
            .record(now, now.saturating_duration_since(started));
        let grpc = t.context.as_ref().is_some_and(|c| c.grpc);
        let reason = self.policy.classify(result, t.may_resend, grpc)?;
        if n >= self.max_retries {
            return None;
        }
        let asked = match result {
            Ok(resp) => retry_after::delay(resp.headers()),
            Err(_) => None,
        };
        let Some(delay) = self.backoff.delay(n, asked) else {
            tracing::debug!(
                upstream = %self.upstream, attempt = n + 1, reason = reason.label(),
                retry_after = ?asked, "not retrying: Retry-After beyond the backoff cap"
            );
            return None;
        };
        if let Some(deadline) = t.context.as_ref().and_then(|c| c.deadline) {
            let median = self.latency.median(now).unwrap_or(Duration::ZERO);
            let left = deadline.saturating_duration_since(now);
            if left < delay.saturating_add(median) {
                tracing::debug!(
                    upstream = %self.upstream, attempt = n + 1, reason = reason.label(),
                    ?delay, ?median, ?left, "not retrying: the deadline cannot hold another try"
                );
                return None;
            }
        }
        if !self.budget.try_withdraw(now) {
            self.counter(t.route(), Count::Exhausted).increment(1);
            tracing::debug!(
                upstream = %self.upstream, attempt = n + 1, reason = reason.label(),
                "not retrying: retry budget exhausted"
            );
            return None;
        }
        self.counter(t.route(), Count::Retry(reason)).increment(1);
        tracing::debug!(
            upstream = %self.upstream, attempt = n + 1, reason = reason.label(), ?delay,
            "retrying"
        );
        Some(delay)
    }

    /// The counter `what` of `route` (absent: the empty label), resolved on first use.
    fn counter(&self, route: Option<&Arc<str>>, what: Count) -> Counter {
        let name = route.map_or("", |r| &**r);
        if let Some((_, _, c)) = self
            .counters
            .load()
            .iter()
            .find(|(r, w, _)| *w == what && **r == *name)
        {
            return c.clone();
        }
        let route: Arc<str> = route.cloned().unwrap_or_else(|| Arc::from(""));
        let mut labels = vec![
            ("route", route.clone()),
            ("upstream", self.upstream.clone()),
        ];
        let counter = match what {
            Count::Retry(reason) => {
                labels.push(("reason", Arc::from(reason.label())));
                self.metrics.counter(RETRIES_TOTAL, &labels)
            }
            Count::Exhausted => self.metrics.counter(RETRY_BUDGET_EXHAUSTED_TOTAL, &labels),
        };
        self.counters.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(|(r, w, _)| *w == what && **r == *name) {
                list.push((route.clone(), what, counter.clone()));
            }
            list
        });
        counter
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .field("max_retries", &self.max_retries)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;

    use futures_util::stream;
    use http::header::RETRY_AFTER;
    use http::{HeaderValue, Method, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::util::BoxCloneSyncService;
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::error::BoxError;
    use crate::http::context::{Priority, RequestContext};
    use crate::http::{Body, BodyTooLarge, IDEMPOTENCY_KEY};

    type Reply = Result<Response, ProxyError>;
    type Leaf = BoxCloneSyncService<Request, Response, ProxyError>;

    /// What the scripted leaf saw, call by call.
    #[derive(Clone, Default)]
    struct Seen {
        calls: Arc<AtomicUsize>,
        bodies: Arc<Mutex<Vec<Bytes>>>,
        endpoints: Arc<Mutex<Vec<Option<usize>>>>,
        at: Arc<Mutex<Vec<Instant>>>,
    }

    impl Seen {
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
        fn bodies(&self) -> Vec<Bytes> {
            self.bodies.lock().unwrap().clone()
        }
    }

    /// A leaf that reads the body, waits `delay`, then answers call `n` (from 0) with
    /// `script(n)`; it writes `n` into `last_endpoint` as the endpoint it used.
    fn scripted<F>(delay: Duration, script: F) -> (Leaf, Seen)
    where
        F: Fn(usize) -> Reply + Clone + Send + Sync + 'static,
    {
        let seen = Seen::default();
        let s = seen.clone();
        let svc = service_fn(move |req: Request| {
            let (seen, script) = (s.clone(), script.clone());
            async move {
                let n = seen.calls.fetch_add(1, Ordering::SeqCst);
                seen.at.lock().unwrap().push(Instant::now());
                let last = req
                    .extensions()
                    .get::<RequestContext>()
                    .and_then(|c| c.last_endpoint.clone());
                seen.endpoints
                    .lock()
                    .unwrap()
                    .push(last.as_ref().map(|a| a.load(Ordering::SeqCst)));
                if let Some(a) = last {
                    a.store(n, Ordering::SeqCst);
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.bodies.lock().unwrap().push(body);
                tokio::time::sleep(delay).await;
                script(n)
            }
        });
        (BoxCloneSyncService::new(svc), seen)
    }

    fn status(code: u16) -> Reply {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(r)
    }

    fn status_after(code: u16, retry_after: &'static str) -> Reply {
        let mut r = status(code)?;
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(retry_after));
        Ok(r)
    }

    fn io() -> BoxError {
        Box::new(std::io::Error::other("x"))
    }

    fn settings() -> Settings {
        Settings {
            backoff_base: Duration::ZERO,
            ..Settings::default()
        }
    }

    fn request(method: Method, body: Body) -> Request {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = "/x".parse().unwrap();
        let ctx = RequestContext::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Arc::from("api"),
            Priority::Default,
        );
        req.extensions_mut().insert(ctx);
        req
    }

    fn get() -> Request {
        request(Method::GET, Body::empty())
    }

    fn with_deadline(mut req: Request, deadline: Instant) -> Request {
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
            ctx.deadline = Some(deadline);
        }
        req
    }

    fn stack(settings: &Settings, leaf: Leaf) -> (Retry<Leaf>, RetryHandle, Metrics) {
        let metrics = Metrics::new().unwrap();
        let layer = RetryLayer::new(Arc::from("backend"), settings, &metrics);
        (layer.layer(leaf), layer.handle(), metrics)
    }

    /// A body of `chunks` with no size hint.
    fn streamed(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Body::boxed(StreamBody::new(stream::iter(frames)))
    }

    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    const RETRIED_STATUS: &str =
        "weir_retries_total{route=\"api\",upstream=\"backend\",reason=\"status\"}";
    const EXHAUSTED: &str = "weir_retry_budget_exhausted_total{route=\"api\",upstream=\"backend\"}";

    #[tokio::test(start_paused = true)]
    async fn get_is_retried_up_to_max_retries_then_the_last_answer_returns() {
        let (leaf, seen) = scripted(Duration::ZERO, |n| {
            let mut r = status(503)?;
            *r.body_mut() = Body::full(format!("try {n}"));
            Ok(r)
        });
        let (svc, _, metrics) = stack(&settings(), leaf);
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes(),
            "try 2"
        );
        assert_eq!(seen.calls(), 3);
        assert_eq!(sample(&metrics.render(), RETRIED_STATUS), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_failures_and_no_retry_on_success() {
        let (leaf, seen) = scripted(Duration::ZERO, |n| status(if n == 0 { 502 } else { 200 }));
        let (svc, _, _) = stack(&settings(), leaf);
        assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
        assert_eq!(seen.calls(), 2);
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
        assert_eq!(seen.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn post_is_retried_only_when_it_never_left() {
        let (connect, seen) = scripted(Duration::ZERO, |n| match n {
            0 => Err(ProxyError::UpstreamConnect(io())),
            _ => status(201),
        });
        let (svc, _, metrics) = stack(&settings(), connect);
        let resp = svc.oneshot(request(Method::POST, Body::full("x"))).await;
        assert_eq!(resp.unwrap().status(), 201);
        assert_eq!(seen.calls(), 2);
        assert_eq!(seen.bodies(), ["x", "x"]);
        let text = metrics.render();
        let series =
            "weir_retries_total{route=\"api\",upstream=\"backend\",reason=\"upstream-connect\"}";
        assert_eq!(sample(&text, series), Some(1), "{text}");

        let answers: [fn() -> Reply; 3] = [
            || Err(ProxyError::UpstreamReset(io())),
            || Err(ProxyError::UpstreamTimeout),
            || status(503),
        ];
        for answer in answers {
            let (leaf, seen) = scripted(Duration::ZERO, move |_| answer());
            let (svc, _, metrics) = stack(&settings(), leaf);
            let got = svc.oneshot(request(Method::POST, Body::full("x"))).await;
            let expected = answer();
            match (&got, &expected) {
                (Ok(a), Ok(b)) => assert_eq!(a.status(), b.status()),
                (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason()),
                _ => panic!("{got:?} is not {expected:?}"),
            }
            assert_eq!(seen.calls(), 1, "{expected:?}");
            assert!(!metrics.render().contains("weir_retries_total"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reset_and_timeout_are_retried_for_idempotent_methods() {
        let (leaf, seen) = scripted(Duration::ZERO, |n| match n {
            0 => Err(ProxyError::UpstreamReset(io())),
            1 => Err(ProxyError::UpstreamTimeout),
            _ => status(200),
        });
        let (svc, _, metrics) = stack(&settings(), leaf);
        let resp = svc.oneshot(request(Method::PUT, Body::empty())).await;
        assert_eq!(resp.unwrap().status(), 200);
        assert_eq!(seen.calls(), 3);
        let text = metrics.render();
        for reason in ["upstream-reset", "upstream-timeout"] {
            let series = format!(
                "weir_retries_total{{route=\"api\",upstream=\"backend\",reason=\"{reason}\"}}"
            );
            assert_eq!(sample(&text, &series), Some(1), "{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_key_makes_post_retryable_only_when_allowed() {
        for (allowed, calls, code) in [(true, 2, 200), (false, 1, 503)] {
            let (leaf, seen) = scripted(Duration::ZERO, |n| status(if n == 0 { 503 } else { 200 }));
            let s = Settings {
                idempotency_key: allowed,
                ..settings()
            };
            let (svc, _, _) = stack(&s, leaf);
            let mut req = request(Method::POST, Body::full("order"));
            req.headers_mut()
                .insert(&IDEMPOTENCY_KEY, HeaderValue::from_static("k-42"));
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), code, "allowed = {allowed}");
            assert_eq!(seen.calls(), calls, "allowed = {allowed}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn client_faults_and_rejections_are_never_retried() {
        let answers: [fn() -> ProxyError; 5] = [
            || ProxyError::BadRequest("x"),
            || ProxyError::PayloadTooLarge,
            || ProxyError::Overloaded,
            || ProxyError::CircuitOpen {
                retry_after: Duration::from_secs(1),
            },
            || ProxyError::UpstreamTls(Box::new(std::io::Error::other("cert"))),
        ];
        for answer in answers {
            let (leaf, seen) = scripted(Duration::ZERO, move |_| Err(answer()));
            let (svc, _, _) = stack(&settings(), leaf);
            let err = svc.oneshot(get()).await.unwrap_err();
            assert_eq!(err.reason(), answer().reason());
            assert_eq!(seen.calls(), 1, "{}", err.reason());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn small_bodies_are_replayed_identically() {
        let (leaf, seen) = scripted(Duration::ZERO, |n| status(if n < 2 { 503 } else { 200 }));
        let (svc, _, _) = stack(&settings(), leaf);
        let resp = svc
            .oneshot(request(Method::PUT, Body::full("payload")))
            .await;
        assert_eq!(resp.unwrap().status(), 200);
        assert_eq!(seen.bodies(), ["payload", "payload", "payload"]);

        let (leaf, seen) = scripted(Duration::ZERO, |_| status(503));
        let (svc, _, _) = stack(&settings(), leaf);
        let body = streamed(&["un", "known ", "size"]);
        let resp = svc.oneshot(request(Method::PUT, body)).await;
        assert_eq!(resp.unwrap().status(), 503);
        assert_eq!(
            seen.bodies(),
            ["unknown size", "unknown size", "unknown size"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_stream_intact_and_are_never_retried() {
        let s = Settings {
            max_body: 8,
            ..settings()
        };
        let cases = [
            Body::full("exactly sized, too large"),
            streamed(&["unknown", " size, ", "too large"]),
        ];
        for (body, expected) in cases
            .into_iter()
            .zip(["exactly sized, too large", "unknown size, too large"])
        {
            let (leaf, seen) = scripted(Duration::ZERO, |_| Err(ProxyError::UpstreamConnect(io())));
            let (svc, _, metrics) = stack(&s, leaf);
            let err = svc.oneshot(request(Method::GET, body)).await.unwrap_err();
            assert_eq!(err.reason(), "upstream-connect");
            assert_eq!(seen.calls(), 1, "{expected}");
            assert_eq!(seen.bodies(), [expected]);
            assert_eq!(*seen.endpoints.lock().unwrap(), [None], "no retry follows");
            assert!(!metrics.render().contains("weir_retries_total"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_the_client_breaks_is_answered_without_a_try() {
        #[derive(Debug, thiserror::Error)]
        #[error("frame")]
        struct Wrapped(#[source] BodyTooLarge);
        let failing = |err: BoxError| {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Err(err)];
            Body::boxed(StreamBody::new(stream::iter(frames)))
        };
        let (leaf, seen) = scripted(Duration::ZERO, |_| status(200));
        let (svc, _, _) = stack(&settings(), leaf);
        let err = svc
            .clone()
            .oneshot(request(
                Method::POST,
                failing(Box::new(Wrapped(BodyTooLarge))),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "payload-too-large");
        let err = svc
            .oneshot(request(Method::POST, failing(io())))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "bad-request");
        assert_eq!(seen.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_try_sees_the_endpoint_the_previous_one_used() {
        let (leaf, seen) = scripted(Duration::ZERO, |_| status(503));
        let (svc, _, _) = stack(&settings(), leaf);
        svc.oneshot(get()).await.unwrap();
        assert_eq!(
            *seen.endpoints.lock().unwrap(),
            [Some(usize::MAX), Some(0), Some(1)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_stays_within_full_jitter_bounds() {
        let s = Settings {
            max_retries: 4,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(300),
            ..settings()
        };
        for _ in 0..20 {
            let (leaf, seen) = scripted(Duration::ZERO, |_| status(503));
            let (svc, _, _) = stack(&s, leaf);
            svc.oneshot(get()).await.unwrap();
            let at = seen.at.lock().unwrap().clone();
            assert_eq!(at.len(), 5);
            for (n, pair) in at.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                let ceiling = Duration::from_millis([100, 200, 300, 300][n]);
                assert!(gap <= ceiling, "retry {n}: {gap:?} > {ceiling:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_sets_the_delay_exactly_and_beyond_the_cap_stops() {
        let s = Settings {
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(2),
            ..settings()
        };
        let (leaf, seen) = scripted(Duration::ZERO, |n| match n {
            0 => status_after(503, "2"),
            _ => status(200),
        });
        let (svc, _, _) = stack(&s, leaf);
        let started = Instant::now();
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(seen.calls(), 2);

        let (leaf, seen) = scripted(Duration::ZERO, |_| status_after(503, "3"));
        let (svc, _, metrics) = stack(&s, leaf);
        let started = Instant::now();
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(
            resp.headers()[RETRY_AFTER],
            "3",
            "the upstream's ask goes back"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(seen.calls(), 1);
        assert!(!metrics.render().contains("weir_retries_total"));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_ratio_without_floor_over_a_storm() {
        let s = Settings {
            max_retries: 1,
            budget_ratio: 0.2,
            budget_min_per_sec: 0,
            ..settings()
        };
        let (leaf, seen) = scripted(Duration::ZERO, |_| status(503));
        let (svc, handle, metrics) = stack(&s, leaf);
        for _ in 0..100 {
            assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 503);
        }
        // Request k may retry while retries + 1 ≤ 0.2 × k: every fifth one does.
        assert_eq!(seen.calls(), 120);
        let text = metrics.render();
        assert_eq!(sample(&text, RETRIED_STATUS), Some(20), "{text}");
        assert_eq!(sample(&text, EXHAUSTED), Some(80), "{text}");
        assert_eq!(handle.budget_remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_with_a_floor_follows_the_formula() {
        let s = Settings {
            max_retries: 1,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
            ..settings()
        };
        let (leaf, _) = scripted(Duration::ZERO, |_| status(503));
        let (svc, handle, metrics) = stack(&s, leaf);
        assert_eq!(handle.budget_remaining(), 10);
        handle.publish();
        let gauge = "weir_retry_budget_remaining{upstream=\"backend\"}";
        assert_eq!(sample(&metrics.render(), gauge), Some(10));
        let storm = || async {
            for _ in 0..100 {
                svc.clone().oneshot(get()).await.unwrap();
            }
        };
        storm().await;
        // 0.2 × 100 requests + 10/s × 1 s (the floor at birth).
        assert_eq!(sample(&metrics.render(), RETRIED_STATUS), Some(30));
        tokio::time::advance(Duration::from_secs(5)).await;
        storm().await;
        // 0.2 × 200 requests + 10/s × 5 s.
        assert_eq!(sample(&metrics.render(), RETRIED_STATUS), Some(90));
        assert_eq!(sample(&metrics.render(), EXHAUSTED), Some(110));
        tokio::time::advance(Duration::from_secs(20)).await;
        // Everything slid out of the window; the floor is now a whole window's worth.
        assert_eq!(handle.budget_remaining(), 100);
        handle.publish();
        assert_eq!(sample(&metrics.render(), gauge), Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_spends_the_budget_when_scheduled_not_when_sent() {
        let s = Settings {
            max_retries: 1,
            budget_ratio: 0.0,
            budget_min_per_sec: 1,
            backoff_cap: Duration::from_secs(5),
            ..settings()
        };
        let (leaf, seen) = scripted(Duration::ZERO, |n| match n {
            0 | 1 => status_after(503, "1"),
            _ => status(200),
        });
        let (svc, handle, metrics) = stack(&s, leaf);
        let a = tokio::spawn(svc.clone().oneshot(get()));
        let b = tokio::spawn(svc.oneshot(get()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Both first tries failed; neither retry has been sent, one is waiting in its backoff
        // and already holds the only unit of budget, so the other was refused at once.
        assert_eq!(seen.calls(), 2);
        assert_eq!(u8::from(a.is_finished()) + u8::from(b.is_finished()), 1);
        assert_eq!(handle.budget_remaining(), 0);
        let text = metrics.render();
        assert_eq!(sample(&text, EXHAUSTED), Some(1), "{text}");
        assert_eq!(sample(&text, RETRIED_STATUS), Some(1), "{text}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut codes = [
            a.await.unwrap().unwrap().status(),
            b.await.unwrap().unwrap().status(),
        ];
        codes.sort();
        assert_eq!(codes, [200, 503]);
        assert_eq!(seen.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_when_the_deadline_cannot_hold_one() {
        let slow = Duration::from_millis(100);
        // remaining after the first try → tries
        for (deadline_ms, calls) in [(150, 1), (250, 2), (10_000, 3)] {
            let (leaf, seen) = scripted(slow, |_| status(503));
            let (svc, handle, metrics) = stack(&settings(), leaf);
            let req = with_deadline(get(), Instant::now() + Duration::from_millis(deadline_ms));
            assert_eq!(svc.oneshot(req).await.unwrap().status(), 503);
            assert_eq!(seen.calls(), calls, "deadline {deadline_ms}ms");
            let median = handle.median_latency().unwrap();
            assert!(
                median.abs_diff(slow) < Duration::from_millis(7),
                "{median:?}"
            );
            let retries = sample(&metrics.render(), RETRIED_STATUS).unwrap_or(0);
            assert_eq!(retries, u64::try_from(calls - 1).unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_label_is_empty_without_a_context() {
        let (leaf, seen) = scripted(Duration::ZERO, |n| status(if n == 0 { 503 } else { 200 }));
        let (svc, _, metrics) = stack(&settings(), leaf);
        assert_eq!(
            svc.oneshot(Request::new(Body::empty()))
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(*seen.endpoints.lock().unwrap(), [None, None]);
        let series = "weir_retries_total{route=\"\",upstream=\"backend\",reason=\"status\"}";
        assert_eq!(sample(&metrics.render(), series), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_answer_is_dropped_before_the_next_try() {
        struct Flagged(Arc<AtomicBool>);
        impl http_body::Body for Flagged {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Ready(None)
            }
        }
        impl Drop for Flagged {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let d = dropped.clone();
        let (leaf, seen) = scripted(Duration::ZERO, move |n| {
            if n > 0 {
                return status(200);
            }
            let mut r = status_after(503, "1")?;
            *r.body_mut() = Body::boxed(Flagged(d.clone()));
            Ok(r)
        });
        let (svc, _, _) = stack(&settings(), leaf);
        let task = tokio::spawn(svc.oneshot(get()));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // In the backoff: the failed answer (and the connection it holds) is already gone.
        assert_eq!(seen.calls(), 1);
        assert!(dropped.load(Ordering::SeqCst));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(task.await.unwrap().unwrap().status(), 200);
        assert_eq!(seen.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_zero_passes_through_with_one_call() {
        let s = Settings {
            max_retries: 0,
            ..settings()
        };
        let (leaf, seen) = scripted(Duration::ZERO, |_| status(503));
        let (mut svc, handle, metrics) = stack(&s, leaf);
        let before = handle.budget_remaining();
        let fut = svc.call(request(Method::POST, streamed(&["a", "b"])));
        assert!(fut.is_direct());
        assert_eq!(fut.await.unwrap().status(), 503);
        assert_eq!(seen.calls(), 1);
        assert_eq!(seen.bodies(), ["ab"]);
        assert_eq!(*seen.endpoints.lock().unwrap(), [None]);
        assert_eq!(handle.budget_remaining(), before, "no deposit");
        assert!(!metrics.render().contains("weir_retries_total"));
    }

    #[test]
    fn the_stack_can_be_erased_for_sharing_across_tasks() {
        let (leaf, _) = scripted(Duration::ZERO, |_| status(200));
        let metrics = Metrics::new().unwrap();
        let layer = RetryLayer::new(Arc::from("backend"), &settings(), &metrics);
        let _erased: Leaf = BoxCloneSyncService::new(layer.layer(leaf));
    }

    /// A leaf whose call `n` answers 200 `try n` after `delays_ms[n]` (the last entry for later
    /// calls); it counts its calls and those dropped before they answered (cancelled).
    fn delayed(delays_ms: &'static [u64]) -> (Leaf, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        struct Pending(Arc<AtomicUsize>, bool);
        impl Drop for Pending {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicUsize::new(0));
        let (c, x) = (calls.clone(), cancelled.clone());
        let svc = service_fn(move |_req: Request| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let pending = Pending(x.clone(), false);
            async move {
                let mut pending = pending;
                let ms = delays_ms.get(n).or(delays_ms.last()).copied().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                pending.1 = true;
                Ok::<_, ProxyError>(Response::new(Body::full(format!("try {n}"))))
            }
        });
        (BoxCloneSyncService::new(svc), calls, cancelled)
    }

    fn hedged_stack(
        settings: &Settings,
        hedge: hedge::Settings,
        leaf: Leaf,
    ) -> (Retry<Leaf>, RetryHandle, Metrics) {
        let metrics = Metrics::new().unwrap();
        let layer = RetryLayer::new(Arc::from("backend"), settings, &metrics).with_hedge(
            Some(&hedge),
            None,
            &metrics,
        );
        (layer.layer(leaf), layer.handle(), metrics)
    }

    fn after(ms: u64) -> hedge::Settings {
        hedge::Settings {
            after: hedge::After::Fixed(Duration::from_millis(ms)),
            max: 1,
        }
    }

    async fn text(resp: Response) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    fn hedges(metrics: &Metrics, result: &str) -> Option<u64> {
        let series = format!("weir_hedges_total{{upstream=\"backend\",result=\"{result}\"}}");
        sample(&metrics.render(), &series)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_try_is_hedged_after_the_delay_and_the_hedge_wins() {
        let (leaf, calls, cancelled) = delayed(&[5_000, 10]);
        let (svc, handle, metrics) = hedged_stack(&settings(), after(50), leaf);
        let started = Instant::now();
        let resp = svc.oneshot(get()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(60));
        assert!(resp.extensions().get::<hedge::Hedged>().is_some());
        assert_eq!(text(resp).await, "try 1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cancelled.load(Ordering::SeqCst),
            1,
            "the stalled try is dropped"
        );
        assert_eq!(hedges(&metrics, "won"), Some(1));
        assert_eq!(hedges(&metrics, "lost"), Some(0));
        let (after, delay) = handle.hedge().unwrap();
        assert_eq!(
            (after.render(), delay),
            ("50ms".into(), Some(Duration::from_millis(50)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_head_wins_and_a_losing_hedge_is_cancelled() {
        let (leaf, calls, cancelled) = delayed(&[100, 5_000]);
        let (svc, _, metrics) = hedged_stack(&settings(), after(50), leaf);
        let started = Instant::now();
        let resp = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(resp.extensions().get::<hedge::Hedged>().is_none());
        assert_eq!(text(resp).await, "try 0");
        assert_eq!(
            (
                calls.load(Ordering::SeqCst),
                cancelled.load(Ordering::SeqCst)
            ),
            (2, 1)
        );
        assert_eq!(hedges(&metrics, "lost"), Some(1));
        assert_eq!(hedges(&metrics, "won"), Some(0));
        // A fast try sends no hedge at all.
        let (leaf, calls, _) = delayed(&[10]);
        let (svc, _, metrics) = hedged_stack(&settings(), after(50), leaf);
        svc.oneshot(get()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(hedges(&metrics, "lost"), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_when_the_budget_is_spent_nor_past_the_deadline_nor_for_a_post() {
        // The budget allows nothing: the hedge is skipped and counted.
        let broke = Settings {
            budget_ratio: 0.0,
            budget_min_per_sec: 0,
            ..settings()
        };
        let (leaf, calls, _) = delayed(&[300]);
        let (svc, _, metrics) = hedged_stack(&broke, after(50), leaf);
        let started = Instant::now();
        svc.oneshot(get()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(hedges(&metrics, "skipped_budget"), Some(1));

        // The deadline is up when the hedge would go: skipped and counted.
        let (leaf, calls, _) = delayed(&[300]);
        let (svc, _, metrics) = hedged_stack(&settings(), after(50), leaf);
        let req = with_deadline(get(), Instant::now() + Duration::from_millis(50));
        svc.oneshot(req).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(hedges(&metrics, "skipped_deadline"), Some(1));

        // A POST without Idempotency-Key may not be sent twice: never hedged.
        let (leaf, calls, _) = delayed(&[300]);
        let (svc, _, metrics) = hedged_stack(&settings(), after(50), leaf);
        svc.oneshot(request(Method::POST, Body::full("x")))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(hedges(&metrics, "skipped_budget"), Some(0));
        assert_eq!(hedges(&metrics, "won"), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_delay_waits_for_enough_tries_and_follows_them() {
        let (leaf, calls, _) = delayed(&[2]);
        let p50 = hedge::Settings {
            after: hedge::After::Percentile(50.0),
            max: 1,
        };
        let (svc, handle, _) = hedged_stack(&settings(), p50, leaf);
        assert_eq!(handle.hedge().unwrap().1, None, "no tries seen yet");
        for _ in 0..hedge::MIN_SAMPLES {
            svc.clone().oneshot(get()).await.unwrap();
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            20,
            "no hedge before enough tries"
        );
        // The delay in force is worked out again after REFRESH: now the p50 of 2 ms.
        tokio::time::advance(hedge::REFRESH).await;
        let delay = handle.hedge().unwrap().1.unwrap();
        assert!(
            delay.abs_diff(Duration::from_millis(2)) < Duration::from_micros(130),
            "{delay:?}"
        );
    }
}
