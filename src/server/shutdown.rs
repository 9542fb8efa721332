//! Drain: which requests are in flight when weir stops, and how many of them the drain window
//! let finish (`completed`) or had to cut (`cut`).
//!
//! Position: shared by every listener's [`crate::server::service::ProxyService`] (begin and end
//! of each request) and by [`crate::app::Running::drain`], which runs the drain. Config:
//! `[drain]`. Metrics: `weir_drain_requests_total{result}`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::Counter;

use crate::metrics::{DRAIN_REQUESTS_TOTAL, Metrics};

/// Request accounting for the drain. One per weir; cheap to share.
#[derive(Debug)]
pub(crate) struct Drain {
    draining: AtomicBool,
    in_flight: AtomicU64,
    completed: AtomicU64,
    completed_total: Counter,
    cut_total: Counter,
}

impl Drain {
    /// Accounting for a weir whose metrics are `metrics`.
    pub(crate) fn new(metrics: &Metrics) -> Self {
        let result =
            |r: &'static str| metrics.counter(DRAIN_REQUESTS_TOTAL, &[("result", r.into())]);
        Self {
            draining: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            completed_total: result("completed"),
            cut_total: result("cut"),
        }
    }

    /// A request started.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request ended (answered, or dropped with its connection). During a drain it counts
    /// as completed.
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.draining.load(Ordering::Acquire) {
            self.completed.fetch_add(1, Ordering::Relaxed);
            self.completed_total.increment(1);
        }
    }

    /// The drain began: from now on, HTTP/1 responses carry `Connection: close` and ended
    /// requests count as completed.
    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether a drain is under way.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests that ended since the drain began.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Counts the requests still in flight as cut, and returns how many.
    pub(crate) fn cut(&self) -> u64 {
        let cut = self.in_flight();
        self.cut_total.increment(cut);
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_ending_during_a_drain_count_and_the_rest_are_cut() {
        let m = Metrics::new().unwrap();
        let d = Drain::new(&m);
        d.begin();
        d.end();
        assert_eq!(d.completed(), 0, "before the drain nothing counts");
        for _ in 0..3 {
            d.begin();
        }
        d.start();
        assert!(d.is_draining());
        d.end();
        assert_eq!((d.completed(), d.in_flight()), (1, 2));
        assert_eq!(d.cut(), 2);
        let text = m.render();
        assert!(
            text.contains("weir_drain_requests_total{result=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weir_drain_requests_total{result=\"cut\"} 2"),
            "{text}"
        );
    }
}
