//! The key tables: one per settings type, one row per key (its field, value reader, renderer
//! and one-line doc). They drive reading with every error at once, rendering (`/config`) and
//! `config/full.toml`; a settings type's `Default` gives what a missing key takes.
//!
//! Position: file → validated `Config`, walked by `read` and `render`; no I/O. Keys: every
//! table of DESIGN §3. Hand-written: the arrays of tables and the upstream map (in `read`),
//! and the route's choice of `upstream`, `split` or `respond` (rows with their own setters).
//!
//! A new key is one field (with its default) and one row here; `full.toml` is regenerated
//! from the rows (see the test `full_toml_is_what_the_tables_render`).

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::config::read::{Reader, Val, join};
use crate::config::render::{
    Toml, array, authority, delay, duration, float, grpc_codes, hash_on, headers, inline, key,
    methods, mode, path, plain, quote, quoted, rate_limit_key, status, statuses,
};
use crate::config::{
    AdminConfig, Balance, BreakerSettings, Config, DrainConfig, FaultConfig, GrpcSettings,
    HealthSettings, HedgeAfter, HedgeSettings, ListenerConfig, ListenerTls, OutlierSettings,
    Priority, Protocol, RateLimitConfig, RespondConfig, RetrySettings, RouteAction, RouteConfig,
    RouteMatch, ShedSettings, SplitTarget, UpstreamConfig, UpstreamTls,
};

/// A settings type read from and written to one TOML table.
pub(crate) trait Keys: Sized + 'static {
    /// The rows, in the order they are read, listed in errors, and written.
    const ROWS: &'static [Row<Self>];

    /// Checks across the keys of one table, once its rows are read. `has` says which keys the
    /// file wrote; the table is at `span` and key path `path`.
    fn check(_: &mut Reader<'_>, _has: &dyn Fn(&str) -> bool, _span: &Range<usize>, _path: &str) {}
}

/// One key of a table.
pub(crate) struct Row<S: 'static> {
    /// The TOML key.
    pub(crate) key: &'static str,
    /// What `full.toml` says of the key; each `\n` starts another comment line.
    pub(crate) doc: &'static str,
    /// For a key without a default: what it holds (`missing key `cert` (…)`). A table missing
    /// it, or with an invalid value for it, reads as nothing.
    pub(crate) required: Option<&'static str>,
    /// Converts the key's value onto its field; false when it cannot (the error is recorded).
    pub(crate) read: Read<S>,
    /// How the key is written back.
    pub(crate) write: Write<S>,
}

/// A row's reader: `(reader, value, key path, settings)`.
pub(crate) type Read<S> = fn(&mut Reader<'_>, &Val<'_>, &str, &mut S) -> bool;

/// How a row is written.
pub(crate) enum Write<S: 'static> {
    /// `key = value`, or nothing when `value` gives `None`; then `full.toml` shows `example`
    /// commented out.
    Value {
        /// The field, as TOML.
        value: fn(&S) -> Option<String>,
        /// An example value for `full.toml` when `value` gives `None`.
        example: fn() -> Option<String>,
    },
    /// Sub-tables, written after the values of their table: `(settings, out, path, doc)`.
    Table(fn(&S, &mut Toml, &str, &str)),
}

impl<S> Row<S> {
    /// A key read by `read` and written by `value` (see [`Write::Value`]).
    const fn value(
        key: &'static str,
        doc: &'static str,
        read: Read<S>,
        value: fn(&S) -> Option<String>,
        example: fn() -> Option<String>,
    ) -> Self {
        let write = Write::Value { value, example };
        Row {
            key,
            doc,
            required: None,
            read,
            write,
        }
    }

    /// A key holding one sub-table or more, written by `write` (see [`Write::Table`]).
    const fn tables(
        key: &'static str,
        doc: &'static str,
        read: Read<S>,
        write: fn(&S, &mut Toml, &str, &str),
    ) -> Self {
        let write = Write::Table(write);
        Row {
            key,
            doc,
            required: None,
            read,
            write,
        }
    }
}

