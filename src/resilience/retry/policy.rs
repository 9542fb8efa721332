//! What is safe to retry: which requests may be re-sent, and which answers call for a retry.
//!
//! Position: consulted by [`super::Retry`] after every try, before backoff, deadline and budget.
//! Config: `upstreams.<name>.retry.statuses`, `retry.idempotency_key`. Metrics: none.

use http::{HeaderMap, Method, StatusCode};

use super::Settings;
use crate::error::ProxyError;
use crate::http::grpc::{self, CodeSet};
use crate::http::{IDEMPOTENCY_KEY, Response};
use crate::resilience::StatusSet;

/// Which answers of a try are retried, and when a request may be sent twice.
#[derive(Debug)]
pub(crate) struct Policy {
    statuses: StatusSet,
    idempotency_key: bool,
    /// The gRPC codes retried when they arrive trailers-only; `upstreams.<name>.grpc`, set by
    /// [`super::RetryLayer::with_grpc`] (none until then).
    pub(super) grpc_retried: CodeSet,
}

/// What makes a try worth retrying; [`Retryable::label`] is the `reason` label of
/// `weir_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retryable {
    /// The request provably never left (connect refused or timed out, pool checkout failure,
    /// HTTP/2 REFUSED_STREAM).
    UpstreamConnect,
    /// The connection failed before the response head arrived.
    UpstreamReset,
    /// The per-try timeout expired.
    UpstreamTimeout,
    /// The upstream answered with one of the configured statuses.
    Status,
    /// A gRPC call's trailers-only status is one of the retried codes.
    GrpcStatus,
}

impl Policy {
    pub(crate) fn new(settings: &Settings) -> Self {
        Self {
            statuses: StatusSet::new(&settings.statuses),
            idempotency_key: settings.idempotency_key,
            grpc_retried: CodeSet::default(),
        }
    }

    /// Whether the request may reach the upstream twice: an idempotent method (RFC 9110 §9.2.2),
    /// or any method carrying `Idempotency-Key` when the upstream allows it.
    pub(crate) fn may_resend(&self, method: &Method, headers: &HeaderMap) -> bool {
        is_idempotent(method) || (self.idempotency_key && headers.contains_key(&IDEMPOTENCY_KEY))
    }

    /// Why the try that ended with `result` should be retried, or `None` when its answer goes
    /// back as it is. `may_resend` is [`Policy::may_resend`] of the request: without it only a
    /// request that provably never left is retried, or a gRPC call (`grpc`) whose
    /// trailers-only status is a retried code: the server says it did not act on the call
    /// (UNAVAILABLE), so a second try cannot act twice. The status of a response that has a
    /// body is in its trailers, after messages the client may already have: never retried.
    pub(crate) fn classify(
        &self,
        result: &Result<Response, ProxyError>,
        may_resend: bool,
        grpc: bool,
    ) -> Option<Retryable> {
        if grpc
            && let Ok(resp) = result
            && resp.status() == StatusCode::OK
        {
            return grpc::status_of(resp.headers())
                .filter(|c| self.grpc_retried.contains(*c))
                .map(|_| Retryable::GrpcStatus);
        }
        let reason = match result {
            Ok(resp) if self.statuses.contains(resp.status()) => Retryable::Status,
            Ok(_) => return None,
            Err(err) => match err {
                ProxyError::UpstreamConnect(_) => return Some(Retryable::UpstreamConnect),
                ProxyError::UpstreamReset(_) => Retryable::UpstreamReset,
                ProxyError::UpstreamTimeout => Retryable::UpstreamTimeout,
                // A TLS handshake failure is a certificate or configuration fault: another try
                // fails the same way and only doubles the load.
                ProxyError::UpstreamTls(_)
                | ProxyError::NoRoute
                | ProxyError::CircuitOpen { .. }
                | ProxyError::Overloaded
                | ProxyError::RateLimited { .. }
                | ProxyError::NoHealthyEndpoint
                | ProxyError::FaultInjected { .. }
                | ProxyError::BadRequest(_)
                | ProxyError::HeadersTooLarge
                | ProxyError::PayloadTooLarge => return None,
            },
        };
        may_resend.then_some(reason)
    }
}

