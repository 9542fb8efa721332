//! The downstream side: bind, accept under a connection limit, run the TLS handshake when the
//! listener has `tls`, and serve HTTP/1.1 and HTTP/2 (by ALPN with TLS, h2c prior knowledge
//! without) on the same port, with header-read and idle timeouts. [`Listeners`] holds the
//! listeners of a running weir by name and moves them to a reloaded config: a listener whose
//! address did not change keeps its sockets, one whose address changed is bound anew. With
//! several workers ([`crate::workers`]) a listener has one socket per worker on its address
//! (`SO_REUSEPORT`: the kernel spreads new connections over them), each accepted on its
//! worker's runtime, and everything else (settings, connection limit, drain) shared.
//!
//! Position: step 1 of the walk. Config: `listeners[]` (and `workers`, through the handles
//! [`Listeners`] is given). Metrics: `weir_downstream_connections{listener}`.

pub(crate) mod conn;
pub(crate) mod service;
pub(crate) mod settings;
pub(crate) mod shutdown;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::generation::Current;
use crate::http::hygiene::Limits;
use crate::metrics::{DOWNSTREAM_CONNECTIONS, Metrics};
use crate::tls::TlsError;
use crate::tls::server::{self as tls_server, Certs, Loaded};
use conn::{ConnAction, ConnIo, ConnState, Side, Timeouts};
use service::ProxyService;
pub use settings::Settings;
use settings::Settings as ListenerConfig;
use shutdown::Drain;

/// Room in hyper's HTTP/1 buffer beyond `max_header_bytes`. The buffer holds a request head
/// as it is read and, on the way out, the response bytes not yet written: hyper stops taking
/// body from the upstream once it holds this much unwritten. Its default (8 KiB + 100 × 4 KiB)
/// let one slow reader pin 400 KiB here; at `max_header_bytes` + 8 KiB (72 KiB by default)
/// a head up to `max_header_bytes` still gets weir's own 431 with its JSON body.
const HEAD_SLACK: usize = 8192;
/// Bytes hyper's HTTP/2 side buffers per stream for a client that does not open its window
/// (hyper's default: 400 KiB); beyond it the upstream is read no further.
const H2_SEND_BUF: usize = 64 * 1024;
/// hyper's inline header array (`DEFAULT_MAX_HEADERS`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// What every connection of one listener shares: the listener's settings as they were when
/// the connection was accepted (a reload swaps in new ones for the connections after).
#[derive(Debug)]
pub(crate) struct ListenerShared {
    /// The listener's name (the `listener` label).
    pub name: Arc<str>,
    /// Request limits checked by hygiene.
    pub limits: Limits,
    /// The live generation.
    pub current: Current,
    /// `X-Forwarded-Proto` of this listener: `https` with TLS, else `http`.
    pub proto: &'static str,
    /// The connection timeouts (`header_read_timeout`, `idle_timeout`, `send_timeout`).
    pub timeouts: Timeouts,
    builder: auto::Builder<TokioExecutor>,
    connections: Gauge,
    /// The TLS settings of the handshake, when the listener has `tls`.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `max_connections` permits, kept across a reload that does not change the number.
    limit: Arc<Semaphore>,
    max_connections: usize,
    /// Owner of upgrade tunnels spawned by requests on this listener.
    pub tasks: TaskTracker,
    /// Request accounting for the drain, shared by every listener.
    pub drain: Arc<Drain>,
}

/// What the listeners of one weir share: where connections go, and who owns their tasks.
#[derive(Clone, Debug)]
struct Env {
    current: Current,
    metrics: Metrics,
    tasks: TaskTracker,
    drain: Arc<Drain>,
}

