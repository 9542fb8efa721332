//! Which endpoint a try goes to (`balance`): `p2c` over peak-EWMA latency (the default),
//! `round_robin`, `least_request`, or `hash` on `hash_on` (consistent hashing for affinity).
//!
//! Every balancer picks among the endpoints that serve (see [`crate::upstream::endpoints`]),
//! steps past the one the previous try of the same request used when another serves, and
//! weighs an endpoint ramping back by its ramp share:
//! - `p2c`: two distinct serving endpoints at random; the one with the lower cost wins, where
//!   cost = (peak-EWMA latency + pushback) × (in flight + 1) ÷ ramp share. Pushback: while an
//!   endpoint's `Retry-After` (on a 429 or 503) runs, 1 s is added to its latency, so a fast
//!   failing endpoint does not attract traffic (Linkerd's load biaser does the same).
//! - `round_robin`: the next in turn; a ramping endpoint keeps its turn with probability equal
//!   to its share.
//! - `least_request`: the fewest requests in flight (÷ ramp share). Up to 16 serving endpoints
//!   it scans them all from a rotating start, so ties spread; above that it takes the best of
//!   4 drawn at random (Envoy's `choice_count`), so a pick costs the same at 1000 endpoints.
//! - `hash`: the key (`client_ip`, `header:NAME`, `cookie:NAME`) on a ring over every member
//!   (see [`crate::upstream::hash`]): a key whose endpoint does not serve goes to the next one
//!   on the ring, so the keys of the other endpoints never move. A request without the key is
//!   balanced round robin. Ramps are not weighed (affinity first).
//!
//! Position: inside [`crate::upstream::forward`], on every try. Config:
//! `upstreams.<name>.balance`, `hash_on`. Metrics: none (endpoint state is on `/status`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderName;
use http::header::COOKIE;
use rand::Rng;

use crate::http::Request;
use crate::http::context::with_fast_rng as with_rng;
use crate::upstream::endpoints::{Endpoint, Snapshot, micros};
use crate::upstream::hash::hash_bytes;

/// Load-balancing algorithm of an upstream (`upstreams.NAME.balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// `p2c`: power of two choices over peak-EWMA latency.
    #[default]
    P2c,
    /// `round_robin`.
    RoundRobin,
    /// `least_request`: fewest requests in flight.
    LeastRequest,
    /// `hash`: consistent hashing on `hash_on`, for session affinity.
    Hash,
}

/// What consistent hashing hashes (`upstreams.NAME.hash_on`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// `client_ip`: the client address.
    #[default]
    ClientIp,
    /// `header:NAME`: the value of this request header.
    Header(HeaderName),
    /// `cookie:NAME`: the value of this cookie.
    Cookie(String),
}

impl Balance {
    /// The config spelling: `p2c`, `round_robin`, `least_request` or `hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::P2c => "p2c",
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequest => "least_request",
            Balance::Hash => "hash",
        }
    }
}

/// Up to this many serving endpoints, `least_request` scans them all.
const LEAST_REQUEST_EXACT: usize = 16;
/// Above it, the best of this many random ones.
const LEAST_REQUEST_CHOICES: usize = 4;

/// Added to a pushed-back endpoint's latency in p2c, in nanoseconds (1 s).
const PUSHBACK_PENALTY_NS: f64 = 1e9;

/// One upstream's balancer. Shared by every try; its only state is a rotation counter.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
    next: AtomicUsize,
    /// `outlier.ramp` in µs.
    ramp: u64,
}

#[derive(Debug)]
enum Kind {
    P2c,
    RoundRobin,
    LeastRequest,
    Hash(HashOn),
}

impl Balancer {
    /// The balancer `balance` (with `hash_on` for `hash`), weighing ramps over `ramp`.
    pub fn new(balance: Balance, hash_on: &HashOn, ramp: std::time::Duration) -> Self {
        let kind = match balance {
            Balance::P2c => Kind::P2c,
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::LeastRequest => Kind::LeastRequest,
            Balance::Hash => Kind::Hash(hash_on.clone()),
        };
        Self {
            kind,
            next: AtomicUsize::new(0),
            ramp: micros(ramp),
        }
    }

