//! The only place a [`ProxyError`] becomes a response: status, `x-weir-error`, JSON body
//! (written by serde_json, as `/status.json` is), `Retry-After`.
//!
//! Position: called once per failed request by [`crate::server::service`]. Config: none.

use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;

use crate::error::ProxyError;
use crate::http::{Body, Response, X_WEIR_ERROR, grpc};

/// Builds weir's own answer to a request that failed with `err` on `route` / `upstream`
/// (empty strings when not known).
///
/// The body is `{"error":"<reason>","route":"<route>","upstream":"<upstream>"}`; `Retry-After`
/// is whole seconds, rounded up, at least 1.
pub(crate) fn error_response(err: &ProxyError, route: &str, upstream: &str) -> Response {
    let reason = err.reason();
    // 64: the keys, quotes and newline (38 bytes) and the longest reason (19).
    let mut body = Vec::with_capacity(64 + route.len() + upstream.len());
    let fields = ErrorBody {
        error: reason,
        route,
        upstream,
    };
    // Three strings written into a `Vec` cannot fail; should it ever, the body holds no JSON
    // rather than half of it.
    if serde_json::to_writer(&mut body, &fields).is_err() {
        body.clear();
    }
    body.push(b'\n');

    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = err.status();
    let headers = resp.headers_mut();
    headers.insert(X_WEIR_ERROR.clone(), HeaderValue::from_static(reason));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(after) = err.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// Weir's own answer to a gRPC call that failed with `err`: HTTP 200, trailers-only (an empty
/// body, so the head ends the stream), with `grpc-status` ([`ProxyError::grpc_code`]),
/// `grpc-message` (the error's text), `x-weir-error` (the reason) and, where a plain answer
/// would carry `Retry-After`, `grpc-retry-pushback-ms` (gRFC A6) with the same wait in
/// milliseconds beside it, so a client that honours pushback waits as long.
pub(crate) fn grpc_error_response(err: &ProxyError) -> Response {
    let mut resp = Response::new(Body::empty());
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(grpc::GRPC_STATUS.clone(), err.grpc_code().header_value());
    headers.insert(
        grpc::GRPC_MESSAGE.clone(),
        grpc::message_value(&err.to_string()),
    );
    headers.insert(X_WEIR_ERROR.clone(), HeaderValue::from_static(err.reason()));
    if let Some(after) = err.retry_after() {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
        headers.insert(grpc::GRPC_RETRY_PUSHBACK_MS.clone(), HeaderValue::from(ms));
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        headers.insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// The JSON error body, in this key order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    route: &'a str,
    upstream: &'a str,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;

    use http::StatusCode;

    use super::*;

    #[tokio::test]
    async fn error_becomes_status_header_and_json_body() {
        let err = ProxyError::CircuitOpen {
            retry_after: Duration::from_millis(2500),
        };
        let resp = error_response(&err, "api", "backend");
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[&X_WEIR_ERROR], "circuit-open");
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "{\"error\":\"circuit-open\",\"route\":\"api\",\"upstream\":\"backend\"}\n"
        );
    }

    #[test]
    fn a_grpc_call_gets_a_trailers_only_status_with_pushback() {
        let err = ProxyError::CircuitOpen {
            retry_after: Duration::from_millis(2500),
        };
        let resp = grpc_error_response(&err);
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(http_body::Body::is_end_stream(resp.body()));
        let h = resp.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "circuit breaker is open");
        assert_eq!(h[&X_WEIR_ERROR], "circuit-open");
        assert_eq!(h["grpc-retry-pushback-ms"], "2500");
        assert_eq!(h[RETRY_AFTER], "3");
        let resp = grpc_error_response(&ProxyError::UpstreamTimeout);
        assert_eq!(resp.headers()["grpc-status"], "4");
        assert!(resp.headers().get("grpc-retry-pushback-ms").is_none());
    }

    #[tokio::test]
    async fn names_are_escaped_and_no_retry_after_without_one() {
        let resp = error_response(&ProxyError::NoRoute, "a\"b", "");
        assert!(resp.headers().get(RETRY_AFTER).is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "{\"error\":\"no-route\",\"route\":\"a\\\"b\",\"upstream\":\"\"}\n"
        );
    }
}
