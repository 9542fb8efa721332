//! Forwarding, header hygiene, h1/h2, upgrades, limits, timeouts and 4xx on malformed input.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Client, Toml, Upstream, Weir, eventually, raw, upgrade};

const SECS: Duration = Duration::from_secs(5);

#[tokio::test]
async fn forwards_h1_and_sets_forwarding_headers() {
    let up = Upstream::http1()
        .route("/hello", 200, "world")
        .header("x-up", "1")
        .start()
        .await;
    let weir = Weir::start(Toml::one_route("fwd", "fwd-up", &[up.addr()])).await;

    let r = Client::h1()
        .send(
            weir.addr(),
            Method::GET,
            "/hello?q=1",
            &[("host", "app.example:8080")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "world");
    assert_eq!(r.header("x-up"), Some("1"));
    assert_eq!(r.header("via"), Some("1.1 weir"));

    let seen = up.last_request();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/hello?q=1");
    let h = |n: &str| seen.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        h("host").as_deref(),
        Some("app.example:8080"),
        "Host is kept"
    );
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-forwarded-host").as_deref(), Some("app.example:8080"));
    assert_eq!(h("via").as_deref(), Some("1.1 weir"));
    let id = h("x-request-id").expect("request id generated");
    assert_eq!(id.len(), 36);
    assert_eq!(
        r.header("x-request-id"),
        Some(id.as_str()),
        "same id returned downstream"
    );
    assert!(
        h("traceparent").is_some_and(|t| t.len() == 55),
        "a trace is started"
    );
}

#[tokio::test]
async fn request_id_and_traceparent_are_propagated() {
    let up = Upstream::http1().start().await;
    let weir = Weir::start(Toml::one_route("ids", "ids-up", &[up.addr()])).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = Client::h1()
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-request-id", "req-42"), ("traceparent", tp)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let seen = up.last_request();
    assert_eq!(seen.headers["x-request-id"], "req-42");
    let out = seen.headers["traceparent"].to_str().unwrap();
    assert_eq!(&out[..36], &tp[..36], "same trace id");
    assert_ne!(&out[36..52], &tp[36..52], "new span id");
    assert!(out.ends_with("-01"), "flags kept");
}

#[tokio::test]
async fn h2_downstream_to_h1_upstream_and_h1_downstream_to_h2_upstream() {
    let up1 = Upstream::http1().route("/", 200, "from-h1").start().await;
    let up2 = Upstream::http2().route("/", 200, "from-h2").start().await;
    let cfg = Toml::new()
        .route("to-h2", "h2-up")
        .set("match.path_prefix", "/h2")
        .upstream("h2-up", &[up2.addr()])
        .set("protocol", "http2")
        .route("to-h1", "h1-up")
        .upstream("h1-up", &[up1.addr()]);
    let weir = Weir::start(cfg).await;

    let r = Client::h2().get(weir.addr(), "/").await;
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_2));
    assert_eq!(r.text(), "from-h1");
    let seen = up1.last_request();
    assert_eq!(seen.version, Version::HTTP_11);
    assert!(
        seen.headers.contains_key("host"),
        "h1 upstream gets a Host from :authority"
    );
    assert_eq!(seen.headers["via"], "2 weir");

    let r = Client::h1().get(weir.addr(), "/h2").await;
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_11));
    assert_eq!(up2.last_request().version, Version::HTTP_2);
    assert_eq!(up2.hits(), 1);
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = Upstream::http1().echo().start().await;
    let weir = Weir::start(Toml::one_route("echo", "echo-up", &[up.addr()])).await;
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = Client::h1()
        .send(weir.addr(), Method::POST, "/e", &[], body.clone())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    let r = Client::h2()
        .send(weir.addr(), Method::PUT, "/e", &[], body.clone())
        .await;
    assert!(r.body == body, "echoed body over h2 differs");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = Upstream::http1()
        .header("keep-alive", "timeout=5")
        .header("proxy-authenticate", "Basic")
        .header("x-kept", "yes")
        .start()
        .await;
    let weir = Weir::start(Toml::one_route("hop", "hop-up", &[up.addr()])).await;
    let r = Client::h1()
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=9"),
                ("proxy-authorization", "Basic abc"),
                ("te", "gzip"),
                ("x-normal", "1"),
            ],
            Bytes::new(),
        )
        .await;
    let seen = up.last_request();
    for name in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-normal"], "1");
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert_eq!(r.header("keep-alive"), None);
    assert_eq!(r.header("proxy-authenticate"), None);
}

