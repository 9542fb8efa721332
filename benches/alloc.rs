//! Heap allocations per request: what one proxied request, and one direct response, costs in
//! `malloc`/`realloc` calls and bytes. A count, not a time, so a busy or slow machine does not
//! move it. With the instruction count (`benches/cost/run.sh`) it is the cost budget of a
//! request; `benches/cost/README.md` describes both and holds the figures measured so far.
//!
//! One process, one current-thread runtime (what weir runs on one core), a counting global
//! allocator ([`stats_alloc`] over `System`, atomics):
//! - a minimal hyper HTTP/1.1 upstream that answers every request `200` with the body `ok`
//!   (`content-length: 2`), as `benches/load/upstream.rs` does;
//! - weir, `App::start` with a TOML config on 127.0.0.1 port 0, no tracing subscriber (so the
//!   access-log event and the spans cost nothing), every key not named at its default;
//! - a keep-alive HTTP/1.1 client over raw TCP that writes `GET / HTTP/1.1` with `host: x` and
//!   reads the response into one reused buffer, so it allocates nothing per request.
//!
//! Each case sends 1000 requests of warm-up, then counts over 10 000 sequential requests on one
//! connection. Cases: weir proxying with every default, weir proxying with
//! `retry.max_retries = 0` (no replay template is kept), and a direct `respond` route. The
//! client and the upstream allocate in the same process, so two baselines are measured too:
//! the client against a raw-TCP responder that allocates nothing (the client's own share), and
//! the client sending the upstream the very request head weir sends it (captured from one
//! proxied request), which is the upstream's share. The `net` columns subtract the baseline
//! that applies: the upstream one for proxied requests, the client one for `respond`.
//! `allocs` counts `alloc` and `realloc` calls, `reallocs` the latter alone; `bytes` is the
//! size of each new block plus what each `realloc` grew by.
//!
//! What lands between requests counts too, spread over them: weir's upkeep task (gauges and
//! histogram upkeep, once a second), and the metrics recorder's histogram blocks (one per
//! several dozen samples). Hence fractions.
//!
//! Run with `cargo bench --bench alloc` (seconds, after the release build).

// A bench reports on stdout and fails loudly on a broken setup.
#![allow(clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::alloc::System;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use weir::{App, Config, Running};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Requests sent before counting: pools, maps and buffers reach their steady size.
const WARMUP: u64 = 1000;
/// Requests counted.
const REQUESTS: u64 = 10_000;
/// What the client sends weir (and the raw responder).
const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
/// What the raw responder and the capturing upstream answer.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let upstream = hyper_upstream().await;
    let responder = raw_responder().await;
    let proxied = config(&format!(
        "upstream = \"bench\"\n{}",
        upstream_table(upstream)
    ));
    let no_retry = format!("{proxied}\n[upstreams.bench.retry]\nmax_retries = 0\n");
    let respond = config("respond = { status = 200, body = \"ok\" }\n");

    // The request head weir sends its upstream, from one proxied request to a capturing
    // upstream; the upstream baseline replays it, so the upstream parses the same headers in
    // the baseline as behind weir.
    let upstream_head = capture_upstream_head().await;

    let client_only = measure(responder, GET).await;
    let upstream_only = measure(upstream, &upstream_head).await;
    let mut rows = vec![
        Row::new("client -> raw responder (baseline)", client_only, None),
        Row::new("client -> upstream (baseline)", upstream_only, None),
    ];
    let mut weir_cost = Vec::new();
    for (name, toml, baseline) in [
        ("weir proxied (defaults)", proxied.as_str(), upstream_only),
        (
            "weir proxied, retry.max_retries = 0",
            &no_retry,
            upstream_only,
        ),
        ("weir respond", &respond, client_only),
    ] {
        let weir = start(toml).await;
        let counted = measure(weir.proxy_addr(), GET).await;
        assert!(weir.shutdown().await, "weir did not stop in time");
        rows.push(Row::new(name, counted, Some(baseline)));
        weir_cost.push(counted);
    }

    println!(
        "heap allocations per request: {REQUESTS} sequential requests on one keep-alive \
         connection, after {WARMUP} of warm-up"
    );
    println!(
        "{:<38} {:>10} {:>12} {:>10} {:>14} {:>13} {:>9}",
        "case",
        "allocs/req",
        "reallocs/req",
        "bytes/req",
        "net allocs/req",
        "net bytes/req",
        "secs"
    );
    for row in &rows {
        row.print();
    }
    if let [with_retry, without, _] = weir_cost[..] {
        println!(
            "replay template (defaults - max_retries = 0): {:.2} allocs, {:.0} bytes per request",
            with_retry.allocs() - without.allocs(),
            with_retry.bytes() - without.bytes()
        );
    }
}

// === measuring ===

/// What one measured run counted, per request.
#[derive(Clone, Copy)]
struct Counted {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
    secs: f64,
}

impl Counted {
    fn allocs(self) -> f64 {
        self.allocs as f64 / REQUESTS as f64
    }

    fn reallocs(self) -> f64 {
        self.reallocs as f64 / REQUESTS as f64
    }

    fn bytes(self) -> f64 {
        self.bytes as f64 / REQUESTS as f64
    }
}

