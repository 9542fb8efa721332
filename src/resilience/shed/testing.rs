//! What the shed tests share: a leaf the test releases call by call, a timed leaf, requests of
//! a priority, and readers of the metrics.
//!
//! Position: test-only, beside the stage it exercises. Config: built per test. Metrics: read
//! back from the test's own recorder.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::{Settings, Shed, ShedLayer};
use crate::error::ProxyError;
use crate::http::context::{Priority, RequestContext};
use crate::http::{Body, Request, Response};
use crate::metrics::Metrics;
use crate::resilience::Mode;

/// What a call through the stage answers.
pub(super) type Out = Result<Response, ProxyError>;

/// A leaf that logs the id of each call it starts and holds it until the test releases it
/// (first started, first released).
#[derive(Clone)]
pub(super) struct Leaf {
    log: Arc<Mutex<Vec<u32>>>,
    gate: Arc<Semaphore>,
}

impl Leaf {
    pub(super) fn new() -> Self {
        Self {
            log: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    pub(super) fn service(
        &self,
    ) -> impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
    + Clone
    + Send
    + 'static
    + use<> {
        let leaf = self.clone();
        service_fn(move |req: Request| {
            let leaf = leaf.clone();
            async move {
                let id = req.extensions().get::<u32>().copied().unwrap_or(0);
                leaf.log.lock().unwrap().push(id);
                leaf.gate.acquire().await.unwrap().forget();
                Ok(Response::new(Body::empty()))
            }
        })
    }

    pub(super) fn log(&self) -> Vec<u32> {
        self.log.lock().unwrap().clone()
    }

    pub(super) fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

pub(super) fn settings(mode: Mode, max_in_flight: u32, queue: u32, wait_ms: u64) -> Settings {
    Settings {
        mode,
        max_in_flight,
        queue,
        queue_timeout: Duration::from_millis(wait_ms),
        adaptive: false,
        min_limit: 1,
    }
}

pub(super) fn req(id: u32, prio: Priority) -> Request {
    let mut r = Request::new(Body::empty());
    r.extensions_mut().insert(id);
    let ctx = RequestContext::new(IpAddr::from([127, 0, 0, 1]), "r".into(), prio);
    r.extensions_mut().insert(ctx);
    r
}

/// Lets every spawned task run until it blocks.
pub(super) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

pub(super) fn spawn<S>(svc: &Shed<S>, id: u32, prio: Priority) -> JoinHandle<Out>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(svc.clone().oneshot(req(id, prio)))
}

/// `call` then one poll: the answer if the future is ready at once.
pub(super) fn call_now<S>(svc: &Shed<S>, id: u32, prio: Priority) -> Option<Out>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    svc.clone().call(req(id, prio)).now_or_never()
}

pub(super) fn metric(m: &Metrics, series: &str) -> Option<f64> {
    m.render().lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

pub(super) fn shed_total(m: &Metrics, reason: &str) -> f64 {
    metric(
        m,
        &format!("weir_shed_total{{upstream=\"u\",reason=\"{reason}\"}}"),
    )
    .unwrap()
}

pub(super) fn setup(
    s: Settings,
) -> (
    Metrics,
    ShedLayer,
    Leaf,
    Shed<
        impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
        + Clone
        + Send
        + 'static,
    >,
) {
    let m = Metrics::new().unwrap();
    let layer = ShedLayer::new("u".into(), &s, &m);
    let leaf = Leaf::new();
    let svc = layer.layer(leaf.service());
    (m, layer, leaf, svc)
}

pub(super) fn overloaded(out: Out) -> bool {
    matches!(out, Err(ProxyError::Overloaded))
}

/// The ids of the calls a leaf started, in order.
pub(super) type Log = Arc<Mutex<Vec<u32>>>;

/// Like [`setup`], with a leaf that logs each call's id and answers after `service_ms`.
pub(super) fn setup_timed(
    s: Settings,
    service_ms: u64,
) -> (
    Metrics,
    ShedLayer,
    Log,
    Shed<
        impl Service<Request, Response = Response, Error = ProxyError, Future: Send>
        + Clone
        + Send
        + 'static,
    >,
) {
    let m = Metrics::new().unwrap();
    let layer = ShedLayer::new("u".into(), &s, &m);
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let svc = layer.layer(service_fn(move |req: Request| {
        l.lock()
            .unwrap()
            .push(req.extensions().get::<u32>().copied().unwrap_or(0));
        async move {
            tokio::time::sleep(Duration::from_millis(service_ms)).await;
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        }
    }));
    (m, layer, log, svc)
}
