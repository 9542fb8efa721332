//! The endpoints of one upstream: ONE [`ArcSwap`] snapshot of the members, and per endpoint a
//! handful of atomics (requests in flight, peak-EWMA latency, pushback, outlier counter,
//! active-check verdict, ejection, recovery ramp).
//!
//! Who writes what: the request path ([`crate::upstream::forward`]) only *reads* the snapshot
//! and updates an endpoint's load atomics and failure counter when a try ends. The background
//! tasks write: the upkeep task ([`EndpointSet::start`]; ejection decisions in
//! [`crate::upstream::outlier`]) ejects and restores endpoints and republishes which ones serve;
//! [`crate::upstream::health`] writes active-check verdicts; [`crate::upstream::discovery`]
//! replaces the members ([`EndpointSet::update`]), keeping the [`Endpoint`] (connections,
//! EWMA, ejections) of every address that remains. Each writer wakes the upkeep task, which is
//! the only one to publish a snapshot with a new serving list.
//!
//! An endpoint *serves* when it is neither ejected nor failing its active checks. When none
//! serves, every member serves (panic mode, as Envoy does; `weir_panic_mode` = 1). An endpoint
//! coming back (end of an ejection, checks passing again, or a new member joining a set that
//! already serves) ramps: its share grows linearly over `outlier.ramp`, from 10 %.
//!
//! Config: `upstreams.<name>.endpoints`, `outlier`, `health`. Metrics:
//! `weir_endpoint_healthy{upstream,endpoint}`, `weir_endpoint_ejections_total{upstream}`,
//! `weir_panic_mode{upstream}`, `weir_dry_run_rejections_total{policy="outlier"}`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::grpc::{Code, CodeSet};
use crate::metrics::{
    DRY_RUN_REJECTIONS_TOTAL, ENDPOINT_EJECTIONS_TOTAL, ENDPOINT_HEALTHY, Metrics, PANIC_MODE,
};
use crate::resilience::Mode;
use crate::upstream::client::{EndpointConn, Transport};
use crate::upstream::hash::Ring;
use crate::upstream::outlier;
use crate::upstream::outlier::Settings as OutlierSettings;

/// The latency an endpoint is assumed to have before its first response (Linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the EWMA forgets: the weight of a sample `dt` old is `exp(-dt / DECAY)`.
const DECAY: Duration = Duration::from_secs(10);
/// The share a ramping endpoint starts with.
pub(crate) const RAMP_FLOOR: f64 = 0.1;
/// Pushback from an upstream's `Retry-After` is honoured for at most this long.
const MAX_PUSHBACK: Duration = Duration::from_secs(300);
/// "Not set" for the time atomics.
const NEVER: u64 = u64::MAX;

// === impl Endpoint ===

/// One member of an upstream: how to reach it, and its load and health atomics.
pub struct Endpoint {
    conn: EndpointConn,
    /// The set's clock origin: every time atomic holds microseconds since it.
    epoch: Instant,
    in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    /// Until when a `Retry-After` from this endpoint penalizes it in p2c.
    penalty_until: AtomicU64,
    /// Consecutive gateway failures (outlier detection), and the count that ejects.
    failures: AtomicU32,
    eject_after: u32,
    /// The upkeep task's bell.
    signal: Arc<Notify>,
    /// Active checks say it is down.
    check_failing: AtomicBool,
    /// Until when it is ejected (`0` when it is not).
    ejected_until: AtomicU64,
    /// Times ejected: the ejection lasts `base_ejection` × this.
    ejections: AtomicU32,
    /// When it came back and started ramping ([`NEVER`] when not ramping).
    ramp_from: AtomicU64,
    /// `weir_endpoint_healthy`.
    healthy: Gauge,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", self.addr())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// What an endpoint set is built for, besides its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetShape {
    /// Build a consistent-hash ring over the members (`balance = "hash"`).
    pub hashed: bool,
    /// Active health checks will run on it (shown on the status page).
    pub checked: bool,
}

/// How a try on an endpoint ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A response that is not a gateway error.
    Success,
    /// A gateway error: connect failure, reset, TLS failure, or a 502, 503 or 504.
    GatewayFailure,
    /// Not judged (the try was abandoned before it ended).
    Unjudged,
    /// Judged later: a gRPC call whose status comes in the trailers. Counts as `Unjudged`
    /// when the try ends; the forwarding leaf judges it at the trailers.
    Later,
}

