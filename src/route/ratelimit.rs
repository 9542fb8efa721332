//! The route's rate limit: a token bucket (GCRA), one per route or per key, in a bounded table.
//!
//! Position: second layer of a route target's stack, after the deadline ([`crate::route::build`]).
//! Config: `routes[].rate_limit.*`. Metrics: `weir_rate_limited_total{route}`.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderName;
use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::ProxyError;
use crate::http::context::RequestContext;
use crate::http::{Request, Response};
use crate::metrics::{Metrics, RATE_LIMITED_TOTAL};

/// Token-bucket rate limit of a route (`routes[].rate_limit`). Over the limit weir answers 429.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Tokens added per second; required, greater than 0.
    pub rps: f64,
    /// Bucket size; default `max(1, ceil(rps))`.
    pub burst: u32,
    /// What the bucket is keyed by; default one bucket for the route.
    pub key: Key,
    /// Most distinct keys tracked at once; default 10000.
    pub max_keys: usize,
}

impl Settings {
    /// Whether the limit reads the request's [`RequestContext`] (its buckets are keyed by the
    /// client's address).
    pub(crate) fn reads_context(&self) -> bool {
        self.key == Key::ClientIp
    }
}

/// What a rate limit bucket is keyed by (`routes[].rate_limit.key`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Key {
    /// `none`: one bucket for the whole route.
    #[default]
    None,
    /// `client_ip`: one bucket per client address.
    ClientIp,
    /// `header:NAME`: one bucket per value of this request header.
    Header(HeaderName),
}

impl Settings {
    /// A limit of `rps` requests per second with every other field its default: burst
    /// `max(1, ceil(rps))`, one bucket for the route, at most 10000 keys.
    pub fn new(rps: f64) -> Settings {
        let ceil = rps.ceil();
        let burst = if ceil >= f64::from(u32::MAX) {
            u32::MAX
        } else if ceil >= 1.0 {
            // Integral and within 1..u32::MAX, so the conversion is exact.
            ceil as u32
        } else {
            1
        };
        Settings {
            rps,
            burst,
            key: Key::None,
            max_keys: 10_000,
        }
    }
}

/// Wraps a service in [`RateLimit`]. Clones (and every service it builds) share the buckets,
/// so one route's targets draw from the same limit.
///
/// The bucket holds `burst` tokens and gains `rps` per second; a request takes one token or is
/// refused at once with `429 rate-limited` and a `Retry-After` of the time until a token is
/// available. It is a GCRA: each bucket is one atomic "theoretical arrival time", updated by
/// compare-exchange, so admission takes no lock.
///
/// Keys (`rate_limit.key`):
/// - `none` (the default): one bucket for the route.
/// - `client_ip`: one bucket per downstream address ([`RequestContext::client`]); requests
///   without a context share one bucket.
/// - `header:NAME`: one bucket per value of the first `NAME` header. Requests without the
///   header share one bucket of their own, so omitting the header escapes nothing. A client
///   that may choose the value gets one bucket per value: key by a header that something in
///   front of weir authenticates or sets.
///
/// At most about `2 × max_keys` keys (rounded up to a power of two, at most 2^20) are tracked at
/// once. When a new key finds no free slot it takes the slot of the fullest bucket near it,
/// which is close to the least recently admitted key, and starts with a full bucket; a key that
/// comes back after it was evicted starts full again. Keys are identified by a keyed 64-bit
/// hash; two keys with the same hash would share a bucket.
#[derive(Clone)]
pub(crate) struct RateLimitLayer {
    shared: Option<Arc<Shared>>,
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

pin_project! {
    /// The future of [`RateLimit`]: the inner service's, or a ready `rate-limited` refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Admitted { #[pin] inner: F },
        Refused { retry_after: Duration },
    }
}

/// What every clone of one route's limit shares.
struct Shared {
    route: Arc<str>,
    /// Nanoseconds between two tokens: `ceil(1e9 / rps)`, at least 1.
    interval: u64,
    /// How far a bucket's theoretical arrival time may run ahead of now: `burst × interval`.
    tolerance: u64,
    /// Time zero of every theoretical arrival time (nanoseconds since `base`).
    base: Instant,
    key: Key,
    hasher: RandomState,
    buckets: Buckets,
    refused: Counter,
}

