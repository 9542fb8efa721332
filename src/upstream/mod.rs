//! One upstream: its endpoints, how to reach them, and the stack in front of them.
//!
//! Position: step 5 of the walk; [`build`] lists the layers in the order a request meets them.
//! Config: `upstreams.<name>`. Metrics: see [`forward`].

pub mod client;
pub mod forward;
pub mod pool;

use tower::util::BoxCloneSyncService;

use crate::admin::metrics::Metrics;
use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::http::{Request, Response};
use forward::Forward;

/// The erased stack of one upstream, shared by every route that names it.
#[derive(Clone)]
pub struct UpstreamService(BoxCloneSyncService<Request, Response, ProxyError>);

impl std::fmt::Debug for UpstreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamService")
    }
}

impl tower::Service<Request> for UpstreamService {
    type Response = Response;
    type Error = ProxyError;
    type Future =
        <BoxCloneSyncService<Request, Response, ProxyError> as tower::Service<Request>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.0.call(req)
    }
}

/// Builds the stack of one upstream. Today it is the forwarding leaf: round robin over the
/// static endpoints through the pooled client.
pub fn build(cfg: &UpstreamConfig, metrics: &Metrics) -> UpstreamService {
    UpstreamService(BoxCloneSyncService::new(Forward::new(cfg, metrics)))
}
