//! The breaker's sliding time window: calls, failures and slow calls in [`BUCKETS`] buckets.
//!
//! Position: owned by the breaker's state machine ([`super::state`]); written when a request's
//! final outcome is known. Config: `upstreams.<name>.breaker.window`. Metrics: none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sums over the buckets that lie inside the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Calls with a success or failure outcome.
    pub(crate) calls: u64,
    /// Calls that failed.
    pub(crate) failures: u64,
    /// Calls slower than the slow-call duration (failed or not).
    pub(crate) slow: u64,
}

/// A sliding window of `BUCKETS` buckets, each `width_ms` wide, lock-free.
///
/// Each counter is one `AtomicU64` packing the epoch it counts for (time divided by the
/// width, in the high 40 bits) and the count (low 24 bits). A counter whose epoch is older than
/// the caller's is stale: its next increment replaces it with `(epoch, 1)` by compare-exchange,
/// so no increment is lost at a rollover, and a reader sums only the counters whose epoch lies
/// within the last `BUCKETS` epochs. A count of 0 is an empty counter, whatever its epoch.
#[derive(Debug)]
pub(crate) struct Window {
    width_ms: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

// === impl Window ===

impl Window {
    /// A window covering `len` (at least 1ms per bucket; rounded up to a whole number of
    /// bucket widths).
    pub(crate) fn new(len: Duration) -> Self {
        let len_ms = u64::try_from(len.as_millis()).unwrap_or(u64::MAX);
        Self {
            width_ms: len_ms.div_ceil(BUCKETS_U64).max(1),
            buckets: Default::default(),
        }
    }

    /// Counts one call at `now_ms` (milliseconds since the breaker's base instant, below 2^40).
    pub(crate) fn record(&self, now_ms: u64, failure: bool, slow: bool) {
        let epoch = self.epoch(now_ms);
        let Some(bucket) = self.bucket(epoch) else {
            return;
        };
        bump(&bucket.calls, epoch);
        if failure {
            bump(&bucket.failures, epoch);
        }
        if slow {
            bump(&bucket.slow, epoch);
        }
    }

    /// The sums over the window that ends at `now_ms`.
    pub(crate) fn totals(&self, now_ms: u64) -> Totals {
        let epoch = self.epoch(now_ms);
        let mut t = Totals::default();
        for b in &self.buckets {
            t.calls += live(&b.calls, epoch);
            t.failures += live(&b.failures, epoch);
            t.slow += live(&b.slow, epoch);
        }
        t
    }

    /// Empties every bucket (the breaker closed: it starts judging afresh).
    pub(crate) fn reset(&self) {
        for b in &self.buckets {
            for c in [&b.calls, &b.failures, &b.slow] {
                c.store(EMPTY, Ordering::Relaxed);
            }
        }
    }

    fn epoch(&self, now_ms: u64) -> u64 {
        (now_ms / self.width_ms).min(EPOCH_MAX)
    }

