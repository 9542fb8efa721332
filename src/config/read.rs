//! Reading: spanned TOML → `Config`, defaults filled in; type, range and unknown-key errors.
//!
//! Position: file → validated `Config` (first half, then `validate`); no I/O beyond the text.
//! Keys: every key of DESIGN §3, and the "exactly one of" rules that depend on which are set.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use crate::config::error::{Collector, ConfigError, ConfigErrors};
use crate::config::{
    AdminConfig, Balance, BreakerSettings, Config, DrainConfig, FaultConfig, HashOn,
    HealthSettings, ListenerConfig, ListenerTls, Mode, OutlierSettings, Priority, Protocol,
    RateLimitConfig, RateLimitKey, RespondConfig, RetrySettings, RouteAction, RouteConfig,
    RouteMatch, ShedSettings, SplitTarget, UpstreamConfig, UpstreamTls,
};

/// Reads config text into a `Config` (defaults filled in) and the errors found so far.
///
/// A TOML syntax error ends reading at once with that one error.
pub(crate) fn read(src: &str, file: &str) -> Result<(Config, Collector), ConfigErrors> {
    let collector = Collector::new(file, src);
    let doc = match DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map_or(1, |s| collector.line_of(s.start));
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                line,
                path: String::new(),
                message: format!("invalid TOML: {}", e.message().trim_end()),
            }]));
        }
    };
    let mut reader = Reader { c: collector, src };
    let config = reader.config(doc.get_ref());
    Ok((config, reader.c))
}

type Val<'i> = Spanned<DeValue<'i>>;

/// Walks one document; `c` collects errors and remembers where each key was seen.
struct Reader<'s> {
    c: Collector,
    src: &'s str,
}

/// The entries of one table, in file order, and the keys the reader asked for.
struct Fields<'t, 'i> {
    path: String,
    entries: Vec<(&'t Spanned<DeString<'i>>, &'t Val<'i>)>,
    known: Vec<&'static str>,
}

// === the config tree, top-down ===

impl<'s> Reader<'s> {
    fn config(&mut self, root: &DeTable<'_>) -> Config {
        let mut f = Fields::new(String::new(), root);
        let d = Config::default();
        let admin = self.get(&mut f, "admin", Self::admin).unwrap_or(d.admin);
        let listeners = self
            .get(&mut f, "listeners", Self::listeners)
            .unwrap_or(d.listeners);
        let drain = self.get(&mut f, "drain", Self::drain).unwrap_or(d.drain);
        let routes = self.get(&mut f, "routes", Self::routes).unwrap_or_default();
        let upstreams = self
            .get(&mut f, "upstreams", Self::upstreams)
            .unwrap_or_default();
        self.finish(f);
        Config {
            admin,
            listeners,
            drain,
            routes,
            upstreams,
        }
    }

    fn admin(&mut self, v: &Val<'_>, path: &str) -> Option<AdminConfig> {
        let mut f = self.fields(v, path)?;
        let d = AdminConfig::default();
        let listen = self
            .get(&mut f, "listen", Self::socket_addr)
            .unwrap_or(d.listen);
        self.finish(f);
        Some(AdminConfig { listen })
    }

