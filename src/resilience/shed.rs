//! Load shedding of one upstream: a concurrency limit, a bounded priority queue, refusal beyond.
//!
//! Position: outermost layer of every upstream stack (shed → breaker → retry → timeout → forward).
//! Config: `upstreams.<name>.shed.*`. Metrics: `weir_shed_total`, `weir_in_flight`,
//! `weir_concurrency_limit`, `weir_dry_run_rejections_total{policy="shed"}`.
//!
//! # Admission (`mode = "enforce"`)
//!
//! - A request takes a slot at once when fewer than the limit are in flight and no one is
//!   queued (arrivals do not jump the queue). This path is one compare-exchange, no lock.
//! - Otherwise it waits in the queue (`queue` places, 0 = no queue) for at most
//!   `queue_timeout`, then is refused. A freed slot goes to the highest-priority waiter
//!   (`critical`, then `default`, then `sheddable`; first come, first served within one).
//! - With the queue full, an arrival evicts the newest waiter of a strictly lower priority (that
//!   waiter is refused) or else is itself refused at once, with a ready
//!   `Err(ProxyError::Overloaded)` (503, `Retry-After: 1`) that took no queue place and no timer.
//! - A slot is held until the inner future yields the response head or is dropped.
//!
//! The priority is [`RequestContext::priority`] from the request's extensions (absent: `default`).
//!
//! `weir_shed_total{upstream,reason}` counts refusals; `reason` is one of:
//! - `queue_full`: no slot, and no queue place (the queue is full of waiters of the same or
//!   higher priority, or `queue = 0`);
//! - `queue_timeout`: waited `queue_timeout` without getting a slot;
//! - `evicted`: a waiter pushed out of the full queue by a higher-priority arrival.
//!
//! # Limit
//!
//! `max_in_flight` is the limit. With `adaptive = true` it is the ceiling of a
//! [`Gradient`] limit (floor `min_limit`, start `max_in_flight`). Its samples are the time from
//! admission to the inner future resolving, for every resolved call except the errors that say
//! nothing about the upstream's latency (those [`Outcome::of_error`] calls `Ignored`, such as
//! `circuit-open` from the breaker below); a dropped (cancelled) call gives no sample.
//! `weir_concurrency_limit` is the limit in force; `weir_in_flight` counts admitted calls.
//!
//! # Modes
//!
//! - `dry_run`: every request is admitted at once (no queue, no wait); each one that arrives
//!   when at least limit + `queue` are already in flight, which enforce mode would have refused
//!   outright, counts in `weir_dry_run_rejections_total{policy="shed"}`. Queue timeouts and
//!   evictions are not simulated. The adaptive limit still follows latency.
//! - `off`: no limit and no queue; `weir_in_flight` is still kept, and the limit reads 0 (none).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use metrics::{Counter, Gauge};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::admin::metrics::{
    CONCURRENCY_LIMIT, DRY_RUN_REJECTIONS_TOTAL, IN_FLIGHT, Metrics, SHED_TOTAL,
};
use crate::config::{Mode, Priority, ShedSettings};
use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::{Request, Response};
use crate::resilience::Outcome;
use crate::resilience::adaptive::Gradient;

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
    /// Requests admitted and not yet answered (response head) or dropped.
    pub in_flight: u32,
    /// The limit in force (adaptive or fixed); 0 in mode `off` (no limit).
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
        Admitted {
            #[pin]
            inner: Oneshot<S, Request>,
            slot: Option<Slot>,
        },
        Waiting {
            #[pin]
            sleep: Sleep,
            waiter: Waiter,
            call: Option<(S, Request)>,
        },
        Rejected,
    }
}

// === impl ShedLayer ===

