//! The leaf of every upstream stack: pick an endpoint from the upstream's endpoint set with its
//! balancer (avoiding the one the previous try of the same request used), send through that
//! endpoint's connection ([`crate::upstream::client`]), and record on the endpoint how the try
//! went: in flight, latency (peak EWMA), pushback from `Retry-After`, and the verdict outlier
//! detection counts.
//!
//! Every try sent counts once in `weir_upstream_attempts_total{upstream,outcome}`: `response`
//! when a head came back, the `x-weir-error` token of a failure (`upstream-connect`,
//! `upstream-reset`, `upstream-tls`, `payload-too-large`, `bad-request`), `upstream-timeout`
//! when `read_timeout` expired before the head or the try was dropped at its deadline (the
//! per-try timeout or the route's), and `cancelled` when it was dropped before its deadline
//! (the client went away).
//!
//! Position: step 6 of the walk. Config: `upstreams.<name>.endpoints`, `dns`, `balance`,
//! `hash_on`, `protocol`, `read_timeout`. Metrics: `weir_upstream_attempts_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::Frame;
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::error::BoxError;
use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::grpc::{self, Code, CodeSet};
use crate::http::{Body, BodyReadTimeout, Request, Response, Watch, Watched, retry_after};
use crate::metrics::{Metrics, UPSTREAM_ATTEMPTS_TOTAL};
use crate::upstream::Settings as UpstreamConfig;
use crate::upstream::balance::Balancer;
use crate::upstream::client::SendFuture;
use crate::upstream::endpoints::{Endpoint, EndpointSet, Verdict};
use crate::upstream::read_timeout::{Progress, ReadTimeout};

/// Sends a request to one endpoint of the upstream. Always ready; clones share state.
#[derive(Clone, Debug)]
pub(crate) struct Forward {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    set: EndpointSet,
    balancer: Balancer,
    outcomes: Outcomes,
    read_timeout: Duration,
    /// The gRPC codes outlier detection counts as gateway failures.
    grpc_failures: CodeSet,
}

/// `weir_upstream_attempts_total` handles, one per outcome (a closed set).
#[derive(Debug)]
struct Outcomes {
    response: Counter,
    connect: Counter,
    reset: Counter,
    tls: Counter,
    too_large: Counter,
    bad_request: Counter,
    timeout: Counter,
    cancelled: Counter,
}

