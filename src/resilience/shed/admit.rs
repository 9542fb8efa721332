//! Admission of one upstream's requests: the slot counter, the share of slots each priority may
//! fill, the hand-over of freed slots to waiters, and the dry run that only counts.
//!
//! Position: the state every clone of one [`super::ShedLayer`] shares; `Shed::call` asks it for
//! a permit, and a permit gives its slot back here. Config: `shed.mode`, `shed.max_in_flight`,
//! `shed.queue`, `shed.adaptive`, `shed.min_limit`. Metrics: `weir_shed_total`,
//! `weir_concurrency_limit`, `weir_in_flight` (the handle), `weir_dry_run_rejections_total`.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Settings;
use super::estimate::Estimator;
use super::permit::Permit;
use super::queue::{Entry, Waiter, Waiters};
use crate::http::context::Priority;
use crate::metrics::{CONCURRENCY_LIMIT, DRY_RUN_REJECTIONS_TOTAL, IN_FLIGHT, Metrics, SHED_TOTAL};
use crate::resilience::Mode;
use crate::resilience::adaptive::Gradient;

/// The state every clone of one upstream's layer shares.
pub(super) struct Shared {
    pub(super) upstream: Arc<str>,
    pub(super) mode: Mode,
    queue_cap: usize,
    /// Whether admissions are timed for the expected wait (enforce mode with a queue).
    pub(super) timing: bool,
    /// The service time and the queue's busy periods.
    pub(super) estimate: Estimator,
    /// `queue` as configured: in dry run, limit + this many in flight would refuse outright.
    queue_places: u32,
    /// The limit in force; written only under the `gradient` lock.
    pub(super) limit: AtomicU32,
    /// Slots taken. SeqCst: see `release` and `enqueue` for the hand-over protocol.
    pub(super) in_flight: AtomicU32,
    /// Waiters in `waiters` plus any arrival registering under its lock. SeqCst.
    pub(super) queued: AtomicU32,
    waiters: Mutex<Waiters>,
    pub(super) gradient: Option<Mutex<Gradient>>,
    pub(super) metrics: ShedMetrics,
}

/// The metric handles of one upstream's shedding, resolved once.
pub(super) struct ShedMetrics {
    pub(super) in_flight: Gauge,
    limit: Gauge,
    queue_full: Counter,
    queue_wait: Counter,
    pub(super) queue_timeout: Counter,
    evicted: Counter,
    pub(super) dry_run: Counter,
}

/// What became of an arrival.
pub(super) enum Arrival {
    /// A slot now.
    Admitted(Permit),
    /// Queued, with the longest wait allowed.
    Waiting(Waiter, Duration),
    /// Refused at once.
    Refused,
}

// === impl Shared ===

impl Shared {
    /// The state of `upstream` with `settings`; registers its metrics in `metrics` and sets
    /// `weir_concurrency_limit` to `max_in_flight` (left unset in mode `off`).
    pub(super) fn new(upstream: Arc<str>, settings: &Settings, metrics: &Metrics) -> Self {
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
        Shared {
            upstream,
            mode: settings.mode,
            queue_cap,
            timing: match settings.mode {
                Mode::Enforce => queue_cap > 0,
                Mode::DryRun => true,
                Mode::Off => false,
            },
            estimate: Estimator::new(settings.queue_timeout),
            queue_places: settings.queue,
            limit: AtomicU32::new(settings.max_in_flight),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            waiters: Mutex::new(Waiters::default()),
            gradient,
            metrics,
        }
    }

    /// Decides an arrival of `prio`: a slot at once when its share has room and no one is
    /// queued (off: always; dry run: always, counting what enforcing would refuse), else the
    /// queue's answer.
    pub(super) fn arrive(self: &Arc<Self>, prio: Priority) -> Arrival {
        // `Some(last)`: admitted at once, `last` when it filled its share (then it is timed).
        let admitted = match self.mode {
            Mode::Off => {
                self.admit_unlimited();
                Some(false)
            }
            Mode::DryRun => return Arrival::Admitted(self.admit_dry_run(prio)),
            Mode::Enforce if self.queued.load(SeqCst) == 0 => self.try_acquire(prio),
            Mode::Enforce => None,
        };
        match admitted {
            Some(last) => Arrival::Admitted(Permit::new(self.clone(), last, None)),
            None => self.enqueue(prio),
        }
    }

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
    /// allowed now; with no service time known yet, its permit counts it on release if it was
    /// held longer than that wait.
    fn admit_dry_run(self: &Arc<Self>, prio: Priority) -> Permit {
        let most = share(self.limit.load(Relaxed), prio);
        let taken = self.admit_unlimited();
        if taken < most {
            // Room within the share: the queue enforcing would have had is empty (the clock is
            // read only on the first such arrival after a queue).
            if self.estimate.noted_waiting() {
                self.estimate.note_queue(Instant::now(), false);
            }
            return Permit::new(self.clone(), taken + 1 >= most, None);
        }
        let now = Instant::now();
        self.estimate.note_queue(now, true);
        let wait = self.estimate.allowed_wait(now);
        let ahead = taken - most;
        let mut later = None;
        if ahead >= self.queue_places {
            self.metrics.dry_run.increment(1);
        } else if !self.estimate.service_known() {
            later = Some(wait);
        } else if self.outwaits(usize::try_from(ahead).unwrap_or(usize::MAX), wait) {
            self.metrics.dry_run.increment(1);
        }
        Permit::new(self.clone(), true, later)
    }

