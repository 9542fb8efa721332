//! How long to wait before a retry: exponential backoff with full jitter, or the upstream's
//! `Retry-After` (read by [`crate::http::retry_after`]) when it fits under the cap.
//!
//! Position: used by [`super::Retry`] once a retry is decided. Config: `retry.backoff_base`,
//! `retry.backoff_cap`. Metrics: none.

use std::time::Duration;

use rand::Rng;

/// Full-jitter exponential backoff (`rand(0, min(cap, base · 2^n))` for retry `n`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay before retry `n` (0 for the first retry).
    ///
    /// With `retry_after` (what the upstream asked for): that delay exactly when it is within
    /// the cap; `None` (do not retry) beyond it, since the upstream asked for more patience
    /// than this retry policy has. Without it: a uniformly random delay in
    /// `[0, min(cap, base · 2^n)]`.
    pub(crate) fn delay(&self, n: u32, retry_after: Option<Duration>) -> Option<Duration> {
        match retry_after {
            Some(after) => (after <= self.cap).then_some(after),
            None => Some(jitter(self.ceiling(n))),
        }
    }

    /// `min(cap, base · 2^n)`.
    pub(crate) fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.cap)
    }
}

fn jitter(ceiling: Duration) -> Duration {
    let max = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn full_jitter_stays_within_the_exponential_ceiling() {
        let b = Backoff::new(ms(25), ms(1000));
        let ceilings = [25, 50, 100, 200, 400, 800, 1000, 1000, 1000];
        for (n, &ceiling) in (0u32..).zip(ceilings.iter()) {
            assert_eq!(b.ceiling(n), ms(ceiling), "n = {n}");
            let samples: Vec<Duration> = (0..400).map(|_| b.delay(n, None).unwrap()).collect();
            assert!(samples.iter().all(|d| *d <= ms(ceiling)), "n = {n}");
            // Spread over the whole range, not pinned to an end (fails with odds 2^-400).
            assert!(samples.iter().any(|d| *d > ms(ceiling) / 2), "n = {n}");
            assert!(samples.iter().any(|d| *d < ms(ceiling) / 2), "n = {n}");
        }
        assert_eq!(b.ceiling(200), ms(1000));
        assert_eq!(
            Backoff::new(Duration::ZERO, ms(1000)).delay(3, None),
            Some(ms(0))
        );
    }

    #[test]
    fn retry_after_is_exact_within_the_cap_and_refuses_beyond() {
        let b = Backoff::new(ms(25), ms(1000));
        assert_eq!(b.delay(0, Some(ms(1000))), Some(ms(1000)));
        assert_eq!(b.delay(4, Some(ms(0))), Some(ms(0)));
        assert_eq!(b.delay(0, Some(ms(1001))), None);
    }
}