impl Forward {
    /// The leaf for upstream `cfg` over its endpoint set.
    pub(crate) fn new(cfg: &UpstreamConfig, set: EndpointSet, metrics: &Metrics) -> Self {
        let up = || ("upstream", cfg.name.clone());
        let outcome = |o: &'static str| {
            metrics.counter(UPSTREAM_ATTEMPTS_TOTAL, &[up(), ("outcome", Arc::from(o))])
        };
        let shared = Shared {
            balancer: Balancer::new(cfg.balance, &cfg.hash_on, cfg.outlier.ramp),
            set,
            outcomes: Outcomes {
                response: outcome("response"),
                connect: outcome("upstream-connect"),
                reset: outcome("upstream-reset"),
                tls: outcome("upstream-tls"),
                too_large: outcome("payload-too-large"),
                bad_request: outcome("bad-request"),
                timeout: outcome("upstream-timeout"),
                cancelled: outcome("cancelled"),
            },
            read_timeout: cfg.read_timeout,
            grpc_failures: cfg.grpc.failures(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Picks the endpoint for `req` and starts the try on it.
    fn start(&self, mut req: Request) -> Result<ResponseFuture, ProxyError> {
        let ctx = req.extensions().get::<RequestContext>();
        let memo = ctx.and_then(|c| c.last_endpoint.clone());
        let client = ctx.map(|c| c.client);
        let deadline = ctx.and_then(|c| c.try_end.or(c.deadline));
        let grpc = ctx.is_some_and(|c| c.grpc);
        let avoid = memo.as_ref().map(|m| m.load(Ordering::Relaxed));
        let snap = self.shared.set.load();
        let i = self
            .shared
            .balancer
            .pick(&snap, &req, client, avoid)
            .ok_or(ProxyError::NoHealthyEndpoint)?;
        let endpoint = snap.get(i).ok_or(ProxyError::NoHealthyEndpoint)?.clone();
        drop(snap);
        if let Some(m) = &memo {
            m.store(i, Ordering::Relaxed);
        }
        endpoint.begin();
        let try_ = Try {
            endpoint,
            started: Instant::now(),
            ended: false,
        };
        let read_timeout = self.shared.read_timeout;
        let progress = (!read_timeout.is_zero() && !http_body::Body::is_end_stream(req.body()))
            .then(|| {
                let p = Progress::new(try_.started);
                let body = std::mem::take(req.body_mut());
                *req.body_mut() = p.track(body);
                p
            });
        match try_.endpoint.conn().send(req) {
            Ok(fut) => Ok(ResponseFuture {
                state: State::Sending {
                    fut,
                    shared: self.shared.clone(),
                    try_,
                    deadline,
                    progress,
                    grpc,
                },
                timer: None,
            }),
            Err(e) => {
                try_.end(Verdict::Unjudged, None);
                Err(e)
            }
        }
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        self.start(req).unwrap_or_else(|e| ResponseFuture {
            state: State::Failed(Some(e)),
            timer: None,
        })
    }
}

/// A try on one endpoint: its in-flight count is held until the try ends or is dropped.
struct Try {
    endpoint: Arc<Endpoint>,
    started: Instant,
    ended: bool,
}

impl Try {
    fn end(mut self, verdict: Verdict, pushback: Option<std::time::Duration>) {
        self.ended = true;
        self.endpoint.end(self.started.elapsed(), verdict, pushback);
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        // Abandoned (per-try timeout, deadline, client gone): the time it took still counts
        // as latency; the endpoint is not judged.
        if !self.ended {
            self.endpoint
                .end(self.started.elapsed(), Verdict::Unjudged, None);
        }
    }
}

/// How a try's result counts for outlier detection, and the pushback it carries. A gRPC call
/// (`grpc_failures`: the codes that count as failures) is judged by its code, when its head has it;
/// else [`Verdict::Later`], by its trailers.
fn judge(
    result: &Result<Response, ProxyError>,
    grpc_failures: Option<&CodeSet>,
) -> (Verdict, Option<std::time::Duration>) {
    match result {
        Ok(resp) => {
            let status = resp.status();
            let verdict = match grpc_failures.map(|f| (f, grpc::head_code(status, resp.headers())))
            {
                Some((failures, Some(code))) => Verdict::of_grpc(code, failures),
                Some((_, None)) => Verdict::Later,
                None => match status {
                    StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT => Verdict::GatewayFailure,
                    _ => Verdict::Success,
                },
            };
            let pushback = match status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    retry_after::delay(resp.headers())
                }
                _ => None,
            };
            (verdict, pushback)
        }
        Err(
            ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamTls(_),
        ) => (Verdict::GatewayFailure, None),
        Err(_) => (Verdict::Unjudged, None),
    }
}

/// Judges a gRPC try by the `grpc-status` of its trailers (none: `UNKNOWN`) when its body
/// ends; a body that breaks off is a gateway failure, unless `read_timeout` cut it (not
/// judged, as a timeout before the head is not); one dropped unread is not judged.
struct GrpcVerdict {
    endpoint: Option<Arc<Endpoint>>,
    failures: CodeSet,
}

impl Watch for GrpcVerdict {
    fn polled(
        &mut self,
        _: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        _: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let verdict = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(|t| {
                Verdict::of_grpc(grpc::status_of(t).unwrap_or(Code::Unknown), &self.failures)
            }),
            Poll::Ready(None) => Some(Verdict::of_grpc(Code::Unknown, &self.failures)),
            Poll::Ready(Some(Err(e))) if e.is::<BodyReadTimeout>() => Some(Verdict::Unjudged),
            Poll::Ready(Some(Err(_))) => Some(Verdict::GatewayFailure),
            Poll::Pending => None,
        };
        if let Some(v) = verdict
            && let Some(e) = self.endpoint.take()
        {
            e.judge(v);
        }
        polled
    }
}

