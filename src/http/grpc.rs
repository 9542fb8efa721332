//! gRPC vocabulary: what makes a request a gRPC call, its status codes, and the headers and
//! trailers that carry them (`grpc-status`, `grpc-message`, `grpc-timeout`,
//! `grpc-retry-pushback-ms`). Holds no policy: which codes are failures or retried is
//! [`crate::resilience::grpc`]'s, per upstream.
//!
//! A gRPC call is a request whose `content-type` is `application/grpc`, alone or followed by
//! `+` or `;` (`application/grpc+proto`, `application/grpc+json`), per the gRPC over HTTP/2
//! spec (`PROTOCOL-HTTP2.md`). Its outcome is `grpc-status`: in the response head when the
//! response is trailers-only (the server failed before any message), else in the trailers.
//! A stream that ends without one is `UNKNOWN`; a response that is not HTTP 200 maps by the
//! spec's HTTP → gRPC table ([`Code::from_http`]).
//!
//! Position: read by `server::service` (the request's flag, the access log's code, weir's own
//! errors as gRPC), `route::deadline` (`grpc-timeout` in), `resilience::timeout`
//! (`grpc-timeout` out), and the stages that judge outcomes. Config: none. Metrics: none.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// `grpc-status`: the call's status code, in the trailers or a trailers-only head.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message, percent-encoded.
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the call's deadline, as a count and a unit.
pub(crate) static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-retry-pushback-ms` (gRFC A6): how long a client should wait before it retries.
pub(crate) static GRPC_RETRY_PUSHBACK_MS: HeaderName =
    HeaderName::from_static("grpc-retry-pushback-ms");

/// The 17 gRPC status codes (`grpc/status.h`), by their numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    /// 0: not an error.
    Ok = 0,
    /// 1: the call was cancelled, typically by the caller.
    Cancelled = 1,
    /// 2: unknown error; also a stream that ended without a status.
    Unknown = 2,
    /// 3: the client specified an invalid argument.
    InvalidArgument = 3,
    /// 4: the deadline expired before the call could complete.
    DeadlineExceeded = 4,
    /// 5: some requested entity was not found.
    NotFound = 5,
    /// 6: the entity a client tried to create already exists.
    AlreadyExists = 6,
    /// 7: the caller may not execute the operation.
    PermissionDenied = 7,
    /// 8: some resource (a quota, memory, a message size) is exhausted.
    ResourceExhausted = 8,
    /// 9: the system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// 10: the operation was aborted (a concurrency conflict).
    Aborted = 10,
    /// 11: the operation went past the valid range.
    OutOfRange = 11,
    /// 12: the operation is not implemented or supported.
    Unimplemented = 12,
    /// 13: an internal error: an invariant of the system is broken.
    Internal = 13,
    /// 14: the service is unavailable now; retrying may help.
    Unavailable = 14,
    /// 15: unrecoverable data loss or corruption.
    DataLoss = 15,
    /// 16: the request has no valid authentication credentials.
    Unauthenticated = 16,
}

impl Code {
    /// Every code, in number order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code numbered `n`, if there is one.
    pub fn from_u8(n: u8) -> Option<Code> {
        Code::ALL.get(usize::from(n)).copied()
    }

    /// The code's number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code's name as the spec spells it (`OK`, `UNAVAILABLE`, ...): the `grpc_code` and
    /// `code` labels and the access log's `grpc_code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code by its name (`"UNAVAILABLE"`), as config may spell it.
    pub fn from_name(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The code a gRPC client assigns a response that is not HTTP 200 and carries no
    /// `grpc-status` (the spec's `http-grpc-status-mapping.md`).
    pub fn from_http(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }

    /// The `grpc-status` value of this code.
    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from(u16::from(self.as_u8()))
    }
}

/// A set of gRPC codes as a bitmap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CodeSet(u32);

impl CodeSet {
    /// The set of `codes`.
    pub(crate) fn new(codes: &[Code]) -> Self {
        Self(codes.iter().fold(0, |bits, c| bits | 1 << c.as_u8()))
    }

    /// Whether `code` is in the set.
    pub(crate) fn contains(&self, code: Code) -> bool {
        self.0 & (1 << code.as_u8()) != 0
    }
}