/// One line of the table.
struct Row {
    name: &'static str,
    counted: Counted,
    baseline: Option<Counted>,
}

impl Row {
    fn new(name: &'static str, counted: Counted, baseline: Option<Counted>) -> Row {
        Row {
            name,
            counted,
            baseline,
        }
    }

    fn print(&self) {
        let c = self.counted;
        let (net_allocs, net_bytes) = match self.baseline {
            Some(b) => (
                format!("{:.2}", c.allocs() - b.allocs()),
                format!("{:.0}", c.bytes() - b.bytes()),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<38} {:>10.2} {:>12.2} {:>10.0} {:>14} {:>13} {:>9.2}",
            self.name,
            c.allocs(),
            c.reallocs(),
            c.bytes(),
            net_allocs,
            net_bytes,
            c.secs
        );
    }
}

/// Sends `head` to `addr` on one keep-alive connection, [`WARMUP`] times unmeasured and then
/// [`REQUESTS`] times counted; every response must be `200` with the body `ok`.
async fn measure(addr: SocketAddr, head: &[u8]) -> Counted {
    let mut client = Client::connect(addr).await;
    for _ in 0..WARMUP {
        client.send(head).await;
    }
    let started = Instant::now();
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        client.send(head).await;
    }
    let stats = region.change();
    let secs = started.elapsed().as_secs_f64();
    Counted {
        allocs: (stats.allocations + stats.reallocations) as u64,
        reallocs: stats.reallocations as u64,
        bytes: stats.bytes_allocated as u64,
        secs,
    }
}

/// A keep-alive HTTP/1.1 client over raw TCP that allocates nothing per request: it writes a
/// fixed head and reads the response into one buffer, parsing just enough to frame it.
struct Client {
    stream: TcpStream,
    buf: Box<[u8]>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Sends `head`, reads one response, and checks that it is `200` with the body `ok` and
    /// nothing after it.
    async fn send(&mut self, head: &[u8]) {
        self.stream.write_all(head).await.expect("write request");
        let mut filled = 0;
        loop {
            assert!(filled < self.buf.len(), "response larger than the buffer");
            let n = self
                .stream
                .read(&mut self.buf[filled..])
                .await
                .expect("read response");
            assert!(n > 0, "connection closed before the response ended");
            filled += n;
            let got = &self.buf[..filled];
            if let Some((head_len, body_len)) = frame(got) {
                let end = head_len + body_len;
                if filled < end {
                    continue;
                }
                assert_eq!(filled, end, "bytes after the response");
                assert!(got.starts_with(b"HTTP/1.1 200 "), "not 200: {got:?}");
                assert_eq!(&got[head_len..], b"ok", "unexpected body");
                return;
            }
        }
    }
}

/// The head's length and the body's `content-length`, once the whole head is in `got`.
fn frame(got: &[u8]) -> Option<(usize, usize)> {
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let body_len = got[..head_len]
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            if !name.eq_ignore_ascii_case(b"content-length") {
                return None;
            }
            std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok()
        })
        .expect("response without content-length");
    Some((head_len, body_len))
}

// === servers ===

/// The upstream: hyper HTTP/1.1, `200` with the body `ok`, keep-alive.
async fn hyper_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

async fn answer(
    _req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// A responder over raw TCP that allocates nothing per request: it reads a request head (no
/// body) and writes [`OK`].
async fn raw_responder() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind responder");
    let addr = listener.local_addr().expect("responder addr");
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while read_head(&mut stream, &mut buf).await.is_some() {
                    if stream.write_all(OK).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one request head into `buf`; its length, or `None` at the end of the connection.
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    let mut filled = 0;
    loop {
        if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            assert_eq!(end + 4, filled, "bytes after the request head");
            return Some(filled);
        }
        assert!(filled < buf.len(), "request head larger than the buffer");
        match stream.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
}

/// Starts a weir in front of an upstream that records the first request head it gets, sends
/// it one request, and returns that head.
async fn capture_upstream_head() -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind capture");
    let addr = listener.local_addr().expect("capture addr");
    let weir = start(&config(&format!(
        "upstream = \"bench\"\n{}",
        upstream_table(addr)
    )))
    .await;
    let capture = async {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0; 16 * 1024];
        let len = read_head(&mut stream, &mut buf).await.expect("a request");
        stream.write_all(OK).await.expect("answer");
        buf.truncate(len);
        buf
    };
    let send = async {
        let mut client = Client::connect(weir.proxy_addr()).await;
        client.send(GET).await;
    };
    let (head, ()) = tokio::join!(capture, send);
    assert!(weir.shutdown().await, "weir did not stop in time");
    head
}

// === weir ===

/// A weir config with one listener and one catch-all route `bench`, whose target is `target`
/// (and any tables after it), both on 127.0.0.1 port 0.
fn config(target: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[routes]]\nname = \"bench\"\n{target}"
    )
}

/// The `[upstreams.bench]` table with one endpoint.
fn upstream_table(addr: SocketAddr) -> String {
    format!("\n[upstreams.bench]\nendpoints = [\"{addr}\"]\n")
}

async fn start(toml: &str) -> Running {
    let config = Config::from_toml(toml, "alloc.toml").unwrap_or_else(|e| panic!("{e}"));
    App::start(config).await.expect("weir starts")
}
