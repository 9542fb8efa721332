//! Rendering: writes a `Config` back to weir TOML through the key tables, every key spelled
//! out (the effective config); with the rows' docs, the same walk writes `config/full.toml`.
//!
//! Position: `Config` → text, for the admin `/config` page and `config/full.toml`; no I/O.
//! Keys: those of [`crate::config::keys`]; optional ones (`tls`, `dns`, `dns_servers`,
//! `health`, `rate_limit`, …) only when set, or in `full.toml` commented out with an example.

use std::fmt::{Display, Write as _};
use std::path::Path;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use crate::config::keys::{Keys, Write};
use crate::config::{Config, FaultDelay, HashOn, Mode, RateLimitKey};

/// The effective config as TOML; reading it back gives an equal `Config`.
pub(crate) fn render(c: &Config) -> String {
    let mut out = Toml::default();
    out.section("", "", "", c);
    out.text
}

/// `c` as `config/full.toml`: every key with its doc, and each key or table that `c` leaves
/// out commented out with an example value.
#[cfg(test)]
pub(crate) fn documented(c: &Config) -> String {
    let mut out = Toml {
        text: FULL_TOML_HEAD.to_owned(),
        docs: true,
        commented: false,
    };
    out.section("", "", "", c);
    out.text
}

/// The document being written.
#[derive(Default)]
pub(crate) struct Toml {
    text: String,
    /// Writing `full.toml`: docs after the keys, left-out keys as commented examples.
    docs: bool,
    /// Inside a commented-out example.
    commented: bool,
}

impl Toml {
    /// Writes `s` under the line `header` (none for the root): its values, then its sub-tables
    /// as `[path.KEY]`.
    pub(crate) fn section<S: Keys>(&mut self, header: &str, path: &str, doc: &str, s: &S) {
        if !header.is_empty() {
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            self.line(header, doc);
        }
        for row in S::ROWS {
            let Write::Value { value, example } = &row.write else {
                continue;
            };
            match value(s) {
                Some(v) => self.line(&format!("{} = {v}", row.key), row.doc),
                None if self.docs => {
                    if let Some(v) = example() {
                        let was = std::mem::replace(&mut self.commented, true);
                        self.line(&format!("{} = {v}", row.key), row.doc);
                        self.commented = was;
                    }
                }
                None => {}
            }
        }
        for row in S::ROWS {
            if let Write::Table(write) = &row.write {
                let child = if path.is_empty() {
                    row.key.to_owned()
                } else {
                    format!("{path}.{}", row.key)
                };
                write(s, self, &child, row.doc);
            }
        }
    }

    /// Writes the sub-table `[path]`; when it is absent (`None`) it is left out, or in
    /// `full.toml` written commented out from `example`.
    pub(crate) fn table<S: Keys>(
        &mut self,
        path: &str,
        doc: &str,
        s: Option<&S>,
        example: impl FnOnce() -> S,
    ) {
        match s {
            Some(s) => self.section(&format!("[{path}]"), path, doc, s),
            None if self.docs => {
                let was = std::mem::replace(&mut self.commented, true);
                self.section(&format!("[{path}]"), path, doc, &example());
                self.commented = was;
            }
            None => {}
        }
    }

    /// One line; in `full.toml` its doc follows from [`DOC_COLUMN`], each further doc line on
    /// a line of its own.
    fn line(&mut self, text: &str, doc: &str) {
        let lead = if self.commented { "#" } else { "" };
        let line = if self.commented {
            format!("# {text}")
        } else {
            text.to_owned()
        };
        let mut docs = doc.lines().filter(|_| self.docs);
        // Writing to a String cannot fail.
        let _ = match docs.next() {
            Some(first) => {
                let pad = DOC_COLUMN.saturating_sub(line.chars().count()).max(2);
                writeln!(self.text, "{line}{:pad$}# {first}", "")
            }
            None => writeln!(self.text, "{line}"),
        };
        for more in docs {
            let _ = writeln!(self.text, "{lead:<DOC_COLUMN$}# {more}");
        }
    }
}

// === values ===

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

/// A TOML key: bare when it can be, else quoted (a name may hold a `.`).
pub(crate) fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if bare { k.to_owned() } else { quote(k) }
}

/// A value written as it displays: integers, booleans.
pub(crate) fn plain(x: &impl Display) -> String {
    x.to_string()
}

/// A value written as a string of how it displays: addresses.
pub(crate) fn quoted(x: &impl Display) -> String {
    quote(&x.to_string())
}

/// A file path, as a string.
pub(crate) fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// A duration in the largest unit that holds it exactly, quoted: `"5m"`, `"10s"`, `"250ms"`.
pub(crate) fn duration(d: &Duration) -> String {
    quote(&duration_text(*d))
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

/// A delay in the form it is read in: `"5ms"`, `"uniform(5ms, 50ms)"`, `"lognormal(…)"`,
/// `"table(…)"`.
pub(crate) fn delay(d: &FaultDelay) -> String {
    quote(&d.to_string())
}

/// A float that reads back as the same `f64` (`0.2`, `100.0`, `1e-7`).
pub(crate) fn float(x: &f64) -> String {
    format!("{x:?}")
}

/// `[a, b, …]` of the items, each written by `write`.
pub(crate) fn array<T>(items: &[T], write: impl Fn(&T) -> String) -> String {
    let items: Vec<String> = items.iter().map(write).collect();
    format!("[{}]", items.join(", "))
}

/// `{ key = value, … }` of the values of `s` that are set.
pub(crate) fn inline<S: Keys>(s: &S) -> String {
    let entries: Vec<String> = S::ROWS
        .iter()
        .filter_map(|row| match &row.write {
            Write::Value { value, .. } => value(s).map(|v| format!("{} = {v}", row.key)),
            Write::Table(_) => None,
        })
        .collect();
    if entries.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", entries.join(", "))
    }
}

