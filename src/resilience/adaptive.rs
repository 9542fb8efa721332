//! The adaptive concurrency limit: a gradient limiter that follows an upstream's latency.
//!
//! Position: owned by [`crate::resilience::shed`], which feeds it round-trip times and enforces it.
//! Config: `upstreams.<name>.shed.{adaptive, min_limit, max_in_flight}`. Metrics: none of its own.
//!
//! The idea is Netflix concurrency-limits' Gradient2 (also behind Envoy's adaptive concurrency):
//! while the upstream answers as fast as it usually does, probe upward; when its latency rises
//! above its usual latency, its queues are filling, so cut the limit in proportion.
//!
//! - Samples are aggregated into windows of at least [`SAMPLE_INTERVAL`] and [`MIN_SAMPLES`]
//!   samples; the limit changes at most once per window (a quiet upstream keeps its limit).
//! - The short-run RTT is the window's mean. The long-run RTT (the baseline) is the mean of the
//!   first [`WARMUP_WINDOWS`] windows, then an exponential average over about
//!   [`LONG_WINDOWS`] windows; when the baseline is more than twice the short-run RTT it decays
//!   by 5% per window, so it follows a faster new normal quickly.
//! - `gradient = clamp(TOLERANCE × long / short, 0.5, 1.0)`,
//!   `target = limit × gradient + sqrt(limit)` (the queue allowance that lets it probe upward),
//!   `limit ← limit × (1 − SMOOTHING) + target × SMOOTHING`, clamped to `[min, max]`.
//! - The limit does not grow while the upstream is app-limited (the most in flight seen in the
//!   window is under half the limit): an idle upstream says nothing about its capacity.
//!
//! The limit starts at `max`, so turning `adaptive` on never sheds more than the fixed limit
//! would until latency says so. The type is pure: time comes in as an argument.

use std::time::Duration;

use tokio::time::Instant;

/// A gradient concurrency limiter between a lower and an upper bound. See the module docs.
///
/// Not synchronised: the owner serialises calls (shed uses a try-lock and skips a sample when
/// another thread is updating).
#[derive(Clone, Debug)]
pub(crate) struct Gradient {
    min: f64,
    max: f64,
    /// The limit as a real number; [`Gradient::limit`] rounds it.
    estimate: f64,
    /// The baseline RTT in seconds (0 before the first window closes).
    long_rtt: f64,
    /// Windows closed so far (saturating), for the warm-up mean.
    windows: u32,
    window: Option<Window>,
}

/// The samples of the window being filled.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    sum: Duration,
    count: u32,
    peak_in_flight: u32,
}

impl Gradient {
    /// A limiter between `min_limit` and `max_limit`, starting at `max_limit`. `min_limit` is
    /// raised to 1 and lowered to `max_limit` where needed, so the bounds are always sane.
    pub(crate) fn new(min_limit: u32, max_limit: u32) -> Self {
        let max = f64::from(max_limit.max(1));
        let min = f64::from(min_limit.max(1)).min(max);
        Self {
            min,
            max,
            estimate: max,
            long_rtt: 0.0,
            windows: 0,
            window: None,
        }
    }

    /// The limit in force: between the bounds given to [`Gradient::new`].
    pub(crate) fn limit(&self) -> u32 {
        // The estimate is clamped to [min, max], both exact u32 values, so rounding it and
        // converting is exact; the clamp here only guards against a NaN (which `as` maps to 0).
        let v = self.estimate.round().clamp(self.min, self.max);
        v as u32
    }

    /// Records one round trip that took `rtt` while `in_flight` requests (this one included)
    /// were admitted, at time `now`; returns the limit in force afterwards. The limit changes
    /// only when this sample closes a window.
    pub(crate) fn on_sample(&mut self, rtt: Duration, in_flight: u32, now: Instant) -> u32 {
        let w = self.window.get_or_insert(Window {
            start: now,
            sum: Duration::ZERO,
            count: 0,
            peak_in_flight: 0,
        });
        w.sum = w.sum.saturating_add(rtt);
        w.count = w.count.saturating_add(1);
        w.peak_in_flight = w.peak_in_flight.max(in_flight);
        if w.count >= MIN_SAMPLES && now.saturating_duration_since(w.start) >= SAMPLE_INTERVAL {
            let closed = *w;
            self.window = None;
            let short = (closed.sum / closed.count).as_secs_f64();
            self.update(short, closed.peak_in_flight);
        }
        self.limit()
    }

    fn update(&mut self, short: f64, peak_in_flight: u32) {
        // A zero RTT (an instant leaf, a paused clock) would divide by zero.
        let short = short.max(MIN_RTT_SECS);
        self.windows = self.windows.saturating_add(1);
        let mut long = if self.windows <= WARMUP_WINDOWS {
            self.long_rtt + (short - self.long_rtt) / f64::from(self.windows)
        } else {
            self.long_rtt + (short - self.long_rtt) * (2.0 / (LONG_WINDOWS + 1.0))
        };
        if long / short > 2.0 {
            long *= 0.95;
        }
        self.long_rtt = long;

        let gradient = (TOLERANCE * long / short).clamp(0.5, 1.0);
        let app_limited = f64::from(peak_in_flight) < self.estimate / 2.0;
        if gradient >= 1.0 && app_limited {
            return;
        }
        let target = self.estimate * gradient + self.estimate.sqrt();
        let next = self.estimate * (1.0 - SMOOTHING) + target * SMOOTHING;
        self.estimate = next.clamp(self.min, self.max);
    }
}

