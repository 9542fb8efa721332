//! `App`: binds every listener and the admin port for a config, runs them, reloads them, and
//! stops them.
//!
//! Position: the top of the library; `main.rs` and the integration tests start weir through it.
//! Config: all of it. Owns the task tracker and the stop token of the process.
//!
//! What a reload ([`Running::reload`], SIGHUP, a changed config file) changes: routes and
//! upstreams (a new generation), and listeners ([`Listeners::apply`]): a listener whose address
//! is unchanged keeps its socket and applies its new settings (timeouts, limits, TLS) to the
//! connections it accepts from then on; one whose address changed is bound anew first (a bind
//! failure refuses the reload) and its old socket stops accepting while its connections finish;
//! a removed listener stops the same way, and a new one starts. Listener certificates are read
//! again on every reload, and also whenever their files change. `[admin]`, `[drain]` and
//! `workers` take effect at the next start.
//!
//! Workers ([`crate::workers`]): weir serves on the runtime `App::start` runs on (worker 0,
//! which also runs the admin port, reloads, health checks, discovery and upkeep) and, with
//! `workers` above 1, on that many runtimes in all, each accepting on its own socket of every
//! listener. They stop when the [`Running`] is drained or dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::generation::BuildError;
use crate::generation::{Current, Generation};
use crate::metrics::Metrics;
use crate::reload::{self, ReloadError, Reloader};
use crate::server::shutdown::Drain;
use crate::server::{ListenerError, Listeners, pin};
use crate::workers::{self, Workers};

/// Starts weir.
#[derive(Debug)]
pub struct App;

/// Why weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin port could not be bound.
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
    /// A listener could not be bound, or its certificate, key or client CA could not be
    /// loaded; the error names the listener and the address or file at fault.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A worker's thread or runtime could not be started, or `App::start` was not called
    /// within a tokio runtime.
    #[error("workers: cannot start the worker runtimes: {0}")]
    Workers(#[source] std::io::Error),
}

/// A running weir: its bound addresses and the handle that stops it.
#[derive(Debug)]
pub struct Running {
    listeners: Arc<Listeners>,
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
    /// Workers 1..N; dropped last, once everything on them has stopped (or been cut).
    workers: Workers,
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
    /// Builds the first generation, starts the workers (`workers`), binds every listener (a
    /// socket per worker) and the admin port and loads the listeners' TLS files (all before
    /// serving, so an error leaves nothing running), then serves them. Call it within a tokio
    /// runtime: that one is worker 0.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        Self::start_pinned(config, Vec::new()).await
    }

    /// Like [`App::start`], with listener addresses that the caller owns: each `(name, addr)`
    /// replaces the address of the listener called `name`, in `config` and in every config
    /// reloaded later, so that no reload moves that listener. For programs that embed weir and
    /// pick its ports themselves (tests bind port 0).
    pub async fn start_pinned(
        mut config: Config,
        pins: Vec<(Arc<str>, SocketAddr)>,
    ) -> Result<Running, StartError> {
        let metrics = Metrics::new()?;
        pin(&pins, &mut config.listeners);
        let config = Arc::new(config);
        let current: Current = Arc::new(ArcSwap::from_pointee(Generation::build(
            config.clone(),
            &metrics,
        )?));
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let drain = Arc::new(Drain::new(&metrics));
        let workers =
            Workers::start(workers::resolve(config.workers)).map_err(StartError::Workers)?;
        let listeners = Arc::new(Listeners::new(
            current.clone(),
            metrics.clone(),
            tasks.clone(),
            drain.clone(),
            stop.clone(),
            pins,
            workers.handles().to_vec(),
        ));

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
        listeners
            .apply(&config.listeners, || current.load().start())
            .map_err(StartError::from)?;

        let ready = Arc::new(AtomicBool::new(true));
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
                    () = tokio::time::sleep(UPKEEP) => {
                        current.load().publish_gauges();
                        metrics.run_upkeep();
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(Running {
            admin: admin_addr,
            stop,
            tasks,
            admin_stop,
            admin_tasks,
            ready,
            drain,
            drain_delay: config.drain.delay,
            drain_timeout: config.drain.timeout,
            reloader: Arc::new(Reloader::new(current, metrics, listeners.clone())),
            listeners,
            workers,
        })
    }
}

impl Running {
    /// The bound address of the first listener (after a reload, of the reloaded config).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.listeners
            .addrs()
            .first()
            .map_or(self.admin, |(_, a)| *a)
    }

    /// The bound address of the listener called `name` (after a reload, where it is now).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .addrs()
            .into_iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| a)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Swaps in `config` (see [`Reloader::reload`]): routes, upstreams and listeners (see the
    /// module docs); on an error nothing changes. `[admin]`, `[drain]` and `workers` take
    /// effect only at the next start (a changed `workers` is logged as a warning).
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
        // Last: workers 1..N end, with whatever a cut drain left on them.
        drop(self.workers);
        Drained {
            in_time,
            completed,
            cut,
        }
    }
}

/// How often the upkeep task samples the gauges that are not kept current per request (retry
/// budgets, requests in flight) and runs the recorder's upkeep (histogram rotation). A scrape
/// sees values at most this old.
pub(crate) const UPKEEP: Duration = Duration::from_secs(1);
