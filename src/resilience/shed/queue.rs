//! The queue of requests waiting for a slot: [`Waiters`], one list per priority, and the
//! [`Waiter`] each queued request holds until its turn comes, it is refused, or it gives up.
//!
//! Position: behind admission (`admit.rs`), which pushes, dispatches and evicts under the
//! queue's lock; a waiter polls for its turn inside `ResponseFuture`. Config: `shed.queue`,
//! `shed.queue_timeout`. Metrics: `weir_shed_total{reason="queue_timeout"}`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::admit::Shared;
use super::permit::Permit;
use crate::http::context::Priority;

/// One request's place in the queue. Dropped before its turn, it leaves the queue (or gives
/// back a slot handed to it meanwhile).
pub(super) struct Waiter {
    shared: Arc<Shared>,
    id: u64,
    prio: Priority,
    rx: oneshot::Receiver<()>,
    /// The queue is done with this waiter (granted, evicted or withdrawn).
    done: bool,
}

/// How a wait in the queue ended.
pub(super) enum Turn {
    /// A slot was handed over.
    Granted(Permit),
    /// Evicted, dropped as hopeless, or out of time.
    Refused,
}

enum Withdrawn {
    Removed,
    Granted,
    Evicted,
}

/// The queue: one list per priority, oldest first; served from the front (FIFO), or from the
/// back (newest first) under overload.
#[derive(Default)]
pub(super) struct Waiters {
    critical: VecDeque<Entry>,
    default: VecDeque<Entry>,
    sheddable: VecDeque<Entry>,
    next_id: u64,
}

/// A waiter as the queue holds it: dropping the entry (its sender) refuses the waiter.
pub(super) struct Entry {
    id: u64,
    /// Sends the slot taken for the waiter.
    pub(super) tx: oneshot::Sender<()>,
    /// When it was queued.
    since: Instant,
}

// === impl Waiter ===

impl Waiter {
    /// The waiter of entry `id` of `prio`, just pushed; its turn comes through `rx`.
    pub(super) fn new(
        shared: Arc<Shared>,
        id: u64,
        prio: Priority,
        rx: oneshot::Receiver<()>,
    ) -> Self {
        Self {
            shared,
            id,
            prio,
            rx,
            done: false,
        }
    }

    /// Ready when a slot is handed over, the queue refuses the waiter, or `sleep` (its allowed
    /// wait) ends first.
    pub(super) fn poll_turn(&mut self, cx: &mut Context<'_>, sleep: Pin<&mut Sleep>) -> Poll<Turn> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                return Poll::Ready(Turn::Granted(self.permit()));
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
            Withdrawn::Granted => Turn::Granted(self.permit()),
            Withdrawn::Evicted => Turn::Refused,
        })
    }

    fn permit(&self) -> Permit {
        Permit::new(self.shared.clone(), true, None)
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

impl Waiters {
    /// The list of `prio`, oldest first.
    pub(super) fn of(&mut self, prio: Priority) -> &mut VecDeque<Entry> {
        match prio {
            Priority::Critical => &mut self.critical,
            Priority::Default => &mut self.default,
            Priority::Sheddable => &mut self.sheddable,
        }
    }

    /// Waiters of every priority.
    pub(super) fn len(&self) -> usize {
        self.critical.len() + self.default.len() + self.sheddable.len()
    }

    /// The best priority waiting.
    pub(super) fn best(&self) -> Option<Priority> {
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
    pub(super) fn ahead_of(&self, prio: Priority, lifo: bool) -> usize {
        let same = |q: &VecDeque<Entry>| if lifo { 0 } else { q.len() };
        match prio {
            Priority::Critical => same(&self.critical),
            Priority::Default => self.critical.len() + same(&self.default),
            Priority::Sheddable => self.critical.len() + self.default.len() + same(&self.sheddable),
        }
    }

    /// The oldest waiter of the best priority, or its newest when `lifo`.
    pub(super) fn pop_best(&mut self, lifo: bool) -> Option<Entry> {
        let q = [&mut self.critical, &mut self.default, &mut self.sheddable]
            .into_iter()
            .find(|q| !q.is_empty())?;
        if lifo { q.pop_back() } else { q.pop_front() }
    }

    /// Drops (refuses) every waiter queued for `wait` or longer by `now`; returns how many.
    pub(super) fn drop_older_than(&mut self, now: Instant, wait: Duration) -> u32 {
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
    pub(super) fn evict_below(&mut self, prio: Priority) -> Option<Entry> {
        [Priority::Sheddable, Priority::Default]
            .into_iter()
            .filter(|p| p.rank() > prio.rank())
            .find_map(|p| self.of(p).pop_back())
    }

    /// Queues a waiter of `prio` at `since`; returns its id.
    pub(super) fn push(&mut self, prio: Priority, tx: oneshot::Sender<()>, since: Instant) -> u64 {
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use tokio::time::Instant;
    use tower::{Service, ServiceExt};

    use crate::http::context::Priority;
    use crate::resilience::Mode;
    use crate::resilience::shed::testing::*;

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
}
