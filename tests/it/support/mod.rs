//! Test support: real upstreams, a small client, `/metrics` scraping, bounded polling.
//!
//! Everything binds `127.0.0.1:0` and uses real time; wait with [`eventually`], never a sleep.
//! Every task a helper spawns stops when its handle is dropped.

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod certs;
pub mod client;
pub mod dns;
pub mod metrics;
pub mod toml;
pub mod upstream;
pub mod weir;

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

const POLL_INTERVAL: Duration = Duration::from_millis(10);
