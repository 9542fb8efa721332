//! A small HTTP client for tests: hyper-util's pooled client over h1 or h2c, plus raw TCP.
//!
//! Every call has a 10 s overall limit and panics when it runs out, naming the request.
//! The `try_*` variants return transport errors (reset, closed connection) instead of panicking.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{self, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Error of a `try_*` request: connect, reset, closed connection, broken body.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled client speaking one protocol; cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: legacy::Client<HttpConnector, Full<Bytes>>,
}

/// A fully read response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Response status.
    pub status: StatusCode,
    /// Protocol version the response came over.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole response body.
    pub body: Bytes,
}

/// A raw TCP connection after an `Upgrade` request, positioned right after the response head.
#[derive(Debug)]
pub struct Upgraded {
    /// Status code of the response head.
    pub status: u16,
    /// The response head as text, up to and including the blank line.
    pub head: String,
    /// The connection, for raw bytes in both directions.
    pub stream: TcpStream,
}

impl Client {
    /// HTTP/1.1 with a connection pool.
    pub fn h1() -> Self {
        Self::build(false, true)
    }

    /// HTTP/1.1 with no idle pool: every request opens a new connection.
    pub fn h1_no_pool() -> Self {
        Self::build(false, false)
    }

    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection per address.
    pub fn h2() -> Self {
        Self::build(true, true)
    }

    fn build(h2: bool, pool: bool) -> Self {
        let mut builder = legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(h2);
        if !pool {
            builder.pool_max_idle_per_host(0);
        }
        Self {
            inner: builder.build_http(),
        }
    }

    /// `GET path`; panics on a transport error or after 10 s.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Reply {
        self.send(addr, Method::GET, path, &[], Bytes::new()).await
    }

    /// `GET path`, returning transport errors; panics after 10 s.
    pub async fn try_get(&self, addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
        self.try_send(addr, Method::GET, path, &[], Bytes::new())
            .await
    }

    /// Sends `method path` with extra headers and a body; panics on a transport error or after 10 s.
    pub async fn send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let req = build_request(method, path, headers, body.into());
        self.request(addr, req).await
    }

    /// Like [`Self::send`], returning transport errors; panics after 10 s.
    pub async fn try_send(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, ClientError> {
        let req = build_request(method, path, headers, body.into());
        self.try_request(addr, req).await
    }

    /// Sends a prepared request; a relative URI (`/p?q`) is completed with `http://addr`.
    pub async fn request(&self, addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} http://{addr}{}", req.method(), req.uri());
        match self.try_request(addr, req).await {
            Ok(reply) => reply,
            Err(e) => panic!("{what} failed: {e} ({e:?})"),
        }
    }

    /// Like [`Self::request`], returning transport errors; panics after 10 s.
    pub async fn try_request(
        &self,
        addr: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Reply, ClientError> {
        if req.uri().authority().is_none() {
            let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            *req.uri_mut() = format!("http://{addr}{pq}").parse::<Uri>()?;
        }
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let resp = self.inner.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, ClientError>(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what} did not complete within {REQUEST_TIMEOUT:?}"),
        }
    }
}

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Upgraded {
    /// Writes `data`, then reads exactly as many bytes back; panics after 10 s.
    pub async fn exchange(&mut self, data: &[u8]) -> Vec<u8> {
        let roundtrip = async {
            self.stream.write_all(data).await.expect("write upgraded");
            let mut back = vec![0; data.len()];
            self.stream
                .read_exact(&mut back)
                .await
                .expect("read upgraded");
            back
        };
        tokio::time::timeout(REQUEST_TIMEOUT, roundtrip)
            .await
            .expect("upgraded exchange timed out")
    }
}

/// Builds a request with a relative URI, for [`Client::request`].
pub fn build_request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("valid path");
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        req.headers_mut().append(
            name,
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    req
}

/// The kind of the first `io::Error` in `err`'s source chain (e.g. `ConnectionReset`).
pub fn io_error_kind(err: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

/// Writes `bytes` on a fresh TCP connection and returns what comes back (lossy UTF-8) once the
/// peer closes, resets, or stays idle for 2 s.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The peer may answer and close before reading everything: a failed write is not an error.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        if tokio::time::Instant::now() >= deadline {
            panic!("raw request to {addr} still receiving after {REQUEST_TIMEOUT:?}");
        }
        match tokio::time::timeout(RAW_IDLE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `GET path` with `Upgrade: protocol` over raw TCP and reads the response head only.
pub async fn upgrade(addr: SocketAddr, path: &str, protocol: &str) -> Upgraded {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("write upgrade request");
    // Byte by byte, so that nothing after the head is consumed.
    let read_head = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream
                .read_u8()
                .await
                .expect("connection closed inside the response head");
            head.push(byte);
        }
        head
    };
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .expect("upgrade head timed out");
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Upgraded {
        status,
        head,
        stream,
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RAW_IDLE: Duration = Duration::from_secs(2);

// === TLS and single connections ===

/// A TLS client for tests (rustls on ring): trusts the CAs it is given, optionally presents a
/// client certificate, offers the ALPN protocols, versions and cipher suites it is told to, and
/// sends SNI `localhost`. Each [`TlsClient::connect`] opens one connection.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: std::sync::Arc<rustls::ClientConfig>,
}

