//! How one upstream's requests reach an endpoint: [`Transport`] holds what every endpoint of
//! the upstream shares (connect timeout, keep-alive settings, TLS settings, the HTTP/2 client
//! and its multiplexed connections) and makes an [`EndpointConn`] for each endpoint, which sends
//! a request to that endpoint and maps failures to `upstream-connect` (the request never left:
//! connect failure, HTTP/2 `REFUSED_STREAM`), `upstream-tls` (the TLS handshake failed: the
//! certificate did not verify, the upstream refused ours, no common protocol) or
//! `upstream-reset`, or to the client's request body (`payload-too-large`, `bad-request`).
//!
//! Position: under [`crate::upstream::forward`], which picks the endpoint. HTTP/1.1 (with or
//! without TLS) goes through one [`Pool`] per endpoint; HTTP/2 by prior knowledge through one
//! hyper-util client whose pool is keyed by endpoint; `protocol = "http2"` with `tls` through
//! one hyper-util client over a rustls connector, where ALPN picks HTTP/2 or HTTP/1.1 per
//! connection. Config: `upstreams.<name>.connect_timeout`, `pool_idle_timeout`, `protocol`,
//! `tls`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri, Version};
use hyper_rustls::{
    FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::{BoxError, ProxyError, cause, caused_by};
use crate::http::{Body, Request, Response};
use crate::tls::TlsError;
use crate::tls::client::{ALPN_H2, ALPN_HTTP1, ClientTls, host_name, is_tls_failure};
use crate::upstream::Settings as UpstreamConfig;
use crate::upstream::h1::sent_error;
use crate::upstream::pool::{EndpointTls, Pool, UPSTREAM_READ_BUF};

/// Protocol spoken to an upstream (`upstreams.NAME.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http1`: HTTP/1.1.
    #[default]
    Http1,
    /// `http2`: HTTP/2, by prior knowledge or by ALPN with TLS.
    Http2,
}

impl Protocol {
    /// The config spelling: `http1` or `http2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }

    /// What TLS offers in ALPN for it: `http/1.1`; `h2` then `http/1.1` (the server chooses).
    fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            Protocol::Http1 => &[ALPN_HTTP1],
            Protocol::Http2 => &[ALPN_H2, ALPN_HTTP1],
        }
    }
}

/// The HTTP/2 flow-control window weir gives each upstream stream: how much of a response the
/// upstream may send before the client has taken it. hyper's default (2 MiB per stream, 5 MiB
/// per connection) let a slow reader pin megabytes; 64 KiB is what the HTTP/2 default is
/// (RFC 9113 §6.9.2) and keeps a stream at 64 KiB per round trip.
const UPSTREAM_H2_STREAM_WINDOW: u32 = 64 * 1024;
/// The connection's window: room for 16 streams at full speed.
const UPSTREAM_H2_CONN_WINDOW: u32 = 16 * UPSTREAM_H2_STREAM_WINDOW;

/// The hyper-util client type HTTP/2 upstreams without TLS use (prior knowledge).
pub(crate) type HttpClient = Client<HttpConnector, Body>;

/// The hyper-util client type `protocol = "http2"` upstreams with TLS use: ALPN picks HTTP/2
/// or HTTP/1.1 per connection.
pub(crate) type HttpsClient = Client<TimedConnect, Body>;

/// A request on its way to an endpoint.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = Result<Response, ProxyError>> + Send>>;

/// What every endpoint of one upstream shares. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// One [`Pool`] per endpoint, made by [`Transport::endpoint`]; TLS when `tls` is set.
    Http1 {
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<ClientTls>,
    },
    /// One client for every endpoint; HTTP/2 with prior knowledge multiplexes each connection.
    Client(Box<HttpClient>),
    /// One client for every endpoint, over TLS; ALPN picks the protocol of each connection.
    Https(Box<HttpsClient>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Http1 { tls: None, .. } => "Transport(http1)",
            Kind::Http1 { tls: Some(_), .. } => "Transport(http1, tls)",
            Kind::Client(_) => "Transport(http2)",
            Kind::Https(_) => "Transport(http2, tls)",
        })
    }
}

