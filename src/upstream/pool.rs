//! The HTTP/1.1 connection pool of one endpoint: idle keep-alive connections in a lock-free
//! queue, new ones made with the upstream's `connect_timeout` (TCP connect and, with `tls`, the
//! TLS handshake). Requests are exchanged by weir's own client ([`crate::upstream::h1`]) in
//! the request's task; a connection comes back to the queue when its response has ended
//! cleanly. An upgrade request (`Upgrade`, e.g. WebSocket) gets a fresh connection driven by
//! hyper, whose upgrade machinery hands it to the tunnel on `101`.
//!
//! Position: under [`crate::upstream::forward`], which picks the endpoint. Config:
//! `upstreams.<name>.connect_timeout`, `pool_idle_timeout`, `tls`. HTTP/2 upstreams use
//! [`crate::upstream::client`] instead (one multiplexed connection serves many requests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use http::header::UPGRADE;
use http::uri::Authority;
use hyper::client::conn::http1::Builder;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::http::{Body, Request, Response};
use crate::tls::client::{ClientTls, is_tls_failure};
use crate::upstream::h1::{self, Conn, Home, Io, SendError, sent_error};
use crate::workers;

/// Idle connections kept per endpoint, shared out among the workers' queues; more are closed
/// when they come back.
const MAX_IDLE: usize = 1024;

/// The fewest idle connections a worker's queue keeps.
const MIN_IDLE_PER_WORKER: usize = 64;

/// The most an upstream HTTP/1.1 connection reads ahead of what the client has taken, and the
/// longest response head: 64 KiB (nginx's `proxy_buffer_size` default is 4–8 KiB). A response
/// is read only as fast as the client drains it, one read at a time.
pub(crate) const UPSTREAM_READ_BUF: usize = 64 * 1024;

