//! Hostile clients and broken upstreams: bounded time per connection in both directions,
//! strict `Host`, framing judged from heads only, and counters that tell the truth.

// The raw upstream and readers here are test helpers outside `#[test]` bodies.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::support::{Client, Toml, Upstream, Weir, eventually, eventually_async, raw, scrape};

const SECS: Duration = Duration::from_secs(5);

/// A raw TCP upstream: each connection is handed to `serve` after its request head was read.
/// Counts connections whose handler saw the peer (weir) close or reset them.
struct RawUpstream {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    /// `respond` gets the socket after the request head; it returns when it is done (or
    /// the socket failed: then the upstream counts a close).
    async fn start<F, Fut>(respond: F) -> RawUpstream
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let respond = Arc::new(respond);
        let counted = closed.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let (respond, closed) = (respond.clone(), counted.clone());
                conns.spawn(async move {
                    if read_head(&mut s).await.is_err() {
                        return;
                    }
                    if respond(s).await.is_err() {
                        closed.fetch_add(1, SeqCst);
                    }
                });
            }
        });
        RawUpstream { addr, closed, task }
    }
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// Answers with a head declaring `declared` body bytes, sends 1 KiB of them, then holds the
/// connection silent until weir closes it (which the upstream counts as a close).
async fn partial_then_silent(mut s: TcpStream, declared: usize) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {declared}\r\n\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(&[b'x'; 1024]).await?;
    let mut b = [0u8; 1];
    match s.read(&mut b).await {
        Ok(_) => Err(std::io::ErrorKind::ConnectionAborted.into()),
        Err(e) => Err(e),
    }
}

/// Reads from `s` until it closes or errors (returns the bytes and whether it ended cleanly),
/// giving up after 10 s.
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, false),
            Err(_) => panic!("still open after 10 s ({} bytes read)", out.len()),
        }
    }
}

