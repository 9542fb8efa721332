//! Self-tests of `support/`: every upstream option, the client, the metrics parser, polling.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::{Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{
    Client, Scrape, Toml, Upstream, build_request, eventually, eventually_async, io_error_kind,
    raw, scrape, upgrade,
};

const SETTLE: Duration = Duration::from_secs(5);

// === upstream: routing, headers, recording ===

#[tokio::test]
async fn default_route_answers_ok_and_routes_match_exactly() {
    let up = Upstream::http1()
        .route("/slow", 201, "slow")
        .header("x-up", "1")
        .start()
        .await;
    let c = Client::h1();

    let r = c.get(up.addr(), "/").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    assert_eq!(r.header("x-up"), Some("1"));
    assert_eq!(r.version, Version::HTTP_11);

    let r = c.get(up.addr(), "/slow").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (201, "slow"));
    assert_eq!(r.header("x-up"), Some("1"));

    let r = c.get(up.addr(), "/slow/more").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn requests_are_recorded_with_head_and_body() {
    let up = Upstream::http1().start().await;
    let c = Client::h1();
    let r = c
        .send(
            up.addr(),
            Method::POST,
            "/p?q=1",
            &[("x-k", "v"), ("x-k", "w")],
            "payload",
        )
        .await;
    assert_eq!(r.status, 200);

    let rec = up.last_request();
    assert_eq!(rec.method, Method::POST);
    assert_eq!(rec.uri.path(), "/p");
    assert_eq!(rec.uri.query(), Some("q=1"));
    assert_eq!(rec.version, Version::HTTP_11);
    let values: Vec<_> = rec
        .headers
        .get_all("x-k")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(values, ["v", "w"]);
    assert_eq!(&rec.body[..], b"payload");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn prepared_requests_keep_an_explicit_host() {
    let up = Upstream::http1().start().await;
    let mut req = build_request(Method::PUT, "/x", &[("host", "example.test")], "b".into());
    req.headers_mut().insert("x-extra", "1".parse().unwrap());
    let r = Client::h1().request(up.addr(), req).await;
    assert_eq!(r.status, 200);
    let rec = up.last_request();
    assert_eq!(rec.method, Method::PUT);
    assert_eq!(rec.headers["host"], "example.test");
    assert_eq!(rec.headers["x-extra"], "1");
}

// === upstream: protocols ===

#[tokio::test]
async fn http2_upstream_speaks_prior_knowledge_h2_only() {
    let up = Upstream::http2().route("/a", 202, "a").start().await;
    let r = Client::h2().get(up.addr(), "/a").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str(), r.version),
        (202, "a", Version::HTTP_2)
    );
    let rec = up.last_request();
    assert_eq!(rec.version, Version::HTTP_2);
    assert_eq!(rec.uri.path(), "/a");

    assert!(
        Client::h1().try_get(up.addr(), "/a").await.is_err(),
        "h1 must be refused"
    );
}

#[tokio::test]
async fn http1_upstream_refuses_h2() {
    let up = Upstream::http1().start().await;
    assert!(
        Client::h2().try_get(up.addr(), "/").await.is_err(),
        "h2 must be refused"
    );
}

#[tokio::test]
async fn auto_upstream_speaks_both() {
    let up = Upstream::auto().start().await;
    assert_eq!(
        Client::h1().get(up.addr(), "/").await.version,
        Version::HTTP_11
    );
    assert_eq!(
        Client::h2().get(up.addr(), "/").await.version,
        Version::HTTP_2
    );
    let versions: Vec<_> = up.requests().iter().map(|r| r.version).collect();
    assert_eq!(versions, [Version::HTTP_11, Version::HTTP_2]);
}

// === upstream: delays and failures ===

#[tokio::test]
async fn delay_holds_every_response() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(200))
        .start()
        .await;
    let start = Instant::now();
    assert_eq!(Client::h1().get(up.addr(), "/any").await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn route_delay_applies_to_its_path_only() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(10))
        .route_delay("/slow", Duration::from_millis(300))
        .start()
        .await;
    let c = Client::h1();
    let start = Instant::now();
    c.get(up.addr(), "/slow").await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    c.get(up.addr(), "/fast").await;
    let fast = start.elapsed();
    assert!(
        fast >= Duration::from_millis(10) && fast < Duration::from_millis(300),
        "{fast:?}"
    );
}