impl ListenerShared {
    fn new(
        cfg: &ListenerConfig,
        env: &Env,
        tls: Option<Arc<rustls::ServerConfig>>,
        limit: Arc<Semaphore>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new())
            // The connection's own timer enforces `header_read_timeout` (`conn`); hyper's
            // (30 s unless set) would arm and box a second timer for every request, and cut a
            // longer configured wait at 30 s.
            .header_read_timeout(None)
            .keep_alive(true)
            // One write per response: a small body is copied next to the head instead of a
            // vectored write (measured: 3-4 % less CPU per proxied request; large bodies pay a copy).
            .writev(false)
            .max_buf_size(
                cfg.max_header_bytes
                    .saturating_add(HEAD_SLACK)
                    .max(HEAD_SLACK),
            );
        if cfg.max_headers > HYPER_DEFAULT_MAX_HEADERS {
            // Only raise hyper's cap: setting it at all makes hyper allocate the header array
            // on every request instead of using its inline one. Up to the cap, weir's own
            // check answers 431 with the JSON body; beyond it, hyper's bare 431.
            h1.max_headers(cfg.max_headers.saturating_add(1));
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_send_buf_size(H2_SEND_BUF)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            name: cfg.name.clone(),
            limits: Limits {
                max_header_bytes: cfg.max_header_bytes,
                max_headers: cfg.max_headers,
                max_body_bytes: cfg.max_body_bytes,
            },
            current: env.current.clone(),
            proto: if tls.is_some() { "https" } else { "http" },
            timeouts: Timeouts {
                header_read: cfg.header_read_timeout,
                idle: cfg.idle_timeout,
                send: cfg.send_timeout,
            },
            builder,
            connections: env
                .metrics
                .gauge(DOWNSTREAM_CONNECTIONS, &[("listener", cfg.name.clone())]),
            tls,
            limit,
            max_connections: cfg.max_connections,
            tasks: env.tasks.clone(),
            drain: env.drain.clone(),
        }
    }
}

/// One socket of a bound listener, and the settings its next connections get.
#[derive(Debug)]
pub(crate) struct Listener {
    /// Registered with the runtime of the worker that accepts on it.
    tcp: TcpListener,
    shared: Arc<ArcSwap<ListenerShared>>,
    /// The listener's only socket (one worker).
    alone: bool,
}

impl Listener {
    /// Accepts until `stop` is cancelled, then closes the socket; each connection is a task
    /// (on the runtime this runs on) tracked by the listener's task tracker and asked to
    /// finish gracefully when `stop` fires. At `max_connections` open connections, counted
    /// over all sockets of the listener, it stops accepting (new ones wait in the kernel
    /// backlog), as HAProxy's `maxconn` does; with several workers each socket first takes
    /// one more connection off its backlog and holds it, unserved, until a slot frees.
    pub(crate) async fn serve(self, stop: CancellationToken) {
        loop {
            let name = self.shared.load().name.clone();
            let accepted = if self.alone {
                let Some(permit) = self.slot(&stop).await else {
                    return;
                };
                accept(&self.tcp, &stop, &name).await.map(|c| (c, permit))
            } else {
                // The sockets of a listener share its slots, and a slot held while waiting on
                // a socket with nothing to accept would hold back the connections waiting on
                // another socket. So a connection first, then a slot for it: at the limit
                // each socket holds one accepted connection back, the others wait in its
                // backlog.
                let Some(conn) = accept(&self.tcp, &stop, &name).await else {
                    return;
                };
                self.slot(&stop).await.map(|permit| (conn, permit))
            };
            let Some(((stream, peer), permit)) = accepted else {
                return;
            };
            // Loaded after the accept: a reload while it waited (TLS turned on, say) applies.
            let shared = self.shared.load_full();
            debug!(listener = %shared.name, %peer, worker = crate::workers::current(), "accepted");
            let stop = stop.clone();
            shared.tasks.clone().spawn(async move {
                shared.connections.increment(1.0);
                serve_connection(&shared, stream, peer, stop).await;
                shared.connections.decrement(1.0);
                drop(permit);
            });
        }
    }
}

impl Listener {
    /// One of the listener's `max_connections` slots, once one is free; `None` once `stop`
    /// fires.
    async fn slot(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let limit = self.shared.load().limit.clone();
        tokio::select! {
            p = limit.acquire_owned() => p.ok(),
            () = stop.cancelled() => None,
        }
    }
}

