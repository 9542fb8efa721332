//! Configuration: the typed, validated [`Config`] that every other module is built from.
//!
//! Position: file → validated `Config`; does no I/O beyond reading the file (before any stage).
//! Keys: all of them (`admin`, `listeners`, `drain`, `routes`, `upstreams`), see DESIGN §3.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, StatusCode};

mod error;
mod read;
mod render;
mod validate;

pub use error::{ConfigError, ConfigErrors};

/// The whole configuration of one weir process: one config generation.
///
/// `Default` is the configuration of an empty file: admin on 127.0.0.1:9901, one listener
/// `main` on 127.0.0.1:8080, no routes and no upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin side port (`[admin]`).
    pub admin: AdminConfig,
    /// Downstream listeners (`[[listeners]]`), in file order. Never empty: without any, one
    /// listener `main` on 127.0.0.1:8080.
    pub listeners: Vec<ListenerConfig>,
    /// Graceful shutdown timing (`[drain]`).
    pub drain: DrainConfig,
    /// Routes (`[[routes]]`), in file order; the first that matches a request serves it.
    pub routes: Vec<RouteConfig>,
    /// Upstreams (`[upstreams.NAME]`), in file order.
    pub upstreams: Vec<UpstreamConfig>,
}

/// The admin side port: `/metrics`, `/healthz`, `/readyz`, `/status`, `/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin server (`admin.listen`); default 127.0.0.1:9901.
    pub listen: SocketAddr,
}

/// One downstream listener (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Name used in metrics and logs; default `main` for the first listener, else `listener-N`.
    pub name: Arc<str>,
    /// Address to bind (`ip:port`); default 127.0.0.1:8080. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Time allowed for a request head to arrive (slowloris guard); default 10s.
    pub header_read_timeout: Duration,
    /// Downstream keep-alive idle timeout; default 60s. It also bounds the wait for the next
    /// bytes of a request body the client stops sending.
    pub idle_timeout: Duration,
    /// The longest a response write may make no progress (the client reads nothing); then the
    /// connection is closed and its upstream requests cancelled. Default 60s (nginx's
    /// `send_timeout`); 0 = no limit.
    pub send_timeout: Duration,
    /// Most connections open at once; default 10000.
    pub max_connections: usize,
    /// Largest request head in bytes; beyond it weir answers 431. Default 65536.
    pub max_header_bytes: usize,
    /// Most request headers; beyond it weir answers 431. Default 100.
    pub max_headers: usize,
    /// Largest request body in bytes; beyond it weir answers 413. 0 = unlimited. Default 10 MiB.
    pub max_body_bytes: u64,
    /// TLS termination; `None` (the default) serves plain TCP.
    pub tls: Option<ListenerTls>,
}

/// TLS settings of a listener (`listeners[N].tls`). Files are read when the listener starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain (`cert`); required.
    pub cert: PathBuf,
    /// PEM private key (`key`); required.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (`client_ca`); set, it turns on mTLS.
    pub client_ca: Option<PathBuf>,
}

/// Graceful shutdown timing (`[drain]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// After SIGTERM, readiness goes false and weir keeps serving this long; default 0s.
    pub delay: Duration,
    /// Then weir stops accepting, and in-flight requests get this long; default 30s.
    pub timeout: Duration,
}

/// One route (`[[routes]]`): what it matches and what serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
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
    pub rate_limit: Option<RateLimitConfig>,
    /// Fault injection; the default injects nothing.
    pub fault: FaultConfig,
}

/// Conditions a request must meet to take a route; all given conditions must hold.
///
/// `Default` matches every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// The request path starts with this (`/`-prefixed); `None` matches any path.
    pub path_prefix: Option<String>,
    /// The request host equals this, ignoring case (stored lowercase); `None` matches any.
    pub host: Option<String>,
    /// The request method is one of these; empty matches any method.
    pub methods: Vec<Method>,
    /// Each of these headers is present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What serves a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Forward to one upstream (`upstream = "NAME"`).
    Upstream(Arc<str>),
    /// Forward to upstreams chosen by weight (`split = [{ upstream, weight }, …]`).
    Split(Vec<SplitTarget>),
    /// Answer directly, with no upstream (`respond = { status, body, headers }`).
    Respond(RespondConfig),
}

