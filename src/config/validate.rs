//! Validation: cross-key checks on a read `Config` (references, duplicates, clashes, orderings).
//!
//! Position: file → validated `Config` (second half, after `read`); no I/O. Keys: listener names
//! and addresses, `admin.listen`, route names and upstreams, `dns_servers` only with `dns`,
//! backoff, open_for, shed limits, `health.grpc` only over HTTP/2.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::error::Collector;
use crate::config::read::join;
use crate::config::render::{duration, quote};
use crate::config::{Config, ListenerConfig, Protocol, RouteAction, UpstreamConfig};

/// Records every cross-key problem of `config`, each at the line of the key it is about.
pub(crate) fn validate(config: &Config, c: &mut Collector) {
    listeners(config, c);
    routes(config, c);
    for u in &config.upstreams {
        upstream(u, c);
    }
}

fn listeners(config: &Config, c: &mut Collector) {
    for (i, l) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let earlier = &config.listeners[..i];
        duplicate_name(
            c,
            &path,
            "listener",
            "listeners",
            &l.name,
            earlier.iter().map(|o| &o.name),
        );
        let listen = format!("{path}.listen");
        if c.has_error(&listen) {
            continue;
        }
        let got = if c.seen(&listen) {
            quote(&l.listen.to_string())
        } else {
            format!("the default {}", quote(&l.listen.to_string()))
        };
        if clash(l.listen, config.admin.listen) && !c.has_error("admin.listen") {
            c.at_path(
                &listen,
                format!(
                    "address clashes with the admin port admin.listen = {} (got {got})",
                    quote(&config.admin.listen.to_string()),
                ),
            );
        }
        let clashes = |(j, o): &(usize, &ListenerConfig)| {
            clash(o.listen, l.listen) && !c.has_error(&format!("listeners[{j}].listen"))
        };
        if let Some((j, _)) = earlier.iter().enumerate().find(clashes) {
            c.at_path(
                &listen,
                format!(
                    "address clashes with listeners[{j}].listen = {} (got {got})",
                    quote(&config.listeners[j].listen.to_string()),
                ),
            );
        }
    }
}

/// Records that the item at `path` (e.g. `routes[3]`) reuses the name of an earlier one, at
/// its `name` key when the file spells one out (a default name has no line of its own).
fn duplicate_name<'a>(
    c: &mut Collector,
    path: &str,
    kind: &str,
    table: &str,
    name: &str,
    earlier: impl Iterator<Item = &'a std::sync::Arc<str>>,
) {
    let key = format!("{path}.name");
    if c.has_error(&key) {
        return;
    }
    let mut earlier = earlier;
    if let Some(j) = earlier.position(|o| &**o == name) {
        let at = if c.seen(&key) { key } else { path.to_owned() };
        c.at_path(
            &at,
            format!(
                "duplicate {kind} name ({table}[{j}] is also {})",
                quote(name)
            ),
        );
    }
}

fn routes(config: &Config, c: &mut Collector) {
    for (i, r) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let earlier = config.routes[..i].iter().map(|o| &o.name);
        duplicate_name(c, &path, "route", "routes", &r.name, earlier);
        match &r.action {
            RouteAction::Upstream(name) => reference(config, c, &format!("{path}.upstream"), name),
            RouteAction::Split(targets) => {
                for (j, t) in targets.iter().enumerate() {
                    reference(
                        config,
                        c,
                        &format!("{path}.split[{j}].upstream"),
                        &t.upstream,
                    );
                }
            }
            RouteAction::Respond(_) => {}
        }
    }
}

/// A route's reference to an upstream must name one in `[upstreams]`.
fn reference(config: &Config, c: &mut Collector, path: &str, name: &str) {
    if config.upstream(name).is_some() {
        return;
    }
    let message = if config.upstreams.is_empty() {
        format!(
            "no such upstream: no [upstreams.NAME] table is defined (got {})",
            quote(name)
        )
    } else {
        let names: Vec<&str> = config.upstreams.iter().map(|u| &*u.name).collect();
        format!(
            "no such upstream (expected one of: {}) (got {})",
            names.join(", "),
            quote(name)
        )
    };
    c.at_path(path, message);
}