/// The next connection on `tcp`, or `None` once `stop` fires. A failed accept (EMFILE and
/// friends) is logged with `name` and retried after [`ACCEPT_BACKOFF`] instead of spinning.
/// The one accept loop of the listeners and the admin port.
pub(crate) async fn accept(
    tcp: &TcpListener,
    stop: &CancellationToken,
    name: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = tcp.accept() => match r {
                Ok(conn) => return Some(conn),
                Err(e) => warn!(listener = name, error = %e, "accept failed"),
            },
            () = stop.cancelled() => return None,
        }
        tokio::select! {
            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// How long a listener waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why listeners could not be started or moved to a new config; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The listener's address could not be bound (taken, not local, not permitted).
    #[error("listeners[{index}].listen (listener {listener}): cannot listen on {addr}: {source}")]
    Bind {
        /// The listener's place in `listeners` (from 0).
        index: usize,
        /// The listener's name.
        listener: Arc<str>,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listener's certificate, key or client CA could not be loaded.
    #[error("listeners[{index}].tls (listener {listener}): {source}")]
    Tls {
        /// The listener's place in `listeners` (from 0).
        index: usize,
        /// The listener's name.
        listener: Arc<str>,
        /// The file at fault and what is wrong with it.
        #[source]
        source: TlsError,
    },
    /// Called outside a tokio runtime: there is nothing to serve the listeners on.
    #[error("listeners can only be started from within weir's tokio runtime")]
    NoRuntime,
}

/// The listeners of a running weir, by name. [`Listeners::apply`] starts them and, on a
/// reload, moves them to the new config.
#[derive(Debug)]
pub(crate) struct Listeners {
    env: Env,
    /// The runtime of each worker, worker 0 first: a listener has a socket on each.
    workers: Vec<Handle>,
    /// Stops every listener (the drain); each listener's own token is a child of it.
    stop: CancellationToken,
    /// Addresses that override the config's, by listener name (see [`Listeners::pin`]).
    pins: Vec<(Arc<str>, SocketAddr)>,
    live: Mutex<Vec<Live>>,
}

/// One serving listener.
#[derive(Debug)]
struct Live {
    /// As configured (pins applied).
    cfg: ListenerConfig,
    /// As bound (port 0 resolved).
    addr: SocketAddr,
    shared: Arc<ArcSwap<ListenerShared>>,
    /// Stops this listener's accept loop and closes its connections gracefully.
    stop: CancellationToken,
    tls: Option<LiveTls>,
}

/// A listener's certificate and the task that reloads it when its files change.
#[derive(Debug)]
struct LiveTls {
    certs: Arc<Certs>,
    watch: CancellationToken,
}

/// What [`Listeners::apply`] will do for one configured listener, all of it loaded and bound.
struct Step {
    cfg: ListenerConfig,
    socket: Socket,
    shared: ListenerShared,
    tls: TlsStep,
}

enum Socket {
    /// The sockets of `live[i]` serve on.
    Keep(usize),
    /// Sockets bound anew, one per worker, all on `addr`.
    New {
        sockets: Vec<Bound>,
        addr: SocketAddr,
    },
}

/// A socket bound for a worker, registered with that worker's runtime.
struct Bound {
    tcp: TcpListener,
    worker: Handle,
}

enum TlsStep {
    Plain,
    /// The certificate of `live[from]` (same files) goes on with what was just read from them.
    Reuse {
        from: usize,
        certs: Arc<Certs>,
        loaded: Loaded,
    },
    /// Certificate files the listener did not have before.
    New(Arc<Certs>),
}

impl Listeners {
    /// No listeners yet, serving into `current`; their tasks (accept loops, connections,
    /// certificate watches) belong to `tasks` and stop with `stop`. `pins` override the
    /// configured address of the listeners they name, at start and on every reload. Each
    /// listener gets a socket per runtime of `workers` (worker 0 first, where the
    /// certificate watches run too; at least one).
    pub(crate) fn new(
        current: Current,
        metrics: Metrics,
        tasks: TaskTracker,
        drain: Arc<Drain>,
        stop: CancellationToken,
        pins: Vec<(Arc<str>, SocketAddr)>,
        workers: Vec<Handle>,
    ) -> Self {
        Self {
            env: Env {
                current,
                metrics,
                tasks,
                drain,
            },
            workers,
            stop,
            pins,
            live: Mutex::new(Vec::new()),
        }
    }

    /// Replaces the address of every listener in `configs` that a pin of these listeners
    /// names (see [`pin`]).
    pub(crate) fn pin(&self, configs: &mut [ListenerConfig]) {
        pin(&self.pins, configs);
    }

    /// How many workers accept on each listener.
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Each listener's name and bound address, in config order.
    pub(crate) fn addrs(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.lock()
            .iter()
            .map(|l| (l.cfg.name.clone(), l.addr))
            .collect()
    }

    /// Moves the listeners to `configs` (matched by name):
    /// - a listener whose address is unchanged (the configured one, the bound one, or port 0
    ///   on the bound IP) keeps its socket; its new settings (timeouts, limits, TLS) apply to
    ///   the connections accepted from now on, and the connections already open keep theirs;
    /// - a listener whose address changed is bound to the new address, then the old socket
    ///   stops accepting and its open connections are asked to finish, as in the drain;
    /// - a listener no longer configured stops the same way; a new one starts. A new listener
    ///   at the address of one that is no longer configured takes over its socket.
    ///
    /// TLS files are read anew, also for unchanged paths. Everything is bound and loaded
    /// before anything changes: on an error nothing did, and the listeners serve on as before.
    /// `swap` runs just before the new settings apply (the reload swaps the generation there).
    pub(crate) fn apply(
        &self,
        configs: &[ListenerConfig],
        swap: impl FnOnce(),
    ) -> Result<(), ListenerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ListenerError::NoRuntime);
        }
        let mut live = self.lock();
        let steps = self.prepare(&live, configs)?;
        swap();
        self.commit(&mut live, steps);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn prepare(
        &self,
        live: &[Live],
        configs: &[ListenerConfig],
    ) -> Result<Vec<Step>, ListenerError> {
        let mut claimed = vec![false; live.len()];
        let mut steps = Vec::with_capacity(configs.len());
        for (index, cfg) in configs.iter().enumerate() {
            let same_name = live
                .iter()
                .enumerate()
                .position(|(i, l)| !is_claimed(&claimed, i) && l.cfg.name == cfg.name);
            let same_socket = same_name
                .filter(|&i| live.get(i).is_some_and(|l| l.serves(cfg.listen)))
                .or_else(|| {
                    // Renamed: a listener no longer configured, at this address.
                    live.iter().enumerate().position(|(i, l)| {
                        !is_claimed(&claimed, i)
                            && same_name != Some(i)
                            && !configs.iter().any(|c| c.name == l.cfg.name)
                            && l.serves(cfg.listen)
                    })
                });
            for i in [same_name, same_socket].into_iter().flatten() {
                if let Some(c) = claimed.get_mut(i) {
                    *c = true;
                }
            }
            let tls_error = |source| ListenerError::Tls {
                index,
                listener: cfg.name.clone(),
                source,
            };
            let previous = same_name.and_then(|i| live.get(i).map(|l| (i, l)));
            let (tls, acceptor) = match &cfg.tls {
                None => (TlsStep::Plain, None),
                Some(settings) => {
                    let (step, certs) = match previous.and_then(|(i, l)| {
                        l.tls
                            .as_ref()
                            .filter(|_| l.cfg.tls.as_ref() == Some(settings))
                            .map(|t| (i, t.certs.clone()))
                    }) {
                        Some((from, certs)) => {
                            let loaded = certs.read().map_err(tls_error)?;
                            let step = TlsStep::Reuse {
                                from,
                                certs: certs.clone(),
                                loaded,
                            };
                            (step, certs)
                        }
                        None => {
                            let certs = Certs::load(settings).map_err(tls_error)?;
                            (TlsStep::New(certs.clone()), certs)
                        }
                    };
                    let config = tls_server::server_config(settings, certs).map_err(tls_error)?;
                    (step, Some(config))
                }
            };
            let (socket, limit) = match same_socket.and_then(|i| live.get(i).map(|l| (i, l))) {
                Some((i, l)) => {
                    let old = l.shared.load();
                    let limit = if old.max_connections == cfg.max_connections {
                        old.limit.clone()
                    } else {
                        Arc::new(Semaphore::new(cfg.max_connections))
                    };
                    (Socket::Keep(i), limit)
                }
                None => {
                    let bind_error = |source| ListenerError::Bind {
                        index,
                        listener: cfg.name.clone(),
                        addr: cfg.listen,
                        source,
                    };
                    let (sockets, addr) = bind(cfg.listen, &self.workers).map_err(bind_error)?;
                    let limit = Arc::new(Semaphore::new(cfg.max_connections));
                    (Socket::New { sockets, addr }, limit)
                }
            };
            steps.push(Step {
                cfg: cfg.clone(),
                socket,
                shared: ListenerShared::new(cfg, &self.env, acceptor, limit),
                tls,
            });
        }
        Ok(steps)
    }

    fn commit(&self, live: &mut Vec<Live>, steps: Vec<Step>) {
        let mut old: Vec<Option<Live>> = live.drain(..).map(Some).collect();
        let mut old_tls: Vec<Option<LiveTls>> = old
            .iter_mut()
            .map(|l| l.as_mut().and_then(|l| l.tls.take()))
            .collect();
        for step in steps {
            let tls = match step.tls {
                TlsStep::Plain => None,
                TlsStep::Reuse {
                    from,
                    certs,
                    loaded,
                } => {
                    certs.install(loaded);
                    match old_tls.get_mut(from).and_then(Option::take) {
                        Some(kept) => Some(kept),
                        None => Some(self.watch(certs)),
                    }
                }
                TlsStep::New(certs) => Some(self.watch(certs)),
            };
            let shared = Arc::new(step.shared);
            let kept = match step.socket {
                Socket::Keep(i) => old.get_mut(i).and_then(Option::take),
                Socket::New { .. } => None,
            };
            let next = match (kept, step.socket) {
                (Some(mut l), _) => {
                    l.shared.store(shared);
                    if l.cfg.name != step.cfg.name {
                        info!(listener = %step.cfg.name, was = %l.cfg.name, addr = %l.addr, "listener renamed");
                    }
                    l.cfg = step.cfg;
                    l.tls = tls;
                    l
                }
                (None, Socket::New { sockets, addr }) => {
                    let shared = Arc::new(ArcSwap::new(shared));
                    let stop = self.stop.child_token();
                    let workers = sockets.len();
                    for Bound { tcp, worker } in sockets {
                        let listener = Listener {
                            tcp,
                            shared: shared.clone(),
                            alone: workers == 1,
                        };
                        // On the worker's own runtime, as are the connections it accepts.
                        self.env
                            .tasks
                            .spawn_on(listener.serve(stop.clone()), &worker);
                    }
                    info!(listener = %step.cfg.name, %addr, tls = tls.is_some(), workers, "listening");
                    Live {
                        cfg: step.cfg,
                        addr,
                        shared,
                        stop,
                        tls,
                    }
                }
                (None, Socket::Keep(_)) => continue, // a listener is kept by one step only
            };
            live.push(next);
        }
        for retired in old.into_iter().flatten() {
            retired.stop.cancel();
            info!(listener = %retired.cfg.name, addr = %retired.addr,
                "stopped listening; open connections finish");
        }
        for unused in old_tls.into_iter().flatten() {
            unused.watch.cancel();
        }
    }

    /// Starts the task that reloads `certs` when its files change.
    fn watch(&self, certs: Arc<Certs>) -> LiveTls {
        let watch = self.stop.child_token();
        self.env
            .tasks
            .spawn(tls_server::watch(certs.clone(), watch.clone()));
        LiveTls { certs, watch }
    }
}

