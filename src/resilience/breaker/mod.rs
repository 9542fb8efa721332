//! Per-upstream circuit breaker: refuses requests at once while the upstream keeps failing.
//!
//! Position: upstream stack, below load shedding and above retries (judges final outcomes).
//! Config: `upstreams.<name>.breaker.*`. Metrics: `weir_circuit_state`,
//! `weir_circuit_transitions_total`, `weir_dry_run_rejections_total{policy="breaker"}`.
//!
//! Closed → Open when the sliding window (`window`, at least `min_calls` calls) reaches
//! `failure_rate` or `slow_call_rate`, or after `consecutive_failures` failures in a row. Open
//! refuses with `circuit-open` and the open time left; once it has passed, the first request
//! moves the breaker to half-open, where `half_open_probes` probes pass: all succeed → Closed,
//! one fails (or is slow) → Open again for twice as long, up to `open_for_max`. The state
//! machine (`state.rs`) and the window (`window.rs`) are lock-free: atomics and
//! compare-exchange only.

mod state;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

pub(crate) use self::state::BreakerState;
use self::state::{Admission, Machine, Ticket, Transition, Trigger};
use crate::error::BoxError;
use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::grpc::{self, Code, CodeSet};
use crate::http::{Body, Watch, Watched};
use crate::http::{Request, Response};
use crate::metrics::{CIRCUIT_STATE, CIRCUIT_TRANSITIONS_TOTAL, DRY_RUN_REJECTIONS_TOTAL, Metrics};
use crate::resilience::Mode;
use crate::resilience::grpc::Settings as GrpcSettings;
use crate::resilience::{Outcome, StatusSet};

/// Circuit breaker of an upstream (`upstreams.NAME.breaker`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Enforce, count only (dry run), or off; default enforce.
    pub mode: Mode,
    /// Length of the sliding window; default 10s.
    pub window: Duration,
    /// Fewest calls in the window before rates are judged; default 20.
    pub min_calls: u32,
    /// Failure rate (0..=1) that opens the breaker; default 0.5.
    pub failure_rate: f64,
    /// A call slower than this counts as slow; `Duration::ZERO` (the default) counts none.
    pub slow_call_duration: Duration,
    /// Slow-call rate (0..=1) that opens the breaker; default 1.0.
    pub slow_call_rate: f64,
    /// Consecutive failures that open the breaker; default 5.
    pub consecutive_failures: u32,
    /// How long the breaker stays open the first time; default 10s, doubling on repeated trips.
    pub open_for: Duration,
    /// Cap of the growing open time; default 5m.
    pub open_for_max: Duration,
    /// Probe calls let through when half-open; default 3.
    pub half_open_probes: u32,
    /// Response statuses that count as failures; default 500..=505.
    pub failure_statuses: Vec<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 0.5,
            slow_call_duration: Duration::ZERO,
            slow_call_rate: 1.0,
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(300),
            half_open_probes: 3,
            failure_statuses: vec![500, 501, 502, 503, 504, 505],
        }
    }
}

/// Wraps a service in [`CircuitBreaker`]. Clones (and every service it makes) share one
/// breaker: one state machine, one window, one set of metric handles.
#[derive(Clone, Debug)]
pub(crate) struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

/// See the module docs. Always ready; admission is decided in `call`.
#[derive(Clone, Debug)]
pub(crate) struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A read-only view of a breaker, for the admin status page. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

/// What a breaker is doing now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerStatus {
    /// The current state. An open breaker whose open time has passed still reads `Open`
    /// (with `open_remaining` zero) until the next request moves it to half-open.
    pub state: BreakerState,
    /// Time since the last transition (since construction if none).
    pub in_state_for: Duration,
    /// While open: how long it stays open. `None` in the other states.
    pub open_remaining: Option<Duration>,
    /// Consecutive trips without closing in between (0 when closed); the open time is
    /// `open_for · 2^(trips−1)`, capped at `open_for_max`. Saturates at 255.
    pub trips: u32,
    /// The `reason` label of the last transition (`consecutive`, `failure_rate`, `slow_rate`,
    /// `probe_failed`, `probe_succeeded`, `open_elapsed`); `None` before the first.
    pub last_reason: Option<&'static str>,
    /// Whether the breaker enforces, only counts (dry run), or is off.
    pub mode: Mode,
}

