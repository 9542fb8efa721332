//! gRPC through weir: a real tonic server and client (classification, retries, deadlines,
//! weir's own errors as gRPC).

// The helpers below are test code too: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::support::grpc::{
    Call, GrpcClient, GrpcUpstream, Reply, UNARY, grpc_request, parse_grpc_timeout,
};
use crate::support::{Client, Toml, Weir, eventually, scrape};

const SECS: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A config with one route `route` (every path) to the HTTP/2 upstream `upstream` at
/// `endpoints`; keys set next go to the upstream.
fn grpc_route(route: &str, upstream: &str, endpoints: &[SocketAddr]) -> Toml {
    Toml::one_route(route, upstream, endpoints).set("protocol", "http2")
}

/// The `x-weir-error` of a status (`None`: not weir's own error).
fn weir_error(s: &Status) -> Option<&str> {
    s.metadata()
        .get("x-weir-error")
        .and_then(|v| v.to_str().ok())
}

/// The `grpc-retry-pushback-ms` of a status; panics when absent or not a number.
fn pushback_ms(s: &Status) -> u64 {
    s.metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {s:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("grpc-retry-pushback-ms is not a number ({e}): {s:?}"))
}

/// Asserts that `s` is weir's own error `reason`, as gRPC status `code`.
fn assert_weir_error(s: &Status, code: Code, reason: &str) {
    assert_eq!(
        (s.code(), weir_error(s)),
        (code, Some(reason)),
        "weir's {reason} as gRPC: {s:?}"
    );
}

/// Polls `/metrics` until the sum of `name{labels}` satisfies `want`; panics with the samples
/// after 5 s.
async fn metric_until(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: impl Fn(f64) -> bool,
) {
    let deadline = Instant::now() + SECS;
    loop {
        let m = scrape(admin).await;
        let got = m.sum(name, labels);
        if want(got) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name}{labels:?} is still {got} after {SECS:?}: {:#?}",
                m.matching(name, &[])
            );
        }
        tokio::time::sleep(ms(20)).await;
    }
}

// === the test server itself ===

#[tokio::test]
async fn the_test_server_answers_a_tonic_client_as_scripted() {
    let up = GrpcUpstream::new()
        .fail_first(1, Code::Unavailable)
        .stream_then_fail(2, Code::Internal)
        .start()
        .await;
    let c = GrpcClient::new(up.addr());
    let first = c.unary(Call::named("a")).await.unwrap_err();
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    assert_eq!(
        c.unary(Call::named("b")).await.unwrap(),
        Reply {
            name: "b".into(),
            index: 0
        }
    );
    let (replies, end) = c.stream(Call::named("s")).await;
    assert_eq!(
        replies.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1],
        "{replies:?}"
    );
    assert_eq!(end.unwrap_err().code(), Code::Internal);
    let mut timed = tonic::Request::new(Call::named("t"));
    timed.set_timeout(ms(300));
    c.unary(timed).await.unwrap();
    let unknown = c
        .unary_at("/weir.test.Echo/Nope", Call::named("x"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");

    assert_eq!(up.calls(), 4, "the unknown method is no call");
    let timeouts = up.seen_timeouts();
    assert_eq!(timeouts[..3], [None, None, None]);
    assert_eq!(timeouts[3].as_deref(), Some("300000u"));
    assert_eq!(parse_grpc_timeout("300000u"), Some(ms(300)));
}

#[tokio::test]
async fn the_test_server_sends_an_early_error_trailers_only_and_a_late_one_in_the_trailers() {
    let failing = GrpcUpstream::new().always(Code::Unavailable).start().await;
    let late = GrpcUpstream::new()
        .stream_then_fail(1, Code::Unavailable)
        .start()
        .await;
    let c = Client::h2();
    let r = c
        .request(failing.addr(), grpc_request(UNARY, &Call::named("a")))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"), "in the head: {r:?}");
    assert!(r.body.is_empty(), "no message: {r:?}");

    let stream = crate::support::grpc::STREAM;
    let r = c
        .request(late.addr(), grpc_request(stream, &Call::named("b")))
        .await;
    assert_eq!(r.header("grpc-status"), None, "not in the head: {r:?}");
    assert!(!r.body.is_empty(), "one message: {r:?}");
}

// === classification and retries ===

#[tokio::test]
async fn unavailable_trailers_only_is_retried_and_the_client_sees_ok() {
    let up = GrpcUpstream::new()
        .fail_first(1, Code::Unavailable)
        .start()
        .await;
    let weir = Weir::start(grpc_route("g-retry", "g-retry-up", &[up.addr()])).await;
    let c = GrpcClient::new(weir.addr());
    let reply = c.unary(Call::named("again")).await.expect("retried to OK");
    assert_eq!(reply.name, "again");
    assert_eq!(up.calls(), 2, "the first try and one retry");
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.get(
            "weir_retries_total",
            &[
                ("route", "g-retry"),
                ("upstream", "g-retry-up"),
                ("reason", "grpc-status")
            ]
        ),
        Some(1.0),
        "{:#?}",
        m.matching("weir_retries_total", &[])
    );
}