impl Live {
    /// Whether this listener's socket is the one `addr` asks for: the address it was
    /// configured with, the one it is bound to, or port 0 (any port) on its IP.
    fn serves(&self, addr: SocketAddr) -> bool {
        addr == self.cfg.listen
            || addr == self.addr
            || (addr.port() == 0 && addr.ip() == self.addr.ip())
    }
}

/// Replaces the address of every listener in `configs` that `pins` names (listener name →
/// address).
pub(crate) fn pin(pins: &[(Arc<str>, SocketAddr)], configs: &mut [ListenerConfig]) {
    for cfg in configs {
        if let Some((_, addr)) = pins.iter().find(|(n, _)| *n == cfg.name) {
            cfg.listen = *addr;
        }
    }
}

fn is_claimed(claimed: &[bool], i: usize) -> bool {
    claimed.get(i).copied().unwrap_or(true)
}

async fn serve_connection(
    shared: &Arc<ListenerShared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = &shared.tls else {
        return serve_io(shared, stream, peer, stop).await;
    };
    let acceptor = TlsAcceptor::from(tls.clone());
    // The handshake gets the header-read timeout: a client that opens connections and never
    // finishes them holds a connection slot no longer than a slow request head would.
    let deadline = tokio::time::Instant::now() + shared.timeouts.header_read;
    let handshake = acceptor.accept(stream).into_fallible();
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => serve_io(shared, tls, peer, stop).await,
        Ok(Err((e, tcp))) => {
            debug!(listener = %shared.name, %peer, error = %e, "TLS handshake failed");
            let _ = tokio::time::timeout_at(deadline, close_after_alert(tcp)).await;
        }
        Err(_) => {
            debug!(listener = %shared.name, %peer, "TLS handshake not finished in time; closing");
        }
    }
}