impl Retryable {
    /// The `reason` label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::UpstreamConnect => "upstream-connect",
            Self::UpstreamReset => "upstream-reset",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::Status => "status",
            Self::GrpcStatus => "grpc-status",
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::error::BoxError;
    use crate::http::Body;

    fn io() -> BoxError {
        Box::new(std::io::Error::other("x"))
    }

    fn status(code: u16) -> Result<Response, ProxyError> {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::from_u16(code).unwrap();
        Ok(r)
    }

    fn policy(idempotency_key: bool) -> Policy {
        Policy::new(&Settings {
            idempotency_key,
            ..Settings::default()
        })
    }

    #[test]
    fn idempotent_methods_and_keys() {
        let p = policy(false);
        let none = HeaderMap::new();
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(
                p.may_resend(&Method::from_bytes(m.as_bytes()).unwrap(), &none),
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(
                !p.may_resend(&Method::from_bytes(m.as_bytes()).unwrap(), &none),
                "{m}"
            );
        }
        let mut keyed = HeaderMap::new();
        keyed.insert(&IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        assert!(!p.may_resend(&Method::POST, &keyed));
        assert!(policy(true).may_resend(&Method::POST, &keyed));
        assert!(!policy(true).may_resend(&Method::POST, &none));
    }

    #[test]
    fn what_is_retried() {
        let p = policy(false);
        // (answer, reason when the request may be re-sent, reason when it may not)
        type Case = (
            Result<Response, ProxyError>,
            Option<Retryable>,
            Option<Retryable>,
        );
        let cases: Vec<Case> = vec![
            (status(200), None, None),
            (status(500), None, None),
            (status(503), Some(Retryable::Status), None),
            (status(502), Some(Retryable::Status), None),
            (
                Err(ProxyError::UpstreamConnect(io())),
                Some(Retryable::UpstreamConnect),
                Some(Retryable::UpstreamConnect),
            ),
            (
                Err(ProxyError::UpstreamReset(io())),
                Some(Retryable::UpstreamReset),
                None,
            ),
            (
                Err(ProxyError::UpstreamTimeout),
                Some(Retryable::UpstreamTimeout),
                None,
            ),
            (Err(ProxyError::UpstreamTls(io())), None, None),
            (Err(ProxyError::BadRequest("x")), None, None),
            (Err(ProxyError::PayloadTooLarge), None, None),
            (Err(ProxyError::Overloaded), None, None),
            (
                Err(ProxyError::CircuitOpen {
                    retry_after: Duration::from_secs(1),
                }),
                None,
                None,
            ),
        ];
        for (result, safe, unsafe_) in cases {
            assert_eq!(p.classify(&result, true, false), safe, "{result:?}");
            assert_eq!(p.classify(&result, false, false), unsafe_, "{result:?}");
        }
    }

    #[test]
    fn a_grpc_call_is_retried_on_a_trailers_only_retried_code_whatever_its_method() {
        let mut p = policy(false);
        p.grpc_retried = crate::resilience::grpc::Settings::default().retried();
        let grpc = |code: &'static str| {
            let mut r = Response::new(Body::empty());
            r.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(code));
            Ok(r)
        };
        for may_resend in [true, false] {
            assert_eq!(
                p.classify(&grpc("14"), may_resend, true),
                Some(Retryable::GrpcStatus)
            );
            for code in ["0", "2", "4", "8", "13"] {
                assert_eq!(p.classify(&grpc(code), may_resend, true), None, "{code}");
            }
            // No status in the head: it comes in the trailers, after the body.
            assert_eq!(p.classify(&status(200), may_resend, true), None);
        }
        // Not a gRPC call: a grpc-status header means nothing.
        assert_eq!(p.classify(&grpc("14"), true, false), None);
        // A gRPC call answered by a proxy with HTTP 503 is retried as any 503 is.
        assert_eq!(
            p.classify(&status(503), true, true),
            Some(Retryable::Status)
        );
        assert_eq!(p.classify(&status(503), false, true), None);
    }
}