#[tokio::test]
async fn unavailable_after_a_streamed_message_is_not_retried() {
    let up = GrpcUpstream::new()
        .stream_then_fail(1, Code::Unavailable)
        .start()
        .await;
    let weir = Weir::start(grpc_route("g-late", "g-late-up", &[up.addr()])).await;
    let c = GrpcClient::new(weir.addr());
    let (replies, end) = c.stream(Call::named("once")).await;
    assert_eq!(
        replies,
        [Reply {
            name: "once".into(),
            index: 0
        }]
    );
    let status = end.expect_err("UNAVAILABLE after the message");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(weir_error(&status), None, "the upstream's own status");
    assert_eq!(up.calls(), 1, "not retried");
    let m = scrape(weir.admin()).await;
    assert_eq!(m.sum("weir_retries_total", &[("route", "g-late")]), 0.0);
}

#[tokio::test]
async fn five_unavailable_calls_open_the_breaker_and_the_next_is_refused_with_pushback() {
    let up = GrpcUpstream::new().always(Code::Unavailable).start().await;
    let cfg = grpc_route("g-breaker", "g-breaker-up", &[up.addr()])
        .set("retry.max_retries", 0)
        .set("breaker.consecutive_failures", 5)
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    for i in 0..5 {
        let s = c.unary(Call::named("down")).await.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "call {i}: {s:?}");
        assert_eq!(weir_error(&s), None, "call {i} reached the upstream: {s:?}");
    }
    metric_until(
        weir.admin(),
        "weir_circuit_state",
        &[("upstream", "g-breaker-up")],
        |v| v == 1.0,
    )
    .await;
    let s = c.unary(Call::named("refused")).await.unwrap_err();
    assert_weir_error(&s, Code::Unavailable, "circuit-open");
    assert!(pushback_ms(&s) > 0, "{s:?}");
    assert_eq!(up.calls(), 5, "the refused call never reached the upstream");
}

#[tokio::test]
async fn an_endpoint_answering_internal_is_ejected() {
    let good = GrpcUpstream::new().start().await;
    let bad = GrpcUpstream::new().always(Code::Internal).start().await;
    let cfg = grpc_route("g-outlier", "g-outlier-up", &[good.addr(), bad.addr()])
        .set("balance", "round_robin")
        .set("retry.max_retries", 0)
        // Alternating OK and INTERNAL is a 50 % failure rate: keep the breaker out of it.
        .set("breaker.mode", "off")
        .set("outlier.consecutive_failures", 5)
        .set("outlier.base_ejection", "30s");
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    // Round robin: every other call goes to the bad endpoint, so 10 calls give it 5 in a row.
    let mut internal = 0;
    for _ in 0..10 {
        match c.unary(Call::named("rr")).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::Internal && weir_error(&s).is_none() => internal += 1,
            Err(s) => panic!("neither OK nor the upstream's INTERNAL: {s:?}"),
        }
    }
    assert_eq!(internal, 5, "round robin over two endpoints");
    metric_until(
        weir.admin(),
        "weir_endpoint_ejections_total",
        &[("upstream", "g-outlier-up")],
        |v| v >= 1.0,
    )
    .await;
    let before = bad.calls();
    for i in 0..10 {
        let r = c.unary(Call::named("after")).await;
        assert!(r.is_ok(), "call {i} after the ejection: {r:?}");
    }
    assert_eq!(bad.calls(), before, "the ejected endpoint got no call");
}