impl ShedLayer {
    /// Shedding for `upstream` with `settings`; registers its metrics in `metrics` and sets
    /// `weir_concurrency_limit` to `max_in_flight` (left unset in mode `off`).
    pub fn new(upstream: Arc<str>, settings: &ShedSettings, metrics: &Metrics) -> Self {
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
            queue_timeout: shed(REASON_QUEUE_TIMEOUT),
            evicted: shed(REASON_EVICTED),
            dry_run: match settings.mode {
                Mode::DryRun => {
                    metrics.counter(DRY_RUN_REJECTIONS_TOTAL, &[up(), ("policy", POLICY.into())])
                }
                Mode::Enforce | Mode::Off => Counter::noop(),
            },
        };
        let shared = Shared {
            upstream,
            mode: settings.mode,
            queue_cap: usize::try_from(settings.queue).unwrap_or(usize::MAX),
            queue_timeout: settings.queue_timeout,
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

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Always ready: admission is decided in `call`, so a refusal holds nothing.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let shared = &self.shared;
        let admitted = match shared.mode {
            Mode::Off => {
                shared.admit_unlimited();
                true
            }
            Mode::DryRun => {
                let outright = shared
                    .limit
                    .load(Relaxed)
                    .saturating_add(shared.queue_places);
                if shared.admit_unlimited() >= outright {
                    shared.metrics.dry_run.increment(1);
                }
                true
            }
            Mode::Enforce => shared.queued.load(SeqCst) == 0 && shared.try_acquire(),
        };
        if admitted {
            return ResponseFuture::admitted(self.inner.clone(), req, Slot::new(shared.clone()));
        }
        match shared.enqueue(priority_of(&req)) {
            Enqueued::Admitted => {
                ResponseFuture::admitted(self.inner.clone(), req, Slot::new(shared.clone()))
            }
            Enqueued::Waiting(waiter) => ResponseFuture {
                state: State::Waiting {
                    sleep: tokio::time::sleep(shared.queue_timeout),
                    waiter,
                    call: Some((self.inner.clone(), req)),
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
    fn admitted(svc: S, req: Request, slot: Slot) -> Self {
        Self {
            state: State::Admitted {
                inner: svc.oneshot(req),
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
                    if let Some(slot) = slot.take() {
                        slot.finish(&out);
                    }
                    return Poll::Ready(out);
                }
                StateProj::Rejected => return Poll::Ready(Err(ProxyError::Overloaded)),
                StateProj::Waiting {
                    sleep,
                    waiter,
                    call,
                } => match (ready!(waiter.poll_turn(cx, sleep)), call.take()) {
                    (Turn::Granted(slot), Some((svc, req))) => State::Admitted {
                        inner: svc.oneshot(req),
                        slot: Some(slot),
                    },
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
    queue_timeout: Duration,
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
    queue_timeout: Counter,
    evicted: Counter,
    dry_run: Counter,
}

enum Enqueued {
    Admitted,
    Waiting(Waiter),
    Refused,
}

impl Shared {
    /// Takes a slot if fewer than the limit are taken.
    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Relaxed);
        let mut cur = self.in_flight.load(SeqCst);
        loop {
            if cur >= limit {
                return false;
            }
            match self
                .in_flight
                .compare_exchange_weak(cur, cur + 1, SeqCst, SeqCst)
            {
                Ok(_) => {
                    self.metrics.in_flight.increment(1.0);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Takes a slot regardless of the limit; returns how many were taken before.
    fn admit_unlimited(&self) -> u32 {
        self.metrics.in_flight.increment(1.0);
        self.in_flight.fetch_add(1, SeqCst)
    }

    /// Gives a slot back and hands free slots to waiters.
    ///
    /// Lost wake-ups are ruled out by SeqCst on both counters: the releaser decrements
    /// `in_flight` then reads `queued`; an arrival increments `queued` (under the lock) then
    /// tries `in_flight`. Either the releaser sees the arrival registered and dispatches after
    /// it (taking the lock), or the arrival sees the freed slot.
    fn release(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
        self.metrics.in_flight.decrement(1.0);
        if self.queued.load(SeqCst) > 0 {
            let mut q = self.lock_waiters();
            self.dispatch(&mut q);
        }
    }

    /// Hands free slots to the best waiters, in priority order.
    fn dispatch(&self, q: &mut Waiters) {
        while !q.is_empty() && self.try_acquire() {
            if let Some(entry) = q.pop_best() {
                self.grant(entry);
            }
        }
    }

    /// Gives a slot already taken to a waiter just removed from the queue.
    fn grant(&self, entry: Entry) {
        self.queued.fetch_sub(1, SeqCst);
        if entry.tx.send(()).is_err() {
            // A waiter removes its entry (under the lock) before its receiver can go away, so
            // this is unreachable; give the slot back rather than leak it.
            self.in_flight.fetch_sub(1, SeqCst);
            self.metrics.in_flight.decrement(1.0);
        }
    }

    /// The slow path: no slot at once, or others are queued.
    fn enqueue(self: &Arc<Self>, prio: Priority) -> Enqueued {
        if self.queue_cap == 0 || (prio == Priority::Sheddable && self.queued_at_least_cap()) {
            // Nothing ranks below `sheddable`, so a full queue refuses it without the lock.
            self.metrics.queue_full.increment(1);
            return Enqueued::Refused;
        }
        let mut q = self.lock_waiters();
        self.queued.fetch_add(1, SeqCst);
        // Free slots go first to those queued ahead: higher priority, or the same and earlier.
        let ahead = loop {
            match q.best_rank() {
                Some(rank) if rank <= prio.rank() => {
                    if !self.try_acquire() {
                        break true;
                    }
                    if let Some(entry) = q.pop_best() {
                        self.grant(entry);
                    }
                }
                Some(_) | None => break false,
            }
        };
        if !ahead && self.try_acquire() {
            self.queued.fetch_sub(1, SeqCst);
            // The limit may have risen: lower-priority waiters get what is left.
            self.dispatch(&mut q);
            return Enqueued::Admitted;
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
        let id = q.push(prio, tx);
        drop(q);
        Enqueued::Waiting(Waiter {
            shared: self.clone(),
            id,
            prio,
            rx,
            done: false,
        })
    }

    fn queued_at_least_cap(&self) -> bool {
        usize::try_from(self.queued.load(SeqCst)).is_ok_and(|n| n >= self.queue_cap)
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
    /// When it was admitted, for the adaptive limit's samples.
    started: Option<Instant>,
}

impl Slot {
    fn new(shared: Arc<Shared>) -> Self {
        let started = shared.gradient.is_some().then(Instant::now);
        Self { shared, started }
    }

    /// The inner call resolved with `out`: sample its round trip, then release.
    fn finish(self, out: &Result<Response, ProxyError>) {
        let counts = match out {
            Ok(_) => true,
            Err(e) => Outcome::of_error(e) != Outcome::Ignored,
        };
        if let (Some(started), true) = (self.started, counts) {
            self.shared.sample(started.elapsed());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.release();
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
        Slot::new(self.shared.clone())
    }

    /// Leaves the queue. If the entry is gone, the queue already decided: a dispatcher sent a
    /// slot, or an evictor dropped the sender, in both cases under the lock taken here first.
    fn withdraw(&mut self) -> Withdrawn {
        let mut q = self.shared.lock_waiters();
        if q.remove(self.prio, self.id) {
            self.shared.queued.fetch_sub(1, SeqCst);
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

/// The queue: one FIFO per priority.
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

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rank of the best priority waiting.
    fn best_rank(&self) -> Option<u8> {
        [
            (&self.critical, Priority::Critical),
            (&self.default, Priority::Default),
            (&self.sheddable, Priority::Sheddable),
        ]
        .into_iter()
        .find(|(q, _)| !q.is_empty())
        .map(|(_, p)| p.rank())
    }

    /// The oldest waiter of the best priority.
    fn pop_best(&mut self) -> Option<Entry> {
        self.critical
            .pop_front()
            .or_else(|| self.default.pop_front())
            .or_else(|| self.sheddable.pop_front())
    }

    /// The newest waiter of the lowest priority below `prio`.
    fn evict_below(&mut self, prio: Priority) -> Option<Entry> {
        [Priority::Sheddable, Priority::Default]
            .into_iter()
            .filter(|p| p.rank() > prio.rank())
            .find_map(|p| self.of(p).pop_back())
    }

    fn push(&mut self, prio: Priority, tx: oneshot::Sender<()>) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.of(prio).push_back(Entry { id, tx });
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

fn priority_of(req: &Request) -> Priority {
    req.extensions()
        .get::<RequestContext>()
        .map_or(Priority::Default, |c| c.priority)
}

/// `reason` of `weir_shed_total`: no slot and no queue place.
const REASON_QUEUE_FULL: &str = "queue_full";
/// `reason` of `weir_shed_total`: waited `queue_timeout` in vain.
const REASON_QUEUE_TIMEOUT: &str = "queue_timeout";
/// `reason` of `weir_shed_total`: pushed out of the queue by a higher priority.
const REASON_EVICTED: &str = "evicted";
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

    fn settings(mode: Mode, max_in_flight: u32, queue: u32, wait_ms: u64) -> ShedSettings {
        ShedSettings {
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
        s: ShedSettings,
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
        let _hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        for prio in [Priority::Critical, Priority::Default, Priority::Sheddable] {
            assert!(overloaded(
                call_now(&svc, 2, prio).expect("ready on first poll")
            ));
        }
        assert_eq!(shed_total(&m, "queue_full"), 3.0);
        assert_eq!(layer.handle().status().queued, 0);
        assert_eq!(leaf.log(), [1]);
        assert_eq!(
            ProxyError::Overloaded.retry_after(),
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_go_to_critical_then_default_then_sheddable() {
        let (_m, _layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 8, 10_000));
        let mut tasks = vec![spawn(&svc, 1, Priority::Sheddable)];
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
        for _ in order {
            leaf.release(1);
            settle().await;
        }
        assert_eq!(leaf.log(), [1, 4, 6, 3, 7, 2, 5]);
        leaf.release(1);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_critical_arrival_evicts_the_newest_sheddable_waiter() {
        let (m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 3, 10_000));
        let _hold = spawn(&svc, 1, Priority::Default);
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

        leaf.release(4);
        settle().await;
        assert_eq!(leaf.log(), [1, 5, 3, 6]);
        for t in [d3, c5, d6] {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(shed_total(&m, "queue_full"), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_arrivals_of_the_same_or_lower_priority() {
        let (m, layer, _leaf, svc) = setup(settings(Mode::Enforce, 1, 2, 10_000));
        let _hold = spawn(&svc, 1, Priority::Default);
        let _c2 = spawn(&svc, 2, Priority::Critical);
        let _c3 = spawn(&svc, 3, Priority::Critical);
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
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(4.0));
        leaf.release(4);
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
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
        let (m, _layer, leaf, svc) = setup(settings(Mode::Enforce, 2, 1, 50));
        assert_eq!(
            metric(&m, "weir_concurrency_limit{upstream=\"u\"}"),
            Some(2.0)
        );
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
        let a = spawn(&svc, 1, Priority::Default);
        let b = spawn(&svc, 2, Priority::Default);
        settle().await;
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
        assert_eq!(metric(&m, "weir_in_flight{upstream=\"u\"}"), Some(0.0));
        let peak = peak.load(SeqCst);
        assert!(peak <= LIMIT, "{peak}");
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
    async fn stress_with_room_for_every_task_nobody_is_refused_or_lost() {
        let (peak, ok, refused) = stress(48, 0).await;
        assert_eq!((ok, refused), (48 * 300, 0));
        assert_eq!(peak, 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stress_with_a_small_queue_and_cancellations_stays_within_the_limit() {
        let (_peak, ok, refused) = stress(4, 5).await;
        assert!(ok > 0 && refused > 0, "{ok} {refused}");
    }
}