/// `row` for a key without a default: `what` names it in the "missing key" error.
const fn required<S>(what: &'static str, row: Row<S>) -> Row<S> {
    Row {
        required: Some(what),
        ..row
    }
}

/// Stores a value that was read; whether there was one.
fn set<T>(slot: &mut T, value: Option<T>) -> bool {
    value.map(|v| *slot = v).is_some()
}

/// A row for `field`, converted by `read` and written by `write`.
macro_rules! key {
    ($key:literal, $field:ident, $read:expr, $write:expr, $doc:literal) => {
        Row::value(
            $key,
            $doc,
            |r, v, p, s| set(&mut s.$field, $read(r, v, p)),
            |s| Some($write(&s.$field)),
            || None,
        )
    };
}

/// A row for an `Option` field: written when set; `full.toml` shows `example` when not.
macro_rules! opt {
    ($key:literal, $field:ident, $read:expr, $write:expr, $example:expr, $doc:literal) => {
        Row::value(
            $key,
            $doc,
            |r, v, p, s| set(&mut s.$field, $read(r, v, p).map(Some)),
            |s| s.$field.as_ref().map(|x| $write(x)),
            || Some($write(&$example)),
        )
    };
}

/// A row for a sub-table, read onto its `Default`; with `?`, an `Option` read onto `start`,
/// written when set, and shown in `full.toml` as `example` when not.
macro_rules! table {
    ($key:literal, $field:ident, $doc:literal) => {
        Row::tables(
            $key,
            $doc,
            |r, v, p, s| set(&mut s.$field, r.table(v, p, Default::default())),
            |s, out, path, doc| out.table(path, doc, Some(&s.$field), Default::default),
        )
    };
    ($key:literal, $field:ident ?, $start:expr, $example:expr, $doc:literal) => {
        Row::tables(
            $key,
            $doc,
            |r, v, p, s| set(&mut s.$field, r.table(v, p, $start).map(Some)),
            |s, out, path, doc| out.table(path, doc, s.$field.as_ref(), || $example),
        )
    };
}

// === the root and the listeners ===

impl Keys for Config {
    const ROWS: &'static [Row<Self>] = &[
        table!("admin", admin, "the side port"),
        Row::tables(
            "listeners",
            "without any [[listeners]]: this one",
            |r, v, p, s| set(&mut s.listeners, r.listeners(v, p)),
            |c, out, path, doc| {
                for l in &c.listeners {
                    out.section(&format!("[[{path}]]"), path, doc, l);
                }
            },
        ),
        table!("drain", drain, "graceful shutdown, on SIGTERM"),
        Row::tables(
            "routes",
            "the first route that matches wins, in file order",
            |r, v, p, s| set(&mut s.routes, r.routes(v, p)),
            |c, out, path, doc| {
                for route in &c.routes {
                    out.section(&format!("[[{path}]]"), path, doc, route);
                }
            },
        ),
        Row::tables(
            "upstreams",
            "",
            |r, v, p, s| set(&mut s.upstreams, r.upstreams(v, p)),
            |c, out, path, doc| {
                for u in &c.upstreams {
                    let p = format!("{path}.{}", key(&u.name));
                    out.section(&format!("[{p}]"), &p, doc, u);
                }
            },
        ),
        // A value, written before the tables above whatever its place here.
        key!(
            "workers",
            workers,
            Reader::workers,
            plain,
            "worker runtimes, each on its own thread with its own socket on every\n\
             listener; 0 = one per core weir may run on; a change needs a restart"
        ),
    ];
}

impl Keys for AdminConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("listen", listen, Reader::socket_addr, quoted,
             "admin port: /metrics /healthz /readyz /status /config"),
    ];
}