    /// The member of `snap` the next try of `req` (from `client`) goes to, avoiding member
    /// `avoid` when another serves. `None` when no member serves (an empty set).
    pub fn pick(
        &self,
        snap: &Snapshot,
        req: &Request,
        client: Option<IpAddr>,
        avoid: Option<usize>,
    ) -> Option<usize> {
        let serving = snap.serving();
        match serving {
            [] => return None,
            [only] => return Some(*only),
            _ => {}
        }
        match &self.kind {
            Kind::P2c => self.p2c(snap, serving, avoid),
            Kind::RoundRobin => self.round_robin(snap, serving, avoid),
            Kind::LeastRequest => self.least_request(snap, serving, avoid),
            Kind::Hash(on) => match key(on, req, client) {
                Some(h) => snap
                    .ring()
                    .and_then(|ring| {
                        ring.pick(h, |i| snap.serves(i) && Some(i) != avoid)
                            .or_else(|| ring.pick(h, |i| snap.serves(i)))
                    })
                    .or_else(|| self.round_robin(snap, serving, avoid)),
                None => self.round_robin(snap, serving, avoid),
            },
        }
    }

    fn p2c(&self, snap: &Snapshot, serving: &[usize], avoid: Option<usize>) -> Option<usize> {
        let n = serving.len();
        let (a, b) = with_rng(|rng| {
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n - 1);
            (a, if b >= a { b + 1 } else { b })
        });
        let (ia, ib) = (*serving.get(a)?, *serving.get(b)?);
        if Some(ia) == avoid {
            return Some(ib);
        }
        if Some(ib) == avoid {
            return Some(ia);
        }
        let (ea, eb) = (snap.get(ia)?, snap.get(ib)?);
        let now = ea.now();
        let ramping = snap.ramping();
        let cost = |e: &Endpoint| {
            let mut latency = e.ewma_at(now) + 1.0;
            if e.penalized(now) {
                latency += PUSHBACK_PENALTY_NS;
            }
            let load = latency * (f64::from(e.in_flight()) + 1.0);
            if ramping {
                load / e.ramp_weight(now, self.ramp)
            } else {
                load
            }
        };
        Some(if cost(eb) < cost(ea) { ib } else { ia })
    }

    fn round_robin(
        &self,
        snap: &Snapshot,
        serving: &[usize],
        avoid: Option<usize>,
    ) -> Option<usize> {
        let n = serving.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let ramping = snap.ramping();
        let now = if ramping {
            snap.get(*serving.first()?)?.now()
        } else {
            0
        };
        for k in 0..n {
            let i = *serving.get(start.wrapping_add(k) % n)?;
            if Some(i) == avoid {
                continue;
            }
            if ramping {
                let w = snap.get(i)?.ramp_weight(now, self.ramp);
                if w < 1.0 && with_rng(|r| r.random::<f64>()) >= w {
                    continue;
                }
            }
            return Some(i);
        }
        serving
            .iter()
            .copied()
            .find(|&i| Some(i) != avoid)
            .or_else(|| serving.first().copied())
    }

    fn least_request(
        &self,
        snap: &Snapshot,
        serving: &[usize],
        avoid: Option<usize>,
    ) -> Option<usize> {
        let n = serving.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let ramping = snap.ramping();
        let now = if ramping {
            snap.get(*serving.first()?)?.now()
        } else {
            0
        };
        let mut best: Option<(f64, usize)> = None;
        let sampled = n > LEAST_REQUEST_EXACT;
        let rounds = if sampled { LEAST_REQUEST_CHOICES } else { n };
        for k in 0..rounds {
            let at = if sampled {
                with_rng(|r| r.random_range(0..n))
            } else {
                start.wrapping_add(k) % n
            };
            let i = *serving.get(at)?;
            if Some(i) == avoid {
                continue;
            }
            let e = snap.get(i)?;
            let mut score = f64::from(e.in_flight()) + 1.0;
            if ramping {
                score /= e.ramp_weight(now, self.ramp);
            }
            if best.is_none_or(|(s, _)| score < s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i).or_else(|| serving.first().copied())
    }
}

