//! Fault injection: delay a share of a route's requests (by a fixed or a random delay), abort a
//! share with a status, reset a share's connection before the response head, cut a share's
//! response body off after half of it, or send a share's body slowly; or let a request ask for
//! an abort or a delay by header.
//!
//! Position: third layer of a route target's stack, after the rate limit ([`crate::route::build`]),
//! so it works on every route, direct or proxied. Config: `routes[].fault`; headers
//! `x-weir-fault-abort`, `x-weir-fault-delay`. Metrics: `weir_faults_total{route,kind}`.

mod body;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use metrics::Counter;
use pin_project_lite::pin_project;
use rand::Rng;
use tower::{Layer, Service, ServiceExt};

use crate::error::ProxyError;
use crate::http::{Body, Request, Response, X_WEIR_FAULT_ABORT, X_WEIR_FAULT_DELAY};
use crate::metrics::{FAULTS_TOTAL, Metrics};
use crate::route::shape::{Delay, MAX_SAMPLE};
use body::FaultBody;
pub(crate) use body::Truncated;

/// Fault injection of a route (`routes[].fault`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Percentage of requests (0..=100) answered with `abort_status`; default 0.
    pub abort_percent: f64,
    /// Status of an injected abort; default 503.
    pub abort_status: StatusCode,
    /// Percentage of requests (0..=100) delayed by a draw of `delay`; default 0.
    pub delay_percent: f64,
    /// Injected delay: a duration or a distribution; default 0ms.
    pub delay: Delay,
    /// Percentage of requests (0..=100) whose connection is reset before the response head;
    /// default 0.
    pub reset_percent: f64,
    /// Percentage of responses (0..=100) whose connection closes after half of the body;
    /// default 0.
    pub truncate_percent: f64,
    /// Percentage of responses (0..=100) whose body is sent at `slow_body_rate`; default 0.
    pub slow_body_percent: f64,
    /// Bytes per second of a slow body (greater than 0); default 16384.
    pub slow_body_rate: u64,
    /// Whether a request may switch faults on itself with a request header; default false.
    pub allow_header: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            abort_percent: 0.0,
            abort_status: StatusCode::SERVICE_UNAVAILABLE,
            delay_percent: 0.0,
            delay: Delay::default(),
            reset_percent: 0.0,
            truncate_percent: 0.0,
            slow_body_percent: 0.0,
            slow_body_rate: 16_384,
            allow_header: false,
        }
    }
}

/// Wraps a service in [`Fault`]. Clones share the settings and the metric handles.
///
/// Each fault is drawn per request, independently, with its own percentage, and they apply in
/// this order:
///
/// 1. **delay**: with probability `delay_percent` % the request waits for a draw of `delay`
///    (a duration, or `uniform(..)`, `lognormal(..)`, `table(..)`: [`Delay`]);
/// 2. **abort**: with probability `abort_percent` % it is answered with `abort_status`
///    (`x-weir-error: fault-injected`), the inner service never called; a request both delayed
///    and aborted is answered after the delay, as Envoy does;
/// 3. **reset**: otherwise, with probability `reset_percent` % its connection is torn down with
///    no response at all, the inner service never called: an HTTP/1 client sees the
///    connection close with no bytes, an HTTP/2 client sees its stream reset. The server
///    records it as status 444 (nginx's "no response") with `reason="fault-injected"`;
/// 4. otherwise the inner service answers, and a response it gives may be **truncated**
///    (`truncate_percent` %: half of the body, then the connection closes; the client has
///    fewer bytes than `Content-Length`) and/or sent as a **slow body** (`slow_body_percent` %:
///    at `slow_body_rate` bytes per second). Weir's own error answers are never broken.
///
/// Each fault applied is counted in `weir_faults_total{route,kind}` (`delay` only for a
/// non-zero draw). With `allow_header = true` a request may also ask for faults itself:
/// `x-weir-fault-abort: <status 100..=599>` aborts it and `x-weir-fault-delay: <delay in the
/// same forms, every duration at most 60s>` delays it, instead of the random draws. Those
/// headers are meant for this hop, so such a route removes them before forwarding; a value it
/// cannot use is ignored (logged at debug) and removed too. With `allow_header = false` the
/// headers have no effect and pass through untouched. A route with nothing to inject (the
/// default) costs one branch.
#[derive(Clone, Debug)]
pub(crate) struct FaultLayer {
    settings: Option<Arc<Armed>>,
}