impl Verdict {
    /// A gRPC call that ended with `code`: a gateway failure when `failures` holds it.
    pub(crate) fn of_grpc(code: Code, failures: &CodeSet) -> Self {
        if failures.contains(code) {
            Self::GatewayFailure
        } else {
            Self::Success
        }
    }
}

impl Endpoint {
    /// The endpoint's address.
    pub fn addr(&self) -> &Authority {
        self.conn.addr()
    }

    /// How requests reach it.
    pub fn conn(&self) -> &EndpointConn {
        &self.conn
    }

    /// Microseconds since the set's epoch.
    pub(crate) fn now(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    /// Requests in flight on it.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A try starts on this endpoint.
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A try that began on this endpoint ended after `rtt`, with `verdict`; `pushback` is the
    /// upstream's `Retry-After` on a 429 or 503.
    pub(crate) fn end(&self, rtt: Duration, verdict: Verdict, pushback: Option<Duration>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.now();
        self.observe(rtt, now);
        if let Some(d) = pushback {
            let until = now.saturating_add(micros(d.min(MAX_PUSHBACK)));
            self.penalty_until.fetch_max(until, Ordering::Relaxed);
        }
        self.judge(verdict);
    }

    /// Counts `verdict` for outlier detection: what [`Endpoint::end`] does with its verdict,
    /// on its own for a gRPC call whose status came after its head, in the trailers.
    pub(crate) fn judge(&self, verdict: Verdict) {
        match verdict {
            Verdict::Success => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
            }
            Verdict::GatewayFailure => {
                let n = self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if self.eject_after != 0 && n == self.eject_after {
                    self.signal.notify_one();
                }
            }
            Verdict::Unjudged | Verdict::Later => {}
        }
    }

    /// Folds one latency sample into the peak EWMA: a sample above the estimate replaces it;
    /// one below pulls it down by the weight its age gives.
    fn observe(&self, rtt: Duration, now: u64) {
        let rtt = nanos(rtt);
        let prev = self.ewma_ns.load(Ordering::Relaxed);
        let at = self.ewma_at.swap(now, Ordering::Relaxed);
        let next = if rtt >= prev {
            rtt
        } else {
            let w = decay_weight(now.saturating_sub(at));
            to_u64(prev as f64 * w + rtt as f64 * (1.0 - w))
        };
        self.ewma_ns.store(next, Ordering::Relaxed);
    }