    fn listeners(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<ListenerConfig>> {
        let items = self.array(v, path)?;
        if items.is_empty() {
            self.c.at_span(
                &v.span(),
                path,
                "expected at least one listener (leave `listeners` out for the default one on \
                 127.0.0.1:8080)"
                    .into(),
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            if let Some(l) = self.listener(item, &p, i) {
                out.push(l);
            }
        }
        Some(out)
    }

    fn listener(&mut self, v: &Val<'_>, path: &str, index: usize) -> Option<ListenerConfig> {
        let mut f = self.fields(v, path)?;
        let d = ListenerConfig::default();
        let default_name = if index == 0 {
            d.name.clone()
        } else {
            format!("listener-{index}").into()
        };
        let l = ListenerConfig {
            name: self.get(&mut f, "name", Self::name).unwrap_or(default_name),
            listen: self
                .get(&mut f, "listen", Self::socket_addr)
                .unwrap_or(d.listen),
            header_read_timeout: self
                .get(&mut f, "header_read_timeout", Self::duration_positive)
                .unwrap_or(d.header_read_timeout),
            idle_timeout: self
                .get(&mut f, "idle_timeout", Self::duration)
                .unwrap_or(d.idle_timeout),
            send_timeout: self
                .get(&mut f, "send_timeout", Self::duration)
                .unwrap_or(d.send_timeout),
            max_connections: self
                .get(&mut f, "max_connections", Self::usize_positive)
                .unwrap_or(d.max_connections),
            max_header_bytes: self
                .get(&mut f, "max_header_bytes", Self::usize_positive)
                .unwrap_or(d.max_header_bytes),
            max_headers: self
                .get(&mut f, "max_headers", Self::usize_positive)
                .unwrap_or(d.max_headers),
            max_body_bytes: self
                .get(&mut f, "max_body_bytes", Self::u64)
                .unwrap_or(d.max_body_bytes),
            tls: self.get(&mut f, "tls", Self::listener_tls),
        };
        self.finish(f);
        Some(l)
    }

    fn listener_tls(&mut self, v: &Val<'_>, path: &str) -> Option<ListenerTls> {
        let mut f = self.fields(v, path)?;
        let cert = self.get(&mut f, "cert", Self::file_path);
        let key = self.get(&mut f, "key", Self::file_path);
        let client_ca = self.get(&mut f, "client_ca", Self::file_path);
        let missing = [
            ("cert", "the PEM certificate chain"),
            ("key", "the PEM private key"),
        ];
        for (name, what) in missing {
            if !f.has(name) {
                self.c
                    .at_span(&v.span(), path, format!("missing key `{name}` ({what})"));
            }
        }
        self.finish(f);
        Some(ListenerTls {
            cert: cert?,
            key: key?,
            client_ca,
        })
    }

    fn drain(&mut self, v: &Val<'_>, path: &str) -> Option<DrainConfig> {
        let mut f = self.fields(v, path)?;
        let d = DrainConfig::default();
        let delay = self.get(&mut f, "delay", Self::duration).unwrap_or(d.delay);
        let timeout = self
            .get(&mut f, "timeout", Self::duration)
            .unwrap_or(d.timeout);
        self.finish(f);
        Some(DrainConfig { delay, timeout })
    }

    fn routes(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<RouteConfig>> {
        let items = self.array(v, path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            if let Some(r) = self.route(item, &p, i) {
                out.push(r);
            }
        }
        Some(out)
    }

    fn route(&mut self, v: &Val<'_>, path: &str, index: usize) -> Option<RouteConfig> {
        let mut f = self.fields(v, path)?;
        let d = RouteConfig::default();
        let name = self
            .get(&mut f, "name", Self::name)
            .unwrap_or_else(|| format!("route-{index}").into());
        let matcher = self
            .get(&mut f, "match", Self::route_match)
            .unwrap_or_default();
        let upstream = self
            .get(&mut f, "upstream", Self::name)
            .map(RouteAction::Upstream);
        let split = self
            .get(&mut f, "split", Self::split)
            .map(RouteAction::Split);
        let respond = self
            .get(&mut f, "respond", Self::respond)
            .map(RouteAction::Respond);
        let present: Vec<&str> = ACTIONS.iter().copied().filter(|k| f.has(k)).collect();
        match present.as_slice() {
            [] => self.c.at_span(
                &v.span(),
                path,
                "expected one of `upstream`, `split` or `respond` (got none)".into(),
            ),
            [_] => {}
            [first, rest @ ..] => {
                for key in rest {
                    let p = join(path, key);
                    self.c.at_path(
                        &p,
                        format!(
                            "only one of `upstream`, `split` or `respond` may be set (`{first}` \
                             is set too)"
                        ),
                    );
                }
            }
        }
        let r = RouteConfig {
            name,
            matcher,
            action: upstream.or(split).or(respond).unwrap_or(d.action),
            timeout: self
                .get(&mut f, "timeout", Self::duration_positive)
                .unwrap_or(d.timeout),
            priority: self
                .get(&mut f, "priority", Self::priority)
                .unwrap_or(d.priority),
            rate_limit: self.get(&mut f, "rate_limit", Self::rate_limit),
            fault: self.get(&mut f, "fault", Self::fault).unwrap_or(d.fault),
        };
        self.finish(f);
        Some(r)
    }

    fn route_match(&mut self, v: &Val<'_>, path: &str) -> Option<RouteMatch> {
        let mut f = self.fields(v, path)?;
        let m = RouteMatch {
            path_prefix: self.get(&mut f, "path_prefix", Self::path_prefix),
            host: self.get(&mut f, "host", Self::host),
            methods: self
                .get(&mut f, "methods", Self::methods)
                .unwrap_or_default(),
            headers: self
                .get(&mut f, "headers", Self::headers)
                .unwrap_or_default(),
        };
        self.finish(f);
        Some(m)
    }

    fn split(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<SplitTarget>> {
        let items = self.array(v, path)?;
        if items.is_empty() {
            self.c.at_span(
                &v.span(),
                path,
                "expected at least one target such as { upstream = \"v1\", weight = 90 }".into(),
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            let Some(mut f) = self.fields(item, &p) else {
                continue;
            };
            let upstream = self.get(&mut f, "upstream", Self::name);
            let weight = self.get(&mut f, "weight", Self::u32).unwrap_or(1);
            if !f.has("upstream") {
                self.c.at_span(
                    &item.span(),
                    &p,
                    "missing key `upstream` (an upstream name)".into(),
                );
            }
            self.finish(f);
            if let Some(upstream) = upstream {
                out.push(SplitTarget { upstream, weight });
            }
        }
        if out.len() == items.len() && out.iter().all(|t| t.weight == 0) {
            self.c.at_span(
                &v.span(),
                path,
                "expected at least one weight greater than 0 (got all 0)".into(),
            );
        }
        Some(out)
    }

    fn respond(&mut self, v: &Val<'_>, path: &str) -> Option<RespondConfig> {
        let mut f = self.fields(v, path)?;
        let d = RespondConfig::default();
        let r = RespondConfig {
            status: self.get(&mut f, "status", Self::status).unwrap_or(d.status),
            body: self
                .get(&mut f, "body", Self::string)
                .map(|s| Bytes::from(s.into_bytes()))
                .unwrap_or(d.body),
            headers: self
                .get(&mut f, "headers", Self::headers)
                .unwrap_or(d.headers),
        };
        self.finish(f);
        Some(r)
    }

    fn rate_limit(&mut self, v: &Val<'_>, path: &str) -> Option<RateLimitConfig> {
        let mut f = self.fields(v, path)?;
        let rps = self.get(&mut f, "rps", |r, v, p| {
            r.float(
                v,
                p,
                |x| x > 0.0,
                "a number of requests per second greater than 0",
            )
        });
        let burst = self.get(&mut f, "burst", Self::u32_positive);
        let key = self
            .get(&mut f, "key", Self::rate_limit_key)
            .unwrap_or_default();
        let max_keys = self.get(&mut f, "max_keys", Self::usize_positive);
        if !f.has("rps") {
            self.c.at_span(
                &v.span(),
                path,
                "missing key `rps` (requests per second)".into(),
            );
        }
        self.finish(f);
        let d = RateLimitConfig::new(rps?);
        Some(RateLimitConfig {
            burst: burst.unwrap_or(d.burst),
            key,
            max_keys: max_keys.unwrap_or(d.max_keys),
            ..d
        })
    }

    fn fault(&mut self, v: &Val<'_>, path: &str) -> Option<FaultConfig> {
        let mut f = self.fields(v, path)?;
        let d = FaultConfig::default();
        let fault = FaultConfig {
            abort_percent: self
                .get(&mut f, "abort_percent", Self::percent)
                .unwrap_or(d.abort_percent),
            abort_status: self
                .get(&mut f, "abort_status", Self::status)
                .unwrap_or(d.abort_status),
            delay_percent: self
                .get(&mut f, "delay_percent", Self::percent)
                .unwrap_or(d.delay_percent),
            delay: self.get(&mut f, "delay", Self::duration).unwrap_or(d.delay),
            allow_header: self
                .get(&mut f, "allow_header", Self::bool)
                .unwrap_or(d.allow_header),
        };
        self.finish(f);
        Some(fault)
    }

    fn upstreams(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<UpstreamConfig>> {
        let f = self.fields(v, path)?;
        let mut out = Vec::new();
        for (key, value) in &f.entries {
            let p = join(path, key.get_ref());
            self.remember(&p, key, value);
            if !valid_name(key.get_ref()) {
                let got = quote(key.get_ref());
                self.c.at_span(
                    &key.span(),
                    &p,
                    format!("expected {NAME_EXPECTED} (got {got})"),
                );
            }
            if let Some(u) = self.upstream(value, &p, key.get_ref()) {
                out.push(u);
            }
        }
        Some(out)
    }

    fn upstream(&mut self, v: &Val<'_>, path: &str, name: &str) -> Option<UpstreamConfig> {
        let mut f = self.fields(v, path)?;
        let d = UpstreamConfig::default();
        let endpoints = self.get(&mut f, "endpoints", Self::endpoints);
        let dns = self.get(&mut f, "dns", Self::authority);
        match (f.has("endpoints"), f.has("dns")) {
            (false, false) => self.c.at_span(
                &v.span(),
                path,
                "expected `endpoints = [\"host:port\", …]` or `dns = \"host:port\"` (got neither)"
                    .into(),
            ),
            (true, true) => self.c.at_path(
                &join(path, "dns"),
                "set either `endpoints` or `dns`, not both".into(),
            ),
            _ => {}
        }
        let u = UpstreamConfig {
            name: Arc::from(name),
            endpoints: endpoints.unwrap_or_default(),
            dns,
            dns_refresh: self
                .get(&mut f, "dns_refresh", Self::duration_positive)
                .unwrap_or(d.dns_refresh),
            dns_servers: self
                .get(&mut f, "dns_servers", Self::dns_servers)
                .unwrap_or(d.dns_servers),
            protocol: self
                .get(&mut f, "protocol", Self::protocol)
                .unwrap_or(d.protocol),
            connect_timeout: self
                .get(&mut f, "connect_timeout", Self::duration_positive)
                .unwrap_or(d.connect_timeout),
            try_timeout: self
                .get(&mut f, "try_timeout", Self::duration)
                .unwrap_or(d.try_timeout),
            read_timeout: self
                .get(&mut f, "read_timeout", Self::duration)
                .unwrap_or(d.read_timeout),
            pool_idle_timeout: self
                .get(&mut f, "pool_idle_timeout", Self::duration)
                .unwrap_or(d.pool_idle_timeout),
            balance: self
                .get(&mut f, "balance", Self::balance)
                .unwrap_or(d.balance),
            hash_on: self
                .get(&mut f, "hash_on", Self::hash_on)
                .unwrap_or(d.hash_on),
            tls: self.get(&mut f, "tls", Self::upstream_tls),
            retry: self.get(&mut f, "retry", Self::retry).unwrap_or(d.retry),
            breaker: self
                .get(&mut f, "breaker", Self::breaker)
                .unwrap_or(d.breaker),
            shed: self.get(&mut f, "shed", Self::shed).unwrap_or(d.shed),
            health: self.get(&mut f, "health", Self::health),
            outlier: self
                .get(&mut f, "outlier", Self::outlier)
                .unwrap_or(d.outlier),
        };
        self.finish(f);
        Some(u)
    }

    fn upstream_tls(&mut self, v: &Val<'_>, path: &str) -> Option<UpstreamTls> {
        let mut f = self.fields(v, path)?;
        let tls = UpstreamTls {
            sni: self.get(&mut f, "sni", Self::host),
            ca: self.get(&mut f, "ca", Self::file_path),
            cert: self.get(&mut f, "cert", Self::file_path),
            key: self.get(&mut f, "key", Self::file_path),
        };
        match (f.has("cert"), f.has("key")) {
            (true, false) => self.c.at_path(
                &join(path, "cert"),
                "a client certificate needs `key` (the PEM private key) too".into(),
            ),
            (false, true) => self.c.at_path(
                &join(path, "key"),
                "a client key needs `cert` (the PEM certificate chain) too".into(),
            ),
            _ => {}
        }
        self.finish(f);
        Some(tls)
    }

    fn retry(&mut self, v: &Val<'_>, path: &str) -> Option<RetrySettings> {
        let mut f = self.fields(v, path)?;
        let d = RetrySettings::default();
        let s = RetrySettings {
            max_retries: self
                .get(&mut f, "max_retries", Self::u32)
                .unwrap_or(d.max_retries),
            statuses: self
                .get(&mut f, "statuses", Self::statuses)
                .unwrap_or(d.statuses),
            idempotency_key: self
                .get(&mut f, "idempotency_key", Self::bool)
                .unwrap_or(d.idempotency_key),
            max_body: self
                .get(&mut f, "max_body", Self::u64)
                .unwrap_or(d.max_body),
            backoff_base: self
                .get(&mut f, "backoff_base", Self::duration)
                .unwrap_or(d.backoff_base),
            backoff_cap: self
                .get(&mut f, "backoff_cap", Self::duration)
                .unwrap_or(d.backoff_cap),
            budget_ratio: self
                .get(&mut f, "budget_ratio", Self::ratio)
                .unwrap_or(d.budget_ratio),
            budget_min_per_sec: self
                .get(&mut f, "budget_min_per_sec", Self::u32)
                .unwrap_or(d.budget_min_per_sec),
            budget_window: self
                .get(&mut f, "budget_window", Self::budget_window)
                .unwrap_or(d.budget_window),
        };
        self.finish(f);
        Some(s)
    }

    fn breaker(&mut self, v: &Val<'_>, path: &str) -> Option<BreakerSettings> {
        let mut f = self.fields(v, path)?;
        let d = BreakerSettings::default();
        let s = BreakerSettings {
            mode: self.get(&mut f, "mode", Self::mode).unwrap_or(d.mode),
            window: self
                .get(&mut f, "window", Self::duration_positive)
                .unwrap_or(d.window),
            min_calls: self
                .get(&mut f, "min_calls", Self::u32_positive)
                .unwrap_or(d.min_calls),
            failure_rate: self
                .get(&mut f, "failure_rate", Self::ratio)
                .unwrap_or(d.failure_rate),
            slow_call_duration: self
                .get(&mut f, "slow_call_duration", Self::duration)
                .unwrap_or(d.slow_call_duration),
            slow_call_rate: self
                .get(&mut f, "slow_call_rate", Self::ratio)
                .unwrap_or(d.slow_call_rate),
            consecutive_failures: self
                .get(&mut f, "consecutive_failures", Self::u32_positive)
                .unwrap_or(d.consecutive_failures),
            open_for: self
                .get(&mut f, "open_for", Self::duration)
                .unwrap_or(d.open_for),
            open_for_max: self
                .get(&mut f, "open_for_max", Self::duration)
                .unwrap_or(d.open_for_max),
            half_open_probes: self
                .get(&mut f, "half_open_probes", Self::u32_positive)
                .unwrap_or(d.half_open_probes),
            failure_statuses: self
                .get(&mut f, "failure_statuses", Self::statuses)
                .unwrap_or(d.failure_statuses),
        };
        self.finish(f);
        Some(s)
    }

    fn shed(&mut self, v: &Val<'_>, path: &str) -> Option<ShedSettings> {
        let mut f = self.fields(v, path)?;
        let d = ShedSettings::default();
        let s = ShedSettings {
            mode: self.get(&mut f, "mode", Self::mode).unwrap_or(d.mode),
            max_in_flight: self
                .get(&mut f, "max_in_flight", Self::u32_positive)
                .unwrap_or(d.max_in_flight),
            queue: self.get(&mut f, "queue", Self::u32).unwrap_or(d.queue),
            queue_timeout: self
                .get(&mut f, "queue_timeout", Self::duration)
                .unwrap_or(d.queue_timeout),
            adaptive: self
                .get(&mut f, "adaptive", Self::bool)
                .unwrap_or(d.adaptive),
            min_limit: self
                .get(&mut f, "min_limit", Self::u32_positive)
                .unwrap_or(d.min_limit),
        };
        self.finish(f);
        Some(s)
    }

    fn health(&mut self, v: &Val<'_>, path: &str) -> Option<HealthSettings> {
        let mut f = self.fields(v, path)?;
        let d = HealthSettings::default();
        let s = HealthSettings {
            path: self
                .get(&mut f, "path", Self::path_prefix)
                .unwrap_or(d.path),
            interval: self
                .get(&mut f, "interval", Self::duration_positive)
                .unwrap_or(d.interval),
            timeout: self
                .get(&mut f, "timeout", Self::duration_positive)
                .unwrap_or(d.timeout),
            healthy_threshold: self
                .get(&mut f, "healthy_threshold", Self::u32_positive)
                .unwrap_or(d.healthy_threshold),
            unhealthy_threshold: self
                .get(&mut f, "unhealthy_threshold", Self::u32_positive)
                .unwrap_or(d.unhealthy_threshold),
        };
        self.finish(f);
        Some(s)
    }

    fn outlier(&mut self, v: &Val<'_>, path: &str) -> Option<OutlierSettings> {
        let mut f = self.fields(v, path)?;
        let d = OutlierSettings::default();
        let s = OutlierSettings {
            consecutive_failures: self
                .get(&mut f, "consecutive_failures", Self::u32_positive)
                .unwrap_or(d.consecutive_failures),
            base_ejection: self
                .get(&mut f, "base_ejection", Self::duration_positive)
                .unwrap_or(d.base_ejection),
            max_ejection_percent: self
                .get(&mut f, "max_ejection_percent", |r, v, p| {
                    r.int_as(v, p, 0, 100, "a percentage from 0 to 100")
                        .and_then(|n| u32::try_from(n).ok())
                })
                .unwrap_or(d.max_ejection_percent),
            mode: self.get(&mut f, "mode", Self::mode).unwrap_or(d.mode),
            ramp: self.get(&mut f, "ramp", Self::duration).unwrap_or(d.ramp),
        };
        self.finish(f);
        Some(s)
    }
}

// === tables, arrays, and what the reader remembers ===

impl<'s> Reader<'s> {
    /// The entries of a table value; records a type error if it is not a table.
    fn fields<'t, 'i>(&mut self, v: &'t Val<'i>, path: &str) -> Option<Fields<'t, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Fields::new(path.to_owned(), t)),
            _ => {
                self.type_error(v, path, "a table");
                None
            }
        }
    }

    /// Takes `key` from a table and converts its value; the reader notes that the key is known.
    fn get<'t, 'i, T>(
        &mut self,
        f: &mut Fields<'t, 'i>,
        key: &'static str,
        convert: impl FnOnce(&mut Self, &'t Val<'i>, &str) -> Option<T>,
    ) -> Option<T> {
        f.known.push(key);
        let (k, v) = f
            .entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .copied()?;
        let path = join(&f.path, key);
        self.remember(&path, k, v);
        convert(self, v, &path)
    }

    /// Records every key of the table that the reader did not ask for.
    fn finish(&mut self, f: Fields<'_, '_>) {
        for (k, _) in &f.entries {
            if !f.known.contains(&k.get_ref().as_ref()) {
                let expected = f.known.join(", ");
                self.c.at_span(
                    &k.span(),
                    &join(&f.path, k.get_ref()),
                    format!("unknown key (expected one of: {expected})"),
                );
            }
        }
    }

    fn array<'t, 'i>(&mut self, v: &'t Val<'i>, path: &str) -> Option<&'t DeArray<'i>> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                self.type_error(v, path, "an array");
                None
            }
        }
    }

    /// The path of an array item, remembered at the item's line.
    fn item(&mut self, path: &str, index: usize, item: &Val<'_>) -> String {
        let p = format!("{path}[{index}]");
        let text = self.got(item);
        self.c.remember(&p, &item.span(), text);
        p
    }

    fn remember(&mut self, path: &str, key: &Spanned<DeString<'_>>, v: &Val<'_>) {
        let text = self.got(v);
        self.c.remember(path, &key.span(), text);
    }

    fn type_error(&mut self, v: &Val<'_>, path: &str, expected: &str) {
        let got = self.got(v);
        self.c
            .at_span(&v.span(), path, format!("expected {expected} (got {got})"));
    }

    /// The offending value for `(got …)`: its source text, shortened, or its kind.
    fn got(&self, v: &Val<'_>) -> String {
        let text = self.src.get(v.span()).unwrap_or("").trim();
        match v.get_ref() {
            DeValue::Table(_) => "a table".into(),
            DeValue::Array(_) if text.starts_with("[[") => "an array of tables".into(),
            DeValue::Array(_) if text.contains('\n') || text.chars().count() > 60 => {
                "an array".into()
            }
            _ => shorten(text),
        }
    }
}

impl<'t, 'i> Fields<'t, 'i> {
    fn new(path: String, table: &'t DeTable<'i>) -> Fields<'t, 'i> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        Fields {
            path,
            entries,
            known: Vec::new(),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k.get_ref() == key)
    }
}

