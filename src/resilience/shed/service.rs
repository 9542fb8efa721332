//! The tower triad of load shedding: [`ShedLayer`], the [`Shed`] service it makes, and the
//! read-only [`ShedHandle`] that status pages and the gauge timer use.
//!
//! Position: outermost layer of every upstream stack; `call` reads the request's priority and
//! asks admission for a permit. Config: `upstreams.<name>.shed.*`. Metrics: `weir_in_flight`
//! (published by the handle), the others through admission.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::Settings;
use super::admit::{Arrival, Shared};
use super::future::ResponseFuture;
use crate::error::ProxyError;
use crate::http::context::{Priority, RequestContext};
use crate::http::{Request, Response};
use crate::metrics::Metrics;
use crate::resilience::Mode;

/// Wraps a service in [`Shed`]. Clones, and every service they wrap, share one set of slots,
/// one queue and one limit: build one layer per upstream.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

/// See the module docs. Always ready; admission is decided in `call`.
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// A read-only view of one upstream's shedding, for the admin status page.
#[derive(Clone)]
pub struct ShedHandle {
    shared: Arc<Shared>,
}

/// A snapshot of one upstream's shedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShedStatus {
    /// Requests admitted whose response has not ended (its body read to the end or dropped).
    pub in_flight: u32,
    /// The limit in force (adaptive or fixed) for `default` traffic, which `critical` traffic
    /// may exceed by its reserve (see the module docs); 0 in mode `off` (no limit).
    pub limit: u32,
    /// Requests waiting in the queue.
    pub queued: u32,
    /// The configured mode.
    pub mode: Mode,
    /// Whether the limit adapts to latency (never in mode `off`).
    pub adaptive: bool,
}

// === impl ShedLayer ===

impl ShedLayer {
    /// Shedding for `upstream` with `settings`; registers its metrics in `metrics` and sets
    /// `weir_concurrency_limit` to `max_in_flight` (left unset in mode `off`).
    pub fn new(upstream: Arc<str>, settings: &Settings, metrics: &Metrics) -> Self {
        Self {
            shared: Arc::new(Shared::new(upstream, settings, metrics)),
        }
    }

    /// A read-only view of the shared state, for status pages.
    pub fn handle(&self) -> ShedHandle {
        ShedHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Shed ===

impl<S> Service<Request> for Shed<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Admission is decided in `call`, so a refusal holds nothing; this only asks the inner
        // service, and every stage below is always ready.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.shared.arrive(priority_of(&req)) {
            Arrival::Admitted(permit) => ResponseFuture::admitted(self.inner.call(req), permit),
            Arrival::Waiting(waiter, wait) => {
                ResponseFuture::waiting(waiter, wait, self.inner.clone(), req)
            }
            Arrival::Refused => ResponseFuture::rejected(),
        }
    }
}

// === impl ShedHandle ===

impl ShedHandle {
    /// Sets `weir_in_flight{upstream}` from the slot counter. The request path keeps only the
    /// counter (no gauge update per request); call this on a timer and before a scrape.
    pub fn publish(&self) {
        let s = &self.shared;
        s.metrics
            .in_flight
            .set(f64::from(s.in_flight.load(Relaxed)));
    }

    /// The state now (each field read atomically, the whole not as one snapshot).
    pub fn status(&self) -> ShedStatus {
        let s = &self.shared;
        ShedStatus {
            in_flight: s.in_flight.load(Relaxed),
            limit: match s.mode {
                Mode::Off => 0,
                Mode::Enforce | Mode::DryRun => s.limit.load(Relaxed),
            },
            queued: s.queued.load(Relaxed),
            mode: s.mode,
            adaptive: s.gradient.is_some(),
        }
    }
}

impl fmt::Debug for ShedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedHandle")
            .field("upstream", &self.shared.upstream)
            .field("status", &self.status())
            .finish()
    }
}

/// The request's priority, from its [`RequestContext`] (absent: `default`).
fn priority_of(req: &Request) -> Priority {
    req.extensions()
        .get::<RequestContext>()
        .map_or(Priority::Default, |c| c.priority)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use tower::{Layer, ServiceExt, service_fn};

    use crate::error::ProxyError;
    use crate::http::context::Priority;
    use crate::http::{Body, Request, Response};
    use crate::metrics::Metrics;
    use crate::resilience::Mode;
    use crate::resilience::shed::ShedLayer;
    use crate::resilience::shed::testing::*;

    #[tokio::test(start_paused = true)]
    async fn off_admits_everything_and_keeps_the_in_flight_gauge() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Off, 1, 0, 50));
        let tasks: Vec<_> = (1..=3)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(leaf.log().len(), 3);
        let st = layer.handle().status();
        assert_eq!(
            (st.in_flight, st.limit, st.mode, st.adaptive),
            (3, 0, Mode::Off, false)
        );
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(3.0));
        let text = m.render();
        assert!(!text.contains("weir_dry_run_rejections_total{"), "{text}");
        assert!(!text.contains("weir_concurrency_limit{"), "{text}");
        leaf.release(3);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gauges_follow_admissions_and_refusals_are_counted_by_reason() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 2, 1, 50));
        assert_eq!(
            metric(&m, "weir_concurrency_limit{upstream=\"u\"}"),
            Some(2.0)
        );
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
        let a = spawn(&svc, 1, Priority::Default);
        let b = spawn(&svc, 2, Priority::Default);
        settle().await;
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(2.0));
        let waiting = spawn(&svc, 3, Priority::Default);
        settle().await;
        assert!(overloaded(call_now(&svc, 4, Priority::Default).unwrap()));
        assert!(overloaded(waiting.await.unwrap()));
        let text = m.render();
        for line in [
            "weir_shed_total{upstream=\"u\",reason=\"queue_full\"} 1",
            "weir_shed_total{upstream=\"u\",reason=\"queue_timeout\"} 1",
            "weir_shed_total{upstream=\"u\",reason=\"evicted\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        leaf.release(2);
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
    }

    #[test]
    fn debug_shows_the_status() {
        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new("u".into(), &settings(Mode::Enforce, 3, 1, 5), &m);
        let s = format!("{:?}", layer.handle());
        assert!(s.contains("limit: 3") && s.contains("\"u\""), "{s}");
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_limit_falls_with_latency_and_recovers() {
        let mut s = settings(Mode::Enforce, 64, 0, 50);
        s.adaptive = true;
        s.min_limit = 4;
        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new("u".into(), &s, &m);
        let latency = Arc::new(AtomicU64::new(10));
        let lat = latency.clone();
        let svc = layer.layer(service_fn(move |_req: Request| {
            let ms = lat.load(Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, ProxyError>(Response::new(Body::empty()))
            }
        }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let (svc, stop) = (svc.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Relaxed) {
                        if svc
                            .clone()
                            .oneshot(req(0, Priority::Default))
                            .await
                            .is_err()
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        let limit = || layer.handle().status().limit;
        assert!(layer.handle().status().adaptive);

        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(limit(), 64);
        latency.store(100, Relaxed);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(limit(), 4);
        assert_eq!(
            metric(&m, "weir_concurrency_limit{upstream=\"u\"}"),
            Some(4.0)
        );
        assert!(shed_total(&m, "queue_full") > 0.0);
        latency.store(10, Relaxed);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(limit(), 64);
        assert_eq!(
            metric(&m, "weir_concurrency_limit{upstream=\"u\"}"),
            Some(64.0)
        );

        stop.store(true, Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(layer.handle().status().in_flight, 0);
    }
}