#[tokio::test]
async fn router_matches_host_path_method_header_in_file_order() {
    let a = Upstream::http1()
        .route("/", 200, "a")
        .route("/api/x", 200, "a")
        .start()
        .await;
    let b = Upstream::http1().route("/api/x", 200, "b").start().await;
    let cfg = Toml::new()
        .route("canary", "rb")
        .set("match.path_prefix", "/api")
        .set("match.headers.x-canary", "1")
        .respond("api-writes", 202)
        .set("respond.body", "accepted")
        .set("match.path_prefix", "/api")
        .set("match.methods", vec!["POST"])
        .set("match.host", "api.example.com")
        .route("api", "ra")
        .set("match.path_prefix", "/api")
        .respond("teapot", 418)
        .set("respond.body", "short and stout")
        .set("respond.headers.x-tea", "earl-grey")
        .set("match.host", "*.tea.example")
        .upstream("ra", &[a.addr()])
        .upstream("rb", &[b.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    assert_eq!(c.get(weir.addr(), "/api/x").await.text(), "a");
    let canary = c
        .send(
            weir.addr(),
            Method::GET,
            "/api/x",
            &[("x-canary", "1")],
            Bytes::new(),
        )
        .await;
    assert_eq!(canary.text(), "b", "earlier route wins");
    let post = c
        .send(
            weir.addr(),
            Method::POST,
            "/api/x",
            &[("host", "api.example.com")],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (post.status.as_u16(), post.text().as_str()),
        (202, "accepted")
    );
    let post_other_host = c
        .send(weir.addr(), Method::POST, "/api/x", &[], Bytes::new())
        .await;
    assert_eq!(post_other_host.text(), "a", "host must match too");
    let tea = c
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("host", "cup.tea.example")],
            Bytes::new(),
        )
        .await;
    assert_eq!(tea.status, 418);
    assert_eq!(tea.header("x-tea"), Some("earl-grey"));
    assert_eq!(tea.text(), "short and stout");

    let miss = c.get(weir.addr(), "/nothing").await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.header("x-weir-error"), Some("no-route"));
    assert_eq!(miss.header("content-type"), Some("application/json"));
    assert_eq!(
        miss.text(),
        "{\"error\":\"no-route\",\"route\":\"\",\"upstream\":\"\"}\n"
    );
}

