//! The real binary: `weir check`, `--version`, running a file, the access log, signals.

// Helpers here run outside a `#[test]` body and drive a child process synchronously.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use crate::support::certs::TempDir;
use crate::support::{Toml, Upstream};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// `cfg` with the admin port and listener `main` on 127.0.0.1 port 0, as the binary reads it.
fn on_port_zero(cfg: Toml) -> String {
    cfg.table("admin")
        .set("listen", "127.0.0.1:0")
        .listener("main")
        .set("listen", "127.0.0.1:0")
        .to_string()
}

/// `body` as the file `name` in a directory of its own, removed when the `TempDir` drops.
fn temp_file(name: &str, body: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("cli");
    let path = dir.0.join(name);
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

#[test]
fn check_accepts_every_shipped_config() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let out = weir().arg("check").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_prints_every_error_with_file_line_and_key() {
    let body = "[admin]\nlisten = \"127.0.0.1:9901\"\n\n[[routes]]\nname = \"api\"\ntimeout = \"fast\"\nupstream = \"missing\"\n\n[upstreams.b]\nendpoints = [\"127.0.0.1:9000\"]\nretrys = 3\n";
    let (_dir, path) = temp_file("bad.toml", body);
    let out = weir().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:6: routes[0].timeout: ")),
        "{err}"
    );
    assert!(err.contains("(got \"fast\")"), "{err}");
    assert!(
        err.contains(&format!("{file}:7: routes[0].upstream: ")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:11: upstreams.b.retrys: ")),
        "{err}"
    );
    assert!(err.lines().count() >= 3, "{err}");
}

#[test]
fn version_flag_prints_the_version() {
    let out = weir().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// Starts the binary on a config and returns the child and the proxy address from its log.
fn spawn_on(
    config: &str,
    name: &str,
) -> (
    Child,
    BufReader<std::process::ChildStdout>,
    std::net::SocketAddr,
    TempDir,
) {
    let (dir, path) = temp_file(name, config);
    let mut child = weir()
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "weir exited before listening"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    (child, out, addr, dir)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("weir did not exit after the signal");
}

#[tokio::test]
async fn runs_a_file_logs_access_as_json_and_stops_on_sigterm() {
    let up = Upstream::http1().start().await;
    let cfg = on_port_zero(Toml::one_route("cli", "cli-up", &[up.addr()]));
    let (child, mut out, addr, _dir) = spawn_on(&cfg, "run.toml");
    let reply = crate::support::Client::h1()
        .send(
            addr,
            http::Method::GET,
            "/x",
            &[("x-request-id", "cli-1")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200);
    let access = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "no access log line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["target"] == "weir::access" {
                return v;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "cli");
    assert_eq!(access["upstream"], "cli-up");
    assert_eq!(access["status"], 200);
    assert_eq!(access["reason"], "upstream");
    assert_eq!(access["request_id"], "cli-1");
    assert!(access["duration_ms"].as_f64().is_some());
    signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(child))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigint_stops_with_exit_code_zero() {
    let (child, _out, _addr, _dir) = spawn_on(&on_port_zero(Toml::new()), "int.toml");
    signal(&child, "INT");
    assert_eq!(wait_exit(child).code(), Some(0));
}

#[test]
fn an_invalid_file_does_not_start() {
    let (_dir, path) = temp_file("invalid.toml", "[[listeners]]\nlisten = \"nowhere\"\n");
    let out = weir().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners[0].listen"));
}

/// The resident memory of process `pid`, in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Polls `rss(pid)` until two readings 300 ms apart differ by less than 1 % (at most 10 s).
async fn settled_rss(pid: u32) -> u64 {
    let mut last = rss(pid);
    for _ in 0..33 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss(pid);
        if now.abs_diff(last) * 100 < last {
            return now;
        }
        last = now;
    }
    last
}

/// 200 clients that read a 2 MiB response slowly pin a bounded buffer each in weir (its RSS,
/// not a timing), weir gives the memory back when they leave, and a second wave grows it no more.
#[tokio::test]
async fn slow_readers_pin_bounded_memory_and_give_it_back() {
    const BIG: usize = 2 << 20;
    const H1: usize = 150;
    const H2: usize = 50;
    let up = Upstream::http1()
        .route("/big", 200, vec![b'z'; BIG])
        .start()
        .await;
    let cfg = on_port_zero(Toml::one_route("slow-read", "slow-read-up", &[up.addr()]));
    let (_dir, path) = temp_file("slow-read.toml", &cfg);
    let mut child = weir()
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info,weir::access=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let child = KillOnDrop(child);
    let (mut addr, mut admin) = (None, None);
    let mut line = String::new();
    while addr.is_none() || admin.is_none() {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "weir exited early");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let at = v["addr"]
            .as_str()
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
        match v["message"].as_str() {
            Some("listening") => addr = at,
            Some("admin listening") => admin = at,
            _ => {}
        }
    }
    let (addr, admin) = (addr.unwrap(), admin.unwrap());
    // Keep draining the log so weir never blocks on a full pipe.
    std::thread::spawn(move || while out.read_line(&mut String::new()).unwrap_or(0) > 0 {});

    // Warm up: whole responses, so pools and allocator arenas exist before the baseline.
    let c = crate::support::Client::h1();
    for _ in 0..10 {
        let r = c.get(addr, "/big").await;
        assert_eq!(r.body.len(), BIG);
    }
    drop(c);
    let base = settled_rss(pid).await;

    let loaded = slow_readers(addr, H1, H2, pid).await;
    let after = open_connections_gone(admin, pid).await;
    // A second wave reuses what the first one left with the allocator: no growth.
    let again = slow_readers(addr, H1, H2, pid).await;
    let after_again = open_connections_gone(admin, pid).await;
    let per_conn = loaded.saturating_sub(base) / (H1 + H2) as u64;
    println!(
        "slow readers: rss {} KiB at rest; {} KiB with {} slow readers ({} KiB each); {} KiB \
         after they left; {} KiB with a second wave, {} KiB after it left",
        base / 1024,
        loaded / 1024,
        H1 + H2,
        per_conn / 1024,
        after / 1024,
        again / 1024,
        after_again / 1024,
    );
    drop(child);
    // Before the buffers were bounded: about 1 MiB per slow reader.
    assert!(
        per_conn < 256 * 1024,
        "each slow reader pins {} KiB",
        per_conn / 1024
    );
    let grown = loaded.saturating_sub(base);
    assert!(
        again.saturating_sub(base) <= grown + grown / 4,
        "a second wave grew weir again: {} KiB, the first {} KiB",
        again.saturating_sub(base) / 1024,
        grown / 1024
    );
}

