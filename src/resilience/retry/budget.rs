//! The retry budget of one upstream: retries ≤ ratio × requests over a sliding window, plus a
//! floor of retries per second (Finagle and Linkerd style), counted when a retry is scheduled.
//!
//! Position: [`super::Retry`] deposits on every request and withdraws before each backoff.
//! Config: `retry.budget_ratio`, `retry.budget_min_per_sec`, `retry.budget_window`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A sliding window of deposits (requests) and withdrawals (retries) in [`SLOTS`] time slots
/// of `window / SLOTS` each. Each slot is one atomic word per counter holding the slot's epoch
/// (high 32 bits) and its count (low 32 bits), so a slot reused one window later resets itself
/// in the same compare-and-swap that counts: no lock, no reset task.
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    min_per_sec: f64,
    window: Duration,
    slot_nanos: u64,
    created: Instant,
    deposits: [AtomicU64; SLOTS_USIZE],
    withdrawals: [AtomicU64; SLOTS_USIZE],
}

impl Budget {
    /// A budget allowing `ratio × requests + min_per_sec × seconds` retries per `window`;
    /// the seconds grow from 1 to the window length as the budget ages.
    pub(crate) fn new(ratio: f64, min_per_sec: u32, window: Duration, now: Instant) -> Self {
        let window = window.max(Duration::from_millis(SLOTS));
        Self {
            ratio: ratio.max(0.0),
            min_per_sec: f64::from(min_per_sec),
            window,
            slot_nanos: (u64::try_from(window.as_nanos()).unwrap_or(u64::MAX) / SLOTS).max(1),
            created: now,
            deposits: Default::default(),
            withdrawals: Default::default(),
        }
    }

    /// Counts one request.
    pub(crate) fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        let slot = self.slot(&self.deposits, epoch);
        let stamp = stamp(epoch);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            if cur & EPOCH_MASK == stamp {
                // The slot is current: a plain add. (A writer stalled for a whole window could
                // add to a slot another thread has since reset: one request miscounted.)
                slot.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match slot.compare_exchange_weak(cur, stamp | 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes one retry from the budget if it allows one now; `false` leaves it unchanged.
    ///
    /// Allowed iff `withdrawals + 1 ≤ ratio × deposits + floor`, both counted over the window.
    /// The check and the count are one compare-and-swap on the current slot, so concurrent
    /// retries never overdraw it.
    pub(crate) fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let allowance = self.allowance(now, epoch);
        let slot = self.slot(&self.withdrawals, epoch);
        let stamp = stamp(epoch);
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let in_slot = if cur & EPOCH_MASK == stamp {
                cur & COUNT_MASK
            } else {
                0
            };
            let others = self.sum(&self.withdrawals, epoch, false);
            if (others + in_slot + 1) as f64 > allowance {
                return false;
            }
            let next = stamp | (in_slot + 1);
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Retries the budget would allow now (0 when spent).
    pub(crate) fn remaining(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        let left = self.allowance(now, epoch) - self.sum(&self.withdrawals, epoch, true) as f64;
        // Float-to-int `as` saturates (negative and NaN give 0) and drops the fraction: the
        // floor of what is left, which is the number of whole retries allowed.
        left.floor() as u64
    }

    /// `ratio × deposits + min_per_sec × max(1s, min(window, age))`.
    fn allowance(&self, now: Instant, epoch: u64) -> f64 {
        let age = now.saturating_duration_since(self.created);
        let seconds = age
            .min(self.window)
            .max(Duration::from_secs(1))
            .as_secs_f64();
        self.ratio * self.sum(&self.deposits, epoch, true) as f64 + self.min_per_sec * seconds
    }

    /// The counts of the slots inside the window that ends with `epoch` (with or without the
    /// current slot).
    fn sum(&self, slots: &[AtomicU64; SLOTS_USIZE], epoch: u64, current: bool) -> u64 {
        let now = stamp(epoch);
        slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|v| {
                let age = now.wrapping_sub(v & EPOCH_MASK) >> 32;
                age < SLOTS && (current || age != 0)
            })
            .map(|v| v & COUNT_MASK)
            .sum()
    }

    fn epoch(&self, now: Instant) -> u64 {
        // u64 nanoseconds (584 years) keep the division out of 128-bit arithmetic.
        let since = u64::try_from(now.saturating_duration_since(self.created).as_nanos());
        since.unwrap_or(u64::MAX) / self.slot_nanos
    }

    fn slot<'a>(&self, slots: &'a [AtomicU64; SLOTS_USIZE], epoch: u64) -> &'a AtomicU64 {
        let i = usize::try_from(epoch % SLOTS).unwrap_or(0);
        // `i < SLOTS`, the array's length: the fallback is never taken.
        slots.get(i).unwrap_or(&slots[0])
    }
}

