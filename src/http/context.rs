//! Request identity (the `x-request-id` and W3C `traceparent` rules), [`RequestContext`], the
//! per-request facts the stages share, and the [`Priority`] it carries.
//!
//! Position: applied by [`crate::server::service`] before routing, to the request sent upstream
//! and (the request id) to the response. Config: `routes[N].priority` (read by `shed`).
//! Headers: `x-request-id`, `traceparent`, `x-weir-priority`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::HeaderValue;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::time::Instant;

/// What the stages of one request share, stored once in the request's extensions by
/// [`crate::server::service`] when the route target's stack reads it (every upstream target;
/// see [`crate::route::Target::context`]). Cloned with the extensions when a
/// retry builds the next try. Each field says who writes it and who reads it; no other stage
/// touches it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The downstream peer's address. Written by `server::service`; read by `route::ratelimit`
    /// (keys by `client_ip`) and `upstream::forward` (the balancer's `hash_on = "client_ip"`).
    pub client: IpAddr,
    /// The route's name. Written by `server::service`; read by `resilience::retry` (the
    /// `route` label of its counters).
    pub route: Arc<str>,
    /// The route's priority, lowered by `x-weir-priority` when the request asks. Written by
    /// `server::service`; read by `resilience::shed` (shares and queue order).
    pub priority: Priority,
    /// When the route's total deadline expires; `None` when the route has none. Written by
    /// `route::deadline` (the sooner of the route's `timeout` and an inbound
    /// `x-weir-deadline-ms`); read by `resilience::retry` (no backoff past it),
    /// `resilience::timeout` (a try ends by it; the `x-weir-deadline-ms` sent upstream) and
    /// `upstream::forward` (a try's end when it has no `try_end`).
    pub deadline: Option<Instant>,
    /// When the current try's time is up: the sooner of its per-try timeout and `deadline`.
    /// Written by `resilience::timeout` before each try; read by `upstream::forward` (how long
    /// it waits for the response head, and whether a dropped try counts as `upstream-timeout`).
    pub try_end: Option<Instant>,
    /// The endpoint index the last try went to; present only when a retry may follow. Created
    /// by `resilience::retry` (its request template), written by `upstream::forward` after it
    /// picks, and read by `upstream::forward` on the next try, which avoids that endpoint when
    /// another is available.
    pub last_endpoint: Option<Arc<AtomicUsize>>,
    /// Whether the request is a gRPC call (`content-type: application/grpc*`). Written by
    /// `server::service` from its scan of the head; read by `route::deadline` (`grpc-timeout`
    /// in), `resilience::timeout` (`grpc-timeout` out), and the stages that judge outcomes by
    /// `grpc-status`: `resilience::breaker`, `resilience::retry`, `upstream::forward`.
    pub grpc: bool,
}

impl RequestContext {
    /// The context of a request from `client` on `route`, with no deadline yet.
    pub fn new(client: IpAddr, route: Arc<str>, priority: Priority) -> Self {
        Self {
            client,
            route,
            priority,
            deadline: None,
            try_end: None,
            last_endpoint: None,
            grpc: false,
        }
    }
}

/// Criticality of a request: under pressure `Sheddable` goes first and `Critical` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// `critical`: shed last.
    Critical,
    /// `default`.
    #[default]
    Default,
    /// `sheddable`: shed first.
    Sheddable,
}

// === impl Priority ===

impl Priority {
    /// The config spelling: `critical`, `default` or `sheddable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Sheddable => "sheddable",
        }
    }

    /// 0 for critical, 1 for default, 2 for sheddable: higher is shed sooner.
    pub fn rank(self) -> u8 {
        match self {
            Priority::Critical => 0,
            Priority::Default => 1,
            Priority::Sheddable => 2,
        }
    }

    /// The priority a request asks for with `x-weir-priority`, which may lower the route's
    /// priority but never raise it. An unknown value changes nothing.
    pub fn lowered_by(self, asked: &[u8]) -> Self {
        let asked = match asked {
            b"critical" => Priority::Critical,
            b"default" => Priority::Default,
            b"sheddable" => Priority::Sheddable,
            _ => return self,
        };
        if asked.rank() > self.rank() {
            asked
        } else {
            self
        }
    }
}