/// See [`FaultLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Fault<S> {
    inner: S,
    settings: Option<Arc<Armed>>,
}

/// Marks the response of a request whose connection is to be reset, and is the error the
/// server's service returns for it, which makes hyper close the HTTP/1 connection (or reset
/// the HTTP/2 stream) without a response.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("connection reset by fault injection")]
pub(crate) struct InjectedReset;

impl InjectedReset {
    /// Whether `resp` is the mark of an injected reset.
    pub(crate) fn marks(resp: &Response) -> bool {
        resp.extensions().get::<InjectedReset>().is_some()
    }

    /// The `reason` label and access-log reason of a reset request.
    pub(crate) fn reason() -> &'static str {
        ProxyError::FaultInjected {
            status: RESET_STATUS,
        }
        .reason()
    }
}

pin_project! {
    /// The future of [`Fault`]: the inner service's, after an injected delay if any, or a ready
    /// `fault-injected` error or reset mark.
    pub struct ResponseFuture<S: Service<Request>> {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request>> {
        Call { #[pin] inner: S::Future },
        // Rare (an injected delay, or a body to break): boxed, so the common future stays small.
        Faulted { inner: Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>> },
        Aborted { status: StatusCode },
        Reset,
    }
}

/// The route's fault settings and metric handles; only built when there is something to
/// inject.
#[derive(Debug)]
struct Armed {
    abort_percent: f64,
    abort_status: StatusCode,
    delay_percent: f64,
    delay: Delay,
    reset_percent: f64,
    truncate_percent: f64,
    slow_body_percent: f64,
    slow_body_rate: u64,
    allow_header: bool,
    counts: Counts,
}

/// `weir_faults_total{route,kind}`, one handle per kind; a kind the route cannot inject has a
/// no-op handle (and no series).
#[derive(Debug)]
struct Counts {
    abort: Counter,
    delay: Counter,
    reset: Counter,
    truncate: Counter,
    slow_body: Counter,
}

/// How a request ends, once delayed or not.
#[derive(Debug, Clone, Copy)]
enum End {
    Abort(StatusCode),
    Reset,
    /// The inner service answers; its body is cut and/or slowed.
    Call {
        truncate: bool,
        slow: bool,
    },
}

// === impl FaultLayer ===

impl FaultLayer {
    /// The faults of route `route`; a config that injects nothing (every percentage 0, or a
    /// zero delay, and `allow_header = false`) makes a pure pass-through.
    pub(crate) fn new(cfg: &Settings, route: &Arc<str>, metrics: &Metrics) -> Self {
        let delays = cfg.delay_percent > 0.0 && !cfg.delay.is_zero();
        let active = cfg.abort_percent > 0.0
            || delays
            || cfg.reset_percent > 0.0
            || cfg.truncate_percent > 0.0
            || cfg.slow_body_percent > 0.0
            || cfg.allow_header;
        let settings = active.then(|| {
            let counter = |kind: &'static str, possible: bool| {
                if possible {
                    let labels = [("route", route.clone()), ("kind", Arc::from(kind))];
                    metrics.counter(FAULTS_TOTAL, &labels)
                } else {
                    Counter::noop()
                }
            };
            let by_header = cfg.allow_header;
            Arc::new(Armed {
                abort_percent: cfg.abort_percent,
                abort_status: cfg.abort_status,
                delay_percent: if delays { cfg.delay_percent } else { 0.0 },
                delay: cfg.delay.clone(),
                reset_percent: cfg.reset_percent,
                truncate_percent: cfg.truncate_percent,
                slow_body_percent: cfg.slow_body_percent,
                slow_body_rate: cfg.slow_body_rate,
                allow_header: cfg.allow_header,
                counts: Counts {
                    abort: counter("abort", by_header || cfg.abort_percent > 0.0),
                    delay: counter("delay", by_header || delays),
                    reset: counter("reset", cfg.reset_percent > 0.0),
                    truncate: counter("truncate", cfg.truncate_percent > 0.0),
                    slow_body: counter("slow_body", cfg.slow_body_percent > 0.0),
                },
            })
        });
        Self { settings }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        Fault {
            inner,
            settings: self.settings.clone(),
        }
    }
}

// === impl Fault ===

impl<S> Service<Request> for Fault<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // The decision is made in `call`; this only asks the inner service (always ready).
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let Some(s) = &self.settings else {
            return ResponseFuture::call(self.inner.call(req));
        };
        let (delay, end) = s.plan(&mut req, &mut rand::rng());
        let state = match (delay.is_zero(), end) {
            (true, End::Call { truncate, slow }) if !truncate && !slow => {
                return ResponseFuture::call(self.inner.call(req));
            }
            (true, End::Abort(status)) => State::Aborted { status },
            (true, End::Reset) => State::Reset,
            (true, End::Call { truncate, slow }) => {
                let (inner, s) = (self.inner.call(req), s.clone());
                State::Faulted {
                    inner: Box::pin(async move {
                        inner.await.map(|resp| s.break_body(resp, truncate, slow))
                    }),
                }
            }
            (false, end) => {
                let (inner, s) = (self.inner.clone(), s.clone());
                State::Faulted {
                    inner: Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        match end {
                            End::Abort(status) => Err(ProxyError::FaultInjected { status }),
                            End::Reset => Ok(reset_mark()),
                            End::Call { truncate, slow } => {
                                let resp = inner.oneshot(req).await?;
                                Ok(s.break_body(resp, truncate, slow))
                            }
                        }
                    }),
                }
            }
        };
        ResponseFuture { state }
    }
}

