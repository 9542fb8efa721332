//! `App`: binds every listener and the admin port for a config, runs them, and stops them.
//!
//! Position: the top of the library; `main.rs` and the integration tests start weir through it.
//! Config: all of it. Owns the task tracker and the stop token of the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState, metrics::Metrics};
use crate::config::Config;
use crate::generation::{Current, Generation};
use crate::reload::{self, ReloadError, Reloader};
use crate::route::BuildError;
use crate::server::Listener;
use crate::server::shutdown::Drain;

/// Starts weir.
#[derive(Debug)]
pub struct App;

/// Why weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener or the admin port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics recorder could not be built.
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// The config does not compile into a generation.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The config asks for a feature this build cannot serve; weir refuses to start rather
    /// than serve something else (plaintext where TLS was asked for, say).
    #[error("{0} is not supported by this version of weir")]
    Unsupported(String),
}

/// A running weir: its bound addresses and the handle that stops it.
#[derive(Debug)]
pub struct Running {
    listeners: Vec<(Arc<str>, SocketAddr)>,
    admin: SocketAddr,
    /// Stops the listeners (and asks their connections to finish) and the upkeep task.
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Stops the admin port, last, so that `/readyz` answers 503 throughout the drain.
    admin_stop: CancellationToken,
    admin_tasks: TaskTracker,
    ready: Arc<AtomicBool>,
    drain: Arc<Drain>,
    drain_delay: Duration,
    drain_timeout: Duration,
    reloader: Arc<Reloader>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Every connection finished within `drain.timeout` (and no second signal came).
    pub in_time: bool,
    /// Requests that ended during the drain.
    pub completed: u64,
    /// Requests still in flight when the drain ended.
    pub cut: u64,
}

impl App {
    /// Builds the first generation, binds every listener and the admin port (all before
    /// serving, so a bind error leaves nothing running), then serves them.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        if let Some(what) = unsupported(&config) {
            return Err(StartError::Unsupported(what));
        }
        let metrics = Metrics::new()?;
        let config = Arc::new(config);
        let current: Current = Arc::new(ArcSwap::from_pointee(Generation::build(
            config.clone(),
            &metrics,
        )?));
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let drain = Arc::new(Drain::new(&metrics));

        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let listener =
                Listener::bind(l, current.clone(), &metrics, tasks.clone(), drain.clone())
                    .map_err(|source| StartError::Bind {
                        addr: l.listen,
                        source,
                    })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: l.listen,
                source,
            })?;
            bound.push((l.name.clone(), addr, listener));
        }
        let admin_tcp = TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = admin_tcp.local_addr().map_err(|source| StartError::Bind {
            addr: config.admin.listen,
            source,
        })?;

        let ready = Arc::new(AtomicBool::new(true));
        let mut listeners = Vec::with_capacity(bound.len());
        for (name, addr, listener) in bound {
            tasks.spawn(listener.serve(stop.clone()));
            tracing::info!(listener = %name, %addr, "listening");
            listeners.push((name, addr));
        }
        let state = Arc::new(AdminState {
            metrics: metrics.clone(),
            current: current.clone(),
            ready: ready.clone(),
        });
        let (admin_stop, admin_tasks) = (CancellationToken::new(), TaskTracker::new());
        admin_tasks.spawn(admin::serve(
            admin_tcp,
            state,
            admin_stop.clone(),
            admin_tasks.clone(),
        ));
        tracing::info!(addr = %admin_addr, "admin listening");
        let upkeep_stop = stop.clone();
        let (upkeep_current, upkeep_metrics) = (current.clone(), metrics.clone());
        tasks.spawn(async move {
            let (current, metrics) = (upkeep_current, upkeep_metrics);
            let stop = upkeep_stop;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {
                        current.load().publish_gauges();
                        metrics.run_upkeep();
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(Running {
            listeners,
            admin: admin_addr,
            stop,
            tasks,
            admin_stop,
            admin_tasks,
            ready,
            drain,
            drain_delay: config.drain.delay,
            drain_timeout: config.drain.timeout,
            reloader: Arc::new(Reloader::new(current, metrics)),
        })
    }
}

/// The first key of `config` that parses (it is the config contract) but whose feature this
/// build lacks, described; `None` when there is none. Weir refuses such a config at start and
/// on reload rather than serve something else (plaintext where TLS was asked for, say).
pub(crate) fn unsupported(config: &Config) -> Option<String> {
    if let Some(i) = config.listeners.iter().position(|l| l.tls.is_some()) {
        return Some(format!("listeners[{i}].tls (TLS termination)"));
    }
    None
}

impl Running {
    /// The bound address of the first listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listeners.first().map_or(self.admin, |(_, a)| *a)
    }

    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Swaps in `config` (see [`Reloader::reload`]); on an error the running generation stays.
    /// Listener settings (addresses, timeouts, limits), `[admin]` and `[drain]` take effect only
    /// at the next start.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        self.reloader.reload(config)
    }

    /// Reads, validates and swaps in the config file at `path`, as SIGHUP does.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        self.reloader.reload_file(path)
    }

    /// Reloads `file` whenever it changes (see [`crate::reload::watch`]), until weir stops.
    pub fn watch(&self, file: std::path::PathBuf) {
        self.tasks.spawn(reload::watch(
            self.reloader.clone(),
            file,
            self.stop.clone(),
        ));
    }

    /// Stops weir as SIGTERM does ([`Running::drain`] without a second signal). Returns true
    /// when everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.drain(std::future::pending()).await.in_time
    }

    /// Drains and stops weir:
    /// 1. readiness goes false at once (`/readyz` answers 503) and HTTP/1 responses from now on
    ///    carry `Connection: close`;
    /// 2. weir keeps serving, and accepting, for `drain.delay` (load balancers and endpoint
    ///    lists catch up; a sidecar's app still gets its last calls through);
    /// 3. listeners stop accepting and open connections are asked to finish (HTTP/1 after the
    ///    response in flight, HTTP/2 with GOAWAY); requests in flight get `drain.timeout`;
    /// 4. the admin port stops last.
    ///
    /// `cut` (a second signal) ends the wait at once. Requests still in flight then are counted
    /// as cut (`weir_drain_requests_total{result="cut"}`) and logged.
    pub async fn drain(self, cut: impl Future<Output = ()>) -> Drained {
        self.ready.store(false, Ordering::Release);
        self.drain.start();
        tracing::info!(
            delay = ?self.drain_delay,
            timeout = ?self.drain_timeout,
            in_flight = self.drain.in_flight(),
            "draining"
        );
        let finish = async {
            tokio::time::sleep(self.drain_delay).await;
            self.stop.cancel();
            self.tasks.close();
            tokio::time::timeout(self.drain_timeout, self.tasks.wait())
                .await
                .is_ok()
        };
        let in_time = tokio::select! {
            done = finish => done,
            () = cut => false,
        };
        // After a second signal: stop accepting too (the process is about to end).
        self.stop.cancel();
        let cut = if in_time { 0 } else { self.drain.cut() };
        let completed = self.drain.completed();
        if in_time {
            tracing::info!(completed, "drained");
        } else {
            tracing::warn!(completed, cut, "drain ended before every request finished");
        }
        self.admin_stop.cancel();
        self.admin_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_tasks.wait()).await;
        Drained {
            in_time,
            completed,
            cut,
        }
    }
}