fn upstream(u: &UpstreamConfig, c: &mut Collector) {
    let path = join("upstreams", &u.name);
    // With neither or both of `endpoints` and `dns`, reading has reported that already.
    let servers = join(&path, "dns_servers");
    if c.seen(&servers) && c.seen(&join(&path, "endpoints")) && !c.seen(&join(&path, "dns")) {
        c.at_path(
            &servers,
            "`dns_servers` only applies with `dns = \"host:port\"` (this upstream has static \
             `endpoints`)"
                .into(),
        );
    }
    let r = &u.retry;
    if r.backoff_base > r.backoff_cap {
        let lo = (Value::Duration(r.backoff_base), "backoff_base");
        let hi = (Value::Duration(r.backoff_cap), "backoff_cap");
        order(c, &join(&path, "retry"), lo, hi);
    }
    let b = &u.breaker;
    if b.open_for > b.open_for_max {
        let lo = (Value::Duration(b.open_for), "open_for");
        let hi = (Value::Duration(b.open_for_max), "open_for_max");
        order(c, &join(&path, "breaker"), lo, hi);
    }
    let s = &u.shed;
    // `min_limit` is the floor of the adaptive limit, unused otherwise.
    if s.adaptive && s.min_limit > s.max_in_flight {
        let lo = (Value::Count(s.min_limit), "min_limit");
        let hi = (Value::Count(s.max_in_flight), "max_in_flight");
        order(c, &join(&path, "shed"), lo, hi);
    }
    if u.health.as_ref().is_some_and(|h| h.grpc) && u.protocol != Protocol::Http2 {
        grpc_needs_http2(u, c, &path);
    }
}

/// `health.grpc = true` on an upstream that does not speak HTTP/2: gRPC runs over HTTP/2
/// only (Envoy refuses the same). Reported at `health.grpc`, which is written whenever true.
fn grpc_needs_http2(u: &UpstreamConfig, c: &mut Collector, path: &str) {
    let grpc = join(path, "health.grpc");
    let protocol = join(path, "protocol");
    if c.has_error(&grpc) || c.has_error(&protocol) {
        return;
    }
    let default = if c.seen(&protocol) {
        ""
    } else {
        "the default "
    };
    c.at_path(
        &grpc,
        format!(
            "gRPC health checks need `protocol = \"http2\"` on the upstream: gRPC runs over \
             HTTP/2 (got {default}protocol = {})",
            quote(u.protocol.as_str())
        ),
    );
}

/// A value in an ordering message.
enum Value {
    Duration(Duration),
    Count(u32),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Duration(d) => duration(d),
            Value::Count(n) => n.to_string(),
        }
    }
}

/// Reports `lo > hi` at `lo` if it was written in the file, else at `hi`.
fn order(c: &mut Collector, table: &str, lo: (Value, &str), hi: (Value, &str)) {
    let (lo_value, lo_key) = lo;
    let (hi_value, hi_key) = hi;
    let lo_path = join(table, lo_key);
    let hi_path = join(table, hi_key);
    if c.has_error(&lo_path) || c.has_error(&hi_path) {
        return;
    }
    if c.seen(&lo_path) {
        let got = c
            .text(&lo_path)
            .map_or_else(|| lo_value.text(), str::to_owned);
        let message = format!("must not exceed {hi_key} = {} (got {got})", hi_value.text());
        c.at_path(&lo_path, message);
    } else {
        let got = c
            .text(&hi_path)
            .map_or_else(|| hi_value.text(), str::to_owned);
        let message = format!(
            "must be at least {lo_key} = {} (got {got})",
            lo_value.text()
        );
        c.at_path(&hi_path, message);
    }
}

