//! `ProxyError`: every way weir itself can fail a request, each with its `x-weir-error` reason.
//!
//! Position: the `Error` type of every service on the request path; turned into a response only
//! by [`crate::http::respond`]. Reasons are the closed set of DESIGN §2 and label `reason`.

use std::time::Duration;

use http::StatusCode;

use crate::http::grpc::Code;

/// A boxed error from a body, a connector or hyper.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A request weir answers itself instead of with an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The upstream's circuit breaker is open; it stays open for `retry_after`.
    #[error("circuit breaker is open")]
    CircuitOpen {
        /// How long the breaker stays open.
        retry_after: Duration,
    },
    /// Load shedding refused the request.
    #[error("upstream is overloaded")]
    Overloaded,
    /// The route's rate limit refused the request.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When a token is available again.
        retry_after: Duration,
    },
    /// A deadline or a per-try timeout expired before the upstream answered.
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// No connection to the upstream could be made: the request never left.
    #[error("could not connect to the upstream")]
    UpstreamConnect(#[source] BoxError),
    /// The upstream connection failed after the request may have been sent.
    #[error("upstream connection failed")]
    UpstreamReset(#[source] BoxError),
    /// Every endpoint of the upstream is unavailable.
    #[error("no healthy endpoint")]
    NoHealthyEndpoint,
    /// Fault injection aborted the request with this status.
    #[error("fault injected")]
    FaultInjected {
        /// The status to answer with.
        status: StatusCode,
    },
    /// The TLS handshake with the upstream failed.
    #[error("upstream TLS handshake failed")]
    UpstreamTls(#[source] BoxError),
    /// The request is malformed (ambiguous framing, bad header value, ...).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head exceeds the listener's header size or count limit.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The request body exceeds the listener's `max_body_bytes`.
    #[error("request body too large")]
    PayloadTooLarge,
}

impl ProxyError {
    /// The `x-weir-error` token, also the `reason` label and access-log field.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::CircuitOpen { .. } => "circuit-open",
            Self::Overloaded => "overloaded",
            Self::RateLimited { .. } => "rate-limited",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::UpstreamConnect(_) => "upstream-connect",
            Self::UpstreamReset(_) => "upstream-reset",
            Self::NoHealthyEndpoint => "no-healthy-endpoint",
            Self::FaultInjected { .. } => "fault-injected",
            Self::UpstreamTls(_) => "upstream-tls",
            Self::BadRequest(_) => "bad-request",
            Self::HeadersTooLarge => "headers-too-large",
            Self::PayloadTooLarge => "payload-too-large",
        }
    }

    /// The status weir answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::CircuitOpen { .. } | Self::Overloaded | Self::NoHealthyEndpoint => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamConnect(_) | Self::UpstreamReset(_) | Self::UpstreamTls(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::FaultInjected { status } => *status,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The gRPC status a gRPC client gets for this error (the README's reason → code table):
    /// `UNAVAILABLE` where another try later or elsewhere may succeed, `DEADLINE_EXCEEDED` for
    /// time that ran out, `RESOURCE_EXHAUSTED` for a limit the call went past, `UNIMPLEMENTED`
    /// for a method no route serves, `INTERNAL` for a request weir could not read, and for an
    /// injected fault the gRPC mapping of its status.
    pub fn grpc_code(&self) -> Code {
        match self {
            Self::NoRoute => Code::Unimplemented,
            Self::CircuitOpen { .. }
            | Self::Overloaded
            | Self::NoHealthyEndpoint
            | Self::UpstreamConnect(_)
            | Self::UpstreamReset(_)
            | Self::UpstreamTls(_) => Code::Unavailable,
            Self::UpstreamTimeout => Code::DeadlineExceeded,
            Self::RateLimited { .. } | Self::HeadersTooLarge | Self::PayloadTooLarge => {
                Code::ResourceExhausted
            }
            Self::FaultInjected { status } => Code::from_http(*status),
            Self::BadRequest(_) => Code::Internal,
        }
    }

    /// The `Retry-After` to send, where the error has one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after } | Self::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            Self::Overloaded => Some(Duration::from_secs(1)),
            Self::NoRoute
            | Self::UpstreamTimeout
            | Self::UpstreamConnect(_)
            | Self::UpstreamReset(_)
            | Self::NoHealthyEndpoint
            | Self::FaultInjected { .. }
            | Self::UpstreamTls(_)
            | Self::BadRequest(_)
            | Self::HeadersTooLarge
            | Self::PayloadTooLarge => None,
        }
    }
}