impl Keys for ListenerConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("name", name, Reader::name, quote,
             "default: \"main\" for the first listener, \"listener-N\" after it"),
        key!("listen", listen, Reader::socket_addr, quoted,
             "ip:port; port 0 picks a free port; a reload rebinds a changed one"),
        key!("header_read_timeout", header_read_timeout, Reader::duration_positive, duration,
             "slowloris guard: the request head must arrive within this"),
        key!("idle_timeout", idle_timeout, Reader::duration, duration,
             "downstream keep-alive; also the longest wait for more request body"),
        key!("send_timeout", send_timeout, Reader::duration, duration,
             "a response write that makes no progress this long closes the connection; 0 = none"),
        key!("max_connections", max_connections, Reader::usize_positive, plain,
             "connections open at once"),
        key!("max_header_bytes", max_header_bytes, Reader::usize_positive, plain,
             "request head size; beyond: 431"),
        key!("max_headers", max_headers, Reader::usize_positive, plain,
             "request header count; beyond: 431"),
        key!("max_body_bytes", max_body_bytes, Reader::u64, plain,
             "request body size; beyond: 413; 0 = unlimited"),
        table!("tls", tls?,
               ListenerTls { cert: PathBuf::new(), key: PathBuf::new(), client_ca: None },
               ListenerTls {
                   cert: "server.pem".into(),
                   key: "server.key".into(),
                   client_ca: Some("ca.pem".into()),
               },
               "absent: plain TCP. TLS 1.3 and 1.2, Mozilla \"intermediate\"\n\
                suites, ALPN h2 then http/1.1, X-Forwarded-Proto: https"),
    ];
}

impl Keys for ListenerTls {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        required("the PEM certificate chain", key!("cert", cert, Reader::file_path, path,
             "PEM certificate chain; reloaded when the file changes")),
        required("the PEM private key", key!("key", key, Reader::file_path, path,
             "PEM private key; reloaded with the certificate")),
        opt!("client_ca", client_ca, Reader::file_path, path, PathBuf::from("ca.pem"),
             "optional: clients must present a certificate it signed (mTLS)"),
    ];
}

impl Keys for DrainConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("delay", delay, Reader::duration, duration,
             "after SIGTERM: readiness false, keep serving this long"),
        key!("timeout", timeout, Reader::duration, duration,
             "then stop accepting; in-flight requests get this long"),
    ];
}

// === routes ===

impl Keys for RouteConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("name", name, Reader::name, quote,
             "default: \"route-N\"; letters, digits, '_', '.', '-'"),
        table!("match", matcher, "every condition given must hold"),
        // The action. When the file sets more than one (an error), the first one read stays.
        Row::value("upstream", "exactly one of: upstream, split, respond",
            |r, v, p, s| set(&mut s.action, r.name(v, p).map(RouteAction::Upstream)),
            |s| match &s.action {
                RouteAction::Upstream(name) => Some(quote(name)),
                _ => None,
            },
            || None),
        Row::value("split", "traffic split by weight",
            |r, v, p, s| {
                let split = r.split(v, p).map(RouteAction::Split);
                let read = split.is_some();
                if !matches!(s.action, RouteAction::Upstream(_)) {
                    set(&mut s.action, split);
                }
                read
            },
            |s| match &s.action {
                RouteAction::Split(targets) => Some(array(targets, inline)),
                _ => None,
            },
            || {
                let target = |to: &str, weight| SplitTarget { upstream: Arc::from(to), weight };
                Some(array(&[target("v1", 90), target("v2", 10)], inline))
            }),
        Row::value("respond",
            "a direct response, no upstream; body_bytes = 4096 instead of body:\n\
             a generated body of that many bytes (at most 64 MiB)",
            |r, v, p, s| {
                let respond = r.table(v, p, RespondConfig::default()).map(RouteAction::Respond);
                let read = respond.is_some();
                if matches!(s.action, RouteAction::Respond(_)) {
                    set(&mut s.action, respond);
                }
                read
            },
            |s| match &s.action {
                RouteAction::Respond(respond) => Some(inline(respond)),
                _ => None,
            },
            || {
                let text = HeaderValue::from_static("text/plain");
                let headers = vec![(HeaderName::from_static("content-type"), text)];
                let body = "ok".into();
                let status = StatusCode::OK;
                Some(inline(&RespondConfig { status, body, body_bytes: None, headers }))
            }),
        key!("timeout", timeout, Reader::duration_positive, duration,
             "total deadline: every try and every backoff"),
        key!("priority", priority, Reader::priority, |p: &Priority| quote(p.as_str()),
             "critical | default | sheddable; x-weir-priority may lower it"),
        table!("rate_limit", rate_limit?, RateLimitConfig::new(1.0), RateLimitConfig::new(100.0),
               "absent: no limit; over the limit weir answers 429"),
        table!("fault", fault, "injected failures, for rehearsal and load tests"),
    ];

    fn check(r: &mut Reader<'_>, has: &dyn Fn(&str) -> bool, span: &Range<usize>, path: &str) {
        let present: Vec<&str> = ACTIONS.iter().copied().filter(|k| has(k)).collect();
        match present.as_slice() {
            [] => r.c.at_span(
                span,
                path,
                "expected one of `upstream`, `split` or `respond` (got none)".into(),
            ),
            [_] => {}
            [first, rest @ ..] => {
                for key in rest {
                    r.c.at_path(
                        &join(path, key),
                        format!(
                            "only one of `upstream`, `split` or `respond` may be set (`{first}` \
                         is set too)"
                        ),
                    );
                }
            }
        }
    }
}

