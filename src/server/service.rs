//! `ProxyService`: one request's walk, from the parsed head to the response. It loads the
//! generation once, runs hygiene, asks the router, calls the route target's stack, turns errors
//! into responses, records metrics and writes the access log (target `weir::access`).
//!
//! The request counts as in flight on its connection and for the drain, and its metrics and
//! access-log line are written, when its response body ends ([`ServedBody`]), not when the head
//! goes out: `duration_ms` covers the whole exchange, and a body the upstream stopped sending
//! (`read_timeout`) is logged with `reason = "upstream-timeout"` under the status already sent.
//!
//! An injected reset ([`InjectedReset`], from the route's fault layer) is the one error the
//! service returns: the request is recorded (`reason = "fault-injected"`, status 444) and
//! its guard released first, then hyper closes the HTTP/1 connection, or resets the HTTP/2
//! stream, without a response. Every other outcome is a response.
//!
//! Position: steps 2 and 8 of the walk (see the crate docs).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;

use http::header::CONNECTION;
use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::error::{BoxError, ProxyError};
use crate::generation::Generation;
use crate::http::context::{self, Priority, RequestContext};
use crate::http::grpc::{self, BodyEnd, Code};
use crate::http::{
    Body, BodyReadTimeout, Request, Response, TRACEPARENT, Watch, Watched, X_REQUEST_ID, hygiene,
    respond,
};
use crate::metrics::{REASON_DIRECT, REASON_UPSTREAM, REASON_UPSTREAM_BODY, RouteMetrics};
use crate::resilience::retry::hedge::Hedged;
use crate::route::fault::{InjectedReset, Truncated};
use crate::route::{Route, Target};
use crate::server::ListenerShared;
use crate::server::conn::ConnState;
use crate::telemetry::RequestTrace;

