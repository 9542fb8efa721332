//! What the queue's recent past predicts: the average service time of a slot (so an arrival
//! that would outwait its allowed wait is refused at once), and whether the queue is
//! overloaded (CoDel: it has held waiters without draining for [`OVERLOAD_INTERVAL`]).
//!
//! Position: part of one upstream's shed state, read and written on admission and release
//! (see the module docs of [`super`]). Config: `shed.queue_timeout`. Metrics: none.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

/// The service time average and the busy/empty record of one upstream's queue. Lock-free:
/// racing updates may lose one another's sample, which an average can afford.
pub(super) struct Estimator {
    /// The origin of `busy_since` and `empty_since`.
    epoch: Instant,
    /// Average service time (admission to the inner future resolving) of timed admissions, in
    /// µs; 0 until the first.
    service_us: AtomicU64,
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
}

// === impl Estimator ===

impl Estimator {
    /// No service time known, the queue never busy; times count from now.
    pub(super) fn new(queue_timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            service_us: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            empty_since: AtomicU64::new(0),
            queue_timeout,
            overload_wait: OVERLOAD_WAIT.min(queue_timeout),
        }
    }

    /// The configured `queue_timeout`: the wait allowed while not overloaded.
    pub(super) fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// The wait allowed under overload.
    pub(super) fn overload_wait(&self) -> Duration {
        self.overload_wait
    }

    /// Whether the queue has held waiters without draining for [`OVERLOAD_INTERVAL`]: then
    /// waiters are served newest first and may wait only `overload_wait`.
    pub(super) fn overloaded(&self, now: Instant) -> bool {
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
    pub(super) fn allowed_wait(&self, now: Instant) -> Duration {
        if self.overloaded(now) {
            self.overload_wait
        } else {
            self.queue_timeout
        }
    }

    /// Whether the queue followed is noted as holding waiters (busy, and not empty since).
    pub(super) fn noted_waiting(&self) -> bool {
        self.busy_since.load(Relaxed) != 0 && self.empty_since.load(Relaxed) == 0
    }

    /// Follows the queue after a change at `now`: `waiting` when it holds a waiter. A queue
    /// that was empty for [`DRAIN_GAP`] or longer starts a new busy period.
    pub(super) fn note_queue(&self, now: Instant, waiting: bool) {
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

    /// [`Self::note_queue`] for the real queue, under its lock: `waiting` when it holds a
    /// waiter, at `now` (`None`: read the clock if needed).
    pub(super) fn track(&self, waiting: bool, now: Option<Instant>) {
        // After a push the queue holds a waiter and has been noted busy already: skip the clock.
        if waiting && now.is_none() && self.empty_since.load(Relaxed) == 0 {
            return;
        }
        self.note_queue(now.unwrap_or_else(Instant::now), waiting);
    }

    /// Whether any call has been timed yet.
    pub(super) fn service_known(&self) -> bool {
        self.service_us.load(Relaxed) != 0
    }

    /// Whether a waiter with `ahead` others to be served before it would likely wait longer
    /// than `wait` under `limit`: slots free at about limit per service time, so its turn comes
    /// after (ahead + 1) × service time / limit. False while no call has been timed.
    pub(super) fn outwaits(&self, ahead: usize, wait: Duration, limit: u32) -> bool {
        let service = self.service_us.load(Relaxed);
        if service == 0 {
            return false;
        }
        let turn = u128::try_from(ahead)
            .unwrap_or(u128::MAX)
            .saturating_add(1)
            .saturating_mul(u128::from(service));
        turn > wait.as_micros().saturating_mul(u128::from(limit))
    }

    /// Feeds one timed call to the average service time (weight 1/[`SERVICE_WEIGHT`]).
    pub(super) fn observe_service(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.service_us.load(Relaxed);
        let new = match old {
            0 => us,
            _ => (old - old / SERVICE_WEIGHT).saturating_add(us / SERVICE_WEIGHT),
        };
        self.service_us.store(new.max(1), Relaxed);
    }

    /// `now` in µs since `epoch`, plus 1 (so never 0, which reads as unset).
    fn micros(&self, now: Instant) -> u64 {
        let us = now.saturating_duration_since(self.epoch).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX - 1).saturating_add(1)
    }
}

/// Whether `since` (µs as in [`Estimator::micros`]) is at least `span` before `now`.
fn lasted(since: u64, now: u64, span: Duration) -> bool {
    u128::from(now.saturating_sub(since)) >= span.as_micros()
}

/// How long the queue must hold a waiter without a break to count as overloaded: then it serves
/// newest first and allows only [`OVERLOAD_WAIT`].
const OVERLOAD_INTERVAL: Duration = Duration::from_millis(100);
/// The longest wait in the queue under overload (capped at `queue_timeout`).
pub(super) const OVERLOAD_WAIT: Duration = Duration::from_millis(5);
/// How long the queue must stay empty to count as drained (back to FIFO and `queue_timeout`).
/// A shorter gap, such as when a burst of calls ends together, does not end an overload.
pub(super) const DRAIN_GAP: Duration = Duration::from_millis(5);
/// The service time average gives each new sample a weight of 1 / this.
const SERVICE_WEIGHT: u64 = 8;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinHandle;
    use tokio::time::Instant;
    use tower::{Service, ServiceExt};

    use super::*;
    use crate::error::ProxyError;
    use crate::http::context::Priority;
    use crate::http::{Request, Response};
    use crate::resilience::Mode;
    use crate::resilience::shed::Shed;
    use crate::resilience::shed::testing::*;

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
        // the full wait. With 100ms known, those expecting more than 50ms count on arrival:
        // the 2nd beyond the share expects 2 × 100ms / 2 and on; the 1st, exactly 50ms, would
        // have been served.
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
}
