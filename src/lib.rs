//! Weir: a resilience proxy for HTTP.
//!
//! Weir runs next to a service (sidecar), in front of many (edge), or by itself as a fake
//! backend for load tests. Every call through it is bounded in time, retried only when that is
//! safe, cut off when an upstream is sick, shed early under overload, and visible on an admin
//! port.
//!
//! # One request, one way
//!
//! 1. **[`server::Listener`]** accepts a connection under the listener's connection limit, does
//!    the TLS handshake when the listener has `tls` ([`tls::server`]: ALPN, mTLS, certificates
//!    swapped on reload), and serves it with hyper-util's `auto::Builder` (HTTP/1.1 and h2 on
//!    one port) through one
//!    [`server::service::ProxyService`] per connection; [`server::conn`] times idle
//!    connections, slow request heads and writes the client does not take (`send_timeout`).
//! 2. **`ProxyService`** walks the request in named steps (`check` → `route` → `prepare` →
//!    `call` → `finish` → `record`, in [`server::service`]). It loads the live
//!    [`generation::Generation`] once, so the whole request runs on one generation, and runs
//!    [`http::hygiene`]: `Host` and framing → 400, header limits
//!    → 431, declared body size → 413, hop-by-hop headers stripped, `X-Forwarded-*` and `Via`
//!    set, `x-request-id` and `traceparent` filled ([`http::context`]).
//! 3. **[`router::Router`]** picks the first route whose match holds, or fails with `no-route`.
//! 4. **The route** ([`route::build`]) picks its target — its upstream, a weighted pick of a
//!    split, or a direct response — and runs that target's stack: the total deadline
//!    ([`route::deadline`], which an inbound `x-weir-deadline-ms` may lower), the rate limit
//!    ([`route::ratelimit`]), fault injection ([`route::fault`]), then the upstream stack or the
//!    direct response. `ProxyService` has put the request's [`http::context::RequestContext`]
//!    (client, route, priority; the deadline once known) into its extensions for them.
//! 5. **The upstream stack** ([`upstream::build`]): load shedding ([`resilience::shed`]), the
//!    circuit breaker ([`resilience::breaker`]), retries ([`resilience::retry`]) and the per-try
//!    timeout ([`resilience::timeout`]), ending in **[`upstream::forward`]**, which reads the
//!    upstream's endpoint snapshot ([`upstream::endpoints`]: which endpoints serve, kept by
//!    the health-check, outlier and DNS tasks), picks one with the balancer
//!    ([`upstream::balance`]; not the one the previous try used), sends through its connection
//!    ([`upstream::client`]: its pool, or the upstream's HTTP/2 client; TLS with
//!    [`tls::client`]), maps transport failures to `upstream-connect` / `upstream-reset` /
//!    `upstream-tls`, and records on the endpoint its latency, in-flight count and outcome.
//! 6. **On the way back** `ProxyService` turns any [`error::ProxyError`] into a response with
//!    [`http::respond`] (status, `x-weir-error`, JSON body, `Retry-After`), strips hop-by-hop
//!    headers from the response, and hands it to hyper in a body that, once the response body has
//!    ended (or broken off: `upstream-timeout` when `read_timeout` cut it), records
//!    `weir_requests_total` and the duration histogram and writes one access-log event (target
//!    `weir::access`) with the same `reason`.
//!
//! Off the request path, [`admin`] serves `/metrics`, `/healthz`, `/readyz`, `/status`,
//! `/status.json` and `/config`, and only reads. [`config`] turns a TOML file into a validated
//! [`config::Config`], assembled from the stages' own settings types. A generation's
//! background tasks (health checks, endpoint upkeep, DNS discovery) start when it goes live
//! ([`generation::Generation::start`]) and end with the last generation that holds them.
//! [`telemetry`] sets up logs (and, with the feature `otel`, OTLP span export).

// The crate doc walks the internals: read it with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod admin;
mod app;
pub mod config;
mod error;
mod generation;
mod http;
mod metrics;
mod reload;
mod resilience;
mod route;
mod router;
mod server;
pub mod telemetry;
mod tls;
mod upstream;
mod watch;
mod workers;

pub use app::{App, Drained, Running, StartError};
pub use config::Config;
pub use reload::ReloadError;

/// What the benches, the fuzz targets and the integration tests reach below weir's interface:
/// not part of it, and free to change with any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::error::ProxyError;
    pub use crate::http::context::{Priority, RequestContext, request_id, traceparent};
    pub use crate::http::{Body, KEEP_ALIVE, Request, Response, hygiene, retry_after};
    /// The metric names and the recorder.
    pub mod metrics {
        pub use crate::metrics::*;
    }
    pub use crate::resilience::shed::ShedLayer;
    pub use crate::route::deadline::parse_deadline_ms;
    pub use crate::route::fault::{parse_delay, parse_status};
    pub use crate::route::{RouteService, build as build_route};
    pub use crate::upstream::balance::Balancer;
    pub use crate::upstream::h1::{ReadResponse, read_response};
    pub use crate::upstream::{discovery, endpoint_set, with_leaf};
}