/// Serves the requests of one downstream connection.
#[derive(Clone, Debug)]
pub(crate) struct ProxyService {
    listener: Arc<ListenerShared>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` element, rendered once per connection.
    client: HeaderValue,
}

impl ProxyService {
    /// The service of a connection from `peer`.
    pub(crate) fn new(
        listener: Arc<ListenerShared>,
        conn: Arc<ConnState>,
        peer: SocketAddr,
    ) -> Self {
        let client = hygiene::client_value(peer.ip());
        Self {
            listener,
            conn,
            peer,
            client,
        }
    }
}

impl hyper::service::Service<http::Request<Incoming>> for ProxyService {
    type Response = http::Response<ServedBody>;
    type Error = InjectedReset;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, InjectedReset>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.conn.begin_request();
        self.listener.drain.begin();
        let guard = RequestGuard(self.conn.clone(), self.listener.clone());
        let (peer, client) = (self.peer, self.client.clone());
        Box::pin(handle(guard, peer, client, req))
    }
}

/// A response body on its way to the client. When it ends (or is dropped: the client went
/// away, or the connection was closed), its `Record` records the request's metrics, writes its
/// access-log line and marks the request finished on its connection and for the drain.
pub(crate) type ServedBody = Watched<Finish>;

/// The request's `Record`, finished once: when its response body ends or fails, or when the
/// body is dropped.
#[derive(Debug)]
pub(crate) struct Finish(Option<Record>);

/// What the access log and `weir_requests_total` say of one request, held until its body ends.
#[derive(Debug)]
struct Record {
    guard: RequestGuard,
    metrics: RouteMetrics,
    method: http::Method,
    route: Arc<str>,
    status: StatusCode,
    reason: &'static str,
    started: Instant,
    request_id: HeaderValue,
    client: std::net::IpAddr,
    /// A gRPC call's status, from the head, the trailers, or how its body ended.
    grpc: Grpc,
    /// Whether the response came from a hedge rather than the try it raced.
    hedged: bool,
}

/// What a record knows of a request's gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grpc {
    /// Not a gRPC call.
    No,
    /// A gRPC call whose status is still to come, in the trailers.
    Pending,
    /// A gRPC call's status.
    Code(Code),
}

impl Record {
    fn finish(mut self) {
        let elapsed = self.started.elapsed();
        let upstream: &str = self.metrics.upstream();
        // A stream that ended without a status is UNKNOWN, as a client reads it.
        let grpc = match self.grpc {
            Grpc::No => None,
            Grpc::Pending => Some(Code::Unknown),
            Grpc::Code(c) => Some(c),
        };
        self.metrics
            .record(self.status, self.reason, grpc, elapsed.as_secs_f64());
        tracing::info!(
            target: "weir::access",
            method = %self.method,
            route = &*self.route,
            upstream,
            status = self.status.as_u16(),
            reason = self.reason,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = self.request_id.to_str().unwrap_or(""),
            client = %self.client,
            grpc_code = grpc.map_or("", Code::as_str),
            hedged = self.hedged,
        );
        self.grpc = Grpc::No;
        drop(self.guard);
    }

    /// The body ended early with `code` (broken off, or dropped unread): a status still to
    /// come becomes it.
    fn broke_off(&mut self, code: Code) {
        if self.grpc == Grpc::Pending {
            self.grpc = Grpc::Code(code);
        }
    }
}

impl Watch for Finish {
    fn polled(
        &mut self,
        _: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        _: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &polled {
            Poll::Ready(None) => drop(self.0.take().map(Record::finish)),
            Poll::Ready(Some(Ok(_))) => {
                if let Some(r) = &mut self.0
                    && r.grpc == Grpc::Pending
                    && let Some(BodyEnd::Status(code)) = grpc::body_end(&polled)
                {
                    r.grpc = Grpc::Code(code);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut r) = self.0.take() {
                    // As weir's own errors map (`ProxyError::grpc_code`): a read timeout is
                    // DEADLINE_EXCEEDED, a reset UNAVAILABLE.
                    let (reason, code) = if e.is::<BodyReadTimeout>() {
                        (ProxyError::UpstreamTimeout.reason(), Code::DeadlineExceeded)
                    } else if e.is::<Truncated>() {
                        (InjectedReset::reason(), Code::Unavailable)
                    } else {
                        (REASON_UPSTREAM_BODY, Code::Unavailable)
                    };
                    r.reason = reason;
                    r.broke_off(code);
                    tracing::debug!(route = &*r.route, error = %e, "response body failed");
                    r.finish();
                }
            }
            _ => {}
        }
        polled
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut r) = self.0.take() {
            // Dropped before its end: the client went away, or its connection closed.
            r.broke_off(Code::Cancelled);
            r.finish();
        }
    }
}

/// Marks the request finished on its connection and for the drain, also when the future is
/// dropped.
#[derive(Debug)]
struct RequestGuard(Arc<ConnState>, Arc<ListenerShared>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end_request();
        self.1.drain.end();
    }
}

/// The walk of one request, as named steps: [`check`] → [`route`] → [`prepare`] → [`call`] →
/// [`finish`] → [`record`]. `Err` only for an injected reset, already recorded.
///
/// Not an `async fn`, which would hold the request head twice (the request and its parts):
/// the future is boxed per request, and at 1,464 bytes it was over the allocator's per-thread
/// cache limit (1,032); this is 936.
fn handle(
    guard: RequestGuard,
    peer: SocketAddr,
    client: HeaderValue,
    req: http::Request<Incoming>,
) -> impl Future<Output = Result<http::Response<ServedBody>, InjectedReset>> + Send {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    async move {
        let client = &client;
        let generation = guard.1.current.load_full();
        let fields = hygiene::Fields::scan(&parts.headers);
        let ex = Exchange {
            trace: RequestTrace::start(&parts.method, &parts.headers),
            request_id: context::request_id(fields.request_id),
            method: parts.method.clone(),
            version: parts.version,
            upgrade: fields.is_upgrade(parts.version),
            grpc: fields.grpc,
            peer,
        };
        let (l, conn) = (&*guard.1, &*guard.0);
        let (route, target, result, on_upgrade) = match check(&parts, &fields, l)
            .and_then(|()| route(&generation, &parts))
        {
            Err(e) => (None, None, Err(e), None),
            Ok(route) => {
                let target = route.pick();
                // The scan still describes the map unless hop-by-hop fields come out.
                let additions = (!fields.has_hop_by_hop(ex.upgrade))
                    .then(|| Additions::new(&fields, &parts.uri, route, target, &ex, client, l));
                let (req, on_upgrade) =
                    prepare(parts, additions, body, route, target, &ex, client, l);
                let result = call(conn, &generation, target, req).await;
                (Some(route), Some(target), result, on_upgrade)
            }
        };
        let route_name = route.map_or("", |r| &*r.name);
        let metrics = target.map_or(&generation.unrouted, |t| &t.metrics);
        let direct = target.is_some_and(|t| t.direct);
        let (resp, reason) = finish(result, on_upgrade, direct, route_name, metrics, &ex, &guard);
        ex.trace
            .record(route_name, metrics.upstream(), resp.status(), reason);
        record(resp, reason, metrics, ex, started, guard)
    }
}

/// What the walk keeps of the request head for the response, the trace and the record.
struct Exchange {
    trace: RequestTrace,
    request_id: HeaderValue,
    method: http::Method,
    version: http::Version,
    /// Whether the client asks to switch protocols (`Connection: upgrade`).
    upgrade: bool,
    /// Whether the request is a gRPC call: weir's own errors answer it in gRPC, and its
    /// record carries its `grpc-status`.
    grpc: bool,
    peer: SocketAddr,
}

/// Step 2: a request weir refuses before routing it (framing, `Host`, header limits).
fn check(
    parts: &http::request::Parts,
    fields: &hygiene::Fields<'_>,
    l: &ListenerShared,
) -> Result<(), ProxyError> {
    hygiene::check_request(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        fields,
        &l.limits,
    )
}

/// Step 3: the route that serves the request, or `no-route`.
fn route<'g>(
    generation: &'g Generation,
    parts: &http::request::Parts,
) -> Result<&'g Route, ProxyError> {
    generation.router.route(parts).ok_or(ProxyError::NoRoute)
}

/// What weir adds to a routed request, worked out from one scan of its fields: what it tells
/// the upstream (`X-Forwarded-*`, `Via`, `traceparent`; nothing for a direct response, whose
/// request goes nowhere) and the request's priority.
struct Additions {
    forwarded: Option<(hygiene::Forwarded, HeaderValue)>,
    priority: Priority,
}

impl Additions {
    fn new(
        fields: &hygiene::Fields<'_>,
        uri: &http::Uri,
        route: &Route,
        target: &Target,
        ex: &Exchange,
        client: &HeaderValue,
        l: &ListenerShared,
    ) -> Self {
        let forwarded = (!target.direct).then(|| {
            let authority = uri.authority().map(|a| a.as_str());
            let forwarded = hygiene::Forwarded::new(fields, client, l.proto, authority, ex.version);
            (forwarded, ex.trace.traceparent(fields.traceparent))
        });
        let priority = match fields.priority {
            Some(asked) => route.priority.lowered_by(asked.as_bytes()),
            None => route.priority,
        };
        Self {
            forwarded,
            priority,
        }
    }
}

/// Step 2, continued, for a routed request: hop-by-hop headers out (`additions` is `None`
/// when there are some, and is then worked out once they are gone), what weir tells the
/// upstream (`X-Forwarded-*`, `Via`, `x-request-id`, `traceparent`), its [`RequestContext`]
/// (client, route, priority) when the target's stack reads one, and its body bounded by the listener's limits. Returns the
/// downstream upgrade to tunnel, if the client asked for one.
#[allow(clippy::too_many_arguments)] // the walk's state, passed down once
fn prepare(
    mut parts: http::request::Parts,
    additions: Option<Additions>,
    body: Incoming,
    route: &Route,
    target: &Target,
    ex: &Exchange,
    client: &HeaderValue,
    l: &ListenerShared,
) -> (Request, Option<OnUpgrade>) {
    let on_upgrade = if ex.upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let additions = additions.unwrap_or_else(|| {
        hygiene::remove_hop_by_hop(&mut parts.headers, ex.upgrade);
        let fields = hygiene::Fields::scan(&parts.headers);
        Additions::new(&fields, &parts.uri, route, target, ex, client, l)
    });
    if let Some((forwarded, traceparent)) = additions.forwarded {
        // Room for what weir adds (X-Forwarded-*, Via, x-request-id, traceparent, the
        // deadline), so the map grows once instead of several times.
        parts.headers.reserve(8);
        hygiene::add_forwarded(&mut parts.headers, forwarded);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), ex.request_id.clone());
        parts.headers.insert(TRACEPARENT.clone(), traceparent);
    }
    if target.context {
        let mut ctx = RequestContext::new(ex.peer.ip(), route.name.clone(), additions.priority);
        ctx.grpc = ex.grpc;
        parts.extensions.insert(ctx);
    }
    let body = Body::request(body, l.limits.max_body_bytes, l.timeouts.idle);
    (Request::from_parts(parts, body), on_upgrade)
}

/// Steps 4 to 7: the target's route stack (and below it the upstream's), through the
/// connection's kept clone of it. Not an `async fn`, which would hold the request twice.
#[allow(clippy::manual_async_fn)] // the size of the future, above
fn call<'a>(
    conn: &'a ConnState,
    generation: &'a Arc<Generation>,
    target: &'a Target,
    req: Request,
) -> impl Future<Output = Result<Response, ProxyError>> + Send + 'a {
    async move {
        let mut service = conn.take_service(generation, target);
        let result = match service.0.ready().await {
            Ok(ready) => ready.call(req).await,
            Err(e) => Err(e),
        };
        conn.keep_service(generation.clone(), target, service);
        result
    }
}

/// Step 8: the response the client gets, with the `reason` it is recorded under. An upstream's
/// response loses its hop-by-hop headers and gains `Via` (or becomes a tunnel on `101`); an
/// error becomes its response ([`respond::error_response`]). Both carry `x-request-id`, and an
/// HTTP/1 response during a drain closes its connection.
fn finish(
    result: Result<Response, ProxyError>,
    on_upgrade: Option<OnUpgrade>,
    direct: bool,
    route: &str,
    metrics: &RouteMetrics,
    ex: &Exchange,
    guard: &RequestGuard,
) -> (Response, &'static str) {
    let (conn, l) = (&*guard.0, &*guard.1);
    let (mut resp, reason) = match result {
        Ok(resp) if InjectedReset::marks(&resp) => return (resp, InjectedReset::reason()),
        Ok(mut resp) => {
            let switching = ex.upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if switching && let Some(down) = on_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                conn.mark_upgraded();
                l.tasks.spawn(tunnel(down, up));
            }
            hygiene::strip_hop_by_hop(resp.headers_mut(), switching);
            if !direct {
                let upstream_version = resp.version();
                hygiene::append_via(resp.headers_mut(), upstream_version);
            }
            *resp.version_mut() = ex.version;
            let reason = if direct {
                REASON_DIRECT
            } else {
                REASON_UPSTREAM
            };
            (resp, reason)
        }
        Err(e) => {
            tracing::debug!(
                route,
                upstream = metrics.upstream().as_ref(),
                request_id = ex.request_id.to_str().unwrap_or(""),
                error = %e,
                source = ?std::error::Error::source(&e),
                "request failed"
            );
            let resp = if ex.grpc {
                respond::grpc_error_response(&e)
            } else {
                respond::error_response(&e, route, metrics.upstream())
            };
            (resp, e.reason())
        }
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), ex.request_id.clone());
    // A drain closes HTTP/1 connections after their response in flight (HTTP/2 connections get
    // GOAWAY from the listener).
    let draining_h1 = l.drain.is_draining()
        && ex.version < http::Version::HTTP_2
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS;
    if draining_h1 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    (resp, reason)
}

/// The request's [`Record`] rides on its response body and is written when the body ends; for
/// an injected reset it is written now, and the reset is the result.
fn record(
    resp: Response,
    reason: &'static str,
    metrics: &RouteMetrics,
    ex: Exchange,
    started: Instant,
    guard: RequestGuard,
) -> Result<http::Response<ServedBody>, InjectedReset> {
    let grpc = if ex.grpc {
        grpc::head_code(resp.status(), resp.headers()).map_or(Grpc::Pending, Grpc::Code)
    } else {
        Grpc::No
    };
    let record = Record {
        grpc,
        hedged: resp.extensions().get::<Hedged>().is_some(),
        metrics: metrics.clone(),
        method: ex.method,
        route: metrics.route().clone(),
        status: resp.status(),
        reason,
        started,
        request_id: ex.request_id,
        client: ex.peer.ip(),
        guard,
    };
    if InjectedReset::marks(&resp) {
        record.finish();
        return Err(InjectedReset);
    }
    Ok(resp.map(|inner| Watched::new(inner, Finish(Some(record)))))
}

/// Copies bytes both ways between the upgraded downstream and upstream connections.
async fn tunnel(down: OnUpgrade, up: OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}