impl Keys for RouteMatch {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        opt!("path_prefix", path_prefix, Reader::path_prefix, quote, "/api",
             "the request path starts with this"),
        opt!("host", host, Reader::host, quote, "api.example.com",
             "the request host, ignoring case"),
        key!("methods", methods, Reader::methods, methods,
             "such as [\"GET\", \"POST\"]; empty: any method"),
        key!("headers", headers, Reader::headers, headers,
             "such as { \"x-canary\" = \"1\" }: each present with this value"),
    ];
}

impl Keys for SplitTarget {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        required("an upstream name",
                 key!("upstream", upstream, Reader::name, quote, "the upstream's name")),
        key!("weight", weight, Reader::u32, plain, "relative weight; 0 sends nothing"),
    ];
}

impl Keys for RespondConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("status", status, Reader::status, status, "status code"),
        // Written unless the body is generated: the two exclude each other.
        Row::value("body", "the body, as a string",
            |r, v, p, s| set(&mut s.body, r.body(v, p)),
            |s| s.body_bytes.is_none().then(|| quote(&String::from_utf8_lossy(&s.body))),
            || None),
        opt!("body_bytes", body_bytes, Reader::body_bytes, plain, 4096,
             "a generated body of this many bytes instead of `body`"),
        key!("headers", headers, Reader::headers, headers, "response headers, in order"),
    ];

    fn check(r: &mut Reader<'_>, has: &dyn Fn(&str) -> bool, _: &Range<usize>, path: &str) {
        if has("body") && has("body_bytes") {
            r.c.at_path(
                &join(path, "body_bytes"),
                "set either `body` (the text) or `body_bytes` (a generated body of that size), \
                 not both"
                    .into(),
            );
        }
    }
}

impl Keys for RateLimitConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        // Read first: the burst defaults to the rate, and a `burst` key read after it wins.
        required("requests per second", Row::value("rps", "required: tokens per second",
            |r, v, p, s| {
                let rps = r.rps(v, p);
                if let Some(rps) = rps {
                    s.burst = RateLimitConfig::new(rps).burst;
                }
                set(&mut s.rps, rps)
            },
            |s| Some(float(&s.rps)),
            || None)),
        key!("burst", burst, Reader::u32_positive, plain, "default max(1, ceil(rps))"),
        key!("key", key, Reader::rate_limit_key, rate_limit_key,
             "none (one bucket) | client_ip | \"header:NAME\""),
        key!("max_keys", max_keys, Reader::usize_positive, plain, "distinct keys tracked at once"),
    ];
}