pin_project! {
    /// The future of [`Forward`]. Dropping it cancels the upstream request (an HTTP/1.1
    /// exchange dropped before its end closes its connection; HTTP/2 resets the stream).
    pub struct ResponseFuture {
        state: State,
        // The `read_timeout` wait for the head: armed when the head is first waited for.
        #[pin]
        timer: Option<Sleep>,
    }

    impl PinnedDrop for ResponseFuture {
        fn drop(this: Pin<&mut Self>) {
            // A try dropped before its head still went out: count it, as a timeout when its
            // deadline had passed.
            if let State::Sending { shared, deadline, .. } = &this.state {
                let o = &shared.outcomes;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    o.timeout.increment(1);
                } else {
                    o.cancelled.increment(1);
                }
            }
        }
    }
}

enum State {
    Sending {
        fut: SendFuture,
        shared: Arc<Shared>,
        try_: Try,
        /// When the try's time is up (its per-try timeout or the route deadline).
        deadline: Option<Instant>,
        /// The request body's progress, when it has one and `read_timeout` applies.
        progress: Option<Arc<Progress>>,
        /// Whether the request is a gRPC call, judged by its `grpc-status`.
        grpc: bool,
    },
    Failed(Option<ProxyError>),
}

impl Future for ResponseFuture {
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = match &mut *this.state {
            State::Failed(err) => {
                return Poll::Ready(Err(err.take().unwrap_or(ProxyError::NoHealthyEndpoint)));
            }
            State::Sending {
                fut,
                shared,
                try_,
                deadline,
                progress,
                ..
            } => match fut.as_mut().poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let timeout = shared.read_timeout;
                    if timeout.is_zero() {
                        return Poll::Pending;
                    }
                    let at = match progress {
                        Some(p) => p.deadline(timeout),
                        None => try_.started + timeout,
                    };
                    let mut timer = this.timer.as_mut();
                    match timer.as_mut().as_pin_mut() {
                        Some(t) if t.deadline() != at => t.reset(at),
                        Some(_) => {}
                        // The try's deadline comes first: the timer of the stage that set it
                        // (the per-try timeout, the route deadline) ends the try then, which
                        // this future counts as a timeout when dropped. With the defaults
                        // (`read_timeout` 1m, route `timeout` 15s) that is every try, which
                        // so arms one timer instead of two.
                        None if deadline.is_some_and(|d| d <= at) => return Poll::Pending,
                        None => timer.set(Some(tokio::time::sleep_until(at))),
                    }
                    match timer.as_pin_mut().map(|t| t.poll(cx)) {
                        Some(Poll::Ready(())) => Err(ProxyError::UpstreamTimeout),
                        _ => return Poll::Pending,
                    }
                }
            },
        };
        let State::Sending {
            shared, try_, grpc, ..
        } = std::mem::replace(&mut *this.state, State::Failed(None))
        else {
            return Poll::Ready(result);
        };
        let o = &shared.outcomes;
        match &result {
            Ok(_) => o.response.increment(1),
            Err(ProxyError::UpstreamConnect(_)) => o.connect.increment(1),
            Err(ProxyError::UpstreamTls(_)) => o.tls.increment(1),
            Err(ProxyError::PayloadTooLarge) => o.too_large.increment(1),
            Err(ProxyError::BadRequest(_)) => o.bad_request.increment(1),
            Err(ProxyError::UpstreamTimeout) => o.timeout.increment(1),
            Err(_) => o.reset.increment(1),
        }
        let (verdict, pushback) = judge(&result, grpc.then_some(&shared.grpc_failures));
        // A gRPC call whose status is still to come is judged when its trailers arrive.
        let later = (verdict == Verdict::Later).then(|| try_.endpoint.clone());
        try_.end(verdict, pushback);
        let timeout = shared.read_timeout;
        Poll::Ready(result.map(|mut resp| {
            if !timeout.is_zero() && !resp.body().is_buffered() {
                resp = resp.map(|body| Body::boxed(ReadTimeout::body(body, timeout)));
            }
            if let Some(endpoint) = later {
                let end = GrpcVerdict {
                    endpoint: Some(endpoint),
                    failures: shared.grpc_failures,
                };
                resp = resp.map(|body| Body::boxed(Watched::new(body, end)));
            }
            resp
        }))
    }
}
