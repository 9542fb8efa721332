//! Renders a `Config` back to weir TOML with every key spelled out: the effective config.
//!
//! Position: `Config` → text, for `weir check` and the admin `/config` page; no I/O.
//! Keys: all of them; optional ones (`tls`, `dns`, `dns_servers`, `health`, `rate_limit`, …)
//! only when set.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::config::read::quote;
use crate::config::{
    Config, FaultConfig, HashOn, ListenerConfig, RateLimitKey, RouteAction, RouteConfig,
    UpstreamConfig,
};

/// The effective config as TOML; reading it back gives an equal `Config`.
pub(crate) fn render(c: &Config) -> String {
    let mut out = Toml::default();
    out.header("[admin]");
    out.kv("listen", quote(&c.admin.listen.to_string()));
    for l in &c.listeners {
        listener(&mut out, l);
    }
    out.header("[drain]");
    out.kv("delay", duration(c.drain.delay));
    out.kv("timeout", duration(c.drain.timeout));
    for r in &c.routes {
        route(&mut out, r);
    }
    for u in &c.upstreams {
        upstream(&mut out, u);
    }
    out.0
}

/// A duration in the largest unit that holds it exactly, quoted: `"5m"`, `"10s"`, `"250ms"`.
pub(crate) fn duration(d: Duration) -> String {
    quote(&duration_text(d))
}

fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        if secs == 0 {
            "0s".into()
        } else if secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        }
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

fn listener(out: &mut Toml, l: &ListenerConfig) {
    out.header("[[listeners]]");
    out.kv("name", quote(&l.name));
    out.kv("listen", quote(&l.listen.to_string()));
    out.kv("header_read_timeout", duration(l.header_read_timeout));
    out.kv("idle_timeout", duration(l.idle_timeout));
    out.kv("send_timeout", duration(l.send_timeout));
    out.kv("max_connections", l.max_connections.to_string());
    out.kv("max_header_bytes", l.max_header_bytes.to_string());
    out.kv("max_headers", l.max_headers.to_string());
    out.kv("max_body_bytes", l.max_body_bytes.to_string());
    if let Some(tls) = &l.tls {
        let mut t = vec![
            ("cert", quote(&tls.cert.to_string_lossy())),
            ("key", quote(&tls.key.to_string_lossy())),
        ];
        if let Some(ca) = &tls.client_ca {
            t.push(("client_ca", quote(&ca.to_string_lossy())));
        }
        out.kv("tls", inline(&t));
    }
}

fn route(out: &mut Toml, r: &RouteConfig) {
    out.header("[[routes]]");
    out.kv("name", quote(&r.name));
    let m = &r.matcher;
    let mut t = Vec::new();
    if let Some(p) = &m.path_prefix {
        t.push(("path_prefix", quote(p)));
    }
    if let Some(h) = &m.host {
        t.push(("host", quote(h)));
    }
    t.push((
        "methods",
        array(m.methods.iter().map(|x| quote(x.as_str()))),
    ));
    t.push(("headers", headers(&m.headers)));
    out.kv("match", inline(&t));
    match &r.action {
        RouteAction::Upstream(name) => out.kv("upstream", quote(name)),
        RouteAction::Split(targets) => {
            let items = targets.iter().map(|s| {
                inline(&[
                    ("upstream", quote(&s.upstream)),
                    ("weight", s.weight.to_string()),
                ])
            });
            out.kv("split", array(items));
        }
        RouteAction::Respond(resp) => {
            let body = String::from_utf8_lossy(&resp.body);
            out.kv(
                "respond",
                inline(&[
                    ("status", resp.status.as_u16().to_string()),
                    ("body", quote(&body)),
                    ("headers", headers(&resp.headers)),
                ]),
            );
        }
    }
    out.kv("timeout", duration(r.timeout));
    out.kv("priority", quote(r.priority.as_str()));
    if let Some(rl) = &r.rate_limit {
        let key = match &rl.key {
            RateLimitKey::None => "none".to_owned(),
            RateLimitKey::ClientIp => "client_ip".to_owned(),
            RateLimitKey::Header(h) => format!("header:{h}"),
        };
        out.kv(
            "rate_limit",
            inline(&[
                ("rps", float(rl.rps)),
                ("burst", rl.burst.to_string()),
                ("key", quote(&key)),
                ("max_keys", rl.max_keys.to_string()),
            ]),
        );
    }
    out.kv("fault", fault(&r.fault));
}

fn fault(f: &FaultConfig) -> String {
    inline(&[
        ("abort_percent", float(f.abort_percent)),
        ("abort_status", f.abort_status.as_u16().to_string()),
        ("delay_percent", float(f.delay_percent)),
        ("delay", duration(f.delay)),
        ("allow_header", f.allow_header.to_string()),
    ])
}