/// Shortest time a window lasts.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Fewest samples a window holds.
pub(crate) const MIN_SAMPLES: u32 = 10;
/// Windows whose plain mean seeds the baseline.
pub(crate) const WARMUP_WINDOWS: u32 = 10;
/// Span of the baseline's exponential average, in windows (about a minute at full rate).
pub(crate) const LONG_WINDOWS: f64 = 600.0;
/// How much slower than the baseline the upstream may answer before the limit falls.
pub(crate) const TOLERANCE: f64 = 1.5;
/// Weight of a new target in the limit (the rest is the old limit).
pub(crate) const SMOOTHING: f64 = 0.2;
/// Floor of the short-run RTT, in seconds.
const MIN_RTT_SECS: f64 = 1e-6;

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `windows` full windows of samples of `rtt` with `in_flight` admitted; returns the
    /// limit after each window.
    fn feed(
        g: &mut Gradient,
        now: &mut Instant,
        rtt_ms: u64,
        in_flight: Option<u32>,
        windows: u32,
    ) -> Vec<u32> {
        // The window's first and last samples are at least SAMPLE_INTERVAL apart, so each
        // round of MIN_SAMPLES fills exactly one window.
        let step = SAMPLE_INTERVAL / (MIN_SAMPLES - 1) + Duration::from_millis(1);
        (0..windows)
            .map(|_| {
                let mut limit = g.limit();
                for _ in 0..MIN_SAMPLES {
                    *now += step;
                    let inf = in_flight.unwrap_or(limit);
                    limit = g.on_sample(Duration::from_millis(rtt_ms), inf, *now);
                }
                limit
            })
            .collect()
    }

    #[test]
    fn starts_at_max_and_sane_bounds() {
        assert_eq!(Gradient::new(8, 1024).limit(), 1024);
        let g = Gradient::new(50, 10);
        assert_eq!((g.min, g.max, g.limit()), (10.0, 10.0, 10));
        let g = Gradient::new(0, 0);
        assert_eq!(g.limit(), 1);
    }

    #[test]
    fn changes_at_most_once_per_window() {
        let mut g = Gradient::new(1, 100);
        let mut now = Instant::now();
        feed(&mut g, &mut now, 10, None, 3);
        // Many slow samples within one interval: no change until the interval is over.
        for _ in 0..100 {
            now += Duration::from_micros(100);
            assert_eq!(g.on_sample(Duration::from_secs(1), 100, now), 100);
        }
        now += SAMPLE_INTERVAL;
        assert!(g.on_sample(Duration::from_secs(1), 100, now) < 100);
    }

    #[test]
    fn rising_latency_lowers_the_limit_to_min_and_recovery_raises_it_to_max() {
        let mut g = Gradient::new(8, 200);
        let mut now = Instant::now();
        assert!(
            feed(&mut g, &mut now, 10, None, 20)
                .iter()
                .all(|&l| l == 200)
        );

        // Ten times slower: the limit falls every window until it reaches the floor.
        let falling = feed(&mut g, &mut now, 100, None, 60);
        assert!(falling.windows(2).all(|w| w[1] <= w[0]), "{falling:?}");
        assert!(falling[0] < 200, "{falling:?}");
        assert_eq!(falling.last(), Some(&8), "{falling:?}");

        // Back to normal: the limit climbs back to the ceiling.
        let rising = feed(&mut g, &mut now, 10, None, 150);
        assert!(rising.windows(2).all(|w| w[1] >= w[0]), "{rising:?}");
        assert!(rising[0] > 8, "{rising:?}");
        assert_eq!(rising.last(), Some(&200), "{rising:?}");
    }

    #[test]
    fn tolerates_latency_within_the_tolerance() {
        let mut g = Gradient::new(8, 200);
        let mut now = Instant::now();
        feed(&mut g, &mut now, 10, None, 20);
        // 40% slower is inside the 1.5 tolerance: the limit stays at the ceiling.
        assert!(
            feed(&mut g, &mut now, 14, None, 30)
                .iter()
                .all(|&l| l == 200)
        );
    }

    #[test]
    fn does_not_grow_when_app_limited() {
        let mut g = Gradient::new(8, 200);
        let mut now = Instant::now();
        feed(&mut g, &mut now, 10, None, 10);
        let low = *feed(&mut g, &mut now, 100, None, 25).last().unwrap();
        assert!(low < 100, "{low}");
        // Fast again, but only a handful in flight: no evidence for more capacity.
        let idle = feed(&mut g, &mut now, 10, Some(2), 50);
        assert!(idle.iter().all(|&l| l == low), "{idle:?}");
    }
}
