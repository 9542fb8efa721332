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
use crate::route::BuildError;
use crate::server::Listener;

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
    stop: CancellationToken,
    tasks: TaskTracker,
    ready: Arc<AtomicBool>,
    drain_timeout: Duration,
}

impl App {
    /// Builds the first generation, binds every listener and the admin port (all before
    /// serving, so a bind error leaves nothing running), then serves them.
    pub async fn start(config: Config) -> Result<Running, StartError> {
        refuse_unsupported(&config)?;
        let metrics = Metrics::new()?;
        let config = Arc::new(config);
        let current: Current = Arc::new(ArcSwap::from_pointee(Generation::build(
            config.clone(),
            &metrics,
        )?));
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();

        let mut bound = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let listener =
                Listener::bind(l, current.clone(), &metrics, tasks.clone()).map_err(|source| {
                    StartError::Bind {
                        addr: l.listen,
                        source,
                    }
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
        tasks.spawn(admin::serve(admin_tcp, state, stop.clone(), tasks.clone()));
        tracing::info!(addr = %admin_addr, "admin listening");
        let upkeep_stop = stop.clone();
        tasks.spawn(async move {
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
            ready,
            drain_timeout: config.drain.timeout,
        })
    }
}

/// Keys that parse (they are the config contract) but whose feature this build lacks.
fn refuse_unsupported(config: &Config) -> Result<(), StartError> {
    for (i, l) in config.listeners.iter().enumerate() {
        if l.tls.is_some() {
            return Err(StartError::Unsupported(format!(
                "listeners[{i}].tls (TLS termination)"
            )));
        }
    }
    for u in &config.upstreams {
        if u.tls.is_some() {
            return Err(StartError::Unsupported(format!(
                "upstreams.{}.tls (TLS to upstreams)",
                u.name
            )));
        }
        if u.dns.is_some() {
            return Err(StartError::Unsupported(format!(
                "upstreams.{}.dns (DNS discovery)",
                u.name
            )));
        }
    }
    Ok(())
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

    /// Stops weir: readiness goes false, listeners stop accepting, open connections are asked
    /// to finish (HTTP/1 closes after the response in flight, HTTP/2 gets GOAWAY), and this
    /// waits up to `drain.timeout` for them. Returns true when everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.ready.store(false, Ordering::Release);
        self.stop.cancel();
        self.tasks.close();
        let done = tokio::time::timeout(self.drain_timeout, self.tasks.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!("drain timeout reached; connections still open were cut");
        }
        done
    }
}