/// One weighted target of a traffic split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    /// Name of an upstream in `[upstreams]`.
    pub upstream: Arc<str>,
    /// Relative weight; 0 sends nothing. Default 1.
    pub weight: u32,
}

/// A direct response (`respond`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespondConfig {
    /// Status code; default 200.
    pub status: StatusCode,
    /// Body; default empty.
    pub body: Bytes,
    /// Response headers, in file order; default none.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub use crate::http::context::Priority;

/// Token-bucket rate limit of a route (`rate_limit`). Over the limit weir answers 429.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second; required, greater than 0.
    pub rps: f64,
    /// Bucket size; default `max(1, ceil(rps))`.
    pub burst: u32,
    /// What the bucket is keyed by; default one bucket for the route.
    pub key: RateLimitKey,
    /// Most distinct keys tracked at once; default 10000.
    pub max_keys: usize,
}

/// What a rate limit bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RateLimitKey {
    /// `none`: one bucket for the whole route.
    #[default]
    None,
    /// `client_ip`: one bucket per client address.
    ClientIp,
    /// `header:NAME`: one bucket per value of this request header.
    Header(HeaderName),
}

/// Fault injection of a route (`fault`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Percentage of requests (0..=100) answered with `abort_status`; default 0.
    pub abort_percent: f64,
    /// Status of an injected abort; default 503.
    pub abort_status: StatusCode,
    /// Percentage of requests (0..=100) delayed by `delay`; default 0.
    pub delay_percent: f64,
    /// Injected delay; default 0ms.
    pub delay: Duration,
    /// Whether a request may switch faults on itself with a request header; default false.
    pub allow_header: bool,
}

/// One upstream (`[upstreams.NAME]`): its endpoints, how to reach them, its resilience stack.
///
/// `Default` has an empty name and no endpoints (so it is not valid by itself); every other
/// field is its documented default.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
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
    pub tls: Option<UpstreamTls>,
    /// Retries (`retry`).
    pub retry: RetrySettings,
    /// Circuit breaker (`breaker`).
    pub breaker: BreakerSettings,
    /// Load shedding (`shed`).
    pub shed: ShedSettings,
    /// Active health checks (`health`); `None` (the default) means none.
    pub health: Option<HealthSettings>,
    /// Passive outlier ejection (`outlier`).
    pub outlier: OutlierSettings,
}

/// Protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http1`: HTTP/1.1.
    #[default]
    Http1,
    /// `http2`: HTTP/2, by prior knowledge or by ALPN with TLS.
    Http2,
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// `p2c`: power of two choices over peak-EWMA latency.
    #[default]
    P2c,
    /// `round_robin`.
    RoundRobin,
    /// `least_request`: fewest requests in flight.
    LeastRequest,
    /// `hash`: consistent hashing on `hash_on`, for session affinity.
    Hash,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// `client_ip`: the client address.
    #[default]
    ClientIp,
    /// `header:NAME`: the value of this request header.
    Header(HeaderName),
    /// `cookie:NAME`: the value of this cookie.
    Cookie(String),
}

/// TLS to an upstream (`upstreams.NAME.tls`). Files are read when the upstream is built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    /// Server name to send and verify; default the endpoint host.
    pub sni: Option<String>,
    /// PEM CA bundle to trust; default the built-in web roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mTLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM client private key for mTLS; needs `cert`.
    pub key: Option<PathBuf>,
}

pub use crate::resilience::retry::Settings as RetrySettings;

pub use crate::resilience::breaker::Settings as BreakerSettings;

pub use crate::resilience::Mode;

pub use crate::resilience::shed::Settings as ShedSettings;

/// Active health checks of an upstream (`upstreams.NAME.health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Path of the HTTP GET probe; default `/healthz`.
    pub path: String,
    /// Time between probes of one endpoint; default 5s.
    pub interval: Duration,
    /// Timeout of one probe; default 1s.
    pub timeout: Duration,
    /// Consecutive successes that make an endpoint healthy; default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy; default 3.
    pub unhealthy_threshold: u32,
}

