//! The futures of [`super::Retry`], one kind per request shape: the inner call untouched when
//! retries are off; for a request with an empty body, its first try polled inline with what a
//! retry needs set aside; otherwise the boxed loop that buffers the body and runs every try.
//!
//! Position: returned by `Retry::call`; each try is judged by the layer's shared state (policy,
//! backoff, deadline, budget). Config: `retry.max_body` (through the layer). Metrics: none here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::replay::Replay;
use super::template::Template;
use super::{Shared, hedge};
use crate::error::ProxyError;
use crate::http::{Body, Request, Response};

pin_project! {
    /// The future of [`Retry`](super::Retry): the inner future itself when retries are off
    /// (no allocation), else the boxed retry loop.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // `max_retries = 0`: the inner call, untouched.
        Direct {
            #[pin]
            inner: F,
        },
        // A request with an empty body: its first try runs inline; what a retry needs waits
        // in `rest` (one small allocation), and the retries become `Retrying`.
        First {
            #[pin]
            inner: F,
            rest: Option<Box<dyn RetryLater>>,
        },
        // Every try, backoff and budget decision of one request.
        Retrying {
            inner: BoxFuture,
        },
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>>;

// === impl ResponseFuture ===

impl<F> ResponseFuture<F> {
    /// Retries off (`max_retries = 0`): the inner call `inner`, untouched.
    pub(super) fn direct(inner: F) -> Self {
        Self {
            kind: Kind::Direct { inner },
        }
    }

    /// A request with a body: buffer it for replay, then try as often as the layer allows.
    pub(super) fn buffering<S>(shared: Arc<Shared>, svc: S, req: Request) -> Self
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
        S::Future: Send,
    {
        Self {
            kind: Kind::Retrying {
                inner: Box::pin(run(shared, svc, req)),
            },
        }
    }

    /// A request with an empty body: nothing to buffer, so its first try is called on `svc`
    /// (which the caller has driven ready) now and polled inline.
    pub(super) fn first_inline<S>(shared: &Arc<Shared>, svc: &mut S, req: Request) -> Self
    where
        S: Service<Request, Future = F, Response = Response, Error = ProxyError>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let started = Instant::now();
        shared.budget.deposit(started);
        let (mut head, body) = req.into_parts();
        let (template, extensions) = Template::new(shared, &mut head, Bytes::new());
        head.extensions = extensions;
        let rest: Box<dyn RetryLater> = Box::new(Rest {
            shared: shared.clone(),
            svc: svc.clone(),
            template,
            started,
        });
        Self {
            kind: Kind::First {
                inner: svc.call(Request::from_parts(head, body)),
                rest: Some(rest),
            },
        }
    }

    /// Whether this is the untouched inner call (retries off).
    #[cfg(test)]
    pub(super) fn is_direct(&self) -> bool {
        matches!(self.kind, Kind::Direct { .. })
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let retries = match self.as_mut().project().kind.project() {
                KindProj::Direct { inner } => return inner.poll(cx),
                KindProj::Retrying { inner } => return inner.as_mut().poll(cx),
                KindProj::First { inner, rest } => {
                    let result = ready!(inner.poll(cx));
                    match rest.take().and_then(|rest| rest.after_first(&result)) {
                        None => return Poll::Ready(result),
                        Some(retries) => {
                            // The failed answer (and its connection) is released before the
                            // backoff.
                            drop(result);
                            retries
                        }
                    }
                }
            };
            self.as_mut()
                .project()
                .kind
                .set(Kind::Retrying { inner: retries });
        }
    }
}

/// What the inline first try of a request with an empty body keeps for a retry.
struct Rest<S> {
    shared: Arc<Shared>,
    svc: S,
    template: Template,
    started: Instant,
}

/// The part of [`Rest`] the future sees, with the service type erased.
trait RetryLater: Send {
    /// Judges the first try's `result`: the retries to run instead of answering with it, or
    /// `None` to answer.
    fn after_first(self: Box<Self>, result: &Result<Response, ProxyError>) -> Option<BoxFuture>;
}

impl<S> RetryLater for Rest<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    fn after_first(self: Box<Self>, result: &Result<Response, ProxyError>) -> Option<BoxFuture> {
        let Rest {
            shared,
            svc,
            template,
            started,
        } = *self;
        let delay = shared.after_try(result, 0, &template, started)?;
        Some(Box::pin(retries(shared, svc, template, delay)))
    }
}

/// A request with a body: buffer it for replay (or stream it, never retried), then try.
async fn run<S>(shared: Arc<Shared>, inner: S, req: Request) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    let (mut head, body) = req.into_parts();
    let started = Instant::now();
    shared.budget.deposit(started);
    let bytes = match Replay::prepare(body, shared.max_body).await? {
        Replay::Buffered(bytes) => bytes,
        Replay::Streaming(body) => {
            // Too large to replay: one try, never retried.
            let result = inner.oneshot(Request::from_parts(head, body)).await;
            shared.latency.record(Instant::now(), started.elapsed());
            return result;
        }
    };
    let (template, extensions) = Template::new(&shared, &mut head, bytes.clone());
    head.extensions = extensions;
    let first = Request::from_parts(head, Body::full(bytes));
    let started = Instant::now();
    let result = one_try(&shared, inner.clone(), &template, first).await;
    match shared.after_try(&result, 0, &template, started) {
        None => result,
        Some(delay) => {
            drop(result);
            retries(shared, inner, template, delay).await
        }
    }
}

/// One try of the request of `t`: hedged when the upstream hedges, the request may be sent
/// twice and a hedge delay is in force ([`super::hedge`]), else a plain call.
async fn one_try<S>(
    shared: &Shared,
    inner: S,
    t: &Template,
    req: Request,
) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    if let Some(h) = &shared.hedging
        && t.may_resend
        && let Some(delay) = h.delay(&shared.latency, Instant::now())
    {
        return hedge::hedged(shared, h, inner, t, req, delay).await;
    }
    inner.oneshot(req).await
}

/// The retries of one request, the first after `delay`: back off, try, judge, again.
async fn retries<S>(
    shared: Arc<Shared>,
    inner: S,
    template: Template,
    mut delay: Duration,
) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut retry = 0u32;
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        retry += 1;
        let started = Instant::now();
        let result = one_try(&shared, inner.clone(), &template, template.retry_request()).await;
        match shared.after_try(&result, retry, &template, started) {
            None => return result,
            Some(next) => {
                // The failed answer (and its connection) is released before waiting.
                drop(result);
                delay = next;
            }
        }
    }
}
