//! The value converters: one per kind of value a key may hold (durations, bounded integers,
//! ratios, keywords, addresses, header tables, …), each recording `expected … (got …)`.
//!
//! Position: called by the key tables ([`crate::config::keys`]) while reading; no I/O.
//! Keys: none of their own; the messages say what a key would accept.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use toml::de::DeValue;

use super::{Fields, NAME_EXPECTED, Reader, Val, join, valid_name};
use crate::config::{
    Balance, FaultDelay, HashOn, HedgeAfter, MAX_WORKERS, Mode, Priority, Protocol, RateLimitKey,
};
use crate::http::grpc::Code;
use crate::route::direct::MAX_BODY_BYTES;

impl Reader<'_> {
    /// `parsed`, or else `expected {expected} (got …)` recorded at the value.
    fn expect<T>(
        &mut self,
        v: &Val<'_>,
        path: &str,
        parsed: Option<T>,
        expected: &str,
    ) -> Option<T> {
        if parsed.is_none() {
            self.type_error(v, path, expected);
        }
        parsed
    }

    /// A string checked by `valid`; `expected` says what would be valid.
    fn string_where(
        &mut self,
        v: &Val<'_>,
        path: &str,
        valid: impl FnOnce(&str) -> bool,
        expected: &str,
    ) -> Option<String> {
        let s = string(v).filter(|s| valid(s)).map(str::to_owned);
        self.expect(v, path, s, expected)
    }

    /// A route or upstream name: it becomes a metric label.
    pub(crate) fn name(&mut self, v: &Val<'_>, path: &str) -> Option<Arc<str>> {
        self.string_where(v, path, valid_name, NAME_EXPECTED)
            .map(Arc::from)
    }

    pub(crate) fn file_path(&mut self, v: &Val<'_>, path: &str) -> Option<PathBuf> {
        self.string_where(v, path, |s| !s.is_empty(), "a file path")
            .map(PathBuf::from)
    }

    pub(crate) fn path_prefix(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        self.string_where(
            v,
            path,
            |s| s.starts_with('/') && !s.chars().any(char::is_whitespace),
            "a path starting with \"/\" such as \"/api\"",
        )
    }

    /// A host name (lowercased), as in `match.host` and `tls.sni`.
    pub(crate) fn host(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        let valid = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c == '/');
        self.string_where(v, path, valid, "a host name such as \"api.example.com\"")
            .map(|s| s.to_ascii_lowercase())
    }

    /// Any string.
    pub(crate) fn string(&mut self, v: &Val<'_>, path: &str) -> Option<String> {
        self.string_where(v, path, |_| true, "a string")
    }

    /// A response body: any string.
    pub(crate) fn body(&mut self, v: &Val<'_>, path: &str) -> Option<Bytes> {
        let body = string(v).map(|s| Bytes::from(s.to_owned().into_bytes()));
        self.expect(v, path, body, "a string")
    }

    /// The size of a generated response body: 0 to [`MAX_BODY_BYTES`].
    pub(crate) fn body_bytes(&mut self, v: &Val<'_>, path: &str) -> Option<usize> {
        let max = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX);
        let expected = format!("a body size in bytes from 0 to {max} (64 MiB)");
        self.int_as(v, path, (0, max), &expected)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// An injected delay: a duration or a distribution ([`FaultDelay`]).
    pub(crate) fn delay(&mut self, v: &Val<'_>, path: &str) -> Option<FaultDelay> {
        let Some(text) = string(v) else {
            return self.expect(v, path, None, "a delay such as \"5ms\" (a string)");
        };
        match FaultDelay::parse(text) {
            Ok(delay) => Some(delay),
            Err(expected) => self.expect(v, path, None, &expected),
        }
    }

    pub(crate) fn bool(&mut self, v: &Val<'_>, path: &str) -> Option<bool> {
        let b = match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => None,
        };
        self.expect(v, path, b, "true or false")
    }

    /// A human duration (`"250ms"`) accepted by `valid`; `expected` says what `valid` wants.
    fn duration_with(
        &mut self,
        v: &Val<'_>,
        path: &str,
        valid: impl FnOnce(Duration) -> bool,
        expected: &str,
    ) -> Option<Duration> {
        match string(v).and_then(|s| humantime::parse_duration(s.trim()).ok()) {
            Some(d) if !valid(d) => self.expect(v, path, None, expected),
            d => self.expect(v, path, d, "a duration such as \"250ms\""),
        }
    }

    pub(crate) fn duration(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        self.duration_with(v, path, |_| true, "")
    }

    pub(crate) fn duration_positive(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        self.duration_with(v, path, |d| !d.is_zero(), "a duration greater than 0")
    }

    pub(crate) fn budget_window(&mut self, v: &Val<'_>, path: &str) -> Option<Duration> {
        let valid = |d: Duration| (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&d);
        self.duration_with(v, path, valid, "a duration from \"1s\" to \"60s\"")
    }

    /// An integer in `min..=max`.
    fn int(&mut self, v: &Val<'_>, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = integer(v);
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
        self.expect(v, path, None, &expected)
    }

    /// An integer in `min..=max`, described as `expected` when it is not.
    fn int_as(
        &mut self,
        v: &Val<'_>,
        path: &str,
        range: (u64, u64),
        expected: &str,
    ) -> Option<u64> {
        let n = integer(v).and_then(|n| u64::try_from(n).ok());
        let n = n.filter(|n| (range.0..=range.1).contains(n));
        self.expect(v, path, n, expected)
    }

    pub(crate) fn u32(&mut self, v: &Val<'_>, path: &str) -> Option<u32> {
        self.int(v, path, 0, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    pub(crate) fn u32_positive(&mut self, v: &Val<'_>, path: &str) -> Option<u32> {
        self.int(v, path, 1, u32::MAX.into())
            .and_then(|n| u32::try_from(n).ok())
    }

    pub(crate) fn u64(&mut self, v: &Val<'_>, path: &str) -> Option<u64> {
        self.int(v, path, 0, INT_MAX)
    }

    /// A rate in bytes per second, greater than 0.
    pub(crate) fn bytes_per_sec(&mut self, v: &Val<'_>, path: &str) -> Option<u64> {
        self.int_as(
            v,
            path,
            (1, INT_MAX),
            "a rate in bytes per second greater than 0",
        )
    }

    pub(crate) fn usize_positive(&mut self, v: &Val<'_>, path: &str) -> Option<usize> {
        let max = u64::try_from(usize::MAX).unwrap_or(INT_MAX).min(INT_MAX);
        self.int(v, path, 1, max)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// The number of worker runtimes: 0 (one per core) to [`MAX_WORKERS`].
    pub(crate) fn workers(&mut self, v: &Val<'_>, path: &str) -> Option<usize> {
        let expected =
            format!("0 (one worker per core) or a number of workers up to {MAX_WORKERS}");
        let max = u64::try_from(MAX_WORKERS).unwrap_or(u64::MAX);
        self.int_as(v, path, (0, max), &expected)
            .and_then(|n| usize::try_from(n).ok())
    }

    /// A whole percentage, 0 to 100.
    pub(crate) fn percent_u32(&mut self, v: &Val<'_>, path: &str) -> Option<u32> {
        self.int_as(v, path, (0, 100), "a percentage from 0 to 100")
            .and_then(|n| u32::try_from(n).ok())
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
        let x = x.filter(|x| x.is_finite() && valid(*x));
        self.expect(v, path, x, expected)
    }

    pub(crate) fn ratio(&mut self, v: &Val<'_>, path: &str) -> Option<f64> {
        let valid = |x| (0.0..=1.0).contains(&x);
        self.float(v, path, valid, "a ratio from 0 to 1 such as 0.5")
    }

    pub(crate) fn percent(&mut self, v: &Val<'_>, path: &str) -> Option<f64> {
        let valid = |x| (0.0..=100.0).contains(&x);
        self.float(v, path, valid, "a percentage from 0 to 100")
    }

    /// A rate in requests per second, greater than 0.
    pub(crate) fn rps(&mut self, v: &Val<'_>, path: &str) -> Option<f64> {
        let expected = "a number of requests per second greater than 0";
        self.float(v, path, |x| x > 0.0, expected)
    }

    fn status_code(&mut self, v: &Val<'_>, path: &str) -> Option<u16> {
        self.int_as(v, path, (100, 599), "an HTTP status code from 100 to 599")
            .and_then(|n| u16::try_from(n).ok())
    }

    pub(crate) fn status(&mut self, v: &Val<'_>, path: &str) -> Option<StatusCode> {
        self.status_code(v, path)
            .and_then(|n| StatusCode::from_u16(n).ok())
    }

    pub(crate) fn statuses(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<u16>> {
        self.list(v, path, None, |r, _, v, p| r.status_code(v, p))
    }

    /// A hedge delay: a duration greater than 0, or a percentile `"p50"` to `"p99.9"`.
    pub(crate) fn hedge_after(&mut self, v: &Val<'_>, path: &str) -> Option<HedgeAfter> {
        let after = string(v).map(str::trim).and_then(|s| {
            HedgeAfter::percentile(s).or_else(|| {
                humantime::parse_duration(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .map(HedgeAfter::Fixed)
            })
        });
        self.expect(
            v,
            path,
            after,
            "a duration greater than 0 such as \"50ms\", or a percentile from \"p50\" to \"p99.9\"",
        )
    }

    /// A gRPC status code: its number (0..=16) or its name (`"UNAVAILABLE"`).
    fn grpc_code(&mut self, v: &Val<'_>, path: &str) -> Option<Code> {
        let code = match v.get_ref() {
            DeValue::Integer(_) => integer(v)
                .and_then(|n| u8::try_from(n).ok())
                .and_then(Code::from_u8),
            _ => string(v).and_then(Code::from_name),
        };
        self.expect(
            v,
            path,
            code,
            "a gRPC status code: a number from 0 to 16 or a name such as \"UNAVAILABLE\"",
        )
    }

    pub(crate) fn grpc_codes(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<Code>> {
        self.list(v, path, None, |r, _, v, p| r.grpc_code(v, p))
    }

    fn keyword<T: Copy>(&mut self, v: &Val<'_>, path: &str, options: &[(&str, T)]) -> Option<T> {
        let s = string(v);
        let found = options.iter().find(|(name, _)| Some(*name) == s);
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.expect(v, path, found.map(|(_, t)| *t), &one_of(&names))
    }

    pub(crate) fn priority(&mut self, v: &Val<'_>, path: &str) -> Option<Priority> {
        let all = [Priority::Critical, Priority::Default, Priority::Sheddable];
        self.keyword(v, path, &all.map(|p| (p.as_str(), p)))
    }

    pub(crate) fn protocol(&mut self, v: &Val<'_>, path: &str) -> Option<Protocol> {
        let all = [Protocol::Http1, Protocol::Http2];
        self.keyword(v, path, &all.map(|p| (p.as_str(), p)))
    }

    pub(crate) fn balance(&mut self, v: &Val<'_>, path: &str) -> Option<Balance> {
        use Balance::{Hash, LeastRequest, P2c, RoundRobin};
        let all = [P2c, RoundRobin, LeastRequest, Hash];
        self.keyword(v, path, &all.map(|b| (b.as_str(), b)))
    }

    pub(crate) fn mode(&mut self, v: &Val<'_>, path: &str) -> Option<Mode> {
        let all = [Mode::Enforce, Mode::DryRun, Mode::Off];
        self.keyword(v, path, &all.map(|m| (m.as_str(), m)))
    }

    pub(crate) fn rate_limit_key(&mut self, v: &Val<'_>, path: &str) -> Option<RateLimitKey> {
        let key = string(v).and_then(|s| match s {
            "none" => Some(RateLimitKey::None),
            "client_ip" => Some(RateLimitKey::ClientIp),
            s => s
                .strip_prefix("header:")
                .and_then(|n| HeaderName::from_str(n).ok())
                .map(RateLimitKey::Header),
        });
        self.expect(v, path, key, "\"none\", \"client_ip\" or \"header:NAME\"")
    }

    pub(crate) fn hash_on(&mut self, v: &Val<'_>, path: &str) -> Option<HashOn> {
        let on = string(v).and_then(|s| match s.split_once(':') {
            _ if s == "client_ip" => Some(HashOn::ClientIp),
            Some(("header", n)) => HeaderName::from_str(n).ok().map(HashOn::Header),
            Some(("cookie", n)) if valid_token(n) => Some(HashOn::Cookie(n.to_owned())),
            _ => None,
        });
        let expected = "\"client_ip\", \"header:NAME\" or \"cookie:NAME\"";
        self.expect(v, path, on, expected)
    }

    pub(crate) fn socket_addr(&mut self, v: &Val<'_>, path: &str) -> Option<SocketAddr> {
        let addr = string(v).and_then(|s| SocketAddr::from_str(s).ok());
        self.expect(
            v,
            path,
            addr,
            "an ip:port address such as \"127.0.0.1:8080\"",
        )
    }

    /// `host:port` with a port from 1 to 65535, as in `endpoints` and `dns`.
    pub(crate) fn authority(&mut self, v: &Val<'_>, path: &str) -> Option<Authority> {
        let a = string(v)
            .filter(|s| !s.contains('@'))
            .and_then(|s| Authority::from_str(s).ok())
            .filter(|a| !a.host().is_empty() && a.port_u16().is_some_and(|p| p != 0));
        let expected = "host:port such as \"10.0.0.7:8080\" or \"backend.svc:80\"";
        self.expect(v, path, a, expected)
    }

    pub(crate) fn endpoints(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<Authority>> {
        let empty = "expected at least one endpoint such as \"10.0.0.7:8080\" (got [])";
        self.list(v, path, Some(empty), |r, _, v, p| r.authority(v, p))
    }

    pub(crate) fn dns_servers(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<SocketAddr>> {
        let empty = "expected at least one DNS server such as \"10.96.0.10:53\" (leave \
                     `dns_servers` out for the system resolver) (got [])";
        self.list(v, path, Some(empty), |r, _, v, p| {
            let addr = string(v).and_then(|s| SocketAddr::from_str(s).ok());
            let expected =
                "an ip:port address with a port from 1 to 65535 such as \"10.96.0.10:53\"";
            r.expect(v, p, addr.filter(|a| a.port() != 0), expected)
        })
    }

    pub(crate) fn methods(&mut self, v: &Val<'_>, path: &str) -> Option<Vec<Method>> {
        self.list(v, path, None, |r, _, v, p| {
            let m = string(v)
                .filter(|s| !s.chars().any(|c| c.is_ascii_lowercase()))
                .and_then(|s| Method::from_bytes(s.as_bytes()).ok());
            r.expect(v, p, m, "an uppercase HTTP method such as \"GET\"")
        })
    }

    /// A table of header names to string values, in file order.
    pub(crate) fn headers(
        &mut self,
        v: &Val<'_>,
        path: &str,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let DeValue::Table(t) = v.get_ref() else {
            return self.expect(v, path, None, "a table");
        };
        let mut out = Vec::new();
        for (key, value) in Fields::new(path.to_owned(), t).entries {
            let p = join(path, key.get_ref());
            self.remember(&p, key, value);
            let name = HeaderName::from_bytes(key.get_ref().as_bytes()).ok();
            if name.is_none() {
                let got = self.text(key.span());
                self.c.at_span(
                    &key.span(),
                    &p,
                    format!(
                        "expected a header name of letters, digits and -_.!#$%&'*+^`|~ (got {got})"
                    ),
                );
            }
            let hv = match string(value) {
                Some(s) => {
                    let hv = HeaderValue::from_str(s).ok();
                    self.expect(value, &p, hv, "a header value without control characters")
                }
                None => self.expect(value, &p, None, "a string"),
            };
            if let (Some(n), Some(hv)) = (name, hv) {
                out.push((n, hv));
            }
        }
        Some(out)
    }
}

/// The text of a string value.
fn string<'v>(v: &'v Val<'_>) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => None,
    }
}

/// The value of an integer, in any radix.
fn integer(v: &Val<'_>) -> Option<i128> {
    match v.get_ref() {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
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

/// The largest TOML integer.
const INT_MAX: u64 = i64::MAX as u64;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{at, doc, error_list, errors, ok};
    use crate::config::{FaultDelay, RouteAction};

    #[test]
    fn fault_delays_read_every_form() {
        let c = ok(&doc(&[
            "[[routes]]",
            "respond = {}",
            "fault = { delay_percent = 100.0, delay = \"lognormal(5ms, 200ms)\" }",
            "[[routes]]",
            "respond = {}",
            "fault = { delay = \"table(90%: 5ms, 9%: 50ms, 1%: 500ms)\", reset_percent = 1.5 }",
            "[[routes]]",
            "respond = {}",
            "fault = { delay = \"uniform(5ms, 50ms)\", truncate_percent = 2 }",
            "[[routes]]",
            "respond = {}",
            "fault = { delay = \"250ms\", slow_body_percent = 3, slow_body_rate = 1 }",
        ]));
        let delays: Vec<String> = c.routes.iter().map(|r| r.fault.delay.to_string()).collect();
        assert_eq!(
            delays,
            [
                "lognormal(5ms, 200ms)",
                "table(90%: 5ms, 9%: 50ms, 1%: 500ms)",
                "uniform(5ms, 50ms)",
                "250ms"
            ]
        );
        assert_eq!(
            c.routes[3].fault.delay,
            FaultDelay::Fixed(Duration::from_millis(250))
        );
        let f: Vec<_> = c.routes.iter().map(|r| &r.fault).collect();
        assert_eq!(
            (
                f[1].reset_percent,
                f[2].truncate_percent,
                f[3].slow_body_percent
            ),
            (1.5, 2.0, 3.0)
        );
        assert_eq!((f[3].slow_body_rate, f[0].slow_body_rate), (1, 16_384));
    }

    #[test]
    fn bad_fault_values_name_their_line_and_what_would_be_valid() {
        let src = doc(&[
            "[[routes]]",                                           // 1
            "respond = {}",                                         // 2
            "[routes.fault]",                                       // 3
            "delay = \"table(90%: 5ms, 9%: 50ms)\"",                // 4
            "reset_percent = 101",                                  // 5
            "slow_body_rate = 0",                                   // 6
            "[[routes]]",                                           // 7
            "respond = {}",                                         // 8
            "fault = { delay = \"uniform(50ms, 5ms)\" }",           // 9
            "[[routes]]",                                           // 10
            "respond = {}",                                         // 11
            "fault = { delay = \"lognormal(0s, 5ms)\" }",           // 12
            "[[routes]]",                                           // 13
            "respond = {}",                                         // 14
            "fault = { delay = 5, truncate_percent = \"half\" }",   // 15
            "[[routes]]",                                           // 16
            "respond = {}",                                         // 17
            "fault = { delay = \"soon\", slow_body_percent = -1 }", // 18
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(4, "routes[0].fault.delay"),
                at(5, "routes[0].fault.reset_percent"),
                at(6, "routes[0].fault.slow_body_rate"),
                at(9, "routes[1].fault.delay"),
                at(12, "routes[2].fault.delay"),
                at(15, "routes[3].fault.delay"),
                at(15, "routes[3].fault.truncate_percent"),
                at(18, "routes[4].fault.delay"),
                at(18, "routes[4].fault.slow_body_percent"),
            ]
        );
        let all: Vec<String> = error_list(&src).iter().map(ToString::to_string).collect();
        assert_eq!(
            all[0],
            "weir.toml:4: routes[0].fault.delay: expected table percentages that add up to 100 \
             (these add up to 99) (got \"table(90%: 5ms, 9%: 50ms)\")"
        );
        assert_eq!(
            all[2],
            "weir.toml:6: routes[0].fault.slow_body_rate: expected a rate in bytes per second \
             greater than 0 (got 0)"
        );
        assert_eq!(
            all[3],
            "weir.toml:9: routes[1].fault.delay: expected uniform(low, high) of two durations \
             such as \"uniform(5ms, 50ms)\" with low <= high (got \"uniform(50ms, 5ms)\")"
        );
        assert!(
            all[4].contains("with 0 < p50 <= p99 <= 60s (got \"lognormal(0s, 5ms)\")"),
            "{}",
            all[4]
        );
        assert!(
            all[5].contains("expected a delay such as \"5ms\""),
            "{}",
            all[5]
        );
        assert!(
            all[7].contains("\"lognormal(5ms, 200ms)\" (p50, p99) or \"table("),
            "{}",
            all[7]
        );
    }

    #[test]
    fn a_generated_body_is_sized_and_excludes_body() {
        let c = ok("[[routes]]\nrespond = { status = 200, body_bytes = 4096 }");
        let RouteAction::Respond(r) = &c.routes[0].action else {
            panic!("a respond route");
        };
        assert_eq!((r.body_bytes, r.body.len()), (Some(4096), 0));
        ok("[[routes]]\nrespond = { body_bytes = 67108864 }");
        let src = doc(&[
            "[[routes]]",                                 // 1
            "respond = { body = \"x\", body_bytes = 1 }", // 2
            "[[routes]]",                                 // 3
            "respond = { body_bytes = 67108865 }",        // 4
            "[[routes]]",                                 // 5
            "[routes.respond]",                           // 6
            "body_bytes = -1",                            // 7
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].respond.body_bytes"),
                at(4, "routes[1].respond.body_bytes"),
                at(7, "routes[2].respond.body_bytes"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "set either `body` (the text) or `body_bytes` (a generated body of that size), not both"
        );
        assert_eq!(
            all[1].message,
            "expected a body size in bytes from 0 to 67108864 (64 MiB) (got 67108865)"
        );
    }
}