/// Passive outlier ejection of an upstream's endpoints (`upstreams.NAME.outlier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Consecutive gateway errors that eject an endpoint; default 5.
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the times the endpoint was ejected; default 30s.
    pub base_ejection: Duration,
    /// Most endpoints of the upstream ejected at once, in percent (0..=100); default 50.
    pub max_ejection_percent: u32,
    /// Enforce, count only (dry run), or off; default enforce.
    pub mode: Mode,
    /// Time over which a returning endpoint's traffic share grows back; default 10s.
    pub ramp: Duration,
}

// === impl Config ===

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// Errors name the file as given (`path.display()`); all errors are reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(src) => Config::from_toml(&src, &file),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file,
                line: 0,
                path: String::new(),
                message: format!("cannot read the config file: {e}"),
            }])),
        }
    }

    /// Parses and validates config text; `file` labels the errors.
    pub fn from_toml(src: &str, file: &str) -> Result<Config, ConfigErrors> {
        let (config, mut errors) = read::read(src, file)?;
        validate::validate(&config, &mut errors);
        errors.into_result(config)
    }

    /// The embedded default config (`config/default.toml`): proxy on 127.0.0.1:8080, admin on
    /// 127.0.0.1:9901, and a route that answers by itself.
    // The file is compiled in, and the test `embedded_default_parses` proves it valid, so this
    // cannot fail at run time.
    #[allow(clippy::expect_used)]
    pub fn embedded_default() -> Config {
        Config::from_toml(DEFAULT_TOML, "config/default.toml")
            .expect("the embedded config/default.toml is valid")
    }

    /// The upstream called `name`, if any.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }

    /// The effective config as weir TOML, with every key spelled out (defaults filled in).
    ///
    /// `Config::from_toml(&c.to_toml(), ..)` gives back `c` for any valid `c`.
    pub fn to_toml(&self) -> String {
        render::render(self)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin: AdminConfig::default(),
            listeners: vec![ListenerConfig::default()],
            drain: DrainConfig::default(),
            routes: Vec::new(),
            upstreams: Vec::new(),
        }
    }
}

// === impl Default for the settings ===

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::new(LOCALHOST, 9901),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: Arc::from("main"),
            listen: SocketAddr::new(LOCALHOST, 8080),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            tls: None,
        }
    }
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Every field its documented default, with an empty name and a direct `200` response as the
/// action (a route in a file must name its action).
impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: Arc::from(""),
            matcher: RouteMatch::default(),
            action: RouteAction::Respond(RespondConfig::default()),
            timeout: Duration::from_secs(15),
            priority: Priority::default(),
            rate_limit: None,
            fault: FaultConfig::default(),
        }
    }
}

impl Default for RespondConfig {
    fn default() -> Self {
        RespondConfig {
            status: StatusCode::OK,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            abort_percent: 0.0,
            abort_status: StatusCode::SERVICE_UNAVAILABLE,
            delay_percent: 0.0,
            delay: Duration::ZERO,
            allow_header: false,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
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
            outlier: OutlierSettings::default(),
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: String::from("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
            mode: Mode::Enforce,
            ramp: Duration::from_secs(10),
        }
    }
}

impl RateLimitConfig {
    /// A limit of `rps` requests per second with every other field its default: burst
    /// `max(1, ceil(rps))`, one bucket for the route, at most 10000 keys.
    pub fn new(rps: f64) -> RateLimitConfig {
        let ceil = rps.ceil();
        let burst = if ceil >= f64::from(u32::MAX) {
            u32::MAX
        } else if ceil >= 1.0 {
            // Integral and within 1..u32::MAX, so the conversion is exact.
            ceil as u32
        } else {
            1
        };
        RateLimitConfig {
            rps,
            burst,
            key: RateLimitKey::None,
            max_keys: 10_000,
        }
    }
}

// === impl the keyword enums ===

impl Protocol {
    /// The config spelling: `http1` or `http2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

impl Balance {
    /// The config spelling: `p2c`, `round_robin`, `least_request` or `hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::P2c => "p2c",
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Hash => "hash",
        }
    }
}

