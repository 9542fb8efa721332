//! A real, scriptable, misbehaving upstream: a hyper server on `127.0.0.1:0`.
//!
//! Build with [`Upstream::http1`] / [`Upstream::http2`] / [`Upstream::auto`] / [`Upstream::hang`],
//! configure faults, then [`UpstreamBuilder::start`]. Dropping the [`RunningUpstream`] aborts
//! every task it spawned (accept loop, connections, upgraded streams).
//!
//! A request walks these steps, in order (`n` is its 0-based arrival number, over all paths but
//! the health check's):
//! 0. `health(path)` and a request for exactly `path`: a health check, counted in `checks()`
//!    only and answered at once with the status of `set_health(..)` (200 until then), body `"ok"`;
//! 1. counted in `hits()` and recorded (head first, body once read);
//! 2. `reset()` / `reset_first(k)` with `n < k`: the connection is closed (RST) after the head;
//! 3. the body is read in full (except with `echo()`, which streams it back);
//! 4. `close_after_read()`: the connection is closed without a response;
//! 5. delay: `delay_first(k, d)` with `n < k`, else `route_delay(path)`, else `delay(d)` (or
//!    what `set_delay(..)` set since);
//! 6. `hang()`: no response, ever;
//! 7. `fail_first(k, status)` with `n < k`: that status, body `"fail"`, plus the
//!    `fail_header(..)`s; else a status other than 200 from `set_status(..)`: it, body `"fail"`;
//! 8. `upgrade()` and an `Upgrade` header: 101, then raw bytes are echoed;
//!    `echo()`: 200 with the request body; a `route(path, ..)`: its status and body; else 200 `"ok"`.
//!
//! The `set_*` knobs change a running upstream's answers from the next request on. Every
//! response carries the `header(..)`s. A request whose handler is dropped before it
//! produced its response (the peer went away) is counted in `cancelled()`.
//!
//! With [`UpstreamBuilder::tls`] every connection starts with a TLS handshake (rustls, ring):
//! `client_ca(..)` requires a client certificate signed by that CA, `alpn(..)` sets the
//! protocols offered. Each handshake is recorded in `handshakes()` (SNI, ALPN, whether a client
//! certificate came), each failed one counted in `tls_failures()`; the protocol spoken after it
//! is the builder's (`auto()` follows the h2 preface, whatever ALPN chose).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::tasks::Tasks;

/// Entry point: `Upstream::http1().route(..).delay(..).start().await`.
pub struct Upstream;

/// Which protocols the upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) only.
    Http2,
    /// Both, told apart by the h2 preface.
    Auto,
}

/// Settings of an upstream under construction; see the module docs for their order.
#[derive(Clone, Debug)]
pub struct UpstreamBuilder {
    protocol: Protocol,
    routes: HashMap<String, (StatusCode, Bytes)>,
    route_delays: HashMap<String, Duration>,
    delay: Option<Duration>,
    delay_first: (usize, Duration),
    fail_first: (usize, StatusCode),
    fail_headers: HeaderMap,
    reset_first: usize,
    close_after_read: bool,
    hang: bool,
    echo: bool,
    upgrade: bool,
    headers: HeaderMap,
    health: Option<String>,
    tls: Option<TlsSettings>,
}

/// TLS settings of an upstream: its certificate, the CA client certificates must be signed by
/// (none: no client certificate asked for), the ALPN protocols offered (none: no ALPN).
#[derive(Clone, Debug)]
struct TlsSettings {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    alpn: Vec<Vec<u8>>,
}

/// One completed TLS handshake as the upstream saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The SNI the client sent (`None`: no SNI, as for an IP address).
    pub sni: Option<String>,
    /// The ALPN protocol agreed (`None`: no ALPN).
    pub alpn: Option<String>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Request URI (origin-form for h1, absolute-form for h2).
    pub uri: Uri,
    /// Protocol version on the wire.
    pub version: Version,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body, as much of it as was read.
    pub body: Bytes,
    /// When the request head arrived.
    pub received: tokio::time::Instant,
}

