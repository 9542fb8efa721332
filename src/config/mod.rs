//! Configuration: the typed, validated [`Config`] that every other module is built from. It
//! assembles the stages' own settings types (each defined, with its `Default`, beside the code
//! it governs, and re-exported here under its config name) and depends on them, not the reverse.
//!
//! Position: file → validated `Config`; does no I/O beyond reading the file (before any stage).
//! Keys: all of them (`admin`, `listeners`, `drain`, `routes`, `upstreams`), see DESIGN §3; one
//! key table per settings type in `keys.rs` drives reading, rendering and `config/full.toml`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

mod error;
mod keys;
mod read;
mod render;
mod validate;

pub use error::{ConfigError, ConfigErrors};

// The stages own their settings types; the config assembles them, under these names.
pub use crate::http::context::Priority;
pub use crate::http::grpc::Code as GrpcCode;
pub use crate::resilience::Mode;
pub use crate::resilience::breaker::Settings as BreakerSettings;
pub use crate::resilience::grpc::Settings as GrpcSettings;
pub use crate::resilience::retry::Settings as RetrySettings;
pub use crate::resilience::retry::hedge::{After as HedgeAfter, Settings as HedgeSettings};
pub use crate::resilience::shed::Settings as ShedSettings;
pub use crate::route::direct::Settings as RespondConfig;
pub use crate::route::fault::Settings as FaultConfig;
pub use crate::route::ratelimit::{Key as RateLimitKey, Settings as RateLimitConfig};
pub use crate::route::shape::{Delay as FaultDelay, Step as DelayStep};
pub use crate::route::split::SplitTarget;
pub use crate::route::{RouteAction, Settings as RouteConfig};
pub use crate::router::matcher::RouteMatch;
pub use crate::server::Settings as ListenerConfig;
pub use crate::tls::client::Settings as UpstreamTls;
pub use crate::tls::server::Settings as ListenerTls;
pub use crate::upstream::Settings as UpstreamConfig;
pub use crate::upstream::balance::{Balance, HashOn};
pub use crate::upstream::client::Protocol;
pub use crate::upstream::health::Settings as HealthSettings;
pub use crate::upstream::outlier::Settings as OutlierSettings;

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
    /// Worker runtimes (`workers`), each on its own thread with its own socket for every
    /// listener; 0 (the default) = one per core the process may run on, at most
    /// [`MAX_WORKERS`]. Read at start only: a reload that changes it logs a warning and the
    /// change waits for the next start.
    pub workers: usize,
}

/// The most worker runtimes `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// The admin side port: `/metrics`, `/healthz`, `/readyz`, `/status`, `/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin server (`admin.listen`); default 127.0.0.1:9901.
    pub listen: SocketAddr,
}

/// Graceful shutdown timing (`[drain]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// After SIGTERM, readiness goes false and weir keeps serving this long; default 0s.
    pub delay: Duration,
    /// Then weir stops accepting, and in-flight requests get this long; default 30s.
    pub timeout: Duration,
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
            workers: 0,
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

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            delay: Duration::ZERO,
            timeout: Duration::from_secs(30),
        }
    }
}

