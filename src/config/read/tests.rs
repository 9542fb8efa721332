//! Reading end to end: each error's line, key path and message, and what valid input reads as.

use http::{HeaderName, Method};

use super::*;
use crate::config::render::quote;
use crate::config::tests::{at, doc, error_list, errors, ok, one_error};
use crate::config::{HashOn, RouteAction, UpstreamTls};

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
        "unknown key (expected one of: admin, listeners, drain, routes, upstreams, workers)"
    );
    assert_eq!(
        all[4].message,
        "unknown key (expected one of: endpoints, dns, dns_refresh, dns_servers, protocol, \
         connect_timeout, try_timeout, read_timeout, pool_idle_timeout, balance, hash_on, tls, retry, \
         breaker, shed, health, outlier, grpc, hedge)"
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
    let c = ok("[[routes]]\nrespond = { status = 599 }\n[[routes]]\nrespond = { status = 100 }");
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
    let e =
        one_error("[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { max_retries = 4294967296 }");
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
    let e = one_error("[upstreams.b]\nendpoints = [\"b:80\"]\nretry = { budget_window = \"61s\" }");
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
    let c = ok("[upstreams.zeta]\nendpoints = [\"z:1\"]\n[upstreams.alpha]\nendpoints = [\"a:1\"]");
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
