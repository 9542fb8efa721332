//! The settings of one downstream listener, with their documented defaults.
//!
//! Position: read by [`crate::server`] when it binds and serves (step 1 of the walk).
//! Config: `listeners[]`. Metrics: none.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// One downstream listener (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Name used in metrics and logs; default `main` for the first listener, else `listener-N`.
    pub name: Arc<str>,
    /// Address to bind (`ip:port`); default 127.0.0.1:8080. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Time allowed for a request head to arrive (slowloris guard); default 10s.
    pub header_read_timeout: Duration,
    /// Downstream keep-alive idle timeout; default 60s. It also bounds the wait for the next
    /// bytes of a request body the client stops sending.
    pub idle_timeout: Duration,
    /// The longest a response write may make no progress (the client reads nothing); then the
    /// connection is closed and its upstream requests cancelled. Default 60s (nginx's
    /// `send_timeout`); 0 = no limit.
    pub send_timeout: Duration,
    /// Most connections open at once; default 10000.
    pub max_connections: usize,
    /// Largest request head in bytes; beyond it weir answers 431. Default 65536.
    pub max_header_bytes: usize,
    /// Most request headers; beyond it weir answers 431. Default 100.
    pub max_headers: usize,
    /// Largest request body in bytes; beyond it weir answers 413. 0 = unlimited. Default 10 MiB.
    pub max_body_bytes: u64,
    /// TLS termination; `None` (the default) serves plain TCP.
    pub tls: Option<crate::tls::server::Settings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: Arc::from("main"),
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 65_536,
            max_headers: 100,
            max_body_bytes: 10 * 1024 * 1024,
            tls: None,
        }
    }
}