/// Whether a request's `content-type` value makes it a gRPC call: `application/grpc`, alone
/// or followed by `+` or `;`.
pub(crate) fn is_grpc_content_type(v: &HeaderValue) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    let v = v.as_bytes();
    v.len() >= PREFIX.len()
        && v[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
        && matches!(v.get(PREFIX.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in `headers` (a trailers-only head, or the trailers), if present. A value
/// that is not a known code reads as `UNKNOWN`, as clients read it.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get(&GRPC_STATUS)?;
    let code = std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
        .and_then(Code::from_u8);
    Some(code.unwrap_or(Code::Unknown))
}

/// The code a response head gives a gRPC call, when the head decides it: its `grpc-status`
/// (trailers-only), or the mapping of a status other than 200. `None` when the code is still to
/// come, in the trailers.
pub(crate) fn head_code(status: StatusCode, headers: &HeaderMap) -> Option<Code> {
    if status != StatusCode::OK {
        return Some(status_of(headers).unwrap_or_else(|| Code::from_http(status)));
    }
    status_of(headers)
}

/// Reads a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H` hours, `M` minutes, `S`
/// seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds). `None` when malformed.
pub(crate) fn parse_timeout(v: &HeaderValue) -> Option<Duration> {
    let v = v.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `d`: the finest unit whose count fits in 8 digits (microseconds
/// up to 100 s, then milliseconds, seconds, minutes, hours), rounded up to that unit (a few
/// microseconds left are `3u`, not `0u`, which would mean no time at all); at most 99,999,999
/// hours.
pub(crate) fn format_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, char); 5] = [
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos.div_ceil(per), unit))
        .find(|&(n, _)| n <= MAX)
        .unwrap_or((MAX, 'H'));
    // Digits and an ASCII letter: always a valid header value.
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0m"))
}

/// A `grpc-message` value: `msg` percent-encoded as the spec asks (every byte outside
/// printable ASCII, and `%`).
pub(crate) fn message_value(msg: &str) -> HeaderValue {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_and_others() {
        let is = |s: &'static str| is_grpc_content_type(&HeaderValue::from_static(s));
        assert!(is("application/grpc"));
        assert!(is("application/grpc+proto"));
        assert!(is("application/grpc+json"));
        assert!(is("Application/GRPC;charset=utf-8"));
        assert!(!is("application/grpc-web"));
        assert!(!is("application/grpcx"));
        assert!(!is("application/json"));
        assert!(!is("application/grp"));
    }

    #[test]
    fn codes_by_number_and_name() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(usize::from(c.as_u8()), i);
            assert_eq!(Code::from_name(c.as_str()), Some(*c));
            assert_eq!(Code::from_u8(c.as_u8()), Some(*c));
        }
        assert_eq!(Code::from_u8(17), None);
        let set = CodeSet::new(&[Code::Unavailable, Code::Internal]);
        assert!(set.contains(Code::Unavailable) && set.contains(Code::Internal));
        assert!(!set.contains(Code::Ok) && !set.contains(Code::Unknown));
    }

    #[test]
    fn status_from_head_and_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        assert_eq!(head_code(StatusCode::OK, &h), None);
        assert_eq!(
            head_code(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(Code::Unavailable)
        );
        assert_eq!(
            head_code(StatusCode::NOT_FOUND, &h),
            Some(Code::Unimplemented)
        );
        assert_eq!(head_code(StatusCode::IM_A_TEAPOT, &h), Some(Code::Unknown));
        h.insert(&GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status_of(&h), Some(Code::Unavailable));
        assert_eq!(head_code(StatusCode::OK, &h), Some(Code::Unavailable));
        h.insert(&GRPC_STATUS, HeaderValue::from_static("99"));
        assert_eq!(status_of(&h), Some(Code::Unknown));
        h.insert(&GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status_of(&h), Some(Code::Unknown));
    }

    #[test]
    fn timeouts_in_every_unit() {
        let p = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(p("3M"), Some(Duration::from_secs(180)));
        assert_eq!(p("4S"), Some(Duration::from_secs(4)));
        assert_eq!(p("200m"), Some(Duration::from_millis(200)));
        assert_eq!(p("150u"), Some(Duration::from_micros(150)));
        assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(p("123456789m"), None, "more than 8 digits");
        assert_eq!(p("m"), None);
        assert_eq!(p("10x"), None);
        assert_eq!(p("-1S"), None);
        assert_eq!(p(""), None);
    }

    #[test]
    fn timeouts_out_round_up_and_fit_eight_digits() {
        let f = |d: Duration| format_timeout(d).to_str().unwrap().to_owned();
        assert_eq!(f(Duration::from_millis(200)), "200000u");
        assert_eq!(f(Duration::from_nanos(1_500)), "2u");
        assert_eq!(f(Duration::from_secs(1000)), "1000000m");
        assert_eq!(f(Duration::from_secs(200_000)), "200000S");
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_secs(3),
            Duration::from_secs(86_400 * 400),
        ] {
            let v = format_timeout(d);
            let back = parse_timeout(&v).unwrap();
            assert!(back >= d, "{d:?} -> {v:?}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message_value("circuit is open"), "circuit is open");
        assert_eq!(message_value("100% é\n"), "100%25 %C3%A9%0A");
    }
}
