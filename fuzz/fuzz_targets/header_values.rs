//! The header values weir interprets, as untrusted bytes: `x-weir-deadline-ms`,
//! `x-weir-priority`, `x-weir-fault-abort`, `x-weir-fault-delay`, `Retry-After`, `traceparent`
//! and `x-request-id`. Each parser runs on the same value and its result is checked against
//! what its docs promise.
#![no_main]

use std::time::Duration;

use http::HeaderValue;
use http::header::RETRY_AFTER;
use libfuzzer_sys::fuzz_target;
use weir::internals::Priority;
use weir::internals::{request_id, retry_after, traceparent};
use weir::internals::{parse_deadline_ms, parse_delay, parse_status};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let trimmed = value.as_bytes().trim_ascii();
    let digits = !trimmed.is_empty() && trimmed.iter().all(u8::is_ascii_digit);

    // x-weir-deadline-ms: whole milliseconds, exactly as written.
    if let Some(d) = parse_deadline_ms(&value) {
        let ms = std::str::from_utf8(trimmed)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        assert_eq!(Some(d.as_millis()), ms.map(u128::from));
    }

    // x-weir-priority: may lower a route's priority, never raise it.
    for base in [Priority::Critical, Priority::Default, Priority::Sheddable] {
        let got = base.lowered_by(value.as_bytes());
        assert!(rank(got) >= rank(base), "{base:?} raised to {got:?}");
    }

    // x-weir-fault-abort / x-weir-fault-delay.
    if let Some(status) = parse_status(&value) {
        assert!((100..=599).contains(&status.as_u16()));
    }
    if let Some(delay) = parse_delay(&value) {
        assert!(delay.max() <= Duration::from_secs(60));
    }

    // Retry-After: delta-seconds exactly; a date (any of the three forms) no further off than
    // year 9999.
    let mut headers = http::HeaderMap::new();
    headers.insert(RETRY_AFTER, value.clone());
    if let Some(after) = retry_after::delay(&headers) {
        if digits {
            let secs = std::str::from_utf8(trimmed)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            assert_eq!(Some(after.as_secs()), secs);
        } else {
            assert!(after < Duration::from_secs(8_100 * 366 * 86_400));
        }
    }

    // x-request-id: kept when sane, else a fresh UUID; always 1..=200 visible ASCII bytes.
    let id = request_id(Some(&value));
    assert!((1..=200).contains(&id.len()));
    assert!(id.as_bytes().iter().all(u8::is_ascii_graphic));
    let sane =
        (1..=200).contains(&value.len()) && value.as_bytes().iter().all(u8::is_ascii_graphic);
    assert_eq!(sane, id == value);

    // traceparent: always well formed; an inbound trace id and flags are kept.
    let tp = traceparent(Some(&value));
    let out = tp.as_bytes();
    assert_eq!(out.len(), 55, "{tp:?}");
    assert!(
        out.starts_with(b"00-") && out[35] == b'-' && out[52] == b'-',
        "{tp:?}"
    );
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    assert!(
        hex(&out[3..35]) && hex(&out[36..52]) && hex(&out[53..55]),
        "{tp:?}"
    );
    if valid_traceparent(value.as_bytes()) {
        let inb = value.as_bytes();
        assert_eq!(&out[3..35], &inb[3..35], "trace id changed");
        assert_eq!(&out[53..55], &inb[53..55], "flags changed");
    }
});

fn rank(p: Priority) -> u8 {
    match p {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Sheddable => 2,
    }
}

/// W3C trace context, version 00, with non-zero ids (what weir promises to continue).
fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    v.len() == 55
        && v.starts_with(b"00-")
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && !zero(&v[3..35])
        && !zero(&v[36..52])
}
