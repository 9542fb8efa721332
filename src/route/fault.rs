//! Fault injection: delay a share of a route's requests, abort a share with a status, or let a
//! request ask for either by header.
//!
//! Position: third layer of a route target's stack, after the rate limit ([`crate::route::build`]).
//! Config: `routes[].fault`; headers `x-weir-fault-abort`, `x-weir-fault-delay`. Metrics: none of
//! its own (aborts are counted as `weir_requests_total{reason="fault-injected"}`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use rand::Rng;
use tower::{Layer, Service, ServiceExt};

use crate::error::ProxyError;
use crate::http::{Request, Response, X_WEIR_FAULT_ABORT, X_WEIR_FAULT_DELAY};

/// Fault injection of a route (`routes[].fault`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Percentage of requests (0..=100) answered with `abort_status`; default 0.
    pub abort_percent: f64,
    /// Status of an injected abort; default 503.
    pub abort_status: StatusCode,
    /// Percentage of requests (0..=100) delayed by `delay`; default 0.
    pub delay_percent: f64,
    /// Injected delay; default 0ms.
    pub delay: Duration,
    /// Whether a request may switch faults on itself with a request header; default false.
    pub allow_header: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            abort_percent: 0.0,
            abort_status: StatusCode::SERVICE_UNAVAILABLE,
            delay_percent: 0.0,
            delay: Duration::ZERO,
            allow_header: false,
        }
    }
}

/// Wraps a service in [`Fault`]. Clones share the settings.
///
/// Each request is delayed by `delay` with probability `delay_percent` %, then aborted with
/// `abort_status` (`x-weir-error: fault-injected`, the inner service never called) with
/// probability `abort_percent` %; a request both delayed and aborted is answered after the
/// delay, as Envoy does. With `allow_header = true` a request may also ask for faults itself:
/// `x-weir-fault-abort: <status 100..=599>` aborts it and `x-weir-fault-delay: <duration such as
/// "250ms", at most 60s>` delays it, instead of the random draws. Those headers are meant for
/// this hop, so such a route removes them before forwarding; a value it cannot use is ignored
/// (logged at debug) and removed too. With `allow_header = false` the headers have no effect and
/// pass through untouched. A route with nothing to inject (the default) costs one branch.
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

pin_project! {
    /// The future of [`Fault`]: the inner service's, after an injected delay if any, or a ready
    /// `fault-injected` error.
    pub struct ResponseFuture<S: Service<Request>> {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request>> {
        Call { #[pin] inner: S::Future },
        // Rare (an injected delay): boxed, so the common future stays small.
        Delayed { inner: Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>> },
        Aborted { status: StatusCode },
    }
}

/// The route's fault settings; only built when there is something to inject.
#[derive(Debug)]
struct Armed {
    abort_percent: f64,
    abort_status: StatusCode,
    delay_percent: f64,
    delay: Duration,
    allow_header: bool,
}

// === impl FaultLayer ===

impl FaultLayer {
    /// The faults of one route; a config that injects nothing (both percentages 0 and
    /// `allow_header = false`) makes a pure pass-through.
    pub(crate) fn new(cfg: &Settings) -> Self {
        let delays = cfg.delay_percent > 0.0 && !cfg.delay.is_zero();
        let active = cfg.abort_percent > 0.0 || delays || cfg.allow_header;
        let settings = active.then(|| {
            Arc::new(Armed {
                abort_percent: cfg.abort_percent,
                abort_status: cfg.abort_status,
                delay_percent: if delays { cfg.delay_percent } else { 0.0 },
                delay: cfg.delay,
                allow_header: cfg.allow_header,
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
        let (mut abort, mut delay) = if s.allow_header {
            from_headers(req.headers_mut())
        } else {
            (None, None)
        };
        if delay.is_none() && s.delay_percent > 0.0 && draw(s.delay_percent) {
            delay = Some(s.delay);
        }
        if abort.is_none() && s.abort_percent > 0.0 && draw(s.abort_percent) {
            abort = Some(s.abort_status);
        }
        let state = match (delay, abort) {
            (None, None) => return ResponseFuture::call(self.inner.call(req)),
            (None, Some(status)) => State::Aborted { status },
            (Some(delay), abort) => {
                let inner = self.inner.clone();
                State::Delayed {
                    inner: Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        match abort {
                            Some(status) => Err(ProxyError::FaultInjected { status }),
                            None => inner.oneshot(req).await,
                        }
                    }),
                }
            }
        };
        ResponseFuture { state }
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
            StateProj::Delayed { inner } => inner.as_mut().poll(cx),
            StateProj::Aborted { status } => {
                Poll::Ready(Err(ProxyError::FaultInjected { status: *status }))
            }
        }
    }
}

// === helpers ===

/// True with probability `percent` % (0..=100).
fn draw(percent: f64) -> bool {
    rand::rng().random::<f64>() * 100.0 < percent
}

/// The abort and delay a request asks for, removing both headers (all their values).
fn from_headers(headers: &mut HeaderMap) -> (Option<StatusCode>, Option<Duration>) {
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
            tracing::debug!(value = ?v, "ignoring x-weir-fault-delay: not a duration up to 60s");
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

/// Reads an `x-weir-fault-delay` value: a humantime duration such as `250ms`, at most 60 s;
/// `None` otherwise.
pub fn parse_delay(v: &HeaderValue) -> Option<Duration> {
    humantime::parse_duration(v.to_str().ok()?.trim())
        .ok()
        .filter(|d| *d <= MAX_HEADER_DELAY)
}

/// The longest delay a request may ask for with `x-weir-fault-delay`.
const MAX_HEADER_DELAY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::http::Body;

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
            std::future::ready(Ok(Response::new(Body::empty())))
        }
    }

    fn fault(cfg: Settings) -> (Fault<Leaf>, Leaf) {
        let leaf = Leaf::default();
        (FaultLayer::new(&cfg).layer(leaf.clone()), leaf)
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
            delay: Duration::from_millis(1),
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
            delay: Duration::from_millis(250),
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
            delay: Duration::from_secs(2),
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
            Some(MAX_HEADER_DELAY)
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
            .layer(FaultLayer::new(&Settings {
                allow_header: true,
                ..Settings::default()
            }))
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
}