impl Transport {
    /// The transport of upstream `cfg`. With `tls`, its files are read now, and every static
    /// endpoint's host must make a server name (unless `tls.sni` is set); an error names the
    /// file or setting at fault. Endpoints found by DNS are checked against the DNS name
    /// unless `tls.sni` says otherwise.
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, TlsError> {
        let tls = match &cfg.tls {
            Some(tls) => {
                let mut settings = tls.clone();
                if settings.sni.is_none()
                    && let Some(dns) = &cfg.dns
                {
                    settings.sni = Some(dns.host().to_owned());
                }
                let tls = ClientTls::new(&settings, cfg.protocol.alpn())?;
                for ep in &cfg.endpoints {
                    tls.server_name(ep)?;
                }
                Some(tls)
            }
            None => None,
        };
        let kind = match (cfg.protocol, tls) {
            (Protocol::Http1, tls) => Kind::Http1 {
                connect_timeout: cfg.connect_timeout,
                idle_timeout: cfg.pool_idle_timeout,
                tls,
            },
            (Protocol::Http2, None) => Kind::Client(Box::new(build_client(cfg))),
            (Protocol::Http2, Some(tls)) => Kind::Https(Box::new(build_https_client(cfg, &tls))),
        };
        Ok(Self { kind })
    }

    /// The connection handle of endpoint `addr`: its own pool (HTTP/1.1), or the shared client.
    pub fn endpoint(&self, addr: Authority) -> EndpointConn {
        let how = match &self.kind {
            Kind::Http1 {
                connect_timeout,
                idle_timeout,
                tls,
            } => {
                let tls = tls.as_ref().map(|tls| EndpointTls {
                    tls: tls.clone(),
                    name: tls.server_name(&addr).ok(),
                });
                How::Pool(Pool::new(
                    addr.clone(),
                    *connect_timeout,
                    *idle_timeout,
                    tls,
                ))
            }
            Kind::Client(client) => How::Client(client.clone()),
            Kind::Https(client) => How::Https(client.clone()),
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
    Https(Box<HttpsClient>),
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
    /// form and `Host` for HTTP/1.1, absolute form for HTTP/2 and for the TLS client, which
    /// learns the protocol from ALPN) and starts the exchange.
    pub fn send(&self, req: Request) -> Result<SendFuture, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match &self.how {
            How::Pool(pool) => {
                self.set_host(&mut parts);
                parts.uri = Uri::from(pq);
                parts.version = Version::HTTP_11;
                Ok(Box::pin(
                    pool.clone().send(Request::from_parts(parts, body)),
                ))
            }
            How::Client(client) => {
                parts.uri = self.absolute(Scheme::HTTP, pq)?;
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
            How::Https(client) => {
                // The connection may turn out HTTP/1.1, which needs `Host`; HTTP/2 sends it on.
                self.set_host(&mut parts);
                parts.uri = self.absolute(Scheme::HTTPS, pq)?;
                // HTTP/1.1 as the request's version lets the client use either protocol.
                parts.version = Version::HTTP_11;
                let fut = client.request(Request::from_parts(parts, body));
                Ok(Box::pin(async move {
                    match fut.await {
                        Ok(resp) => Ok(resp.map(Body::incoming)),
                        Err(e) => Err(https_error(e)),
                    }
                }))
            }
        }
    }

    /// Sets `Host` when the request has none: an HTTP/2 request carries its host in
    /// `:authority`, HTTP/1.1 needs the header. Without either, the endpoint is the host.
    fn set_host(&self, parts: &mut http::request::Parts) {
        if !parts.headers.contains_key(HOST) {
            let host = parts.uri.authority().unwrap_or(&self.addr).as_str();
            if let Ok(host) = HeaderValue::from_str(host) {
                parts.headers.insert(HOST, host);
            }
        }
    }

    /// The absolute-form target of `pq` on this endpoint.
    fn absolute(&self, scheme: Scheme, pq: PathAndQuery) -> Result<Uri, ProxyError> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme);
        uri.authority = Some(self.addr.clone());
        uri.path_and_query = Some(pq);
        Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid request target"))
    }
}

/// Maps a failure of the TLS client: a TCP connect failure or the connect timeout is
/// `upstream-connect`; any other failure to connect is the TLS handshake's (`upstream-tls`), as
/// is a failure of the connection's TLS layer after it (a TLS 1.3 server refuses a client
/// certificate once the client considers the handshake done); a refused stream is
/// `upstream-connect`; the rest as sent.
fn https_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        if caused_by::<TcpConnectFailed>(&e) {
            ProxyError::UpstreamConnect(Box::new(e))
        } else {
            ProxyError::UpstreamTls(Box::new(e))
        }
    } else if is_tls_failure(&e) || TlsFailed::of(&e) {
        ProxyError::UpstreamTls(Box::new(e))
    } else if refused_stream(&e) {
        ProxyError::UpstreamConnect(Box::new(e))
    } else {
        sent_error(e)
    }
}