/// The epoch in the high 32 bits of a slot word.
fn stamp(epoch: u64) -> u64 {
    epoch << 32
}

/// Time slots per window.
const SLOTS: u64 = 20;
const SLOTS_USIZE: usize = 20;
const EPOCH_MASK: u64 = !COUNT_MASK;
const COUNT_MASK: u64 = 0xFFFF_FFFF;

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_without_floor() {
        let now = Instant::now();
        let b = Budget::new(0.2, 0, secs(10), now);
        assert_eq!(b.remaining(now), 0);
        assert!(!b.try_withdraw(now));
        for _ in 0..50 {
            b.deposit(now);
        }
        assert_eq!(b.remaining(now), 10);
        for i in 0..10 {
            assert!(b.try_withdraw(now), "retry {i}");
        }
        assert!(!b.try_withdraw(now));
        assert_eq!(b.remaining(now), 0);
        for _ in 0..4 {
            b.deposit(now);
        }
        assert!(!b.try_withdraw(now), "54 × 0.2 = 10.8: no whole retry left");
        b.deposit(now);
        assert!(b.try_withdraw(now), "55 × 0.2 = 11");
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_grows_with_age_up_to_the_window() {
        let start = Instant::now();
        let b = Budget::new(0.0, 10, secs(10), start);
        let drain = |at: Instant| (0..).take_while(|_| b.try_withdraw(at)).count();
        assert_eq!(b.remaining(start), 10);
        assert_eq!(drain(start), 10, "one second's worth at birth");
        assert_eq!(drain(start + secs(3)), 20, "30 in 3 s, 10 already spent");
        assert_eq!(
            drain(start + secs(30)),
            100,
            "capped at the window; the rest slid out"
        );
        assert_eq!(b.remaining(start + secs(30)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let start = Instant::now();
        let b = Budget::new(0.5, 0, secs(10), start);
        for _ in 0..10 {
            b.deposit(start);
        }
        assert_eq!(b.remaining(start), 5);
        assert!(b.try_withdraw(start + secs(1)));
        assert!(b.try_withdraw(start + secs(1)));
        // Still inside the window: 10 deposits, 2 withdrawals.
        assert_eq!(b.remaining(start + ms(9_400)), 3);
        // The first slot has slid out (deposits gone); the withdrawals at 1 s remain.
        assert_eq!(b.remaining(start + ms(10_100)), 0);
        for _ in 0..6 {
            b.deposit(start + ms(10_100));
        }
        assert_eq!(b.remaining(start + ms(10_100)), 1);
        // At 11.1 s the withdrawals at 1 s have slid out as well.
        assert_eq!(b.remaining(start + ms(11_100)), 3);
        // A slot reused a window later starts from zero.
        assert_eq!(b.remaining(start + secs(40)), 0);
        b.deposit(start + secs(40));
        b.deposit(start + secs(40));
        assert_eq!(b.remaining(start + secs(40)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_withdrawals_never_overdraw() {
        let now = Instant::now();
        let b = std::sync::Arc::new(Budget::new(0.0, 100, secs(10), now));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.try_withdraw(now)).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 100);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