#[tokio::test]
async fn two_host_headers_or_none_are_refused_and_nothing_is_forwarded() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .respond("h-admin", 403)
        .set("match.host", "admin.internal")
        .route("h-public", "h-public-up")
        .upstream("h-public-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let two = raw(
        weir.addr(),
        b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\n\r\n",
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert!(two.contains("x-weir-error: bad-request"), "{two}");
    let none = raw(weir.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let absolute = raw(
        weir.addr(),
        b"GET http://admin.internal/ HTTP/1.1\r\nHost: public.example\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");
    // HTTP/1.0 may leave Host out.
    let old = raw(weir.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert_eq!(up.hits(), 1, "only the HTTP/1.0 request was forwarded");

    // HTTP/2: `:authority` and `host` that disagree.
    let c = Client::h2();
    let mut req = crate::support::build_request(Method::GET, "/", &[], Bytes::new());
    *req.uri_mut() = format!("http://{}/", weir.addr()).parse().unwrap();
    req.headers_mut()
        .insert("host", "admin.internal".parse().unwrap());
    let r = c.request(weir.addr(), req).await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (400, Some("bad-request"))
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(c.get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn a_chunked_upload_whose_body_looks_like_a_head_is_forwarded_whole() {
    let up = Upstream::http1().echo().start().await;
    let weir = Weir::start(Toml::one_route("fr-body", "fr-body-up", &[up.addr()])).await;
    let content = "GET /x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req =
        b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    req.extend_from_slice(format!("{:x}\r\n{content}\r\n0\r\n\r\n", content.len()).as_bytes());
    let resp = raw(weir.addr(), &req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(content), "the body came back whole: {resp}");
}

#[tokio::test]
async fn length_with_chunked_is_read_as_chunked_and_nothing_behind_it_is_served() {
    let up = Upstream::http1().echo().start().await;
    let weir = Weir::start(Toml::one_route("fr-both", "fr-both-up", &[up.addr()])).await;
    // A smuggling probe: by Content-Length the body is "0\r\n\r\nG"; chunked, it is empty and
    // "GET /smuggled" would be the next request on the connection.
    let resp = raw(
        weir.addr(),
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        resp.matches("HTTP/1.1").count(),
        1,
        "one response only: {resp}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "only the first request reached the upstream");
    assert_eq!(seen[0].uri.path(), "/");
    assert!(
        seen[0]
            .headers
            .get("content-length")
            .is_none_or(|v| v == "0"),
        "the upstream got no conflicting length: {:?}",
        seen[0].headers
    );
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_at_read_timeout() {
    // 1 KiB of a declared 100 KiB, then silence.
    let up = RawUpstream::start(|s| partial_then_silent(s, 102_400)).await;
    let cfg = Toml::one_route("st-body", "st-body-up", &[up.addr]).set("read_timeout", "500ms");
    let weir = Weir::start(cfg).await;

    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut s).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = got.len() - text.find("\r\n\r\n").unwrap() - 4;
    assert_eq!(body, 1024, "the connection closed before the declared end");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "cut at read_timeout, took {took:?}"
    );
    println!("stalled body: cut after {took:?} (read_timeout 500ms)");
    eventually(|| up.closed.load(SeqCst) == 1, SECS).await;

    // HTTP/2: the stream is reset, the connection stays.
    let c = Client::h2();
    let err = c.try_get(weir.addr(), "/").await.err();
    assert!(err.is_some(), "the HTTP/2 body ends in an error");
    let admin = weir.admin();
    eventually_async(
        || async move {
            scrape(admin).await.sum(
                "weir_requests_total",
                &[("route", "st-body"), ("reason", "upstream-timeout")],
            ) == 2.0
        },
        SECS,
    )
    .await;
}

#[tokio::test]
async fn a_silent_upstream_head_is_cut_at_read_timeout_and_counted() {
    let up = Upstream::http1().never_respond().start().await;
    let cfg = Toml::one_route("st-head", "st-head-up", &[up.addr()])
        .set("read_timeout", "300ms")
        .set("retry.max_retries", 0);
    assert_silent_head_cut(cfg, "st-head-up").await;
}

#[tokio::test]
async fn a_silent_upstream_head_is_cut_at_the_route_deadline_before_read_timeout() {
    // The route deadline comes long before `read_timeout` (its default, 1m): the try ends at
    // the deadline and counts as a timeout, though only the deadline's timer was armed.
    let up = Upstream::http1().never_respond().start().await;
    let cfg = Toml::new()
        .route("dl-head", "dl-head-up")
        .set("timeout", "300ms")
        .upstream("dl-head-up", &[up.addr()])
        .set("retry.max_retries", 0);
    assert_silent_head_cut(cfg, "dl-head-up").await;
}

/// Against a silent upstream (`cfg`'s `upstream`), weir answers 504 `upstream-timeout` in
/// bounded time and counts the try as `upstream-timeout`.
async fn assert_silent_head_cut(cfg: Toml, upstream: &'static str) {
    let weir = Weir::start(cfg).await;
    let started = Instant::now();
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-weir-error")),
        (504, Some("upstream-timeout"))
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let admin = weir.admin();
    eventually_async(
        || async move {
            scrape(admin).await.get(
                "weir_upstream_attempts_total",
                &[("upstream", upstream), ("outcome", "upstream-timeout")],
            ) == Some(1.0)
        },
        SECS,
    )
    .await;
}

#[tokio::test]
async fn tries_ended_by_try_timeout_are_counted() {
    let up = Upstream::http1()
        .delay(Duration::from_secs(5))
        .start()
        .await;
    let cfg = Toml::one_route("tt", "tt-up", &[up.addr()])
        .set("try_timeout", "100ms")
        .set("retry.max_retries", 1)
        .set("retry.backoff_base", "1ms")
        .set("retry.backoff_cap", "2ms")
        .set("breaker.mode", "off");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..5 {
        assert_eq!(c.get(weir.addr(), "/").await.status, 504);
    }
    eventually(|| up.hits() == 10, SECS).await;
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.sum("weir_upstream_attempts_total", &[("upstream", "tt-up")]),
        10.0,
        "every try that reached the upstream is counted"
    );
    assert_eq!(
        m.get(
            "weir_upstream_attempts_total",
            &[("upstream", "tt-up"), ("outcome", "upstream-timeout")]
        ),
        Some(10.0)
    );
}

#[tokio::test]
async fn a_request_body_the_client_stops_sending_is_cut_at_idle_timeout() {
    let up = Upstream::http1().echo().start().await;
    let cfg = Toml::one_route("rb", "rb-up", &[up.addr()])
        .listener("main")
        .set("idle_timeout", "500ms");
    let weir = Weir::start(cfg).await;
    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    let started = Instant::now();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut s).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 400") || text.is_empty(),
        "refused or closed: {text}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "cut at idle_timeout, took {took:?}"
    );
    // Weir keeps serving.
    assert_eq!(Client::h1().get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_closed_at_send_timeout_and_the_upstream_cancelled() {
    // An endless body, written as fast as weir takes it.
    let up = RawUpstream::start(|mut s| async move {
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await?;
        let chunk = format!("4000\r\n{}\r\n", "y".repeat(0x4000));
        loop {
            s.write_all(chunk.as_bytes()).await?;
        }
    })
    .await;
    let cfg = Toml::one_route("snd", "snd-up", &[up.addr])
        .listener("main")
        .set("send_timeout", "500ms");
    let weir = Weir::start(cfg).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(weir.addr()).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The upstream connection is closed once weir gives up on the client...
    eventually(|| up.closed.load(SeqCst) == 1, Duration::from_secs(8)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "not before send_timeout: {took:?}"
    );
    println!("client that reads nothing: upstream cancelled after {took:?} (send_timeout 500ms)");
    // ... and the client's connection ends (what it buffered, then the close).
    let (_, _) = read_to_close(&mut s).await;
    let admin = weir.admin();
    eventually_async(
        || async move {
            scrape(admin)
                .await
                .get("weir_downstream_connections", &[("listener", "main")])
                == Some(0.0)
        },
        SECS,
    )
    .await;
}

#[tokio::test]
async fn a_change_both_written_and_signalled_reloads_once() {
    let cfg = |status: u16| Toml::new().respond("once", status).to_string();
    let dir = std::env::temp_dir().join(format!("weir-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("weir.toml");
    std::fs::write(&file, cfg(201)).unwrap();
    let weir = Weir::start(&cfg(201)).await;
    weir.watch(&file);
    let addr = weir.addr();
    let admin = weir.admin();
    let reloads = || async move {
        scrape(admin)
            .await
            .get("weir_config_reloads_total", &[("result", "success")])
            .unwrap_or(0.0)
    };

    std::fs::write(&file, cfg(202)).unwrap();
    weir.reload_file(&file).unwrap(); // the SIGHUP that follows the write
    assert_eq!(Client::h1().get(addr, "/").await.status, 202);
    // Past the watch's debounce: a duplicate reload would have happened by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    std::fs::write(&file, cfg(203)).unwrap();
    eventually_async(
        || async move { Client::h1().get(addr, "/").await.status == 203 },
        SECS,
    )
    .await;
    assert_eq!(reloads().await, 2.0, "one reload per change");
    // A later SIGHUP without a change still reloads (it re-reads TLS files, say).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    weir.reload_file(&file).unwrap();
    assert_eq!(reloads().await, 3.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_streaming_response_counts_in_flight_until_its_body_ends() {
    // The rest of the body never comes; weir's read_timeout (default 60s) is not reached
    // before the client leaves.
    let up = RawUpstream::start(|s| partial_then_silent(s, 4096)).await;
    let weir = Weir::start(Toml::one_route("stream", "stream-up", &[up.addr])).await;
    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 512];
    assert!(s.read(&mut first).await.unwrap() > 0, "the head arrived");
    let admin = weir.admin();
    let in_flight = || async move {
        scrape(admin)
            .await
            .get("weir_in_flight", &[("upstream", "stream-up")])
    };
    // Sampled by the upkeep task every second.
    eventually_async(|| async move { in_flight().await == Some(1.0) }, SECS).await;
    drop(s);
    eventually_async(|| async move { in_flight().await == Some(0.0) }, SECS).await;
    eventually(|| up.closed.load(SeqCst) == 1, SECS).await;
}