/// The pool of one endpoint. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: Authority,
    /// One queue per worker (`crate::workers`): a connection is registered with the reactor of
    /// the worker that opened it, so it serves that worker's requests only, and a request never
    /// waits on another worker's thread for its readiness.
    idle: Box<[ArrayQueue<Idle>]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<EndpointTls>,
    /// Set when the first connection goes idle and the sweep task starts: a pool that never
    /// held a connection (an endpoint of a generation a reload refused) runs no task.
    sweeping: AtomicBool,
    /// The pool itself, for the sweep task it starts.
    me: Weak<Shared>,
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
            .field(
                "idle",
                &self.idle.iter().map(ArrayQueue::len).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

struct Idle {
    conn: Conn,
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
        let queues = workers::slots();
        let per_queue = (MAX_IDLE / queues).max(MIN_IDLE_PER_WORKER);
        let shared = Arc::new_cyclic(|me| Shared {
            endpoint,
            idle: (0..queues).map(|_| ArrayQueue::new(per_queue)).collect(),
            connect_timeout,
            idle_timeout,
            tls,
            sweeping: AtomicBool::new(false),
            me: me.clone(),
        });
        Self { shared }
    }

    /// Sends `req` (origin-form URI, `Host` set) over an idle connection, or a new one.
    ///
    /// An idle connection the upstream has closed is skipped, and a request whose first write
    /// fails (the close raced it) goes to the next one: a keep-alive race fails a request only
    /// when the upstream closes after taking it, as it would with any client. Errors:
    /// `upstream-connect` when no connection could be made (the request never left),
    /// `upstream-tls` when the TLS handshake failed or the upstream refused it right after
    /// (TLS 1.3 reports a refused client certificate only when the first request is read),
    /// `payload-too-large` when the request body outgrew the listener's limit,
    /// `upstream-reset` otherwise.
    ///
    /// Not an `async fn`, which would hold the request twice (its argument and the local
    /// made of it): 1,960 bytes of future per request where this is 960, under the
    /// allocator's per-thread cache limit (1,032).
    #[allow(clippy::manual_async_fn)] // the size of the future, above
    pub(crate) fn send(
        self,
        mut req: Request,
    ) -> impl Future<Output = Result<Response, ProxyError>> + Send {
        async move {
            if req.headers().contains_key(UPGRADE) {
                // Boxed, as the connect below: rare, and large.
                return Box::pin(self.upgrade(req)).await;
            }
            let shared = &self.shared;
            while let Some(conn) = shared.pop_open() {
                match h1::send(conn, req, self.shared.clone()).await {
                    Ok(resp) => return Ok(resp),
                    Err(SendError::Unsent(unsent)) => req = *unsent,
                    Err(SendError::Failed(e)) => return Err(e),
                }
            }
            // Boxed: a connect (with its TLS handshake: 1,376 bytes of state) is rare under
            // keep-alive; inline, it made every request's pool future 2,736 bytes.
            let io = Box::pin(self.connect_within()).await?;
            match h1::send(Conn::new(io), req, self.shared.clone()).await {
                Ok(resp) => Ok(resp),
                // A TLS error on a new connection's first exchange is the handshake's outcome: the
                // upstream refused it (a TLS 1.3 server rejects a client certificate after the
                // client considers the handshake done) and never saw the request.
                Err(SendError::Failed(ProxyError::UpstreamReset(e)))
                    if shared.tls.is_some() && is_tls_failure(&*e) =>
                {
                    Err(ProxyError::UpstreamTls(e))
                }
                Err(SendError::Failed(e)) => Err(e),
                Err(SendError::Unsent(_)) => Err(ProxyError::UpstreamReset(Box::new(
                    std::io::Error::other("a new connection closed before the request was written"),
                ))),
            }
        }
    }

    /// An upgrade request, on a connection of its own that hyper drives: on `101` the
    /// connection becomes the tunnel's; on any other answer it closes after the response.
    async fn upgrade(self, req: Request) -> Result<Response, ProxyError> {
        let io = self.connect_within().await?;
        let (mut tx, conn) = Builder::new()
            .max_buf_size(UPSTREAM_READ_BUF)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        match tx.send_request(req).await {
            Ok(resp) => Ok(resp.map(Body::incoming)),
            Err(e) if self.shared.tls.is_some() && is_tls_failure(&e) => {
                Err(ProxyError::UpstreamTls(Box::new(e)))
            }
            Err(e) => Err(sent_error(e)),
        }
    }

    /// A new connection within the connect timeout.
    async fn connect_within(&self) -> Result<Io, ProxyError> {
        match tokio::time::timeout(self.shared.connect_timeout, self.connect()).await {
            Ok(connected) => connected,
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout");
                Err(ProxyError::UpstreamConnect(Box::new(e)))
            }
        }
    }

    /// A new connection: TCP, then the TLS handshake when the upstream has `tls`. Unbounded in
    /// time: the caller applies the connect timeout.
    async fn connect(&self) -> Result<Io, ProxyError> {
        let shared = &self.shared;
        let stream = TcpStream::connect(shared.endpoint.as_str())
            .await
            .map_err(|e| ProxyError::UpstreamConnect(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &shared.tls else {
            return Ok(Io::Tcp(stream));
        };
        let Some(name) = tls.name.clone() else {
            let e = std::io::Error::other(format!(
                "endpoint host {} is no valid TLS server name: set tls.sni",
                shared.endpoint.host()
            ));
            return Err(ProxyError::UpstreamTls(Box::new(e)));
        };
        match tls.tls.connect(name, stream).await {
            Ok(stream) => Ok(Io::Tls(Box::new(stream))),
            Err(e) => Err(ProxyError::UpstreamTls(Box::new(e))),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// The calling worker's idle queue.
    fn queue(&self) -> &ArrayQueue<Idle> {
        &self.idle[workers::current() % self.idle.len()]
    }

    /// The most recently kept idle connection still open and within the idle timeout; those
    /// that are not are closed. Outside `send`'s future on purpose: a connection borrowed
    /// there (to check it) stays in that future's state, 104 bytes, after it is sent on.
    fn pop_open(&self) -> Option<Conn> {
        let idle = self.queue();
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if since.elapsed() <= self.idle_timeout && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }
}

impl Home for Shared {
    /// Keeps `conn` for the next request (a read buffer grown by a large response is let go),
    /// and starts the sweep task with the first one kept.
    fn keep(&self, mut conn: Conn) {
        if conn.is_large() {
            conn.shrink();
        }
        let since = Instant::now();
        let _ = self.queue().push(Idle { conn, since });
        if !self.sweeping.load(Ordering::Relaxed)
            && !self.sweeping.swap(true, Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(sweep(self.me.clone()));
        }
    }
}

/// Closes connections idle for longer than the pool's idle timeout, and lets the others'
/// read buffers go (an idle connection then holds only its socket), until the pool is gone.
async fn sweep(pool: Weak<Shared>) {
    let period = match pool.upgrade() {
        Some(p) => (p.idle_timeout / 2).max(Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        for queue in &pool.idle {
            for _ in 0..queue.len() {
                let Some(mut idle) = queue.pop() else { break };
                if idle.since.elapsed() <= pool.idle_timeout && idle.conn.is_open() {
                    idle.conn.shrink();
                    let _ = queue.push(idle);
                }
            }
        }
    }
}
