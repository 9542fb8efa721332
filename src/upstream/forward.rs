//! The leaf of every upstream stack: pick an endpoint, send through the pooled client, and map
//! transport failures to `upstream-connect` / `upstream-reset` / `payload-too-large`.
//!
//! Position: step 6 of the walk. Config: `upstreams.<name>.endpoints`, `protocol`.
//! Metrics: `weir_upstream_attempts_total{upstream,outcome}`, `weir_in_flight{upstream}`.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri, Version};
use hyper_util::client::legacy::ResponseFuture as ClientFuture;
use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tower::Service;

use crate::admin::metrics::{IN_FLIGHT, Metrics, UPSTREAM_ATTEMPTS_TOTAL};
use crate::config::{Protocol, UpstreamConfig};
use crate::error::ProxyError;
use crate::http::{Body, BodyTooLarge, Request, Response};
use crate::upstream::client::{self, HttpClient};

/// Sends a request to one endpoint of the upstream. Always ready; clones share state.
#[derive(Clone, Debug)]
pub struct Forward {
    shared: Arc<Shared>,
}

struct Shared {
    client: HttpClient,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    version: Version,
    in_flight: Gauge,
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
}

impl Forward {
    /// The leaf for upstream `cfg`, with its own pooled client.
    pub fn new(cfg: &UpstreamConfig, metrics: &Metrics) -> Self {
        let up = || ("upstream", cfg.name.clone());
        let outcome = |o: &'static str| {
            metrics.counter(UPSTREAM_ATTEMPTS_TOTAL, &[up(), ("outcome", Arc::from(o))])
        };
        let shared = Shared {
            client: client::build(cfg),
            endpoints: cfg.endpoints.clone(),
            next: AtomicUsize::new(0),
            version: match cfg.protocol {
                Protocol::Http1 => Version::HTTP_11,
                Protocol::Http2 => Version::HTTP_2,
            },
            in_flight: metrics.gauge(IN_FLIGHT, &[up()]),
            outcomes: Outcomes {
                response: outcome("response"),
                connect: outcome("upstream-connect"),
                reset: outcome("upstream-reset"),
                too_large: outcome("payload-too-large"),
            },
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Round robin over the static endpoint list.
    fn pick(&self) -> Option<&Authority> {
        let n = self.shared.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % n;
        self.shared.endpoints.get(i)
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
        let Some(endpoint) = self.pick().cloned() else {
            return ResponseFuture::failed(ProxyError::NoHealthyEndpoint);
        };
        let (mut parts, body) = req.into_parts();
        if self.shared.version == Version::HTTP_11
            && !parts.headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            // An HTTP/2 request carries its host in :authority; HTTP/1.1 needs the header.
            parts.headers.insert(HOST, host);
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(endpoint);
        uri.path_and_query = Some(pq);
        parts.uri = match Uri::from_parts(uri) {
            Ok(uri) => uri,
            Err(_) => {
                return ResponseFuture::failed(ProxyError::BadRequest("invalid request target"));
            }
        };
        parts.version = self.shared.version;
        self.shared.in_flight.increment(1.0);
        let fut = self.shared.client.request(Request::from_parts(parts, body));
        ResponseFuture {
            state: State::Sending {
                fut,
                guard: InFlight(self.shared.clone()),
            },
        }
    }
}

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.decrement(1.0);
    }
}

pin_project! {
    /// The future of [`Forward`]. Dropping it cancels the upstream request.
    pub struct ResponseFuture {
        state: State,
    }
}

enum State {
    Sending { fut: ClientFuture, guard: InFlight },
    Failed(Option<ProxyError>),
}

impl ResponseFuture {
    fn failed(err: ProxyError) -> Self {
        Self {
            state: State::Failed(Some(err)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state {
            State::Failed(err) => {
                Poll::Ready(Err(err.take().unwrap_or(ProxyError::NoHealthyEndpoint)))
            }
            State::Sending { fut, guard } => {
                let result = match Pin::new(fut).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                };
                let o = &guard.0.outcomes;
                Poll::Ready(match result {
                    Ok(resp) => {
                        o.response.increment(1);
                        Ok(resp.map(Body::incoming))
                    }
                    Err(e) if e.is_connect() => {
                        o.connect.increment(1);
                        Err(ProxyError::UpstreamConnect(Box::new(e)))
                    }
                    Err(e) if caused_by::<BodyTooLarge>(&e) => {
                        o.too_large.increment(1);
                        Err(ProxyError::PayloadTooLarge)
                    }
                    Err(e) => {
                        o.reset.increment(1);
                        Err(ProxyError::UpstreamReset(Box::new(e)))
                    }
                })
            }
        }
    }
}

fn caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<E>() {
            return true;
        }
        cur = e.source();
    }
    false
}