// === impl Armed ===

impl Armed {
    /// Draws the request's faults (or reads them from its headers) and counts the delay, the
    /// abort and the reset; the body faults are counted when a response gets them.
    fn plan<R: Rng + ?Sized>(&self, req: &mut Request, rng: &mut R) -> (Duration, End) {
        let (mut abort, asked) = if self.allow_header {
            from_headers(req.headers_mut())
        } else {
            (None, None)
        };
        let delay = match asked {
            Some(shape) => shape.sample(rng),
            None if draw(rng, self.delay_percent) => self.delay.sample(rng),
            None => Duration::ZERO,
        };
        if abort.is_none() && draw(rng, self.abort_percent) {
            abort = Some(self.abort_status);
        }
        let end = match abort {
            Some(status) => End::Abort(status),
            None if draw(rng, self.reset_percent) => End::Reset,
            None => End::Call {
                truncate: draw(rng, self.truncate_percent),
                slow: draw(rng, self.slow_body_percent),
            },
        };
        if !delay.is_zero() {
            self.counts.delay.increment(1);
        }
        match end {
            End::Abort(_) => self.counts.abort.increment(1),
            End::Reset => self.counts.reset.increment(1),
            End::Call { .. } => {}
        }
        (delay, end)
    }

    /// `resp` with its body cut and/or slowed, counted.
    fn break_body(&self, resp: Response, truncate: bool, slow: bool) -> Response {
        if truncate {
            self.counts.truncate.increment(1);
        }
        if slow {
            self.counts.slow_body.increment(1);
        }
        let rate = slow.then_some(self.slow_body_rate);
        resp.map(|body| Body::boxed(FaultBody::new(body, truncate, rate)))
    }
}

// === impl ResponseFuture ===

impl<S: Service<Request>> ResponseFuture<S> {
    fn call(inner: S::Future) -> Self {
        Self {
            state: State::Call { inner },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Call { inner } => inner.poll(cx),
            StateProj::Faulted { inner } => inner.as_mut().poll(cx),
            StateProj::Aborted { status } => {
                Poll::Ready(Err(ProxyError::FaultInjected { status: *status }))
            }
            StateProj::Reset => Poll::Ready(Ok(reset_mark())),
        }
    }
}

// === helpers ===

/// True with probability `percent` % (0..=100); no draw at 0.
fn draw<R: Rng + ?Sized>(rng: &mut R, percent: f64) -> bool {
    percent > 0.0 && rng.random::<f64>() * 100.0 < percent
}

/// The response that stands for a reset: the server turns it into its service's error.
fn reset_mark() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = RESET_STATUS;
    resp.extensions_mut().insert(InjectedReset);
    resp
}