enum Buckets {
    /// `key = none`: the route's one bucket.
    One(AtomicU64),
    /// Keyed: open addressing, probed over [`WINDOW`] slots from the key's hash.
    Table {
        slots: Box<[KeyBucket]>,
        mask: usize,
        /// Never used: stands in should a probe window ever come out empty.
        overflow: AtomicU64,
    },
}

/// One tracked key: its hash ([`EMPTY`] when free) and its bucket's theoretical arrival time.
#[derive(Default)]
struct KeyBucket {
    key: AtomicU64,
    tat: AtomicU64,
}

// === impl RateLimitLayer ===

impl RateLimitLayer {
    /// The limit of `route` (the label of `weir_rate_limited_total`); `None` lets every request
    /// through at the cost of one branch. Its clock starts now.
    pub(crate) fn new(route: Arc<str>, cfg: Option<&Settings>, metrics: &Metrics) -> Self {
        let shared = cfg.map(|cfg| {
            let interval = interval_ns(cfg.rps);
            let buckets = match cfg.key {
                Key::None => Buckets::One(AtomicU64::new(0)),
                Key::ClientIp | Key::Header(_) => {
                    let len = table_len(cfg.max_keys);
                    Buckets::Table {
                        slots: (0..len).map(|_| KeyBucket::default()).collect(),
                        mask: len.saturating_sub(1),
                        overflow: AtomicU64::new(0),
                    }
                }
            };
            Arc::new(Shared {
                refused: metrics.counter(RATE_LIMITED_TOTAL, &[("route", route.clone())]),
                route,
                interval,
                tolerance: interval
                    .saturating_mul(u64::from(cfg.burst))
                    .min(MAX_TOLERANCE_NS),
                base: Instant::now(),
                key: cfg.key.clone(),
                hasher: RandomState::new(),
                buckets,
            })
        });
        Self { shared }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("route", &self.shared.as_ref().map(|s| &s.route))
            .finish_non_exhaustive()
    }
}

// === impl RateLimit ===

impl<S> Service<Request> for RateLimit<S>
where
    S: Service<Request, Response = Response, Error = ProxyError> + Clone,
{
    type Response = Response;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Admission is decided in `call`; this only asks the inner service, and every stage
        // below is always ready, so a refusal still holds nothing.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(shared) = &self.shared
            && let Err(retry_after) = shared.admit(&req)
        {
            shared.refused.increment(1);
            tracing::debug!(route = %shared.route, ?retry_after, "rate limited");
            return ResponseFuture {
                state: State::Refused { retry_after },
            };
        }
        ResponseFuture {
            state: State::Admitted {
                inner: self.inner.call(req),
            },
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

// === impl ResponseFuture ===

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, ProxyError>>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner } => inner.poll(cx),
            StateProj::Refused { retry_after } => Poll::Ready(Err(ProxyError::RateLimited {
                retry_after: *retry_after,
            })),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Takes a token from the request's bucket, or says how long until one is available.
    fn admit(&self, req: &Request) -> Result<(), Duration> {
        let now = self.now();
        let tat = match &self.buckets {
            Buckets::One(tat) => tat,
            Buckets::Table {
                slots,
                mask,
                overflow,
            } => Self::slot(slots, *mask, overflow, self.hash(req)),
        };
        gcra(tat, now, self.interval, self.tolerance).map_err(Duration::from_nanos)
    }

    /// Nanoseconds since `base`.
    fn now(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.base);
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The key's hash, never [`EMPTY`]. `Some`/`None` keep "no key" apart from every value.
    fn hash(&self, req: &Request) -> u64 {
        let h = match &self.key {
            Key::None => 0,
            Key::ClientIp => self.hasher.hash_one(
                req.extensions()
                    .get::<RequestContext>()
                    .map(|ctx| ctx.client),
            ),
            Key::Header(name) => self
                .hasher
                .hash_one(req.headers().get(name).map(|v| v.as_bytes())),
        };
        if h == EMPTY { 1 } else { h }
    }

    /// The bucket of key `hash`: its slot in the probe window, or a slot claimed for it (a free
    /// one first, else the one whose bucket is fullest, i.e. with the smallest arrival time).
    fn slot<'a>(
        slots: &'a [KeyBucket],
        mask: usize,
        overflow: &'a AtomicU64,
        hash: u64,
    ) -> &'a AtomicU64 {
        // Truncating the hash to usize only drops high bits before masking.
        let start = usize::try_from(hash & u64::try_from(mask).unwrap_or(u64::MAX)).unwrap_or(0);
        loop {
            let mut victim: Option<(&KeyBucket, u64, u64)> = None;
            for i in 0..WINDOW {
                let Some(slot) = slots.get(start.wrapping_add(i) & mask) else {
                    continue;
                };
                let key = slot.key.load(Ordering::Acquire);
                if key == hash {
                    return &slot.tat;
                }
                let tat = slot.tat.load(Ordering::Acquire);
                let rank = (key != EMPTY, tat);
                if victim.is_none_or(|(_, k, t)| rank < (k != EMPTY, t)) {
                    victim = Some((slot, key, tat));
                }
            }
            let Some((slot, key, tat)) = victim else {
                // Unreachable: a table has at least WINDOW slots and the index is masked.
                return overflow;
            };
            if slot
                .key
                .compare_exchange(key, hash, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // A new key starts with a full bucket. If a request already moved the arrival
                // time since it was read, keep that: it can only refuse more, never admit more.
                let _ = slot
                    .tat
                    .compare_exchange(tat, 0, Ordering::AcqRel, Ordering::Acquire);
                return &slot.tat;
            }
            // Another request claimed that slot first (perhaps for this very key): look again.
        }
    }
}

