//! Test support: real upstreams, a small client, `/metrics` scraping, weir configs, bounded
//! polling, and the external tools some tests need.
//!
//! Everything binds `127.0.0.1:0` and uses real time; wait with [`eventually`], never a sleep.
//! Every task a helper spawns stops when its handle is dropped. `benches/overload_proxy.rs`
//! compiles this module in by path, so it names nothing outside `support/` through `crate::`.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

pub mod certs;
pub mod client;
pub mod dns;
pub mod grpc;
pub mod metrics;
pub mod tasks;
pub mod toml;
pub mod upstream;
pub mod weir;

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

pub use self::toml::{ConfigFile, Toml};
pub use self::weir::Weir;
pub use client::{
    Client, ClientError, Reply, Upgraded, build_request, io_error_kind, raw, upgrade,
};
pub use metrics::{Sample, Scrape, scrape, status_entry, status_json};
pub use upstream::{Protocol, Recorded, RunningUpstream, Upstream, UpstreamBuilder};

/// Polls `cond` every 10 ms until it holds; panics if it still does not after `timeout`.
pub async fn eventually<F: FnMut() -> bool>(mut cond: F, timeout: Duration) {
    eventually_async(|| std::future::ready(cond()), timeout).await;
}

/// Like [`eventually`], for a condition that must await (a scrape, a request).
pub async fn eventually_async<F, Fut>(mut cond: F, timeout: Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition still false after {timeout:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The external program `name` on `PATH`, for a test that needs it (`promtool`, say). When it is
/// missing the test skips, printing why, unless the `CI` environment variable is set: then the
/// test fails, naming the tool (`.ci/run` installs each one).
pub fn tool(name: &str) -> Option<PathBuf> {
    any_tool(&[name])
}

/// Like [`tool`], for a program known by several names (the first found wins).
pub fn any_tool(names: &[&str]) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        names
            .iter()
            .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
            .find(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    if found.is_none() {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        let names = names.join(" or ");
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {names} is not on PATH, and CI is set: it must run here (.ci/run installs it)"
        );
        eprintln!("SKIPPED {test}: {names} is not on PATH (with CI set, this fails)");
    }
    found
}

const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A loopback port where nothing listens, and which nothing else can take while the returned
/// socket lives: it is bound but never listens, so a connect there is refused. (A port bound
/// and released at once can be taken by a listener of a test running beside this one.)
pub fn closed_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    sock.bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind to a loopback port");
    let addr = sock.local_addr().expect("the bound address");
    (sock, addr)
}