/// The embedded default config file.
const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
pub(crate) mod tests {
    /// A document whose line N is `lines[N - 1]`.
    pub(crate) fn doc(lines: &[&str]) -> String {
        lines.join("\n")
    }

    /// An expected error: its line and key path.
    pub(crate) fn at(line: usize, path: &str) -> (usize, String) {
        (line, path.to_owned())
    }

    use super::*;

    /// `(line, path)` of every error in `src`, in line order.
    pub(crate) fn errors(src: &str) -> Vec<(usize, String)> {
        error_list(src)
            .into_iter()
            .map(|e| (e.line, e.path))
            .collect()
    }

    /// Every error of `src`, read as `weir.toml`.
    pub(crate) fn error_list(src: &str) -> Vec<ConfigError> {
        match Config::from_toml(src, "weir.toml") {
            Ok(c) => panic!("expected errors, got a valid config: {c:?}"),
            Err(e) => e.0,
        }
    }

    /// The one error of `src`.
    pub(crate) fn one_error(src: &str) -> ConfigError {
        let mut all = error_list(src);
        assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
        all.remove(0)
    }

    /// `src` read as a valid config.
    pub(crate) fn ok(src: &str) -> Config {
        match Config::from_toml(src, "weir.toml") {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    const FILES: [(&str, &str); 5] = [
        ("default.toml", include_str!("../../config/default.toml")),
        ("sidecar.toml", include_str!("../../config/sidecar.toml")),
        ("edge.toml", include_str!("../../config/edge.toml")),
        ("loadtest.toml", include_str!("../../config/loadtest.toml")),
        ("full.toml", include_str!("../../config/full.toml")),
    ];

    fn full() -> Config {
        ok(FILES[4].1)
    }

    #[test]
    fn embedded_default_parses() {
        assert!(Config::from_toml(DEFAULT_TOML, "default.toml").is_ok());
        let c = Config::embedded_default();
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.listeners, vec![ListenerConfig::default()]);
        assert_eq!(c.routes.len(), 1);
        let welcome = &c.routes[0];
        assert_eq!(&*welcome.name, "welcome");
        assert_eq!(
            welcome.matcher,
            RouteMatch::default(),
            "matches every request"
        );
        let RouteAction::Respond(resp) = &welcome.action else {
            panic!("{welcome:?}")
        };
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.headers,
            vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("text/plain; charset=utf-8")
            )]
        );
        let body = std::str::from_utf8(&resp.body).unwrap();
        for hint in [
            "weir is running",
            "--config",
            "weir check",
            "http://127.0.0.1:9901/metrics",
        ] {
            assert!(body.contains(hint), "{hint}");
        }
    }

    #[test]
    fn every_example_file_parses() {
        for (name, src) in FILES {
            if let Err(e) = Config::from_toml(src, name) {
                panic!("{name}:\n{e}");
            }
        }
    }

    #[test]
    fn every_example_file_round_trips() {
        for (name, src) in FILES {
            let c = ok(src);
            let text = c.to_toml();
            match Config::from_toml(&text, name) {
                Ok(back) => assert_eq!(back, c, "{name}:\n{text}"),
                Err(e) => panic!("{name}: to_toml is not valid:\n{e}\n{text}"),
            }
        }
    }

    #[test]
    fn full_toml_spells_out_the_defaults() {
        let c = full();
        assert_eq!(c.admin, AdminConfig::default());
        assert_eq!(c.listeners, vec![ListenerConfig::default()]);
        assert_eq!(c.drain, DrainConfig::default());

        assert_eq!(c.routes.len(), 1);
        let r = &c.routes[0];
        let d = RouteConfig::default();
        assert_eq!(&*r.name, "api");
        assert_eq!(r.matcher, d.matcher);
        assert_eq!(r.action, RouteAction::Upstream("backend".into()));
        assert_eq!(r.timeout, d.timeout);
        assert_eq!(r.timeout, Duration::from_secs(15));
        assert_eq!(r.priority, Priority::Default);
        assert_eq!(r.rate_limit, None);
        assert_eq!(r.fault, FaultConfig::default());

        assert_eq!(c.upstreams.len(), 1);
        let u = &c.upstreams[0];
        let expected = UpstreamConfig {
            name: "backend".into(),
            endpoints: vec![Authority::from_static("127.0.0.1:9000")],
            health: Some(HealthSettings::default()),
            ..UpstreamConfig::default()
        };
        assert_eq!(u.retry, RetrySettings::default());
        assert_eq!(u.breaker, BreakerSettings::default());
        assert_eq!(u.shed, ShedSettings::default());
        assert_eq!(u.health, Some(HealthSettings::default()));
        assert_eq!(u.outlier, OutlierSettings::default());
        assert_eq!(u, &expected);
    }

    /// Every key that `to_toml` writes for full.toml is written in full.toml, and no other.
    #[test]
    fn full_toml_names_every_key() {
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        out.push(p.clone());
                        keys(&p, v, out);
                    }
                }
                toml::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        keys(&format!("{prefix}[{i}]"), v, out);
                    }
                }
                _ => {}
            }
        }
        let src = FILES[4].1;
        let mut written = Vec::new();
        keys("", &toml::from_str(src).unwrap(), &mut written);
        let mut rendered = Vec::new();
        keys(
            "",
            &toml::from_str(&full().to_toml()).unwrap(),
            &mut rendered,
        );
        written.sort();
        rendered.sort();
        assert_eq!(written, rendered);
    }

    #[test]
    fn the_documented_defaults() {
        let l = ListenerConfig::default();
        assert_eq!(&*l.name, "main");
        assert_eq!(l.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (
                l.max_connections,
                l.max_header_bytes,
                l.max_headers,
                l.max_body_bytes
            ),
            (10_000, 65_536, 100, 10_485_760)
        );
        assert_eq!(l.tls, None);
        assert_eq!(
            AdminConfig::default().listen,
            "127.0.0.1:9901".parse().unwrap()
        );
        let d = DrainConfig::default();
        assert_eq!(
            (d.delay, d.timeout),
            (Duration::ZERO, Duration::from_secs(30))
        );

        let f = FaultConfig::default();
        assert_eq!(
            (f.abort_percent, f.abort_status, f.delay_percent),
            (0.0, StatusCode::SERVICE_UNAVAILABLE, 0.0)
        );
        assert_eq!((f.delay, f.allow_header), (Duration::ZERO, false));

        let u = UpstreamConfig::default();
        assert_eq!(u.dns_refresh, Duration::from_secs(5));
        assert_eq!(u.protocol, Protocol::Http1);
        assert_eq!(u.connect_timeout, Duration::from_secs(1));
        assert_eq!(u.try_timeout, Duration::ZERO);
        assert_eq!(u.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(u.balance, Balance::P2c);
        assert_eq!(u.hash_on, HashOn::ClientIp);
        assert_eq!((u.tls, u.health, u.dns), (None, None, None));
        assert_eq!(u.dns_servers, Vec::<SocketAddr>::new());

        let r = RetrySettings::default();
        assert_eq!(
            (r.max_retries, r.statuses.as_slice()),
            (2, &[502, 503, 504][..])
        );
        assert_eq!((r.idempotency_key, r.max_body), (false, 65_536));
        assert_eq!(
            (r.backoff_base, r.backoff_cap),
            (Duration::from_millis(25), Duration::from_secs(1))
        );
        assert_eq!((r.budget_ratio, r.budget_min_per_sec), (0.2, 10));
        assert_eq!(r.budget_window, Duration::from_secs(10));

        let b = BreakerSettings::default();
        assert_eq!(
            (b.mode, b.window, b.min_calls),
            (Mode::Enforce, Duration::from_secs(10), 20)
        );
        assert_eq!(
            (b.failure_rate, b.slow_call_duration, b.slow_call_rate),
            (0.5, Duration::ZERO, 1.0)
        );
        assert_eq!(b.consecutive_failures, 5);
        assert_eq!(
            (b.open_for, b.open_for_max),
            (Duration::from_secs(10), Duration::from_secs(300))
        );
        assert_eq!(
            (b.half_open_probes, b.failure_statuses.as_slice()),
            (3, &[500, 501, 502, 503, 504, 505][..])
        );

        let s = ShedSettings::default();
        assert_eq!(
            (s.mode, s.max_in_flight, s.queue),
            (Mode::Enforce, 1024, 256)
        );
        assert_eq!(
            (s.queue_timeout, s.adaptive, s.min_limit),
            (Duration::from_millis(50), false, 8)
        );

        let h = HealthSettings::default();
        assert_eq!(
            (h.path.as_str(), h.interval, h.timeout),
            ("/healthz", Duration::from_secs(5), Duration::from_secs(1))
        );
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));

        let o = OutlierSettings::default();
        assert_eq!(
            (o.consecutive_failures, o.base_ejection),
            (5, Duration::from_secs(30))
        );
        assert_eq!(
            (o.max_ejection_percent, o.mode, o.ramp),
            (50, Mode::Enforce, Duration::from_secs(10))
        );

        let rl = RateLimitConfig::new(2.5);
        assert_eq!(
            (rl.burst, rl.key, rl.max_keys),
            (3, RateLimitKey::None, 10_000)
        );
        assert_eq!(RateLimitConfig::new(0.1).burst, 1);
        assert_eq!(RateLimitConfig::new(100.0).burst, 100);
    }

    #[test]
    fn an_empty_file_is_valid() {
        assert_eq!(ok(""), Config::default());
        assert_eq!(ok("# nothing\n\n"), Config::default());
        let c = Config::default();
        assert_eq!(c.listeners.len(), 1);
        assert!(c.routes.is_empty() && c.upstreams.is_empty());
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let c = ok(r#"
            [[listeners]]
            [[listeners]]
            listen = "127.0.0.1:8081"
            [[routes]]
            upstream = "b"
            [[routes]]
            respond = {}
            [upstreams.b]
            endpoints = ["b:80"]
            [upstreams.b.health]
        "#);
        assert_eq!(c.listeners[0], ListenerConfig::default());
        assert_eq!(&*c.listeners[1].name, "listener-1");
        assert_eq!(&*c.routes[0].name, "route-0");
        assert_eq!(&*c.routes[1].name, "route-1");
        assert_eq!(
            c.routes[1].action,
            RouteAction::Respond(RespondConfig::default())
        );
        let expected = RouteConfig {
            name: "route-0".into(),
            action: RouteAction::Upstream("b".into()),
            ..RouteConfig::default()
        };
        assert_eq!(c.routes[0], expected);
        let u = c.upstream("b").unwrap();
        let expected = UpstreamConfig {
            name: "b".into(),
            endpoints: vec![Authority::from_static("b:80")],
            health: Some(HealthSettings::default()),
            ..UpstreamConfig::default()
        };
        assert_eq!(u, &expected);
        assert!(c.upstream("nope").is_none());
    }

    #[test]
    fn rate_limit_burst_defaults_to_the_rate() {
        let src = |rl: &str| format!("[[routes]]\nrespond = {{}}\nrate_limit = {rl}\n");
        let rl = |rl: &str| ok(&src(rl)).routes[0].rate_limit.clone().unwrap();
        assert_eq!(rl("{ rps = 0.5 }"), RateLimitConfig::new(0.5));
        assert_eq!(rl("{ rps = 0.5 }").burst, 1);
        assert_eq!(rl("{ rps = 250 }").burst, 250);
        assert_eq!(rl("{ rps = 2.2 }").burst, 3);
        assert_eq!(rl("{ rps = 10, burst = 50 }").burst, 50);
        assert_eq!(
            rl("{ rps = 1, key = \"client_ip\" }").key,
            RateLimitKey::ClientIp
        );
        assert_eq!(
            rl("{ rps = 1, key = \"header:X-Api-Key\" }").key,
            RateLimitKey::Header(HeaderName::from_static("x-api-key"))
        );
    }

    #[test]
    fn load_names_the_file_as_given() {
        let dir = std::env::temp_dir().join(format!("weir-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[admin]\nlisten = \"nowhere\"\n").unwrap();
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.0[0].file, path.display().to_string());
        assert_eq!(err.0[0].line, 2);
        let missing = Config::load(&dir.join("missing.toml")).unwrap_err();
        assert_eq!(missing.0[0].line, 0);
        assert!(
            missing
                .to_string()
                .starts_with(&dir.join("missing.toml").display().to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
