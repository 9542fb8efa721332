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

use crate::support::Upstream;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn temp_file(name: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
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
    let path = temp_file("bad.toml", body);
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
) {
    let path = temp_file(name, config);
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
    (child, out, addr)
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
    let cfg = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"cli\"\nupstream = \"cli-up\"\n[upstreams.cli-up]\nendpoints = [\"{}\"]\n",
        up.addr()
    );
    let (child, mut out, addr) = spawn_on(&cfg, "run.toml");
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
    let cfg = "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n";
    let (child, _out, _addr) = spawn_on(cfg, "int.toml");
    signal(&child, "INT");
    assert_eq!(wait_exit(child).code(), Some(0));
}

#[test]
fn an_invalid_file_does_not_start() {
    let path = temp_file("invalid.toml", "[[listeners]]\nlisten = \"nowhere\"\n");
    let out = weir().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listeners[0].listen"));
}
