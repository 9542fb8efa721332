//! Per-request cost of weir's resilience stack, as ratios to a bare leaf service.
//!
//! - `leaf`: the leaf alone (a service that answers 200 at once).
//! - `stack/default`: the default route stack (deadline → rate limit → fault) over the default
//!   upstream stack (shed → breaker → retry → per-try timeout) over the same leaf, erased at
//!   the same boundaries as in weir.
//! - `stack/refused`: a request that load shedding refuses (every slot held, no queue).
//!
//! Run with `cargo bench --bench stack`; the last lines print each case as a ratio to `leaf`.

// A bench measures wall time with the standard clock, and fails loudly on a broken setup.
#![allow(clippy::disallowed_types, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tower::{ServiceExt, service_fn};

use weir::config::{Config, Priority};
use weir::internals::ProxyError;
use weir::internals::RequestContext;
use weir::internals::metrics::Metrics;
use weir::internals::{Body, Request, Response};

const HOLD: &str = "x-bench-hold";

fn request() -> Request {
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = http::Uri::from_static("/api/items?id=42");
    let h = req.headers_mut();
    h.insert("host", http::HeaderValue::from_static("bench.example"));
    h.insert("user-agent", http::HeaderValue::from_static("bench/1.0"));
    h.insert("accept", http::HeaderValue::from_static("*/*"));
    req.extensions_mut().insert(RequestContext::new(
        [127, 0, 0, 1].into(),
        Arc::from("bench"),
        Priority::Default,
    ));
    req
}

/// Answers 200 at once, or never for a request carrying [`HOLD`] (it keeps its shed slot).
fn leaf() -> impl tower::Service<
    Request,
    Response = Response,
    Error = ProxyError,
    Future = impl Future<Output = Result<Response, ProxyError>> + Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Request| {
        let hold = req.headers().contains_key(HOLD);
        async move {
            if hold {
                std::future::pending::<()>().await;
            }
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        }
    })
}

/// The route target stack of `toml`'s first route over its upstream, with `leaf` as the leaf.
fn stack(toml: &str, metrics: &Metrics) -> weir::internals::RouteService {
    let config = Config::from_toml(toml, "bench.toml").expect("bench config is valid");
    let upstreams: HashMap<_, _> = config
        .upstreams
        .iter()
        .map(|u| {
            let set = weir::internals::endpoint_set(u, metrics).expect("endpoint set");
            let built = weir::internals::with_leaf(u, metrics, set, leaf());
            (u.name.clone(), built.service)
        })
        .collect();
    let route =
        weir::internals::build_route(&config.routes[0], &upstreams, metrics).expect("route builds");
    route.pick().service.clone()
}

const DEFAULT: &str = r#"
[[routes]]
name = "bench"
upstream = "bench"
[upstreams.bench]
endpoints = ["127.0.0.1:9"]
"#;

const REFUSING: &str = r#"
[[routes]]
name = "bench"
upstream = "bench"
[upstreams.bench]
endpoints = ["127.0.0.1:9"]
shed = { max_in_flight = 1, min_limit = 1, queue = 0 }
"#;

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = Metrics::new().expect("metrics");
    let mut group = c.benchmark_group("stack");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));

    let bare = leaf();
    group.bench_function("leaf", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let resp = bare.clone().oneshot(request()).await;
                    assert!(resp.is_ok());
                }
                start.elapsed()
            })
        });
    });

    let default = rt.block_on(async { stack(DEFAULT, &metrics) });
    group.bench_function("default", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let resp = default.0.clone().oneshot(request()).await;
                    assert!(resp.is_ok());
                }
                start.elapsed()
            })
        });
    });

    let refusing = rt.block_on(async { stack(REFUSING, &metrics) });
    // One request holds the only slot for the whole run.
    let mut held = request();
    held.headers_mut()
        .insert(HOLD, http::HeaderValue::from_static("1"));
    let holder = rt.spawn(refusing.0.clone().oneshot(held));
    rt.block_on(tokio::task::yield_now());
    group.bench_function("refused", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let resp = refusing.0.clone().oneshot(request()).await;
                    assert!(matches!(resp, Err(ProxyError::Overloaded)));
                }
                start.elapsed()
            })
        });
    });
    holder.abort();
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    report_ratios();
}

/// Prints each case's mean time per request as a ratio to the bare leaf, from criterion's own
/// estimates of this run.
fn report_ratios() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("criterion").join("stack"));
    let Some(dir) = dir else { return };
    let mean = |case: &str| -> Option<f64> {
        let text =
            std::fs::read_to_string(dir.join(case).join("new").join("estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    let Some(leaf) = mean("leaf") else { return };
    println!("\nper request, as a ratio to the bare leaf ({leaf:.0} ns):");
    for case in ["default", "refused"] {
        if let Some(ns) = mean(case) {
            println!("  stack/{case:<8} {ns:>8.0} ns  {:.2}x leaf", ns / leaf);
        }
    }
}
