//! HTTP vocabulary shared by every stage: the `Body` type, request/response aliases, header names.
//!
//! Position: used by every stage of the walk; holds no policy of its own.
//! Config: none. Metrics: none.

pub(crate) mod context;
pub(crate) mod grpc;
pub mod hygiene;
pub(crate) mod respond;
pub mod retry_after;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;

/// A request on weir's request path.
pub type Request = http::Request<Body>;
/// A response on weir's request path.
pub type Response = http::Response<Body>;

/// `x-weir-error`: the reason on every response weir produces itself.
pub(crate) static X_WEIR_ERROR: HeaderName = HeaderName::from_static("x-weir-error");
/// `x-request-id`: generated when absent, passed upstream and returned downstream.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-weir-deadline-ms`: the remaining deadline, shared along a chain of proxies.
pub(crate) static X_WEIR_DEADLINE_MS: HeaderName = HeaderName::from_static("x-weir-deadline-ms");
// `x-weir-priority`: a request may lower its route's priority (`default`, `sheddable`); read by
// the scan of `hygiene::Fields`, which matches names by their spelling.
/// `x-weir-fault-abort: <status>`: abort this request (routes with `fault.allow_header`).
pub(crate) static X_WEIR_FAULT_ABORT: HeaderName = HeaderName::from_static("x-weir-fault-abort");
/// `x-weir-fault-delay: <duration>`: delay this request (routes with `fault.allow_header`).
pub(crate) static X_WEIR_FAULT_DELAY: HeaderName = HeaderName::from_static("x-weir-fault-delay");
/// `idempotency-key`: marks a request safe to retry when the upstream allows it.
pub(crate) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// W3C trace context.
pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-forwarded-for`.
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `keep-alive` (hop-by-hop).
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection` (hop-by-hop, non-standard but common).
pub(crate) static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The body of every request and response weir handles.
///
/// An enum rather than a boxed trait object, so the common cases (a streamed hyper body, a
/// local reply) cost no allocation. `Default` is the empty body.
#[derive(Debug, Default)]
pub struct Body {
    kind: Kind,
}

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// A downstream request body: counted against the listener's limit, bounded by its idle
    /// timeout between frames, and its failures marked as the client's ([`RequestBodyError`],
    /// [`RequestBodyStalled`]).
    Request {
        inner: Incoming,
        remaining: u64,
        stall: StallTimer,
    },
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

/// The request body grew beyond the listener's `max_body_bytes` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub(crate) struct BodyTooLarge;

/// The upstream's response stopped arriving for `read_timeout` (written by
/// `upstream::read_timeout`; the server logs the broken body as `upstream-timeout`).
#[derive(Debug, thiserror::Error)]
#[error("upstream sent no response bytes for read_timeout")]
pub(crate) struct BodyReadTimeout;

/// The client sent no request body bytes for the listener's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client stopped sending the request body")]
pub(crate) struct RequestBodyStalled;

/// The request body could not be read from the client (malformed chunked encoding, a client
/// that went away mid-body): the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("request body could not be read from the client")]
pub(crate) struct RequestBodyError(#[source] hyper::Error);

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A body of one chunk.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Self::empty();
        }
        Self {
            kind: Kind::Full(Some(bytes)),
        }
    }

    /// Whether the whole body is already in hand (empty, or one buffer): polling it waits for
    /// nothing.
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self.kind, Kind::Empty | Kind::Full(_))
    }

    /// A streamed hyper body, passed through as it arrives.
    pub fn incoming(body: Incoming) -> Self {
        Self {
            kind: Kind::Incoming(body),
        }
    }

    /// A downstream request body, streamed: it fails with [`BodyTooLarge`] once more than
    /// `limit` bytes have passed (`limit = 0` means unlimited), with [`RequestBodyError`]
    /// when the client's bytes do not make a body, and with [`RequestBodyStalled`] when no
    /// bytes come for `idle` (zero: no limit).
    pub fn request(body: Incoming, limit: u64, idle: Duration) -> Self {
        let remaining = if limit == 0 { u64::MAX } else { limit };
        Self {
            kind: Kind::Request {
                inner: body,
                remaining,
                stall: StallTimer::new(idle),
            },
        }
    }

    /// Whether the whole body is in memory (empty, or one chunk): nothing of it is still to
    /// come from a peer, so no timer or slot needs to watch it arrive.
    pub(crate) fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Empty | Kind::Full(_))
    }

    /// Any other body, boxed.
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            Kind::Request {
                inner,
                remaining,
                stall,
            } => {
                let frame = match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => frame,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Some(Err(Box::new(RequestBodyError(e)))));
                    }
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending if stall.expired(cx) => {
                        return Poll::Ready(Some(Err(Box::new(RequestBodyStalled))));
                    }
                    Poll::Pending => return Poll::Pending,
                };
                stall.progressed();
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if len > *remaining {
                        *remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Kind::Boxed(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Incoming(inner) | Kind::Request { inner, .. } => inner.is_end_stream(),
            Kind::Boxed(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(inner) | Kind::Request { inner, .. } => inner.size_hint(),
            Kind::Boxed(inner) => inner.size_hint(),
        }
    }
}

/// What a [`Watched`] body does with each poll of the body it wraps.
pub(crate) trait Watch {
    /// The wrapped body's poll returned `polled` (`end`: it is at its end now); the wrapper
    /// yields what this returns.
    fn polled(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        end: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
}

/// A body that passes the frames of the body it wraps through a [`Watch`]: what a stage that
/// must see a response's end (a slot, a timer, the access log) puts around it.
#[derive(Debug)]
pub(crate) struct Watched<W> {
    inner: Body,
    watch: W,
}

impl<W> Watched<W> {
    /// `inner`, watched by `watch`.
    pub(crate) fn new(inner: Body, watch: W) -> Self {
        Self { inner, watch }
    }
}

impl<W: Watch + Unpin> http_body::Body for Watched<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let end = this.inner.is_end_stream();
        this.watch.polled(cx, polled, end)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Times the wait for a body's next frame: armed when the body is first waited for after a
/// frame (one clock read per wait, none per frame), boxed so bodies stay `Unpin` and a body
/// that never waits allocates nothing. Zero = no limit.
#[derive(Debug)]
pub(crate) struct StallTimer {
    timeout: Duration,
    progressed: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    /// A timer that fires after `timeout` without a frame.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            progressed: true,
            sleep: None,
        }
    }

    /// A frame arrived.
    pub(crate) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The body is pending: true once `timeout` has passed since its last frame (else the
    /// task is woken when it will have).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        if std::mem::take(&mut self.progressed) {
            let at = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_and_empty_bodies_collect() {
        let b = Body::full("hello").collect().await.unwrap().to_bytes();
        assert_eq!(b, "hello");
        let e = Body::empty();
        assert!(http_body::Body::is_end_stream(&e));
        assert!(http_body::Body::is_end_stream(&Body::full("")));
    }
}
