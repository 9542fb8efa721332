//! Load shedding of one upstream: a concurrency limit, a bounded priority queue, refusal beyond.
//!
//! Position: outermost layer of every upstream stack (shed → breaker → retry → timeout → forward).
//! Config: `upstreams.<name>.shed.*`. Metrics: `weir_shed_total`, `weir_in_flight`,
//! `weir_concurrency_limit`, `weir_dry_run_rejections_total{policy="shed"}`.
//!
//! # Admission (`mode = "enforce"`)
//!
//! - Each priority has its own share of slots around the limit L, with r = max(1, L / 10):
//!   `default` takes a slot while fewer than L are in flight, `critical` while fewer than L + r
//!   (a reserve above the limit), `sheddable` while fewer than L − r (a margin below it, but
//!   never less than 1). So `max_in_flight` is the limit of `default` traffic.
//! - A request takes a slot at once when its share has room and no one is queued (arrivals do
//!   not jump the queue). This path is one compare-exchange, no lock, no clock read.
//! - Otherwise it waits in the queue (`queue` places, 0 = no queue), then is refused. A freed
//!   slot goes to the highest-priority waiter (`critical`, then `default`, then `sheddable`)
//!   when that waiter's share has room: a `sheddable` waiter gets none while L − r are in
//!   flight. Within one priority the order depends on the queue's state:
//!   - normally first come, first served, and a waiter may wait `queue_timeout`;
//!   - **overloaded**, when the queue has held waiters without draining for
//!     `OVERLOAD_INTERVAL` (100 ms), newest first (adaptive LIFO), and a waiter may wait only
//!     `OVERLOAD_WAIT` (5 ms, never more than `queue_timeout`). Each arrival then refuses the
//!     waiters already queued that long (those queued before, with the full wait, included),
//!     and the oldest of its priority whose turn would come after `OVERLOAD_WAIT`. So under
//!     sustained overload what is admitted waits at most about 5 ms, and what is refused is
//!     refused at once or within 5 ms. The queue has drained when it has stayed empty for
//!     `DRAIN_GAP` (5 ms; a shorter gap, such as a burst of calls ending together, does not
//!     count); then it is first come, first served with `queue_timeout` again, for waiters that
//!     arrive from then on. (CoDel with adaptive LIFO, as in Maurer, "Fail at Scale", 2015.)
//! - An arrival that would likely outwait the wait allowed now is refused at once instead of
//!   queued. Slots free at about L per service time, where the service time is an average of
//!   the time a slot is held (admission to the end of the response body), taken on admissions
//!   that filled their share or came through the queue (no clock is read while there is room).
//!   A waiter with p others to be served before it (higher priority, or the same and earlier;
//!   when overloaded, only higher priority) expects (p + 1) × service time / L; until a first
//!   slot has been timed, arrivals queue.
//! - With the queue full, an arrival evicts the newest waiter of a strictly lower priority (that
//!   waiter is refused) or else is itself refused at once.
//! - A refusal at once is a ready `Err(ProxyError::Overloaded)` (503, `Retry-After: 1`) that
//!   took no queue place and no timer.
//! - A slot is held until the response body ends (read to the end, or failed) or is dropped, or
//!   the inner future fails or is dropped: a streaming response counts in flight. A response
//!   whose body is already at its end releases the slot with the head; any other gets its body
//!   wrapped (one allocation).
//!
//! The priority is [`RequestContext::priority`] from the request's extensions (absent: `default`).
//!
//! `weir_shed_total{upstream,reason}` counts refusals; `reason` is one of:
//! - `queue_full`: no slot, and no queue place (the queue is full of waiters of the same or
//!   higher priority, or `queue = 0`);
//! - `queue_wait`: no slot, and the expected wait for one exceeds the wait allowed now (or,
//!   overloaded, a waiter pushed back so far by newer arrivals that it does);
//! - `queue_timeout`: waited the allowed wait without getting a slot;
//! - `evicted`: a waiter pushed out of the full queue by a higher-priority arrival.
//!
//! # Limit
//!
//! `max_in_flight` is the limit L (of `default` traffic, see above). With `adaptive = true` it
//! is the ceiling of a [`Gradient`] limit (floor `min_limit`, start `max_in_flight`), and the
//! shares follow the limit in force. Its samples are the time from admission to the inner future
//! resolving (the response head, not the body's end), for every resolved call except the
//! errors that say nothing about the upstream's latency (those [`Outcome::of_error`] calls
//! `Ignored`, such as `circuit-open` from the breaker below); a dropped (cancelled) call gives
//! no sample. `weir_concurrency_limit` is the limit in force; `weir_in_flight` counts admitted
//! calls whose response has not ended (up to L + r, with the `critical` reserve).
//!
//! # Modes
//!
//! - `dry_run`: every request is admitted at once (no queue, no wait), and
//!   `weir_dry_run_rejections_total{policy="shed"}` counts those enforcing would have refused.
//!   An arrival that finds at least its share in flight would have queued behind p = (in flight
//!   − share) others. It counts at once when the queue would have been full (p ≥ `queue`), or
//!   when its expected wait (p + 1) × service time / L exceeds the wait allowed now; with no
//!   service time known yet, it counts when its slot is released, if it was held longer than
//!   that wait (the calls it would have waited for started no earlier, and are taken to last as
//!   long). The queue state follows the same rules, with "queued" read as "beyond the share";
//!   it empties when an arrival finds room in its share or a release leaves fewer than L in
//!   flight. Evictions and the order of service are not simulated. The adaptive limit still
//!   follows latency.
//! - `off`: no limit and no queue; `weir_in_flight` is still kept, and the limit reads 0 (none).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::error::{BoxError, ProxyError};
use crate::http::context::{Priority, RequestContext};
use crate::http::{Body, Request, Response, Watch, Watched};
use crate::metrics::{CONCURRENCY_LIMIT, DRY_RUN_REJECTIONS_TOTAL, IN_FLIGHT, Metrics, SHED_TOTAL};
use crate::resilience::Mode;
use crate::resilience::Outcome;
use crate::resilience::adaptive::Gradient;

/// Load shedding of an upstream (`upstreams.NAME.shed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Enforce, count only (dry run), or off; default enforce.
    pub mode: Mode,
    /// Most `default` requests in flight (the upper limit when adaptive); `critical` requests
    /// may use a reserve of 10 % above it, `sheddable` ones stop 10 % below. Default 1024.
    pub max_in_flight: u32,
    /// Requests that may wait for a slot; 0 = no queue. Default 256.
    pub queue: u32,
    /// Longest wait in the queue; default 50ms.
    pub queue_timeout: Duration,
    /// Whether the limit adapts to latency between `min_limit` and `max_in_flight`; default false.
    pub adaptive: bool,
    /// Lower bound of the adaptive limit; default 8.
    pub min_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            max_in_flight: 1024,
            queue: 256,
            queue_timeout: Duration::from_millis(50),
            adaptive: false,
            min_limit: 8,
        }
    }
}

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

pin_project! {
    /// The future of [`Shed`]: the inner call holding a slot, a wait in the queue, or a ready
    /// `overloaded` refusal.
    pub struct ResponseFuture<S>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<Request>,
    {
        // Admitted on arrival: the inner call, made at once.
        Admitted {
            #[pin]
            inner: S::Future,
            slot: Option<Slot>,
        },
        // The queue paths are rare: boxed, so the common future stays small.
        Dequeued {
            inner: Pin<Box<Oneshot<S, Request>>>,
            slot: Option<Slot>,
        },
        Waiting {
            sleep: Pin<Box<Sleep>>,
            waiter: Waiter,
            call: Option<Box<(S, Request)>>,
        },
        Rejected,
    }
}

// === impl ShedLayer ===

