//! The route's total deadline: every try and every backoff of a request must finish within it.
//! An inbound `x-weir-deadline-ms` (a weir or a client further up the chain) lowers it, so a
//! chain of proxies shares one budget; so does a gRPC call's `grpc-timeout` (every unit, `H`
//! to `n`), which each try then carries on with the time left (`resilience::timeout`).
//!
//! Position: outermost layer of each route target's stack ([`crate::route::build`]); it writes
//! the deadline into [`RequestContext`] for the retry and per-try layers below. Config:
//! `routes[].timeout`. Expiry answers 504 `upstream-timeout` and drops (cancels) the upstream
//! request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use tokio::time::Instant;

use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::grpc::{self, GRPC_TIMEOUT};
use crate::http::{Request, Response, X_WEIR_DEADLINE_MS};

/// Wraps a service in [`Deadline`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// A deadline of `timeout` per request; `Duration::ZERO` means none (then only an inbound
    /// `x-weir-deadline-ms` sets one).
    pub(crate) fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(crate) struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Every stage below is always ready; asking costs nothing and keeps tower's contract.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let now = Instant::now();
        let inbound = req
            .headers_mut()
            .remove(&X_WEIR_DEADLINE_MS)
            .and_then(|v| parse_deadline_ms(&v));
        // A gRPC call's own deadline; the try below sends what is left of it on.
        let grpc = req
            .extensions()
            .get::<RequestContext>()
            .is_some_and(|c| c.grpc);
        let asked = if grpc {
            let t = req.headers_mut().remove(&GRPC_TIMEOUT);
            min(inbound, t.and_then(|v| grpc::parse_timeout(&v)))
        } else {
            inbound
        };
        let own = (!self.timeout.is_zero()).then_some(self.timeout);
        let budget = min(own, asked);
        // A far-off inbound value that overflows the clock means no deadline, not a panic.
        let deadline = budget.and_then(|b| now.checked_add(b));
        if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
            ctx.deadline = deadline;
        }
        let inner = self.inner.call(req);
        let sleep = deadline.map(tokio::time::sleep_until);
        ResponseFuture {
            inner,
            sleep: OptionSleep { sleep },
        }
    }
}

/// The sooner of two optional durations.
fn min(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads an `x-weir-deadline-ms` value: whole milliseconds (ASCII digits, surrounding spaces
/// allowed) as a duration; `None` when unreadable.
pub fn parse_deadline_ms(v: &HeaderValue) -> Option<Duration> {
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

pin_project! {
    /// The future of [`Deadline`]: the inner future, or `upstream-timeout` at the deadline.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: OptionSleep,
    }
}

pin_project! {
    struct OptionSleep {
        #[pin]
        sleep: Option<tokio::time::Sleep>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.sleep.project().sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ProxyError::UpstreamTimeout)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt;
    use tower::service_fn;

    use super::*;
    use crate::http::Body;

    #[tokio::test(start_paused = true)]
    async fn expires_with_upstream_timeout() {
        let slow = service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        });
        let svc = DeadlineLayer::new(Duration::from_secs(2)).layer(slow);
        let started = tokio::time::Instant::now();
        let err = svc.oneshot(Request::new(Body::empty())).await.unwrap_err();
        assert_eq!(err.reason(), "upstream-timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_inbound_deadline_lowers_it_and_reaches_the_context() {
        let seen = service_fn(|req: Request| async move {
            let ctx = req.extensions().get::<RequestContext>().cloned();
            let header = req.headers().get(&X_WEIR_DEADLINE_MS).cloned();
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ProxyError>(Response::new(Body::full(format!("{ctx:?}{header:?}"))))
        });
        let svc = DeadlineLayer::new(Duration::from_secs(5)).layer(seen);
        let mut req = Request::new(Body::empty());
        req.headers_mut().insert(
            X_WEIR_DEADLINE_MS.clone(),
            http::HeaderValue::from_static("1500"),
        );
        let started = Instant::now();
        let err = svc.clone().oneshot(req).await.unwrap_err();
        assert_eq!(err.reason(), "upstream-timeout");
        assert_eq!(started.elapsed(), Duration::from_millis(1500));

        // The context gets the deadline; the inbound header does not go further as it was.
        let probe = service_fn(|req: Request| async move {
            let ctx = req.extensions().get::<RequestContext>().cloned();
            assert!(req.headers().get(&X_WEIR_DEADLINE_MS).is_none());
            let left = ctx.and_then(|c| c.deadline).map(|d| d - Instant::now());
            assert_eq!(left, Some(Duration::from_millis(200)));
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        });
        let svc = DeadlineLayer::new(Duration::ZERO).layer(probe);
        let mut req = Request::new(Body::empty());
        req.headers_mut().insert(
            X_WEIR_DEADLINE_MS.clone(),
            http::HeaderValue::from_static("200"),
        );
        req.extensions_mut().insert(RequestContext::new(
            [127, 0, 0, 1].into(),
            "r".into(),
            crate::http::context::Priority::Default,
        ));
        assert!(svc.oneshot(req).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_timeout_lowers_the_deadline_of_a_grpc_call_only() {
        let probe = service_fn(|req: Request| async move {
            let ctx = req.extensions().get::<RequestContext>().cloned();
            let left = ctx.and_then(|c| c.deadline).map(|d| d - Instant::now());
            let header = req.headers().get(&GRPC_TIMEOUT).cloned();
            Ok::<_, ProxyError>(Response::new(Body::full(format!("{left:?} {header:?}"))))
        });
        let svc = DeadlineLayer::new(Duration::from_secs(5)).layer(probe);
        let call = |grpc: bool, timeout: &'static str, weir_ms: Option<&'static str>| {
            let mut req = Request::new(Body::empty());
            req.headers_mut()
                .insert(GRPC_TIMEOUT.clone(), HeaderValue::from_static(timeout));
            if let Some(ms) = weir_ms {
                req.headers_mut()
                    .insert(X_WEIR_DEADLINE_MS.clone(), HeaderValue::from_static(ms));
            }
            let mut ctx = RequestContext::new(
                [127, 0, 0, 1].into(),
                "r".into(),
                crate::http::context::Priority::Default,
            );
            ctx.grpc = grpc;
            req.extensions_mut().insert(ctx);
            let svc = svc.clone();
            async move {
                use http_body_util::BodyExt;
                let resp = svc.oneshot(req).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            }
        };
        // The header is taken: each try sends what is left (`resilience::timeout`).
        assert_eq!(call(true, "200m", None).await, "Some(200ms) None");
        assert_eq!(call(true, "1S", Some("300")).await, "Some(300ms) None");
        assert_eq!(call(true, "1H", None).await, "Some(5s) None");
        assert_eq!(call(true, "bogus", None).await, "Some(5s) None");
        // Not a gRPC call: the header means nothing and passes as it came.
        assert_eq!(call(false, "200m", None).await, "Some(5s) Some(\"200m\")");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_answers_pass_and_zero_means_none() {
        let fast = service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        });
        let svc = DeadlineLayer::new(Duration::ZERO).layer(fast);
        assert!(svc.oneshot(Request::new(Body::empty())).await.is_ok());
    }
}