/// A started upstream; dropping it stops it and every task it spawned.
pub struct RunningUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// An HTTP/1.1-only upstream.
    pub fn http1() -> UpstreamBuilder {
        UpstreamBuilder::new(Protocol::Http1)
    }

    /// An HTTP/2-only upstream (h2c, prior knowledge).
    pub fn http2() -> UpstreamBuilder {
        UpstreamBuilder::new(Protocol::Http2)
    }

    /// An upstream speaking HTTP/1.1 and h2c.
    pub fn auto() -> UpstreamBuilder {
        UpstreamBuilder::new(Protocol::Auto)
    }

    /// An upstream (h1 + h2c) that accepts, reads every request and never responds.
    pub fn hang() -> UpstreamBuilder {
        UpstreamBuilder::new(Protocol::Auto).never_respond()
    }
}

impl UpstreamBuilder {
    fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            routes: HashMap::new(),
            route_delays: HashMap::new(),
            delay: None,
            delay_first: (0, Duration::ZERO),
            fail_first: (0, StatusCode::OK),
            fail_headers: HeaderMap::new(),
            reset_first: 0,
            close_after_read: false,
            hang: false,
            echo: false,
            upgrade: false,
            headers: HeaderMap::new(),
            health: None,
            tls: None,
        }
    }

    /// Serves TLS with the certificate chain and key in these PEM files.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some(TlsSettings {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
            alpn: Vec::new(),
        });
        self
    }

    /// With [`Self::tls`]: requires a client certificate signed by the CA in this PEM file.
    pub fn client_ca(mut self, ca: &Path) -> Self {
        self.tls.as_mut().expect("tls(..) first").client_ca = Some(ca.to_path_buf());
        self
    }

    /// With [`Self::tls`]: offers these ALPN protocols (e.g. `["h2", "http/1.1"]`), in order
    /// of preference; a client that offers none of them fails the handshake.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.tls.as_mut().expect("tls(..) first").alpn =
            protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Answers requests for exactly `path` with `status` and `body` (others get 200 `"ok"`).
    pub fn route(mut self, path: &str, status: u16, body: impl Into<Bytes>) -> Self {
        let status = StatusCode::from_u16(status).expect("valid status");
        self.routes.insert(path.to_owned(), (status, body.into()));
        self
    }

    /// Waits `d` before the response head of every request.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Waits `d` before the response head of requests for exactly `path` (overrides `delay`).
    pub fn route_delay(mut self, path: &str, d: Duration) -> Self {
        self.route_delays.insert(path.to_owned(), d);
        self
    }

    /// Waits `d` before answering the first `n` requests (overrides the other delays).
    pub fn delay_first(mut self, n: usize, d: Duration) -> Self {
        self.delay_first = (n, d);
        self
    }

    /// Answers the first `n` requests (all paths) with `status` and body `"fail"`.
    pub fn fail_first(mut self, n: usize, status: u16) -> Self {
        self.fail_first = (n, StatusCode::from_u16(status).expect("valid status"));
        self
    }

    /// Adds a header to the `fail_first` responses only (e.g. `Retry-After`).
    pub fn fail_header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        self.fail_headers.append(
            name,
            HeaderValue::from_str(value).expect("valid header value"),
        );
        self
    }

    /// Closes the connection (RST) after reading the head of every request, with no response.
    pub fn reset(self) -> Self {
        self.reset_first(usize::MAX)
    }

    /// Like [`Self::reset`] for the first `n` requests only; later ones are served normally.
    pub fn reset_first(mut self, n: usize) -> Self {
        self.reset_first = n;
        self
    }

    /// Reads each whole request, body included, then closes the connection without a response.
    pub fn close_after_read(mut self) -> Self {
        self.close_after_read = true;
        self
    }

    /// Reads each whole request and never responds.
    pub fn never_respond(mut self) -> Self {
        self.hang = true;
        self
    }

    /// Serves health checks on exactly `path` (see step 0 in the module docs): they are counted
    /// in [`RunningUpstream::checks`], never in `hits()`, and answer what
    /// [`RunningUpstream::set_health`] says.
    pub fn health(mut self, path: &str) -> Self {
        self.health = Some(path.to_owned());
        self
    }

    /// Adds a header to every response.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        self.headers.append(
            name,
            HeaderValue::from_str(value).expect("valid header value"),
        );
        self
    }

    /// Responds 200 with the request body streamed back.
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// Answers requests carrying `Upgrade: <p>` with 101 and echoes raw bytes afterwards.
    pub fn upgrade(mut self) -> Self {
        self.upgrade = true;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> RunningUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let acceptor = self.tls.as_ref().map(tls_acceptor);
        let shared = Arc::new(Shared {
            acceptor,
            delay: Mutex::new(self.delay),
            status: AtomicU16::new(StatusCode::OK.as_u16()),
            health: AtomicU16::new(StatusCode::OK.as_u16()),
            checks: AtomicUsize::new(0),
            handshakes: Mutex::new(Vec::new()),
            tls_failures: AtomicUsize::new(0),
            cfg: self,
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            tasks: Tasks::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        RunningUpstream {
            addr,
            shared,
            accept,
        }
    }
}

impl RunningUpstream {
    /// The bound address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far (counted when the head arrives).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(SeqCst)
    }

    /// Health checks received so far (requests for the `health(..)` path).
    pub fn checks(&self) -> usize {
        self.shared.checks.load(SeqCst)
    }

    /// From the next request on, waits `d` before each response head, as [`UpstreamBuilder::delay`]
    /// does (`Duration::ZERO`: no wait).
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().unwrap() = Some(d);
    }

    /// From the next request on, answers `status` with body `"fail"` (200: the normal answers
    /// again); `fail_first` goes first.
    pub fn set_status(&self, status: u16) {
        StatusCode::from_u16(status).expect("valid status");
        self.shared.status.store(status, SeqCst);
    }

    /// From the next health check on, answers them with `status`.
    pub fn set_health(&self, status: u16) {
        StatusCode::from_u16(status).expect("valid status");
        self.shared.health.store(status, SeqCst);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(SeqCst)
    }

    /// Requests abandoned by the peer before their response was produced.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Every completed TLS handshake so far, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared.handshakes.lock().unwrap().clone()
    }

    /// TLS handshakes that failed (certificate refused either way, no common protocol, ...).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(SeqCst)
    }

    /// The most recent request; panics if there was none.
    pub fn last_request(&self) -> Recorded {
        self.requests().pop().expect("upstream received no request")
    }
}

