//! Weir as a fake backend: generated bodies, delay shapes asked for by header, and each
//! transport fault as a raw client sees it (a reset before the head, a body cut off after half,
//! a slow body), with `weir_faults_total{route,kind}` counting them.
//!
//! Timing checks are lower bounds only (a slow machine makes a body slower, never faster).

// The helpers below are test code too: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{Client, Toml, Upstream, Weir, eventually_async, scrape};

const SECS: Duration = Duration::from_secs(5);

/// What a raw HTTP/1.1 client saw of one `GET path` on a fresh connection.
#[derive(Debug)]
struct Raw {
    /// The response head, up to and including the blank line (empty if none came).
    head: String,
    /// The body bytes that came after the head.
    body: Vec<u8>,
    /// When the first and the last body bytes came, after the head.
    body_span: Duration,
    /// How the connection ended: EOF (`None`) or a read error.
    ended: Option<std::io::ErrorKind>,
}

impl Raw {
    /// The `Content-Length` of the head.
    fn content_length(&self) -> Option<usize> {
        self.head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
    }
}

/// Sends `GET path` (with `Connection: close`, so a complete response ends in EOF too) and
/// reads until the connection ends.
async fn raw_get(addr: SocketAddr, path: &str) -> Raw {
    let read = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut head_len: Option<usize> = None;
        let (mut first, mut last) = (None, None);
        let ended = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break None,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if head_len.is_none() {
                        head_len = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
                    }
                    if head_len.is_some_and(|h| got.len() > h) {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = Some(now);
                    }
                }
                Err(e) => break Some(e.kind()),
            }
        };
        let h = head_len.unwrap_or(got.len());
        let body_span = match (first, last) {
            (Some(f), Some(l)) => l - f,
            _ => Duration::ZERO,
        };
        Raw {
            head: String::from_utf8_lossy(&got[..h]).into_owned(),
            body: got[h..].to_vec(),
            body_span,
            ended,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the connection ends within 10s")
}

/// `weir_faults_total{route,kind}`, waited for until it is `want`.
async fn faults_reach(weir: &Weir, route: &str, kind: &str, want: f64) {
    let admin = weir.admin();
    let labels = [("route", route), ("kind", kind)];
    eventually_async(
        || async move { scrape(admin).await.get("weir_faults_total", &labels) == Some(want) },
        SECS,
    )
    .await;
}

#[tokio::test]
async fn a_generated_body_has_exactly_its_size() {
    let weir = Weir::start(
        Toml::new()
            .respond("fake", 200)
            .set("respond.body_bytes", 4096),
    )
    .await;
    let reply = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("4096"));
    assert_eq!(reply.body.len(), 4096);
    assert!(
        reply
            .body
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b'\n')
    );
    let again = Client::h2().get(weir.addr(), "/").await;
    assert_eq!(
        again.body, reply.body,
        "one body, made when the route was built"
    );
}

#[tokio::test]
async fn a_reset_sends_no_response_bytes() {
    let weir = Weir::start(
        Toml::new()
            .respond("reset", 200)
            .set("respond.body", "never sent")
            .set("fault.reset_percent", 100.0),
    )
    .await;
    for _ in 0..3 {
        let raw = raw_get(weir.addr(), "/").await;
        assert!(raw.head.is_empty() && raw.body.is_empty(), "{raw:?}");
        assert!(
            matches!(raw.ended, None | Some(std::io::ErrorKind::ConnectionReset)),
            "{raw:?}"
        );
    }
    // HTTP/2: the stream is reset, not the connection.
    let err = Client::h2().try_get(weir.addr(), "/").await.unwrap_err();
    assert!(format!("{err:?}").contains("INTERNAL_ERROR"), "{err:?}");
    faults_reach(&weir, "reset", "reset", 4.0).await;
    // Each reset request is still counted, with weir's fault reason.
    let s = scrape(weir.admin()).await;
    let labels = [
        ("route", "reset"),
        ("status", "444"),
        ("reason", "fault-injected"),
    ];
    assert_eq!(s.get("weir_requests_total", &labels), Some(4.0));
}

