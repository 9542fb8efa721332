//! `ProxyService`: one request's walk, from the parsed head to the response. It loads the
//! generation once, runs hygiene, asks the router, calls the route target's stack, turns errors
//! into responses, records metrics and writes the access log (target `weir::access`).
//!
//! The request counts as in flight on its connection and for the drain, and its metrics and
//! access-log line are written, when its response body ends ([`ServedBody`]), not when the head
//! goes out: `duration_ms` covers the whole exchange, and a body the upstream stopped sending
//! (`read_timeout`) is logged with `reason = "upstream-timeout"` under the status already sent.
//!
//! Position: steps 2 and 8 of the walk (see the crate docs). Infallible by construction.

use std::convert::Infallible;
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
use crate::http::context;
use crate::http::{
    Body, Request, TRACEPARENT, Watch, Watched, X_REQUEST_ID, X_WEIR_PRIORITY, hygiene, respond,
};
use crate::metrics::{REASON_DIRECT, REASON_UPSTREAM, REASON_UPSTREAM_BODY, RouteMetrics};
use crate::server::ListenerShared;
use crate::server::conn::ConnState;
use crate::upstream::read_timeout::BodyReadTimeout;

/// Serves the requests of one downstream connection.
#[derive(Clone, Debug)]
pub struct ProxyService {
    listener: Arc<ListenerShared>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` element, rendered once per connection.
    client: HeaderValue,
}

impl ProxyService {
    /// The service of a connection from `peer`.
    pub fn new(listener: Arc<ListenerShared>, conn: Arc<ConnState>, peer: SocketAddr) -> Self {
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
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.conn.begin_request();
        self.listener.drain.begin();
        let guard = RequestGuard(self.conn.clone(), self.listener.clone());
        let (peer, client) = (self.peer, self.client.clone());
        Box::pin(async move { Ok(handle(guard, peer, &client, req).await) })
    }
}

/// A response body on its way to the client. When it ends (or is dropped: the client went
/// away, or the connection was closed), its [`Record`] records the request's metrics, writes its
/// access-log line and marks the request finished on its connection and for the drain.
pub type ServedBody = Watched<Finish>;

/// The request's [`Record`], finished once: when its response body ends or fails, or when the
/// body is dropped.
#[derive(Debug)]
pub struct Finish(Option<Record>);

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
}

impl Record {
    fn finish(self) {
        let elapsed = self.started.elapsed();
        let upstream: &str = self.metrics.upstream();
        self.metrics
            .record(self.status, self.reason, elapsed.as_secs_f64());
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
        );
        drop(self.guard);
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
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut r) = self.0.take() {
                    r.reason = if e.is::<BodyReadTimeout>() {
                        ProxyError::UpstreamTimeout.reason()
                    } else {
                        REASON_UPSTREAM_BODY
                    };
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
        if let Some(r) = self.0.take() {
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

async fn handle(
    guard: RequestGuard,
    peer: SocketAddr,
    client: &HeaderValue,
    req: http::Request<Incoming>,
) -> http::Response<ServedBody> {
    let (l, conn) = (&*guard.1, &*guard.0);
    let started = Instant::now();
    let generation = l.current.load_full();
    let (mut parts, body) = req.into_parts();
    // With OTLP export on, the request's span: its parent is the inbound `traceparent`, its
    // span id the one sent upstream; it ends when this function returns.
    #[cfg(feature = "otel")]
    let span = crate::telemetry::request_span(&parts.method, &parts.headers);
    let request_id = context::request_id(parts.headers.get(&X_REQUEST_ID));
    let method = parts.method.clone();
    let version = parts.version;
    let upgrade = hygiene::is_upgrade(version, &parts.headers);

    let checked = hygiene::check_request(
        &parts.method,
        &parts.uri,
        version,
        &parts.headers,
        &l.limits,
    );
    let route = checked.and_then(|()| generation.router.route(&parts).ok_or(ProxyError::NoRoute));

    let (route_name, metrics, direct, result, downstream_upgrade) = match route {
        Err(e) => ("", &generation.unrouted, false, Err(e), None),
        Ok(route) => {
            let target = route.pick();
            let on_upgrade = if upgrade {
                parts.extensions.remove::<OnUpgrade>()
            } else {
                None
            };
            hygiene::strip_hop_by_hop(&mut parts.headers, upgrade);
            // Room for what weir adds (X-Forwarded-*, Via, x-request-id, traceparent, the
            // deadline), so the map grows once instead of several times.
            parts.headers.reserve(8);
            let authority = parts.uri.authority().map(|a| a.as_str());
            hygiene::add_forwarded(&mut parts.headers, client, l.proto, authority, version);
            parts
                .headers
                .insert(X_REQUEST_ID.clone(), request_id.clone());
            #[cfg(not(feature = "otel"))]
            let traceparent = context::traceparent(parts.headers.get(&TRACEPARENT));
            #[cfg(feature = "otel")]
            let traceparent = crate::telemetry::traceparent(span.as_ref())
                .unwrap_or_else(|| context::traceparent(parts.headers.get(&TRACEPARENT)));
            parts.headers.insert(TRACEPARENT.clone(), traceparent);
            let priority = match parts.headers.get(&X_WEIR_PRIORITY) {
                Some(asked) => route.priority.lowered_by(asked.as_bytes()),
                None => route.priority,
            };
            parts.extensions.insert(context::RequestContext::new(
                peer.ip(),
                route.name.clone(),
                priority,
            ));
            let req = Request::from_parts(
                parts,
                Body::request(body, l.limits.max_body_bytes, l.timeouts.idle),
            );
            let mut service = conn.take_service(&generation, target);
            let result = match service.0.ready().await {
                Ok(ready) => ready.call(req).await,
                Err(e) => Err(e),
            };
            conn.keep_service(generation.clone(), target, service);
            (
                &*route.name,
                &target.metrics,
                target.direct,
                result,
                on_upgrade,
            )
        }
    };
    let upstream: &str = metrics.upstream();

    let (mut resp, reason) = match result {
        Ok(mut resp) => {
            let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
            if switching && let Some(down) = downstream_upgrade {
                let up = hyper::upgrade::on(&mut resp);
                conn.mark_upgraded();
                l.tasks.spawn(tunnel(down, up));
            }
            hygiene::strip_hop_by_hop(resp.headers_mut(), switching);
            if !direct {
                let upstream_version = resp.version();
                hygiene::append_via(resp.headers_mut(), upstream_version);
            }
            *resp.version_mut() = version;
            (
                resp,
                if direct {
                    REASON_DIRECT
                } else {
                    REASON_UPSTREAM
                },
            )
        }
        Err(e) => {
            tracing::debug!(
                route = route_name,
                upstream,
                request_id = request_id.to_str().unwrap_or(""),
                error = %e,
                source = ?std::error::Error::source(&e),
                "request failed"
            );
            (
                respond::error_response(&e, route_name, upstream),
                e.reason(),
            )
        }
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    // A drain closes HTTP/1 connections after their response in flight (HTTP/2 connections get
    // GOAWAY from the listener).
    let draining_h1 = l.drain.is_draining()
        && version < http::Version::HTTP_2
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS;
    if draining_h1 {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }

    #[cfg(feature = "otel")]
    crate::telemetry::record_response(span.as_ref(), route_name, upstream, resp.status(), reason);
    let record = Record {
        metrics: metrics.clone(),
        method,
        route: metrics.route().clone(),
        status: resp.status(),
        reason,
        started,
        request_id,
        client: peer.ip(),
        guard,
    };
    resp.map(|inner| Watched::new(inner, Finish(Some(record))))
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
