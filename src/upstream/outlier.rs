//! Passive outlier detection: an endpoint whose tries end in `consecutive_failures` gateway
//! errors in a row (connect failure, reset, TLS failure, 502, 503, 504) is ejected for
//! `base_ejection` × the number of times it has been ejected (at most 10 ×), never more than
//! `max_ejection_percent` of the upstream's endpoints at once (at least one). An endpoint over
//! the threshold while the cap is reached waits, still counted, and is ejected once room
//! frees. `dry_run` counts would-be ejections in `weir_dry_run_rejections_total{policy="outlier"}`
//! and ejects nothing.
//!
//! Position: decided by the endpoint set's upkeep task ([`crate::upstream::endpoints`]),
//! woken by the request path when an endpoint's counter reaches the threshold; the request
//! path only counts. Config: `upstreams.<name>.outlier`. Metrics:
//! `weir_endpoint_ejections_total{upstream}`.

use std::sync::Arc;
use std::time::Duration;

use crate::resilience::Mode;
use crate::upstream::endpoints::{Endpoint, SetInner, micros};

/// Passive outlier ejection of an upstream's endpoints (`upstreams.NAME.outlier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Consecutive gateway errors that eject an endpoint; default 5.
    pub consecutive_failures: u32,
    /// Ejection time, multiplied by the times the endpoint was ejected; default 30s.
    pub base_ejection: Duration,
    /// Most endpoints of the upstream ejected at once, in percent (0..=100); default 50.
    pub max_ejection_percent: u32,
    /// Enforce, count only (dry run), or off; default enforce.
    pub mode: Mode,
    /// Time over which a returning endpoint's traffic share grows back; default 10s.
    pub ramp: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
            mode: Mode::Enforce,
            ramp: Duration::from_secs(10),
        }
    }
}

/// The longest ejection, in multiples of `base_ejection` (Envoy's default max is 10 × 30 s).
const MAX_MULTIPLIER: u32 = 10;

/// Ejects the endpoints over the failure threshold, within the cap, as of `now` (µs).
pub(crate) fn eject(set: &SetInner, endpoints: &[Arc<Endpoint>], now: u64) {
    let s = &set.outlier;
    if s.mode == Mode::Off || s.consecutive_failures == 0 {
        return;
    }
    let cap = max_ejected(endpoints.len(), s.max_ejection_percent);
    let mut ejected = endpoints.iter().filter(|e| e.ejected(now)).count();
    for e in endpoints {
        if e.ejected(now) || e.failures() < s.consecutive_failures {
            continue;
        }
        if s.mode == Mode::DryRun {
            set.dry_run.increment(1);
            e.reset_failures();
            tracing::info!(upstream = %set.name, endpoint = %e.addr(), "outlier dry run: would eject");
            continue;
        }
        if ejected >= cap {
            continue;
        }
        let d = ejection_time(s, e.ejections());
        e.eject(now.saturating_add(micros(d)));
        set.ejections.increment(1);
        ejected += 1;
        tracing::warn!(
            upstream = %set.name,
            endpoint = %e.addr(),
            for_seconds = d.as_secs_f64(),
            "endpoint ejected after consecutive failures"
        );
    }
}

/// How long the next ejection of an endpoint ejected `times` times before lasts.
fn ejection_time(s: &Settings, times: u32) -> std::time::Duration {
    s.base_ejection
        .saturating_mul(times.saturating_add(1).min(MAX_MULTIPLIER))
}

/// How many of `n` endpoints may be ejected at once: `percent` of them, at least one.
fn max_ejected(n: usize, percent: u32) -> usize {
    if percent == 0 || n == 0 {
        return 0;
    }
    let p = usize::try_from(percent.min(100)).unwrap_or(100);
    (n.saturating_mul(p) / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_cap_is_a_share_of_the_endpoints_and_at_least_one() {
        assert_eq!(max_ejected(10, 50), 5);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(1, 50), 1);
        assert_eq!(max_ejected(4, 100), 4);
        assert_eq!(max_ejected(4, 0), 0);
        assert_eq!(max_ejected(0, 50), 0);
    }

    #[test]
    fn ejections_grow_with_each_one_up_to_ten_times_the_base() {
        let s = Settings::default();
        assert_eq!(ejection_time(&s, 0), Duration::from_secs(30));
        assert_eq!(ejection_time(&s, 1), Duration::from_secs(60));
        assert_eq!(ejection_time(&s, 30), Duration::from_secs(300));
    }
}
