//! The HTTP/1.1 connection pool of one endpoint: idle keep-alive connections in a lock-free
//! queue, new ones made with the upstream's `connect_timeout` (TCP connect and, with `tls`, the
//! TLS handshake), each returned to the queue when its response body has been read to the end.
//!
//! Position: under [`crate::upstream::forward`], which picks the endpoint. Config:
//! `upstreams.<name>.connect_timeout`, `pool_idle_timeout`, `tls`. HTTP/2 upstreams use
//! [`crate::upstream::client`] instead (one multiplexed connection serves many requests).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::uri::Authority;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{BoxError, ProxyError, caused_by};
use crate::http::{Body, BodyTooLarge, Request, RequestBodyError, RequestBodyStalled, Response};
use crate::tls::client::{ClientTls, is_tls_failure};

/// Idle connections kept per endpoint; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// The most an upstream HTTP/1.1 connection reads ahead of what the client has taken: hyper's
/// read buffer, which holds the response head and then each body chunk until it is passed on.
/// hyper's default (8 KiB + 100 × 4 KiB) let a slow reader pin about 1 MB per response (this
/// buffer, the body channel's chunk and the listener's write buffer); at 64 KiB the response
/// head must fit in 64 KiB (nginx's `proxy_buffer_size` default is 4–8 KiB), and a response
/// is read only as fast as the client drains it, one chunk at a time.
pub(crate) const UPSTREAM_READ_BUF: usize = 64 * 1024;

/// The pool of one endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: Authority,
    idle: ArrayQueue<Idle>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    builder: Builder,
    tls: Option<EndpointTls>,
    /// Set when the first connection goes idle and the sweep task starts: a pool that never
    /// held a connection (an endpoint of a generation a reload refused) runs no task.
    sweeping: AtomicBool,
}

/// TLS toward one endpoint: the upstream's client settings and the name the endpoint's
/// certificate is verified against.
#[derive(Clone, Debug)]
pub(crate) struct EndpointTls {
    /// The upstream's TLS settings.
    pub tls: ClientTls,
    /// The name to verify (and send as SNI when it is a DNS name); `None` when the endpoint's
    /// host is no valid server name and `tls.sni` is not set, so every handshake fails.
    pub name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.endpoint)
            .field("idle", &self.idle.len())
            .finish_non_exhaustive()
    }
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

impl Pool {
    /// A pool for `endpoint`, speaking TLS when `tls` is set. With its first idle connection it
    /// starts a sweeper that closes connections idle for longer than `idle_timeout`; it ends by
    /// itself when the pool is dropped.
    pub(crate) fn new(
        endpoint: Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        tls: Option<EndpointTls>,
    ) -> Self {
        let mut builder = Builder::new();
        // One write per request head and small body (see the listener's http1 settings).
        builder.max_buf_size(UPSTREAM_READ_BUF).writev(false);
        let shared = Arc::new(Shared {
            endpoint,
            idle: ArrayQueue::new(MAX_IDLE),
            connect_timeout,
            idle_timeout,
            builder,
            tls,
            sweeping: AtomicBool::new(false),
        });
        Self { shared }
    }

