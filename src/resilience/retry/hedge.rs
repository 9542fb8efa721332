//! Hedged requests (`[upstreams.<name>.hedge]`): when a try has no response head after
//! `after`, one more try of the same request goes out to another endpoint (up to `max` more),
//! and the first head to arrive wins; the others are dropped at once, which cancels them (an
//! HTTP/1.1 exchange dropped before its end closes its connection, HTTP/2 resets the stream),
//! and a cancelled loser is neither a success nor a failure for outlier detection.
//!
//! "The Tail at Scale" (Dean and Barroso, 2013): a backup request after the 95th percentile
//! cut one service's 99.9th percentile from 1,800 ms to 74 ms for 2 % more requests. So the
//! default `after` is `p95` of the upstream's observed try latency, and `max` is 1.
//!
//! What keeps hedging from doubling the load on a slow upstream:
//! - a hedge is a retry for the budget: it is withdrawn from the upstream's retry budget when
//!   it is sent, and when the budget is spent none is sent (`skipped_budget`);
//! - only requests that may be sent twice are hedged: an idempotent method or an
//!   `Idempotency-Key` the upstream allows (as for retries), with a body within
//!   `retry.max_body` (it is replayed from the same buffer);
//! - none when the deadline left cannot hold another try (less than the upstream's median
//!   try latency: `skipped_deadline`), and none while the circuit breaker is half-open (its
//!   probes must judge the upstream alone);
//! - a percentile delay needs [`MIN_SAMPLES`] tries in the last 10 to 20 seconds first; until
//!   then no hedge is sent.
//!
//! Each hedge goes through the per-try timeout and carries the deadline left, as a retry does.
//! The delay in force is worked out again at most once per [`REFRESH`], not per request.
//!
//! Position: inside the retry layer (it shares the budget, the latency estimate and the
//! replayed body); every try of a hedged request, first or retry, runs as a [`hedged`] try.
//! Config: `upstreams.<name>.hedge` (`after`, `max`). Metrics:
//! `weir_hedges_total{upstream,result}` (`won`, `lost`, `skipped_budget`, `skipped_deadline`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use metrics::Counter;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::Shared;
use super::latency::Latency;
use super::template::Template;
use crate::error::ProxyError;
use crate::http::{Request, Response};
use crate::metrics::{HEDGES_TOTAL, Metrics};
use crate::resilience::breaker::{BreakerHandle, BreakerState};

/// Hedging of an upstream (`upstreams.NAME.hedge`); absent, nothing is hedged.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How long a try may go without a response head before a hedge is sent; default `p95`.
    pub after: After,
    /// Hedges at most per try; default 1.
    pub max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            after: After::Percentile(95.0),
            max: 1,
        }
    }
}

/// When a hedge goes out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum After {
    /// After this long (`"50ms"`).
    Fixed(Duration),
    /// After this percentile (50 to 99.9) of the upstream's observed try latency (`"p95"`).
    Percentile(f64),
}

impl After {
    /// The config spelling: a duration such as `"50ms"`, or `"p95"`, `"p99.9"`.
    pub fn render(&self) -> String {
        match self {
            After::Fixed(d) => humantime::format_duration(*d).to_string(),
            After::Percentile(p) => format!("p{p}"),
        }
    }

    /// Reads `p50`..`p99.9`; `None` for anything else (which may be a duration).
    pub fn percentile(s: &str) -> Option<After> {
        let p: f64 = s.strip_prefix('p')?.parse().ok()?;
        (50.0..=99.9).contains(&p).then_some(After::Percentile(p))
    }
}

/// Tries in the window a percentile delay needs before any hedge is sent.
pub(crate) const MIN_SAMPLES: u64 = 20;

/// How long a computed percentile delay stays in force.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// The hedging state of one upstream, shared by its requests.
#[derive(Debug)]
pub(crate) struct Hedging {
    after: After,
    max: u32,
    /// The upstream's breaker: no hedges while it is half-open.
    breaker: Option<BreakerHandle>,
    created: Instant,
    /// The delay in force, in µs ([`NONE`]: no hedging yet), and until when (µs since
    /// `created`) it holds.
    delay_us: AtomicU64,
    until_us: AtomicU64,
    won: Counter,
    lost: Counter,
    skipped_budget: Counter,
    skipped_deadline: Counter,
}

/// `delay_us` when no hedge may be sent yet (too few samples).
const NONE: u64 = u64::MAX;

/// Marks a response that came from a hedge, not from the try it raced (read by the access log).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hedged;