fn upstream(out: &mut Toml, u: &UpstreamConfig) {
    let path = format!("upstreams.{}", key(&u.name));
    out.header(&format!("[{path}]"));
    match &u.dns {
        Some(dns) => out.kv("dns", quote(dns.as_str())),
        None => out.kv(
            "endpoints",
            array(u.endpoints.iter().map(|e| quote(e.as_str()))),
        ),
    }
    out.kv("dns_refresh", duration(u.dns_refresh));
    if !u.dns_servers.is_empty() {
        out.kv(
            "dns_servers",
            array(u.dns_servers.iter().map(|s| quote(&s.to_string()))),
        );
    }
    out.kv("protocol", quote(u.protocol.as_str()));
    out.kv("connect_timeout", duration(u.connect_timeout));
    out.kv("try_timeout", duration(u.try_timeout));
    out.kv("read_timeout", duration(u.read_timeout));
    out.kv("pool_idle_timeout", duration(u.pool_idle_timeout));
    out.kv("balance", quote(u.balance.as_str()));
    let hash_on = match &u.hash_on {
        HashOn::ClientIp => "client_ip".to_owned(),
        HashOn::Header(h) => format!("header:{h}"),
        HashOn::Cookie(c) => format!("cookie:{c}"),
    };
    out.kv("hash_on", quote(&hash_on));
    if let Some(tls) = &u.tls {
        let mut t = Vec::new();
        if let Some(sni) = &tls.sni {
            t.push(("sni", quote(sni)));
        }
        for (k, p) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if let Some(p) = p {
                t.push((k, quote(&p.to_string_lossy())));
            }
        }
        out.kv("tls", inline(&t));
    }

    let r = &u.retry;
    out.header(&format!("[{path}.retry]"));
    out.kv("max_retries", r.max_retries.to_string());
    out.kv("statuses", array(r.statuses.iter().map(u16::to_string)));
    out.kv("idempotency_key", r.idempotency_key.to_string());
    out.kv("max_body", r.max_body.to_string());
    out.kv("backoff_base", duration(r.backoff_base));
    out.kv("backoff_cap", duration(r.backoff_cap));
    out.kv("budget_ratio", float(r.budget_ratio));
    out.kv("budget_min_per_sec", r.budget_min_per_sec.to_string());
    out.kv("budget_window", duration(r.budget_window));

    let b = &u.breaker;
    out.header(&format!("[{path}.breaker]"));
    out.kv("mode", quote(b.mode.as_str()));
    out.kv("window", duration(b.window));
    out.kv("min_calls", b.min_calls.to_string());
    out.kv("failure_rate", float(b.failure_rate));
    out.kv("slow_call_duration", duration(b.slow_call_duration));
    out.kv("slow_call_rate", float(b.slow_call_rate));
    out.kv("consecutive_failures", b.consecutive_failures.to_string());
    out.kv("open_for", duration(b.open_for));
    out.kv("open_for_max", duration(b.open_for_max));
    out.kv("half_open_probes", b.half_open_probes.to_string());
    out.kv(
        "failure_statuses",
        array(b.failure_statuses.iter().map(u16::to_string)),
    );

    let s = &u.shed;
    out.header(&format!("[{path}.shed]"));
    out.kv("mode", quote(s.mode.as_str()));
    out.kv("max_in_flight", s.max_in_flight.to_string());
    out.kv("queue", s.queue.to_string());
    out.kv("queue_timeout", duration(s.queue_timeout));
    out.kv("adaptive", s.adaptive.to_string());
    out.kv("min_limit", s.min_limit.to_string());

    if let Some(h) = &u.health {
        out.header(&format!("[{path}.health]"));
        out.kv("path", quote(&h.path));
        out.kv("interval", duration(h.interval));
        out.kv("timeout", duration(h.timeout));
        out.kv("healthy_threshold", h.healthy_threshold.to_string());
        out.kv("unhealthy_threshold", h.unhealthy_threshold.to_string());
    }

    let o = &u.outlier;
    out.header(&format!("[{path}.outlier]"));
    out.kv("consecutive_failures", o.consecutive_failures.to_string());
    out.kv("base_ejection", duration(o.base_ejection));
    out.kv("max_ejection_percent", o.max_ejection_percent.to_string());
    out.kv("mode", quote(o.mode.as_str()));
    out.kv("ramp", duration(o.ramp));
}

// === TOML text ===

/// The document being written.
#[derive(Default)]
struct Toml(String);

impl Toml {
    fn header(&mut self, header: &str) {
        if !self.0.is_empty() {
            self.0.push('\n');
        }
        self.0.push_str(header);
        self.0.push('\n');
    }

    fn kv(&mut self, key: &str, value: String) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "{key} = {value}");
    }
}