/// Whether two listening addresses would fight over one port. Port 0 never clashes: the system
/// picks a free port for each.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{at, doc, error_list, errors, ok};

    #[test]
    fn routes_must_name_existing_upstreams() {
        let src = doc(&[
            "[[routes]]",                                                              // 1
            "upstream = \"backnd\"",                                                   // 2
            "[[routes]]",                                                              // 3
            "split = [{ upstream = \"backend\", weight = 9 }, { upstream = \"v2\" }]", // 4
            "[upstreams.backend]",                                                     // 5
            "endpoints = [\"b:80\"]",                                                  // 6
            "[upstreams.other]",                                                       // 7
            "endpoints = [\"o:80\"]",                                                  // 8
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "routes[0].upstream"),
                at(4, "routes[1].split[1].upstream")
            ]
        );
        assert_eq!(
            error_list(&src)[0].to_string(),
            "weir.toml:2: routes[0].upstream: no such upstream (expected one of: backend, other) \
             (got \"backnd\")"
        );
        let e = &error_list("[[routes]]\nupstream = \"x\"")[0];
        assert_eq!(
            e.message,
            "no such upstream: no [upstreams.NAME] table is defined (got \"x\")"
        );
    }

    #[test]
    fn names_are_unique() {
        let src = doc(&[
            "[[listeners]]",            // 1
            "listen = \"127.0.0.1:1\"", // 2
            "[[listeners]]",            // 3
            "name = \"main\"",          // 4
            "listen = \"127.0.0.1:2\"", // 5
            "[[listeners]]",            // 6
            "name = \"listener-3\"",    // 7
            "listen = \"127.0.0.1:3\"", // 8
            "[[listeners]]",            // 9
            "listen = \"127.0.0.1:4\"", // 10
            "[[routes]]",               // 11
            "name = \"a\"",             // 12
            "respond = {}",             // 13
            "[[routes]]",               // 14
            "name = \"a\"",             // 15
            "respond = {}",             // 16
            "[[routes]]",               // 17
            "name = \"route-3\"",       // 18
            "respond = {}",             // 19
            "[[routes]]",               // 20
            "respond = {}",             // 21
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(4, "listeners[1].name"),
                at(9, "listeners[3]"),
                at(15, "routes[1].name"),
                at(20, "routes[3]")
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "duplicate listener name (listeners[0] is also \"main\")"
        );
        assert_eq!(
            all[3].message,
            "duplicate route name (routes[2] is also \"route-3\")"
        );
    }

    #[test]
    fn listeners_need_their_own_port() {
        let src = doc(&[
            "[admin]",                     // 1
            "listen = \"0.0.0.0:9000\"",   // 2
            "[[listeners]]",               // 3
            "listen = \"127.0.0.1:9000\"", // 4
            "[[listeners]]",               // 5
            "listen = \"127.0.0.1:8000\"", // 6
            "[[listeners]]",               // 7
            "listen = \"127.0.0.1:8000\"", // 8
            "[[listeners]]",               // 9
            "listen = \"0.0.0.0:8000\"",   // 10
            "[[listeners]]",               // 11
            "listen = \"127.0.0.2:8001\"", // 12
            "[[listeners]]",               // 13
            "listen = \"127.0.0.3:8001\"", // 14
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(4, "listeners[0].listen"),
                at(8, "listeners[2].listen"),
                at(10, "listeners[3].listen")
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "address clashes with the admin port admin.listen = \"0.0.0.0:9000\" (got \"127.0.0.1:9000\")"
        );
        assert_eq!(
            all[1].message,
            "address clashes with listeners[1].listen = \"127.0.0.1:8000\" (got \"127.0.0.1:8000\")"
        );
    }

    #[test]
    fn defaults_clash_too_and_port_zero_never_does() {
        let src = doc(&[
            "[[listeners]]",               // 1
            "listen = \"127.0.0.1:9901\"", // 2
            "[[listeners]]",               // 3
            "name = \"second\"",           // 4
        ]);
        assert_eq!(errors(&src), vec![at(2, "listeners[0].listen")]);
        let src = doc(&[
            "[admin]",                     // 1
            "listen = \"127.0.0.1:8080\"", // 2
            "[[listeners]]",               // 3
            "name = \"a\"",                // 4
        ]);
        let e = &error_list(&src)[0];
        assert_eq!((e.line, e.path.as_str()), (3, "listeners[0].listen"));
        assert!(
            e.message.ends_with("(got the default \"127.0.0.1:8080\")"),
            "{}",
            e.message
        );
        ok(&doc(&[
            "[admin]",
            "listen = \"127.0.0.1:0\"",
            "[[listeners]]",
            "listen = \"127.0.0.1:0\"",
            "[[listeners]]",
            "listen = \"127.0.0.1:0\"",
        ]));
    }

    #[test]
    fn orderings_point_at_the_key_that_was_written() {
        let src = doc(&[
            "[upstreams.a]",                                 // 1
            "endpoints = [\"a:1\"]",                         // 2
            "[upstreams.a.retry]",                           // 3
            "backoff_base = \"2s\"",                         // 4
            "[upstreams.a.breaker]",                         // 5
            "open_for_max = \"5s\"",                         // 6
            "[upstreams.a.shed]",                            // 7
            "max_in_flight = 100",                           // 8
            "min_limit = 101",                               // 9
            "adaptive = true",                               // 10
            "[upstreams.b]",                                 // 11
            "endpoints = [\"b:1\"]",                         // 12
            "retry = { backoff_cap = \"10ms\" }",            // 13
            "shed = { max_in_flight = 4, adaptive = true }", // 14
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(4, "upstreams.a.retry.backoff_base"),
                at(6, "upstreams.a.breaker.open_for_max"),
                at(9, "upstreams.a.shed.min_limit"),
                at(13, "upstreams.b.retry.backoff_cap"),
                at(14, "upstreams.b.shed.max_in_flight"),
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].message,
            "must not exceed backoff_cap = \"1s\" (got \"2s\")"
        );
        assert_eq!(
            all[1].message,
            "must be at least open_for = \"10s\" (got \"5s\")"
        );
        assert_eq!(
            all[2].message,
            "must not exceed max_in_flight = 100 (got 101)"
        );
        assert_eq!(
            all[3].message,
            "must be at least backoff_base = \"25ms\" (got \"10ms\")"
        );
        ok("[upstreams.a]\nendpoints = [\"a:1\"]\nretry = { backoff_base = \"1s\" }");
        // Without `adaptive`, `min_limit` is unused: a fixed limit below it (default 8) is fine.
        ok("[upstreams.a]\nendpoints = [\"a:1\"]\nshed = { max_in_flight = 4 }");
        ok("[upstreams.a]\nendpoints = [\"a:1\"]\nshed = { max_in_flight = 4, min_limit = 5 }");
    }

    #[test]
    fn dns_servers_only_with_dns() {
        let src = doc(&[
            "[upstreams.a]",                     // 1
            "endpoints = [\"a:1\"]",             // 2
            "dns_servers = [\"10.96.0.10:53\"]", // 3
            "[upstreams.b]",                     // 4
            "dns_servers = [\"10.96.0.10:53\"]", // 5
            "[upstreams.c]",                     // 6
            "dns = \"c.svc:80\"",                // 7
            "dns_servers = [\"10.96.0.10:53\"]", // 8
        ]);
        assert_eq!(
            errors(&src),
            vec![at(3, "upstreams.a.dns_servers"), at(4, "upstreams.b")]
        );
        assert_eq!(
            error_list(&src)[0].to_string(),
            "weir.toml:3: upstreams.a.dns_servers: `dns_servers` only applies with \
             `dns = \"host:port\"` (this upstream has static `endpoints`)"
        );
        let c = ok(
            "[upstreams.c]\ndns = \"c.svc:80\"\ndns_servers = [\"10.0.0.1:53\", \"[::1]:5353\"]",
        );
        assert_eq!(
            c.upstreams[0].dns_servers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
    }

    #[test]
    fn grpc_health_checks_need_http2() {
        let src = doc(&[
            "[upstreams.a]",             // 1
            "endpoints = [\"a:1\"]",     // 2
            "[upstreams.a.health]",      // 3
            "grpc = true",               // 4
            "[upstreams.b]",             // 5
            "endpoints = [\"b:1\"]",     // 6
            "protocol = \"http1\"",      // 7
            "health = { grpc = true }",  // 8
            "[upstreams.c]",             // 9
            "endpoints = [\"c:1\"]",     // 10
            "protocol = \"http2\"",      // 11
            "health = { grpc = true }",  // 12
            "[upstreams.d]",             // 13
            "endpoints = [\"d:1\"]",     // 14
            "health = { grpc = false }", // 15
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(4, "upstreams.a.health.grpc"),
                at(8, "upstreams.b.health.grpc")
            ]
        );
        let all = error_list(&src);
        assert_eq!(
            all[0].to_string(),
            "weir.toml:4: upstreams.a.health.grpc: gRPC health checks need \
             `protocol = \"http2\"` on the upstream: gRPC runs over HTTP/2 \
             (got the default protocol = \"http1\")"
        );
        assert!(
            all[1].message.ends_with("(got protocol = \"http1\")"),
            "{}",
            all[1].message
        );
        let c = ok(&doc(&[
            "[upstreams.c]",
            "endpoints = [\"c:1\"]",
            "protocol = \"http2\"",
            "health = { grpc = true, grpc_service = \"weir.test.Echo\" }",
        ]));
        let h = c.upstreams[0].health.as_ref().unwrap();
        assert!(h.grpc);
        assert_eq!(h.grpc_service, "weir.test.Echo");
    }

    #[test]
    fn a_bad_value_is_reported_once() {
        // The stand-in default of a bad value is not judged again by the cross-key checks.
        let src = doc(&[
            "[[listeners]]",                   // 1
            "listen = \"nowhere\"",            // 2
            "[[listeners]]",                   // 3
            "name = 5",                        // 4
            "[upstreams.a]",                   // 5
            "endpoints = [\"a:1\"]",           // 6
            "retry = { backoff_cap = \"x\" }", // 7
            "shed = { max_in_flight = 0 }",    // 8
        ]);
        assert_eq!(
            errors(&src),
            vec![
                at(2, "listeners[0].listen"),
                at(4, "listeners[1].name"),
                at(7, "upstreams.a.retry.backoff_cap"),
                at(8, "upstreams.a.shed.max_in_flight"),
            ]
        );
    }
}