// === helpers ===

/// Generic cell rate algorithm on one bucket: admit at `now` if the arrival time, moved on by
/// one `interval`, stays within `tolerance` of now; otherwise the nanoseconds until it would.
fn gcra(tat: &AtomicU64, now: u64, interval: u64, tolerance: u64) -> Result<(), u64> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = current.max(now).saturating_add(interval);
        let ahead = next.saturating_sub(now);
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => current = seen,
        }
    }
}

/// `ceil(1e9 / rps)` nanoseconds, within `1..=MAX_INTERVAL_NS`. Rounding up keeps the rate at
/// or below `rps`.
fn interval_ns(rps: f64) -> u64 {
    let ns = (1e9 / rps).ceil();
    if ns.is_nan() || ns >= MAX_INTERVAL_F64 {
        MAX_INTERVAL_NS
    } else if ns >= 1.0 {
        // Integral and within 1..MAX_INTERVAL_NS, so the conversion is exact.
        ns as u64
    } else {
        1
    }
}

/// Slots for `max_keys` keys: twice as many, a power of two, within `WINDOW..=MAX_SLOTS`.
fn table_len(max_keys: usize) -> usize {
    max_keys
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(MAX_SLOTS)
        .clamp(WINDOW, MAX_SLOTS)
}

/// The hash of a free slot.
const EMPTY: u64 = 0;
/// Slots probed for a key, from the one its hash names.
const WINDOW: usize = 8;
/// Most slots of a key table (16 bytes each: 16 MiB).
const MAX_SLOTS: usize = 1 << 20;
/// Longest interval between two tokens: about 13 days (rates below that are that rate).
const MAX_INTERVAL_NS: u64 = 1 << 50;
const MAX_INTERVAL_F64: f64 = 1_125_899_906_842_624.0;
/// Longest a bucket's arrival time may run ahead of now: about 73 years, so the arithmetic
/// never saturates.
const MAX_TOLERANCE_NS: u64 = 1 << 61;

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::AtomicUsize;
    use tower::ServiceExt;

    use http::{HeaderName, HeaderValue};

    use super::*;
    use crate::http::Body;
    use crate::http::context::Priority;

    /// Counts the requests that reach it.
    #[derive(Clone)]
    struct Leaf(Arc<AtomicUsize>);

    impl Service<Request> for Leaf {
        type Response = Response;
        type Error = ProxyError;
        type Future = std::future::Ready<Result<Response, ProxyError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(Response::new(Body::empty())))
        }
    }

    fn leaf(calls: Arc<AtomicUsize>) -> Leaf {
        Leaf(calls)
    }

    fn limit(cfg: Settings) -> (RateLimit<Leaf>, Arc<AtomicUsize>, Metrics) {
        let metrics = Metrics::new().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RateLimitLayer::new(Arc::from("rl-route"), Some(&cfg), &metrics);
        (layer.layer(leaf(calls.clone())), calls, metrics)
    }

    fn cfg(rps: f64, burst: u32, key: Key, max_keys: usize) -> Settings {
        Settings {
            rps,
            burst,
            key,
            max_keys,
        }
    }

    fn req() -> Request {
        Request::new(Body::empty())
    }

    fn from(ip: [u8; 4]) -> Request {
        let mut r = req();
        r.extensions_mut().insert(RequestContext::new(
            IpAddr::V4(Ipv4Addr::from(ip)),
            Arc::from("rl-route"),
            Priority::Default,
        ));
        r
    }

    fn with_header(value: &str) -> Request {
        let mut r = req();
        r.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(value).unwrap());
        r
    }

    /// `Ok(())` if admitted, else the `retry_after` of the refusal.
    async fn send<S>(svc: &S, r: Request) -> Result<(), Duration>
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone,
    {
        match svc.clone().oneshot(r).await {
            Ok(_) => Ok(()),
            Err(ProxyError::RateLimited { retry_after }) => Err(retry_after),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    async fn admitted<S>(svc: &S, n: usize, r: impl Fn() -> Request) -> usize
    where
        S: Service<Request, Response = Response, Error = ProxyError> + Clone,
    {
        let mut ok = 0;
        for _ in 0..n {
            ok += usize::from(send(svc, r()).await.is_ok());
        }
        ok
    }

    fn tracked(svc: &RateLimit<Leaf>) -> usize {
        match &svc.shared.as_ref().unwrap().buckets {
            Buckets::Table { slots, .. } => slots
                .iter()
                .filter(|s| s.key.load(Ordering::Relaxed) != EMPTY)
                .count(),
            Buckets::One(_) => 1,
        }
    }

    fn tracks(svc: &RateLimit<Leaf>, r: &Request) -> bool {
        let shared = svc.shared.as_ref().unwrap();
        let hash = shared.hash(r);
        match &shared.buckets {
            Buckets::Table { slots, .. } => {
                slots.iter().any(|s| s.key.load(Ordering::Relaxed) == hash)
            }
            Buckets::One(_) => true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_at_once_then_rps_per_second() {
        let (svc, calls, _) = limit(cfg(2.0, 5, Key::None, 10));
        assert_eq!(admitted(&svc, 8, req).await, 5);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            5,
            "refusals never reach the leaf"
        );
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(admitted(&svc, 3, req).await, 1);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admitted(&svc, 5, req).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_real_wait() {
        // 3 rps: one token every 333_333_334 ns (rounded up).
        let (svc, _, _) = limit(cfg(3.0, 2, Key::None, 10));
        assert_eq!(admitted(&svc, 2, req).await, 2);
        let wait = send(&svc, req()).await.unwrap_err();
        assert_eq!(wait, Duration::from_nanos(333_333_334));
        tokio::time::advance(Duration::from_millis(100)).await;
        let wait = send(&svc, req()).await.unwrap_err();
        assert_eq!(wait, Duration::from_nanos(233_333_334));
        tokio::time::advance(wait - Duration::from_nanos(1)).await;
        assert_eq!(send(&svc, req()).await, Err(Duration::from_nanos(1)));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(send(&svc, req()).await, Ok(()));
        assert_eq!(
            send(&svc, req()).await,
            Err(Duration::from_nanos(333_333_334))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refills_to_burst_and_no_further() {
        let (svc, _, _) = limit(cfg(10.0, 4, Key::None, 10));
        assert_eq!(admitted(&svc, 10, req).await, 4);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&svc, 10, req).await, 4);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(admitted(&svc, 10, req).await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn client_ip_keys_separate_clients() {
        let (svc, _, _) = limit(cfg(1.0, 2, Key::ClientIp, 100));
        assert_eq!(admitted(&svc, 5, || from([10, 0, 0, 1])).await, 2);
        assert_eq!(admitted(&svc, 5, || from([10, 0, 0, 2])).await, 2);
        assert!(send(&svc, from([10, 0, 0, 1])).await.is_err());
        // Requests without a context share one bucket of their own.
        assert_eq!(admitted(&svc, 5, req).await, 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admitted(&svc, 5, || from([10, 0, 0, 1])).await, 1);
        assert_eq!(tracked(&svc), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn header_keys_separate_values_and_missing_header_shares_one_bucket() {
        let key = Key::Header(HeaderName::from_static("x-api-key"));
        let (svc, _, _) = limit(cfg(1.0, 1, key, 100));
        assert_eq!(send(&svc, with_header("a")).await, Ok(()));
        assert_eq!(send(&svc, with_header("b")).await, Ok(()));
        assert!(send(&svc, with_header("a")).await.is_err());
        assert!(send(&svc, with_header("b")).await.is_err());
        // Omitting the header escapes nothing: all such requests share one bucket.
        assert_eq!(admitted(&svc, 5, req).await, 1);
        // An empty value is a value, not the absence of the header.
        assert_eq!(send(&svc, with_header("")).await, Ok(()));
        assert!(
            send(&svc, from([10, 0, 0, 9])).await.is_err(),
            "not keyed by ip"
        );
        assert_eq!(tracked(&svc), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn max_keys_bounds_the_table_and_evicts_the_oldest_keys() {
        let (svc, _, _) = limit(cfg(1.0, 2, Key::ClientIp, 4));
        let capacity = 8;
        for i in 0..8 {
            assert_eq!(send(&svc, from([10, 0, 0, i])).await, Ok(()));
        }
        assert_eq!(tracked(&svc), capacity);
        tokio::time::advance(Duration::from_secs(5)).await;
        // The hot key takes its whole burst; it is the most recently used bucket from now on.
        let hot = || from([192, 168, 0, 1]);
        assert_eq!(admitted(&svc, 3, hot).await, 2);
        for i in 0..200u8 {
            assert_eq!(send(&svc, from([172, 16, 0, i])).await, Ok(()));
            assert!(tracked(&svc) <= capacity);
        }
        for i in 0..8 {
            assert!(!tracks(&svc, &from([10, 0, 0, i])), "old key {i} evicted");
        }
        assert!(tracks(&svc, &hot()));
        // Its state survived the churn: still empty, with the honest wait.
        assert_eq!(send(&svc, hot()).await, Err(Duration::from_secs(1)));
        assert_eq!(tracked(&svc), capacity);
    }

    #[test]
    fn table_sizes() {
        assert_eq!(table_len(1), WINDOW);
        assert_eq!(table_len(4), 8);
        assert_eq!(table_len(5), 16);
        assert_eq!(table_len(10_000), 32_768);
        assert_eq!(table_len(usize::MAX), MAX_SLOTS);
        assert_eq!(interval_ns(1.0), 1_000_000_000);
        assert_eq!(interval_ns(3.0), 333_333_334);
        assert_eq!(interval_ns(1e12), 1);
        assert_eq!(interval_ns(1e-300), MAX_INTERVAL_NS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_use_never_admits_more_than_the_rate() {
        let start = Instant::now();
        let (svc, calls, metrics) = limit(cfg(2000.0, 50, Key::None, 10));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    for _ in 0..20_000 {
                        ok += u64::from(send(&svc, req()).await.is_ok());
                    }
                    ok
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(ok >= 50, "the burst is admitted ({ok})");
        let bound = 50.0 + 2000.0 * elapsed;
        assert!((ok as f64) <= bound, "{ok} admitted in {elapsed}s");
        assert_eq!(calls.load(Ordering::Relaxed) as u64, ok);
        let refused = 8 * 20_000 - ok;
        assert!(
            metrics.render().contains(&format!(
                "weir_rate_limited_total{{route=\"rl-route\"}} {refused}\n"
            )),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_counted_per_route() {
        let (svc, _, metrics) = limit(cfg(1.0, 1, Key::None, 10));
        assert_eq!(admitted(&svc, 4, req).await, 1);
        let text = metrics.render();
        assert!(
            text.contains("weir_rate_limited_total{route=\"rl-route\"} 3\n"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn none_is_a_pass_through() {
        let metrics = Metrics::new().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = RateLimitLayer::new(Arc::from("open"), None, &metrics).layer(leaf(calls.clone()));
        assert_eq!(admitted(&svc, 1000, req).await, 1000);
        assert_eq!(calls.load(Ordering::Relaxed), 1000);
        assert!(!metrics.render().contains("weir_rate_limited_total{"));
    }
}