    /// Sends `req` (origin-form URI, `Host` set) over an idle connection, or a new one.
    ///
    /// A request that an idle connection hands back unsent (it closed meanwhile) goes to the
    /// next one, so a keep-alive race never fails a request. Errors: `upstream-connect` when no
    /// connection could be made (the request never left), `upstream-tls` when the TLS handshake
    /// failed or the upstream refused it right after (TLS 1.3 reports a refused client
    /// certificate only when the first request is read), `payload-too-large` when the request
    /// body outgrew the listener's limit, `upstream-reset` otherwise.
    pub(crate) async fn send(self, mut req: Request) -> Result<Response, ProxyError> {
        let shared = &self.shared;
        while let Some(Idle { mut tx, since }) = shared.idle.pop() {
            if tx.is_closed() || since.elapsed() > shared.idle_timeout {
                continue;
            }
            if !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(sent_error(e.into_error())),
                },
            }
        }
        let mut tx = match tokio::time::timeout(shared.connect_timeout, self.connect()).await {
            Ok(connected) => connected?,
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
                return Err(ProxyError::UpstreamConnect(Box::new(e)));
            }
        };
        match tx.send_request(req).await {
            Ok(resp) => Ok(self.wrap(resp, tx)),
            // A TLS error on a new connection's first exchange is the handshake's outcome: the
            // upstream refused it (a TLS 1.3 server rejects a client certificate after the
            // client considers the handshake done) and never saw the request.
            Err(e) if shared.tls.is_some() && is_tls_failure(&e) => {
                Err(ProxyError::UpstreamTls(Box::new(e)))
            }
            Err(e) => Err(sent_error(e)),
        }
    }

    /// A new connection: TCP, then the TLS handshake when the upstream has `tls`. Unbounded in
    /// time: the caller applies the connect timeout.
    async fn connect(&self) -> Result<SendRequest<Body>, ProxyError> {
        let shared = &self.shared;
        let stream = TcpStream::connect(shared.endpoint.as_str())
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &shared.tls else {
            return self.handshake(stream).await;
        };
        let Some(name) = tls.name.clone() else {
            let e = std::io::Error::other(format!(
                "endpoint host {} is no valid TLS server name: set tls.sni",
                shared.endpoint.host()
            ));
            return Err(ProxyError::UpstreamTls(Box::new(e)));
        };
        match tls.tls.connect(name, stream).await {
            Ok(stream) => self.handshake(stream).await,
            Err(e) => Err(ProxyError::UpstreamTls(Box::new(e))),
        }
    }

    /// Starts HTTP/1.1 on a connected stream.
    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Body>, ProxyError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, conn) = self
            .shared
            .builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        // The connection task ends when its `SendRequest` is dropped (by the pool, the sweeper
        // or a response body) or when the upstream closes the connection.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// The response with a body that gives the connection back once read to the end. A 101
    /// keeps the connection: it now belongs to the upgrade.
    fn wrap(&self, resp: http::Response<Incoming>, tx: SendRequest<Body>) -> Response {
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(Body::incoming);
        }
        let pool = self.shared.clone();
        resp.map(|inner| {
            Body::boxed(Returning {
                inner,
                done: false,
                ticket: Some((tx, pool)),
            })
        })
    }
}

/// A response body that returns its connection to the pool when dropped after its last byte.
struct Returning {
    inner: Incoming,
    /// The body yielded its end (hyper does not mark a chunked body as ended by itself).
    done: bool,
    ticket: Option<(SendRequest<Body>, Arc<Shared>)>,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body dropped before its end leaves bytes on the wire: the connection goes with it.
        if let Some((tx, pool)) = self.ticket.take()
            && (self.done || http_body::Body::is_end_stream(&self.inner))
            && !tx.is_closed()
        {
            pool.keep(tx);
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Keeps `tx` for the next request, and starts the sweep task with the first one kept.
    fn keep(self: &Arc<Self>, tx: SendRequest<Body>) {
        let since = Instant::now();
        let _ = self.idle.push(Idle { tx, since });
        if !self.sweeping.load(Ordering::Relaxed)
            && !self.sweeping.swap(true, Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(sweep(Arc::downgrade(self)));
        }
    }
}

/// Closes connections idle for longer than the pool's idle timeout, until the pool is gone.
async fn sweep(pool: Weak<Shared>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        for _ in 0..pool.idle.len() {
            let Some(idle) = pool.idle.pop() else { break };
            if !idle.tx.is_closed() && idle.since.elapsed() <= pool.idle_timeout {
                let _ = pool.idle.push(idle);
            }
        }
    }
}

/// An error after the request may have reached the upstream: the client's request body
/// (too large: 413; unreadable: 400), or else the upstream connection (502).
pub(crate) fn sent_error<E: StdError + Send + Sync + 'static>(e: E) -> ProxyError {
    if caused_by::<BodyTooLarge>(&e) {
        ProxyError::PayloadTooLarge
    } else if caused_by::<RequestBodyError>(&e) {
        ProxyError::BadRequest("request body could not be read from the client")
    } else if caused_by::<RequestBodyStalled>(&e) {
        ProxyError::BadRequest("the client stopped sending the request body")
    } else {
        ProxyError::UpstreamReset(Box::new(e) as BoxError)
    }
}
