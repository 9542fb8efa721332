//! The per-try timeout, and the deadline each try carries upstream in `x-weir-deadline-ms`
//! (and, for a gRPC call, in `grpc-timeout`, which gRPC servers read).
//!
//! Position: innermost layer of every upstream stack, just above the forwarding leaf (see
//! [`crate::upstream::build`]). Config: `upstreams.<name>.try_timeout`. Metrics: none (an
//! expired try is counted by the retry layer and the request metrics).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::grpc::{self, GRPC_TIMEOUT};
use crate::http::{Request, Response, X_WEIR_DEADLINE_MS};

/// Wraps a service in [`AttemptTimeout`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptTimeoutLayer {
    timeout: Duration,
}

impl AttemptTimeoutLayer {
    /// Each try gets at most `timeout`; `Duration::ZERO` means only the route deadline bounds it.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;
    fn layer(&self, inner: S) -> AttemptTimeout<S> {
        AttemptTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// Bounds one try by `try_timeout` (expiry: `upstream-timeout`, which the retry layer above may
/// retry) and tells the upstream how long it has: the sooner of the try's end and the route
/// deadline, in whole milliseconds, in `x-weir-deadline-ms`.
#[derive(Clone, Debug)]
pub(crate) struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for AttemptTimeout<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let now = Instant::now();
        let try_end = (!self.timeout.is_zero())
            .then(|| now.checked_add(self.timeout))
            .flatten();
        let ctx = req.extensions().get::<RequestContext>();
        let route_end = ctx.and_then(|c| c.deadline);
        let grpc = ctx.is_some_and(|c| c.grpc);
        let end = match (try_end, route_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
            ctx.try_end = end;
        }
        if let Some(end) = end {
            let left = end.saturating_duration_since(now);
            if left.is_zero() {
                return ResponseFuture {
                    state: State::Expired,
                    inner: None,
                    sleep: None,
                };
            }
            let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
            req.headers_mut()
                .insert(X_WEIR_DEADLINE_MS.clone(), millis_value(ms));
            if grpc {
                req.headers_mut()
                    .insert(GRPC_TIMEOUT.clone(), grpc::format_timeout(left));
            }
        } else {
            req.headers_mut().remove(&X_WEIR_DEADLINE_MS);
        }
        ResponseFuture {
            state: State::Running,
            inner: Some(self.inner.call(req)),
            // Boxed: only upstreams with a `try_timeout` pay for the timer's room.
            sleep: try_end.map(|end| Box::pin(tokio::time::sleep_until(end))),
        }
    }
}

thread_local! {
    /// The last `x-weir-deadline-ms` value made on this thread. Fast requests under one route
    /// timeout mostly send the same few values, and a cached one is shared, not allocated.
    static LAST_MILLIS: std::cell::RefCell<Option<(u64, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ms` as a header value, reusing the last one made on this thread when it is the same.
fn millis_value(ms: u64) -> HeaderValue {
    LAST_MILLIS.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return HeaderValue::from(ms);
        };
        match &*last {
            Some((cached, value)) if *cached == ms => value.clone(),
            _ => {
                let value = HeaderValue::from(ms);
                *last = Some((ms, value.clone()));
                value
            }
        }
    })
}

pin_project! {
    /// The future of [`AttemptTimeout`].
    pub struct ResponseFuture<F> {
        state: State,
        #[pin]
        inner: Option<F>,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

enum State {
    Running,
    Expired,
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let State::Expired = this.state {
            return Poll::Ready(Err(ProxyError::UpstreamTimeout));
        }
        if let Some(inner) = this.inner.as_pin_mut()
            && let Poll::Ready(out) = inner.poll(cx)
        {
            return Poll::Ready(out);
        }
        match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ProxyError::UpstreamTimeout)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::http::Body;
    use crate::http::context::Priority;

    fn slow(secs: u64) -> impl Service<Request, Response = Response, Error = ProxyError> + Clone {
        service_fn(move |req: Request| async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let mut resp = Response::new(Body::empty());
            if let Some(v) = req.headers().get(&X_WEIR_DEADLINE_MS) {
                resp.headers_mut()
                    .insert(X_WEIR_DEADLINE_MS.clone(), v.clone());
            }
            Ok(resp)
        })
    }

    fn with_deadline(in_: Duration) -> Request {
        let mut req = Request::new(Body::empty());
        let mut ctx = RequestContext::new([127, 0, 0, 1].into(), Arc::from("r"), Priority::Default);
        ctx.deadline = Some(Instant::now() + in_);
        req.extensions_mut().insert(ctx);
        req
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_call_is_told_its_time_left_in_grpc_timeout_too() {
        let echo = service_fn(|req: Request| async move {
            let seen = req.headers().get(&GRPC_TIMEOUT).cloned();
            Ok::<_, ProxyError>(Response::new(Body::full(format!("{seen:?}"))))
        });
        let svc = AttemptTimeoutLayer::new(Duration::ZERO).layer(echo);
        let body = |resp: Response| async {
            use http_body_util::BodyExt;
            resp.into_body().collect().await.unwrap().to_bytes()
        };
        let mut req = with_deadline(Duration::from_millis(1500));
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(body(resp).await, "None", "not a gRPC call");
        req = with_deadline(Duration::from_millis(1500));
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
            ctx.grpc = true;
        }
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(body(resp).await, "Some(\"1500000u\")");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_try_times_out_after_try_timeout() {
        let svc = AttemptTimeoutLayer::new(Duration::from_millis(300)).layer(slow(5));
        let started = Instant::now();
        let err = svc.oneshot(Request::new(Body::empty())).await.unwrap_err();
        assert_eq!(err.reason(), "upstream-timeout");
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstream_is_told_the_sooner_of_try_and_route_deadline() {
        let svc = AttemptTimeoutLayer::new(Duration::from_secs(2)).layer(slow(0));
        let resp = svc
            .clone()
            .oneshot(with_deadline(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(resp.headers()[&X_WEIR_DEADLINE_MS], "2000");
        let resp = svc
            .oneshot(with_deadline(Duration::from_millis(750)))
            .await
            .unwrap();
        assert_eq!(resp.headers()[&X_WEIR_DEADLINE_MS], "750");
        let none = AttemptTimeoutLayer::new(Duration::ZERO).layer(slow(0));
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .insert(X_WEIR_DEADLINE_MS.clone(), HeaderValue::from_static("99"));
        let resp = none.oneshot(req).await.unwrap();
        assert!(resp.headers().get(&X_WEIR_DEADLINE_MS).is_none());
    }

    #[test]
    fn millis_values_are_right_whether_cached_or_not() {
        for ms in [1, 1, 15_000, 15_000, 14_999, 1] {
            assert_eq!(millis_value(ms), HeaderValue::from(ms));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_time_left_fails_at_once_without_calling_the_upstream() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let leaf = service_fn(move |_req: Request| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, ProxyError>(Response::new(Body::empty())) }
        });
        let svc = AttemptTimeoutLayer::new(Duration::ZERO).layer(leaf);
        let req = with_deadline(Duration::ZERO);
        let err = svc.oneshot(req).await.unwrap_err();
        assert_eq!(err.reason(), "upstream-timeout");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
