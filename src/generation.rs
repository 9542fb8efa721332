//! `Generation`: the router, route stacks and upstream stacks built from one config.
//!
//! Position: loaded once per request by [`crate::server::service`]; a new config builds a new
//! generation that is swapped in atomically, so requests finish on the one they started on.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::metrics::{Metrics, RouteMetrics};
use crate::route::{self, Route, RouteError};
use crate::router::Router;
use crate::router::matcher::Matcher;
use crate::upstream::{self, Upstream};

/// The handle every listener reads the live generation through.
pub(crate) type Current = Arc<ArcSwap<Generation>>;

/// One config, compiled.
#[derive(Debug)]
pub(crate) struct Generation {
    /// The config this generation was built from (served on the admin `/config`).
    pub config: Arc<Config>,
    /// Routes in match order.
    pub router: Router<Route>,
    /// Handles for requests that match no route.
    pub unrouted: RouteMetrics,
    /// Every upstream, in config order, with handles on its policies' state (`/status.json`).
    pub upstreams: Vec<Upstream>,
}

impl Generation {
    /// Builds every upstream stack once, then every route over them.
    pub(crate) fn build(config: Arc<Config>, metrics: &Metrics) -> Result<Self, BuildError> {
        Self::build_after(config, metrics, None)
    }

    /// Builds the generation that follows `previous` (a reload). An upstream whose settings
    /// did not change keeps its stack, and with it its state: breaker, retry budget and
    /// latency, shedding slots, pooled connections. Routes are built anew.
    pub(crate) fn build_after(
        config: Arc<Config>,
        metrics: &Metrics,
        previous: Option<&Generation>,
    ) -> Result<Self, BuildError> {
        let built: Vec<Upstream> = config
            .upstreams
            .iter()
            .map(|u| match previous.and_then(|p| p.kept_upstream(u)) {
                Some(kept) => Ok(kept),
                None => upstream::build(u, metrics).map_err(|source| BuildError::UpstreamTls {
                    upstream: u.name.clone(),
                    source,
                }),
            })
            .collect::<Result<_, _>>()?;
        let upstreams: HashMap<_, _> = built
            .iter()
            .map(|u| (u.name.clone(), u.service.clone()))
            .collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            routes.push((
                Matcher::new(&r.matcher),
                route::build(r, &upstreams, metrics)?,
            ));
        }
        Ok(Self {
            router: Router::new(routes),
            unrouted: RouteMetrics::new(metrics, Arc::from(""), Arc::from("")),
            upstreams: built,
            config,
        })
    }
}

/// A generation that cannot be built: a route (config validation rules those cases out) or an
/// upstream's TLS files.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A route's targets do not resolve.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// An upstream's TLS settings cannot be loaded (a missing or unreadable file, bad PEM).
    #[error("upstreams.{upstream}.tls: {source}")]
    UpstreamTls {
        /// The upstream.
        upstream: Arc<str>,
        /// The file (or setting) at fault, and why.
        #[source]
        source: crate::tls::TlsError,
    },
}

impl Generation {
    /// This generation's built upstream named like `cfg`, when its settings equal `cfg`.
    fn kept_upstream(&self, cfg: &crate::config::UpstreamConfig) -> Option<Upstream> {
        let i = self.config.upstreams.iter().position(|u| u == cfg)?;
        self.upstreams.get(i).cloned()
    }

    /// Starts the background tasks of every upstream that has not started yet (health checks,
    /// outlier upkeep, DNS discovery); called when the generation goes live, just before it is
    /// swapped in. Upstreams kept from the previous generation are running already.
    pub(crate) fn start(&self) {
        for u in &self.upstreams {
            u.start();
        }
    }

    /// Sets the gauges that are sampled rather than kept current per request (retry budgets,
    /// requests in flight); the app's upkeep task calls it every second (`app::UPKEEP`), so a
    /// scrape only renders and never writes.
    pub(crate) fn publish_gauges(&self) {
        for u in &self.upstreams {
            u.retry.publish();
            u.shed.publish();
        }
    }
}