/// Opens `h1` HTTP/1.1 and `h2` HTTP/2 readers of `/big` that take a first chunk and then
/// read nothing more; returns weir's settled RSS while they are all open, then closes them.
async fn slow_readers(addr: std::net::SocketAddr, h1: usize, h2: usize, pid: u32) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // HTTP/1.1 readers with a 4 KiB receive buffer that read one chunk and then stop.
    let mut held = Vec::new();
    for _ in 0..h1 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        assert!(s.read(&mut first).await.unwrap() > 0);
        held.push(s);
    }
    // HTTP/2 readers that advertise a 32-byte window and never open it further.
    let mut streams = Vec::new();
    for _ in 0..h2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(32)
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        streams.push(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let mut send = send.ready().await.unwrap();
        let req = http::Request::get(format!("http://{addr}/big"))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(async move {
            let mut body = resp.into_body();
            // Hold the stream without releasing capacity: the window stays at 32 bytes.
            let _ = body.data().await;
            std::future::pending::<()>().await;
        }));
    }
    let loaded = settled_rss(pid).await;
    drop(held);
    for t in &streams {
        t.abort();
    }
    loaded
}

/// Waits until weir has closed every downstream connection; returns its settled RSS then.
async fn open_connections_gone(admin: std::net::SocketAddr, pid: u32) -> u64 {
    crate::support::eventually_async(
        || async move {
            crate::support::scrape(admin)
                .await
                .get("weir_downstream_connections", &[("listener", "main")])
                == Some(0.0)
        },
        Duration::from_secs(10),
    )
    .await;
    settled_rss(pid).await
}

/// A child process killed when the test ends, also by a panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
