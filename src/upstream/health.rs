//! Active health checks (`[upstreams.<name>.health]`): every `interval` (± 10 % jitter, so
//! many weirs do not check in step) each endpoint gets a probe through its own connection
//! handle, bounded by `timeout` (reading the answer included). `unhealthy_threshold` failures
//! in a row take the endpoint out; `healthy_threshold` passes in a row bring it back, ramping
//! (see [`crate::upstream::endpoints`]). Endpoints start healthy and serve until the checks say
//! otherwise.
//!
//! The probe is `GET path` by default: a 2xx passes; anything else, an error or the timeout
//! fails.
//!
//! With `grpc = true` it is the standard gRPC health check (`grpc/health/v1/health.proto`): a
//! unary `POST /grpc.health.v1.Health/Check` with `content-type: application/grpc`,
//! `te: trailers`, `grpc-timeout` set to `timeout`, and one uncompressed message,
//! `HealthCheckRequest { service = grpc_service }` (`""` asks about the server as a whole). It
//! passes only when the HTTP status is 200, the call's `grpc-status` (in the trailers, or in a
//! trailers-only head) is 0 (`OK`), and the first response message is a `HealthCheckResponse`
//! whose `status` is `SERVING` (1). `NOT_SERVING`, `SERVICE_UNKNOWN`, an unset status, any other
//! `grpc-status` (`NOT_FOUND` for a service the server does not know, `UNIMPLEMENTED` for a
//! server without the health service), a missing `grpc-status`, a compressed or malformed
//! message, an error and the timeout fail. gRPC needs HTTP/2: config validation requires
//! `protocol = "http2"` with `grpc = true`.
//!
//! The two messages are encoded and decoded here by hand. Each has a single field (a string
//! out, an enum back), that is a tag byte and a varint, while a protobuf runtime and generated
//! code would be one more dependency in the proxy's binary for the sake of the check alone.
//! Unknown fields of the response are skipped by their wire type, as a protobuf parser skips
//! them, so fields a newer server adds do not fail the check.
//!
//! Position: a background task per upstream; it writes the verdict atomics of the endpoint
//! set and never touches the request path. It ends when the upstream is gone. Config:
//! `upstreams.<name>.health`. Metrics: `weir_endpoint_healthy{upstream,endpoint}` (set by the
//! endpoint set).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::join_all;
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use rand::Rng;

use crate::http::grpc::{self, Code, GRPC_TIMEOUT};
use crate::http::{Body, Request};
use crate::upstream::endpoints::{Endpoint, WeakEndpointSet};

/// Active health checks of an upstream (`upstreams.NAME.health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Path of the HTTP GET probe; default `/healthz`.
    pub path: String,
    /// Time between probes of one endpoint; default 5s.
    pub interval: Duration,
    /// Timeout of one probe; default 1s.
    pub timeout: Duration,
    /// Consecutive successes that make an endpoint healthy; default 2.
    pub healthy_threshold: u32,
    /// Consecutive failures that make an endpoint unhealthy; default 3.
    pub unhealthy_threshold: u32,
    /// Whether the probe is the standard gRPC health check (`grpc.health.v1.Health/Check`)
    /// instead of `GET path`; default false.
    pub grpc: bool,
    /// The service the gRPC check asks about; default `""`, the server as a whole.
    pub grpc_service: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            path: String::from("/healthz"),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            grpc: false,
            grpc_service: String::new(),
        }
    }
}

/// The most of a check's response body read (so the connection can be reused).
const MAX_BODY: usize = 64 * 1024;

/// Starts the checks of an upstream's endpoint set; the task ends with the set.
pub(crate) fn spawn(set: WeakEndpointSet, settings: Settings) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(run(set, settings));
    }
}

/// Consecutive passes and failures of one endpoint.
#[derive(Default, Clone, Copy)]
struct Streak {
    passes: u32,
    failures: u32,
}

