//! The pooled hyper-util client of one upstream: connect timeout, keep-alive pool, and HTTP/1.1
//! or HTTP/2 with prior knowledge.
//!
//! Position: used by [`crate::upstream::forward`], the leaf of every upstream stack.
//! Config: `upstreams.<name>.connect_timeout`, `pool_idle_timeout`, `protocol`.

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Protocol, UpstreamConfig};
use crate::http::Body;

/// The client type every upstream uses.
pub type HttpClient = Client<HttpConnector, Body>;

/// Builds the client of one upstream. Cheap to clone; clones share the pool.
pub fn build(cfg: &UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .retry_canceled_requests(true)
        .set_host(true)
        .http2_only(cfg.protocol == Protocol::Http2);
    builder.build(connector)
}
