//! The observed try latency of one upstream: its median, for deciding whether a retry can
//! still finish before the request's deadline, and its percentiles, for the hedge delay.
//!
//! Position: [`super::Retry`] records every try and reads the median before a retry.
//! Config: none. Metrics: none (exposed through [`super::RetryHandle::median_latency`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Try latencies in two rotating windows of [`WINDOW`] each, as log-scaled histograms of
/// atomics (8 sub-buckets per power of two of microseconds: within 6 % of the true value).
///
/// A sample lands in the window of its epoch; a window reused two epochs later is stamped
/// with the new epoch and cleared by the first writer to see it (a sample recorded concurrently
/// with the clearing may be lost: this is an estimate). The median reads the current window
/// and the one before it, so it covers the last 10 to 20 seconds.
#[derive(Debug)]
pub(crate) struct Latency {
    created: Instant,
    windows: [Window; 2],
}

#[derive(Debug)]
struct Window {
    /// The epoch this window holds, plus one (0: never used).
    epoch: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Latency {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            created: now,
            windows: [Window::new(), Window::new()],
        }
    }

    /// Records one try that took `took`, finished at `now`.
    pub(crate) fn record(&self, now: Instant, took: Duration) {
        let epoch = self.epoch(now);
        let window = self.window(epoch);
        let stamp = epoch + 1;
        let seen = window.epoch.load(Ordering::Acquire);
        if seen < stamp
            && window
                .epoch
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for b in &window.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = window.buckets.get(bucket(micros)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The median of the tries recorded in the last 10 to 20 seconds; `None` without any.
    pub(crate) fn median(&self, now: Instant) -> Option<Duration> {
        self.quantile(now, 0.5).map(|(d, _)| d)
    }

    /// The `q` quantile (0 < q ≤ 1) of the tries recorded in the last 10 to 20 seconds, with
    /// how many tries it is drawn from; `None` without any.
    pub(crate) fn quantile(&self, now: Instant, q: f64) -> Option<(Duration, u64)> {
        let stamp = self.epoch(now) + 1;
        let live: Vec<&Window> = self
            .windows
            .iter()
            .filter(|w| {
                let e = w.epoch.load(Ordering::Acquire);
                e == stamp || e + 1 == stamp
            })
            .collect();
        let count = |i: usize| -> u64 {
            live.iter()
                .map(|w| w.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed)))
                .sum()
        };
        let total: u64 = (0..BUCKETS).map(count).sum();
        if total == 0 {
            return None;
        }
        // The smallest sample with at least q of all at or below it (q = 0.5: the median).
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += count(i);
            if seen >= rank {
                return Some((Duration::from_micros(midpoint(i)), total));
            }
        }
        None
    }

    fn epoch(&self, now: Instant) -> u64 {
        // u64 nanoseconds (584 years) keep the division out of 128-bit arithmetic.
        let since = u64::try_from(now.saturating_duration_since(self.created).as_nanos());
        let window = u64::try_from(WINDOW.as_nanos()).unwrap_or(u64::MAX);
        (since.unwrap_or(u64::MAX) / window).min(u64::MAX - 1)
    }

    fn window(&self, epoch: u64) -> &Window {
        let [even, odd] = &self.windows;
        if epoch.is_multiple_of(2) { even } else { odd }
    }
}

impl Window {
    fn new() -> Self {
        Self {
            epoch: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of a value in microseconds: exact below [`SUB`], then [`SUB`] buckets per power
/// of two; values beyond the last bucket share it.
fn bucket(micros: u64) -> usize {
    let index = if micros < SUB {
        micros
    } else {
        let e = u64::from(micros.ilog2());
        SUB * (e - SUB_BITS + 1) + ((micros >> (e - SUB_BITS)) & (SUB - 1))
    };
    usize::try_from(index)
        .unwrap_or(usize::MAX)
        .min(BUCKETS - 1)
}

/// The middle of bucket `i`, in microseconds (the inverse of [`bucket`]).
fn midpoint(i: usize) -> u64 {
    let i = u64::try_from(i).unwrap_or(0);
    if i < SUB {
        return i;
    }
    let (k, m) = (i / SUB, i % SUB);
    let lower = (SUB + m) << (k - 1);
    lower + (1 << (k - 1)) / 2
}

/// Length of each of the two windows.
const WINDOW: Duration = Duration::from_secs(10);
const SUB_BITS: u64 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for 2^36 µs (19 hours).
const BUCKETS: usize = 272;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let b = bucket(v);
            assert!(b == last || b == last + 1, "{v}: {last} → {b}");
            last = b;
            let mid = midpoint(b);
            assert!(
                mid.abs_diff(v) as f64 <= (v as f64 * 0.0625).max(0.0) + 0.5,
                "{v} ~ {mid}"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket((1 << 36) - 1), BUCKETS - 1);
        assert_eq!(bucket(1 << 35), BUCKETS - SUB as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn median_of_recent_tries() {
        let start = Instant::now();
        let l = Latency::new(start);
        assert_eq!(l.median(start), None);
        for ms in [10, 100, 100, 100, 5_000] {
            l.record(start, Duration::from_millis(ms));
        }
        let m = l.median(start).unwrap();
        assert!(
            m.abs_diff(Duration::from_millis(100)) < Duration::from_millis(7),
            "{m:?}"
        );
        // The previous window still counts in the next one...
        let later = start + Duration::from_secs(12);
        l.record(later, Duration::from_millis(1));
        let m = l.median(later).unwrap();
        assert!(
            m.abs_diff(Duration::from_millis(100)) < Duration::from_millis(7),
            "{m:?}"
        );
        // ...and no longer once two windows have passed; the reused window starts empty.
        let much_later = start + Duration::from_secs(21);
        let m = l.median(much_later).unwrap();
        assert!(
            m.abs_diff(Duration::from_millis(1)) < Duration::from_micros(63),
            "{m:?}"
        );
        l.record(much_later, Duration::from_secs(2));
        l.record(much_later, Duration::from_secs(2));
        let m = l.median(much_later).unwrap();
        assert!(
            m.abs_diff(Duration::from_secs(2)) < Duration::from_millis(130),
            "{m:?}"
        );
        assert_eq!(l.median(start + Duration::from_secs(45)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn quantiles_of_recent_tries() {
        let now = Instant::now();
        let l = Latency::new(now);
        // 95 fast tries and 5 slow ones, as a long-tailed upstream.
        for i in 0..100 {
            let ms = if i % 20 == 0 { 200 } else { 2 };
            l.record(now, Duration::from_millis(ms));
        }
        let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.07;
        let (p95, n) = l.quantile(now, 0.95).unwrap();
        assert_eq!(n, 100);
        assert!(near(p95, 2.0), "{p95:?}");
        let (p96, _) = l.quantile(now, 0.96).unwrap();
        assert!(near(p96, 200.0), "{p96:?}");
        let (p100, _) = l.quantile(now, 1.0).unwrap();
        assert!(near(p100, 200.0), "{p100:?}");
        assert!(near(l.median(now).unwrap(), 2.0));
    }
}