// === values ===

impl<'s> Reader<'s> {
    fn string(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.type_error(v, path, "a string");
                None
            }
        }
    }

    /// A string checked by `valid`; `expected` says what would be valid.
    fn string_where(
        &mut self,
        v: &Val<'_>,
        path: &str,
        valid: impl FnOnce(&str) -> bool,
        expected: &str,
    ) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) if valid(s) => Some(s.to_string()),
            _ => {
                self.type_error(v, path, expected);
                None
            }
        }
    }

    /// A route or upstream name: it becomes a metric label.
    fn name(&mut self, v: &Val<'_>, path: &str) -> Option<Arc<str>> {
        self.string_where(v, path, valid_name, NAME_EXPECTED)
            .map(Arc::from)
    }

    fn file_path(&mut self, v: &Val<'_>, path: &str) -> Option<PathBuf> {
        self.string_where(v, path, |s| !s.is_empty(), "a file path")
            .map(PathBuf::from)
    }

    fn path_prefix(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        self.string_where(
            v,
            path,
            |s| s.starts_with('/') && !s.chars().any(char::is_whitespace),
            "a path starting with \"/\" such as \"/api\"",
        )
    }

    /// A host name (lowercased), as in `match.host` and `tls.sni`.
    fn host(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        let valid = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '/');
        self.string_where(v, path, valid, "a host name such as \"api.example.com\"")
            .map(|s| s.to_ascii_lowercase())
    }

    fn bool(&mut self, v: &Val<'_>, path: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.type_error(v, path, "true or false");
                None
            }
        }
    }

    /// A human duration (`"250ms"`) accepted by `valid`; `expected` says what `valid` wants.
    fn duration_with(
        &mut self,
        v: &Val<'_>,
        path: &str,
        valid: impl FnOnce(Duration) -> bool,
        expected: &str,
    ) -> Option<Duration> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => humantime::parse_duration(s.trim()).ok(),
            _ => None,
        };
        match parsed {
            Some(d) if valid(d) => Some(d),
            Some(_) => {
                self.type_error(v, path, expected);
                None
            }
            None => {
                self.type_error(v, path, "a duration such as \"250ms\"");
                None
            }
        }
    }

    fn duration(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        self.duration_with(v, path, |_| true, "")
    }

    fn duration_positive(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        self.duration_with(v, path, |d| !d.is_zero(), "a duration greater than 0")
    }

    fn budget_window(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        let valid = |d: Duration| (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d);
        self.duration_with(v, path, valid, "a duration from \"1s\" to \"60s\"")
    }

    /// An integer in `min..=max`.
    fn int(&mut self, v: &Val<'_>, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.integer(v);
        if let Some(n) = n.and_then(|n| u64::try_from(n).ok())
            && (min..=max).contains(&n)
        {
            return Some(n);
        }
        let expected = match n {
            _ if max < 1_000_000 => format!("an integer from {min} to {max}"),
            Some(n) if n > i128::from(max) => format!("an integer of at most {max}"),
            _ if min == 0 => "a non-negative integer".to_owned(),
            _ if min == 1 => "an integer greater than 0".to_owned(),
            _ => format!("an integer of at least {min}"),
        };
        self.type_error(v, path, &expected);
        None
    }

    /// An integer in `min..=max`, described as `expected` when it is not.
    fn int_as(
        &mut self,
        v: &Val<'_>,
        path: &str,
        min: u64,
        max: u64,
        expected: &str,
    ) -> Option<u64> {
        let n = self.integer(v).and_then(|n| u64::try_from(n).ok());
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.type_error(v, path, expected);
                None
            }
        }
    }

    fn integer(&self, v: &Val<'_>) -> Option<i128> {
        match v.get_ref() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        }
    }

    fn u32(&mut self, v: &Val<'_>, path: &str) -> Option<u32> {
        self.int(v, path, 0, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    fn u32_positive(&mut self, v: &Val<'_>, path: &str) -> Option<u32> {
        self.int(v, path, 1, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    fn u64(&mut self, v: &Val<'_>, path: &str) -> Option<u64> {
        self.int(v, path, 0, INT_MAX)
    }

    fn usize_positive(&mut self, v: &Val<'_>, path: &str) -> Option<usize> {
        let max = u64::try_from(usize::MAX).unwrap_or(INT_MAX).min(INT_MAX);
        self.int(v, path, 1, max)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A finite number (integer or float) accepted by `valid`.
    fn float(
        &mut self,
        v: &Val<'_>,
        path: &str,
        valid: impl FnOnce(f64) -> bool,
        expected: &str,
    ) -> Option<f64> {
        let x = match v.get_ref() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match x {
            Some(x) if x.is_finite() && valid(x) => Some(x),
            _ => {
                self.type_error(v, path, expected);
                None
            }
        }
    }

    fn ratio(&mut self, v: &Val<'_>, path: &str) -> Option<f64> {
        self.float(
            v,
            path,
            |x| (0.0..=1.0).contains(&x),
            "a ratio from 0 to 1 such as 0.5",
        )
    }

    fn percent(&mut self, v: &Val<'_>, path: &str) -> Option<f64> {
        self.float(
            v,
            path,
            |x| (0.0..=100.0).contains(&x),
            "a percentage from 0 to 100",
        )
    }

    fn status_code(&mut self, v: &Val<'_>, path: &str) -> Option<u16> {
        self.int_as(v, path, 100, 599, "an HTTP status code from 100 to 599")
            .and_then(|n| u16::try_from(n).ok())
    }

    fn status(&mut self, v: &Val<'_>, path: &str) -> Option<StatusCode> {
        self.status_code(v, path)
            .and_then(|n| StatusCode::from_u16(n).ok())
    }

    fn statuses(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<u16>> {
        let items = self.array(v, path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            out.extend(self.status_code(item, &p));
        }
        Some(out)
    }

    fn keyword<T: Copy>(&mut self, v: &Val<'_>, path: &str, options: &[(&str, T)]) -> Option<T> {
        if let DeValue::String(s) = v.get_ref()
            && let Some((_, t)) = options.iter().find(|(name, _)| name == s)
        {
            return Some(*t);
        }
        let names: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        self.type_error(v, path, &one_of(&names));
        None
    }

    fn priority(&mut self, v: &Val<'_>, path: &str) -> Option<Priority> {
        let all = [Priority::Critical, Priority::Default, Priority::Sheddable];
        self.keyword(v, path, &all.map(|p| (p.as_str(), p)))
    }

    fn protocol(&mut self, v: &Val<'_>, path: &str) -> Option<Protocol> {
        let all = [Protocol::Http1, Protocol::Http2];
        self.keyword(v, path, &all.map(|p| (p.as_str(), p)))
    }

    fn balance(&mut self, v: &Val<'_>, path: &str) -> Option<Balance> {
        let all = [
            Balance::P2c,
            Balance::RoundRobin,
            Balance::LeastRequest,
            Balance::Hash,
        ];
        self.keyword(v, path, &all.map(|b| (b.as_str(), b)))
    }

    fn mode(&mut self, v: &Val<'_>, path: &str) -> Option<Mode> {
        let all = [Mode::Enforce, Mode::DryRun, Mode::Off];
        self.keyword(v, path, &all.map(|m| (m.as_str(), m)))
    }

    fn rate_limit_key(&mut self, v: &Val<'_>, path: &str) -> Option<RateLimitKey> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => match s.as_ref() {
                "none" => Some(RateLimitKey::None),
                "client_ip" => Some(RateLimitKey::ClientIp),
                s => s
                    .strip_prefix("header:")
                    .and_then(|n| HeaderName::from_str(n).ok())
                    .map(RateLimitKey::Header),
            },
            _ => None,
        };
        if parsed.is_none() {
            self.type_error(v, path, "\"none\", \"client_ip\" or \"header:NAME\"");
        }
        parsed
    }

    fn hash_on(&mut self, v: &Val<'_>, path: &str) -> Option<HashOn> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => match s.as_ref() {
                "client_ip" => Some(HashOn::ClientIp),
                s => match s.split_once(':') {
                    Some(("header", n)) => HeaderName::from_str(n).ok().map(HashOn::Header),
                    Some(("cookie", n)) if valid_token(n) => Some(HashOn::Cookie(n.to_owned())),
                    _ => None,
                },
            },
            _ => None,
        };
        if parsed.is_none() {
            self.type_error(v, path, "\"client_ip\", \"header:NAME\" or \"cookie:NAME\"");
        }
        parsed
    }

    fn socket_addr(&mut self, v: &Val<'_>, path: &str) -> Option<SocketAddr> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => SocketAddr::from_str(s).ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.type_error(v, path, "an ip:port address such as \"127.0.0.1:8080\"");
        }
        parsed
    }

    /// `host:port` with a port from 1 to 65535, as in `endpoints` and `dns`.
    fn authority(&mut self, v: &Val<'_>, path: &str) -> Option<Authority> {
        let parsed = match v.get_ref() {
            DeValue::String(s) if !s.contains('@') => Authority::from_str(s)
                .ok()
                .filter(|a| !a.host().is_empty() && a.port_u16().is_some_and(|p| p != 0)),
            _ => None,
        };
        if parsed.is_none() {
            self.type_error(
                v,
                path,
                "host:port such as \"10.0.0.7:8080\" or \"backend.svc:80\"",
            );
        }
        parsed
    }

    fn endpoints(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<Authority>> {
        let items = self.array(v, path)?;
        if items.is_empty() {
            self.c.at_span(
                &v.span(),
                path,
                "expected at least one endpoint such as \"10.0.0.7:8080\" (got [])".into(),
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            out.extend(self.authority(item, &p));
        }
        Some(out)
    }

    fn dns_servers(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<SocketAddr>> {
        let items = self.array(v, path)?;
        if items.is_empty() {
            self.c.at_span(
                &v.span(),
                path,
                "expected at least one DNS server such as \"10.96.0.10:53\" (leave \
                 `dns_servers` out for the system resolver) (got [])"
                    .into(),
            );
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            let parsed = match item.get_ref() {
                DeValue::String(s) => SocketAddr::from_str(s).ok().filter(|a| a.port() != 0),
                _ => None,
            };
            match parsed {
                Some(a) => out.push(a),
                None => self.type_error(
                    item,
                    &p,
                    "an ip:port address with a port from 1 to 65535 such as \"10.96.0.10:53\"",
                ),
            }
        }
        Some(out)
    }

    fn methods(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<Method>> {
        let items = self.array(v, path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = self.item(path, i, item);
            let parsed = match item.get_ref() {
                DeValue::String(s) if !s.chars().any(|c| c.is_ascii_lowercase()) => {
                    Method::from_bytes(s.as_bytes()).ok()
                }
                _ => None,
            };
            match parsed {
                Some(m) => out.push(m),
                None => self.type_error(item, &p, "an uppercase HTTP method such as \"GET\""),
            }
        }
        Some(out)
    }

    /// A table of header names to string values, in file order.
    fn headers(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let f = self.fields(v, path)?;
        let mut out = Vec::new();
        for (key, value) in &f.entries {
            let p = join(path, key.get_ref());
            self.remember(&p, key, value);
            let name = HeaderName::from_bytes(key.get_ref().as_bytes()).ok();
            if name.is_none() {
                let got = shorten(self.src.get(key.span()).unwrap_or(""));
                self.c.at_span(
                    &key.span(),
                    &p,
                    format!(
                        "expected a header name of letters, digits and -_.!#$%&'*+^`|~ (got {got})"
                    ),
                );
            }
            let value = match value.get_ref() {
                DeValue::String(s) => match HeaderValue::from_str(s) {
                    Ok(hv) => Some(hv),
                    Err(_) => {
                        self.type_error(value, &p, "a header value without control characters");
                        None
                    }
                },
                _ => {
                    self.type_error(value, &p, "a string");
                    None
                }
            };
            if let (Some(n), Some(hv)) = (name, value) {
                out.push((n, hv));
            }
        }
        Some(out)
    }
}

// === helpers ===

/// `path.key`, quoting a key that is not plain.
pub(crate) fn join(path: &str, key: &str) -> String {
    let key = if valid_name(key) {
        key.to_owned()
    } else {
        quote(key)
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// Whether `s` may name a route, upstream or listener: non-empty, `[A-Za-z0-9_.-]`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A TOML basic string holding `s`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

fn one_of(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn shorten(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    if first.chars().count() > 60 || first.len() < text.len() {
        let cut: String = first.chars().take(60).collect();
        format!("{cut}…")
    } else {
        first.to_owned()
    }
}

/// The largest TOML integer.
const INT_MAX: u64 = i64::MAX as u64;

const ACTIONS: [&str; 3] = ["upstream", "split", "respond"];

const NAME_EXPECTED: &str = "a name of letters, digits, '_', '.' and '-'";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{at, doc, error_list, errors, ok, one_error};

    #[test]
    fn a_bad_duration_reads_as_documented() {
        let src = doc(&[
            "[[routes]]",
            "respond = {}",
            "[[routes]]",
            "respond = {}",
            "[[routes]]",
            "respond = {}",
            "timeout = \"fast\"",
        ]);
        let e = one_error(&src);
        assert_eq!(
            e.to_string(),
            "weir.toml:7: routes[2].timeout: expected a duration such as \"250ms\" (got \"fast\")"
        );
        let e = one_error("[[routes]]\nrespond = {}\ntimeout = \"0s\"");
        assert_eq!((e.line, e.path.as_str()), (3, "routes[0].timeout"));
        assert_eq!(e.message, "expected a duration greater than 0 (got \"0s\")");
        let e = one_error("[drain]\ndelay = 5");
        assert_eq!(e.message, "expected a duration such as \"250ms\" (got 5)");
    }

    #[test]
    fn a_syntax_error_is_one_error_at_tomls_line() {
        let e = one_error("[admin]\nlisten = \"127.0.0.1:9901\"\nlisten = \"x\"\n");
        assert_eq!((e.line, e.path.as_str()), (3, ""));
        assert!(e.message.contains("duplicate key"), "{}", e.message);
        assert!(
            e.to_string().starts_with("weir.toml:3: invalid TOML: "),
            "{e}"
        );
        let e = one_error("\n\n[[routes]]\nname = \"x\n");
        assert_eq!(e.line, 4);
    }

    #[test]
    fn type_errors_name_what_was_expected() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("admin = 5", 1, "admin", "expected a table (got 5)"),
            (
                "routes = { a = 1 }",
                1,
                "routes",
                "expected an array (got a table)",
            ),
            (
                "listeners = [1]",
                1,
                "listeners[0]",
                "expected a table (got 1)",
            ),
            ("[[listeners]]\nname = 7", 2, "listeners[0].name", "got 7"),
            (
                "[[listeners]]\nmax_headers = \"100\"",
                2,
                "listeners[0].max_headers",
                "(got \"100\")",
            ),
            (
                "[[listeners]]\nmax_body_bytes = 1.5",
                2,
                "listeners[0].max_body_bytes",
                "non-negative",
            ),
            (
                "[[listeners]]\nmax_connections = -3",
                2,
                "listeners[0].max_connections",
                "(got -3)",
            ),
            (
                "[[routes]]\nrespond = { body = 1 }",
                2,
                "routes[0].respond.body",
                "expected a string",
            ),
            (
                "[[routes]]\nrespond = {}\nfault = { allow_header = \"yes\" }",
                3,
                "routes[0].fault.allow_header",
                "expected true or false (got \"yes\")",
            ),
            (
                "[[routes]]\nrespond = {}\nmatch = \"/api\"",
                3,
                "routes[0].match",
                "expected a table",
            ),
            (
                "[upstreams.b]\nendpoints = \"b:80\"",
                2,
                "upstreams.b.endpoints",
                "expected an array (got \"b:80\")",
            ),
            (
                "[upstreams.b]\nendpoints = [\"b:80\"]\nretry = 3",
                3,
                "upstreams.b.retry",
                "table",
            ),
            (
                "[upstreams.b]\nendpoints = [\"b:80\"]\nprotocol = \"h2\"",
                3,
                "upstreams.b.protocol",
                "expected \"http1\" or \"http2\" (got \"h2\")",
            ),
            (
                "[upstreams.b]\nendpoints = [\"b:80\"]\n[upstreams.b.breaker]\nmode = \"dry-run\"",
                4,
                "upstreams.b.breaker.mode",
                "expected \"enforce\", \"dry_run\" or \"off\" (got \"dry-run\")",
            ),
        ];
        for &(src, line, path, message) in cases {
            let e = one_error(src);
            assert_eq!((e.line, e.path.as_str()), (line, path), "{src}");
            assert!(e.message.contains(message), "{src}: {}", e.message);
        }
    }

    #[test]
    fn unknown_keys_are_errors_listing_the_known_ones() {
        let src = doc(&[
            "colour = 1",                 // 1
            "[[listeners]]",              // 2
            "nam = \"a\"",                // 3
            "[[routes]]",                 // 4
            "respond = {}",               // 5
            "match = { path = \"/\" }",   // 6
            "fault = { abort = 1 }",      // 7
            "[upstreams.backend]",        // 8
            "endpoints = [\"b:80\"]",     // 9
            "[upstreams.backend.retrys]", // 10
            "[upstreams.backend.shed]",   // 11
            "queue_size = 1",             // 12
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(1, "colour"),
                at(3, "listeners[0].nam"),
                at(6, "routes[0].match.path"),
                at(7, "routes[0].fault.abort"),
                at(10, "upstreams.backend.retrys"),
                at(12, "upstreams.backend.shed.queue_size"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "unknown key (expected one of: admin, listeners, drain, routes, upstreams)"
        );
        assert_eq!(
            all[4].message,
            "unknown key (expected one of: endpoints, dns, dns_refresh, dns_servers, protocol, \
             connect_timeout, try_timeout, read_timeout, pool_idle_timeout, balance, hash_on, tls, retry, \
             breaker, shed, health, outlier)"
        );
        assert_eq!(
            all[2].message,
            "unknown key (expected one of: path_prefix, host, methods, headers)"
        );
    }

    #[test]
    fn every_error_in_one_table_is_reported() {
        let src = doc(&[
            "[[listeners]]",               // 1
            "listen = \"localhost:80\"",   // 2
            "max_connections = 0",         // 3
            "idle_timeout = 5",            // 4
            "header_read_timeout = \"x\"", // 5
            "max_headers = -1",            // 6
            "bogus = true",                // 7
            "[upstreams.b]",               // 8
            "endpoints = [\"b:80\"]",      // 9
            "[upstreams.b.retry]",         // 10
            "budget_ratio = 1.5",          // 11
            "max_retries = \"two\"",       // 12
            "backoff_base = \"soon\"",     // 13
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "listeners[0].listen"),
                at(3, "listeners[0].max_connections"),
                at(4, "listeners[0].idle_timeout"),
                at(5, "listeners[0].header_read_timeout"),
                at(6, "listeners[0].max_headers"),
                at(7, "listeners[0].bogus"),
                at(11, "upstreams.b.retry.budget_ratio"),
                at(12, "upstreams.b.retry.max_retries"),
                at(13, "upstreams.b.retry.backoff_base"),
            ]
        );
    }

    #[test]
    fn ratios_and_percents_are_bounded() {
        let src = doc(&[
            "[[routes]]",                                                               // 1
            "respond = {}",                                                             // 2
            "fault = { abort_percent = 100.5, delay_percent = -1, abort_status = 99 }", // 3
            "[upstreams.b]",                                                            // 4
            "endpoints = [\"b:80\"]",                                                   // 5
            "[upstreams.b.retry]",                                                      // 6
            "budget_ratio = 1.01",                                                      // 7
            "[upstreams.b.breaker]",                                                    // 8
            "failure_rate = -0.1",                                                      // 9
            "slow_call_rate = 2",                                                       // 10
            "[upstreams.b.outlier]",                                                    // 11
            "max_ejection_percent = 101",                                               // 12
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(3, "routes[0].fault.abort_percent"),
                at(3, "routes[0].fault.delay_percent"),
                at(3, "routes[0].fault.abort_status"),
                at(7, "upstreams.b.retry.budget_ratio"),
                at(9, "upstreams.b.breaker.failure_rate"),
                at(10, "upstreams.b.breaker.slow_call_rate"),
                at(12, "upstreams.b.outlier.max_ejection_percent"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "expected a percentage from 0 to 100 (got 100.5)"
        );
        assert_eq!(
            all[2].message,
            "expected an HTTP status code from 100 to 599 (got 99)"
        );
        assert_eq!(
            all[3].message,
            "expected a ratio from 0 to 1 such as 0.5 (got 1.01)"
        );
        assert_eq!(
            all[6].message,
            "expected a percentage from 0 to 100 (got 101)"
        );
        // The edges are valid, and integers are numbers too.
        ok("[[routes]]\nrespond = {}\nfault = { abort_percent = 100, delay_percent = 0.0 }");
        ok(
            "[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { budget_ratio = 0 }\nbreaker = { failure_rate = 1 }",
        );
    }

    #[test]
    fn statuses_are_between_100_and_599() {
        let src = doc(&[
            "[[routes]]",                    // 1
            "respond = { status = 600 }",    // 2
            "[upstreams.b]",                 // 3
            "endpoints = [\"b:80\"]",        // 4
            "[upstreams.b.retry]",           // 5
            "statuses = [502, 99, \"503\"]", // 6
            "[upstreams.b.breaker]",         // 7
            "failure_statuses = [",          // 8
            "  500,",                        // 9
            "  1000,",                       // 10
            "]",                             // 11
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].respond.status"),
                at(6, "upstreams.b.retry.statuses[1]"),
                at(6, "upstreams.b.retry.statuses[2]"),
                at(10, "upstreams.b.breaker.failure_statuses[1]"),
            ]
        );
        let c =
            ok("[[routes]]\nrespond = { status = 599 }\n[[routes]]\nrespond = { status = 100 }");
        let RouteAction::Respond(r) = &c.routes[0].action else {
            panic!()
        };
        assert_eq!(r.status.as_u16(), 599);
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        let src = doc(&[
            "[[listeners]]",                                     // 1
            "max_connections = 0",                               // 2
            "max_header_bytes = 0",                              // 3
            "max_headers = 0",                                   // 4
            "header_read_timeout = \"0s\"",                      // 5
            "[[routes]]",                                        // 6
            "respond = {}",                                      // 7
            "rate_limit = { rps = 0, burst = 0, max_keys = 0 }", // 8
            "[upstreams.b]",                                     // 9
            "dns = \"b.svc:80\"",                                // 10
            "dns_refresh = \"0ms\"",                             // 11
            "connect_timeout = \"0s\"",                          // 12
            "[upstreams.b.retry]",                               // 13
            "budget_window = \"0s\"",                            // 14
            "[upstreams.b.breaker]",                             // 15
            "window = \"0s\"",                                   // 16
            "min_calls = 0",                                     // 17
            "consecutive_failures = 0",                          // 18
            "half_open_probes = 0",                              // 19
            "[upstreams.b.shed]",                                // 20
            "max_in_flight = 0",                                 // 21
            "min_limit = 0",                                     // 22
            "[upstreams.b.health]",                              // 23
            "interval = \"0s\"",                                 // 24
            "timeout = \"0s\"",                                  // 25
            "healthy_threshold = 0",                             // 26
            "unhealthy_threshold = 0",                           // 27
            "[upstreams.b.outlier]",                             // 28
            "consecutive_failures = 0",                          // 29
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "listeners[0].max_connections"),
                at(3, "listeners[0].max_header_bytes"),
                at(4, "listeners[0].max_headers"),
                at(5, "listeners[0].header_read_timeout"),
                at(8, "routes[0].rate_limit.rps"),
                at(8, "routes[0].rate_limit.burst"),
                at(8, "routes[0].rate_limit.max_keys"),
                at(11, "upstreams.b.dns_refresh"),
                at(12, "upstreams.b.connect_timeout"),
                at(14, "upstreams.b.retry.budget_window"),
                at(16, "upstreams.b.breaker.window"),
                at(17, "upstreams.b.breaker.min_calls"),
                at(18, "upstreams.b.breaker.consecutive_failures"),
                at(19, "upstreams.b.breaker.half_open_probes"),
                at(21, "upstreams.b.shed.max_in_flight"),
                at(22, "upstreams.b.shed.min_limit"),
                at(24, "upstreams.b.health.interval"),
                at(25, "upstreams.b.health.timeout"),
                at(26, "upstreams.b.health.healthy_threshold"),
                at(27, "upstreams.b.health.unhealthy_threshold"),
                at(29, "upstreams.b.outlier.consecutive_failures"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(all[0].message, "expected an integer greater than 0 (got 0)");
        assert_eq!(
            all[4].message,
            "expected a number of requests per second greater than 0 (got 0)"
        );
        // Zero is meaningful here: no retries, no queue, no body limit, no per-try timeout.
        ok(doc(&[
            "[[listeners]]",
            "max_body_bytes = 0",
            "[upstreams.b]",
            "endpoints = [\"b:80\"]",
            "try_timeout = \"0s\"",
            "retry = { max_retries = 0, budget_min_per_sec = 0, max_body = 0 }",
            "shed = { queue = 0, queue_timeout = \"0s\" }",
            "outlier = { max_ejection_percent = 0, ramp = \"0s\" }",
        ])
        .as_str());
    }

    #[test]
    fn integers_are_range_checked_against_their_type() {
        let e = one_error(
            "[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { max_retries = 4294967296 }",
        );
        assert_eq!(e.path, "upstreams.b.retry.max_retries");
        assert_eq!(
            e.message,
            "expected an integer of at most 4294967295 (got 4294967296)"
        );
        let c = ok("[[listeners]]\nmax_connections = 0x10\nmax_headers = 1_000");
        assert_eq!(
            (c.listeners[0].max_connections, c.listeners[0].max_headers),
            (16, 1000)
        );
    }

    #[test]
    fn budget_window_is_one_to_sixty_seconds() {
        let e =
            one_error("[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { budget_window = \"61s\" }");
        assert_eq!(
            (e.line, e.path.as_str()),
            (3, "upstreams.b.retry.budget_window")
        );
        assert_eq!(
            e.message,
            "expected a duration from \"1s\" to \"60s\" (got \"61s\")"
        );
        ok("[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { budget_window = \"1m\" }");
    }

    #[test]
    fn addresses_must_parse() {
        let src = doc(&[
            "[admin]",                                                                    // 1
            "listen = \"127.0.0.1\"",                                                     // 2
            "[[listeners]]",                                                              // 3
            "listen = \"localhost:8080\"",                                                // 4
            "[upstreams.a]",                                                              // 5
            "endpoints = [\"10.0.0.1:80\", \"nohost\", \"b:0\", \"u@h:1\", \"h:99999\"]", // 6
            "[upstreams.b]",                                                              // 7
            "dns = \"b.svc\"",                                                            // 8
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "admin.listen"),
                at(4, "listeners[0].listen"),
                at(6, "upstreams.a.endpoints[1]"),
                at(6, "upstreams.a.endpoints[2]"),
                at(6, "upstreams.a.endpoints[3]"),
                at(6, "upstreams.a.endpoints[4]"),
                at(8, "upstreams.b.dns"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[1].message,
            "expected an ip:port address such as \"127.0.0.1:8080\" (got \"localhost:8080\")"
        );
        assert_eq!(
            all[2].message,
            "expected host:port such as \"10.0.0.7:8080\" or \"backend.svc:80\" (got \"nohost\")"
        );
        let c = ok(
            "[[listeners]]\nlisten = \"[::1]:0\"\n[upstreams.a]\nendpoints = [\"[::1]:80\", \"a.svc:8080\"]",
        );
        assert_eq!(c.listeners[0].listen, "[::1]:0".parse().unwrap());
        assert_eq!(c.upstreams[0].endpoints[1].port_u16(), Some(8080));
    }

    #[test]
    fn an_upstream_has_exactly_one_of_endpoints_and_dns() {
        let src = doc(&[
            "[upstreams.none]",      // 1
            "protocol = \"http2\"",  // 2
            "[upstreams.both]",      // 3
            "endpoints = [\"a:1\"]", // 4
            "dns = \"a:1\"",         // 5
            "[upstreams.empty]",     // 6
            "endpoints = []",        // 7
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(1, "upstreams.none"),
                at(5, "upstreams.both.dns"),
                at(7, "upstreams.empty.endpoints")
            ]
        );
        let all = error_list(&src);
        assert!(
            all[0].message.contains("(got neither)"),
            "{}",
            all[0].message
        );
        assert_eq!(all[1].message, "set either `endpoints` or `dns`, not both");
        assert!(
            all[2].message.contains("at least one endpoint"),
            "{}",
            all[2].message
        );
    }

    #[test]
    fn dns_servers_are_ip_port_addresses() {
        let src = doc(&[
            "[upstreams.a]",                                                        // 1
            "dns = \"a.svc:80\"",                                                   // 2
            "dns_servers = [\"10.0.0.1:53\", \"ns.local:53\", \"10.0.0.2:0\", 53]", // 3
            "[upstreams.b]",                                                        // 4
            "dns = \"b.svc:80\"",                                                   // 5
            "dns_servers = []",                                                     // 6
            "[upstreams.c]",                                                        // 7
            "dns = \"c.svc:80\"",                                                   // 8
            "dns_servers = \"10.0.0.1:53\"",                                        // 9
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(3, "upstreams.a.dns_servers[1]"),
                at(3, "upstreams.a.dns_servers[2]"),
                at(3, "upstreams.a.dns_servers[3]"),
                at(6, "upstreams.b.dns_servers"),
                at(9, "upstreams.c.dns_servers"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "expected an ip:port address with a port from 1 to 65535 such as \"10.96.0.10:53\" \
             (got \"ns.local:53\")"
        );
        assert!(
            all[3].message.contains("at least one DNS server"),
            "{}",
            all[3].message
        );
        assert_eq!(all[4].message, "expected an array (got \"10.0.0.1:53\")");
    }

    #[test]
    fn upstream_and_route_names_are_label_safe() {
        let src = doc(&[
            "[[routes]]",              // 1
            "name = \"my route\"",     // 2
            "respond = {}",            // 3
            "[[routes]]",              // 4
            "name = \"\"",             // 5
            "respond = {}",            // 6
            "[upstreams.\"a b\"]",     // 7
            "endpoints = [\"a:1\"]",   // 8
            "[upstreams.\"\"]",        // 9
            "endpoints = [\"a:1\"]",   // 10
            "[upstreams.ok_name-1.x]", // 11
            "endpoints = [\"a:1\"]",   // 12
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].name"),
                at(5, "routes[1].name"),
                at(7, "upstreams.\"a b\""),
                at(9, "upstreams.\"\""),
                at(11, "upstreams.ok_name-1"),
                at(11, "upstreams.ok_name-1.x"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[2].message,
            "expected a name of letters, digits, '_', '.' and '-' (got \"a b\")"
        );
        // `[upstreams.ok_name-1.x]` is the key `x` inside upstream `ok_name-1`.
        let x = all
            .iter()
            .find(|e| e.path == "upstreams.ok_name-1.x")
            .unwrap();
        assert!(x.message.starts_with("unknown key"), "{}", x.message);
    }

    #[test]
    fn a_route_has_exactly_one_action() {
        let src = doc(&[
            "[[routes]]",                     // 1
            "name = \"none\"",                // 2
            "[[routes]]",                     // 3
            "upstream = \"b\"",               // 4
            "respond = {}",                   // 5
            "[[routes]]",                     // 6
            "upstream = \"b\"",               // 7
            "split = [{ upstream = \"b\" }]", // 8
            "respond = { status = 204 }",     // 9
            "[upstreams.b]",                  // 10
            "endpoints = [\"b:1\"]",          // 11
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(1, "routes[0]"),
                at(5, "routes[1].respond"),
                at(8, "routes[2].split"),
                at(9, "routes[2].respond"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "expected one of `upstream`, `split` or `respond` (got none)"
        );
        assert_eq!(
            all[1].message,
            "only one of `upstream`, `split` or `respond` may be set (`upstream` is set too)"
        );
    }

    #[test]
    fn a_split_needs_targets_and_weight() {
        let src = doc(&[
            "[[routes]]",                                                                   // 1
            "split = []",                                                                   // 2
            "[[routes]]",                                                                   // 3
            "split = [{ upstream = \"a\", weight = 0 }, { upstream = \"b\", weight = 0 }]", // 4
            "[[routes]]",                                                                   // 5
            "split = [{ weight = 5 }, { upstream = \"a\", weight = -1, x = 1 }]",           // 6
            "[upstreams.a]",                                                                // 7
            "endpoints = [\"a:1\"]",                                                        // 8
            "[upstreams.b]",                                                                // 9
            "endpoints = [\"b:1\"]",                                                        // 10
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].split"),
                at(4, "routes[1].split"),
                at(6, "routes[2].split[0]"),
                at(6, "routes[2].split[1].weight"),
                at(6, "routes[2].split[1].x"),
            ]
        );
        assert_eq!(
            error_list(&src)[1].message,
            "expected at least one weight greater than 0 (got all 0)"
        );
        let c = ok(doc(&[
            "[[routes]]",
            "split = [{ upstream = \"a\", weight = 0 }, { upstream = \"b\" }]",
            "[upstreams.a]",
            "endpoints = [\"a:1\"]",
            "[upstreams.b]",
            "endpoints = [\"b:1\"]",
        ])
        .as_str());
        let expected = vec![
            SplitTarget {
                upstream: "a".into(),
                weight: 0,
            },
            SplitTarget {
                upstream: "b".into(),
                weight: 1,
            },
        ];
        assert_eq!(c.routes[0].action, RouteAction::Split(expected));
    }

    #[test]
    fn headers_and_methods_must_be_valid() {
        let src = doc(&[
            "[[routes]]",                                                  // 1
            "match = { methods = [\"GET\", \"get\", \"BAD METHOD\", 5] }", // 2
            "[routes.respond]",                                            // 3
            "headers = { \"x-ok\" = \"1\", \"bad name\" = \"v\", \"x-ctl\" = \"a\\nb\", \"x-num\" = 1 }", // 4
            "[[routes]]",             // 5
            "respond = {}",           // 6
            "[routes.match.headers]", // 7
            "\"x:y\" = \"1\"",        // 8
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].match.methods[1]"),
                at(2, "routes[0].match.methods[2]"),
                at(2, "routes[0].match.methods[3]"),
                at(4, "routes[0].respond.headers.\"bad name\""),
                at(4, "routes[0].respond.headers.x-ctl"),
                at(4, "routes[0].respond.headers.x-num"),
                at(8, "routes[1].match.headers.\"x:y\""),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "expected an uppercase HTTP method such as \"GET\" (got \"get\")"
        );
        assert!(
            all[4].message.starts_with("expected a header value"),
            "{}",
            all[4].message
        );
        let c = ok(doc(&[
            "[[routes]]",
            "respond = {}",
            "match = { host = \"API.Example.com\", methods = [\"GET\", \"PURGE\"], headers = { \"X-B\" = \"2\", \"x-a\" = \"1\" } }",
        ])
        .as_str());
        let m = &c.routes[0].matcher;
        assert_eq!(m.host.as_deref(), Some("api.example.com"));
        assert_eq!(
            m.methods,
            vec![Method::GET, Method::from_bytes(b"PURGE").unwrap()]
        );
        let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-b", "x-a"], "file order, lowercase");
    }

    #[test]
    fn tls_keys_come_in_pairs() {
        let src = doc(&[
            "[[listeners]]",                           // 1
            "tls = { cert = \"s.pem\" }",              // 2
            "[[listeners]]",                           // 3
            "listen = \"127.0.0.1:0\"",                // 4
            "[listeners.tls]",                         // 5
            "client_ca = \"ca.pem\"",                  // 6
            "[upstreams.a]",                           // 7
            "endpoints = [\"a:1\"]",                   // 8
            "tls = { sni = \"a\", cert = \"c.pem\" }", // 9
            "[upstreams.b]",                           // 10
            "endpoints = [\"b:1\"]",                   // 11
            "[upstreams.b.tls]",                       // 12
            "key = \"k.pem\"",                         // 13
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "listeners[0].tls"),
                at(5, "listeners[1].tls"),
                at(5, "listeners[1].tls"),
                at(9, "upstreams.a.tls.cert"),
                at(13, "upstreams.b.tls.key"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(all[0].message, "missing key `key` (the PEM private key)");
        assert_eq!(
            all[3].message,
            "a client certificate needs `key` (the PEM private key) too"
        );
        let c = ok(
            "[upstreams.a]\nendpoints = [\"a:1\"]\ntls = {}\n[[listeners]]\ntls = { cert = \"c\", key = \"k\" }",
        );
        assert_eq!(c.upstreams[0].tls, Some(UpstreamTls::default()));
        let tls = c.listeners[0].tls.clone().unwrap();
        assert_eq!(
            (tls.cert, tls.key, tls.client_ca),
            ("c".into(), "k".into(), None)
        );
    }

    #[test]
    fn hash_on_and_rate_limit_keys_are_checked() {
        let src = doc(&[
            "[[routes]]",                                  // 1
            "respond = {}",                                // 2
            "rate_limit = { rps = 1, key = \"header:\" }", // 3
            "[[routes]]",                                  // 4
            "respond = {}",                                // 5
            "rate_limit = { key = \"client_ip\" }",        // 6
            "[upstreams.a]",                               // 7
            "endpoints = [\"a:1\"]",                       // 8
            "balance = \"hash\"",                          // 9
            "hash_on = \"cookie:a b\"",                    // 10
            "[upstreams.b]",                               // 11
            "endpoints = [\"b:1\"]",                       // 12
            "hash_on = \"ip\"",                            // 13
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(3, "routes[0].rate_limit.key"),
                at(6, "routes[1].rate_limit"),
                at(10, "upstreams.a.hash_on"),
                at(13, "upstreams.b.hash_on"),
            ]
        );
        assert_eq!(
            error_list(&src)[2].message,
            "expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\" (got \"cookie:a b\")"
        );
        let c = ok(doc(&[
            "[upstreams.a]",
            "endpoints = [\"a:1\"]",
            "hash_on = \"header:X-User\"",
            "[upstreams.b]",
            "endpoints = [\"b:1\"]",
            "hash_on = \"cookie:session\"",
        ])
        .as_str());
        assert_eq!(
            c.upstreams[0].hash_on,
            HashOn::Header(HeaderName::from_static("x-user"))
        );
        assert_eq!(c.upstreams[1].hash_on, HashOn::Cookie("session".into()));
    }

    #[test]
    fn paths_and_hosts_are_checked() {
        let src = doc(&[
            "[[routes]]",                                     // 1
            "respond = {}",                                   // 2
            "match = { path_prefix = \"api\", host = \"\" }", // 3
            "[upstreams.a]",                                  // 4
            "endpoints = [\"a:1\"]",                          // 5
            "health = { path = \"healthz\" }",                // 6
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(3, "routes[0].match.path_prefix"),
                at(3, "routes[0].match.host"),
                at(6, "upstreams.a.health.path")
            ]
        );
    }

    #[test]
    fn an_explicitly_empty_listener_list_is_an_error() {
        let e = one_error("listeners = []");
        assert_eq!((e.line, e.path.as_str()), (1, "listeners"));
    }

    #[test]
    fn upstreams_keep_file_order() {
        let c =
            ok("[upstreams.zeta]\nendpoints = [\"z:1\"]\n[upstreams.alpha]\nendpoints = [\"a:1\"]");
        let names: Vec<&str> = c.upstreams.iter().map(|u| &*u.name).collect();
        assert_eq!(names, ["zeta", "alpha"]);
    }

    #[test]
    fn quoting_escapes_what_toml_needs() {
        assert_eq!(quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        assert_eq!(join("upstreams", "a.b-c_1"), "upstreams.a.b-c_1");
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("h", "a b"), "h.\"a b\"");
    }
}