// === deadlines ===

#[tokio::test]
async fn a_grpc_timeout_bounds_the_call_and_the_upstream_sees_what_remains() {
    let up = GrpcUpstream::new().delay(SECS).start().await;
    let weir = Weir::start(grpc_route("g-deadline", "g-deadline-up", &[up.addr()])).await;
    let c = GrpcClient::new(weir.addr());
    let mut req = tonic::Request::new(Call::named("late"));
    req.set_timeout(ms(200));
    let started = Instant::now();
    let s = c.unary(req).await.unwrap_err();
    let took = started.elapsed();
    assert_weir_error(&s, Code::DeadlineExceeded, "upstream-timeout");
    assert!(
        took >= ms(190) && took < ms(2000),
        "answered after {took:?}"
    );
    let seen = up.seen_timeouts();
    assert_eq!(seen.len(), 1, "one try: {seen:?}");
    let sent = seen[0].as_deref().expect("a grpc-timeout upstream");
    let left = parse_grpc_timeout(sent).unwrap_or_else(|| panic!("bad grpc-timeout {sent:?}"));
    assert!(
        left > Duration::ZERO && left <= ms(200),
        "grpc-timeout upstream {sent:?}"
    );
    eventually(|| up.cancelled() == 1, SECS).await;
}

// === weir's own errors, as gRPC statuses ===

#[tokio::test]
async fn no_route_is_unimplemented() {
    let up = GrpcUpstream::new().start().await;
    let cfg = Toml::new()
        .route("g-noroute", "g-noroute-up")
        .set("match.path_prefix", "/weir.test.Echo/")
        .upstream("g-noroute-up", &[up.addr()])
        .set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    let s = c
        .unary_at("/weir.test.Other/Unary", Call::named("lost"))
        .await
        .unwrap_err();
    assert_weir_error(&s, Code::Unimplemented, "no-route");
    assert!(
        c.unary(Call::named("found")).await.is_ok(),
        "the route serves"
    );
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn weirs_own_error_is_http_200_trailers_only() {
    let weir = Weir::start(
        Toml::new()
            .respond("g-raw-other", 200)
            .set("match.path_prefix", "/x"),
    )
    .await;
    let r = Client::h2()
        .request(weir.addr(), grpc_request(UNARY, &Call::named("raw")))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("12"), "in the head: {r:?}");
    assert_eq!(r.header("x-weir-error"), Some("no-route"), "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc")),
        "{r:?}"
    );
    assert!(r.body.is_empty(), "trailers-only: no body: {r:?}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let (_held, closed) = crate::support::closed_port();
    let cfg = grpc_route("g-connect", "g-connect-up", &[closed]).set("retry.max_retries", 0);
    let weir = Weir::start(cfg).await;
    let s = GrpcClient::new(weir.addr())
        .unary(Call::named("nobody"))
        .await
        .unwrap_err();
    assert_weir_error(&s, Code::Unavailable, "upstream-connect");
}

