//! How one upstream's requests reach an endpoint: [`Transport`] holds what every endpoint of
//! the upstream shares (connect timeout, keep-alive settings, the HTTP/2 client and its
//! multiplexed connections) and makes an [`EndpointConn`] for each endpoint, which sends a
//! request to that endpoint and maps failures to `upstream-connect` (the request never left:
//! connect failure, HTTP/2 `REFUSED_STREAM`) or `upstream-reset`, or to the client's request
//! body (`payload-too-large`, `bad-request`).
//!
//! Position: under [`crate::upstream::forward`], which picks the endpoint. HTTP/1.1 goes through
//! one [`Pool`] per endpoint; HTTP/2 (prior knowledge) through one hyper-util client whose pool
//! is keyed by endpoint. Config: `upstreams.<name>.connect_timeout`, `pool_idle_timeout`,
//! `protocol`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Protocol, UpstreamConfig};
use crate::error::ProxyError;
use crate::http::{Body, Request, Response};
use crate::upstream::pool::{Pool, sent_error};

/// The hyper-util client type HTTP/2 upstreams use.
pub type HttpClient = Client<HttpConnector, Body>;

/// A request on its way to an endpoint.
pub type SendFuture = Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>>;

/// What every endpoint of one upstream shares. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// One [`Pool`] per endpoint, made by [`Transport::endpoint`].
    Http1 {
        connect_timeout: Duration,
        idle_timeout: Duration,
    },
    /// One client for every endpoint; HTTP/2 with prior knowledge multiplexes each connection.
    Client(Box<HttpClient>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Http1 { .. } => "Transport(http1)",
            Kind::Client(_) => "Transport(http2)",
        })
    }
}

impl Transport {
    /// The transport of upstream `cfg`.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let kind = match cfg.protocol {
            Protocol::Http1 => Kind::Http1 {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.pool_idle_timeout,
            },
            Protocol::Http2 => Kind::Client(Box::new(build_client(cfg))),
        };
        Self { kind }
    }

    /// The connection handle of endpoint `addr`: its own pool (HTTP/1.1), or the shared client.
    pub fn endpoint(&self, addr: Authority) -> EndpointConn {
        let how = match &self.kind {
            Kind::Http1 {
                connect_timeout,
                idle_timeout,
            } => How::Pool(Pool::new(addr.clone(), *connect_timeout, *idle_timeout)),
            Kind::Client(client) => How::Client(client.clone()),
        };
        EndpointConn { addr, how }
    }
}

/// Sends requests to one endpoint. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct EndpointConn {
    addr: Authority,
    how: How,
}

#[derive(Clone)]
enum How {
    Pool(Pool),
    Client(Box<HttpClient>),
}

impl std::fmt::Debug for EndpointConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EndpointConn").field(&self.addr).finish()
    }
}

impl EndpointConn {
    /// The endpoint's address.
    pub fn addr(&self) -> &Authority {
        &self.addr
    }

    /// Sends `req` to this endpoint: rewrites the target for the upstream connection (origin
    /// form and `Host` for HTTP/1.1, absolute form for HTTP/2) and starts the exchange.
    pub fn send(&self, req: Request) -> Result<SendFuture, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match &self.how {
            How::Pool(pool) => {
                if !parts.headers.contains_key(HOST) {
                    // An HTTP/2 request carries its host in :authority; HTTP/1.1 needs the
                    // header. Without either, the endpoint is the host.
                    let host = parts.uri.authority().unwrap_or(&self.addr).as_str();
                    if let Ok(host) = HeaderValue::from_str(host) {
                        parts.headers.insert(HOST, host);
                    }
                }
                parts.uri = Uri::from(pq);
                parts.version = Version::HTTP_11;
                Ok(Box::pin(
                    pool.clone().send(Request::from_parts(parts, body)),
                ))
            }
            How::Client(client) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(self.addr.clone());
                uri.path_and_query = Some(pq);
                parts.uri = Uri::from_parts(uri)
                    .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
                parts.version = Version::HTTP_2;
                let fut = client.request(Request::from_parts(parts, body));
                Ok(Box::pin(async move {
                    match fut.await {
                        Ok(resp) => Ok(resp.map(Body::incoming)),
                        Err(e) if e.is_connect() || refused_stream(&e) => {
                            Err(ProxyError::UpstreamConnect(Box::new(e)))
                        }
                        Err(e) => Err(sent_error(e)),
                    }
                }))
            }
        }
    }
}

/// Whether an HTTP/2 stream was refused by the server (`REFUSED_STREAM`): RFC 9113 §8.7 says
/// the request was not processed, so any method may be retried.
fn refused_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = e.source();
    }
    false
}

/// Builds the HTTP/2 client of one upstream. Cheap to clone; clones share the pool.
fn build_client(cfg: &UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .retry_canceled_requests(true)
        .set_host(true)
        .http2_only(cfg.protocol == Protocol::Http2);
    builder.build(connector)
}
