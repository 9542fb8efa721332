//! The admin side port: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/status` (HTML
//! for a person), `/status.json` (the same facts for tools), `/config`.
//!
//! Position: off the request path; it only reads (metrics, the live generation, readiness).
//! Config: `[admin].listen`.

pub(crate) mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::generation::Current;
use crate::http::{Body, Response};
use crate::metrics::Metrics;

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// The instance's metrics.
    pub metrics: Metrics,
    /// The live generation (for `/status`, `/status.json` and `/config`).
    pub current: Current,
    /// False once shutdown starts: `/readyz` answers 503.
    pub ready: Arc<AtomicBool>,
}

/// Serves the admin port until `stop` fires.
pub(crate) async fn serve(
    tcp: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let Some((stream, _)) = crate::server::accept(&tcp, &stop, "admin").await else {
            return;
        };
        let (state, builder, stop) = (state.clone(), builder.clone(), stop.clone());
        tasks.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &req)) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn answer(state: &AdminState, req: &http::Request<Incoming>) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n",
            "text/plain",
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            state.metrics.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" if state.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n", "text/plain")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n", "text/plain"),
        "/status" => no_store(text(
            StatusCode::OK,
            status::html(&status::StatusSnapshot::collect(&state.current.load())),
            "text/html; charset=utf-8",
        )),
        "/status.json" => no_store(text(
            StatusCode::OK,
            status::json(&status::StatusSnapshot::collect(&state.current.load())),
            "application/json",
        )),
        "/config" => text(
            StatusCode::OK,
            state.current.load().config.to_toml(),
            "application/toml",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /status, /status.json or /config\n",
            "text/plain",
        ),
    }
}

/// Marks `resp` as live state that caches must not keep.
fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