/// True when `E` is `err` or somewhere in its chain of sources (see [`cause`]).
pub(crate) fn caused_by<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    cause::<E>(err).is_some()
}

/// The first `E` in the chain of `err` and its sources. Looks inside `io::Error`s too, whose
/// `source()` skips the error they wrap. The one walk of an error chain in weir.
pub(crate) fn cause<'e, E: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_statuses_follow_the_design() {
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        let cases: Vec<(ProxyError, &str, u16)> = vec![
            (ProxyError::NoRoute, "no-route", 404),
            (
                ProxyError::CircuitOpen {
                    retry_after: Duration::from_secs(3),
                },
                "circuit-open",
                503,
            ),
            (ProxyError::Overloaded, "overloaded", 503),
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
                "rate-limited",
                429,
            ),
            (ProxyError::UpstreamTimeout, "upstream-timeout", 504),
            (ProxyError::UpstreamConnect(io()), "upstream-connect", 502),
            (ProxyError::UpstreamReset(io()), "upstream-reset", 502),
            (ProxyError::NoHealthyEndpoint, "no-healthy-endpoint", 503),
            (
                ProxyError::FaultInjected {
                    status: StatusCode::IM_A_TEAPOT,
                },
                "fault-injected",
                418,
            ),
            (ProxyError::UpstreamTls(io()), "upstream-tls", 502),
            (ProxyError::BadRequest("x"), "bad-request", 400),
            (ProxyError::HeadersTooLarge, "headers-too-large", 431),
            (ProxyError::PayloadTooLarge, "payload-too-large", 413),
        ];
        for (err, reason, status) in cases {
            assert_eq!(err.reason(), reason);
            assert_eq!(err.status().as_u16(), status, "{reason}");
        }
    }

    #[test]
    fn grpc_codes_follow_the_readme_table() {
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        let after = Duration::from_secs(1);
        let cases: Vec<(ProxyError, Code)> = vec![
            (ProxyError::NoRoute, Code::Unimplemented),
            (
                ProxyError::CircuitOpen { retry_after: after },
                Code::Unavailable,
            ),
            (ProxyError::Overloaded, Code::Unavailable),
            (
                ProxyError::RateLimited { retry_after: after },
                Code::ResourceExhausted,
            ),
            (ProxyError::UpstreamTimeout, Code::DeadlineExceeded),
            (ProxyError::UpstreamConnect(io()), Code::Unavailable),
            (ProxyError::UpstreamReset(io()), Code::Unavailable),
            (ProxyError::NoHealthyEndpoint, Code::Unavailable),
            (
                ProxyError::FaultInjected {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                },
                Code::Unavailable,
            ),
            (
                ProxyError::FaultInjected {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                },
                Code::Unknown,
            ),
            (ProxyError::UpstreamTls(io()), Code::Unavailable),
            (ProxyError::BadRequest("x"), Code::Internal),
            (ProxyError::HeadersTooLarge, Code::ResourceExhausted),
            (ProxyError::PayloadTooLarge, Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            assert_eq!(err.grpc_code(), code, "{}", err.reason());
        }
    }

    #[test]
    fn an_overload_asks_for_a_retry_later_and_a_timeout_does_not() {
        assert_eq!(
            ProxyError::Overloaded.retry_after(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(ProxyError::UpstreamTimeout.retry_after(), None);
    }
}
