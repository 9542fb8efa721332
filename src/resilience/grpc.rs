//! How an upstream's gRPC calls are judged (`[upstreams.<name>.grpc]`): which status codes are
//! failures, for the circuit breaker and outlier detection, and which are retried.
//!
//! The defaults follow Envoy's gRPC `retry_on` and Linkerd's gRPC response classes:
//! - failures: `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`, the
//!   codes that say the server (or the path to it) is unwell. The others answer the caller's
//!   own request (`NOT_FOUND`, `INVALID_ARGUMENT`, `PERMISSION_DENIED`, ...), as a 4xx does,
//!   and `CANCELLED` is the caller giving up; counting those would let one bad client open the
//!   breaker for everyone.
//! - retried: `UNAVAILABLE` alone, and only when it comes trailers-only. It is the code the
//!   spec gives "the service is currently unavailable; retrying may help", and what servers
//!   send when they did not act on the call (a server shutting down, a full queue), which is
//!   what makes a retry of a non-idempotent call safe. `DEADLINE_EXCEEDED` is not retried (the
//!   time is gone), nor `RESOURCE_EXHAUSTED` (more load on an exhausted server).
//!
//! Position: read when the upstream's stack is built; the breaker, the outlier verdict of
//! [`crate::upstream::forward`] and the retry policy hold the compiled sets. Config:
//! `upstreams.<name>.grpc.failure_codes`, `retry_codes`. Metrics: none here.

use crate::http::grpc::{Code, CodeSet};

/// The gRPC classification of an upstream (`upstreams.NAME.grpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Codes that count as failures for the breaker and outlier detection; default `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` (2, 4, 13, 14, 15).
    pub failure_codes: Vec<Code>,
    /// Codes retried when they arrive trailers-only (before any message); default
    /// `UNAVAILABLE` (14).
    pub retry_codes: Vec<Code>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            failure_codes: vec![
                Code::Unknown,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unavailable,
                Code::DataLoss,
            ],
            retry_codes: vec![Code::Unavailable],
        }
    }
}

impl Settings {
    /// The failure codes as a set.
    pub(crate) fn failures(&self) -> CodeSet {
        CodeSet::new(&self.failure_codes)
    }

    /// The retried codes as a set.
    pub(crate) fn retried(&self) -> CodeSet {
        CodeSet::new(&self.retry_codes)
    }
}