// === impl the keyword enums ===

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

    use http::uri::Authority;
    use http::{HeaderName, HeaderValue, StatusCode};

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
        assert_eq!(c.workers, 0);
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

    /// What `config/full.toml` shows: the defaults, one route `api` to one upstream `backend`
    /// with health checks on.
    fn documented() -> Config {
        Config {
            routes: vec![RouteConfig {
                name: "api".into(),
                action: RouteAction::Upstream("backend".into()),
                ..RouteConfig::default()
            }],
            upstreams: vec![UpstreamConfig {
                name: "backend".into(),
                endpoints: vec![Authority::from_static("127.0.0.1:9000")],
                health: Some(HealthSettings::default()),
                ..UpstreamConfig::default()
            }],
            ..Config::default()
        }
    }

    /// full.toml is written by the key tables (each key's default and doc, examples for what
    /// the defaults leave out), so it cannot drift from them. After changing a row, regenerate
    /// it with `WEIR_WRITE_FULL_TOML=1 cargo test full_toml_is`.
    #[test]
    fn full_toml_is_what_the_tables_render() {
        assert_eq!(full(), documented());
        let rendered = render::documented(&documented());
        if std::env::var_os("WEIR_WRITE_FULL_TOML").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/full.toml");
            std::fs::write(path, &rendered).unwrap();
        } else {
            assert!(
                FILES[4].1 == rendered,
                "config/full.toml is not what the key tables render; regenerate it with \
                 WEIR_WRITE_FULL_TOML=1 cargo test full_toml_is. The tables render:\n{rendered}"
            );
        }
    }

    /// Every row of every key table has a line in full.toml, in its table's section: `key = …`
    /// (`# key = …` for an example), or a sub-table's header `[table.key]`.
    #[test]
    fn full_toml_has_a_line_for_every_row() {
        use crate::config::keys::Keys;

        fn rows<S: Keys>(section: &'static str) -> (&'static str, Vec<&'static str>) {
            (section, S::ROWS.iter().map(|r| r.key).collect())
        }
        // (section, key) of each line; a header is the key of its parent section.
        let mut lines = Vec::new();
        let mut section = "";
        let full = FILES[4].1;
        for line in full.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)) {
            if let Some(header) = line.strip_prefix('[') {
                section = header.trim_matches(['[', ']']).split(']').next().unwrap();
                lines.push(section.rsplit_once('.').unwrap_or(("", section)));
            } else if let Some((key, _)) = line.split_once(" = ") {
                lines.push((section, key));
            }
        }
        let upstream = |s: &str| format!("upstreams.backend{s}");
        let tables = [
            rows::<Config>(""),
            rows::<AdminConfig>("admin"),
            rows::<ListenerConfig>("listeners"),
            rows::<ListenerTls>("listeners.tls"),
            rows::<DrainConfig>("drain"),
            rows::<RouteConfig>("routes"),
            rows::<RouteMatch>("routes.match"),
            rows::<RateLimitConfig>("routes.rate_limit"),
            rows::<FaultConfig>("routes.fault"),
        ];
        let upstream_tables = [
            rows::<UpstreamConfig>(""),
            rows::<UpstreamTls>(".tls"),
            rows::<RetrySettings>(".retry"),
            rows::<BreakerSettings>(".breaker"),
            rows::<ShedSettings>(".shed"),
            rows::<HealthSettings>(".health"),
            rows::<OutlierSettings>(".outlier"),
        ];
        let all = tables.into_iter().map(|(s, k)| (s.to_owned(), k));
        let all = all.chain(upstream_tables.into_iter().map(|(s, k)| (upstream(s), k)));
        for (section, keys) in all {
            for key in keys {
                let found = lines.iter().any(|&(s, k)| s == section && k == key)
                    || (section.is_empty() && key == "upstreams");
                assert!(found, "full.toml has no line for {section}.{key}");
            }
        }
        // The inline tables: a route's `split` targets and its `respond`.
        for (line, keys) in [
            ("# split = ", rows::<SplitTarget>("").1),
            ("# respond = ", rows::<RespondConfig>("").1),
        ] {
            let text = full.lines().find(|l| l.starts_with(line)).unwrap();
            for key in keys {
                assert!(text.contains(&format!("{key} = ")), "{line}has no {key}");
            }
        }
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
        assert_eq!(Config::default().workers, 0, "one worker per core");
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
        assert_eq!(
            (&f.delay, f.allow_header),
            (&FaultDelay::Fixed(Duration::ZERO), false)
        );
        assert_eq!(
            (
                f.reset_percent,
                f.truncate_percent,
                f.slow_body_percent,
                f.slow_body_rate
            ),
            (0.0, 0.0, 0.0, 16_384)
        );

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
    fn workers_is_a_count_up_to_the_maximum() {
        assert_eq!(ok("workers = 4").workers, 4);
        assert_eq!(ok("workers = 0").workers, 0);
        assert_eq!(ok(&format!("workers = {MAX_WORKERS}")).workers, MAX_WORKERS);
        let expected = "expected 0 (one worker per core) or a number of workers up to 1024";
        // A root key written after a table belongs to that table.
        let e = one_error("[admin]\nlisten = \"127.0.0.1:9901\"\nworkers = 2");
        assert_eq!((e.line, e.path.as_str()), (3, "admin.workers"), "{e}");
        for bad in ["1025", "-1", "\"two\"", "1.5"] {
            let e = one_error(&format!("\nworkers = {bad}\n[admin]"));
            assert_eq!((e.line, e.path.as_str()), (2, "workers"), "{bad}: {e}");
            assert!(e.message.starts_with(expected), "{bad}: {}", e.message);
        }
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