/// An HTTP status code.
pub(crate) fn status(s: &StatusCode) -> String {
    s.as_u16().to_string()
}

/// `"host:port"`.
pub(crate) fn authority(a: &Authority) -> String {
    quote(a.as_str())
}

/// `"enforce"`, `"dry_run"` or `"off"`.
pub(crate) fn mode(m: &Mode) -> String {
    quote(m.as_str())
}

/// Response statuses.
pub(crate) fn statuses(s: &[u16]) -> String {
    array(s, plain)
}

/// gRPC status codes, by number.
pub(crate) fn grpc_codes(c: &[crate::http::grpc::Code]) -> String {
    array(c, |c| plain(&c.as_u8()))
}

/// HTTP methods, as strings.
pub(crate) fn methods(m: &[Method]) -> String {
    array(m, |m| quote(m.as_str()))
}

/// A header table, in order: `{ "name" = "value", … }`.
pub(crate) fn headers(h: &[(HeaderName, HeaderValue)]) -> String {
    if h.is_empty() {
        return "{}".into();
    }
    let entries: Vec<String> = h
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes());
            format!("{} = {}", quote(n.as_str()), quote(&value))
        })
        .collect();
    format!("{{ {} }}", entries.join(", "))
}

/// `"client_ip"`, `"header:NAME"` or `"cookie:NAME"`.
pub(crate) fn hash_on(h: &HashOn) -> String {
    quote(&match h {
        HashOn::ClientIp => "client_ip".to_owned(),
        HashOn::Header(h) => format!("header:{h}"),
        HashOn::Cookie(c) => format!("cookie:{c}"),
    })
}

/// `"none"`, `"client_ip"` or `"header:NAME"`.
pub(crate) fn rate_limit_key(k: &RateLimitKey) -> String {
    quote(&match k {
        RateLimitKey::None => "none".to_owned(),
        RateLimitKey::ClientIp => "client_ip".to_owned(),
        RateLimitKey::Header(h) => format!("header:{h}"),
    })
}

/// Where `full.toml` starts a key's doc (0-based column of its `#`).
const DOC_COLUMN: usize = 32;

/// The head of `config/full.toml`.
#[cfg(test)]
const FULL_TOML_HEAD: &str = "\
# Every key weir reads, each set to its default. Copy what you need; leave out what you don't:
# a missing key takes the value shown here. Alternatives that exclude each other are comments.
# Durations are strings such as \"250ms\", \"10s\", \"5m\". Key paths in errors index arrays from 0.

";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http::StatusCode;
    use http::uri::Authority;

    use super::*;
    use crate::config::{
        Balance, DelayStep, HealthSettings, ListenerTls, Mode, Priority, Protocol, RateLimitConfig,
        RespondConfig, RouteAction, RouteConfig, RouteMatch, SplitTarget, UpstreamConfig,
        UpstreamTls,
    };

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
                body_bytes: None,
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
        respond.fault.delay = FaultDelay::Table(vec![
            DelayStep {
                percent: 99.9,
                delay: Duration::from_micros(1500),
            },
            DelayStep {
                percent: 0.1,
                delay: Duration::from_secs(90),
            },
        ]);
        respond.fault.slow_body_rate = 1;
        let mut generated = route(
            "g",
            RouteAction::Respond(RespondConfig {
                body_bytes: Some(65_536),
                ..RespondConfig::default()
            }),
        );
        generated.fault.delay = FaultDelay::LogNormal {
            p50: Duration::from_nanos(1),
            p99: Duration::from_secs(60),
        };
        generated.fault.reset_percent = 0.5;
        generated.fault.truncate_percent = 100.0;
        generated.fault.slow_body_percent = 1e-3;
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
        c.routes = vec![respond, generated, split];
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
            let text = float(&x);
            let back: toml::Value = toml::from_str(&format!("x = {text}")).unwrap();
            assert_eq!(
                back.get("x").and_then(toml::Value::as_float),
                Some(x),
                "{text}"
            );
        }
    }

    #[test]
    fn docs_start_at_their_column_and_continue_below() {
        let mut out = Toml {
            docs: true,
            ..Toml::default()
        };
        out.line("a = 1", "one\ntwo");
        out.commented = true;
        out.line("a_much_longer_key = \"and its value\"", "three\nfour");
        let lines: Vec<&str> = out.text.lines().collect();
        assert_eq!(
            lines,
            [
                "a = 1                           # one",
                "                                # two",
                "# a_much_longer_key = \"and its value\"  # three",
                "#                               # four",
            ]
        );
    }
}