impl Drop for RunningUpstream {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.tasks.abort_all();
    }
}

// === internals ===

type Body = BoxBody<Bytes, hyper::Error>;

struct Shared {
    cfg: UpstreamBuilder,
    /// The delay of step 5 after `delay_first` and `route_delay`: `delay(..)`, then `set_delay`.
    delay: Mutex<Option<Duration>>,
    /// `set_status`: 200 for the normal answers.
    status: AtomicU16,
    /// `set_health`: the status health checks get.
    health: AtomicU16,
    checks: AtomicUsize,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handshakes: Mutex<Vec<Handshake>>,
    tls_failures: AtomicUsize,
    hits: AtomicUsize,
    connections: AtomicUsize,
    cancelled: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    /// Connection and stream tasks, aborted when the upstream is dropped.
    tasks: Tasks,
}

impl Shared {
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
    }

    fn append_body(&self, index: usize, chunk: &[u8]) {
        let mut requests = self.requests.lock().unwrap();
        let body = &mut requests[index].body;
        *body = [&body[..], chunk].concat().into();
    }
}

/// Counts the request as cancelled if dropped while still armed.
struct CancelGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancelled.fetch_add(1, SeqCst);
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, SeqCst);
        if shared.cfg.reset_first > 0 {
            stream.set_zero_linger().expect("SO_LINGER");
        }
        let kill = Arc::new(Notify::new());
        let (svc_shared, svc_kill) = (shared.clone(), kill.clone());
        let svc = hyper::service::service_fn(move |req| {
            handle(svc_shared.clone(), svc_kill.clone(), req)
        });
        let conn: Pin<Box<dyn Future<Output = ()> + Send>> = match shared.acceptor.clone() {
            None => serve(stream, shared.clone(), svc),
            Some(acceptor) => {
                let shared = shared.clone();
                Box::pin(async move {
                    let tls = match acceptor.accept(stream).into_fallible().await {
                        Ok(tls) => tls,
                        Err((_, mut tcp)) => {
                            shared.tls_failures.fetch_add(1, SeqCst);
                            // Closes as a server should, so the client reads the alert: write
                            // side first, then the client's unread bytes until it closes (a
                            // socket closed with unread bytes sends a reset instead).
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let _ = tcp.shutdown().await;
                            let drain = async {
                                let mut buf = [0u8; 1024];
                                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                            };
                            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
                            return;
                        }
                    };
                    let (_, session) = tls.get_ref();
                    let seen = Handshake {
                        sni: session.server_name().map(str::to_owned),
                        alpn: session
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                    };
                    shared.handshakes.lock().unwrap().push(seen);
                    serve(tls, shared.clone(), svc).await;
                })
            }
        };
        shared.spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {} // drops the connection: close (RST with zero linger)
            }
        });
    }
}