impl Keys for FaultConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("abort_percent", abort_percent, Reader::percent, float,
             "share of requests answered with abort_status (0..100)"),
        key!("abort_status", abort_status, Reader::status, status, "status of an injected abort"),
        key!("delay_percent", delay_percent, Reader::percent, float,
             "share of requests delayed by a draw of delay (0..100)"),
        key!("delay", delay, Reader::delay, delay,
             "\"5ms\" | \"uniform(5ms, 50ms)\" | \"lognormal(5ms, 200ms)\" (p50, p99)\n\
              | \"table(90%: 5ms, 9%: 50ms, 1%: 500ms)\"; a lognormal draw stops at 60s"),
        key!("reset_percent", reset_percent, Reader::percent, float,
             "share of requests whose connection is reset before the response head"),
        key!("truncate_percent", truncate_percent, Reader::percent, float,
             "share of responses whose connection closes after half of the body"),
        key!("slow_body_percent", slow_body_percent, Reader::percent, float,
             "share of responses whose body is sent at slow_body_rate"),
        key!("slow_body_rate", slow_body_rate, Reader::bytes_per_sec, plain,
             "bytes per second of a slow body"),
        key!("allow_header", allow_header, Reader::bool, plain,
             "x-weir-fault-abort: <status> / x-weir-fault-delay: <delay, as delay>"),
    ];
}

// === upstreams ===

impl Keys for UpstreamConfig {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        Row::value("endpoints", "host:port list; exactly one of endpoints, dns",
            |r, v, p, s| set(&mut s.endpoints, r.endpoints(v, p)),
            |s| s.dns.is_none().then(|| array(&s.endpoints, authority)),
            || None),
        opt!("dns", dns, Reader::authority, authority,
             Authority::from_static("backend.svc.cluster.local:8080"),
             "resolved again every dns_refresh"),
        key!("dns_refresh", dns_refresh, Reader::duration_positive, duration,
             "with dns: how often it is resolved again"),
        Row::value("dns_servers", "with dns: ip:port servers to ask; absent: /etc/resolv.conf",
            |r, v, p, s| set(&mut s.dns_servers, r.dns_servers(v, p)),
            |s| (!s.dns_servers.is_empty()).then(|| array(&s.dns_servers, quoted)),
            || Some(array(&["10.96.0.10:53"], quoted))),
        key!("protocol", protocol, Reader::protocol, |p: &Protocol| quote(p.as_str()),
             "http1 | http2 (prior knowledge, or ALPN with tls)"),
        key!("connect_timeout", connect_timeout, Reader::duration_positive, duration,
             "TCP (and TLS) connect"),
        key!("try_timeout", try_timeout, Reader::duration, duration,
             "per try; 0 = bounded by the route deadline only"),
        key!("read_timeout", read_timeout, Reader::duration, duration,
             "longest wait for the next bytes of the response (head or body); then abort; \
              0 = none"),
        key!("pool_idle_timeout", pool_idle_timeout, Reader::duration, duration,
             "idle pooled connections are closed after this"),
        key!("balance", balance, Reader::balance, |b: &Balance| quote(b.as_str()),
             "p2c (peak EWMA) | round_robin | least_request | hash"),
        key!("hash_on", hash_on, Reader::hash_on, hash_on,
             "with balance = \"hash\": client_ip | \"header:NAME\" | \"cookie:NAME\""),
        table!("tls", tls?, UpstreamTls::default(),
               UpstreamTls {
                   sni: Some("backend.internal".into()),
                   ca: Some("ca.pem".into()),
                   cert: Some("client.pem".into()),
                   key: Some("client.key".into()),
               },
               "absent: plain TCP; present: every connection is TLS 1.2/1.3,\n\
                files read when the upstream is built; bad handshake: 502 upstream-tls"),
        table!("retry", retry, "retries of failed tries, within a budget"),
        table!("breaker", breaker, "the circuit breaker"),
        table!("shed", shed, "load shedding: a slot now, a short wait, or 503 overloaded"),
        table!("health", health?, HealthSettings::default(), HealthSettings::default(),
               "active checks; leave the table out for none"),
        table!("outlier", outlier, "passive ejection of failing endpoints"),
        table!("grpc", grpc, "how calls with content-type application/grpc* are judged"),
        table!("hedge", hedge?, HedgeSettings::default(), HedgeSettings::default(),
               "hedged requests; leave the table out for none"),
    ];

    fn check(r: &mut Reader<'_>, has: &dyn Fn(&str) -> bool, span: &Range<usize>, path: &str) {
        match (has("endpoints"), has("dns")) {
            (false, false) => r.c.at_span(
                span,
                path,
                "expected `endpoints = [\"host:port\", …]` or `dns = \"host:port\"` (got neither)"
                    .into(),
            ),
            (true, true) => r.c.at_path(
                &join(path, "dns"),
                "set either `endpoints` or `dns`, not both".into(),
            ),
            _ => {}
        }
    }
}