/// The request id to use: the inbound `x-request-id` when it is present and sane (1..=200
/// visible ASCII bytes), else a new random UUID (version 4).
pub fn request_id(inbound: Option<&HeaderValue>) -> HeaderValue {
    match inbound {
        Some(v)
            if (1..=200).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic) =>
        {
            v.clone()
        }
        _ => new_request_id(),
    }
}

/// The `traceparent` to send upstream: the inbound trace id and flags with a new parent (span)
/// id for this hop; a new trace (flags `00`, not sampled) when the inbound one is absent or
/// malformed.
pub fn traceparent(inbound: Option<&HeaderValue>) -> HeaderValue {
    let mut span = [0u8; 8];
    with_fast_rng(|r| r.fill_bytes(&mut span));
    let mut out = [0u8; 55];
    match inbound.and_then(|v| parse_traceparent(v.as_bytes())) {
        Some((trace_id, flags)) => {
            out[..3].copy_from_slice(b"00-");
            out[3..35].copy_from_slice(trace_id);
            out[35] = b'-';
            hex_into(&span, &mut out[36..52]);
            out[52] = b'-';
            out[53..55].copy_from_slice(flags);
        }
        None => {
            let mut trace = [0u8; 16];
            with_fast_rng(|r| r.fill_bytes(&mut trace));
            out[..3].copy_from_slice(b"00-");
            hex_into(&trace, &mut out[3..35]);
            out[35] = b'-';
            hex_into(&span, &mut out[36..52]);
            out[52..55].copy_from_slice(b"-00");
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

thread_local! {
    /// Ids and p2c draws need fast randomness that does not collide, not secret: a small
    /// generator per thread, seeded once from the OS, instead of a cryptographic one per draw.
    static FAST_RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
}

/// Runs `f` with this thread's fast generator (a fresh one if it is already in use).
pub(crate) fn with_fast_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    FAST_RNG.with(|rng| match rng.try_borrow_mut() {
        Ok(mut rng) => f(&mut rng),
        Err(_) => f(&mut SmallRng::from_os_rng()),
    })
}

fn new_request_id() -> HeaderValue {
    let mut b = [0u8; 16];
    with_fast_rng(|r| r.fill_bytes(&mut b));
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut out = [0u8; 36];
    let mut at = 0;
    for (i, group) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]]
        .iter()
        .enumerate()
    {
        if i > 0 {
            out[at] = b'-';
            at += 1;
        }
        hex_into(group, &mut out[at..at + group.len() * 2]);
        at += group.len() * 2;
    }
    // Shared from the start: the id goes upstream, into the response and into the access log,
    // and a value copied from a slice allocates again when first cloned (2 allocations per
    // request where this is 1).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; all-zero ids are invalid.
fn parse_traceparent(v: &[u8]) -> Option<(&[u8], &[u8])> {
    if v.len() != 55 || v.get(..3)? != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    (hex(trace) && hex(parent) && hex(flags) && !zero(trace) && !zero(parent))
        .then_some((trace, flags))
}

fn hex_into(src: &[u8], dst: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_kept_or_generated_as_uuid_v4() {
        let given = HeaderValue::from_static("abc-123");
        assert_eq!(request_id(Some(&given)), given);
        let new = request_id(None);
        let s = new.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(request_id(None), new);
        let bad = HeaderValue::from_static("has space");
        assert_ne!(request_id(Some(&bad)), bad);
    }

    #[test]
    fn traceparent_keeps_trace_and_flags_with_new_span() {
        let inbound =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let out = traceparent(Some(&inbound));
        let s = out.to_str().unwrap();
        assert_eq!(&s[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_ne!(&s[36..52], "00f067aa0ba902b7");
        assert!(s.ends_with("-01"));
        assert!(parse_traceparent(s.as_bytes()).is_some());
    }

    #[test]
    fn traceparent_starts_a_trace_when_missing_or_bad() {
        for inbound in [None, Some(HeaderValue::from_static("garbage"))] {
            let out = traceparent(inbound.as_ref());
            let s = out.to_str().unwrap();
            assert!(parse_traceparent(s.as_bytes()).is_some(), "{s}");
            assert!(s.ends_with("-00"));
        }
        let zero =
            HeaderValue::from_static("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
        assert!(
            !traceparent(Some(&zero))
                .to_str()
                .unwrap()
                .contains("0000000000000000000")
        );
    }
}
