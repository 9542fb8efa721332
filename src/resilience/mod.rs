//! Generic resilience middleware: load shedding, circuit breaker, retries, per-try timeout.
//!
//! Position: the upstream stack, shed → breaker → retry → per-try timeout → forward (see
//! [`crate::upstream::build`]). Knows nothing of config files, routes or sockets; each stage
//! owns its `Settings` and their defaults, and `config` fills them in. Shares the [`Outcome`]
//! classification between breaker, retry and outlier detection, and the [`Mode`] (enforce, dry
//! run, off) of the policies that can refuse: shed, breaker and outlier ejection.

pub(crate) mod adaptive;
pub(crate) mod breaker;
pub(crate) mod grpc;
pub(crate) mod retry;
pub(crate) mod shed;
pub(crate) mod timeout;

use http::StatusCode;

use crate::error::ProxyError;
use crate::http::Response;
use crate::http::grpc::{Code, CodeSet};

/// Whether a policy acts on its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `enforce`: decide and act.
    #[default]
    Enforce,
    /// `dry_run`: decide and count what would have been rejected, reject nothing.
    DryRun,
    /// `off`: decide nothing.
    Off,
}

// === impl Mode ===

impl Mode {
    /// The config spelling: `enforce`, `dry_run` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry_run",
            Mode::Off => "off",
        }
    }
}

/// How one result counts for a policy that judges upstream health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream answered, with a status the policy does not count as a failure (4xx too).
    Success,
    /// A connect error, a timeout, a reset, or a status the policy counts as a failure.
    Failure,
    /// Neither: the client's own fault (bad body, too large) or a rejection weir made above
    /// the upstream. It does not move any window.
    Ignored,
}

impl Outcome {
    /// Classifies `result` against the set of statuses that count as failures.
    pub(crate) fn of(result: &Result<Response, ProxyError>, failures: &StatusSet) -> Self {
        match result {
            Ok(resp) if failures.contains(resp.status()) => Self::Failure,
            Ok(_) => Self::Success,
            Err(e) => Self::of_error(e),
        }
    }

    /// Classifies a gRPC call that ended with `code`, against the codes that count as
    /// failures.
    pub(crate) fn of_grpc(code: Code, failures: &CodeSet) -> Self {
        if failures.contains(code) {
            Self::Failure
        } else {
            Self::Success
        }
    }

    /// Classifies an error weir got while forwarding.
    pub(crate) fn of_error(err: &ProxyError) -> Self {
        match err {
            ProxyError::UpstreamTimeout
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::NoHealthyEndpoint => Self::Failure,
            ProxyError::NoRoute
            | ProxyError::CircuitOpen { .. }
            | ProxyError::Overloaded
            | ProxyError::RateLimited { .. }
            | ProxyError::FaultInjected { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::HeadersTooLarge
            | ProxyError::PayloadTooLarge => Self::Ignored,
        }
    }
}

/// A set of HTTP status codes (100..=999) as a bitmap: `contains` is two instructions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatusSet {
    bits: [u64; 16],
}

impl StatusSet {
    /// The set of `codes`; codes outside 0..1024 are ignored (config validation rules them out).
    pub(crate) fn new(codes: &[u16]) -> Self {
        let mut bits = [0u64; 16];
        for &c in codes {
            if let Some(word) = bits.get_mut(usize::from(c / 64)) {
                *word |= 1 << (c % 64);
            }
        }
        Self { bits }
    }

    /// Whether `status` is in the set.
    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let c = status.as_u16();
        self.bits
            .get(usize::from(c / 64))
            .is_some_and(|w| w & (1 << (c % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Body;

    #[test]
    fn outcomes_follow_the_design() {
        let set = StatusSet::new(&[500, 502, 503]);
        let resp = |s: u16| {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::from_u16(s).unwrap();
            Ok(r)
        };
        assert_eq!(Outcome::of(&resp(200), &set), Outcome::Success);
        assert_eq!(Outcome::of(&resp(404), &set), Outcome::Success);
        assert_eq!(Outcome::of(&resp(429), &set), Outcome::Success);
        assert_eq!(Outcome::of(&resp(503), &set), Outcome::Failure);
        assert_eq!(Outcome::of(&resp(501), &set), Outcome::Success);
        let io = || Box::new(std::io::Error::other("x")) as crate::error::BoxError;
        assert_eq!(
            Outcome::of(&Err(ProxyError::UpstreamConnect(io())), &set),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::of(&Err(ProxyError::UpstreamTimeout), &set),
            Outcome::Failure
        );
        assert_eq!(
            Outcome::of(&Err(ProxyError::PayloadTooLarge), &set),
            Outcome::Ignored
        );
    }

    #[test]
    fn status_set_holds_exactly_its_codes() {
        let set = StatusSet::new(&[100, 502, 599, 999]);
        for c in 100..=999u16 {
            let s = StatusCode::from_u16(c).unwrap();
            assert_eq!(set.contains(s), [100, 502, 599, 999].contains(&c), "{c}");
        }
    }
}
