//! Load shedding of one upstream: a concurrency limit, a bounded priority queue, refusal beyond.
//!
//! Position: outermost layer of every upstream stack (shed → breaker → retry → timeout →
//! forward). Config: `upstreams.<name>.shed.*`. Metrics: `weir_shed_total`, `weir_in_flight`,
//! `weir_concurrency_limit`, `weir_dry_run_rejections_total{policy="shed"}`.
//!
//! # Admission (`mode = "enforce"`)
//!
//! - Each priority has its own share of slots around the limit L, with r = max(1, L / 10):
//!   `default` takes a slot while fewer than L are in flight, `critical` while fewer than L + r
//!   (a reserve above the limit), `sheddable` while fewer than L − r (a margin below it, but
//!   never less than 1). So `max_in_flight` is the limit of `default` traffic.
//! - A request takes a slot at once when its share has room and no one is queued (arrivals do
//!   not jump the queue). This path is one compare-exchange, no lock, no clock read.
//! - Otherwise it waits in the queue (`queue` places, 0 = no queue), then is refused. A freed
//!   slot goes to the highest-priority waiter (`critical`, then `default`, then `sheddable`)
//!   when that waiter's share has room: a `sheddable` waiter gets none while L − r are in
//!   flight. Within one priority the order depends on the queue's state:
//!   - normally first come, first served, and a waiter may wait `queue_timeout`;
//!   - **overloaded**, when the queue has held waiters without draining for
//!     `OVERLOAD_INTERVAL` (100 ms), newest first (adaptive LIFO), and a waiter may wait only
//!     `OVERLOAD_WAIT` (5 ms, never more than `queue_timeout`). Each arrival then refuses the
//!     waiters already queued that long (those queued before, with the full wait, included),
//!     and the oldest of its priority whose turn would come after `OVERLOAD_WAIT`. So under
//!     sustained overload what is admitted waits at most about 5 ms, and what is refused is
//!     refused at once or within 5 ms. The queue has drained when it has stayed empty for
//!     `DRAIN_GAP` (5 ms; a shorter gap, such as a burst of calls ending together, does not
//!     count); then it is first come, first served with `queue_timeout` again, for waiters that
//!     arrive from then on. (CoDel with adaptive LIFO, as in Maurer, "Fail at Scale", 2015.)
//! - An arrival that would likely outwait the wait allowed now is refused at once instead of
//!   queued. Slots free at about L per service time, where the service time is an average of
//!   the time a slot is held (admission to the end of the response body, or to the head when
//!   the body came whole with it), taken on admissions that filled their share or came through
//!   the queue (no clock is read while there is room).
//!   A waiter with p others to be served before it (higher priority, or the same and earlier;
//!   when overloaded, only higher priority) expects (p + 1) × service time / L; until a first
//!   slot has been timed, arrivals queue.
//! - With the queue full, an arrival evicts the newest waiter of a strictly lower priority (that
//!   waiter is refused) or else is itself refused at once.
//! - A refusal at once is a ready `Err(ProxyError::Overloaded)` (503, `Retry-After: 1`) that
//!   took no queue place and no timer.
//! - A slot is held until the response body ends (read to the end, or failed) or is dropped, or
//!   the inner future fails or is dropped: a streaming response counts in flight. A response
//!   whose whole body is already in hand (empty, or all of it read with the head: the upstream
//!   has no work left) releases the slot with the head, so a slow client reading a small
//!   response does not hold an upstream slot; any other gets its body wrapped (one
//!   allocation).
//!
//! The priority is [`RequestContext::priority`](crate::http::context::RequestContext::priority)
//! from the request's extensions (absent: `default`).
//!
//! `weir_shed_total{upstream,reason}` counts refusals; `reason` is one of:
//! - `queue_full`: no slot, and no queue place (the queue is full of waiters of the same or
//!   higher priority, or `queue = 0`);
//! - `queue_wait`: no slot, and the expected wait for one exceeds the wait allowed now (or,
//!   overloaded, a waiter pushed back so far by newer arrivals that it does);
//! - `queue_timeout`: waited the allowed wait without getting a slot;
//! - `evicted`: a waiter pushed out of the full queue by a higher-priority arrival.
//!
//! # Limit
//!
//! `max_in_flight` is the limit L (of `default` traffic, see above). With `adaptive = true` it
//! is the ceiling of a [`Gradient`](crate::resilience::adaptive::Gradient) limit (floor
//! `min_limit`, start `max_in_flight`), and the shares follow the limit in force. Its samples are
//! the time from admission to the inner future resolving (the response head, not the body's
//! end), for every resolved call except the errors that say nothing about the upstream's latency
//! (those [`Outcome::of_error`](crate::resilience::Outcome::of_error) calls `Ignored`, such as
//! `circuit-open` from the breaker below); a dropped (cancelled) call gives no sample.
//! `weir_concurrency_limit` is the limit in force; `weir_in_flight` counts admitted
//! calls whose response has not ended (up to L + r, with the `critical` reserve).
//!
//! # Modes
//!
//! - `dry_run`: every request is admitted at once (no queue, no wait), and
//!   `weir_dry_run_rejections_total{policy="shed"}` counts those enforcing would have refused.
//!   An arrival that finds at least its share in flight would have queued behind p = (in flight
//!   − share) others. It counts at once when the queue would have been full (p ≥ `queue`), or
//!   when its expected wait (p + 1) × service time / L exceeds the wait allowed now; with no
//!   service time known yet, it counts when its slot is released, if it was held longer than
//!   that wait (the calls it would have waited for started no earlier, and are taken to last as
//!   long). The queue state follows the same rules, with "queued" read as "beyond the share";
//!   it empties when an arrival finds room in its share or a release leaves fewer than L in
//!   flight. Evictions and the order of service are not simulated. The adaptive limit still
//!   follows latency.
//! - `off`: no limit and no queue; `weir_in_flight` is still kept, and the limit reads 0 (none).
//!
//! # Files
//!
//! One mechanism each: `service.rs` the layer, the service and the handle; `future.rs` their
//! future; `admit.rs` the slot counter, the shares and the hand-over of freed slots; `permit.rs`
//! the slot an admitted request holds until its response ends; `queue.rs` the waiters;
//! `estimate.rs` the service time and the overload (CoDel) detection.

mod admit;
mod estimate;
mod future;
mod permit;
mod queue;
mod service;
#[cfg(test)]
mod testing;

use std::time::Duration;

#[cfg(test)]
use self::service::Shed;
pub use self::service::ShedLayer;
pub(crate) use self::service::{ShedHandle, ShedStatus};
use crate::resilience::Mode;

/// Load shedding of an upstream (`upstreams.NAME.shed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Enforce, count only (dry run), or off; default enforce.
    pub mode: Mode,
    /// Most `default` requests in flight (the upper limit when adaptive); `critical` requests
    /// may use a reserve of 10 % above it, `sheddable` ones stop 10 % below. Default 1024.
    pub max_in_flight: u32,
    /// Requests that may wait for a slot; 0 = no queue. Default 256.
    pub queue: u32,
    /// Longest wait in the queue; default 50ms.
    pub queue_timeout: Duration,
    /// Whether the limit adapts to latency between `min_limit` and `max_in_flight`; default false.
    pub adaptive: bool,
    /// Lower bound of the adaptive limit; default 8.
    pub min_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            max_in_flight: 1024,
            queue: 256,
            queue_timeout: Duration::from_millis(50),
            adaptive: false,
            min_limit: 8,
        }
    }
}
