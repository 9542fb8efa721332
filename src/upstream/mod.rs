//! One upstream: its endpoints, how to reach them, and the resilience stack in front of them.
//!
//! Position: step 5 of the walk; [`build`] lists the layers in the order a request meets them:
//! load shedding → circuit breaker → retry → per-try timeout → forward. Config:
//! `upstreams.<name>` (`shed`, `breaker`, `retry`, `try_timeout`, ...). Metrics: see each layer.

pub(crate) mod balance;
pub(crate) mod client;
pub mod discovery;
pub(crate) mod endpoints;
pub(crate) mod forward;
pub(crate) mod h1;
pub(crate) mod hash;
pub(crate) mod health;
pub(crate) mod outlier;
pub(crate) mod pool;
pub(crate) mod read_timeout;

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use http::uri::Authority;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::error::ProxyError;
use crate::http::{Request, Response};
use crate::metrics::Metrics;
use crate::resilience::breaker::Settings as BreakerSettings;
use crate::resilience::breaker::{BreakerHandle, CircuitBreakerLayer};
use crate::resilience::grpc::Settings as GrpcSettings;
use crate::resilience::retry::Settings as RetrySettings;
use crate::resilience::retry::hedge::Settings as HedgeSettings;
use crate::resilience::retry::{RetryHandle, RetryLayer};
use crate::resilience::shed::Settings as ShedSettings;
use crate::resilience::shed::{ShedHandle, ShedLayer};
use crate::resilience::timeout::AttemptTimeoutLayer;
use crate::tls::TlsError;
use balance::{Balance, HashOn};
use client::{Protocol, Transport};
use endpoints::{EndpointSet, SetShape};
use forward::Forward;

/// One upstream (`[upstreams.NAME]`): its endpoints, how to reach them, its resilience stack.
///
/// `Default` has an empty name and no endpoints (so it is not valid by itself); every other
/// field is its documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Name from the table key; `[A-Za-z0-9_.-]+`.
    pub name: Arc<str>,
    /// Static endpoints (`host:port`); empty when `dns` is set.
    pub endpoints: Vec<Authority>,
    /// Name to resolve for endpoints (`host:port`), instead of `endpoints`.
    pub dns: Option<Authority>,
    /// How often `dns` is resolved again; default 5s.
    pub dns_refresh: Duration,
    /// DNS servers (`ip:port`) that resolve `dns`, in order of preference; only with `dns`.
    /// Empty (the default) means the system configuration (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// Protocol spoken to the upstream; default HTTP/1.1.
    pub protocol: Protocol,
    /// TCP (and TLS) connect timeout; default 1s.
    pub connect_timeout: Duration,
    /// Timeout of each try; `Duration::ZERO` (the default) means bounded by the route deadline.
    pub try_timeout: Duration,
    /// The longest wait for the next bytes of an upstream's response, head or body, counted
    /// from the last bytes that went either way; then the try ends with `upstream-timeout`
    /// (before the head: 504; in the body: the response is aborted and the connection closed).
    /// Default 60s (nginx's `proxy_read_timeout`); 0 = no limit.
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept; default 90s.
    pub pool_idle_timeout: Duration,
    /// Load-balancing algorithm; default p2c over peak EWMA.
    pub balance: Balance,
    /// What `balance = "hash"` hashes; default the client address.
    pub hash_on: HashOn,
    /// TLS to the upstream; `None` (the default) speaks plain TCP.
    pub tls: Option<crate::tls::client::Settings>,
    /// Retries (`retry`).
    pub retry: RetrySettings,
    /// Circuit breaker (`breaker`).
    pub breaker: BreakerSettings,
    /// Load shedding (`shed`).
    pub shed: ShedSettings,
    /// Active health checks (`health`); `None` (the default) means none.
    pub health: Option<health::Settings>,
    /// Passive outlier ejection (`outlier`).
    pub outlier: outlier::Settings,
    /// How gRPC calls are judged (`grpc`): failure and retried codes.
    pub grpc: GrpcSettings,
    /// Hedged requests (`hedge`); `None` (the default) hedges nothing.
    pub hedge: Option<HedgeSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: Arc::from(""),
            endpoints: Vec::new(),
            dns: None,
            dns_refresh: Duration::from_secs(5),
            dns_servers: Vec::new(),
            protocol: Protocol::default(),
            connect_timeout: Duration::from_secs(1),
            try_timeout: Duration::ZERO,
            read_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            balance: Balance::default(),
            hash_on: HashOn::default(),
            tls: None,
            retry: RetrySettings::default(),
            breaker: BreakerSettings::default(),
            shed: ShedSettings::default(),
            health: None,
            outlier: outlier::Settings::default(),
            grpc: GrpcSettings::default(),
            hedge: None,
        }
    }
}

/// The erased stack of one upstream, shared by every route that names it.
#[derive(Clone)]
pub struct UpstreamService(BoxCloneSyncService<Request, Response, ProxyError>);

impl std::fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamService")
    }
}

impl tower::Service<Request> for UpstreamService {
    type Response = Response;
    type Error = ProxyError;
    type Future =
        <BoxCloneSyncService<Request, Response, ProxyError> as tower::Service<Request>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.0.call(req)
    }
}