/// Whether an HTTP/2 stream was refused by the server (`REFUSED_STREAM`): RFC 9113 §8.7 says
/// the request was not processed, so any method may be retried.
fn refused_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    cause::<h2::Error>(err).is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
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
        .http1_max_buf_size(UPSTREAM_READ_BUF)
        .http2_initial_stream_window_size(UPSTREAM_H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(UPSTREAM_H2_CONN_WINDOW)
        .set_host(true)
        .http2_only(cfg.protocol == Protocol::Http2);
    builder.build(connector)
}

/// Builds the TLS client of one `protocol = "http2"` upstream: TCP within the connect timeout
/// (which also bounds the handshake), then TLS with ALPN `h2` and `http/1.1`. Cheap to clone;
/// clones share the pool.
fn build_https_client(cfg: &UpstreamConfig, tls: &ClientTls) -> HttpsClient {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    // The builder sets ALPN itself (h2, http/1.1) and panics on a config that has it already.
    let mut config = tls.config().as_ref().clone();
    config.alpn_protocols.clear();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let builder = match tls.fixed_name() {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
        None => builder.with_server_name_resolver(
            |uri: &Uri| -> Result<ServerName<'static>, TlsError> {
                host_name(uri.host().unwrap_or_default())
            },
        ),
    };
    let https = builder
        .enable_http1()
        .enable_http2()
        .wrap_connector(TcpConnect(tcp));
    let connector = TimedConnect {
        inner: https,
        timeout: cfg.connect_timeout,
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .retry_canceled_requests(true)
        .http1_max_buf_size(UPSTREAM_READ_BUF)
        .http2_initial_stream_window_size(UPSTREAM_H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(UPSTREAM_H2_CONN_WINDOW)
        .set_host(true);
    builder.build(connector)
}

/// The connector of [`HttpsClient`]: TCP and the TLS handshake within the connect timeout;
/// each connection [`Watched`] for failures of its TLS layer.
#[derive(Clone, Debug)]
pub(crate) struct TimedConnect {
    inner: HttpsConnector<TcpConnect>,
    timeout: Duration,
}

impl tower::Service<Uri> for TimedConnect {
    type Response = Watched;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Watched, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map(|inner| Watched {
                    inner,
                    failed: TlsFailed::default(),
                }),
                Err(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
                    Err(Box::new(TcpConnectFailed(Box::new(e))) as BoxError)
                }
            }
        })
    }
}

/// A connection of the TLS client that remembers whether its TLS layer failed: HTTP/2 keeps
/// only the message of an I/O error, so a TLS alert that ends the connection reaches the
/// request as an error with no TLS type in its chain.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: MaybeHttpsStream<TokioIo<TcpStream>>,
    failed: TlsFailed,
}

/// Whether a connection's TLS layer failed; carried in the connection's `Connected` extras,
/// which the client attaches to a request's error.
#[derive(Clone, Debug, Default)]
struct TlsFailed(Arc<AtomicBool>);

impl TlsFailed {
    /// Whether `e` happened on a connection whose TLS layer failed.
    fn of(e: &hyper_util::client::legacy::Error) -> bool {
        e.connect_info().is_some_and(|connected| {
            let mut extras = http::Extensions::new();
            connected.get_extras(&mut extras);
            extras
                .get::<TlsFailed>()
                .is_some_and(|f| f.0.load(Ordering::Relaxed))
        })
    }
}

impl Watched {
    fn note<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(e)) = &polled
            && is_tls_failure(e)
        {
            self.failed.0.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.failed.clone())
    }
}

impl hyper::rt::Read for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(polled)
    }
}

impl hyper::rt::Write for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(polled)
    }
}

/// The TCP part of [`TimedConnect`]; tags its failures, so that they are told apart from the
/// handshake's.
#[derive(Clone, Debug)]
struct TcpConnect(HttpConnector);

/// A TCP connect failure (or the connect timeout) of the TLS client.
#[derive(Debug, thiserror::Error)]
#[error("tcp connect: {0}")]
struct TcpConnectFailed(#[source] BoxError);

impl tower::Service<Uri> for TcpConnect {
    type Response = TokioIo<TcpStream>;
    type Error = TcpConnectFailed;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TcpConnectFailed>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TcpConnectFailed>> {
        self.0
            .poll_ready(cx)
            .map_err(|e| TcpConnectFailed(Box::new(e)))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move { connecting.await.map_err(|e| TcpConnectFailed(Box::new(e))) })
    }
}