impl Keys for UpstreamTls {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        opt!("sni", sni, Reader::host, quote, "backend.internal",
             "name sent and verified; default: the endpoint host (IP: no SNI)"),
        opt!("ca", ca, Reader::file_path, path, PathBuf::from("ca.pem"),
             "trust only these PEM CAs; default: the built-in web roots"),
        opt!("cert", cert, Reader::file_path, path, PathBuf::from("client.pem"),
             "client certificate (mTLS); needs key"),
        opt!("key", key, Reader::file_path, path, PathBuf::from("client.key"),
             "client private key; needs cert"),
    ];

    fn check(r: &mut Reader<'_>, has: &dyn Fn(&str) -> bool, _: &Range<usize>, path: &str) {
        match (has("cert"), has("key")) {
            (true, false) => r.c.at_path(
                &join(path, "cert"),
                "a client certificate needs `key` (the PEM private key) too".into(),
            ),
            (false, true) => r.c.at_path(
                &join(path, "key"),
                "a client key needs `cert` (the PEM certificate chain) too".into(),
            ),
            _ => {}
        }
    }
}

impl Keys for RetrySettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("max_retries", max_retries, Reader::u32, plain,
             "retries after the first try; 0 = none"),
        key!("statuses", statuses, Reader::statuses, statuses,
             "response statuses that are retried"),
        key!("idempotency_key", idempotency_key, Reader::bool, plain,
             "retry any method that carries Idempotency-Key"),
        key!("max_body", max_body, Reader::u64, plain,
             "bytes buffered for replay; larger bodies are never retried"),
        key!("backoff_base", backoff_base, Reader::duration, duration,
             "full jitter: sleep rand(0, min(cap, base * 2^n))"),
        key!("backoff_cap", backoff_cap, Reader::duration, duration,
             "at least backoff_base; an upstream Retry-After beyond it: no retry"),
        key!("budget_ratio", budget_ratio, Reader::ratio, float,
             "retries <= ratio x requests over the window (0..1)"),
        key!("budget_min_per_sec", budget_min_per_sec, Reader::u32, plain,
             "plus this many retries per second whatever the ratio"),
        key!("budget_window", budget_window, Reader::budget_window, duration, "1s to 60s"),
    ];
}

impl Keys for BreakerSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("mode", mode, Reader::mode, mode, "enforce | dry_run | off"),
        key!("window", window, Reader::duration_positive, duration, "sliding window for the rates"),
        key!("min_calls", min_calls, Reader::u32_positive, plain,
             "calls in the window before the rates count"),
        key!("failure_rate", failure_rate, Reader::ratio, float,
             "opens at this failure rate (0..1)"),
        key!("slow_call_duration", slow_call_duration, Reader::duration, duration,
             "slower calls count as slow; 0 = slow calls are not counted"),
        key!("slow_call_rate", slow_call_rate, Reader::ratio, float,
             "opens at this slow-call rate (0..1)"),
        key!("consecutive_failures", consecutive_failures, Reader::u32_positive, plain,
             "or after this many failures in a row"),
        key!("open_for", open_for, Reader::duration, duration,
             "open time, doubling on each repeated trip"),
        key!("open_for_max", open_for_max, Reader::duration, duration, "cap of the open time"),
        key!("half_open_probes", half_open_probes, Reader::u32_positive, plain,
             "probe calls when half-open: all succeed = closed"),
        key!("failure_statuses", failure_statuses, Reader::statuses, statuses,
             "statuses that count as failures"),
    ];
}