#[tokio::test]
async fn a_truncated_body_stops_at_half_then_the_connection_closes() {
    let weir = Weir::start(
        Toml::new()
            .respond("cut", 200)
            .set("respond.body_bytes", 10_000)
            .set("fault.truncate_percent", 100.0),
    )
    .await;
    let raw = raw_get(weir.addr(), "/").await;
    assert!(raw.head.starts_with("HTTP/1.1 200"), "{raw:?}");
    assert_eq!(raw.content_length(), Some(10_000));
    assert_eq!(raw.body.len(), 5_000, "half of the body, then the end");
    // The client sees the broken body as an error too.
    let err = Client::h1().try_get(weir.addr(), "/").await.unwrap_err();
    assert!(!format!("{err:?}").is_empty());
    faults_reach(&weir, "cut", "truncate", 2.0).await;
    let s = scrape(weir.admin()).await;
    let labels = [("route", "cut"), ("reason", "fault-injected")];
    assert_eq!(s.get("weir_requests_total", &labels), Some(2.0));
}

#[tokio::test]
async fn a_proxied_response_can_be_cut_too() {
    let up = Upstream::http1()
        .route("/", 200, vec![b'x'; 2_000])
        .start()
        .await;
    let weir = Weir::start(
        Toml::new()
            .route("proxied", "up")
            .set("fault.truncate_percent", 100.0)
            .upstream("up", &[up.addr()]),
    )
    .await;
    let raw = raw_get(weir.addr(), "/").await;
    assert_eq!(raw.content_length(), Some(2_000), "{raw:?}");
    assert_eq!(raw.body.len(), 1_000);
    faults_reach(&weir, "proxied", "truncate", 1.0).await;
}

#[tokio::test]
async fn a_slow_body_takes_at_least_its_rates_time() {
    // 8192 bytes at 16384 B/s: 500ms, in chunks of 1638 bytes every 100ms.
    let weir = Weir::start(
        Toml::new()
            .respond("slow", 200)
            .set("respond.body_bytes", 8192)
            .set("fault.slow_body_percent", 100.0)
            .set("fault.slow_body_rate", 16_384),
    )
    .await;
    let raw = raw_get(weir.addr(), "/").await;
    assert_eq!(raw.content_length(), Some(8192), "{raw:?}");
    assert_eq!(raw.body.len(), 8192, "every byte arrives");
    assert_eq!(raw.ended, None);
    // From the first body byte to the last: at least the 400ms after the first chunk, less
    // scheduling slack; half of it is a bound a slow machine cannot break.
    assert!(
        raw.body_span >= Duration::from_millis(200),
        "{:?}",
        raw.body_span
    );
    faults_reach(&weir, "slow", "slow_body", 1.0).await;
}

#[tokio::test]
async fn a_request_asks_for_a_delay_shape_by_header() {
    let weir = Weir::start(
        Toml::new()
            .respond("asked", 200)
            .set("fault.allow_header", true),
    )
    .await;
    let c = Client::h1();
    let start = Instant::now();
    let reply = c
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-weir-fault-delay", "uniform(200ms, 300ms)")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(200));
    let reply = c
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-weir-fault-delay", "table(50%: 100ms, 50%: 150ms)")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200);
    faults_reach(&weir, "asked", "delay", 2.0).await;
    // A value it cannot use (a draw could be over 60s) is ignored, and nothing is counted.
    let reply = c
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-weir-fault-delay", "uniform(1s, 61s)")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200);
    let s = scrape(weir.admin()).await;
    let delays = [("route", "asked"), ("kind", "delay")];
    assert_eq!(s.get("weir_faults_total", &delays), Some(2.0));
    let aborts = [("route", "asked"), ("kind", "abort")];
    assert_eq!(s.get("weir_faults_total", &aborts), Some(0.0));
}

#[tokio::test]
async fn a_config_delay_shape_delays_every_request() {
    let weir = Weir::start(
        Toml::new()
            .respond("shaped", 200)
            .set("fault.delay_percent", 100.0)
            .set("fault.delay", "table(50%: 100ms, 50%: 120ms)"),
    )
    .await;
    let c = Client::h1();
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(c.get(weir.addr(), "/").await.status, 200);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
    faults_reach(&weir, "shaped", "delay", 3.0).await;
}
