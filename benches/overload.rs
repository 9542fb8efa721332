//! Load shedding under overload: goodput and the latency of what is admitted and what is refused.
//!
//! A `Shed` stack (limit L = 16, the default queue of 256 places and 50 ms) over a leaf that
//! takes 10 ms (a `tokio::time::sleep`, real clock), so capacity is L / 10 ms = 1600 req/s. An
//! open-loop arrival process (a 1 ms tick that sends what is due, whatever came back) runs at
//! 0.5× capacity for 3 s, then at 3× capacity for 5 s. Of the overload phase the figures are
//! taken in steady state (arrivals after its first second) and, in brackets, over the whole
//! phase, transition included. Goodput is measured against L / the mean call time at half
//! load, since a 10 ms sleep lasts until the next 1 ms timer tick.
//!
//! Run with `cargo bench --bench overload` (about 9 s). It prints each figure and PASS or MISS
//! against its target; it always exits 0.

// A bench reports on stdout and fails loudly on a broken setup.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tower::{Layer, ServiceExt, service_fn};

use weir::config::{Mode, Priority, ShedSettings};
use weir::internals::ProxyError;
use weir::internals::RequestContext;
use weir::internals::ShedLayer;
use weir::internals::metrics::Metrics;
use weir::internals::{Body, Request, Response};

const LIMIT: u32 = 16;
const SERVICE: Duration = Duration::from_millis(10);
const HALF: Duration = Duration::from_secs(3);
const OVER: Duration = Duration::from_secs(5);
/// The start of the overload phase left out of its steady-state figures.
const SETTLE: Duration = Duration::from_secs(1);

/// One request's fate: when it arrived (since its phase began), how long it took, whether served.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    took: Duration,
    ok: bool,
}

fn request() -> Request {
    let mut req = Request::new(Body::empty());
    req.extensions_mut().insert(RequestContext::new(
        [127, 0, 0, 1].into(),
        Arc::from("bench"),
        Priority::Default,
    ));
    req
}

/// Sends `rate` requests per second for `dur`, open loop, and returns every request's fate.
async fn phase<S>(svc: &S, rate: f64, dur: Duration) -> Vec<Sample>
where
    S: tower::Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    loop {
        tick.tick().await;
        let now = start.elapsed();
        if now >= dur {
            break;
        }
        // Arrivals due by now; the tick only batches them.
        let due = (now.as_secs_f64() * rate) as u64;
        for _ in sent..due {
            let call = svc.clone().oneshot(request());
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let ok = call.await.is_ok();
                Sample {
                    at: t0.duration_since(start),
                    took: t0.elapsed(),
                    ok,
                }
            }));
        }
        sent = sent.max(due);
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

fn p99(mut xs: Vec<Duration>) -> Duration {
    if xs.is_empty() {
        return Duration::ZERO;
    }
    xs.sort_unstable();
    let at = (xs.len() * 99).div_ceil(100).saturating_sub(1);
    xs[at.min(xs.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Served per second over `window`, as a fraction of `capacity`; p99 of the served; p99 of the
/// refused; the share refused.
fn figures(
    samples: &[Sample],
    from: Duration,
    window: Duration,
    capacity: f64,
) -> (f64, Duration, Duration, f64) {
    let within: Vec<_> = samples.iter().filter(|s| s.at >= from).collect();
    let served: Vec<_> = within.iter().filter(|s| s.ok).map(|s| s.took).collect();
    let refused: Vec<_> = within.iter().filter(|s| !s.ok).map(|s| s.took).collect();
    let goodput = served.len() as f64 / window.as_secs_f64() / capacity;
    let refused_share = refused.len() as f64 / within.len().max(1) as f64;
    (goodput, p99(served), p99(refused), refused_share)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let metrics = Metrics::new().expect("metrics");
        let settings = ShedSettings {
            mode: Mode::Enforce,
            max_in_flight: LIMIT,
            queue: 256,
            queue_timeout: Duration::from_millis(50),
            adaptive: false,
            min_limit: 1,
        };
        let layer = ShedLayer::new("bench".into(), &settings, &metrics);
        let svc = layer.layer(service_fn(|_req: Request| async {
            tokio::time::sleep(SERVICE).await;
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        }));
        let capacity = f64::from(LIMIT) / SERVICE.as_secs_f64();

        let half = phase(&svc, 0.5 * capacity, HALF).await;
        let over = phase(&svc, 3.0 * capacity, OVER).await;

        // The sleep ends on tokio's 1 ms timer tick, so a call holds its slot a little longer
        // than SERVICE: the capacity goodput is measured against is L / the mean time a call
        // took at half load (where nothing waits).
        let took: Vec<_> = half.iter().filter(|s| s.ok).map(|s| s.took).collect();
        let mean = took.iter().sum::<Duration>() / u32::try_from(took.len().max(1)).unwrap_or(1);
        let measured = f64::from(LIMIT) / mean.as_secs_f64();
        let (h_good, h_p99, _, h_refused) = figures(&half, Duration::ZERO, HALF, capacity);
        let (goodput, a_p99, s_p99, refused) = figures(&over, SETTLE, OVER - SETTLE, measured);
        let (goodput_all, a_p99_all, s_p99_all, _) = figures(&over, Duration::ZERO, OVER, measured);
        let nominal = goodput * measured / capacity;
        let ratio = a_p99.as_secs_f64() / h_p99.as_secs_f64().max(1e-9);
        let ratio_all = a_p99_all.as_secs_f64() / h_p99.as_secs_f64().max(1e-9);

        println!(
            "overload: L = {LIMIT}, service {} ms, capacity {capacity:.0} req/s nominal, \
             {measured:.0} req/s measured (mean call {:.2} ms at half load)",
            ms(SERVICE),
            ms(mean)
        );
        println!(
            "half load (0.5x): {} requests, served {:.3} of capacity, refused {:.4}, p99 {:.2} ms",
            half.len(),
            h_good,
            h_refused,
            ms(h_p99)
        );
        println!(
            "overload (3x): {} requests, refused {:.3} (steady state, after the first {} s)",
            over.len(),
            refused,
            SETTLE.as_secs()
        );
        println!(
            "  goodput            {goodput:.3} of measured capacity ({goodput_all:.3}; \
             {nominal:.3} of nominal)  target >= 0.90  {}",
            verdict(goodput >= 0.90)
        );
        println!(
            "  shed p99           {:.2} ms ({:.2} ms)  target <= 10 ms  {}",
            ms(s_p99),
            ms(s_p99_all),
            verdict(s_p99 <= Duration::from_millis(10))
        );
        println!(
            "  admitted p99       {:.2} ms ({:.2} ms) = {ratio:.2}x half load ({ratio_all:.2}x)  \
             target <= 1.5x  {}",
            ms(a_p99),
            ms(a_p99_all),
            verdict(ratio <= 1.5)
        );
    });
}