#[derive(Debug)]
struct Shared {
    upstream: Arc<str>,
    mode: Mode,
    failures: StatusSet,
    /// The gRPC codes that count as failures (`upstreams.<name>.grpc.failure_codes`).
    grpc_failures: CodeSet,
    machine: Machine,
    state_gauge: Gauge,
    /// One per [`Trigger`], in [`Trigger::ALL`] order (each trigger has one target state).
    transitions: [Counter; 6],
    /// Counts refusals a dry-run breaker let through; a no-op handle in the other modes.
    dry_run_rejections: Counter,
}

// === impl CircuitBreakerLayer ===

impl CircuitBreakerLayer {
    /// A closed breaker for `upstream` with `settings`; resolves its metric handles in
    /// `metrics` now and sets `weir_circuit_state` to 0.
    pub(crate) fn new(
        upstream: Arc<str>,
        settings: &Settings,
        grpc: &GrpcSettings,
        metrics: &Metrics,
    ) -> Self {
        let label = || ("upstream", upstream.clone());
        let transitions = Trigger::ALL.map(|r| {
            metrics.counter(
                CIRCUIT_TRANSITIONS_TOTAL,
                &[
                    label(),
                    ("to", r.to().as_str().into()),
                    ("reason", r.as_str().into()),
                ],
            )
        });
        let dry_run_rejections = match settings.mode {
            Mode::DryRun => metrics.counter(
                DRY_RUN_REJECTIONS_TOTAL,
                &[label(), ("policy", POLICY.into())],
            ),
            Mode::Enforce | Mode::Off => Counter::noop(),
        };
        let state_gauge = metrics.gauge(CIRCUIT_STATE, &[label()]);
        state_gauge.set(BreakerState::Closed.gauge());
        Self {
            shared: Arc::new(Shared {
                upstream,
                mode: settings.mode,
                failures: StatusSet::new(&settings.failure_statuses),
                grpc_failures: grpc.failures(),
                machine: Machine::new(settings),
                state_gauge,
                transitions,
                dry_run_rejections,
            }),
        }
    }

    /// A read-only view of this breaker's state.
    pub(crate) fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl CircuitBreaker ===

impl<S> Service<Request> for CircuitBreaker<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Admission is decided in `call`; this only asks the inner service, and every stage
        // below is always ready, so a refusal still holds nothing.
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: Request) -> Self::Future {
        let shared = &self.shared;
        if shared.mode == Mode::Off {
            return ResponseFuture::admitted(self.inner.call(req), None, false);
        }
        let grpc = req
            .extensions()
            .get::<RequestContext>()
            .is_some_and(|c| c.grpc);
        let (admission, transition) = shared.machine.admit();
        if let Some(t) = transition {
            shared.on_transition(t);
        }
        let guard = match admission {
            Admission::Admit(ticket) => Some(Guard {
                shared: shared.clone(),
                ticket: Some(ticket),
                started: shared.machine.slow_call_duration().map(|_| Instant::now()),
            }),
            Admission::Reject { retry_after } => {
                if shared.mode == Mode::Enforce {
                    return ResponseFuture::rejected(retry_after);
                }
                // Dry run: let it through untracked; only real probes judge the upstream.
                shared.dry_run_rejections.increment(1);
                None
            }
        };
        ResponseFuture::admitted(self.inner.call(req), guard, grpc)
    }
}

// === impl BreakerHandle ===