    /// The peak-EWMA latency as of `now`, in nanoseconds; it decays towards zero while no
    /// response arrives, so an idle endpoint is tried again.
    pub(crate) fn ewma_at(&self, now: u64) -> f64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed) as f64;
        let at = self.ewma_at.load(Ordering::Relaxed);
        ewma * decay_weight(now.saturating_sub(at))
    }

    /// Whether a `Retry-After` still penalizes it at `now`.
    pub(crate) fn penalized(&self, now: u64) -> bool {
        self.penalty_until.load(Ordering::Relaxed) > now
    }

    /// Its share while ramping back, in `RAMP_FLOOR..=1`; 1 when not ramping.
    pub(crate) fn ramp_weight(&self, now: u64, ramp: u64) -> f64 {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == NEVER || ramp == 0 || now >= from.saturating_add(ramp) {
            return 1.0;
        }
        let progress = now.saturating_sub(from) as f64 / ramp as f64;
        RAMP_FLOOR + (1.0 - RAMP_FLOOR) * progress
    }

    /// Whether it may serve at `now`: not ejected and not failing its checks.
    pub(crate) fn usable(&self, now: u64) -> bool {
        !self.check_failing.load(Ordering::Relaxed) && !self.ejected(now)
    }

    pub(crate) fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Active checks' verdict (written by the health task); true when it changed.
    pub(crate) fn set_check_failing(&self, failing: bool) -> bool {
        self.check_failing.swap(failing, Ordering::Relaxed) != failing
    }

    pub(crate) fn check_failing(&self) -> bool {
        self.check_failing.load(Ordering::Relaxed)
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(crate) fn reset_failures(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Ejects it until `until`, counting the ejection.
    pub(crate) fn eject(&self, until: u64) {
        self.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.ramp_from.store(NEVER, Ordering::Relaxed);
    }

    /// Ends an ejection whose time is up; true when it did.
    pub(crate) fn restore_if_due(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && until <= now {
            self.ejected_until.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Times ejected so far.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub(crate) fn start_ramp(&self, now: u64) {
        self.ramp_from.store(now, Ordering::Relaxed);
    }

    /// Ends a finished ramp; true while still ramping.
    pub(crate) fn ramping(&self, now: u64, ramp: u64) -> bool {
        let from = self.ramp_from.load(Ordering::Relaxed);
        if from == NEVER {
            return false;
        }
        if now >= from.saturating_add(ramp) {
            self.ramp_from.store(NEVER, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn ramp_end(&self, ramp: u64) -> Option<u64> {
        let from = self.ramp_from.load(Ordering::Relaxed);
        (from != NEVER).then(|| from.saturating_add(ramp))
    }

    /// What the status page shows of it, as of now; `serving` as the snapshot says, `checked`
    /// when active checks run.
    pub fn view(&self, ramp: Duration, serving: bool, checked: bool) -> EndpointView {
        let now = self.now();
        let left =
            |until: u64| (until > now).then(|| Duration::from_micros(until.saturating_sub(now)));
        let weight = self.ramp_weight(now, micros(ramp));
        EndpointView {
            address: self.addr().to_string(),
            serving,
            health: match (checked, self.check_failing()) {
                (false, _) => "unchecked",
                (true, false) => "healthy",
                (true, true) => "failing",
            },
            ejected_for: left(self.ejected_until()),
            ejections: self.ejections(),
            ramp_share: (serving && weight < 1.0).then_some(weight),
            ewma_ms: self.ewma_at(now) / 1e6,
            in_flight: self.in_flight(),
            penalized_for: left(self.penalty_until.load(Ordering::Relaxed)),
        }
    }
}

/// One endpoint as the admin port shows it (`/status`, `/status.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointView {
    /// The configured or resolved address (`host:port`).
    pub address: String,
    /// Whether the balancer sends it traffic now (in panic mode, every endpoint does).
    pub serving: bool,
    /// Active health checks: `healthy`, `failing`, or `unchecked` (no checks configured).
    pub health: &'static str,
    /// Time left in outlier ejection; `None` when not ejected.
    pub ejected_for: Option<Duration>,
    /// How many times it has been ejected so far.
    pub ejections: u32,
    /// Its share of full traffic (0.1..1) while ramping back after ejection or failed
    /// checks; `None` when not ramping.
    pub ramp_share: Option<f64>,
    /// Peak-EWMA latency, in milliseconds (decaying while idle).
    pub ewma_ms: f64,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Time left of the penalty from the endpoint's `Retry-After` pushback; `None` when none.
    pub penalized_for: Option<Duration>,
}

// === impl Snapshot ===

/// The members of an upstream and which of them serve, as of one moment. Replaced whole.
#[derive(Debug)]
pub struct Snapshot {
    endpoints: Vec<Arc<Endpoint>>,
    /// Indices of the members that serve (every member in panic mode).
    serving: Vec<usize>,
    /// `serving_mask[i]`: member `i` serves.
    serving_mask: Vec<bool>,
    panic: bool,
    /// Some serving member is ramping back.
    ramping: bool,
    /// The consistent-hash ring over the members (with `balance = "hash"`).
    ring: Option<Arc<Ring>>,
}

impl Snapshot {
    /// Every member, in order (the configured order; resolved addresses sorted).
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Indices of the members that serve.
    pub fn serving(&self) -> &[usize] {
        &self.serving
    }

    /// Whether member `i` serves.
    pub fn serves(&self, i: usize) -> bool {
        self.serving_mask.get(i).copied().unwrap_or(false)
    }

    /// Every member is down and all of them serve anyway.
    pub fn panic(&self) -> bool {
        self.panic
    }

    /// Whether some serving member is ramping back (the balancer then weighs shares).
    pub fn ramping(&self) -> bool {
        self.ramping
    }

    /// The hash ring, with `balance = "hash"`.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_deref()
    }

    /// Member `i`.
    pub fn get(&self, i: usize) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(i)
    }
}

// === impl EndpointSet ===

/// The endpoint set of one upstream. Cheap to clone; clones share it. The background tasks
/// that keep it hold it weakly and end once the last clone is gone.
#[derive(Clone, Debug)]
pub struct EndpointSet {
    inner: Arc<SetInner>,
}

/// A weak handle for background tasks.
#[derive(Clone, Debug)]
pub struct WeakEndpointSet(Weak<SetInner>);

impl WeakEndpointSet {
    /// The set, while it is still in use.
    pub fn upgrade(&self) -> Option<EndpointSet> {
        self.0.upgrade().map(|inner| EndpointSet { inner })
    }
}

pub(crate) struct SetInner {
    pub(crate) name: Arc<str>,
    epoch: Instant,
    current: ArcSwap<Snapshot>,
    transport: Transport,
    pub(crate) outlier: OutlierSettings,
    hashed: bool,
    /// Active health checks run on it.
    checked: bool,
    signal: Arc<Notify>,
    /// Serializes the writers of the snapshot (upkeep and discovery); off the request path.
    write: Mutex<()>,
    metrics: Metrics,
    /// Cancelled when the set is dropped: ends its background tasks at once.
    stop: CancellationToken,
    panic_gauge: Gauge,
    pub(crate) ejections: Counter,
    pub(crate) dry_run: Counter,
}

impl std::fmt::Debug for SetInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSet")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for SetInner {
    fn drop(&mut self) {
        // Wakes the upkeep task so it sees the set is gone and ends; ends the others.
        self.signal.notify_one();
        self.stop.cancel();
    }
}

impl EndpointSet {
    /// The set of upstream `name` over `addrs`, reaching them through `transport`. Its upkeep
    /// task (ejections, restorations, ramps, panic mode) runs from [`EndpointSet::start`].
    pub fn new(
        name: Arc<str>,
        addrs: &[Authority],
        transport: Transport,
        outlier: &OutlierSettings,
        shape: SetShape,
        metrics: &Metrics,
    ) -> Self {
        let SetShape { hashed, checked } = shape;
        let up = || ("upstream", name.clone());
        let inner = Arc::new(SetInner {
            epoch: Instant::now(),
            current: ArcSwap::from_pointee(Snapshot {
                endpoints: Vec::new(),
                serving: Vec::new(),
                serving_mask: Vec::new(),
                panic: false,
                ramping: false,
                ring: None,
            }),
            transport,
            outlier: outlier.clone(),
            hashed,
            checked,
            signal: Arc::new(Notify::new()),
            write: Mutex::new(()),
            metrics: metrics.clone(),
            stop: CancellationToken::new(),
            panic_gauge: metrics.gauge(PANIC_MODE, &[up()]),
            ejections: metrics.counter(ENDPOINT_EJECTIONS_TOTAL, &[up()]),
            dry_run: match outlier.mode {
                Mode::DryRun => metrics.counter(
                    DRY_RUN_REJECTIONS_TOTAL,
                    &[up(), ("policy", Arc::from("outlier"))],
                ),
                Mode::Enforce | Mode::Off => Counter::noop(),
            },
            name,
        });
        let set = Self { inner };
        set.replace(addrs, false);
        set
    }

    /// Starts the upkeep task; it ends with the set. Called once, when the set's generation
    /// goes live ([`crate::upstream::Upstream::start`]).
    pub fn start(&self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(upkeep(self.downgrade(), self.inner.signal.clone()));
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// The current snapshot (a cheap guard; hold it only for one pick).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.current.load()
    }

    /// A token cancelled when the set is gone, for its background tasks.
    pub fn stopped(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    /// The current snapshot, owned (for background tasks that hold it across an await).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// A weak handle for a background task.
    pub fn downgrade(&self) -> WeakEndpointSet {
        WeakEndpointSet(Arc::downgrade(&self.inner))
    }

    /// Every member as the admin port shows it, and whether the set is in panic mode.
    pub fn views(&self) -> (Vec<EndpointView>, bool) {
        let snap = self.load_full();
        let ramp = self.inner.outlier.ramp;
        let views = snap
            .endpoints()
            .iter()
            .enumerate()
            .map(|(i, e)| e.view(ramp, snap.serves(i), self.inner.checked))
            .collect();
        (views, snap.panic())
    }

    /// Microseconds since the set's epoch.
    pub(crate) fn now(&self) -> u64 {
        micros(self.inner.epoch.elapsed())
    }

    /// Wakes the upkeep task (a health verdict changed).
    pub(crate) fn changed(&self) {
        self.inner.signal.notify_one();
    }

    /// Replaces the members with `addrs` (from discovery): an address that remains keeps its
    /// [`Endpoint`] (connections, EWMA, health, ejections); a new one joins ramping when others
    /// already serve; one that left is dropped once its last request ends.
    pub fn update(&self, addrs: &[Authority]) {
        self.replace(addrs, true);
    }

    fn replace(&self, addrs: &[Authority], ramp_new: bool) {
        let inner = &self.inner;
        let _w = inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let old = inner.current.load_full();
        let now = self.now();
        let ramp_new = ramp_new && !old.serving.is_empty() && !inner.outlier.ramp.is_zero();
        let mut changed = old.endpoints.len() != addrs.len();
        let mut endpoints = Vec::with_capacity(addrs.len());
        for (i, addr) in addrs.iter().enumerate() {
            if let Some(e) = old.endpoints.iter().find(|e| e.addr() == addr) {
                changed |= old.endpoints.get(i).is_none_or(|o| !Arc::ptr_eq(o, e));
                endpoints.push(e.clone());
                continue;
            }
            changed = true;
            let e = self.endpoint(addr.clone());
            if ramp_new {
                e.start_ramp(now);
            }
            endpoints.push(Arc::new(e));
        }
        if !changed {
            return;
        }
        for gone in old.endpoints.iter().filter(|o| !addrs.contains(o.addr())) {
            gone.healthy.set(f64::NAN);
        }
        let ring = inner.hashed.then(|| {
            let keys: Vec<&str> = endpoints.iter().map(|e| e.addr().as_str()).collect();
            Arc::new(Ring::new(&keys))
        });
        self.publish(endpoints, ring, now);
    }

    fn endpoint(&self, addr: Authority) -> Endpoint {
        let inner = &self.inner;
        let healthy = inner.metrics.gauge(
            ENDPOINT_HEALTHY,
            &[
                ("upstream", inner.name.clone()),
                ("endpoint", Arc::from(addr.as_str())),
            ],
        );
        let eject_after = match inner.outlier.mode {
            Mode::Off => 0,
            _ => inner.outlier.consecutive_failures,
        };
        Endpoint {
            conn: inner.transport.endpoint(addr),
            epoch: inner.epoch,
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(nanos(DEFAULT_RTT)),
            ewma_at: AtomicU64::new(self.now()),
            penalty_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            eject_after,
            signal: inner.signal.clone(),
            check_failing: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            ramp_from: AtomicU64::new(NEVER),
            healthy,
        }
    }

    /// Publishes a snapshot of `endpoints` with the serving list as of `now`. Callers hold
    /// the write lock.
    fn publish(&self, endpoints: Vec<Arc<Endpoint>>, ring: Option<Arc<Ring>>, now: u64) {
        let ramp = micros(self.inner.outlier.ramp);
        let mask: Vec<bool> = endpoints.iter().map(|e| e.usable(now)).collect();
        let panic = !endpoints.is_empty() && !mask.contains(&true);
        let serving_mask = if panic {
            vec![true; endpoints.len()]
        } else {
            mask.clone()
        };
        let serving: Vec<usize> = (0..endpoints.len())
            .filter(|&i| serving_mask.get(i).copied().unwrap_or(false))
            .collect();
        let ramping = serving
            .iter()
            .filter_map(|&i| endpoints.get(i))
            .any(|e| e.ramping(now, ramp));
        for (e, ok) in endpoints.iter().zip(&mask) {
            e.healthy.set(if *ok { 1.0 } else { 0.0 });
        }
        let inner = &self.inner;
        inner.panic_gauge.set(if panic { 1.0 } else { 0.0 });
        let was_panic = inner.current.load().panic;
        if panic && !was_panic {
            tracing::warn!(upstream = %inner.name, "every endpoint is down: panic mode, all serve");
        } else if was_panic && !panic {
            tracing::info!(upstream = %inner.name, "an endpoint is up again: panic mode ends");
        }
        inner.current.store(Arc::new(Snapshot {
            endpoints,
            serving,
            serving_mask,
            panic,
            ramping,
            ring,
        }));
    }

    /// One upkeep pass at `now`: ejections decided, due ones restored, ramps ended, the
    /// serving list republished when it changed. Returns when the next pass is due.
    pub(crate) fn sweep(&self) -> Option<u64> {
        let inner = &self.inner;
        let _w = inner.write.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.now();
        let snap = inner.current.load_full();
        outlier::eject(inner, &snap.endpoints, now);
        let ramp = micros(inner.outlier.ramp);
        let mut next: Option<u64> = None;
        let mut soonest = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for e in &snap.endpoints {
            if e.restore_if_due(now) && !e.check_failing() && ramp != 0 {
                e.start_ramp(now);
            }
            let until = e.ejected_until();
            if until > now {
                soonest(until);
            }
            if e.ramping(now, ramp)
                && let Some(end) = e.ramp_end(ramp)
            {
                soonest(end);
            }
        }
        let serving_now: Vec<bool> = snap.endpoints.iter().map(|e| e.usable(now)).collect();
        let before: Vec<bool> = if snap.panic {
            vec![false; snap.endpoints.len()]
        } else {
            snap.serving_mask.clone()
        };
        let ramping_now = snap
            .serving
            .iter()
            .filter_map(|&i| snap.endpoints.get(i))
            .any(|e| e.ramping(now, ramp));
        if serving_now != before || ramping_now != snap.ramping {
            self.publish(snap.endpoints.clone(), snap.ring.clone(), now);
        }
        next
    }

    /// A health verdict for member `e` changed: a recovering endpoint starts its ramp.
    pub(crate) fn check_changed(&self, e: &Endpoint, failing: bool) {
        if !failing && !e.ejected(self.now()) && !self.inner.outlier.ramp.is_zero() {
            e.start_ramp(self.now());
        }
        self.changed();
    }
}

/// The upkeep task: runs a sweep whenever a writer rings, and when the next ejection or ramp
/// ends; ends when the set is gone.
async fn upkeep(set: WeakEndpointSet, signal: Arc<Notify>) {
    loop {
        let next = match set.upgrade() {
            Some(s) => s
                .sweep()
                .map(|at| s.inner.epoch + Duration::from_micros(at)),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = signal.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => signal.notified().await,
        }
    }
}

fn decay_weight(age_us: u64) -> f64 {
    (-(age_us as f64) / (DECAY.as_micros() as f64)).exp()
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A non-negative float to u64, saturating.
fn to_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        // Saturating by definition of `as` for floats.
        x as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Settings as UpstreamConfig;

    fn addrs(list: &[&str]) -> Vec<Authority> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn set(list: &[&str], outlier: OutlierSettings) -> EndpointSet {
        let cfg = UpstreamConfig::default();
        let s = EndpointSet::new(
            "up".into(),
            &addrs(list),
            Transport::new(&cfg).unwrap(),
            &outlier,
            SetShape::default(),
            &Metrics::new().unwrap(),
        );
        s.start();
        s
    }

    fn outlier(failures: u32, base: u64, ramp: u64) -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(base),
            ramp: Duration::from_secs(ramp),
            ..OutlierSettings::default()
        }
    }

    /// Lets the upkeep task run.
    async fn settle() {
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
    }

    fn fail(e: &Endpoint) {
        e.begin();
        e.end(Duration::from_millis(1), Verdict::GatewayFailure, None);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_until_the_time_is_up_then_the_endpoint_ramps_back() {
        let s = set(&["127.0.0.1:1", "127.0.0.1:2"], outlier(3, 1, 10));
        let e0 = s.load().get(0).unwrap().clone();
        fail(&e0);
        fail(&e0);
        e0.begin();
        e0.end(Duration::from_millis(1), Verdict::Success, None);
        fail(&e0);
        fail(&e0);
        settle().await;
        assert_eq!(s.load().serving(), &[0, 1], "a success resets the count");
        fail(&e0);
        settle().await;
        assert_eq!(s.load().serving(), &[1]);
        assert_eq!(e0.ejections(), 1);

        tokio::time::advance(Duration::from_millis(999)).await;
        settle().await;
        assert_eq!(s.load().serving(), &[1], "still ejected");
        tokio::time::advance(Duration::from_millis(2)).await;
        settle().await;
        let snap = s.load_full();
        assert_eq!(snap.serving(), &[0, 1], "back after base_ejection × 1");
        assert!(snap.ramping());
        let ramp = micros(Duration::from_secs(10));
        let w = e0.ramp_weight(e0.now(), ramp);
        assert!((w - RAMP_FLOOR).abs() < 0.01, "starts at the floor: {w}");
        tokio::time::advance(Duration::from_secs(5)).await;
        let w = e0.ramp_weight(e0.now(), ramp);
        assert!((w - 0.55).abs() < 0.01, "halfway: {w}");
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        assert_eq!(e0.ramp_weight(e0.now(), ramp), 1.0);
        assert!(!s.load().ramping(), "the ramp's end is republished");

        // The second ejection lasts twice as long.
        for _ in 0..3 {
            fail(&e0);
        }
        settle().await;
        assert_eq!(s.load().serving(), &[1]);
        tokio::time::advance(Duration::from_millis(1500)).await;
        settle().await;
        assert_eq!(s.load().serving(), &[1]);
        tokio::time::advance(Duration::from_millis(600)).await;
        settle().await;
        assert_eq!(s.load().serving(), &[0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_cap_is_ejected_and_the_next_waits_for_room() {
        let s = set(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            OutlierSettings {
                max_ejection_percent: 25,
                ..outlier(1, 1, 0)
            },
        );
        let snap = s.load_full();
        fail(snap.get(0).unwrap());
        settle().await;
        fail(snap.get(1).unwrap());
        settle().await;
        assert_eq!(s.load().serving(), &[1, 2, 3], "25 % of 4: one at a time");
        tokio::time::advance(Duration::from_millis(1001)).await;
        settle().await;
        assert_eq!(
            s.load().serving(),
            &[0, 2, 3],
            "when the first comes back, the waiting one is ejected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_and_off_eject_nothing() {
        for mode in [Mode::DryRun, Mode::Off] {
            let s = set(
                &["127.0.0.1:1", "127.0.0.1:2"],
                OutlierSettings {
                    mode,
                    ..outlier(1, 1, 0)
                },
            );
            fail(s.load().get(0).unwrap());
            settle().await;
            assert_eq!(s.load().serving(), &[0, 1], "{mode:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_endpoint_is_down_all_serve_in_panic_mode() {
        let s = set(&["127.0.0.1:1", "127.0.0.1:2"], outlier(5, 30, 0));
        let snap = s.load_full();
        for e in snap.endpoints() {
            e.set_check_failing(true);
        }
        s.changed();
        settle().await;
        let now = s.load_full();
        assert!(now.panic());
        assert_eq!(now.serving(), &[0, 1]);
        snap.get(1).unwrap().set_check_failing(false);
        s.check_changed(snap.get(1).unwrap(), false);
        settle().await;
        let now = s.load_full();
        assert!(!now.panic());
        assert_eq!(now.serving(), &[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_keeps_the_endpoints_that_remain_and_ramps_the_new_ones() {
        let s = set(&["127.0.0.1:1", "127.0.0.1:2"], outlier(5, 30, 10));
        let kept = s.load().get(1).unwrap().clone();
        kept.begin();
        kept.end(Duration::from_millis(80), Verdict::Success, None);
        s.update(&addrs(&["127.0.0.1:2", "127.0.0.1:3"]));
        let snap = s.load_full();
        assert_eq!(snap.endpoints().len(), 2);
        assert!(Arc::ptr_eq(snap.get(0).unwrap(), &kept), "same endpoint");
        assert!(
            snap.get(0).unwrap().ewma_at(kept.now()) > 70e6,
            "its EWMA kept"
        );
        let new = snap.get(1).unwrap();
        assert_eq!(new.addr().as_str(), "127.0.0.1:3");
        assert!(new.ramp_weight(new.now(), micros(Duration::from_secs(10))) < 0.2);
        assert!(snap.ramping());
        // The same list again publishes nothing new.
        s.update(&addrs(&["127.0.0.1:2", "127.0.0.1:3"]));
        assert!(Arc::ptr_eq(&snap, &s.load_full()));
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_at_once_and_decays_slowly() {
        let s = set(&["127.0.0.1:1"], outlier(5, 30, 0));
        let e = s.load().get(0).unwrap().clone();
        e.begin();
        e.end(Duration::from_millis(100), Verdict::Success, None);
        assert!(
            (e.ewma_at(e.now()) - 100e6).abs() < 1e3,
            "peak taken at once"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        e.begin();
        e.end(Duration::from_millis(10), Verdict::Success, None);
        let v = e.ewma_at(e.now());
        // exp(-1/10) = 0.905: 0.905 × 100 + 0.095 × 10 = 91.4 ms.
        assert!((v - 91.4e6).abs() < 0.2e6, "{v}");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(e.ewma_at(e.now()) < 34e6, "an idle estimate decays");
        assert_eq!(e.in_flight(), 0);
        e.begin();
        e.end(
            Duration::from_millis(1),
            Verdict::Success,
            Some(Duration::from_secs(2)),
        );
        assert!(e.penalized(e.now()));
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert!(!e.penalized(e.now()));
    }
}