/// A TOML key: bare when it can be, else quoted (a name may hold a `.`).
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if bare { k.to_owned() } else { quote(k) }
}

fn inline(entries: &[(&str, String)]) -> String {
    if entries.is_empty() {
        return "{}".into();
    }
    let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", body.join(", "))
}

fn array(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

fn headers(h: &[(HeaderName, HeaderValue)]) -> String {
    let entries: Vec<(String, String)> = h
        .iter()
        .map(|(n, v)| {
            (
                quote(n.as_str()),
                quote(&String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let refs: Vec<(&str, String)> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    inline(&refs)
}

/// A float that reads back as the same `f64` (`0.2`, `100.0`, `1e-7`).
fn float(x: f64) -> String {
    format!("{x:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_micros(3), "3us"),
            (Duration::from_nanos(1_000_000_007), "1000000007ns"),
        ];
        for (d, text) in cases {
            assert_eq!(duration_text(d), text);
            assert_eq!(humantime::parse_duration(text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn unusual_values_round_trip() {
        use std::sync::Arc;

        use bytes::Bytes;
        use http::StatusCode;
        use http::uri::Authority;

        use crate::config::{
            Balance, HealthSettings, ListenerTls, Mode, Priority, Protocol, RateLimitConfig,
            RespondConfig, RouteMatch, SplitTarget, UpstreamTls,
        };

        let header = |n: &str, v: &str| {
            (
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            )
        };
        let mut c = Config::default();
        c.admin.listen = "[::1]:0".parse().unwrap();
        c.listeners[0].tls = Some(ListenerTls {
            cert: "dir with space/c \"x\".pem".into(),
            key: "k.pem".into(),
            client_ca: Some("ca.pem".into()),
        });
        c.drain.delay = Duration::from_nanos(1_500);
        let route = |name: &str, action: RouteAction| RouteConfig {
            name: Arc::from(name),
            action,
            ..RouteConfig::default()
        };
        let mut respond = route(
            "r.1",
            RouteAction::Respond(RespondConfig {
                status: StatusCode::IM_A_TEAPOT,
                body: Bytes::from("line \"one\"\n\ttab \\ é\u{7f}"),
                headers: vec![header("x-b", "ünïcode"), header("x-a", "a\tb")],
            }),
        );
        respond.matcher = RouteMatch {
            path_prefix: Some("/a%20b\u{e9}".into()),
            host: Some("h".into()),
            methods: vec![http::Method::from_bytes(b"PURGE").unwrap()],
            headers: vec![header("x-q", "\"")],
        };
        respond.priority = Priority::Sheddable;
        respond.rate_limit = Some(RateLimitConfig {
            key: RateLimitKey::Header(HeaderName::from_static("x-k")),
            ..RateLimitConfig::new(0.25)
        });
        respond.fault.abort_percent = 33.333333333333336;
        let split = route(
            "s",
            RouteAction::Split(vec![
                SplitTarget {
                    upstream: "u.v".into(),
                    weight: 0,
                },
                SplitTarget {
                    upstream: "u.v".into(),
                    weight: 7,
                },
            ]),
        );
        c.routes = vec![respond, split];
        let mut u = UpstreamConfig {
            name: "u.v".into(),
            dns: Some(Authority::from_static("svc.local:8443")),
            dns_servers: vec![
                "10.96.0.10:53".parse().unwrap(),
                "[fd00::a]:5353".parse().unwrap(),
            ],
            protocol: Protocol::Http2,
            balance: Balance::Hash,
            hash_on: HashOn::Cookie("sid".into()),
            tls: Some(UpstreamTls {
                sni: Some("s".into()),
                ..UpstreamTls::default()
            }),
            health: Some(HealthSettings {
                path: "/h?x=1".into(),
                ..HealthSettings::default()
            }),
            ..UpstreamConfig::default()
        };
        u.retry.statuses = vec![];
        u.retry.budget_ratio = 0.1 + 0.2;
        u.breaker.mode = Mode::DryRun;
        u.shed.mode = Mode::Off;
        u.outlier.ramp = Duration::from_secs(86_400);
        c.upstreams = vec![u];

        let text = render(&c);
        match Config::from_toml(&text, "rendered.toml") {
            Ok(back) => assert_eq!(back, c, "{text}"),
            Err(e) => panic!("{e}\n{text}"),
        }
    }

    #[test]
    fn floats_read_back_exactly() {
        for x in [0.0, 0.2, 1.0, 100.0, 1e-7, 12345.678, 1e21] {
            let text = float(x);
            let back: toml::Value = toml::from_str(&format!("x = {text}")).unwrap();
            assert_eq!(
                back.get("x").and_then(toml::Value::as_float),
                Some(x),
                "{text}"
            );
        }
    }
}