impl ShedLayer {
    /// Shedding for `upstream` with `settings`; registers its metrics in `metrics` and sets
    /// `weir_concurrency_limit` to `max_in_flight` (left unset in mode `off`).
    pub fn new(upstream: Arc<str>, settings: &Settings, metrics: &Metrics) -> Self {
        let up = || ("upstream", upstream.clone());
        let shed =
            |reason: &'static str| metrics.counter(SHED_TOTAL, &[up(), ("reason", reason.into())]);
        let limit_gauge = match settings.mode {
            Mode::Off => Gauge::noop(),
            Mode::Enforce | Mode::DryRun => metrics.gauge(CONCURRENCY_LIMIT, &[up()]),
        };
        limit_gauge.set(f64::from(settings.max_in_flight));
        let gradient = (settings.adaptive && settings.mode != Mode::Off)
            .then(|| Mutex::new(Gradient::new(settings.min_limit, settings.max_in_flight)));
        let metrics = ShedMetrics {
            in_flight: metrics.gauge(IN_FLIGHT, &[up()]),
            limit: limit_gauge,
            queue_full: shed(REASON_QUEUE_FULL),
            queue_wait: shed(REASON_QUEUE_WAIT),
            queue_timeout: shed(REASON_QUEUE_TIMEOUT),
            evicted: shed(REASON_EVICTED),
            dry_run: match settings.mode {
                Mode::DryRun => {
                    metrics.counter(DRY_RUN_REJECTIONS_TOTAL, &[up(), ("policy", POLICY.into())])
                }
                Mode::Enforce | Mode::Off => Counter::noop(),
            },
        };
        let queue_cap = usize::try_from(settings.queue).unwrap_or(usize::MAX);
        let shared = Shared {
            upstream,
            mode: settings.mode,
            queue_cap,
            timing: match settings.mode {
                Mode::Enforce => queue_cap > 0,
                Mode::DryRun => true,
                Mode::Off => false,
            },
            service_us: AtomicU64::new(0),
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            empty_since: AtomicU64::new(0),
            queue_timeout: settings.queue_timeout,
            overload_wait: OVERLOAD_WAIT.min(settings.queue_timeout),
            queue_places: settings.queue,
            limit: AtomicU32::new(settings.max_in_flight),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            waiters: Mutex::new(Waiters::default()),
            gradient,
            metrics,
        };
        Self {
            shared: Arc::new(shared),
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
        let shared = &self.shared;
        let prio = priority_of(&req);
        // `Some(last)`: admitted at once, `last` when it filled its share (then it is timed).
        let admitted = match shared.mode {
            Mode::Off => {
                shared.admit_unlimited();
                Some(false)
            }
            Mode::DryRun => {
                let slot = shared.admit_dry_run(prio);
                return ResponseFuture::admitted(self.inner.call(req), slot);
            }
            Mode::Enforce if shared.queued.load(SeqCst) == 0 => shared.try_acquire(prio),
            Mode::Enforce => None,
        };
        if let Some(last) = admitted {
            let slot = Slot::new(shared.clone(), last, None);
            return ResponseFuture::admitted(self.inner.call(req), slot);
        }
        match shared.enqueue(prio) {
            Enqueued::Admitted => {
                let slot = Slot::new(shared.clone(), true, None);
                ResponseFuture::admitted(self.inner.call(req), slot)
            }
            Enqueued::Waiting(waiter, wait) => ResponseFuture {
                state: State::Waiting {
                    sleep: Box::pin(tokio::time::sleep(wait)),
                    waiter,
                    call: Some(Box::new((self.inner.clone(), req))),
                },
            },
            Enqueued::Refused => ResponseFuture {
                state: State::Rejected,
            },
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

// === impl ResponseFuture ===

impl<S> ResponseFuture<S>
where
    S: Service<Request>,
{
    fn admitted(inner: S::Future, slot: Slot) -> Self {
        Self {
            state: State::Admitted {
                inner,
                slot: Some(slot),
            },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Admitted { inner, slot } => {
                    let out = ready!(inner.poll(cx));
                    return Poll::Ready(match slot.take() {
                        Some(slot) => slot.finish(out),
                        None => out,
                    });
                }
                StateProj::Dequeued { inner, slot } => {
                    let out = ready!(inner.as_mut().poll(cx));
                    return Poll::Ready(match slot.take() {
                        Some(slot) => slot.finish(out),
                        None => out,
                    });
                }
                StateProj::Rejected => return Poll::Ready(Err(ProxyError::Overloaded)),
                StateProj::Waiting {
                    sleep,
                    waiter,
                    call,
                } => match (ready!(waiter.poll_turn(cx, sleep.as_mut())), call.take()) {
                    (Turn::Granted(slot), Some(call)) => {
                        let (svc, req) = *call;
                        State::Dequeued {
                            inner: Box::pin(svc.oneshot(req)),
                            slot: Some(slot),
                        }
                    }
                    // `call` is taken only here, on leaving this state; a second turn cannot
                    // happen. Were it to, the slot is released on drop.
                    (Turn::Granted(_), None) | (Turn::Refused, _) => State::Rejected,
                },
            };
            self.as_mut().project().state.set(next);
        }
    }
}

// === impl Shared ===

/// The state every clone of one upstream's layer shares.
struct Shared {
    upstream: Arc<str>,
    mode: Mode,
    queue_cap: usize,
    /// Whether admissions are timed for the expected wait (enforce mode with a queue).
    timing: bool,
    /// Average service time (admission to the inner future resolving) of timed admissions, in
    /// µs; 0 until the first.
    service_us: AtomicU64,
    /// The origin of `busy_since`.
    epoch: Instant,
    /// Since when the queue has held waiters without draining, in µs since `epoch` plus 1; 0
    /// before it first held one. Written under the `waiters` lock in enforce mode; in dry run
    /// it follows the queue enforcing would have had (arrivals beyond their share).
    busy_since: AtomicU64,
    /// Since when the queue has been empty (same unit); 0 while it holds waiters. Empty for
    /// [`DRAIN_GAP`], it has drained.
    empty_since: AtomicU64,
    queue_timeout: Duration,
    /// The wait allowed under overload: [`OVERLOAD_WAIT`], never above `queue_timeout`.
    overload_wait: Duration,
    /// `queue` as configured: in dry run, limit + this many in flight would refuse outright.
    queue_places: u32,
    /// The limit in force; written only under the `gradient` lock.
    limit: AtomicU32,
    /// Slots taken. SeqCst: see `release` and `enqueue` for the hand-over protocol.
    in_flight: AtomicU32,
    /// Waiters in `waiters` plus any arrival registering under its lock. SeqCst.
    queued: AtomicU32,
    waiters: Mutex<Waiters>,
    gradient: Option<Mutex<Gradient>>,
    metrics: ShedMetrics,
}

struct ShedMetrics {
    in_flight: Gauge,
    limit: Gauge,
    queue_full: Counter,
    queue_wait: Counter,
    queue_timeout: Counter,
    evicted: Counter,
    dry_run: Counter,
}

enum Enqueued {
    Admitted,
    /// Queued, with the longest wait allowed.
    Waiting(Waiter, Duration),
    Refused,
}

impl Shared {
    /// Takes a slot if fewer than `prio`'s share are taken; `Some(true)` when it took the last.
    fn try_acquire(&self, prio: Priority) -> Option<bool> {
        let most = share(self.limit.load(Relaxed), prio);
        let mut cur = self.in_flight.load(SeqCst);
        loop {
            if cur >= most {
                return None;
            }
            match self
                .in_flight
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    return Some(cur + 1 >= most);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Takes a slot regardless of the limit; returns how many were taken before.
    fn admit_unlimited(&self) -> u32 {
        self.in_flight.fetch_add(1, SeqCst)
    }

    /// Dry run: admits at once, and counts the arrival if enforcing would have refused it. An
    /// arrival beyond its share would have queued, behind p = (taken − share) others: it counts
    /// at once when the queue would have been full, or when its expected wait exceeds the wait
    /// allowed now; with no service time known yet, its slot counts it on release if it was
    /// held longer than that wait.
    fn admit_dry_run(self: &Arc<Self>, prio: Priority) -> Slot {
        let most = share(self.limit.load(Relaxed), prio);
        let taken = self.admit_unlimited();
        if taken < most {
            // Room within the share: the queue enforcing would have had is empty (the clock is
            // read only on the first such arrival after a queue).
            if self.busy_since.load(Relaxed) != 0 && self.empty_since.load(Relaxed) == 0 {
                self.note_queue(Instant::now(), false);
            }
            return Slot::new(self.clone(), taken + 1 >= most, None);
        }
        let now = Instant::now();
        self.note_queue(now, true);
        let wait = self.allowed_wait(now);
        let ahead = taken - most;
        let mut later = None;
        if ahead >= self.queue_places {
            self.metrics.dry_run.increment(1);
        } else if self.service_us.load(Relaxed) == 0 {
            later = Some(wait);
        } else if self.outwaits(usize::try_from(ahead).unwrap_or(usize::MAX), wait) {
            self.metrics.dry_run.increment(1);
        }
        Slot::new(self.clone(), true, later)
    }

    /// `now` in µs since `epoch`, plus 1 (so never 0, which reads as unset).
    fn micros(&self, now: Instant) -> u64 {
        let us = now.saturating_duration_since(self.epoch).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    /// Whether the queue has held waiters without draining for [`OVERLOAD_INTERVAL`]: then
    /// waiters are served newest first and may wait only `overload_wait`.
    fn overloaded(&self, now: Instant) -> bool {
        let (busy, empty) = (
            self.busy_since.load(Relaxed),
            self.empty_since.load(Relaxed),
        );
        let now = self.micros(now);
        busy != 0
            && lasted(busy, now, OVERLOAD_INTERVAL)
            && (empty == 0 || !lasted(empty, now, DRAIN_GAP))
    }

    /// The longest a request may wait in the queue now.
    fn allowed_wait(&self, now: Instant) -> Duration {
        if self.overloaded(now) {
            self.overload_wait
        } else {
            self.queue_timeout
        }
    }

    /// Follows the queue after a change at `now`: `waiting` when it holds a waiter. A queue
    /// that was empty for [`DRAIN_GAP`] or longer starts a new busy period.
    fn note_queue(&self, now: Instant, waiting: bool) {
        let now = self.micros(now);
        if waiting {
            let empty = self.empty_since.swap(0, Relaxed);
            let busy = self.busy_since.load(Relaxed);
            if busy == 0 || (empty != 0 && lasted(empty, now, DRAIN_GAP)) {
                self.busy_since.store(now, Relaxed);
            }
        } else if self.empty_since.load(Relaxed) == 0 {
            self.empty_since.store(now, Relaxed);
        }
    }

    /// [`Self::note_queue`] for the real queue, under its lock.
    fn track_busy(&self, q: &Waiters, now: Option<Instant>) {
        let waiting = q.len() > 0;
        // After a push the queue holds a waiter and has been noted busy already: skip the clock.
        if waiting && now.is_none() && self.empty_since.load(Relaxed) == 0 {
            return;
        }
        self.note_queue(now.unwrap_or_else(Instant::now), waiting);
    }

    /// Gives a slot back and hands free slots to waiters.
    ///
    /// Lost wake-ups are ruled out by SeqCst on both counters: the releaser decrements
    /// `in_flight` then reads `queued`; an arrival increments `queued` (under the lock) then
    /// tries `in_flight`. Either the releaser sees the arrival registered and dispatches after
    /// it (taking the lock), or the arrival sees the freed slot.
    fn release(&self) {
        let left = self.in_flight.fetch_sub(1, SeqCst).saturating_sub(1);
        if self.mode == Mode::DryRun
            && left < self.limit.load(Relaxed)
            && self.busy_since.load(Relaxed) != 0
            && self.empty_since.load(Relaxed) == 0
        {
            // Room below the limit: the queue enforcing would have had is empty.
            self.note_queue(Instant::now(), false);
        }
        if self.queued.load(SeqCst) > 0 {
            let mut q = self.lock_waiters();
            self.dispatch(&mut q);
        }
    }

    /// Hands free slots to the best waiters, in priority order, while the best one's share has
    /// room (the shares shrink with the priority, so no one behind it would have).
    fn dispatch(&self, q: &mut Waiters) {
        let mut lifo = None;
        while let Some(best) = q.best() {
            if self.try_acquire(best).is_none() {
                break;
            }
            let lifo = *lifo.get_or_insert_with(|| self.overloaded(Instant::now()));
            if let Some(entry) = q.pop_best(lifo) {
                self.grant(entry);
            }
        }
        self.track_busy(q, None);
    }

    /// Gives a slot already taken to a waiter just removed from the queue.
    fn grant(&self, entry: Entry) {
        self.queued.fetch_sub(1, SeqCst);
        if entry.tx.send(()).is_err() {
            // A waiter removes its entry (under the lock) before its receiver can go away, so
            // this is unreachable; give the slot back rather than leak it.
            self.in_flight.fetch_sub(1, SeqCst);
        }
    }

    /// The slow path: no slot at once, or others are queued.
    fn enqueue(self: &Arc<Self>, prio: Priority) -> Enqueued {
        if self.queue_cap == 0 {
            self.metrics.queue_full.increment(1);
            return Enqueued::Refused;
        }
        let now = Instant::now();
        if prio == Priority::Sheddable && !self.overloaded(now) {
            // Nothing ranks below `sheddable`: in FIFO order every waiter is ahead of it, so
            // the queue's length settles a full queue or a wait too long without the lock.
            let queued = self.queued.load(SeqCst);
            if usize::try_from(queued).is_ok_and(|n| n >= self.queue_cap) {
                self.metrics.queue_full.increment(1);
                return Enqueued::Refused;
            }
            if self.outwaits(
                usize::try_from(queued).unwrap_or(usize::MAX),
                self.queue_timeout,
            ) {
                self.metrics.queue_wait.increment(1);
                return Enqueued::Refused;
            }
        }
        let mut q = self.lock_waiters();
        let lifo = self.overloaded(now);
        if lifo {
            // Under overload no waiter may stay longer than `overload_wait`, including those
            // queued before, with the full wait: the oldest go, refused.
            let stale = q.drop_older_than(now, self.overload_wait);
            if stale > 0 {
                self.queued.fetch_sub(stale, SeqCst);
                self.metrics.queue_timeout.increment(u64::from(stale));
                self.track_busy(&q, None);
            }
        }
        self.queued.fetch_add(1, SeqCst);
        // Free slots go first to those queued ahead: higher priority, or the same and earlier.
        let ahead = loop {
            match q.best() {
                Some(best) if best.rank() <= prio.rank() => {
                    if self.try_acquire(best).is_none() {
                        break true;
                    }
                    if let Some(entry) = q.pop_best(lifo) {
                        self.grant(entry);
                    }
                }
                Some(_) | None => break false,
            }
        };
        self.track_busy(&q, None);
        if !ahead && self.try_acquire(prio).is_some() {
            self.queued.fetch_sub(1, SeqCst);
            // The limit may have risen: lower-priority waiters get what is left.
            self.dispatch(&mut q);
            return Enqueued::Admitted;
        }
        let wait = if lifo {
            self.overload_wait
        } else {
            self.queue_timeout
        };
        if self.outwaits(q.ahead_of(prio, lifo), wait) {
            self.queued.fetch_sub(1, SeqCst);
            self.metrics.queue_wait.increment(1);
            return Enqueued::Refused;
        }
        if q.len() >= self.queue_cap {
            match q.evict_below(prio) {
                Some(victim) => {
                    // Dropping the sender wakes the victim with a refusal.
                    drop(victim);
                    self.queued.fetch_sub(1, SeqCst);
                    self.metrics.evicted.increment(1);
                }
                None => {
                    self.queued.fetch_sub(1, SeqCst);
                    self.metrics.queue_full.increment(1);
                    return Enqueued::Refused;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = q.push(prio, tx, now);
        self.track_busy(&q, Some(now));
        if lifo {
            // Newest first: each arrival pushes the older waiters of its priority further back.
            // The oldest, whose turn would now come after `overload_wait`, go refused at once
            // rather than when their wait runs out.
            let higher = q.ahead_of(prio, true);
            let mut hopeless = 0;
            while q.of(prio).len() > 1
                && self.outwaits(higher + q.of(prio).len() - 1, self.overload_wait)
            {
                drop(q.of(prio).pop_front());
                hopeless += 1;
            }
            if hopeless > 0 {
                self.queued.fetch_sub(hopeless, SeqCst);
                self.metrics.queue_wait.increment(u64::from(hopeless));
            }
        }
        drop(q);
        let waiter = Waiter {
            shared: self.clone(),
            id,
            prio,
            rx,
            done: false,
        };
        Enqueued::Waiting(waiter, wait)
    }

    /// Whether a waiter with `ahead` others to be served before it would likely wait longer
    /// than `wait`: slots free at about limit per service time, so its turn comes after
    /// (ahead + 1) × service time / limit. False while no call has been timed.
    fn outwaits(&self, ahead: usize, wait: Duration) -> bool {
        let service = self.service_us.load(Relaxed);
        if service == 0 {
            return false;
        }
        let turn = u128::try_from(ahead)
            .unwrap_or(u128::MAX)
            .saturating_add(1)
            .saturating_mul(u128::from(service));
        let limit = u128::from(self.limit.load(Relaxed));
        turn > wait.as_micros().saturating_mul(limit)
    }

    /// Feeds one timed call to the average service time (weight 1/[`SERVICE_WEIGHT`]). Racing
    /// updates may lose one another's sample, which an average can afford.
    fn observe_service(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.service_us.load(Relaxed);
        let new = match old {
            0 => us,
            _ => (old - old / SERVICE_WEIGHT).saturating_add(us / SERVICE_WEIGHT),
        };
        self.service_us.store(new.max(1), Relaxed);
    }

    /// Feeds one round trip to the adaptive limit, if any; skipped when another thread holds it.
    fn sample(&self, rtt: Duration) {
        let Some(gradient) = &self.gradient else {
            return;
        };
        let Ok(mut g) = gradient.try_lock() else {
            return;
        };
        let limit = g.on_sample(rtt, self.in_flight.load(Relaxed), Instant::now());
        if self.limit.swap(limit, SeqCst) != limit {
            self.metrics.limit.set(f64::from(limit));
        }
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
        // Nothing panics under this lock; if something did, the queue is still consistent.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .field("mode", &self.mode)
            .field("limit", &self.limit)
            .field("in_flight", &self.in_flight)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

// === impl Slot ===

/// One admitted request's slot; given back on drop.
struct Slot {
    shared: Arc<Shared>,
    /// When it was admitted, if timed: for the adaptive limit's samples (every call), for the
    /// service time (calls that filled their share or came through the queue) and for a dry
    /// run's late count.
    started: Option<Instant>,
    /// Whether the time it is held feeds the service time.
    serviced: bool,
    /// Dry run, no service time known on arrival: the wait enforcing would have allowed it.
    /// Held longer than that, it counts as a would-be refusal when released.
    dry_wait: Option<Duration>,
}

impl Slot {
    /// A slot just taken; `contended` when it was the last of its share or came through the
    /// queue, the admissions whose service time predicts queue waits.
    fn new(shared: Arc<Shared>, contended: bool, dry_wait: Option<Duration>) -> Self {
        let serviced = contended && shared.timing;
        let timed = serviced || dry_wait.is_some() || shared.gradient.is_some();
        Self {
            started: timed.then(Instant::now),
            shared,
            serviced,
            dry_wait,
        }
    }

    /// The inner call resolved with `out`: samples its round trip for the adaptive limit (at
    /// the response head), then keeps the slot until the response body ends or is dropped.
    fn finish(self, out: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        if let Some(started) = self.started.filter(|_| self.shared.gradient.is_some()) {
            let counts = match &out {
                Ok(_) => true,
                Err(e) => Outcome::of_error(e) != Outcome::Ignored,
            };
            if counts {
                self.shared.sample(started.elapsed());
            }
        }
        match out {
            Ok(resp) if !http_body::Body::is_end_stream(resp.body()) => {
                Ok(resp.map(|body| Body::boxed(Watched::new(body, SlotBody(Some(self))))))
            }
            // Nothing left to stream: the slot is released here.
            Ok(resp) => Ok(resp),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(started) = self
            .started
            .filter(|_| self.serviced || self.dry_wait.is_some())
        {
            let held = started.elapsed();
            // Any slot given back lets a waiter in, so every one counts for the expected wait.
            if self.serviced {
                self.shared.observe_service(held);
            }
            if self.dry_wait.is_some_and(|wait| held > wait) {
                self.shared.metrics.dry_run.increment(1);
            }
        }
        self.shared.release();
    }
}

// === impl SlotBody ===

/// Holds a request's slot until its response body ends (or fails) or is dropped, so a
/// streaming response counts in flight.
struct SlotBody(Option<Slot>);

impl Watch for SlotBody {
    fn polled(
        &mut self,
        _: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        end: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let over = match &polled {
            Poll::Ready(Some(Ok(_))) => end,
            Poll::Ready(Some(Err(_)) | None) => true,
            Poll::Pending => false,
        };
        if over {
            drop(self.0.take());
        }
        polled
    }
}

// === impl Waiter ===

/// One request's place in the queue. Dropped before its turn, it leaves the queue (or gives
/// back a slot handed to it meanwhile).
struct Waiter {
    shared: Arc<Shared>,
    id: u64,
    prio: Priority,
    rx: oneshot::Receiver<()>,
    /// The queue is done with this waiter (granted, evicted or withdrawn).
    done: bool,
}

enum Turn {
    Granted(Slot),
    Refused,
}

enum Withdrawn {
    Removed,
    Granted,
    Evicted,
}

impl Waiter {
    fn poll_turn(&mut self, cx: &mut Context<'_>, sleep: Pin<&mut Sleep>) -> Poll<Turn> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                return Poll::Ready(Turn::Granted(self.slot()));
            }
            // The sender was dropped: evicted (counted by the evictor).
            Poll::Ready(Err(_)) => {
                self.done = true;
                return Poll::Ready(Turn::Refused);
            }
            Poll::Pending => {}
        }
        ready!(sleep.poll(cx));
        self.done = true;
        Poll::Ready(match self.withdraw() {
            Withdrawn::Removed => {
                self.shared.metrics.queue_timeout.increment(1);
                Turn::Refused
            }
            // A slot arrived as the wait ran out: take it.
            Withdrawn::Granted => Turn::Granted(self.slot()),
            Withdrawn::Evicted => Turn::Refused,
        })
    }

    fn slot(&self) -> Slot {
        Slot::new(self.shared.clone(), true, None)
    }

    /// Leaves the queue. If the entry is gone, the queue already decided: a dispatcher sent a
    /// slot, or an evictor dropped the sender, in both cases under the lock taken here first.
    fn withdraw(&mut self) -> Withdrawn {
        let mut q = self.shared.lock_waiters();
        if q.remove(self.prio, self.id) {
            self.shared.queued.fetch_sub(1, SeqCst);
            self.shared.track_busy(&q, None);
            return Withdrawn::Removed;
        }
        drop(q);
        match self.rx.try_recv() {
            Ok(()) => Withdrawn::Granted,
            Err(_) => Withdrawn::Evicted,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done && matches!(self.withdraw(), Withdrawn::Granted) {
            self.shared.release();
        }
    }
}

// === impl Waiters ===

/// The queue: one list per priority, oldest first; served from the front (FIFO), or from the
/// back (newest first) under overload.
#[derive(Default)]
struct Waiters {
    critical: VecDeque<Entry>,
    default: VecDeque<Entry>,
    sheddable: VecDeque<Entry>,
    next_id: u64,
}

struct Entry {
    id: u64,
    tx: oneshot::Sender<()>,
    /// When it was queued.
    since: Instant,
}

impl Waiters {
    fn of(&mut self, prio: Priority) -> &mut VecDeque<Entry> {
        match prio {
            Priority::Critical => &mut self.critical,
            Priority::Default => &mut self.default,
            Priority::Sheddable => &mut self.sheddable,
        }
    }

    fn len(&self) -> usize {
        self.critical.len() + self.default.len() + self.sheddable.len()
    }

    /// The best priority waiting.
    fn best(&self) -> Option<Priority> {
        [
            (&self.critical, Priority::Critical),
            (&self.default, Priority::Default),
            (&self.sheddable, Priority::Sheddable),
        ]
        .into_iter()
        .find(|(q, _)| !q.is_empty())
        .map(|(_, p)| p)
    }

    /// How many waiters would be served before an arrival of `prio`: those of a higher
    /// priority, and of the same one unless the queue serves newest first (`lifo`).
    fn ahead_of(&self, prio: Priority, lifo: bool) -> usize {
        let same = |q: &VecDeque<Entry>| if lifo { 0 } else { q.len() };
        match prio {
            Priority::Critical => same(&self.critical),
            Priority::Default => self.critical.len() + same(&self.default),
            Priority::Sheddable => self.critical.len() + self.default.len() + same(&self.sheddable),
        }
    }

    /// The oldest waiter of the best priority, or its newest when `lifo`.
    fn pop_best(&mut self, lifo: bool) -> Option<Entry> {
        let q = [&mut self.critical, &mut self.default, &mut self.sheddable]
            .into_iter()
            .find(|q| !q.is_empty())?;
        if lifo { q.pop_back() } else { q.pop_front() }
    }

    /// Drops (refuses) every waiter queued for `wait` or longer by `now`; returns how many.
    fn drop_older_than(&mut self, now: Instant, wait: Duration) -> u32 {
        let mut gone = 0;
        for q in [&mut self.critical, &mut self.default, &mut self.sheddable] {
            while q.front().is_some_and(|e| e.since + wait <= now) {
                // Dropping the sender wakes the waiter with a refusal.
                drop(q.pop_front());
                gone += 1;
            }
        }
        gone
    }

    /// The newest waiter of the lowest priority below `prio`.
    fn evict_below(&mut self, prio: Priority) -> Option<Entry> {
        [Priority::Sheddable, Priority::Default]
            .into_iter()
            .filter(|p| p.rank() > prio.rank())
            .find_map(|p| self.of(p).pop_back())
    }

    fn push(&mut self, prio: Priority, tx: oneshot::Sender<()>, since: Instant) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.of(prio).push_back(Entry { id, tx, since });
        id
    }

    /// Removes waiter `id`; false when it is no longer queued.
    fn remove(&mut self, prio: Priority, id: u64) -> bool {
        let q = self.of(prio);
        match q.iter().position(|e| e.id == id) {
            Some(at) => q.remove(at).is_some(),
            None => false,
        }
    }
}

/// Whether `since` (µs as in [`Shared::micros`]) is at least `span` before `now`.
fn lasted(since: u64, now: u64, span: Duration) -> bool {
    u128::from(now.saturating_sub(since)) >= span.as_micros()
}

/// How many slots requests of `prio` may fill under `limit` (the share of `default`): with
/// r = max(1, limit / 10), `critical` has a reserve of r above it and `sheddable` a margin of r
/// below it (but at least 1 slot when the limit has one).
fn share(limit: u32, prio: Priority) -> u32 {
    let r = (limit / 10).max(1);
    match prio {
        Priority::Critical => limit.saturating_add(r),
        Priority::Default => limit,
        Priority::Sheddable => limit.saturating_sub(r).max(limit.min(1)),
    }
}

fn priority_of(req: &Request) -> Priority {
    req.extensions()
        .get::<RequestContext>()
        .map_or(Priority::Default, |c| c.priority)
}

/// `reason` of `weir_shed_total`: no slot and no queue place.
const REASON_QUEUE_FULL: &str = "queue_full";
/// `reason` of `weir_shed_total`: no slot, and the expected wait for one exceeds `queue_timeout`.
const REASON_QUEUE_WAIT: &str = "queue_wait";
/// `reason` of `weir_shed_total`: waited `queue_timeout` in vain.
const REASON_QUEUE_TIMEOUT: &str = "queue_timeout";
/// `reason` of `weir_shed_total`: pushed out of the queue by a higher priority.
const REASON_EVICTED: &str = "evicted";
/// How long the queue must hold a waiter without a break to count as overloaded: then it serves
/// newest first and allows only [`OVERLOAD_WAIT`].
const OVERLOAD_INTERVAL: Duration = Duration::from_millis(100);
/// The longest wait in the queue under overload (capped at `queue_timeout`).
const OVERLOAD_WAIT: Duration = Duration::from_millis(5);
/// How long the queue must stay empty to count as drained (back to FIFO and `queue_timeout`).
/// A shorter gap, such as when a burst of calls ends together, does not end an overload.
const DRAIN_GAP: Duration = Duration::from_millis(5);
/// The service time average gives each new sample a weight of 1 / this.
const SERVICE_WEIGHT: u64 = 8;
/// `policy` of `weir_dry_run_rejections_total`.
const POLICY: &str = "shed";

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::AtomicU64;
    use std::task::Waker;

    use futures_util::FutureExt;
    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;
    use tower::service_fn;

    use super::*;
    use crate::http::Body;

    type Out = Result<Response, ProxyError>;

    /// A leaf that logs the id of each call it starts and holds it until the test releases it
    /// (first started, first released).
    #[derive(Clone)]
    struct Leaf {
        log: Arc<Mutex<Vec<u32>>>,
        gate: Arc<Semaphore>,
    }

    impl Leaf {
        fn new() -> Self {
            Self {
                log: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
            }
        }

        fn service(
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

        fn log(&self) -> Vec<u32> {
            self.log.lock().unwrap().clone()
        }

        fn release(&self, n: usize) {
            self.gate.add_permits(n);
        }
    }

    fn settings(mode: Mode, max_in_flight: u32, queue: u32, wait_ms: u64) -> Settings {
        Settings {
            mode,
            max_in_flight,
            queue,
            queue_timeout: Duration::from_millis(wait_ms),
            adaptive: false,
            min_limit: 1,
        }
    }

    fn req(id: u32, prio: Priority) -> Request {
        let mut r = Request::new(Body::empty());
        r.extensions_mut().insert(id);
        let ctx = RequestContext::new(IpAddr::from([127, 0, 0, 1]), "r".into(), prio);
        r.extensions_mut().insert(ctx);
        r
    }

    /// Lets every spawned task run until it blocks.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn spawn<S>(svc: &Shed<S>, id: u32, prio: Priority) -> JoinHandle<Out>
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
        S::Future: Send,
    {
        tokio::spawn(svc.clone().oneshot(req(id, prio)))
    }

    /// `call` then one poll: the answer if the future is ready at once.
    fn call_now<S>(svc: &Shed<S>, id: u32, prio: Priority) -> Option<Out>
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
        S::Future: Send,
    {
        svc.clone().call(req(id, prio)).now_or_never()
    }

    fn metric(m: &Metrics, series: &str) -> Option<f64> {
        m.render().lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    fn shed_total(m: &Metrics, reason: &str) -> f64 {
        metric(
            m,
            &format!("weir_shed_total{{upstream=\"u\",reason=\"{reason}\"}}"),
        )
        .unwrap()
    }

    fn setup(
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

    fn overloaded(out: Out) -> bool {
        matches!(out, Err(ProxyError::Overloaded))
    }

    #[tokio::test(start_paused = true)]
    async fn queues_at_the_limit_and_admits_in_arrival_order() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 2, 4, 10_000));
        let mut tasks = Vec::new();
        for id in 1..=5 {
            tasks.push(spawn(&svc, id, Priority::Default));
            settle().await;
        }
        assert_eq!(leaf.log(), [1, 2]);
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.limit, st.queued), (2, 2, 3));
        for started in 3..=5 {
            leaf.release(1);
            settle().await;
            assert_eq!(leaf.log().len(), started);
        }
        leaf.release(2);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(leaf.log(), [1, 2, 3, 4, 5]);
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_refuses_after_exactly_the_wait() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 1, 50));
        let _hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        let started = Instant::now();
        let out = svc.clone().oneshot(req(2, Priority::Default)).await;
        assert!(overloaded(out));
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(leaf.log(), [1]);
        assert_eq!(shed_total(&m, "queue_timeout"), 1.0);
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_refuses_at_once_with_a_ready_future() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 0, 50));
        // The default slot, then the one critical reserve slot.
        let _hold = spawn(&svc, 1, Priority::Default);
        let _reserve = spawn(&svc, 2, Priority::Critical);
        settle().await;
        for prio in [Priority::Critical, Priority::Default, Priority::Sheddable] {
            assert!(overloaded(
                call_now(&svc, 3, prio).expect("ready on first poll")
            ));
        }
        assert_eq!(shed_total(&m, "queue_full"), 3.0);
        assert_eq!(layer.handle().status().queued, 0);
        assert_eq!(leaf.log(), [1, 2]);
        assert_eq!(
            ProxyError::Overloaded.retry_after(),
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_go_to_critical_then_default_then_sheddable() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 8, 10_000));
        // Limit 1: one slot, and one more for critical requests.
        let mut tasks = vec![
            spawn(&svc, 1, Priority::Sheddable),
            spawn(&svc, 8, Priority::Critical),
        ];
        settle().await;
        let order = [
            (2, Priority::Sheddable),
            (3, Priority::Default),
            (4, Priority::Critical),
            (5, Priority::Sheddable),
            (6, Priority::Critical),
            (7, Priority::Default),
        ];
        for (id, prio) in order {
            tasks.push(spawn(&svc, id, prio));
            settle().await;
        }
        assert_eq!(layer.handle().status().queued, 6);
        for _ in 0..tasks.len() {
            leaf.release(1);
            settle().await;
        }
        assert_eq!(leaf.log(), [1, 8, 4, 6, 3, 7, 2, 5]);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_arrival_evicts_the_newest_sheddable_waiter() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 3, 10_000));
        let hold = [
            spawn(&svc, 1, Priority::Default),
            spawn(&svc, 10, Priority::Critical),
        ];
        settle().await;
        let s2 = spawn(&svc, 2, Priority::Sheddable);
        let d3 = spawn(&svc, 3, Priority::Default);
        let s4 = spawn(&svc, 4, Priority::Sheddable);
        settle().await;
        assert_eq!(layer.handle().status().queued, 3);

        let c5 = spawn(&svc, 5, Priority::Critical);
        settle().await;
        assert!(s4.is_finished());
        assert!(overloaded(s4.await.unwrap()));
        assert_eq!(shed_total(&m, "evicted"), 1.0);
        // A default arrival evicts the remaining sheddable waiter, not the default one.
        let d6 = spawn(&svc, 6, Priority::Default);
        settle().await;
        assert!(overloaded(s2.await.unwrap()));
        assert_eq!(shed_total(&m, "evicted"), 2.0);
        assert_eq!(layer.handle().status().queued, 3);

        leaf.release(5);
        settle().await;
        assert_eq!(leaf.log(), [1, 10, 5, 3, 6]);
        for t in hold.into_iter().chain([d3, c5, d6]) {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_arrivals_of_the_same_or_lower_priority() {
        let (m, layer, _leaf, svc) = setup(settings(Mode::Enforce, 1, 2, 10_000));
        let _hold = spawn(&svc, 1, Priority::Default);
        let _reserve = spawn(&svc, 2, Priority::Critical);
        let _c3 = spawn(&svc, 3, Priority::Critical);
        let _c4 = spawn(&svc, 4, Priority::Critical);
        settle().await;
        for prio in [Priority::Sheddable, Priority::Default, Priority::Critical] {
            assert!(overloaded(
                call_now(&svc, 9, prio).expect("ready on first poll")
            ));
        }
        assert_eq!(shed_total(&m, "queue_full"), 3.0);
        assert_eq!(shed_total(&m, "evicted"), 0.0);
        assert_eq!(layer.handle().status().queued, 2);
    }

    #[test]
    fn shares_leave_a_margin_below_the_limit_and_a_reserve_above() {
        let shares = |limit| {
            [Priority::Sheddable, Priority::Default, Priority::Critical].map(|p| share(limit, p))
        };
        assert_eq!(shares(100), [90, 100, 110]);
        assert_eq!(shares(10), [9, 10, 11]);
        assert_eq!(shares(19), [18, 19, 20]);
        assert_eq!(shares(2), [1, 2, 3]);
        // Never no slot at all for sheddable requests.
        assert_eq!(shares(1), [1, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_each_priority_has_its_share() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 10, 0, 50));
        let mut held: Vec<_> = (1..=9)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(layer.handle().status().in_flight, 9);
        // 9 in flight: the sheddable margin (limit − 1) is used up, the default limit is not.
        assert!(overloaded(
            call_now(&svc, 90, Priority::Sheddable).expect("ready on first poll")
        ));
        held.push(spawn(&svc, 10, Priority::Default));
        settle().await;
        // 10 in flight: only critical requests get in, into the reserve of 1.
        for prio in [Priority::Sheddable, Priority::Default] {
            assert!(overloaded(
                call_now(&svc, 91, prio).expect("ready on first poll")
            ));
        }
        held.push(spawn(&svc, 11, Priority::Critical));
        settle().await;
        assert!(overloaded(
            call_now(&svc, 92, Priority::Critical).expect("ready on first poll")
        ));
        assert_eq!(leaf.log(), (1..=11).collect::<Vec<_>>());
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.limit, st.queued), (11, 10, 0));
        assert_eq!(shed_total(&m, "queue_full"), 4.0);
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(11.0));
        leaf.release(11);
        for t in held {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sheddable_waiter_gets_a_freed_slot_only_below_its_share() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 10, 4, 10_000));
        let mut tasks: Vec<_> = (1..=10)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        let shed = spawn(&svc, 50, Priority::Sheddable);
        settle().await;
        leaf.release(1);
        settle().await;
        // 9 in flight: not below the sheddable share of 9, so the waiter keeps waiting, and a
        // default arrival takes the slot before it.
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (9, 1));
        tasks.push(spawn(&svc, 11, Priority::Default));
        settle().await;
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (10, 1));
        leaf.release(1);
        settle().await;
        assert_eq!(layer.handle().status().queued, 1);
        leaf.release(1);
        settle().await;
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (9, 0));
        assert_eq!(leaf.log().last(), Some(&50));
        leaf.release(9);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert!(shed.await.unwrap().is_ok());
    }

    /// The ids of the calls a leaf started, in order.
    type Log = Arc<Mutex<Vec<u32>>>;

    /// Like [`setup`], with a leaf that logs each call's id and answers after `service_ms`.
    fn setup_timed(
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

    #[tokio::test(start_paused = true)]
    async fn an_arrival_that_cannot_be_served_in_time_is_refused_at_once() {
        // Limit 2, 20ms per call: a slot frees every 10ms or so; the queue waits 24ms. (The
        // queue never holds a waiter for the 100ms that would make it serve newest first.)
        let (m, layer, log, svc) = setup_timed(settings(Mode::Enforce, 2, 8, 24), 20);
        // No service time known yet: every arrival queues, as far as the queue holds.
        let first: Vec<_> = (1..=5)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(layer.handle().status().queued, 3);
        let outs: Vec<_> = futures_util::future::join_all(first).await;
        let served = outs.iter().filter(|o| o.as_ref().unwrap().is_ok()).count();
        assert_eq!(served, 4);
        assert_eq!(shed_total(&m, "queue_timeout"), 1.0);
        assert_eq!(shed_total(&m, "queue_wait"), 0.0);

        // Now about 20ms per call is known: the 3rd and 4th arrivals expect 10 and 20ms and
        // queue; the 5th would wait about 30ms and is refused at once.
        let started = Instant::now();
        let mut tasks: Vec<_> = (6..=9)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(layer.handle().status().queued, 2);
        assert!(overloaded(
            call_now(&svc, 10, Priority::Default).expect("ready on first poll")
        ));
        // A sheddable arrival queues behind everyone: refused without the queue's lock.
        assert!(overloaded(
            call_now(&svc, 11, Priority::Sheddable).expect("ready on first poll")
        ));
        assert_eq!(shed_total(&m, "queue_wait"), 2.0);
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
        assert_eq!(layer.handle().status().queued, 2);
        for t in tasks.drain(..) {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(started.elapsed(), Duration::from_millis(40));
        assert_eq!(*log.lock().unwrap(), [1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!(shed_total(&m, "queue_timeout"), 1.0);
        let text = m.render();
        let line = "weir_shed_total{upstream=\"u\",reason=\"queue_wait\"} 2";
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_expected_wait_counts_only_the_waiters_ahead() {
        let (m, layer, log, svc) = setup_timed(settings(Mode::Enforce, 2, 8, 24), 20);
        let warm = [
            spawn(&svc, 0, Priority::Default),
            spawn(&svc, 0, Priority::Default),
        ];
        for t in warm {
            assert!(t.await.unwrap().is_ok());
        }
        // Both slots and the critical reserve taken; two default waiters (10 and 20ms).
        let mut tasks = vec![
            spawn(&svc, 1, Priority::Default),
            spawn(&svc, 2, Priority::Default),
            spawn(&svc, 3, Priority::Critical),
        ];
        settle().await;
        tasks.extend([4, 5].map(|id| spawn(&svc, id, Priority::Default)));
        settle().await;
        assert!(overloaded(
            call_now(&svc, 6, Priority::Default).expect("ready on first poll")
        ));
        // A critical arrival queues ahead of the default waiters: it expects 10ms.
        let c7 = spawn(&svc, 7, Priority::Critical);
        settle().await;
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (3, 3));
        assert_eq!(shed_total(&m, "queue_wait"), 1.0);

        // The three calls end together: the critical waiter takes the reserve, the first default
        // waiter the slot below the limit; the second one times out before the next frees.
        assert!(c7.await.unwrap().is_ok());
        let mut outs: Vec<Out> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(overloaded(outs.remove(4)), "the second default waiter");
        assert!(outs.iter().all(Result::is_ok));
        assert_eq!(log.lock().unwrap()[2..], [1, 2, 3, 7, 4]);
        assert_eq!(shed_total(&m, "queue_timeout"), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_an_admitted_call_frees_its_slot_for_a_waiter() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 2, 10_000));
        let hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        let waiter = spawn(&svc, 2, Priority::Default);
        settle().await;
        hold.abort();
        settle().await;
        assert_eq!(leaf.log(), [1, 2]);
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (1, 0));
        leaf.release(1);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_waiter_leaves_the_queue() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 1, 10_000));
        let _hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        let gone = spawn(&svc, 2, Priority::Default);
        settle().await;
        assert_eq!(layer.handle().status().queued, 1);
        gone.abort();
        settle().await;
        assert_eq!(layer.handle().status().queued, 0);
        // Its place is free again, and the next slot goes to the next waiter.
        let next = spawn(&svc, 3, Priority::Default);
        settle().await;
        leaf.release(2);
        assert!(next.await.unwrap().is_ok());
        assert_eq!(leaf.log(), [1, 3]);
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_after_its_slot_was_handed_over_passes_it_on() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 2, 10_000));
        let hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        let mut granted = Box::pin(svc.clone().call(req(2, Priority::Default)));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(granted.as_mut().poll(&mut cx).is_pending());
        let next = spawn(&svc, 3, Priority::Default);
        settle().await;
        assert_eq!(layer.handle().status().queued, 2);

        leaf.release(1);
        assert!(hold.await.unwrap().is_ok());
        // The slot went to waiter 2, which has not been polled since.
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (1, 1));
        drop(granted);
        settle().await;
        assert_eq!(leaf.log(), [1, 3]);
        leaf.release(1);
        assert!(next.await.unwrap().is_ok());
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_admits_everything_and_counts_what_it_would_refuse() {
        let (m, layer, leaf, svc) = setup(settings(Mode::DryRun, 1, 1, 50));
        let tasks: Vec<_> = (1..=4)
            .map(|id| spawn(&svc, id, Priority::Sheddable))
            .collect();
        settle().await;
        assert_eq!(leaf.log().len(), 4);
        let st = layer.handle().status();
        assert_eq!(
            (st.in_flight, st.limit, st.queued, st.mode),
            (4, 1, 0, Mode::DryRun)
        );
        // The third and fourth found limit + queue = 2 in flight.
        let dry = "weir_dry_run_rejections_total{upstream=\"u\",policy=\"shed\"}";
        assert_eq!(metric(&m, dry), Some(2.0));
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(4.0));
        leaf.release(4);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
    }

    /// Limit 1 (held by call 1, which the test releases), waiters 2 and 3 queued at 0 with
    /// `queue_timeout` = 1s; returns at 120ms, when the queue has held waiters for longer than
    /// OVERLOAD_INTERVAL, with the three calls.
    async fn overloaded_since_120ms<S>(svc: &Shed<S>) -> [JoinHandle<Out>; 3]
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone + Send + 'static,
        S::Future: Send,
    {
        let hold = spawn(svc, 1, Priority::Default);
        settle().await;
        let calls = [
            hold,
            spawn(svc, 2, Priority::Default),
            spawn(svc, 3, Priority::Default),
        ];
        settle().await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        calls
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_never_drains_serves_newest_first_with_the_short_wait() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 16, 1000));
        let [hold, old2, old3] = overloaded_since_120ms(&svc).await;
        assert_eq!(layer.handle().status().queued, 2);
        // Overloaded: the waiters queued with the full wait have waited more than the short one
        // and are refused as the next arrival queues; the new ones may wait only 5ms.
        let started = Instant::now();
        let w10 = spawn(&svc, 10, Priority::Default);
        settle().await;
        let w11 = spawn(&svc, 11, Priority::Default);
        settle().await;
        assert!(overloaded(old2.await.unwrap()) && overloaded(old3.await.unwrap()));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(shed_total(&m, "queue_timeout"), 2.0);
        assert_eq!(layer.handle().status().queued, 2);
        // The freed slot goes to the newest waiter.
        leaf.release(1);
        assert!(hold.await.unwrap().is_ok());
        settle().await;
        assert_eq!(leaf.log(), [1, 11]);
        assert!(overloaded(w10.await.unwrap()));
        assert_eq!(started.elapsed(), OVERLOAD_WAIT);
        assert_eq!(shed_total(&m, "queue_timeout"), 3.0);
        leaf.release(1);
        assert!(w11.await.unwrap().is_ok());
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_drains_goes_back_to_fifo_and_the_full_wait() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 16, 1000));
        let [hold, old2, old3] = overloaded_since_120ms(&svc).await;
        let w10 = spawn(&svc, 10, Priority::Default);
        settle().await;
        leaf.release(1);
        assert!(hold.await.unwrap().is_ok());
        assert!(overloaded(old2.await.unwrap()) && overloaded(old3.await.unwrap()));
        settle().await;
        // 10 holds the slot; the queue is empty, and stays so for more than DRAIN_GAP.
        assert_eq!(layer.handle().status().queued, 0);
        tokio::time::sleep(DRAIN_GAP * 2).await;
        let started = Instant::now();
        let w20 = spawn(&svc, 20, Priority::Default);
        settle().await;
        let w21 = spawn(&svc, 21, Priority::Default);
        settle().await;
        assert_eq!(layer.handle().status().queued, 2);
        // First come, first served again.
        leaf.release(1);
        assert!(w10.await.unwrap().is_ok());
        settle().await;
        assert_eq!(leaf.log(), [1, 10, 20]);
        // And the configured wait: 21 is refused after the full second, although the queue has
        // held it for longer than OVERLOAD_INTERVAL meanwhile (no one arrived to trim it).
        assert!(overloaded(w21.await.unwrap()));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(shed_total(&m, "queue_timeout"), 3.0);
        leaf.release(1);
        assert!(w20.await.unwrap().is_ok());
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn under_sustained_overload_a_refused_request_is_refused_without_waiting() {
        // Limit 1, 20ms per call, a wait of a second: 2..=8 queue at 0 (no service time yet) and
        // are served one per 20ms, so the queue never drains: 2 to 5 in turn, then at 100ms
        // (overloaded) the newest, 8.
        let (m, layer, log, svc) = setup_timed(settings(Mode::Enforce, 1, 16, 1000), 20);
        let calls: Vec<_> = (1..=8)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert_eq!(layer.handle().status().queued, 2);
        // Overloaded at 110ms: an arrival may wait 5ms, and a slot frees every 20ms. It is
        // refused at once (a FIFO queue with the full wait would have taken it: 3 × 20ms < 1s).
        let started = Instant::now();
        assert!(overloaded(
            call_now(&svc, 99, Priority::Default).expect("ready on first poll")
        ));
        assert!(overloaded(
            svc.clone().oneshot(req(98, Priority::Default)).await
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(shed_total(&m, "queue_wait"), 2.0);
        // 6 and 7, which had waited since 0, went as the first of them arrived.
        assert_eq!(shed_total(&m, "queue_timeout"), 2.0);
        assert_eq!(layer.handle().status().queued, 0);
        let outs: Vec<bool> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|o| o.unwrap().is_ok())
            .collect();
        assert_eq!(outs, [true, true, true, true, true, false, false, true]);
        assert_eq!(*log.lock().unwrap(), [1, 2, 3, 4, 5, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_counts_arrivals_that_would_have_timed_out_in_the_queue() {
        // Limit 2, the default queue (256 places, 50ms), calls of 100ms.
        let (m, layer, log, svc) = setup_timed(settings(Mode::DryRun, 2, 256, 50), 100);
        let dry = "weir_dry_run_rejections_total{upstream=\"u\",policy=\"shed\"}";
        // No service time known yet: the 8 beyond the share count when their slots, held
        // longer than the wait they would have had, are released.
        let burst: Vec<_> = (1..=10)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(layer.handle().status().in_flight, 10);
        for t in burst {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(metric(&m, dry), Some(8.0));
        // The queue enforcing would have had drains; after DRAIN_GAP it is FIFO again, with
        // the full wait. With 100ms known, those expecting more than 50ms count on arrival: the 2nd beyond the
        // share expects 2 × 100ms / 2 and on; the 1st, exactly 50ms, would have been served.
        tokio::time::sleep(DRAIN_GAP * 2).await;
        let burst: Vec<_> = (11..=20)
            .map(|id| spawn(&svc, id, Priority::Default))
            .collect();
        settle().await;
        assert_eq!(metric(&m, dry), Some(15.0));
        for t in burst {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(metric(&m, dry), Some(15.0));
        assert_eq!(log.lock().unwrap().len(), 20);
        for reason in ["queue_full", "queue_wait", "queue_timeout", "evicted"] {
            assert_eq!(shed_total(&m, reason), 0.0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_body_holds_its_slot_until_it_ends_or_is_dropped() {
        use http_body_util::BodyExt;

        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new("u".into(), &settings(Mode::Enforce, 1, 4, 1000), &m);
        // Call 0 answers with an empty body, the others with one chunk still to read.
        let svc = layer.layer(service_fn(|req: Request| async move {
            let body = match req.extensions().get::<u32>() {
                Some(0) => Body::empty(),
                _ => Body::full("hello"),
            };
            Ok::<_, ProxyError>(Response::new(body))
        }));
        let in_flight = || layer.handle().status().in_flight;
        let gauge = || {
            layer.handle().publish();
            metric(&m, "weir_in_flight{upstream=\"u\"}")
        };

        let resp = svc
            .clone()
            .oneshot(req(1, Priority::Default))
            .await
            .unwrap();
        assert_eq!((in_flight(), gauge()), (1, Some(1.0)));
        assert!(!http_body::Body::is_end_stream(resp.body()));
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(5));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert_eq!((in_flight(), gauge()), (0, Some(0.0)));

        // While a body is unread its slot is taken: the next call queues until it is dropped.
        let resp = svc
            .clone()
            .oneshot(req(2, Priority::Default))
            .await
            .unwrap();
        let next = spawn(&svc, 3, Priority::Default);
        settle().await;
        assert_eq!(layer.handle().status().queued, 1);
        drop(resp);
        let resp = next.await.unwrap().unwrap();
        assert_eq!(in_flight(), 1);
        drop(resp);
        assert_eq!((in_flight(), gauge()), (0, Some(0.0)));

        // Nothing to stream: released with the head.
        let resp = svc
            .clone()
            .oneshot(req(0, Priority::Default))
            .await
            .unwrap();
        assert_eq!(in_flight(), 0);
        drop(resp);
    }

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

    /// Many tasks on several threads, random hold times, priorities and cancellations.
    async fn stress(queue: u32, cancel_one_in: u32) -> (u32, u64, u64) {
        const LIMIT: u32 = 8;
        const TASKS: u32 = 48;
        const CALLS: u32 = 300;
        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new(
            "u".into(),
            &settings(Mode::Enforce, LIMIT, queue, 60_000),
            &m,
        );
        let handle = layer.handle();
        let peak = Arc::new(AtomicU32::new(0));
        let (h, p) = (handle.clone(), peak.clone());
        let svc = layer.layer(service_fn(move |req: Request| {
            let (h, p) = (h.clone(), p.clone());
            async move {
                p.fetch_max(h.status().in_flight, SeqCst);
                for _ in 0..req.extensions().get::<u32>().copied().unwrap_or(0) {
                    tokio::task::yield_now().await;
                }
                Ok::<_, ProxyError>(Response::new(Body::empty()))
            }
        }));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut x = u64::from(t).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut next = move |n: u64| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        u32::try_from(x % n).unwrap()
                    };
                    let (mut ok, mut refused) = (0u64, 0u64);
                    for _ in 0..CALLS {
                        let prio = [Priority::Critical, Priority::Default, Priority::Sheddable]
                            [usize::try_from(next(3)).unwrap()];
                        let mut fut = std::pin::pin!(svc.clone().oneshot(req(next(20), prio)));
                        if cancel_one_in > 0 && next(u64::from(cancel_one_in)) == 0 {
                            for _ in 0..next(10) {
                                if std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx)))
                                    .await
                                    .is_ready()
                                {
                                    break;
                                }
                                tokio::task::yield_now().await;
                            }
                            continue;
                        }
                        match fut.await {
                            Ok(_) => ok += 1,
                            Err(ProxyError::Overloaded) => refused += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("no waiter is left hanging")
                .unwrap();
            ok += o;
            refused += r;
        }
        let st = handle.status();
        assert_eq!((st.in_flight, st.queued), (0, 0));
        layer.handle().publish();
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
        let peak = peak.load(SeqCst);
        // The limit, and the one slot of the critical reserve above it.
        assert!(peak <= LIMIT + 1, "{peak}");
        (peak, ok, refused)
    }

    /// Two threads, one slot, rounds started together: one caller takes the slot, the other
    /// queues while the first releases it. Nothing else is running, so a lost wake-up strands
    /// the second caller (its queue wait is a minute) and its round times out.
    #[test]
    fn a_release_racing_with_an_arrival_to_the_queue_loses_no_wake_up() {
        const ROUNDS: u32 = 20_000;
        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new("u".into(), &settings(Mode::Enforce, 1, 4, 60_000), &m);
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|_req: Request| async {
            Ok::<_, ProxyError>(Response::new(Body::empty()))
        }));
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let stranded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (svc, barrier, stranded) = (svc.clone(), barrier.clone(), stranded.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_time()
                        .build()
                        .unwrap();
                    for _ in 0..ROUNDS {
                        barrier.wait();
                        // Set before the last wait, so both threads stop after the same round.
                        if stranded.load(SeqCst) {
                            return;
                        }
                        let call = svc.clone().oneshot(req(0, Priority::Default));
                        let out = rt.block_on(async {
                            tokio::time::timeout(Duration::from_secs(5), call).await
                        });
                        match out {
                            Ok(out) => assert!(out.is_ok()),
                            Err(_) => stranded.store(true, SeqCst),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(!stranded.load(SeqCst), "a waiter was left without a slot");
        let st = handle.status();
        assert_eq!((st.in_flight, st.queued), (0, 0));
        assert!(shed_total(&m, "queue_timeout") == 0.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stress_with_room_for_every_task_every_call_is_answered() {
        // 48 callers for 8 slots: the queue never drains, so once it has held waiters for
        // OVERLOAD_INTERVAL it serves newest first and refuses those that wait OVERLOAD_WAIT.
        let (peak, ok, refused) = stress(48, 0).await;
        assert_eq!(ok + refused, 48 * 300);
        assert!(ok > 0, "{ok} {refused}");
        assert!(peak >= 8, "{peak}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stress_with_a_small_queue_and_cancellations_stays_within_the_limit() {
        let (_peak, ok, refused) = stress(4, 5).await;
        assert!(ok > 0 && refused > 0, "{ok} {refused}");
    }
}