#[tokio::test]
async fn the_rate_limit_is_resource_exhausted_with_pushback() {
    let up = GrpcUpstream::new().start().await;
    let cfg = Toml::new()
        .route("g-rate", "g-rate-up")
        .set("rate_limit.rps", 0.1)
        .set("rate_limit.burst", 1)
        .upstream("g-rate-up", &[up.addr()])
        .set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    c.unary(Call::named("first"))
        .await
        .expect("within the burst");
    let s = c.unary(Call::named("second")).await.unwrap_err();
    assert_weir_error(&s, Code::ResourceExhausted, "rate-limited");
    assert!(pushback_ms(&s) > 0, "{s:?}");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn load_shedding_is_unavailable_with_pushback() {
    let up = GrpcUpstream::new().delay(SECS).start().await;
    let cfg = grpc_route("g-shed", "g-shed-up", &[up.addr()])
        .set("shed.max_in_flight", 1)
        .set("shed.queue", 0);
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.unary(Call::named("slow")).await })
    };
    eventually(|| up.calls() == 1, SECS).await;
    let s = c.unary(Call::named("shed")).await.unwrap_err();
    assert_weir_error(&s, Code::Unavailable, "overloaded");
    assert!(pushback_ms(&s) > 0, "{s:?}");
    assert_eq!(up.calls(), 1, "the shed call never reached the upstream");
    slow.abort();
}

#[tokio::test]
async fn an_injected_abort_is_its_status_mapped_to_grpc() {
    let up = GrpcUpstream::new().start().await;
    let cfg = Toml::new()
        .route("g-fault", "g-fault-up")
        .set("fault.abort_percent", 100.0)
        .set("fault.abort_status", 503)
        .upstream("g-fault-up", &[up.addr()])
        .set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    let s = GrpcClient::new(weir.addr())
        .unary(Call::named("aborted"))
        .await
        .unwrap_err();
    assert_weir_error(&s, Code::Unavailable, "fault-injected");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_message_over_the_body_limit_is_resource_exhausted() {
    let up = GrpcUpstream::new().start().await;
    let cfg = Toml::new()
        .listener("main")
        .set("max_body_bytes", 1024)
        .route("g-big", "g-big-up")
        .upstream("g-big-up", &[up.addr()])
        .set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    let c = GrpcClient::new(weir.addr());
    let big = Call {
        padding: vec![7; 64 * 1024],
        ..Call::named("big")
    };
    let s = c.unary(big).await.unwrap_err();
    assert_weir_error(&s, Code::ResourceExhausted, "payload-too-large");
    assert_eq!(up.calls(), 0, "no whole message reached the upstream");
    assert!(
        c.unary(Call::named("small")).await.is_ok(),
        "a small one passes"
    );
}

// === metrics ===

#[tokio::test]
async fn an_ok_call_is_counted_with_its_grpc_code_and_a_plain_request_with_none() {
    let up = GrpcUpstream::new().start().await;
    let cfg = Toml::new()
        .respond("g-metrics-plain", 200)
        .set("match.path_prefix", "/plain")
        .route("g-metrics", "g-metrics-up")
        .upstream("g-metrics-up", &[up.addr()])
        .set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    GrpcClient::new(weir.addr())
        .unary(Call::named("counted"))
        .await
        .expect("OK");
    let plain = Client::h1().get(weir.addr(), "/plain").await;
    assert_eq!(plain.status, 200);
    metric_until(
        weir.admin(),
        "weir_requests_total",
        &[("route", "g-metrics"), ("grpc_code", "OK")],
        |v| v == 1.0,
    )
    .await;
    metric_until(
        weir.admin(),
        "weir_grpc_responses_total",
        &[
            ("route", "g-metrics"),
            ("upstream", "g-metrics-up"),
            ("code", "OK"),
        ],
        |v| v == 1.0,
    )
    .await;
    metric_until(
        weir.admin(),
        "weir_requests_total",
        &[("route", "g-metrics-plain"), ("grpc_code", "")],
        |v| v == 1.0,
    )
    .await;
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.sum("weir_grpc_responses_total", &[("route", "g-metrics-plain")]),
        0.0,
        "a plain request is no gRPC response"
    );
}