#[tokio::test]
async fn endpoints_are_picked_round_robin() {
    let a = Upstream::http1().start().await;
    let b = Upstream::http1().start().await;
    let cfg = Toml::one_route("rr", "rr-up", &[a.addr(), b.addr()]).set("balance", "round_robin");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..10 {
        assert_eq!(c.get(weir.addr(), "/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));
}

/// Each way of not reaching an upstream answers with its own status and `x-weir-error`.
#[tokio::test]
async fn refused_reset_and_silent_upstreams_answer_502_or_504_with_their_own_reason() {
    let (_held, closed) = crate::support::closed_port();
    let reset = Upstream::http1().reset().start().await;
    let hang = Upstream::hang().start().await;
    let cfg = Toml::new()
        .route("conn", "conn-up")
        .set("match.path_prefix", "/connect")
        .upstream("conn-up", &[closed])
        .route("reset", "reset-up")
        .set("match.path_prefix", "/reset")
        .upstream("reset-up", &[reset.addr()])
        .route("slow", "slow-up")
        .set("timeout", "300ms")
        .upstream("slow-up", &[hang.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();

    let r = c.get(weir.addr(), "/connect").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (502, Some("upstream-connect"))
    );
    assert_eq!(
        r.text(),
        "{\"error\":\"upstream-connect\",\"route\":\"conn\",\"upstream\":\"conn-up\"}\n"
    );

    let r = c.get(weir.addr(), "/reset").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (502, Some("upstream-reset"))
    );

    let started = tokio::time::Instant::now();
    let r = c.get(weir.addr(), "/slow").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (504, Some("upstream-timeout"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "deadline honoured"
    );
    // The hanging upstream's request was cancelled when the deadline fired.
    eventually(|| hang.cancelled() == 1, SECS).await;
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    let up = Upstream::http1()
        .delay(Duration::from_secs(5))
        .start()
        .await;
    let weir = Weir::start(Toml::one_route("gone", "gone-up", &[up.addr()])).await;
    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(|| up.hits() == 1, SECS).await;
    drop(s);
    eventually(|| up.cancelled() == 1, SECS).await;
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_nothing_forwarded() {
    // Content-Length with Transfer-Encoding: see `hardening.rs` (read as chunked, then closed).
    let up = Upstream::http1().start().await;
    let weir = Weir::start(Toml::one_route("frame", "frame-up", &[up.addr()])).await;
    let conflict = raw(
        weir.addr(),
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
    )
    .await;
    assert!(conflict.starts_with("HTTP/1.1 400"), "{conflict}");
    let garbage = raw(weir.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert_eq!(up.hits(), 0, "nothing was forwarded");
    // Weir keeps serving.
    assert_eq!(Client::h1().get(weir.addr(), "/").await.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn header_limits_answer_431() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::one_route("lim", "lim-up", &[up.addr()])
        .listener("main")
        .set("max_header_bytes", 2048)
        .set("max_headers", 8);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    let big = "v".repeat(3000);
    let r = c
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-big", &big)],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (431, Some("headers-too-large"))
    );
    let many: Vec<(String, String)> = (0..12)
        .map(|i| (format!("x-h{i}"), "1".to_owned()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = c
        .send(weir.addr(), Method::GET, "/", &many, Bytes::new())
        .await;
    assert_eq!(r.status, 431);
    // Far beyond even hyper's buffer: still 431, and weir keeps serving.
    let huge = "v".repeat(600_000);
    let r = raw(
        weir.addr(),
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-huge: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    assert_eq!(up.hits(), 0);
    assert_eq!(c.get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn body_limit_answers_413_declared_or_streamed() {
    let up = Upstream::http1().echo().start().await;
    let cfg = Toml::one_route("body", "body-up", &[up.addr()])
        .listener("main")
        .set("max_body_bytes", 1000);
    let weir = Weir::start(cfg).await;
    let r = Client::h1()
        .send(weir.addr(), Method::POST, "/", &[], vec![b'x'; 1001])
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (413, Some("payload-too-large"))
    );
    assert_eq!(
        up.hits(),
        0,
        "a declared oversize body is refused before forwarding"
    );

    let ok = Client::h1()
        .send(weir.addr(), Method::POST, "/", &[], vec![b'x'; 1000])
        .await;
    assert_eq!(ok.status, 200);

    // Chunked, no length declared: found while streaming.
    let mut req = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"190\r\n");
        req.extend_from_slice(&[b'y'; 400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(weir.addr(), &req).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("payload-too-large"), "{r}");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let up = Upstream::http1().upgrade().start().await;
    let weir = Weir::start(Toml::one_route("ws", "ws-up", &[up.addr()])).await;
    let mut conn = upgrade(weir.addr(), "/chat", "websocket").await;
    assert_eq!(conn.status, 101, "{}", conn.head);
    assert!(
        conn.head
            .to_ascii_lowercase()
            .contains("upgrade: websocket"),
        "{}",
        conn.head
    );
    assert_eq!(
        conn.exchange(b"ping from client").await,
        b"ping from client"
    );
    let big = vec![7u8; 100_000];
    assert_eq!(conn.exchange(&big).await, big);
}

#[tokio::test]
async fn slow_request_head_is_cut_but_idle_keepalive_lasts_until_idle_timeout() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::one_route("tmo", "tmo-up", &[up.addr()])
        .listener("main")
        .set("header_read_timeout", "300ms")
        .set("idle_timeout", "1500ms");
    let weir = Weir::start(cfg).await;

    // Slowloris: half a head, then nothing. Closed after header_read_timeout.
    let mut slow = TcpStream::connect(weir.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(SECS, slow.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no response, just a close");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive connection idle for longer than header_read_timeout still works...
    let mut ka = TcpStream::connect(weir.addr()).await.unwrap();
    for _ in 0..2 {
        ka.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\r\n\r\nok") {
            let n = tokio::time::timeout(SECS, ka.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed too early");
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // ...and is closed once idle for idle_timeout.
    let n = tokio::time::timeout(SECS, ka.read(&mut buf))
        .await
        .expect("closed when idle")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn max_connections_holds_new_connections_until_one_closes() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::one_route("maxc", "maxc-up", &[up.addr()])
        .listener("main")
        .set("max_connections", 1);
    let weir = Weir::start(cfg).await;
    let first = Client::h1();
    assert_eq!(first.get(weir.addr(), "/").await.status, 200); // holds one pooled connection

    let mut second = TcpStream::connect(weir.addr()).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "second connection was served while the first was open"
    );
    drop(first); // closes the pooled connection
    let n = tokio::time::timeout(SECS, second.read(&mut buf))
        .await
        .expect("served after")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::http1().start().await;
    let echo = Upstream::http1().echo().start().await; // streams its body back: chunked
    let cfg = Toml::new()
        .route("ka", "ka-up")
        .set("match.path_prefix", "/plain")
        .upstream("ka-up", &[up.addr()])
        .route("ka-echo", "ka-echo-up")
        .upstream("ka-echo-up", &[echo.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..20 {
        assert_eq!(c.get(weir.addr(), "/plain").await.status, 200);
        let r = c.send(weir.addr(), Method::POST, "/echo", &[], "abc").await;
        assert_eq!(r.text(), "abc");
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(
        up.connections(),
        1,
        "sequential requests share one pooled connection"
    );
    assert_eq!(
        echo.connections(),
        1,
        "a chunked response gives its connection back too"
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_without_failing_a_request() {
    let up = Upstream::http1()
        .header("connection", "close")
        .start()
        .await;
    let weir = Weir::start(Toml::one_route("closing", "closing-up", &[up.addr()])).await;
    let c = Client::h1();
    for _ in 0..10 {
        assert_eq!(c.get(weir.addr(), "/").await.status, 200);
    }
    assert_eq!(up.hits(), 10);
    assert_eq!(up.connections(), 10);
}

#[tokio::test]
async fn connect_timeout_answers_upstream_connect() {
    // A local listener that never accepts, with its backlog already full: the kernel drops
    // further SYNs, so a connect hangs until weir's connect timeout.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let f = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        f.set_nonblocking(true).unwrap();
        let _ = f.connect(&addr.into());
        fillers.push(f);
    }
    let cfg = Toml::one_route("blackhole", "bh", &[addr]).set("connect_timeout", "300ms");
    let weir = Weir::start(cfg).await;
    let started = tokio::time::Instant::now();
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (502, Some("upstream-connect"))
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    drop((sock, fillers));
}

#[tokio::test]
async fn empty_bodies_give_their_connection_back_and_an_abandoned_one_does_not() {
    let up = Upstream::http1()
        .route("/none", 204, "")
        .route("/big", 200, vec![b'z'; 1_000_000])
        .start()
        .await;
    let weir = Weir::start(Toml::one_route("empty", "empty-up", &[up.addr()])).await;
    let c = Client::h1();
    for _ in 0..5 {
        assert_eq!(c.get(weir.addr(), "/none").await.status, 204);
        let head = c
            .send(weir.addr(), Method::HEAD, "/", &[], Bytes::new())
            .await;
        assert_eq!(head.status, 200);
    }
    assert_eq!(
        up.connections(),
        1,
        "204 and HEAD responses reuse the connection"
    );

    // Read only the head of a large response, then drop the connection: the upstream
    // connection still holds unread bytes and must not go back to the pool.
    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let before = up.connections();
    for _ in 0..3 {
        assert_eq!(c.get(weir.addr(), "/none").await.status, 204);
    }
    assert!(
        up.connections() <= before + 1,
        "a fresh connection at most: {}",
        up.connections()
    );
    assert_eq!(up.hits(), 14);
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_or_a_close_and_weir_keeps_serving() {
    let up = Upstream::http1().start().await;
    let weir = Weir::start(Toml::one_route("bad", "bad-up", &[up.addr()])).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nbad header: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\nx-nul: a\0b\r\n\r\n".to_vec(),
        b"G@T / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: x\r\n folded: continuation\r\n\r\n".to_vec(),
        b"GET /\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n".to_vec(),
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), // a TLS ClientHello
        long_uri.into_bytes(),
    ];
    for case in &cases {
        let reply = raw(weir.addr(), case).await;
        let status: Option<u16> = reply
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok());
        match status {
            None => assert!(
                reply.is_empty(),
                "neither a response nor a close: {reply:?}"
            ),
            Some(s) => assert!(
                (400..500).contains(&s),
                "{s} for {:?}",
                String::from_utf8_lossy(&case[..case.len().min(60)])
            ),
        }
    }
    assert_eq!(up.hits(), 0, "nothing malformed reached the upstream");

    // A broken chunked body is found only while streaming: the head has gone upstream, and
    // the client is told it sent a bad request (not that the upstream failed).
    let reply = raw(
        weir.addr(),
        b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("x-weir-error: bad-request"), "{reply}");
    assert_eq!(Client::h1().get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn the_embedded_default_answers_with_what_to_do_next() {
    let embedded = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"));
    let weir = Weir::start(embedded).await;
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(r.text().contains("weir --config"), "{}", r.text());
    assert!(r.text().contains("weir check"), "{}", r.text());
    let default = weir::Config::embedded_default();
    assert_eq!(default.listeners[0].listen.to_string(), "127.0.0.1:8080");
    assert_eq!(default.admin.listen.to_string(), "127.0.0.1:9901");
}