/// Closes a connection whose handshake failed so that the client reads the alert weir sent:
/// the write side first, then what the client still sends is read and dropped until it
/// closes too (at most [`ALERT_DRAIN`] bytes). Closing a socket with unread bytes would send
/// a reset, and the client would lose the alert: a TLS 1.3 client that finished its side of
/// the handshake has often sent its request by the time weir refuses its certificate.
async fn close_after_alert(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    let mut left = ALERT_DRAIN;
    while left > 0 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The most bytes [`close_after_alert`] reads from a refused client.
const ALERT_DRAIN: usize = 64 * 1024;

async fn serve_io<I>(shared: &Arc<ListenerShared>, io: I, peer: SocketAddr, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ConnState::new();
    let io = TokioIo::new(ConnIo::new(io, state.clone()));
    let svc = ProxyService::new(shared.clone(), state.clone(), peer);
    let conn = shared.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let side = Side::new();
    let mut closing = false;
    loop {
        let wait = match state.next_action(shared.timeouts) {
            ConnAction::WaitUntil(at) => at,
            ConnAction::SlowHead => {
                debug!(%peer, "request head not received in time; closing");
                return;
            }
            ConnAction::SendStalled => {
                // Dropping the connection drops its requests: their upstream tries are
                // cancelled and their response bodies released.
                debug!(%peer, "client read nothing for send_timeout; closing");
                return;
            }
            ConnAction::Idle if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                continue;
            }
            ConnAction::Idle => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        // The timer, a stalled write and the stop, polled only when one of them woke the
        // task (`Side`); the connection on every wake.
        let open = !closing;
        let events = async {
            tokio::select! {
                () = tokio::time::sleep_until(wait) => Woke::Recheck,
                () = state.stalled() => Woke::Recheck,
                () = stop.cancelled(), if open => Woke::Stop,
            }
        };
        tokio::pin!(events);
        side.rearm();
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                return Poll::Ready(Woke::Ended(res));
            }
            side.poll(cx, events.as_mut())
        })
        .await;
        match woke {
            Woke::Ended(res) => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Woke::Stop => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            Woke::Recheck => {}
        }
    }
}