/// Settings of a [`TlsClient`] under construction.
pub struct TlsClientBuilder {
    roots: rustls::RootCertStore,
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
    alpn: Vec<Vec<u8>>,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    suites: Option<Vec<rustls::SupportedCipherSuite>>,
}

/// What a TLS handshake settled.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// The ALPN protocol chosen by the server, if any (`h2`, `http/1.1`).
    pub alpn: Option<String>,
    /// The protocol version.
    pub version: rustls::ProtocolVersion,
    /// The cipher suite.
    pub suite: rustls::CipherSuite,
    /// The server's end-entity certificate (DER).
    pub peer_cert: Vec<u8>,
}

/// One open connection (HTTP/1.1 or HTTP/2, plain or TLS) that requests are sent on in turn.
pub struct Conn {
    sender: Sender,
    authority: String,
    scheme: &'static str,
    /// The TLS handshake's outcome; `None` on a plain connection.
    pub tls: Option<TlsInfo>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl TlsClient {
    /// A client that trusts the CA certificates in `ca_pems` (PEM text), offers `h2` and
    /// `http/1.1`, TLS 1.3 and 1.2, and every suite ring has.
    pub fn builder(ca_pems: &[&str]) -> TlsClientBuilder {
        let mut roots = rustls::RootCertStore::empty();
        for pem in ca_pems {
            roots.add(der_cert(pem)).expect("a CA certificate");
        }
        TlsClientBuilder {
            roots,
            identity: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suites: None,
        }
    }

    /// Opens a TCP connection to `addr`, runs the handshake and starts HTTP/2 if ALPN chose
    /// `h2`, else HTTP/1.1. Errors are those of the connection or the handshake; panics after
    /// 10 s.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, ClientError> {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let handshake = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::try_from("localhost")?;
            let tls = connector.connect(name, tcp).await?;
            let (_, session) = tls.get_ref();
            let info = TlsInfo {
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                version: session
                    .protocol_version()
                    .expect("a version after the handshake"),
                suite: session
                    .negotiated_cipher_suite()
                    .expect("a suite after the handshake")
                    .suite(),
                peer_cert: session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default(),
            };
            let h2 = info.alpn.as_deref() == Some("h2");
            let mut conn = Conn::handshake(tls, h2, addr, "https").await?;
            conn.tls = Some(info);
            Ok::<_, ClientError>(conn)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, handshake).await {
            Ok(result) => result,
            Err(_) => panic!("TLS connect to {addr} did not complete within {REQUEST_TIMEOUT:?}"),
        }
    }

    /// Connects and sends `GET path` on a connection of its own.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
        self.connect(addr).await?.get(path).await
    }
}

impl TlsClientBuilder {
    /// Presents the client certificate and key (PEM text).
    pub fn identity(mut self, cert_pem: &str, key_pem: &str) -> Self {
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .expect("a private key");
        self.identity = Some((vec![der_cert(cert_pem)], key));
        self
    }

    /// Offers these ALPN protocols, in this order (none: no ALPN extension).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Offers TLS 1.2 only.
    pub fn tls12_only(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    /// Offers exactly these cipher suites.
    pub fn suites(mut self, suites: Vec<rustls::SupportedCipherSuite>) -> Self {
        self.suites = Some(suites);
        self
    }

    /// The client.
    pub fn build(self) -> TlsClient {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suites) = self.suites {
            provider.cipher_suites = suites;
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .expect("versions the suites support")
            .with_root_certificates(self.roots);
        let mut config = match self.identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client certificate"),
        };
        config.alpn_protocols = self.alpn;
        TlsClient {
            config: std::sync::Arc::new(config),
        }
    }
}

impl Conn {
    /// Opens a plain TCP connection to `addr` and starts HTTP/1.1 on it (kept alive between
    /// requests).
    pub async fn h1(addr: SocketAddr) -> Result<Conn, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        Conn::handshake(tcp, false, addr, "http").await
    }

    async fn handshake<I>(
        io: I,
        h2: bool,
        addr: SocketAddr,
        scheme: &'static str,
    ) -> Result<Conn, ClientError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = hyper_util::rt::TokioIo::new(io);
        let sender = if h2 {
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(send)
        };
        Ok(Conn {
            sender,
            authority: format!("localhost:{}", addr.port()),
            scheme,
            tls: None,
        })
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    /// `method path` with `body` on this connection; panics after 10 s.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, ClientError> {
        let mut req = build_request(method, path, &[], body.into());
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(send) => {
                    req.headers_mut()
                        .insert(http::header::HOST, self.authority.parse()?);
                    send.ready().await?;
                    send.send_request(req).await?
                }
                Sender::H2(send) => {
                    *req.uri_mut() =
                        format!("{}://{}{path}", self.scheme, self.authority).parse::<Uri>()?;
                    send.ready().await?;
                    send.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, ClientError>(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => panic!("{what} did not complete within {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// The DER of the first certificate in `pem`.
pub fn der_cert(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}