/// The hash of the request's affinity key, when it has one.
fn key(on: &HashOn, req: &Request, client: Option<IpAddr>) -> Option<u64> {
    match on {
        HashOn::ClientIp => match client? {
            IpAddr::V4(ip) => Some(hash_bytes(&ip.octets())),
            IpAddr::V6(ip) => Some(hash_bytes(&ip.octets())),
        },
        HashOn::Header(name) => req.headers().get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => req
            .headers()
            .get_all(COOKIE)
            .iter()
            .find_map(|v| cookie(v.as_bytes(), name.as_bytes()))
            .map(hash_bytes),
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = pair.split_at(eq);
        (k.trim_ascii() == name).then(|| v.get(1..).unwrap_or_default().trim_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::Settings as UpstreamConfig;
    use crate::upstream::endpoints::{EndpointSet, Verdict};
    use std::time::Duration;

    fn set(n: usize, balance: Balance) -> EndpointSet {
        let cfg = UpstreamConfig {
            endpoints: (1..=n)
                .map(|i| format!("127.0.0.1:{i}").parse().unwrap())
                .collect(),
            balance,
            ..UpstreamConfig::default()
        };
        crate::upstream::endpoint_set(&cfg, &Metrics::new().unwrap()).unwrap()
    }

    fn request(header: Option<&str>) -> Request {
        let mut req = Request::new(crate::http::Body::empty());
        if let Some(v) = header {
            req.headers_mut()
                .insert("x-user", http::HeaderValue::from_str(v).unwrap());
        }
        req
    }

    fn hold(e: &Endpoint, n: usize) {
        for _ in 0..n {
            e.begin();
        }
    }

    #[test]
    fn round_robin_takes_turns_and_steps_past_the_endpoint_to_avoid() {
        let s = set(3, Balance::RoundRobin);
        let b = Balancer::new(Balance::RoundRobin, &HashOn::ClientIp, Duration::ZERO);
        let snap = s.load();
        let req = request(None);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&snap, &req, None, None)).collect();
        assert_eq!(
            picks,
            [Some(0), Some(1), Some(2), Some(0), Some(1), Some(2)]
        );
        // Next in turn is 0; the last try used it, so 1 goes.
        assert_eq!(b.pick(&snap, &req, None, Some(0)), Some(1));
    }

    #[test]
    fn least_request_takes_the_endpoint_with_fewest_in_flight() {
        let s = set(3, Balance::LeastRequest);
        let b = Balancer::new(Balance::LeastRequest, &HashOn::ClientIp, Duration::ZERO);
        let snap = s.load();
        hold(snap.get(0).unwrap(), 3);
        hold(snap.get(1).unwrap(), 1);
        hold(snap.get(2).unwrap(), 2);
        let req = request(None);
        for _ in 0..5 {
            assert_eq!(b.pick(&snap, &req, None, None), Some(1));
        }
        assert_eq!(b.pick(&snap, &req, None, Some(1)), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_cheaper_endpoint_and_pushback_makes_one_expensive() {
        let s = set(2, Balance::P2c);
        let b = Balancer::new(Balance::P2c, &HashOn::ClientIp, Duration::ZERO);
        let snap = s.load_full();
        let (e0, e1) = (snap.get(0).unwrap(), snap.get(1).unwrap());
        e0.begin();
        e0.end(Duration::from_millis(200), Verdict::Success, None);
        e1.begin();
        e1.end(Duration::from_millis(5), Verdict::Success, None);
        let req = request(None);
        // With two endpoints p2c always compares both: the faster one wins.
        for _ in 0..20 {
            assert_eq!(b.pick(&snap, &req, None, None), Some(1));
        }
        assert_eq!(b.pick(&snap, &req, None, Some(1)), Some(0), "avoided");
        // The fast one sends Retry-After: 5 — for 5 s it counts 1 s slower.
        e1.begin();
        e1.end(
            Duration::from_millis(5),
            Verdict::Success,
            Some(Duration::from_secs(5)),
        );
        for _ in 0..20 {
            assert_eq!(b.pick(&snap, &req, None, None), Some(0));
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.pick(&snap, &req, None, None), Some(1));
    }

    #[test]
    fn hash_is_sticky_per_key_and_balances_requests_without_one() {
        let cfg = UpstreamConfig {
            endpoints: (1..=5)
                .map(|i| format!("127.0.0.1:{i}").parse().unwrap())
                .collect(),
            balance: Balance::Hash,
            ..UpstreamConfig::default()
        };
        let s = crate::upstream::endpoint_set(&cfg, &Metrics::new().unwrap()).unwrap();
        let on = HashOn::Header(http::HeaderName::from_static("x-user"));
        let b = Balancer::new(Balance::Hash, &on, Duration::ZERO);
        let snap = s.load();
        let mut owners = std::collections::HashSet::new();
        for u in 0..50 {
            let req = request(Some(&format!("u{u}")));
            let first = b.pick(&snap, &req, None, None);
            assert_eq!(b.pick(&snap, &req, None, None), first);
            let other = b.pick(&snap, &req, None, first);
            assert!(other.is_some() && other != first, "a retry avoids it");
            owners.insert(first);
        }
        assert!(owners.len() >= 4, "{owners:?}");
        let keyless = request(None);
        let spread: std::collections::HashSet<_> = (0..5)
            .map(|_| b.pick(&snap, &keyless, None, None))
            .collect();
        assert_eq!(spread.len(), 5, "without a key: round robin");
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie(b"a=1; sid=xyz; b=2", b"sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(b"sid=", b"sid"), Some(&b""[..]));
        assert_eq!(cookie(b"sidx=1", b"sid"), None);
        assert_eq!(cookie(b"a=1", b"sid"), None);
    }
}