    /// [`Estimator::track`] for the real queue `q`, under its lock.
    pub(super) fn track_busy(&self, q: &Waiters, now: Option<Instant>) {
        self.estimate.track(q.len() > 0, now);
    }

    /// Gives a slot back and hands free slots to waiters.
    ///
    /// Lost wake-ups are ruled out by SeqCst on both counters: the releaser decrements
    /// `in_flight` then reads `queued`; an arrival increments `queued` (under the lock) then
    /// tries `in_flight`. Either the releaser sees the arrival registered and dispatches after
    /// it (taking the lock), or the arrival sees the freed slot.
    pub(super) fn release(&self) {
        let left = self.in_flight.fetch_sub(1, SeqCst).saturating_sub(1);
        if self.mode == Mode::DryRun
            && left < self.limit.load(Relaxed)
            && self.estimate.noted_waiting()
        {
            // Room below the limit: the queue enforcing would have had is empty.
            self.estimate.note_queue(Instant::now(), false);
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
            let lifo = *lifo.get_or_insert_with(|| self.estimate.overloaded(Instant::now()));
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
    fn enqueue(self: &Arc<Self>, prio: Priority) -> Arrival {
        if self.queue_cap == 0 {
            self.metrics.queue_full.increment(1);
            return Arrival::Refused;
        }
        let now = Instant::now();
        if prio == Priority::Sheddable && !self.estimate.overloaded(now) {
            // Nothing ranks below `sheddable`: in FIFO order every waiter is ahead of it, so
            // the queue's length settles a full queue or a wait too long without the lock.
            let queued = self.queued.load(SeqCst);
            if usize::try_from(queued).is_ok_and(|n| n >= self.queue_cap) {
                self.metrics.queue_full.increment(1);
                return Arrival::Refused;
            }
            if self.outwaits(
                usize::try_from(queued).unwrap_or(usize::MAX),
                self.estimate.queue_timeout(),
            ) {
                self.metrics.queue_wait.increment(1);
                return Arrival::Refused;
            }
        }
        let mut q = self.lock_waiters();
        let lifo = self.estimate.overloaded(now);
        if lifo {
            // Under overload no waiter may stay longer than `overload_wait`, including those
            // queued before, with the full wait: the oldest go, refused.
            let stale = q.drop_older_than(now, self.estimate.overload_wait());
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
            drop(q);
            return Arrival::Admitted(Permit::new(self.clone(), true, None));
        }
        let wait = if lifo {
            self.estimate.overload_wait()
        } else {
            self.estimate.queue_timeout()
        };
        if self.outwaits(q.ahead_of(prio, lifo), wait) {
            self.queued.fetch_sub(1, SeqCst);
            self.metrics.queue_wait.increment(1);
            return Arrival::Refused;
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
                    return Arrival::Refused;
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
                && self.outwaits(higher + q.of(prio).len() - 1, self.estimate.overload_wait())
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
        Arrival::Waiting(Waiter::new(self.clone(), id, prio, rx), wait)
    }

    /// Whether a waiter with `ahead` others to be served before it would likely wait longer
    /// than `wait` under the limit in force (see [`Estimator::outwaits`]).
    fn outwaits(&self, ahead: usize, wait: Duration) -> bool {
        self.estimate
            .outwaits(ahead, wait, self.limit.load(Relaxed))
    }

    /// Feeds one round trip to the adaptive limit, if any; skipped when another thread holds it.
    pub(super) fn sample(&self, rtt: Duration) {
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

    pub(super) fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
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

/// `reason` of `weir_shed_total`: no slot and no queue place.
const REASON_QUEUE_FULL: &str = "queue_full";
/// `reason` of `weir_shed_total`: no slot, and the expected wait for one exceeds `queue_timeout`.
const REASON_QUEUE_WAIT: &str = "queue_wait";
/// `reason` of `weir_shed_total`: waited `queue_timeout` in vain.
const REASON_QUEUE_TIMEOUT: &str = "queue_timeout";
/// `reason` of `weir_shed_total`: pushed out of the queue by a higher priority.
const REASON_EVICTED: &str = "evicted";
/// `policy` of `weir_dry_run_rejections_total`.
const POLICY: &str = "shed";

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering::SeqCst;
    use std::task::Poll;
    use std::time::Duration;

    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::error::ProxyError;
    use crate::http::context::Priority;
    use crate::http::{Body, Request, Response};
    use crate::metrics::Metrics;
    use crate::resilience::Mode;
    use crate::resilience::shed::ShedLayer;
    use crate::resilience::shed::testing::*;

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