/// What ended a connection task's wait.
enum Woke<E> {
    /// The connection is done.
    Ended(Result<(), E>),
    /// The listener stops: finish what is in flight, then close.
    Stop,
    /// The timer fired or a write started to stall: see what the connection needs now.
    Recheck,
}

/// Binds one socket on `addr` for each of `workers` (at least one), each registered with its
/// worker's runtime; with port 0 the first picks the port and the others bind that one.
/// Returns them with the bound address.
///
/// With more than one worker every socket has `SO_REUSEPORT`, and the kernel spreads new
/// connections over them by a hash of their addresses. Only then: that option also lets
/// another process of the same user bind the address, and a single socket keeps the
/// address to itself.
fn bind(addr: SocketAddr, workers: &[Handle]) -> std::io::Result<(Vec<Bound>, SocketAddr)> {
    let reuse_port = workers.len() > 1;
    let mut at = addr;
    let mut sockets = Vec::with_capacity(workers.len());
    for worker in workers {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        socket.listen(1024)?;
        let tcp: std::net::TcpListener = socket.into();
        at = tcp.local_addr()?;
        let tcp = {
            // Registered with the worker's reactor, which is the one that must poll it.
            let _on = worker.enter();
            TcpListener::from_std(tcp)?
        };
        sockets.push(Bound {
            tcp,
            worker: worker.clone(),
        });
    }
    if sockets.is_empty() {
        return Err(std::io::Error::other("no worker to accept on"));
    }
    Ok((sockets, at))
}
