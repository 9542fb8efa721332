//! The route's total deadline: every try and every backoff of a request must finish within it.
//!
//! Position: outermost layer of each route target's stack ([`crate::route::build`]).
//! Config: `routes[].timeout`. Expiry answers 504 `upstream-timeout` and drops (cancels) the
//! upstream request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::error::ProxyError;
use crate::http::{Request, Response};

/// Wraps a service in [`Deadline`].
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// A deadline of `timeout` per request; `Duration::ZERO` means none.
    pub fn new(timeout: Duration) -> Self {
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
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Deadline<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<Oneshot<S, Request>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone().oneshot(req);
        let sleep = (!self.timeout.is_zero()).then(|| tokio::time::sleep(self.timeout));
        ResponseFuture {
            inner,
            sleep: OptionSleep { sleep },
        }
    }
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
    async fn fast_answers_pass_and_zero_means_none() {
        let fast = service_fn(|_req: Request| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        });
        let svc = DeadlineLayer::new(Duration::ZERO).layer(fast);
        assert!(svc.oneshot(Request::new(Body::empty())).await.is_ok());
    }
}