#[tokio::test]
async fn delay_first_slows_only_the_first_requests() {
    let up = Upstream::http1()
        .delay_first(1, Duration::from_millis(300))
        .start()
        .await;
    let c = Client::h1();
    let start = Instant::now();
    c.get(up.addr(), "/").await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = Instant::now();
    c.get(up.addr(), "/").await;
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn fail_first_fails_then_recovers_across_paths() {
    let up = Upstream::http1()
        .route("/b", 200, "b")
        .fail_first(2, 503)
        .header("x-up", "1")
        .start()
        .await;
    let c = Client::h1();
    let first = c.get(up.addr(), "/a").await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (503, "fail")
    );
    assert_eq!(first.header("x-up"), Some("1"));
    assert_eq!(c.get(up.addr(), "/b").await.status, 503);
    let third = c.get(up.addr(), "/b").await;
    assert_eq!((third.status.as_u16(), third.text().as_str()), (200, "b"));
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn reset_gives_a_transport_error_and_no_cancellation() {
    let up = Upstream::http1().reset().start().await;
    let c = Client::h1();
    for _ in 0..2 {
        let err = c
            .try_get(up.addr(), "/")
            .await
            .expect_err("reset must fail");
        assert_eq!(
            io_error_kind(&*err),
            Some(ErrorKind::ConnectionReset),
            "{err:?}"
        );
    }
    assert_eq!(up.hits(), 2);
    assert_eq!(up.connections(), 2);
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn reset_over_raw_tcp_returns_no_response() {
    let up = Upstream::http1().reset().start().await;
    let out = raw(up.addr(), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(out, "");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn reset_first_resets_then_serves() {
    let up = Upstream::http2().reset_first(1).start().await;
    let c = Client::h2();
    let err = c
        .try_get(up.addr(), "/")
        .await
        .expect_err("reset must fail");
    assert_eq!(
        io_error_kind(&*err),
        Some(ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert_eq!(c.get(up.addr(), "/").await.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn close_after_read_reads_the_body_then_closes() {
    let up = Upstream::http1().close_after_read().start().await;
    let body = vec![b'x'; 100_000];
    let reply = Client::h1()
        .try_send(up.addr(), Method::POST, "/u", &[], body.clone())
        .await;
    let err = reply.expect_err("no response expected");
    assert!(format!("{err:?}").contains("IncompleteMessage"), "{err:?}");
    assert_eq!(up.last_request().body.len(), body.len());
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn echo_streams_the_request_body_back() {
    let up = Upstream::auto().echo().header("x-up", "e").start().await;
    for c in [Client::h1(), Client::h2()] {
        let r = c
            .send(
                up.addr(),
                Method::POST,
                "/e",
                &[("x-in", "1")],
                "hello body",
            )
            .await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello body"));
        assert_eq!(r.header("x-up"), Some("e"));
    }
    let recs = up.requests();
    assert!(
        recs.iter()
            .all(|r| &r.body[..] == b"hello body" && r.headers["x-in"] == "1")
    );
}

#[tokio::test]
async fn upgrade_echoes_bytes_both_ways() {
    let up = Upstream::http1()
        .upgrade()
        .header("x-up", "1")
        .start()
        .await;
    let mut conn = upgrade(up.addr(), "/ws", "websocket").await;
    assert_eq!(conn.status, 101, "{}", conn.head);
    let head = conn.head.to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert_eq!(conn.exchange(b"ping").await, b"ping");
    assert_eq!(conn.exchange(b"second message").await, b"second message");

    // Requests without an Upgrade header are served normally.
    assert_eq!(Client::h1().get(up.addr(), "/").await.status, 200);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn upgrade_requests_without_the_option_get_a_plain_response() {
    let up = Upstream::http1().start().await;
    let conn = upgrade(up.addr(), "/ws", "websocket").await;
    assert_eq!(conn.status, 200, "{}", conn.head);
}

// === upstream: cancellation, hang, lifecycle ===

#[tokio::test]
async fn dropped_requests_count_as_cancelled_h1_and_h2() {
    for (up, c) in [
        (
            Upstream::http1()
                .delay(Duration::from_secs(30))
                .start()
                .await,
            Client::h1(),
        ),
        (
            Upstream::http2()
                .delay(Duration::from_secs(30))
                .start()
                .await,
            Client::h2(),
        ),
    ] {
        let attempt = tokio::time::timeout(Duration::from_millis(100), c.get(up.addr(), "/"));
        assert!(attempt.await.is_err(), "must still be waiting");
        assert_eq!(up.hits(), 1);
        eventually(|| up.cancelled() == 1, SETTLE).await;
    }
}

#[tokio::test]
async fn completed_requests_are_not_cancelled() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(20))
        .start()
        .await;
    let c = Client::h1();
    c.get(up.addr(), "/").await;
    drop(c); // closing the idle pooled connection is not a cancellation
    tokio::time::sleep(Duration::from_millis(50)).await; // a negative check: nothing to poll for
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn hang_reads_and_never_responds() {
    let up = Upstream::hang().start().await;
    let c = Client::h1();
    let post = c.send(up.addr(), Method::POST, "/h", &[], "body");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), post)
            .await
            .is_err()
    );
    assert_eq!(&up.last_request().body[..], b"body");
    eventually(|| up.cancelled() == 1, SETTLE).await;
}

#[tokio::test]
async fn connections_are_counted() {
    let up = Upstream::http1().start().await;
    let pooled = Client::h1();
    pooled.get(up.addr(), "/").await;
    pooled.get(up.addr(), "/").await;
    assert_eq!(up.connections(), 1);
    let fresh = Client::h1_no_pool();
    fresh.get(up.addr(), "/").await;
    fresh.get(up.addr(), "/").await;
    assert_eq!(up.connections(), 3);
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn dropping_the_upstream_closes_listener_and_connections() {
    let up = Upstream::http1().upgrade().start().await;
    let addr = up.addr();
    let mut upgraded = upgrade(addr, "/", "raw").await;
    assert_eq!(upgraded.exchange(b"x").await, b"x");
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    drop(up);
    let closed = tokio::time::timeout(SETTLE, kept.read(&mut buf))
        .await
        .expect("still open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let closed = tokio::time::timeout(SETTLE, upgraded.stream.read_to_end(&mut Vec::new())).await;
    assert!(closed.is_ok(), "the upgraded stream must be closed");
    eventually_async(|| async { TcpStream::connect(addr).await.is_err() }, SETTLE).await;
}

#[tokio::test]
async fn dropping_the_upstream_stops_its_pending_handlers() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    for (up, hits) in [
        (Upstream::http1(), 1),
        (Upstream::http2(), 1),
        (Upstream::auto(), 2),
    ] {
        let up = up.never_respond().start().await;
        let addr = up.addr();
        // Both peers stay connected and waiting: only the drop can end the handlers.
        let mut h1 = TcpStream::connect(addr).await.unwrap();
        h1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let h2 = tokio::spawn(async move { Client::h2().try_get(addr, "/").await.is_err() });
        eventually(|| up.hits() == hits, SETTLE).await;

        drop(up);
        assert!(
            h2.await.unwrap(),
            "the h2 request must fail once the upstream is gone"
        );
        let closed = tokio::time::timeout(SETTLE, h1.read_to_end(&mut Vec::new())).await;
        assert!(
            closed.is_ok(),
            "the h1 connection must be closed once the upstream is gone"
        );
    }
    eventually(|| tasks() == before, SETTLE).await;
}

// === client ===

#[tokio::test]
async fn raw_returns_what_the_server_wrote() {
    let up = Upstream::http1().start().await;
    let out = raw(up.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    let out = raw(
        up.addr(),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
        "{out:?}"
    );
}

#[tokio::test]
async fn try_get_reports_connection_refused() {
    let addr = {
        let up = Upstream::http1().start().await;
        up.addr()
    };
    eventually_async(
        || async { Client::h1().try_get(addr, "/").await.is_err() },
        SETTLE,
    )
    .await;
}

// === upstream: knobs turned while it runs ===

#[tokio::test]
async fn health_checks_are_counted_apart_and_answer_what_set_health_says() {
    let up = Upstream::http1().health("/healthz").start().await;
    let c = Client::h1();
    assert_eq!(c.get(up.addr(), "/healthz").await.status, 200);
    up.set_health(503);
    assert_eq!(c.get(up.addr(), "/healthz").await.status, 503);
    assert_eq!((up.checks(), up.hits()), (2, 0));
    assert!(up.requests().is_empty(), "a health check is not recorded");
    // Other paths are requests as usual; the first after the checks is request 0.
    let up = Upstream::http1()
        .health("/healthz")
        .fail_first(1, 502)
        .start()
        .await;
    assert_eq!(c.get(up.addr(), "/healthz").await.status, 200);
    assert_eq!(c.get(up.addr(), "/x").await.status, 502);
    assert_eq!((up.checks(), up.hits()), (1, 1));
}

#[tokio::test]
async fn set_status_and_set_delay_change_the_answers_from_the_next_request_on() {
    let up = Upstream::http1().start().await;
    let c = Client::h1();
    up.set_status(503);
    let r = c.get(up.addr(), "/").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "fail")
    );
    up.set_status(200);
    assert_eq!(c.get(up.addr(), "/").await.text(), "ok");

    up.set_delay(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(c.get(up.addr(), "/").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(up.hits(), 3);
}

// === toml ===

#[test]
fn toml_puts_keys_in_the_table_added_last_and_dotted_keys_in_sub_tables() {
    let a: std::net::SocketAddr = "127.0.0.1:1001".parse().unwrap();
    let text = Toml::new()
        .route("r1", "u1")
        .set("timeout", "300ms")
        .set("match.path_prefix", "/api")
        .respond("r2", 418)
        .set("respond.body", "tea")
        .split("r3", &[("u1", 9), ("u2", 1)])
        .upstream("u1", &[a])
        .set("retry.max_retries", 0)
        .set("outlier.mode", "off")
        .listener("main")
        .set("max_connections", 1)
        .table("drain")
        .set("delay", "0s")
        .to_string();
    let doc: ::toml::Table = text.parse().unwrap();
    let routes = doc["routes"].as_array().unwrap();
    assert_eq!(routes[0]["name"].as_str(), Some("r1"), "{text}");
    assert_eq!(routes[0]["upstream"].as_str(), Some("u1"));
    assert_eq!(routes[0]["timeout"].as_str(), Some("300ms"));
    assert_eq!(routes[0]["match"]["path_prefix"].as_str(), Some("/api"));
    assert_eq!(routes[1]["respond"]["status"].as_integer(), Some(418));
    assert_eq!(routes[1]["respond"]["body"].as_str(), Some("tea"));
    assert_eq!(routes[2]["split"][1]["upstream"].as_str(), Some("u2"));
    assert_eq!(routes[2]["split"][0]["weight"].as_integer(), Some(9));
    let u1 = &doc["upstreams"]["u1"];
    assert_eq!(u1["endpoints"][0].as_str(), Some("127.0.0.1:1001"));
    assert_eq!(u1["retry"]["max_retries"].as_integer(), Some(0));
    assert_eq!(u1["outlier"]["mode"].as_str(), Some("off"));
    assert_eq!(doc["listeners"][0]["max_connections"].as_integer(), Some(1));
    assert_eq!(doc["drain"]["delay"].as_str(), Some("0s"));
}

#[test]
fn toml_renders_a_config_that_weir_reads() {
    let a: std::net::SocketAddr = "127.0.0.1:1001".parse().unwrap();
    let cfg = Toml::one_route("api", "api-up", &[a])
        .set("breaker.consecutive_failures", 3)
        .set("shed.queue_timeout", "20ms")
        .route("other", "api-up")
        .set("match.headers.x-canary", "1")
        .set("rate_limit.rps", 0.5)
        .path("fault.allow_header", std::path::Path::new("/not/a/bool"));
    // A wrong value type is weir's error, reported as for a file.
    let err = weir::Config::from_toml(&cfg.to_string(), "t.toml").unwrap_err();
    assert!(
        err.to_string().contains("routes[1].fault.allow_header"),
        "{err}"
    );
    let cfg = cfg.set("fault.allow_header", true).to_string();
    weir::Config::from_toml(&cfg, "t.toml").unwrap_or_else(|e| panic!("{e}\n{cfg}"));
}

// === metrics ===

const PAGE: &str = r#"# HELP weir_requests_total Requests.
# TYPE weir_requests_total counter
weir_requests_total{route="a",status="200"} 3
weir_requests_total{route="a",status="503"} 2
weir_requests_total{route="b",status="200",extra="x"} 7 1712345678000
weir_requests_total{route="we\"ird, {x}=1\\",status="200"} 1
weir_in_flight 4
# TYPE weir_request_duration_seconds histogram
weir_request_duration_seconds_bucket{route="a",le="0.1"} 1
weir_request_duration_seconds_bucket{route="a",le="+Inf"} 5
weir_request_duration_seconds_sum{route="a"} 0.75
weir_request_duration_seconds_count{route="a"} 5
weir_gauge_inf{k="v"} +Inf
weir_build_info{version="0.1.0",note="line\nbreak"} 1
"#;

#[test]
fn metrics_get_picks_the_sample_with_all_given_labels() {
    let s = Scrape::parse(PAGE);
    assert_eq!(
        s.get("weir_requests_total", &[("route", "a"), ("status", "200")]),
        Some(3.0)
    );
    assert_eq!(
        s.get("weir_requests_total", &[("route", "a"), ("status", "503")]),
        Some(2.0)
    );
    assert_eq!(s.get("weir_requests_total", &[("route", "b")]), Some(7.0));
    assert_eq!(s.get("weir_requests_total", &[("route", "c")]), None);
    assert_eq!(
        s.get("weir_requests_total", &[("route", "a"), ("status", "404")]),
        None
    );
    assert_eq!(
        s.get("weir_request", &[("route", "a")]),
        None,
        "names match exactly"
    );
    assert_eq!(s.get("weir_in_flight", &[]), Some(4.0));
    assert_eq!(s.get("weir_gauge_inf", &[]), Some(f64::INFINITY));
}

#[test]
fn metrics_unescapes_label_values() {
    let s = Scrape::parse(PAGE);
    assert_eq!(
        s.get("weir_requests_total", &[("route", r#"we"ird, {x}=1\"#)]),
        Some(1.0)
    );
    assert_eq!(
        s.get("weir_build_info", &[("note", "line\nbreak")]),
        Some(1.0)
    );
    assert_eq!(s.get("weir_build_info", &[("version", "0.1.0")]), Some(1.0));
}

#[test]
fn metrics_sum_adds_matching_samples_and_has_knows_histogram_series() {
    let s = Scrape::parse(PAGE);
    assert_eq!(s.sum("weir_requests_total", &[("status", "200")]), 11.0);
    assert_eq!(s.sum("weir_requests_total", &[]), 13.0);
    assert_eq!(s.sum("weir_requests_total", &[("route", "zzz")]), 0.0);
    let bucket = "weir_request_duration_seconds_bucket";
    assert_eq!(s.get(bucket, &[("route", "a"), ("le", "+Inf")]), Some(5.0));
    assert_eq!(s.get(bucket, &[("route", "a"), ("le", "0.1")]), Some(1.0));
    assert_eq!(
        s.get("weir_request_duration_seconds_count", &[("route", "a")]),
        Some(5.0)
    );
    assert!(s.has("weir_request_duration_seconds"), "declared by # TYPE");
    assert!(s.has("weir_request_duration_seconds_sum"));
    assert!(s.has("weir_in_flight"));
    assert!(!s.has("weir_requests"));
    assert!(!s.has("HELP"));
    assert_eq!(s.samples().len(), 11);
    assert_eq!(s.text(), PAGE);
}

#[test]
#[should_panic(expected = "matches 3 samples")]
fn metrics_get_refuses_an_ambiguous_lookup() {
    Scrape::parse(PAGE).get("weir_requests_total", &[("status", "200")]);
}

#[tokio::test]
async fn scrape_fetches_and_parses_metrics() {
    let admin = Upstream::http1().route("/metrics", 200, PAGE).start().await;
    let s = scrape(admin.addr()).await;
    assert_eq!(s.get("weir_requests_total", &[("route", "b")]), Some(7.0));
    assert_eq!(admin.last_request().uri.path(), "/metrics");
}

// === eventually ===

#[tokio::test]
async fn eventually_waits_for_the_condition() {
    let calls = AtomicUsize::new(0);
    let start = Instant::now();
    eventually(|| calls.fetch_add(1, SeqCst) >= 3, SETTLE).await;
    assert_eq!(calls.load(SeqCst), 4);
    assert!(start.elapsed() >= Duration::from_millis(30));

    let flag = Arc::new(AtomicUsize::new(0));
    let setter = flag.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        setter.store(1, SeqCst);
    });
    eventually_async(|| async { flag.load(SeqCst) == 1 }, SETTLE).await;
}

#[tokio::test]
#[should_panic(expected = "condition still false after")]
async fn eventually_panics_after_the_timeout() {
    eventually(|| false, Duration::from_millis(50)).await;
}

#[tokio::test]
#[should_panic(expected = "condition still false after")]
async fn eventually_async_panics_after_the_timeout() {
    eventually_async(|| async { false }, Duration::from_millis(50)).await;
}
