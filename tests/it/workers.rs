//! `workers`: several runtimes, each accepting on its own `SO_REUSEPORT` socket of every
//! listener. Connections spread over the workers and every one is answered; a drain, a
//! reload and `max_connections` work across them as with one; a bad value is a config error.
//!
//! Which socket the kernel gives a connection to is a hash of its addresses, and each test
//! opens its connections from fresh source ports. Where a test needs connections on both
//! sockets of a two-worker listener it opens enough of them that all landing on one socket is
//! out of reach: for n connections that happens with probability 2 × 2^-n (2^-63 for 64).

// Helpers here run outside a `#[test]` body and drive a child process and its log synchronously.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use weir::Config;

use crate::support::certs::TempDir;
use crate::support::{Client, Toml, Upstream, Weir, eventually};

const SECS: Duration = Duration::from_secs(5);

/// Connections opened where a test needs some on each of two sockets (see the module docs).
const SPREAD: usize = 64;

/// The weir binary on `config`, its log lines (JSON) arriving on the receiver, and the first
/// listener's address from its `listening` line.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    addr: SocketAddr,
    /// The config's directory, removed when the binary is dropped.
    _dir: TempDir,
}

impl Binary {
    fn start(config: &str, name: &str, log: &str) -> Binary {
        let dir = TempDir::new(&format!("workers-{name}"));
        let path = dir.0.join("weir.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        // Read on a thread of its own: a full pipe would block weir's logging.
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let mut binary = Binary {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _dir: dir,
        };
        let listening = binary.next_where(|v| v["message"] == "listening");
        binary.addr = listening["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(listening["workers"], 2, "{listening}");
        binary
    }

    /// The next log line that `pred` accepts; panics when none comes within 10 s.
    fn next_where(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => {}
                Err(e) => panic!("no such log line from weir: {e}"),
            }
        }
    }

    /// The names of the process's threads.
    fn threads(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /` on a connection of its own (`connection: close`); the status line's code.
async fn one_connection(addr: SocketAddr) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(SECS, tcp.read_to_end(&mut reply))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"))
}

/// `n` connections at once, each with one request; every status.
async fn connections(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(one_connection(addr));
    }
    set.join_all().await
}

#[tokio::test]
async fn two_workers_answer_every_connection_and_both_serve() {
    let config = Toml::new()
        .set("workers", 2)
        .respond("wk-spread", 200)
        .table("admin")
        .set("listen", "127.0.0.1:0")
        .listener("main")
        .set("listen", "127.0.0.1:0")
        .to_string();
    // Each accepted connection is logged at debug with the index of the worker that took it.
    let weir = Binary::start(&config, "spread", "warn,weir::server=debug");
    let threads = weir.threads();
    assert!(threads.iter().any(|t| t == "weir-worker-1"), "{threads:?}");
    assert!(!threads.iter().any(|t| t == "weir-worker-2"), "{threads:?}");

    let statuses = connections(weir.addr, SPREAD).await;
    assert_eq!(statuses, vec![200; SPREAD]);

    let mut by_worker = BTreeMap::new();
    for _ in 0..SPREAD {
        let accepted = weir.next_where(|v| v["message"] == "accepted");
        let worker = accepted["worker"].as_u64().unwrap();
        *by_worker.entry(worker).or_insert(0) += 1;
    }
    eprintln!("{SPREAD} connections by worker: {by_worker:?}");
    assert_eq!(
        by_worker.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "both workers accept (see the module docs for why {SPREAD} connections reach both)"
    );
}

#[tokio::test]
async fn a_drain_with_two_workers_completes_the_requests_in_flight() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let cfg = Toml::new()
        .set("workers", 2)
        .route("wk-drain", "wk-drain-up")
        .upstream("wk-drain-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let addr = weir.addr();
    let in_flight = tokio::spawn(connections(addr, SPREAD));
    eventually(|| up.hits() == SPREAD, SECS).await;

    let drained = weir.drain(std::future::pending()).await;
    assert!(drained.in_time, "{drained:?}");
    assert_eq!((drained.completed, drained.cut), (SPREAD as u64, 0));
    assert_eq!(in_flight.await.unwrap(), vec![200; SPREAD]);
    // Every socket closed with the drain.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_reload_with_two_workers_keeps_the_sockets_and_serves_the_new_config() {
    let cfg = |status: u16, workers: u32| {
        Toml::new()
            .set("workers", workers)
            .respond("wk-reload", status)
    };
    let weir = Weir::start(cfg(201, 2)).await;
    let addr = weir.addr();
    let kept = Client::h1();
    assert_eq!(kept.get(addr, "/").await.status, 201);
    assert_eq!(connections(addr, SPREAD).await, vec![201; SPREAD]);

    weir.reload(cfg(202, 2)).unwrap();
    assert_eq!(weir.addr(), addr);
    assert_eq!(
        kept.get(addr, "/").await.status,
        202,
        "a kept-alive connection"
    );
    assert_eq!(connections(addr, SPREAD).await, vec![202; SPREAD]);

    // `workers` is read at start only: a reload that changes it is taken, and weir runs on.
    weir.reload(cfg(203, 3)).unwrap();
    assert_eq!(connections(addr, SPREAD).await, vec![203; SPREAD]);
    assert!(weir.stop().await);
}

#[tokio::test]
async fn max_connections_is_one_limit_over_the_sockets_of_all_workers() {
    let cfg = Toml::new()
        .set("workers", 2)
        .respond("wk-maxc", 200)
        .listener("main")
        .set("max_connections", 1);
    let weir = Weir::start(cfg).await;
    let addr = weir.addr();
    // One connection after another, each closed before the next: every one is served,
    // whichever socket it lands on (a slot held by the other socket's accept loop would leave
    // it waiting for ever).
    for _ in 0..SPREAD {
        assert_eq!(one_connection(addr).await, 200);
    }
    // A held connection takes the one slot, on whichever socket it is: the next one waits.
    let first = Client::h1();
    assert_eq!(first.get(addr, "/").await.status, 200);
    let waiting = tokio::spawn(one_connection(addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served while the first was open");
    drop(first);
    assert_eq!(waiting.await.unwrap(), 200);
}

#[test]
fn a_bad_workers_value_names_file_line_and_key() {
    for (value, got) in [("2000", "2000"), ("-2", "-2"), ("\"all\"", "\"all\"")] {
        let src = format!("# workers\n\nworkers = {value}\n");
        let err = Config::from_toml(&src, "weir.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "weir.toml:3: workers: expected 0 (one worker per core) or a number of workers \
                 up to 1024"
            ),
            "{err}"
        );
        assert!(err.contains(&format!("(got {got})")), "{err}");
    }
    let dir = TempDir::new("workers-check");
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, "workers = 1025\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:1: workers: ", path.display())),
        "{err}"
    );
}