/// Serves one connection (plain or TLS) with the builder's protocol.
fn serve<I, S>(stream: I, shared: Arc<Shared>, svc: S) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(stream);
    let exec = shared.tasks.clone();
    match shared.cfg.protocol {
        Protocol::Http1 => Box::pin(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, svc);
            let _ = conn.with_upgrades().await;
        }),
        Protocol::Http2 => Box::pin(async move {
            let mut builder = http2::Builder::new(exec);
            let _ = builder
                .timer(TokioTimer::new())
                .serve_connection(io, svc)
                .await;
        }),
        Protocol::Auto => Box::pin(async move {
            let mut builder = auto::Builder::new(exec);
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let _ = builder.serve_connection_with_upgrades(io, svc).await;
        }),
    }
}

/// The rustls acceptor of `tls` (ring provider, TLS 1.2 and 1.3).
fn tls_acceptor(tls: &TlsSettings) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&tls.key).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = tls.alpn.clone();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let cfg = &shared.cfg;
    if cfg.health.as_deref() == Some(req.uri().path()) {
        shared.checks.fetch_add(1, SeqCst);
        return Ok(respond(cfg, status(&shared.health), "ok"));
    }
    let n = shared.hits.fetch_add(1, SeqCst);
    let mut guard = CancelGuard {
        shared: &shared,
        armed: true,
    };
    let upgrade_to = req.headers().get(UPGRADE).cloned().filter(|_| cfg.upgrade);
    let on_upgrade = upgrade_to.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let index = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(Recorded {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: Bytes::new(),
            received: tokio::time::Instant::now(),
        });
        requests.len() - 1
    };

    if n < cfg.reset_first {
        guard.armed = false;
        kill.notify_one();
        return std::future::pending().await;
    }
    let body = if cfg.echo {
        let tee = shared.clone();
        let echoed = body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                tee.append_body(index, data);
            }
            frame
        });
        Some(echoed.boxed())
    } else {
        match body.collect().await {
            Ok(collected) => shared.append_body(index, &collected.to_bytes()),
            Err(_) => return Ok(respond(cfg, StatusCode::BAD_REQUEST, "body")), // peer went away
        }
        None
    };
    if cfg.close_after_read {
        guard.armed = false;
        kill.notify_one();
        return std::future::pending().await;
    }

    let path = parts.uri.path();
    let delay = match cfg.delay_first {
        (k, d) if n < k => Some(d),
        _ => {
            let delay = *shared.delay.lock().unwrap();
            cfg.route_delays.get(path).copied().or(delay)
        }
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if cfg.hang {
        return std::future::pending().await;
    }
    guard.armed = false;

    if n < cfg.fail_first.0 {
        let mut resp = respond(cfg, cfg.fail_first.1, "fail");
        resp.headers_mut().extend(cfg.fail_headers.clone());
        return Ok(resp);
    }
    let set = status(&shared.status);
    if set != StatusCode::OK {
        return Ok(respond(cfg, set, "fail"));
    }
    if let (Some(protocol), Some(on_upgrade)) = (upgrade_to, on_upgrade) {
        shared.spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        });
        let mut resp = respond(cfg, StatusCode::SWITCHING_PROTOCOLS, "");
        resp.headers_mut().insert(UPGRADE, protocol);
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(resp);
    }
    if let Some(body) = body {
        let mut resp = respond(cfg, StatusCode::OK, "");
        *resp.body_mut() = body;
        return Ok(resp);
    }
    Ok(match cfg.routes.get(path) {
        Some((status, body)) => respond(cfg, *status, body.clone()),
        None => respond(cfg, StatusCode::OK, "ok"),
    })
}

/// The status a `set_*` knob holds (set only from valid codes).
fn status(knob: &AtomicU16) -> StatusCode {
    StatusCode::from_u16(knob.load(SeqCst)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn respond(cfg: &UpstreamBuilder, status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().extend(cfg.headers.clone());
    resp
}
