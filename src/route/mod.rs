//! Per-route policy: the route's targets (one upstream, a weighted split, or a direct
//! response) and the stack in front of each: deadline → rate limit → fault → target.
//!
//! Position: step 4 of the walk, between the router and the upstream stacks. Config: `routes[]`
//! (`upstream`, `split`, `respond`, `timeout`, `priority`, `rate_limit`, `fault`). Metrics:
//! per-target handles; `weir_rate_limited_total{route}`, `weir_faults_total{route,kind}`.

pub(crate) mod deadline;
pub(crate) mod direct;
pub(crate) mod fault;
pub(crate) mod ratelimit;
pub(crate) mod shape;
pub(crate) mod split;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::error::ProxyError;
use crate::http::context::Priority;
use crate::http::{Request, Response};
use crate::metrics::{Metrics, RouteMetrics};
use crate::router::matcher::RouteMatch;
use crate::upstream::UpstreamService;
use deadline::DeadlineLayer;
use direct::Direct;
use fault::FaultLayer;
use ratelimit::RateLimitLayer;

/// One route (`[[routes]]`): what it matches and what serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Name used in metrics and logs; `[A-Za-z0-9_.-]+`, default `route-N` (0-based index).
    pub name: Arc<str>,
    /// What a request must look like to take this route (TOML key `match`); default: anything.
    pub matcher: RouteMatch,
    /// Exactly one of `upstream`, `split`, `respond`.
    pub action: RouteAction,
    /// Total deadline covering every try and every backoff; default 15s.
    pub timeout: Duration,
    /// Criticality of the route's requests under load; default `default`.
    pub priority: Priority,
    /// Token-bucket rate limit; `None` (the default) means unlimited.
    pub rate_limit: Option<ratelimit::Settings>,
    /// Fault injection; the default injects nothing.
    pub fault: fault::Settings,
}

/// What serves a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to one upstream (`upstream = "NAME"`).
    Upstream(Arc<str>),
    /// Forward to upstreams chosen by weight (`split = [{ upstream, weight }, …]`).
    Split(Vec<split::SplitTarget>),
    /// Answer directly, with no upstream (`respond = { status, body, headers }`).
    Respond(direct::Settings),
}

/// Every field its documented default, with an empty name and a direct `200` response as the
/// action (a route in a file must name its action).
impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: Arc::from(""),
            matcher: RouteMatch::default(),
            action: RouteAction::Respond(direct::Settings::default()),
            timeout: Duration::from_secs(15),
            priority: Priority::default(),
            rate_limit: None,
            fault: fault::Settings::default(),
        }
    }
}

/// The erased stack of one route target. Cloned per request (one allocation).
#[derive(Clone)]
pub struct RouteService(pub BoxCloneSyncService<Request, Response, ProxyError>);

impl std::fmt::Debug for RouteService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteService")
    }
}

/// One way a route can answer: an upstream (with its weight in a split) or a direct response.
#[derive(Debug)]
pub struct Target {
    /// The stack a request for this target runs through.
    pub service: RouteService,
    /// `weir_requests_total` / duration handles for (route, upstream).
    pub metrics: RouteMetrics,
    /// Whether responses are the route's own (`reason="direct"`) rather than an upstream's.
    pub direct: bool,
    /// Whether the target's stack reads the request's [`RequestContext`]: every upstream stack
    /// does (retry, shed, per-try timeout, forward); a direct response only when its rate limit
    /// is keyed by client IP. A direct response without one is served with no context: putting
    /// it into the request's extensions and dropping it again is 3 allocations and about 700
    /// of the 13,600 instructions a direct response costs.
    ///
    /// [`RequestContext`]: crate::http::context::RequestContext
    pub context: bool,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name (a label and the `route` of error bodies).
    pub name: Arc<str>,
    targets: split::Weighted<Target>,
    /// The route's criticality; a request may lower it with `x-weir-priority`.
    pub priority: Priority,
}

impl Route {
    /// The target this request goes to: the only one, or a weighted random pick of a split.
    pub fn pick(&self) -> &Target {
        self.targets.pick()
    }

    /// Every target of the route.
    pub(crate) fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.items()
    }
}

/// A route that cannot be built (config validation rules both cases out).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The route names an upstream the generation does not have.
    #[error("route {route}: unknown upstream {upstream}")]
    UnknownUpstream {
        /// The route.
        route: Arc<str>,
        /// The upstream it names.
        upstream: Arc<str>,
    },
    /// The route's split has no target.
    #[error("route {route}: empty split")]
    EmptySplit {
        /// The route.
        route: Arc<str>,
    },
}

/// The route's layers, shared by all its targets (one rate-limit bucket set per route).
struct Layers {
    deadline: DeadlineLayer,
    rate_limit: RateLimitLayer,
    fault: FaultLayer,
}

impl Layers {
    /// The stack of one target, outermost first, erased once.
    fn stack<S>(&self, target: S) -> RouteService
    where
        S: Service<Request, Response = Response, Error = ProxyError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let stack = ServiceBuilder::new()
            .layer(self.deadline)
            .layer(self.rate_limit.clone())
            .layer(self.fault.clone())
            .service(target);
        RouteService(BoxCloneSyncService::new(stack))
    }
}

/// Builds a route: for each target, deadline → rate limit → fault → upstream stack (or the
/// direct response).
pub fn build(
    cfg: &Settings,
    upstreams: &HashMap<Arc<str>, UpstreamService>,
    metrics: &Metrics,
) -> Result<Route, RouteError> {
    let layers = Layers {
        deadline: DeadlineLayer::new(cfg.timeout),
        rate_limit: RateLimitLayer::new(cfg.name.clone(), cfg.rate_limit.as_ref(), metrics),
        fault: FaultLayer::new(&cfg.fault, &cfg.name, metrics),
    };
    let upstream_target = |name: &Arc<str>| -> Result<Target, RouteError> {
        let up = upstreams
            .get(name)
            .ok_or_else(|| RouteError::UnknownUpstream {
                route: cfg.name.clone(),
                upstream: name.clone(),
            })?;
        Ok(Target {
            service: layers.stack(up.clone()),
            metrics: RouteMetrics::new(metrics, cfg.name.clone(), name.clone()),
            direct: false,
            context: true,
        })
    };
    let targets = match &cfg.action {
        RouteAction::Upstream(name) => split::Weighted::one(upstream_target(name)?),
        RouteAction::Split(split) => {
            let mut items = Vec::with_capacity(split.len());
            for t in split {
                items.push((upstream_target(&t.upstream)?, t.weight));
            }
            split::Weighted::new(items).ok_or_else(|| RouteError::EmptySplit {
                route: cfg.name.clone(),
            })?
        }
        RouteAction::Respond(respond) => split::Weighted::one(Target {
            service: layers.stack(Direct::new(respond)),
            metrics: RouteMetrics::new(metrics, cfg.name.clone(), Arc::from("")),
            direct: true,
            context: cfg
                .rate_limit
                .as_ref()
                .is_some_and(ratelimit::Settings::reads_context),
        }),
    };
    Ok(Route {
        name: cfg.name.clone(),
        targets,
        priority: cfg.priority,
    })
}