/// One built upstream: its stack, and read-only handles on its policies' state for the admin
/// port (`/status.json`) and the gauges refreshed on a timer.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The upstream's name.
    pub name: Arc<str>,
    /// Its endpoints and their health and load.
    pub endpoints: EndpointSet,
    /// The stack requests go through.
    pub service: UpstreamService,
    /// Circuit breaker state.
    pub breaker: BreakerHandle,
    /// Load-shedding state.
    pub shed: ShedHandle,
    /// Retry budget and observed latency.
    pub retry: RetryHandle,
    background: Arc<Background>,
}

impl Upstream {
    /// Starts what the upstream runs in the background: its endpoint set's upkeep, its active
    /// health checks and its DNS discovery. Runs once however many generations keep the
    /// upstream, when the first of them goes live ([`crate::generation::Generation::start`]);
    /// a generation that is built and then refused never calls it, so it starts nothing. The
    /// tasks end when the endpoint set is dropped, with the last generation that holds it.
    pub fn start(&self) {
        let bg = &self.background;
        bg.started.call_once(|| {
            self.endpoints.start();
            if let Some(h) = &bg.health {
                health::spawn(self.endpoints.downgrade(), h.clone());
            }
            if let Some(dns) = &bg.dns {
                discover(&self.name, dns, &self.endpoints, &bg.metrics);
            }
        });
    }
}

/// What [`Upstream::start`] starts, kept from the upstream's settings.
#[derive(Debug)]
struct Background {
    started: Once,
    health: Option<health::Settings>,
    dns: Option<Dns>,
    metrics: Metrics,
}

/// Where DNS discovery asks, and how often.
#[derive(Debug)]
struct Dns {
    target: Authority,
    refresh: Duration,
    servers: Vec<SocketAddr>,
}

/// Builds one upstream: its endpoint set and the stack over its forwarding leaf. Starts
/// nothing ([`Upstream::start`] does). Fails when its TLS settings cannot be loaded.
pub(crate) fn build(cfg: &Settings, metrics: &Metrics) -> Result<Upstream, TlsError> {
    let set = endpoint_set(cfg, metrics)?;
    Ok(with_leaf(
        cfg,
        metrics,
        set.clone(),
        Forward::new(cfg, set, metrics),
    ))
}

/// Starts the DNS discovery of `dns.target` for `set`: its first answer fills the set (until
/// then requests answer `no-healthy-endpoint`), later ones replace the members, keeping the
/// endpoints that remain. The task ends with the set.
fn discover(name: &Arc<str>, dns: &Dns, set: &EndpointSet, metrics: &Metrics) {
    let resolver = if dns.servers.is_empty() {
        discovery::HickoryResolver::system()
    } else {
        discovery::HickoryResolver::with_servers(&dns.servers)
    };
    let resolver: Arc<dyn discovery::Resolve> = match resolver {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(upstream = %name, error = %e, "DNS discovery cannot start: the upstream has no endpoints");
            return;
        }
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = set.downgrade();
    rt.spawn(discovery::run(
        name.clone(),
        dns.target.clone(),
        dns.refresh,
        resolver,
        metrics.clone(),
        set.stopped(),
        move |addrs| match weak.upgrade() {
            Some(set) => {
                set.update(&addrs);
                true
            }
            None => false,
        },
    ));
}

/// The endpoint set of upstream `cfg` over its configured endpoints (no background tasks until
/// its upstream starts). Fails when its TLS settings cannot be loaded.
pub fn endpoint_set(cfg: &Settings, metrics: &Metrics) -> Result<EndpointSet, TlsError> {
    let shape = SetShape {
        hashed: cfg.balance == Balance::Hash,
        checked: cfg.health.is_some(),
    };
    Ok(EndpointSet::new(
        cfg.name.clone(),
        &cfg.endpoints,
        Transport::new(cfg)?,
        &cfg.outlier,
        shape,
        metrics,
    ))
}

/// Builds the stack of one upstream over `leaf` (the forwarding leaf in weir; a stand-in in
/// benches). Layers are listed in the order a request meets them.
pub fn with_leaf<S>(cfg: &Settings, metrics: &Metrics, endpoints: EndpointSet, leaf: S) -> Upstream
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let shed = ShedLayer::new(cfg.name.clone(), &cfg.shed, metrics);
    let breaker = CircuitBreakerLayer::new(cfg.name.clone(), &cfg.breaker, &cfg.grpc, metrics);
    let retry = RetryLayer::new(cfg.name.clone(), &cfg.retry, metrics)
        .with_endpoint_memo(cfg.endpoints.len() > 1 || cfg.dns.is_some())
        .with_grpc(&cfg.grpc)
        .with_hedge(cfg.hedge.as_ref(), Some(breaker.handle()), metrics);
    let handles = (shed.handle(), breaker.handle(), retry.handle());
    let stack = ServiceBuilder::new()
        .layer(shed)
        .layer(breaker)
        .layer(retry)
        .layer(AttemptTimeoutLayer::new(cfg.try_timeout))
        .service(leaf);
    Upstream {
        name: cfg.name.clone(),
        endpoints,
        service: UpstreamService(BoxCloneSyncService::new(stack)),
        shed: handles.0,
        breaker: handles.1,
        retry: handles.2,
        background: Arc::new(Background {
            started: Once::new(),
            health: cfg.health.clone(),
            dns: cfg.dns.clone().map(|target| Dns {
                target,
                refresh: cfg.dns_refresh,
                servers: cfg.dns_servers.clone(),
            }),
            metrics: metrics.clone(),
        }),
    }
}