    fn bucket(&self, epoch: u64) -> Option<&Bucket> {
        let slot = usize::try_from(epoch % BUCKETS_U64).ok()?;
        self.buckets.get(slot)
    }
}

/// Adds one to `counter` for `epoch`, replacing an empty or stale count; saturates.
fn bump(counter: &AtomicU64, epoch: u64) {
    let mut cur = counter.load(Ordering::Relaxed);
    loop {
        let (stamp, count) = (cur >> COUNT_BITS, cur & COUNT_MAX);
        let next = if count == 0 || stamp < epoch {
            (epoch << COUNT_BITS) | 1
        } else if count < FAST_LIMIT {
            // Current, or a newer epoch took the slot (this call read the clock just before a
            // rollover): add to it. Far below the count's limit, `fetch_add` cannot carry into
            // the stamp: that would take 2^23 increments racing this one.
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        } else if count < COUNT_MAX {
            cur + 1
        } else {
            return;
        };
        match counter.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// The count in `counter` if its epoch lies within the `BUCKETS` epochs ending at `epoch`.
fn live(counter: &AtomicU64, epoch: u64) -> u64 {
    let v = counter.load(Ordering::Relaxed);
    // A counter newer than `epoch` (the reader's clock ran just behind a writer's) is live.
    if epoch.saturating_sub(v >> COUNT_BITS) < BUCKETS_U64 {
        v & COUNT_MAX
    } else {
        0
    }
}

/// Buckets per window: a failure ages out between 9/10 and 10/10 of the window after it.
pub(crate) const BUCKETS: usize = 10;
const BUCKETS_U64: u64 = 10;
const COUNT_BITS: u32 = 24;
/// A bucket counts at most this many calls (16.7M); beyond, it saturates.
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
/// Below this count an increment is a plain `fetch_add`; above, a saturating compare-exchange.
const FAST_LIMIT: u64 = 1 << (COUNT_BITS - 1);
const EPOCH_MAX: u64 = (1 << (64 - COUNT_BITS)) - 1;
/// An empty counter: count 0.
const EMPTY: u64 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window() {
        let w = Window::new(Duration::from_secs(10));
        assert_eq!(w.width_ms, 1000);
        w.record(0, true, false);
        w.record(500, false, true);
        w.record(2_500, true, true);
        assert_eq!(
            w.totals(2_600),
            Totals {
                calls: 3,
                failures: 2,
                slow: 2
            }
        );
    }

    #[test]
    fn old_buckets_age_out_and_are_reused() {
        let w = Window::new(Duration::from_secs(10));
        w.record(0, true, false);
        w.record(1_000, true, false);
        // At 9.999s bucket 0 is still inside; at 10s it has aged out, bucket 1 has not.
        assert_eq!(w.totals(9_999).failures, 2);
        assert_eq!(w.totals(10_000).failures, 1);
        assert_eq!(w.totals(11_000).failures, 0);
        // Slot 0 is reused at 20s: the stale count is replaced, not added to.
        w.record(20_000, false, false);
        assert_eq!(
            w.totals(20_000),
            Totals {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn a_late_record_joins_the_newer_bucket() {
        let w = Window::new(Duration::from_secs(10));
        w.record(10_000, false, false);
        // A call that read the clock before the rollover lands in the same slot.
        w.record(9_999, true, false);
        assert_eq!(w.totals(10_000).calls, 2);
        assert_eq!(w.totals(10_000).failures, 1);
    }

    #[test]
    fn reset_empties_everything() {
        let w = Window::new(Duration::from_millis(15));
        assert_eq!(w.width_ms, 2);
        for t in 0..15 {
            w.record(t, true, true);
        }
        assert_eq!(w.totals(15).calls, 15);
        w.reset();
        assert_eq!(w.totals(15), Totals::default());
        w.record(16, false, false);
        assert_eq!(w.totals(16).calls, 1);
    }

    #[test]
    fn empty_counters_count_at_any_epoch() {
        let w = Window::new(Duration::from_millis(10));
        let late = 3u64 << 31; // far along: an empty counter's stamp 0 must not look newer
        w.record(late, true, false);
        w.record(late, true, false);
        w.record(late + 1, false, false);
        assert_eq!(
            w.totals(late + 1),
            Totals {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        assert_eq!(w.totals(late + 10).calls, 1);
        assert_eq!(w.totals(late + 11).calls, 0);
    }

    #[test]
    fn counts_saturate_instead_of_carrying_into_the_stamp() {
        let w = Window::new(Duration::from_secs(10));
        let calls = &w.buckets[3].calls;
        calls.store((3 << COUNT_BITS) | (FAST_LIMIT - 1), Ordering::Relaxed);
        w.record(3_000, false, false);
        w.record(3_000, false, false);
        assert_eq!(w.totals(3_000).calls, FAST_LIMIT + 1);
        calls.store((3 << COUNT_BITS) | (COUNT_MAX - 1), Ordering::Relaxed);
        for _ in 0..3 {
            w.record(3_000, false, false);
        }
        assert_eq!(w.totals(3_000).calls, COUNT_MAX);
        assert_eq!(calls.load(Ordering::Relaxed) >> COUNT_BITS, 3);
    }
}
