//! The leaf of every upstream stack: pick an endpoint (round robin over the static list,
//! avoiding the one the previous try of the same request used), send through its connection
//! pool (HTTP/1.1) or the upstream's multiplexed client (HTTP/2), and map failures to
//! `upstream-connect` (the request never left: connect failure, HTTP/2 `REFUSED_STREAM`) /
//! `upstream-reset`, or to the client's request body (`payload-too-large`, `bad-request`).
//!
//! Position: step 6 of the walk. Config: `upstreams.<name>.endpoints`, `protocol`.
//! Metrics: `weir_upstream_attempts_total{upstream,outcome}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use metrics::Counter;
use tower::Service;

use crate::admin::metrics::{Metrics, UPSTREAM_ATTEMPTS_TOTAL};
use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::{Request, Response};
use crate::upstream::client::{EndpointConn, SendFuture, Transport};

/// Sends a request to one endpoint of the upstream. Always ready; clones share state.
#[derive(Clone, Debug)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Vec<EndpointConn>,
    next: AtomicUsize,
    outcomes: Outcomes,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// `weir_upstream_attempts_total` handles, one per outcome (a closed set).
struct Outcomes {
    response: Counter,
    connect: Counter,
    reset: Counter,
    too_large: Counter,
    bad_request: Counter,
}

impl Forward {
    /// The leaf for upstream `cfg`, with its own connections.
    pub fn new(cfg: &UpstreamConfig, metrics: &Metrics) -> Self {
        let up = || ("upstream", cfg.name.clone());
        let outcome = |o: &'static str| {
            metrics.counter(UPSTREAM_ATTEMPTS_TOTAL, &[up(), ("outcome", Arc::from(o))])
        };
        let transport = Transport::new(cfg);
        let shared = Shared {
            endpoints: cfg
                .endpoints
                .iter()
                .map(|ep| transport.endpoint(ep.clone()))
                .collect(),
            next: AtomicUsize::new(0),
            outcomes: Outcomes {
                response: outcome("response"),
                connect: outcome("upstream-connect"),
                reset: outcome("upstream-reset"),
                too_large: outcome("payload-too-large"),
                bad_request: outcome("bad-request"),
            },
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Round robin over the static endpoint list, stepping past `avoid` (the endpoint the
    /// previous try of this request went to) when there is another.
    fn pick(&self, avoid: Option<usize>) -> Option<usize> {
        let n = self.shared.endpoints.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % n;
        Some(if avoid == Some(i) { (i + 1) % n } else { i })
    }

    fn send(&self, i: usize, req: Request) -> Result<SendFuture, ProxyError> {
        self.shared
            .endpoints
            .get(i)
            .ok_or(ProxyError::NoHealthyEndpoint)?
            .send(req)
    }
}

impl Service<Request> for Forward {
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let memo = req
            .extensions()
            .get::<RequestContext>()
            .and_then(|c| c.last_endpoint.clone());
        let avoid = memo.as_ref().map(|m| m.load(Ordering::Relaxed));
        let sent = match self.pick(avoid) {
            Some(i) => {
                if let Some(m) = &memo {
                    m.store(i, Ordering::Relaxed);
                }
                self.send(i, req)
            }
            None => Err(ProxyError::NoHealthyEndpoint),
        };
        match sent {
            Ok(fut) => ResponseFuture {
                state: State::Sending {
                    fut,
                    shared: self.shared.clone(),
                },
            },
            Err(e) => ResponseFuture {
                state: State::Failed(Some(e)),
            },
        }
    }
}

/// The future of [`Forward`]. Dropping it cancels the upstream request (hyper closes an
/// HTTP/1.1 connection whose request future is dropped; HTTP/2 resets the stream).
pub struct ResponseFuture {
    state: State,
}

enum State {
    Sending {
        fut: SendFuture,
        shared: Arc<Shared>,
    },
    Failed(Option<ProxyError>),
}

impl Future for ResponseFuture {
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Failed(err) => {
                Poll::Ready(Err(err.take().unwrap_or(ProxyError::NoHealthyEndpoint)))
            }
            State::Sending { fut, shared } => {
                let result = match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                let o = &shared.outcomes;
                match &result {
                    Ok(_) => o.response.increment(1),
                    Err(ProxyError::UpstreamConnect(_)) => o.connect.increment(1),
                    Err(ProxyError::PayloadTooLarge) => o.too_large.increment(1),
                    Err(ProxyError::BadRequest(_)) => o.bad_request.increment(1),
                    Err(_) => o.reset.increment(1),
                }
                Poll::Ready(result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(endpoints: &[&str]) -> Forward {
        let cfg = UpstreamConfig {
            name: "f".into(),
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            ..UpstreamConfig::default()
        };
        Forward::new(&cfg, &Metrics::new().unwrap())
    }

    #[tokio::test]
    async fn round_robin_steps_past_the_endpoint_to_avoid() {
        let f = forward(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        assert_eq!(f.pick(None), Some(0));
        // The next in turn is 1; the last try used 1, so 2 goes instead.
        assert_eq!(f.pick(Some(1)), Some(2));
        assert_eq!(f.pick(Some(0)), Some(2));
        assert_eq!(f.pick(None), Some(0));
        let one = forward(&["127.0.0.1:1"]);
        assert_eq!(
            one.pick(Some(0)),
            Some(0),
            "with one endpoint there is no other"
        );
        assert_eq!(forward(&[]).pick(None), None);
    }
}