/// The abort and delay a request asks for, removing both headers (all their values).
fn from_headers(headers: &mut HeaderMap) -> (Option<StatusCode>, Option<Delay>) {
    let abort = headers.remove(&X_WEIR_FAULT_ABORT).and_then(|v| {
        let status = parse_status(&v);
        if status.is_none() {
            tracing::debug!(value = ?v, "ignoring x-weir-fault-abort: not a status 100..=599");
        }
        status
    });
    let delay = headers.remove(&X_WEIR_FAULT_DELAY).and_then(|v| {
        let delay = parse_delay(&v);
        if delay.is_none() {
            tracing::debug!(value = ?v, "ignoring x-weir-fault-delay: not a delay up to 60s");
        }
        delay
    });
    (abort, delay.filter(|d| !d.is_zero()))
}

/// Reads an `x-weir-fault-abort` value: a status code 100..=599 (surrounding spaces allowed);
/// `None` otherwise.
pub fn parse_status(v: &HeaderValue) -> Option<StatusCode> {
    let code = v.to_str().ok()?.trim().parse::<u16>().ok()?;
    if (100..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

/// Reads an `x-weir-fault-delay` value: a delay in the config's forms (`250ms`,
/// `uniform(5ms, 50ms)`, `lognormal(5ms, 200ms)`, `table(90%: 5ms, 10%: 1s)`) whose draws are
/// at most 60 s; `None` otherwise.
pub fn parse_delay(v: &HeaderValue) -> Option<Delay> {
    Delay::parse(v.to_str().ok()?)
        .ok()
        .filter(|d| d.max() <= MAX_HEADER_DELAY)
}

/// The longest delay a request may ask for with `x-weir-fault-delay`.
const MAX_HEADER_DELAY: Duration = MAX_SAMPLE;

/// The status a reset request is recorded with (nginx's 444, "no response"); never sent.
const RESET_STATUS: StatusCode = match StatusCode::from_u16(444) {
    Ok(s) => s,
    Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
};

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use http_body_util::BodyExt;

    use super::*;

    /// The `x-weir-fault-abort` and `x-weir-fault-delay` a request carried.
    type FaultHeaders = (Option<HeaderValue>, Option<HeaderValue>);

    /// Records the fault headers of each request that reaches it.
    #[derive(Clone, Default)]
    struct Leaf {
        calls: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<FaultHeaders>>>,
        at: Arc<Mutex<Vec<Instant>>>,
    }

    impl Service<Request> for Leaf {
        type Response = Response;
        type Error = ProxyError;
        type Future = std::future::Ready<Result<Response, ProxyError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request) -> Self::Future {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let h = req.headers();
            self.seen.lock().unwrap().push((
                h.get(&X_WEIR_FAULT_ABORT).cloned(),
                h.get(&X_WEIR_FAULT_DELAY).cloned(),
            ));
            self.at.lock().unwrap().push(Instant::now());
            std::future::ready(Ok(Response::new(Body::full(LEAF_BODY))))
        }
    }

    const LEAF_BODY: &str = "0123456789";

    fn fault(cfg: Settings) -> (Fault<Leaf>, Leaf) {
        let (svc, leaf, _) = counted(cfg);
        (svc, leaf)
    }

    /// Like [`fault`], with the metrics its counters record to.
    fn counted(cfg: Settings) -> (Fault<Leaf>, Leaf, Metrics) {
        let leaf = Leaf::default();
        let metrics = Metrics::new().unwrap();
        let layer = FaultLayer::new(&cfg, &Arc::from("r"), &metrics);
        (layer.layer(leaf.clone()), leaf, metrics)
    }

    /// `weir_faults_total{route="r",kind}`; `None` when the series does not exist.
    fn faults(metrics: &Metrics, kind: &str) -> Option<u64> {
        let text = metrics.render();
        let line = text.lines().find(|l| {
            l.starts_with(FAULTS_TOTAL)
                && l.contains("route=\"r\"")
                && l.contains(&format!("kind=\"{kind}\""))
        })?;
        line.rsplit(' ').next()?.parse().ok()
    }

    fn fixed(d: Duration) -> Delay {
        Delay::Fixed(d)
    }

    fn req() -> Request {
        Request::new(Body::empty())
    }

    fn with(abort: Option<&str>, delay: Option<&str>) -> Request {
        let mut r = req();
        if let Some(v) = abort {
            r.headers_mut()
                .insert(&X_WEIR_FAULT_ABORT, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = delay {
            r.headers_mut()
                .insert(&X_WEIR_FAULT_DELAY, HeaderValue::from_str(v).unwrap());
        }
        r
    }

    /// The status of an injected abort, or `None` when the leaf answered.
    async fn send(svc: &Fault<Leaf>, r: Request) -> Option<u16> {
        match svc.clone().oneshot(r).await {
            Ok(_) => None,
            Err(ProxyError::FaultInjected { status }) => Some(status.as_u16()),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    fn abort(percent: f64, status: u16) -> Settings {
        Settings {
            abort_percent: percent,
            abort_status: StatusCode::from_u16(status).unwrap(),
            ..Settings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abort_all_answers_the_status_without_calling_the_leaf() {
        let (svc, leaf) = fault(abort(100.0, 418));
        for _ in 0..100 {
            assert_eq!(send(&svc, req()).await, Some(418));
        }
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 0);
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(
            (err.reason(), err.status().as_u16()),
            ("fault-injected", 418)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inactive_config_is_a_pass_through() {
        let (svc, leaf) = fault(abort(0.0, 500));
        assert!(svc.settings.is_none());
        for _ in 0..1000 {
            assert_eq!(send(&svc, req()).await, None);
        }
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 1000);
        // A delay percentage with a zero delay injects nothing either.
        let (svc, _) = fault(Settings {
            delay_percent: 50.0,
            ..Settings::default()
        });
        assert!(svc.settings.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_never_aborts_on_an_active_route() {
        let (svc, leaf) = fault(Settings {
            allow_header: true,
            delay_percent: 100.0,
            delay: fixed(Duration::from_millis(1)),
            ..abort(0.0, 503)
        });
        for _ in 0..1000 {
            assert_eq!(send(&svc, req()).await, None);
        }
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_percentage_holds_statistically() {
        let (svc, leaf) = fault(abort(30.0, 503));
        let mut aborted = 0;
        for _ in 0..10_000 {
            aborted += usize::from(send(&svc, req()).await == Some(503));
        }
        // Binomial(10000, 0.3): mean 3000, sd 45.8; ±5.5 sd.
        assert!((2750..=3250).contains(&aborted), "{aborted} aborted");
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 10_000 - aborted);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_then_call_the_leaf() {
        let (svc, leaf) = fault(Settings {
            delay_percent: 100.0,
            delay: fixed(Duration::from_millis(250)),
            ..Settings::default()
        });
        let start = Instant::now();
        assert_eq!(send(&svc, req()).await, None);
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(
            *leaf.at.lock().unwrap(),
            vec![start + Duration::from_millis(250)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delay_comes_before_abort() {
        let (svc, leaf) = fault(Settings {
            delay_percent: 100.0,
            delay: fixed(Duration::from_secs(2)),
            ..abort(100.0, 500)
        });
        let start = Instant::now();
        assert_eq!(send(&svc, req()).await, Some(500));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn headers_act_and_are_removed_only_when_allowed() {
        let allowed = Settings {
            allow_header: true,
            ..Settings::default()
        };
        let (svc, leaf) = fault(allowed);
        assert_eq!(send(&svc, with(Some("429"), None)).await, Some(429));
        let start = Instant::now();
        assert_eq!(send(&svc, with(None, Some("1500ms"))).await, None);
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
        let start = Instant::now();
        assert_eq!(send(&svc, with(Some(" 502 "), Some("1s"))).await, Some(502));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(send(&svc, req()).await, None);
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 2);
        assert!(
            leaf.seen.lock().unwrap().iter().all(|s| *s == (None, None)),
            "the headers were for this hop"
        );

        let (svc, leaf) = fault(Settings::default());
        let start = Instant::now();
        assert_eq!(send(&svc, with(Some("503"), Some("5s"))).await, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            *leaf.seen.lock().unwrap(),
            vec![(
                Some(HeaderValue::from_static("503")),
                Some(HeaderValue::from_static("5s"))
            )],
            "not allowed: no effect, passed on untouched"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_header_values_are_ignored_and_removed() {
        let (svc, leaf) = fault(Settings {
            allow_header: true,
            ..Settings::default()
        });
        let bad = [
            (Some("99"), Some("61s")),
            (Some("600"), Some("soon")),
            (Some("abc"), Some("-5ms")),
            (Some(""), Some("")),
            (Some("5030"), Some("0ms")),
        ];
        let start = Instant::now();
        for (abort, delay) in bad {
            assert_eq!(send(&svc, with(abort, delay)).await, None, "{abort:?}");
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(leaf.calls.load(Ordering::Relaxed), bad.len());
        assert!(leaf.seen.lock().unwrap().iter().all(|s| *s == (None, None)));
        // Config faults still apply when a header is unusable.
        let (svc, _) = fault(Settings {
            allow_header: true,
            ..abort(100.0, 503)
        });
        assert_eq!(send(&svc, with(Some("nope"), None)).await, Some(503));
        assert_eq!(send(&svc, with(Some("404"), None)).await, Some(404));
        assert_eq!(
            parse_delay(&HeaderValue::from_static("60s")),
            Some(fixed(MAX_HEADER_DELAY))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn composes_into_an_erased_route_stack() {
        use tower::util::BoxCloneSyncService;

        use crate::metrics::Metrics;
        use crate::route::deadline::DeadlineLayer;
        use crate::route::direct::{self, Direct};
        use crate::route::ratelimit::{self, RateLimitLayer};

        let metrics = Metrics::new().unwrap();
        let stack = tower::ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(1)))
            .layer(RateLimitLayer::new(
                Arc::from("stack"),
                Some(&ratelimit::Settings::new(1.0)),
                &metrics,
            ))
            .layer(FaultLayer::new(
                &Settings {
                    allow_header: true,
                    ..Settings::default()
                },
                &Arc::from("stack"),
                &metrics,
            ))
            .service(Direct::new(&direct::Settings::default()));
        let svc = BoxCloneSyncService::new(stack);
        assert!(svc.clone().oneshot(req()).await.is_ok());
        let err = svc.clone().oneshot(req()).await.unwrap_err();
        assert_eq!(err.reason(), "rate-limited");
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = svc
            .clone()
            .oneshot(with(None, Some("5s")))
            .await
            .unwrap_err();
        assert_eq!(
            err.reason(),
            "upstream-timeout",
            "the delay counts against the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn header_delays_take_every_form() {
        let (svc, leaf) = fault(Settings {
            allow_header: true,
            ..Settings::default()
        });
        for (value, took) in [
            ("uniform(1s, 1s)", Duration::from_secs(1)),
            ("table(100%: 2s)", Duration::from_secs(2)),
            ("lognormal(3s, 3s)", Duration::from_secs(3)),
            ("table(50%: 0s, 50%: 0s)", Duration::ZERO),
        ] {
            let start = Instant::now();
            assert_eq!(send(&svc, with(None, Some(value))).await, None, "{value}");
            let elapsed = start.elapsed();
            assert!(
                elapsed.abs_diff(took) < Duration::from_millis(1),
                "{value}: {elapsed:?}"
            );
        }
        // Every draw at most 60s, as for a single duration.
        for bad in [
            "uniform(1s, 61s)",
            "table(99%: 1ms, 1%: 2m)",
            "lognormal(1s, 2m)",
        ] {
            assert_eq!(parse_delay(&HeaderValue::from_static(bad)), None, "{bad}");
        }
        let start = Instant::now();
        assert_eq!(send(&svc, with(None, Some("uniform(1s, 61s)"))).await, None);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_shape_is_drawn_per_request() {
        let (svc, _) = fault(Settings {
            delay_percent: 100.0,
            delay: Delay::parse("table(50%: 1s, 50%: 3s)").unwrap(),
            ..Settings::default()
        });
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..200 {
            let start = Instant::now();
            assert_eq!(send(&svc, req()).await, None);
            *seen.entry(start.elapsed().as_secs()).or_insert(0) += 1;
        }
        // Binomial(200, 0.5): sd 7.1; each side 100 ± 5.6 sd.
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert!(seen.values().all(|n| (60..=140).contains(n)), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_a_mark_without_calling_the_leaf() {
        let (svc, leaf, metrics) = counted(Settings {
            reset_percent: 100.0,
            ..Settings::default()
        });
        let resp = svc.clone().oneshot(req()).await.unwrap();
        assert!(InjectedReset::marks(&resp));
        assert_eq!(resp.status().as_u16(), 444);
        assert_eq!(InjectedReset::reason(), "fault-injected");
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 0);
        assert_eq!(faults(&metrics, "reset"), Some(1));
        // A response the leaf gave carries no mark.
        let (svc, _) = fault(Settings {
            allow_header: true,
            ..Settings::default()
        });
        assert!(!InjectedReset::marks(&svc.oneshot(req()).await.unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_apply_in_order_delay_abort_reset() {
        // Abort and reset both drawn: the abort answers, and only it is counted.
        let (svc, _, metrics) = counted(Settings {
            reset_percent: 100.0,
            ..abort(100.0, 502)
        });
        assert_eq!(send(&svc, req()).await, Some(502));
        assert_eq!(
            (faults(&metrics, "abort"), faults(&metrics, "reset")),
            (Some(1), Some(0))
        );
        // Delay then reset.
        let (svc, _, metrics) = counted(Settings {
            delay_percent: 100.0,
            delay: fixed(Duration::from_millis(300)),
            reset_percent: 100.0,
            truncate_percent: 100.0,
            ..Settings::default()
        });
        let start = Instant::now();
        let resp = svc.oneshot(req()).await.unwrap();
        assert!(InjectedReset::marks(&resp));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        let counts = ["delay", "reset", "truncate"].map(|k| faults(&metrics, k));
        assert_eq!(counts, [Some(1), Some(1), Some(0)], "no body to cut");
    }

    #[tokio::test(start_paused = true)]
    async fn body_faults_break_the_leafs_response() {
        let (svc, leaf, metrics) = counted(Settings {
            truncate_percent: 100.0,
            ..Settings::default()
        });
        let resp = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(leaf.calls.load(Ordering::Relaxed), 1);
        let mut body = resp.into_body();
        let half = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(half, LEAF_BODY.as_bytes()[..5]);
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<Truncated>());
        assert_eq!(faults(&metrics, "truncate"), Some(1));
        assert_eq!(faults(&metrics, "abort"), None, "a kind it cannot inject");

        let (svc, _, metrics) = counted(Settings {
            slow_body_percent: 100.0,
            slow_body_rate: 10,
            delay_percent: 100.0,
            delay: fixed(Duration::from_secs(1)),
            ..Settings::default()
        });
        let start = Instant::now();
        let resp = svc.oneshot(req()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, LEAF_BODY);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "10 bytes at 10 B/s"
        );
        let counts = ["delay", "slow_body"].map(|k| faults(&metrics, k));
        assert_eq!(counts, [Some(1), Some(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_fault_holds_its_share() {
        let (svc, leaf, metrics) = counted(Settings {
            reset_percent: 20.0,
            truncate_percent: 50.0,
            ..Settings::default()
        });
        for _ in 0..10_000 {
            svc.clone().oneshot(req()).await.unwrap();
        }
        // Resets: Binomial(10000, 0.2), mean 2000, sd 40 (±5.5 sd). Truncations: each request
        // with probability 0.8 × 0.5, mean 4000, sd 49 (±5.1 sd).
        let reset = faults(&metrics, "reset").unwrap();
        let truncate = faults(&metrics, "truncate").unwrap();
        assert!((1780..=2220).contains(&reset), "{reset} reset");
        assert!((3750..=4250).contains(&truncate), "{truncate} truncated");
        assert_eq!(leaf.calls.load(Ordering::Relaxed) as u64, 10_000 - reset);
    }

    #[tokio::test(start_paused = true)]
    async fn header_faults_are_counted() {
        let (svc, _, metrics) = counted(Settings {
            allow_header: true,
            ..Settings::default()
        });
        assert_eq!(send(&svc, with(Some("500"), Some("10ms"))).await, Some(500));
        assert_eq!(send(&svc, with(None, Some("0s"))).await, None);
        let counts = ["abort", "delay", "reset"].map(|k| faults(&metrics, k));
        assert_eq!(counts, [Some(1), Some(1), None]);
    }
}