async fn run(set: WeakEndpointSet, s: Settings) {
    let mut streaks: HashMap<String, Streak> = HashMap::new();
    let Some(stop) = set.upgrade().map(|s| s.stopped()) else {
        return;
    };
    loop {
        let Some(live) = set.upgrade() else { return };
        let snap = live.load_full();
        let results = join_all(snap.endpoints().iter().map(|e| check(e, &s))).await;
        let mut kept = HashMap::with_capacity(results.len());
        for (e, passed) in snap.endpoints().iter().zip(results) {
            let key = e.addr().to_string();
            let mut st = streaks.get(&key).copied().unwrap_or_default();
            if passed {
                st.passes = st.passes.saturating_add(1);
                st.failures = 0;
            } else {
                st.failures = st.failures.saturating_add(1);
                st.passes = 0;
            }
            let failing = e.check_failing();
            if !failing && st.failures >= s.unhealthy_threshold.max(1) {
                if e.set_check_failing(true) {
                    tracing::warn!(upstream = %live.name(), endpoint = %e.addr(), "health checks failing: endpoint out");
                    live.check_changed(e, true);
                }
            } else if failing
                && st.passes >= s.healthy_threshold.max(1)
                && e.set_check_failing(false)
            {
                tracing::info!(upstream = %live.name(), endpoint = %e.addr(), "health checks passing: endpoint back");
                live.check_changed(e, false);
            }
            kept.insert(key, st);
        }
        streaks = kept;
        drop(snap);
        drop(live);
        if stop
            .run_until_cancelled(tokio::time::sleep(jittered(s.interval)))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// One check of endpoint `e`: true when it passed within the timeout (see the module doc). The
/// endpoint's connection sets `Host` (or `:authority`) to its address.
async fn check(e: &Arc<Endpoint>, s: &Settings) -> bool {
    let req = if s.grpc {
        grpc_probe(&s.grpc_service, s.timeout)
    } else {
        match http_probe(&s.path) {
            Some(req) => req,
            None => return false,
        }
    };
    let exchange = async {
        let resp = e.conn().send(req).ok()?.await.ok()?;
        let (head, body) = resp.into_parts();
        // Read a small body to its end so the connection goes back to the pool.
        let body = http_body_util::Limited::new(body, MAX_BODY).collect().await;
        if s.grpc {
            let body = body.ok()?;
            let trailers = body.trailers().cloned();
            Some(grpc_passes(
                head.status,
                &head.headers,
                &body.to_bytes(),
                trailers.as_ref(),
            ))
        } else {
            Some(head.status.is_success())
        }
    };
    matches!(
        tokio::time::timeout(s.timeout, exchange).await,
        Ok(Some(true))
    )
}

/// `GET path`; `None` when `path` is not a request target.
fn http_probe(path: &str) -> Option<Request> {
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = path.parse().ok()?;
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    Some(req)
}

/// The `user-agent` of every probe.
const USER_AGENT_VALUE: &str = "weir-health-check";

/// The gRPC health check's method.
const GRPC_CHECK: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// `POST /grpc.health.v1.Health/Check` asking about `service`, with `timeout` as its deadline.
fn grpc_probe(service: &str, timeout: Duration) -> Request {
    let mut req = Request::new(Body::full(grpc_frame(&encode_request(service))));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_static(GRPC_CHECK);
    let h = req.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(TE, HeaderValue::from_static("trailers"));
    h.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    h.insert(&GRPC_TIMEOUT, grpc::format_timeout(timeout));
    req
}

/// Whether a health check's answer passes: HTTP 200, `grpc-status` 0 (the trailers', else the
/// trailers-only head's), and a first message that says `SERVING`.
fn grpc_passes(
    status: StatusCode,
    head: &HeaderMap,
    body: &[u8],
    trailers: Option<&HeaderMap>,
) -> bool {
    let code = trailers
        .and_then(grpc::status_of)
        .or_else(|| grpc::status_of(head));
    status == StatusCode::OK
        && code == Some(Code::Ok)
        && first_message(body)
            .and_then(decode_response)
            .is_some_and(|s| s == SERVING)
}

/// A gRPC length-prefixed message: compressed-flag 0, the length as 4 bytes big-endian, then
/// `msg`.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + msg.len());
    out.put_u8(0);
    // A health check request is a service name: far below 4 GiB.
    out.put_u32(u32::try_from(msg.len()).unwrap_or(u32::MAX));
    out.put_slice(msg);
    out.freeze()
}

/// The first message of a gRPC body; `None` when the body holds no whole message or the
/// message is compressed (the probe offers no `grpc-accept-encoding`, so a server must not).
fn first_message(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 {
        return None;
    }
    let len: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len)).ok()?;
    rest.get(4..)?.get(..len)
}