impl Hedging {
    /// Hedging of `upstream` with `settings`, judged against its `breaker`; resolves its
    /// counters now.
    pub(crate) fn new(
        upstream: &std::sync::Arc<str>,
        settings: &Settings,
        breaker: Option<BreakerHandle>,
        metrics: &Metrics,
    ) -> Self {
        let counter = |result: &'static str| {
            metrics.counter(
                HEDGES_TOTAL,
                &[("upstream", upstream.clone()), ("result", result.into())],
            )
        };
        Hedging {
            after: settings.after,
            max: settings.max,
            breaker,
            created: Instant::now(),
            delay_us: AtomicU64::new(NONE),
            until_us: AtomicU64::new(0),
            won: counter("won"),
            lost: counter("lost"),
            skipped_budget: counter("skipped_budget"),
            skipped_deadline: counter("skipped_deadline"),
        }
    }

    /// The configured `after`.
    pub(crate) fn after(&self) -> After {
        self.after
    }

    /// The hedge delay in force at `now`: the fixed one, or the percentile of `latency`
    /// (worked out again when older than [`REFRESH`]); `None` while too few tries were seen.
    pub(crate) fn delay(&self, latency: &Latency, now: Instant) -> Option<Duration> {
        let p = match self.after {
            After::Fixed(d) => return Some(d),
            After::Percentile(p) => p,
        };
        let at = micros(now.saturating_duration_since(self.created));
        if at >= self.until_us.load(Ordering::Relaxed) {
            let delay = match latency.quantile(now, p / 100.0) {
                Some((d, n)) if n >= MIN_SAMPLES => micros(d),
                _ => NONE,
            };
            self.delay_us.store(delay, Ordering::Relaxed);
            self.until_us
                .store(at.saturating_add(micros(REFRESH)), Ordering::Relaxed);
        }
        match self.delay_us.load(Ordering::Relaxed) {
            NONE => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether a hedge of the request of `t` may go out now, charging the budget if so.
    fn may_send(&self, shared: &Shared, t: &Template, now: Instant) -> bool {
        if self
            .breaker
            .as_ref()
            .is_some_and(|b| b.status().state == BreakerState::HalfOpen)
        {
            return false;
        }
        if let Some(deadline) = t.context.as_ref().and_then(|c| c.deadline) {
            let median = shared.latency.median(now).unwrap_or(Duration::ZERO);
            if deadline.saturating_duration_since(now) <= median {
                self.skipped_deadline.increment(1);
                return false;
            }
        }
        if !shared.budget.try_withdraw(now) {
            self.skipped_budget.increment(1);
            return false;
        }
        true
    }
}

/// One try of a request that may be hedged: `first` goes out now; each time `delay` passes
/// without a response head, one more try from the template goes out (at most `max`, each
/// allowed by [`Hedging::may_send`]). The first response head wins and the other tries are
/// dropped. A try that fails while another is still out is dropped too; the last one to
/// fail gives the try's error.
pub(super) async fn hedged<S>(
    shared: &Shared,
    hedging: &Hedging,
    svc: S,
    t: &Template,
    first: Request,
    delay: Duration,
) -> Result<Response, ProxyError>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tries = FuturesUnordered::new();
    tries.push(tagged(0, svc.clone().oneshot(first)));
    let mut sent = 0u32;
    let timer = tokio::time::sleep(delay);
    tokio::pin!(timer);
    let mut waiting = hedging.max > 0;
    loop {
        tokio::select! {
            biased;
            Some((i, result)) = tries.next() => {
                if result.is_err() && !tries.is_empty() {
                    continue;
                }
                if sent > 0 {
                    let hedge_won = i > 0 && result.is_ok();
                    hedging.won.increment(u64::from(hedge_won));
                    hedging.lost.increment(u64::from(sent - u32::from(hedge_won)));
                }
                return result.map(|mut resp| {
                    if i > 0 {
                        resp.extensions_mut().insert(Hedged);
                    }
                    resp
                });
            }
            () = &mut timer, if waiting => {
                let now = Instant::now();
                if !hedging.may_send(shared, t, now) {
                    waiting = false;
                    continue;
                }
                sent += 1;
                tries.push(tagged(sent, svc.clone().oneshot(t.retry_request())));
                waiting = sent < hedging.max;
                timer.as_mut().reset(now + delay);
            }
        }
    }
}

/// A try's future with its number (0: the first; 1.. the hedges).
async fn tagged<F: Future>(i: u32, fut: F) -> (u32, F::Output) {
    (i, fut.await)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1)
}