impl Keys for ShedSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("mode", mode, Reader::mode, mode, "enforce | dry_run | off"),
        key!("max_in_flight", max_in_flight, Reader::u32_positive, plain,
             "limit for default requests (critical +10 %, sheddable -10 %)"),
        key!("queue", queue, Reader::u32, plain, "requests that may wait for a slot; 0 = no queue"),
        key!("queue_timeout", queue_timeout, Reader::duration, duration,
             "longest wait in the queue (5ms, newest first, once it has not drained for 100ms)"),
        key!("adaptive", adaptive, Reader::bool, plain,
             "gradient limit between min_limit and max_in_flight"),
        key!("min_limit", min_limit, Reader::u32_positive, plain, "floor of the adaptive limit"),
    ];
}

impl Keys for HealthSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("path", path, Reader::path_prefix, quote, "HTTP GET probe path"),
        key!("interval", interval, Reader::duration_positive, duration,
             "between probes of one endpoint (each wait +-10 %)"),
        key!("timeout", timeout, Reader::duration_positive, duration, "of one probe"),
        key!("healthy_threshold", healthy_threshold, Reader::u32_positive, plain,
             "2xx answers in a row that bring an endpoint back"),
        key!("unhealthy_threshold", unhealthy_threshold, Reader::u32_positive, plain,
             "failures in a row that make it unhealthy"),
        key!("grpc", grpc, Reader::bool, plain,
             "true: grpc.health.v1.Health/Check (HTTP/2) instead of GET path;\n\
              passes when the answer is SERVING"),
        key!("grpc_service", grpc_service, Reader::string, quote,
             "the service the gRPC check asks about (\"\" = the server as a whole)"),
    ];
}

impl Keys for OutlierSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("consecutive_failures", consecutive_failures, Reader::u32_positive, plain,
             "gateway errors in a row that eject an endpoint"),
        key!("base_ejection", base_ejection, Reader::duration_positive, duration,
             "ejection time x times ejected (at most 10 x)"),
        key!("max_ejection_percent", max_ejection_percent, Reader::percent_u32, plain,
             "never eject more than this share of endpoints (0..100; at least 1)"),
        key!("mode", mode, Reader::mode, mode, "enforce | dry_run | off"),
        key!("ramp", ramp, Reader::duration, duration,
             "share grows from 10 % to full over this long after an ejection,\n\
              failed checks, or joining by DNS; 0s = at once"),
    ];
}

impl Keys for HedgeSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("after", after, Reader::hedge_after, |a: &HedgeAfter| quote(&a.render()),
             "no response head after this long: one more try to another endpoint;\n\
              a duration (\"50ms\") or a percentile of the observed latency (\"p50\"..\"p99.9\")"),
        key!("max", max, Reader::u32_positive, plain,
             "extra tries at most per try; each is charged to the retry budget"),
    ];
}

impl Keys for GrpcSettings {
    #[rustfmt::skip]
    const ROWS: &'static [Row<Self>] = &[
        key!("failure_codes", failure_codes, Reader::grpc_codes, grpc_codes,
             "codes that are failures for breaker and outlier detection: UNKNOWN\n\
              DEADLINE_EXCEEDED INTERNAL UNAVAILABLE DATA_LOSS (numbers or names)"),
        key!("retry_codes", retry_codes, Reader::grpc_codes, grpc_codes,
             "UNAVAILABLE: retried when it arrives trailers-only (nothing streamed yet),\n\
              whatever the method: the server did not act on the call"),
    ];
}

/// The keys of a route's action, of which exactly one is set.
const ACTIONS: [&str; 3] = ["upstream", "split", "respond"];