/// `HealthCheckRequest { string service = 1; }`: field 1, wire type 2 (tag byte `0x0a`), its
/// length as a varint, the name. An empty name is the field's default, which proto3 leaves out.
fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 11);
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, u64::try_from(service.len()).unwrap_or(u64::MAX));
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// The `status` of `HealthCheckResponse { ServingStatus status = 1; }`: field 1, a varint; 0
/// (`UNKNOWN`) when absent, the last one when repeated (as protobuf reads a scalar). Other
/// fields are skipped by wire type. `None` when `msg` is malformed: a truncated field, a varint
/// over 10 bytes, field number 0, `status` with a wire type other than varint, or a group
/// (wire types 3 and 4, which proto3 does not use).
fn decode_response(msg: &[u8]) -> Option<u64> {
    let mut rest = msg;
    let mut status = 0;
    while !rest.is_empty() {
        let tag = take_varint(&mut rest)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 0 {
            return None;
        }
        match (field, wire) {
            (1, 0) => status = take_varint(&mut rest)?,
            (1, _) => return None,
            (_, 0) => {
                take_varint(&mut rest)?;
            }
            (_, 1) => skip(&mut rest, 8)?,
            (_, 2) => {
                let len = usize::try_from(take_varint(&mut rest)?).ok()?;
                skip(&mut rest, len)?;
            }
            (_, 5) => skip(&mut rest, 4)?,
            _ => return None,
        }
    }
    Some(status)
}

/// Appends `v` as a protobuf varint: 7 bits a byte, low first, the high bit set on all but the
/// last.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint off the front of `buf`; `None` when it is cut off or longer than 10 bytes.
fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Some(v);
        }
    }
    None
}

/// Drops `n` bytes off the front of `buf`; `None` when it holds fewer.
fn skip(buf: &mut &[u8], n: usize) -> Option<()> {
    *buf = buf.get(n..)?;
    Some(())
}