impl BreakerHandle {
    /// The breaker's state now. In mode `off` it reads closed, forever.
    pub fn status(&self) -> BreakerStatus {
        let s = self.shared.machine.status();
        BreakerStatus {
            state: s.state,
            in_state_for: s.in_state_for,
            open_remaining: s.open_remaining,
            trips: s.trips,
            last_reason: s.last_trigger.map(Trigger::as_str),
            mode: self.shared.mode,
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Counts and logs a transition; called once per transition, by the caller that made it.
    fn on_transition(&self, t: Transition) {
        let to = t.trigger.to();
        self.state_gauge.set(to.gauge());
        if let Some(c) = self.transitions.get(t.trigger.index()) {
            c.increment(1);
        }
        let open_for_ms = t
            .open_for
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tracing::info!(
            upstream = %self.upstream,
            to = to.as_str(),
            reason = t.trigger.as_str(),
            trips = t.trips,
            open_for_ms,
            dry_run = self.mode == Mode::DryRun,
            "circuit breaker state changed",
        );
    }

    fn finish(&self, ticket: Ticket, outcome: Outcome, started: Option<Instant>) {
        let now = Instant::now();
        let elapsed = started.map(|s| now.saturating_duration_since(s));
        if let Some(t) = self.machine.record(ticket, outcome, now, elapsed) {
            self.on_transition(t);
        }
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`]: a ready `circuit-open` refusal, or the inner future,
    /// whose outcome is counted when it resolves. Dropped before that, it counts nothing and
    /// gives back the half-open probe slot it held. A gRPC call whose status comes in the
    /// trailers is counted when they arrive ([`GrpcEnd`]).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Admitted {
            #[pin]
            inner: F,
            guard: Option<Guard>,
            // Whether the request is a gRPC call, judged by its `grpc-status`.
            grpc: bool,
        },
        Rejected {
            retry_after: Duration,
        },
    }
}

/// The accounting of one admitted request; gives back a probe slot when dropped unfinished.
struct Guard {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
    /// When `call` ran; read only when slow calls are counted.
    started: Option<Instant>,
}

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    fn admitted(inner: F, guard: Option<Guard>, grpc: bool) -> Self {
        Self {
            kind: Kind::Admitted { inner, guard, grpc },
        }
    }

    fn rejected(retry_after: Duration) -> Self {
        Self {
            kind: Kind::Rejected { retry_after },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { inner, guard, grpc } => {
                let mut result = std::task::ready!(inner.poll(cx));
                let Some(g) = guard else {
                    return Poll::Ready(result);
                };
                let failures = &g.shared.grpc_failures;
                let outcome = match &result {
                    Ok(resp) if *grpc => {
                        match grpc::head_code(resp.status(), resp.headers()) {
                            Some(code) => Outcome::of_grpc(code, failures),
                            // The status is in the trailers: the body's end judges the call.
                            None => {
                                if let Ok(resp) = &mut result {
                                    let body = std::mem::take(resp.body_mut());
                                    let end = GrpcEnd(guard.take());
                                    *resp.body_mut() = Body::boxed(Watched::new(body, end));
                                }
                                return Poll::Ready(result);
                            }
                        }
                    }
                    _ => Outcome::of(&result, &g.shared.failures),
                };
                g.finish(outcome);
                Poll::Ready(result)
            }
            KindProj::Rejected { retry_after } => Poll::Ready(Err(ProxyError::CircuitOpen {
                retry_after: *retry_after,
            })),
        }
    }
}

// === impl Guard ===

impl Guard {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.finish(ticket, outcome, self.started);
        }
    }
}

/// Judges a gRPC call whose status comes in the trailers when its body ends: by the trailers'
/// `grpc-status` (none: `UNKNOWN`); a body that breaks off is a failure; one dropped unread
/// (the client went away) counts nothing and gives back its probe slot.
struct GrpcEnd(Option<Guard>);

impl Watch for GrpcEnd {
    fn polled(
        &mut self,
        _: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        _: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let outcome = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(t) => {
                    let code = grpc::status_of(t).unwrap_or(Code::Unknown);
                    self.0
                        .as_ref()
                        .map(|g| Outcome::of_grpc(code, &g.shared.grpc_failures))
                }
                None => None,
            },
            Poll::Ready(None) => self
                .0
                .as_ref()
                .map(|g| Outcome::of_grpc(Code::Unknown, &g.shared.grpc_failures)),
            Poll::Ready(Some(Err(_))) => Some(Outcome::Failure),
            Poll::Pending => None,
        };
        if let Some(outcome) = outcome
            && let Some(mut g) = self.0.take()
        {
            g.finish(outcome);
        }
        polled
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.machine.abandon(ticket);
        }
    }
}

/// The `policy` label of `weir_dry_run_rejections_total` for this module.
const POLICY: &str = "breaker";

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    use http::StatusCode;
    use tower::service_fn;

    use super::*;
    use crate::http::Body;

    /// What the leaf answers: a status, a connect error, or an error the breaker ignores.
    #[derive(Clone, Copy)]
    enum Reply {
        Status(u16),
        Connect,
        Ignored,
    }

    fn req(reply: Reply, delay_ms: u64) -> Request {
        let v = match reply {
            Reply::Status(s) => s.to_string(),
            Reply::Connect => "connect".into(),
            Reply::Ignored => "ignored".into(),
        };
        http::Request::builder()
            .header("x-test-reply", v)
            .header("x-test-delay-ms", delay_ms.to_string())
            .body(Body::empty())
            .unwrap()
    }

    /// A leaf answering as the request's test headers say, counting its calls.
    fn leaf(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(move |req: Request| {
            let calls = calls.clone();
            let h = |name: &str| req.headers()[name].to_str().unwrap().to_owned();
            let delay: u64 = h("x-test-delay-ms").parse().unwrap();
            let reply = h("x-test-reply");
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                match reply.as_str() {
                    "connect" => Err(ProxyError::UpstreamConnect("refused".into())),
                    "ignored" => Err(ProxyError::PayloadTooLarge),
                    code => {
                        let mut r = Response::new(Body::empty());
                        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
                        Ok(r)
                    }
                }
            }
        })
    }

    struct Fixture<L> {
        svc: CircuitBreaker<L>,
        handle: BreakerHandle,
        metrics: Metrics,
        calls: Arc<AtomicUsize>,
    }

    fn fixture(
        upstream: &str,
        s: Settings,
    ) -> Fixture<
        impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
        + Clone
        + Send
        + 'static,
    > {
        let metrics = Metrics::new().unwrap();
        let layer =
            CircuitBreakerLayer::new(upstream.into(), &s, &GrpcSettings::default(), &metrics);
        let calls = Arc::new(AtomicUsize::new(0));
        Fixture {
            svc: layer.layer(leaf(calls.clone())),
            handle: layer.handle(),
            metrics,
            calls,
        }
    }

    impl<L> Fixture<L>
    where
        L: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
        L::Future: Send,
    {
        async fn send(&self, reply: Reply) -> Result<Response, ProxyError> {
            self.svc.clone().oneshot(req(reply, 0)).await
        }

        async fn send_n(&self, n: usize, reply: Reply) {
            for _ in 0..n {
                let _ = self.send(reply).await;
            }
        }

        /// Starts a request whose answer takes `delay_ms`; admission is decided now.
        fn start(&self, reply: Reply, delay_ms: u64) -> ResponseFuture<L::Future> {
            self.svc.clone().call(req(reply, delay_ms))
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn state(&self) -> BreakerState {
            self.handle.status().state
        }
    }

    fn settings() -> Settings {
        Settings {
            window: Duration::from_secs(10),
            min_calls: 100,
            consecutive_failures: 5,
            open_for: Duration::from_secs(10),
            open_for_max: Duration::from_secs(300),
            half_open_probes: 3,
            ..Settings::default()
        }
    }

    fn retry_after(r: Result<Response, ProxyError>) -> Duration {
        match r {
            Err(ProxyError::CircuitOpen { retry_after }) => retry_after,
            Err(e) => panic!("expected circuit-open, got {e}"),
            Ok(r) => panic!("expected circuit-open, got {}", r.status()),
        }
    }

    const OK: Reply = Reply::Status(200);
    const FAIL: Reply = Reply::Status(503);

    /// A gRPC call to a leaf that answers `code` trailers-only, or in the trailers after one
    /// message (`in_trailers`).
    fn grpc_req(code: u8, in_trailers: bool) -> Request {
        let mut req = http::Request::builder()
            .header("x-code", code.to_string())
            .header("x-in-trailers", if in_trailers { "1" } else { "0" })
            .body(Body::empty())
            .unwrap();
        let mut ctx = RequestContext::new(
            [127, 0, 0, 1].into(),
            "r".into(),
            crate::http::context::Priority::Default,
        );
        ctx.grpc = true;
        req.extensions_mut().insert(ctx);
        req
    }

    fn grpc_leaf() -> impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static {
        service_fn(|req: Request| {
            let h = |name: &str| req.headers()[name].to_str().unwrap().to_owned();
            let (code, in_trailers) = (h("x-code"), h("x-in-trailers") == "1");
            async move {
                let value = http::HeaderValue::from_str(&code).unwrap();
                if !in_trailers {
                    let mut r = Response::new(Body::empty());
                    r.headers_mut().insert("grpc-status", value);
                    return Ok(r);
                }
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", value);
                let frames = futures_util::stream::iter([
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Ok(Response::new(Body::boxed(http_body_util::StreamBody::new(
                    frames,
                ))))
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_calls_are_judged_by_their_status_in_the_head_or_at_the_trailers() {
        use http_body_util::BodyExt;
        let metrics = Metrics::new().unwrap();
        let s = Settings {
            consecutive_failures: 3,
            ..Settings::default()
        };
        let layer = CircuitBreakerLayer::new("g".into(), &s, &GrpcSettings::default(), &metrics);
        let (svc, handle) = (layer.layer(grpc_leaf()), layer.handle());
        let call = |code, in_trailers| svc.clone().oneshot(grpc_req(code, in_trailers));
        let state = || handle.status().state;

        // OK, NOT_FOUND and INVALID_ARGUMENT are not failures, wherever they come.
        for (code, t) in [(0, false), (5, true), (3, false), (0, true)] {
            let resp = call(code, t).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        // Two INTERNAL trailers-only: two failures in a row; still closed.
        for _ in 0..2 {
            call(13, false).await.unwrap();
        }
        assert_eq!(state(), BreakerState::Closed);
        // UNAVAILABLE in the trailers counts when the body ends, not at the head.
        let resp = call(14, true).await.unwrap();
        assert_eq!(state(), BreakerState::Closed);
        resp.into_body().collect().await.unwrap();
        assert_eq!(state(), BreakerState::Open, "third failure in a row");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_stream_dropped_unread_or_without_a_status_counts_as_the_client_sees_it() {
        use http_body_util::BodyExt;
        let metrics = Metrics::new().unwrap();
        let s = Settings {
            consecutive_failures: 1,
            ..Settings::default()
        };
        let layer = CircuitBreakerLayer::new("g".into(), &s, &GrpcSettings::default(), &metrics);
        let (svc, handle) = (layer.layer(grpc_leaf()), layer.handle());
        // Dropped before its trailers (the client went away): nothing counts.
        drop(svc.clone().oneshot(grpc_req(14, true)).await.unwrap());
        assert_eq!(handle.status().state, BreakerState::Closed);
        // Not a gRPC call: a `grpc-status` header is not read, and 200 is a success.
        let mut plain = grpc_req(13, false);
        plain.extensions_mut().clear();
        svc.clone().oneshot(plain).await.unwrap();
        assert_eq!(handle.status().state, BreakerState::Closed);
        // A stream that ends without any status is UNKNOWN: a failure.
        let leaf = service_fn(|_req: Request| async {
            let frames = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
                Bytes::from_static(b"x"),
            ))]);
            Ok::<_, ProxyError>(Response::new(Body::boxed(http_body_util::StreamBody::new(
                frames,
            ))))
        });
        let resp = layer.layer(leaf).oneshot(grpc_req(0, true)).await.unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(handle.status().state, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_consecutive_failures() {
        let f = fixture("consec", settings());
        f.send_n(4, FAIL).await;
        f.send(OK).await.unwrap(); // breaks the run
        f.send_n(4, Reply::Connect).await;
        assert_eq!(f.state(), BreakerState::Closed);
        f.send(Reply::Status(500)).await.unwrap();
        let st = f.handle.status();
        assert_eq!(st.state, BreakerState::Open);
        assert_eq!((st.trips, st.last_reason), (1, Some("consecutive")));
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(10));
        assert_eq!(f.calls(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_failure_rate_only_after_min_calls() {
        let f = fixture(
            "rate",
            Settings {
                min_calls: 10,
                failure_rate: 0.5,
                consecutive_failures: 0, // off
                ..settings()
            },
        );
        // 5 failures in 9 calls: above the rate from the first call, but below min_calls.
        for i in 0..9 {
            let _ = f.send(if i % 2 == 0 { FAIL } else { OK }).await;
        }
        assert_eq!(f.state(), BreakerState::Closed);
        let _ = f.send(Reply::Connect).await; // 6 of 10
        let st = f.handle.status();
        assert_eq!(st.state, BreakerState::Open);
        assert_eq!(st.last_reason, Some("failure_rate"));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_below_the_threshold_stays_closed() {
        let f = fixture(
            "rate-low",
            Settings {
                min_calls: 4,
                failure_rate: 0.5,
                ..settings()
            },
        );
        for _ in 0..10 {
            f.send_n(2, OK).await;
            let _ = f.send(FAIL).await; // 1 in 3
        }
        assert_eq!(f.state(), BreakerState::Closed);
        assert_eq!(f.calls(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn trips_on_slow_call_rate() {
        let f = fixture(
            "slow",
            Settings {
                min_calls: 4,
                slow_call_duration: Duration::from_millis(100),
                slow_call_rate: 0.5,
                ..settings()
            },
        );
        let timed = |ms| f.start(OK, ms);
        timed(100).await.unwrap(); // exactly the limit: not slow
        timed(50).await.unwrap();
        timed(150).await.unwrap();
        timed(50).await.unwrap();
        timed(150).await.unwrap(); // 2 of 5
        assert_eq!(f.state(), BreakerState::Closed);
        timed(150).await.unwrap(); // 3 of 6
        let st = f.handle.status();
        assert_eq!(st.state, BreakerState::Open);
        assert_eq!(st.last_reason, Some("slow_rate"));
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_age_out_of_the_window() {
        async fn after(gap: Duration) -> BreakerState {
            let f = fixture(
                "slide",
                Settings {
                    min_calls: 4,
                    failure_rate: 0.5,
                    consecutive_failures: 0,
                    ..settings()
                },
            );
            f.send_n(3, FAIL).await;
            tokio::time::advance(gap).await;
            f.send_n(3, OK).await;
            let _ = f.send(FAIL).await;
            f.state()
        }
        // 4 of 7 while the first failures are inside the window; 1 of 4 once they left.
        assert_eq!(after(Duration::from_secs(5)).await, BreakerState::Open);
        assert_eq!(after(Duration::from_secs(10)).await, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejects_at_once_with_the_time_left() {
        let f = fixture(
            "open",
            Settings {
                consecutive_failures: 1,
                ..settings()
            },
        );
        let _ = f.send(Reply::Connect).await;
        tokio::time::advance(Duration::from_secs(3)).await;
        let fut = f.start(OK, 0);
        assert!(matches!(fut.kind, Kind::Rejected { .. }), "a ready refusal");
        assert_eq!(retry_after(fut.await), Duration::from_secs(7));
        let st = f.handle.status();
        assert_eq!(st.open_remaining, Some(Duration::from_secs(7)));
        assert_eq!(st.in_state_for, Duration::from_secs(3));
        assert_eq!(f.calls(), 1, "no inner call while open");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_n_probes_then_closes() {
        let f = fixture(
            "probes",
            Settings {
                consecutive_failures: 1,
                ..settings()
            },
        );
        let _ = f.send(FAIL).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let probes = [f.start(OK, 100), f.start(OK, 100), f.start(OK, 100)];
        assert_eq!(f.state(), BreakerState::HalfOpen);
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(1));
        assert_eq!(f.calls(), 1);
        for r in futures_util::future::join_all(probes).await {
            r.unwrap();
        }
        let st = f.handle.status();
        assert_eq!(st.state, BreakerState::Closed);
        assert_eq!((st.trips, st.last_reason), (0, Some("probe_succeeded")));
        assert_eq!(st.in_state_for, Duration::ZERO);
        f.send_n(5, OK).await;
        assert_eq!(f.calls(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let f = fixture(
            "doubling",
            Settings {
                consecutive_failures: 1,
                open_for: Duration::from_secs(10),
                open_for_max: Duration::from_secs(25),
                half_open_probes: 1,
                ..settings()
            },
        );
        let _ = f.send(FAIL).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let _ = f.send(FAIL).await; // probe fails
        let st = f.handle.status();
        assert_eq!((st.state, st.trips), (BreakerState::Open, 2));
        assert_eq!(st.last_reason, Some("probe_failed"));
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = f.send(Reply::Connect).await; // probe fails again: 40s, capped at 25s
        assert_eq!(f.handle.status().trips, 3);
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(25));
        tokio::time::advance(Duration::from_secs(25)).await;
        f.send(OK).await.unwrap(); // probe succeeds
        assert_eq!(f.state(), BreakerState::Closed);
        // The next trip starts again from `open_for`.
        let _ = f.send(FAIL).await;
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(10));
        assert_eq!(f.calls(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_successes() {
        let f = fixture(
            "4xx",
            Settings {
                consecutive_failures: 2,
                min_calls: 1,
                ..settings()
            },
        );
        for s in [400, 404, 429, 499, 404, 404] {
            f.send(Reply::Status(s)).await.unwrap();
        }
        assert_eq!(f.state(), BreakerState::Closed);
        f.send_n(2, Reply::Status(502)).await;
        assert_eq!(f.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_outcomes_move_nothing() {
        let f = fixture(
            "ignored",
            Settings {
                consecutive_failures: 2,
                ..settings()
            },
        );
        let _ = f.send(FAIL).await;
        f.send_n(5, Reply::Ignored).await; // neither counts nor breaks the run
        assert_eq!(f.state(), BreakerState::Closed);
        let _ = f.send(FAIL).await;
        assert_eq!(f.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_back_its_slot() {
        let f = fixture(
            "dropped",
            Settings {
                consecutive_failures: 1,
                half_open_probes: 1,
                ..settings()
            },
        );
        let _ = f.send(FAIL).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        // Dropped before it was polled.
        let probe = f.start(OK, 0);
        assert_eq!(retry_after(f.send(OK).await), Duration::from_secs(1));
        drop(probe);
        // Dropped mid-flight by an outer deadline.
        let cut = tokio::time::timeout(Duration::from_millis(100), f.start(FAIL, 1_000)).await;
        assert!(cut.is_err());
        let st = f.handle.status();
        assert_eq!(
            st.state,
            BreakerState::HalfOpen,
            "a dropped probe counts nothing"
        );
        assert_eq!(st.last_reason, Some("open_elapsed"));
        f.send(OK).await.unwrap();
        assert_eq!(f.state(), BreakerState::Closed);
        assert_eq!(f.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_admits_everything_and_counts_what_it_would_refuse() {
        let f = fixture(
            "dry",
            Settings {
                mode: Mode::DryRun,
                consecutive_failures: 2,
                half_open_probes: 1,
                ..settings()
            },
        );
        f.send_n(2, FAIL).await;
        assert_eq!(f.state(), BreakerState::Open);
        // Would be refused: admitted, counted, and their outcomes judge nothing.
        f.send_n(3, OK).await;
        let _ = f.send(FAIL).await;
        let st = f.handle.status();
        assert_eq!(
            (st.state, st.trips, st.mode),
            (BreakerState::Open, 1, Mode::DryRun)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = f.start(OK, 100);
        f.send(OK).await.unwrap(); // no probe slot left: would be refused
        assert_eq!(f.state(), BreakerState::HalfOpen);
        probe.await.unwrap();
        assert_eq!(f.state(), BreakerState::Closed);
        assert_eq!(f.calls(), 8);
        let text = f.metrics.render();
        assert!(
            text.contains(r#"weir_dry_run_rejections_total{upstream="dry",policy="breaker"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_circuit_state{upstream="dry"} 0"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn off_passes_everything_through() {
        let f = fixture(
            "off",
            Settings {
                mode: Mode::Off,
                consecutive_failures: 1,
                min_calls: 1,
                ..settings()
            },
        );
        f.send_n(20, Reply::Connect).await;
        assert_eq!(f.calls(), 20);
        let st = f.handle.status();
        assert_eq!((st.state, st.last_reason), (BreakerState::Closed, None));
        let text = f.metrics.render();
        assert!(!text.contains("weir_dry_run_rejections_total"), "{text}");
        assert!(
            text.contains(
                r#"weir_circuit_transitions_total{upstream="off",to="open",reason="consecutive"} 0"#
            ),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_show_state_and_transitions() {
        let f = fixture(
            "m",
            Settings {
                consecutive_failures: 1,
                half_open_probes: 1,
                ..settings()
            },
        );
        let state = |v: u8| format!(r#"weir_circuit_state{{upstream="m"}} {v}"#);
        let moved = |to: &str, reason: &str, n: u8| {
            format!(
                r#"weir_circuit_transitions_total{{upstream="m",to="{to}",reason="{reason}"}} {n}"#
            )
        };
        assert!(f.metrics.render().contains(&state(0)));
        let _ = f.send(FAIL).await;
        let text = f.metrics.render();
        assert!(text.contains(&state(1)), "{text}");
        assert!(text.contains(&moved("open", "consecutive", 1)), "{text}");
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = f.start(OK, 100);
        let text = f.metrics.render();
        assert!(text.contains(&state(2)), "{text}");
        assert!(
            text.contains(&moved("half_open", "open_elapsed", 1)),
            "{text}"
        );
        probe.await.unwrap();
        let text = f.metrics.render();
        assert!(text.contains(&state(0)), "{text}");
        assert!(
            text.contains(&moved("closed", "probe_succeeded", 1)),
            "{text}"
        );
        assert!(text.contains(&moved("open", "probe_failed", 0)), "{text}");
        assert!(text.contains(&moved("open", "failure_rate", 0)), "{text}");
    }
}