/// `interval` ± 10 %.
fn jittered(interval: Duration) -> Duration {
    let f = rand::rng().random_range(0.9..=1.1);
    interval.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `HealthCheckResponse` frame saying `status`.
    fn answer(status: u8) -> Bytes {
        grpc_frame(&[0x08, status])
    }

    fn ok_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert(&grpc::GRPC_STATUS, Code::Ok.header_value());
        t
    }

    #[test]
    fn requests_are_one_uncompressed_message() {
        assert_eq!(encode_request(""), b"");
        assert_eq!(
            encode_request("weir.test.Echo"),
            b"\x0a\x0eweir.test.Echo".to_vec()
        );
        let long = "s".repeat(300);
        let msg = encode_request(&long);
        // 300 = 0b10_0101100: 0xac, 0x02.
        assert_eq!(&msg[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(&msg[3..], long.as_bytes());
        assert_eq!(&grpc_frame(b"")[..], &[0, 0, 0, 0, 0]);
        let frame = grpc_frame(&msg);
        assert_eq!(&frame[..5], &[0, 0, 0, 1, 47]);
        assert_eq!(first_message(&frame), Some(&msg[..]));
    }

    #[test]
    fn the_probe_is_a_grpc_post() {
        let req = grpc_probe("svc", Duration::from_millis(200));
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/grpc.health.v1.Health/Check");
        let h = req.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[TE], "trailers");
        assert_eq!(h[USER_AGENT], "weir-health-check");
        assert_eq!(h[&GRPC_TIMEOUT], "200000u");
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut buf = &out[..];
            assert_eq!(take_varint(&mut buf), Some(v), "{out:?}");
            assert!(buf.is_empty());
        }
        assert_eq!(take_varint(&mut &[0x80, 0x80][..]), None, "cut off");
        assert_eq!(take_varint(&mut &[0xff; 11][..]), None, "over 10 bytes");
    }

    #[test]
    fn responses_decode_to_their_status() {
        assert_eq!(decode_response(&[0x08, 0x01]), Some(SERVING));
        assert_eq!(decode_response(&[0x08, 0x02]), Some(2), "NOT_SERVING");
        assert_eq!(decode_response(&[0x08, 0x03]), Some(3), "SERVICE_UNKNOWN");
        assert_eq!(decode_response(&[]), Some(0), "unset: UNKNOWN");
        assert_eq!(
            decode_response(&[0x08, 0x02, 0x08, 0x01]),
            Some(1),
            "last wins"
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut msg = vec![
            0x10, 0x96, 0x01, // field 2, varint 150
            0x19, 1, 2, 3, 4, 5, 6, 7, 8, // field 3, fixed64
            0x22, 0x03, b'a', b'b', b'c', // field 4, 3 bytes
            0x2d, 1, 2, 3, 4, // field 5, fixed32
            0x08, 0x01, // status SERVING
        ];
        // Field 2000 (a two-byte tag), varint.
        msg.extend_from_slice(&[0x80, 0x7d, 0x05]);
        assert_eq!(decode_response(&msg), Some(SERVING));
        // A length-delimited field that holds what looks like a status is not one.
        assert_eq!(decode_response(&[0x22, 0x02, 0x08, 0x01]), Some(0));
    }

    #[test]
    fn malformed_responses_do_not_decode() {
        for bad in [
            &[0x08][..],         // status without its value
            &[0x08, 0x81],       // status varint cut off
            &[0x19, 1, 2, 3],    // fixed64 cut off
            &[0x22, 0x05, b'a'], // length beyond the message
            &[0x2d, 1, 2],       // fixed32 cut off
            &[0x0a, 0x01, 0x01], // status with the wrong wire type
            &[0x00, 0x01],       // field number 0
            &[0x1b, 0x1c],       // a group
            &[0x16, 0x01],       // wire type 6
            &[
                0x22, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert_eq!(decode_response(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn frames_must_be_whole_and_uncompressed() {
        let frame = answer(1);
        assert_eq!(first_message(&frame), Some(&[0x08, 0x01][..]));
        for n in 0..frame.len() {
            assert_eq!(first_message(&frame[..n]), None, "cut at {n}");
        }
        let mut compressed = frame.to_vec();
        compressed[0] = 1;
        assert_eq!(first_message(&compressed), None);
        // Only the first of two messages counts.
        let two = [&answer(1)[..], &answer(2)[..]].concat();
        assert_eq!(first_message(&two), Some(&[0x08, 0x01][..]));
    }

    #[test]
    fn only_ok_and_serving_passes() {
        let ok = StatusCode::OK;
        let empty = HeaderMap::new();
        let t = ok_trailers();
        assert!(grpc_passes(ok, &empty, &answer(1), Some(&t)));
        assert!(
            !grpc_passes(ok, &empty, &answer(2), Some(&t)),
            "NOT_SERVING"
        );
        assert!(
            !grpc_passes(ok, &empty, &answer(3), Some(&t)),
            "SERVICE_UNKNOWN"
        );
        assert!(!grpc_passes(ok, &empty, &answer(0), Some(&t)), "UNKNOWN");
        assert!(
            !grpc_passes(ok, &empty, &grpc_frame(&[]), Some(&t)),
            "unset"
        );
        assert!(!grpc_passes(ok, &empty, &[], Some(&t)), "no message");
        assert!(
            !grpc_passes(ok, &empty, &answer(1)[..6], Some(&t)),
            "cut off"
        );
        assert!(
            !grpc_passes(
                StatusCode::SERVICE_UNAVAILABLE,
                &empty,
                &answer(1),
                Some(&t)
            ),
            "HTTP 503"
        );
        assert!(!grpc_passes(ok, &empty, &answer(1), None), "no grpc-status");
        let mut unavailable = HeaderMap::new();
        unavailable.insert(&grpc::GRPC_STATUS, Code::Unavailable.header_value());
        assert!(!grpc_passes(ok, &empty, &answer(1), Some(&unavailable)));
        // Trailers-only: the status in the head, no message.
        let mut not_found = HeaderMap::new();
        not_found.insert(&grpc::GRPC_STATUS, Code::NotFound.header_value());
        assert!(!grpc_passes(ok, &not_found, &[], None));
        // The trailers' status decides over the head's.
        assert!(grpc_passes(ok, &not_found, &answer(1), Some(&t)));
        assert!(!grpc_passes(ok, &t, &answer(1), Some(&unavailable)));
    }
}
