//! An HTTP/1 request head, as untrusted bytes, through weir's hygiene checks.
//!
//! The bytes are parsed with httparse into method, URI, version and headers (what hyper hands
//! weir), then the field scan, `check_request`, `is_upgrade`, `strip_hop_by_hop` and
//! `add_forwarded` run on them, and the scan is held to what lookups by name find. Framing and `Host` are judged from the parsed head alone (a head with more than one
//! `Host` must be refused).
#![no_main]

use http::header::{CONNECTION, PROXY_AUTHORIZATION, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use weir::internals::KEEP_ALIVE;
use weir::internals::hygiene::{self, Limits};

const UNLIMITED: Limits = Limits {
    max_header_bytes: usize::MAX,
    max_headers: usize::MAX,
    max_body_bytes: 0,
};
const TIGHT: Limits = Limits {
    max_header_bytes: 256,
    max_headers: 8,
    max_body_bytes: 16,
};

fuzz_target!(|data: &[u8]| {
    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut parsed);
    let Ok(_) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return;
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), path.parse::<Uri>()) else {
        return;
    };
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(name, value);
        }
    }

    let fields = hygiene::Fields::scan(&headers);
    assert_eq!(fields.request_id, headers.get("x-request-id"));
    assert_eq!(fields.traceparent, headers.get("traceparent"));
    assert_eq!(fields.priority, headers.get("x-weir-priority"));
    let loose = hygiene::check_request(&method, &uri, version, &headers, &fields, &UNLIMITED);
    if headers.get_all(http::header::HOST).iter().count() > 1 {
        assert!(loose.is_err(), "a head with two Host headers passed");
    }
    if let Err(e) = &loose {
        // Without limits only framing can be refused.
        assert_eq!(e.reason(), "bad-request", "{e:?}");
    }
    if hygiene::check_request(&method, &uri, version, &headers, &fields, &TIGHT).is_ok() {
        assert!(loose.is_ok(), "passes tight limits but not loose ones");
    }

    let upgrade = fields.is_upgrade(version);
    hygiene::strip_hop_by_hop(&mut headers, upgrade);
    for name in [
        &KEEP_ALIVE,
        &PROXY_AUTHORIZATION,
        &TRAILER,
        &TRANSFER_ENCODING,
    ] {
        assert!(!headers.contains_key(name), "{name} survived stripping");
    }
    if !upgrade {
        assert!(!headers.contains_key(UPGRADE) && !headers.contains_key(CONNECTION));
    }
    let once = headers.clone();
    hygiene::strip_hop_by_hop(&mut headers, upgrade);
    assert_eq!(once, headers, "stripping twice differs from once");

    let client = hygiene::client_value([192, 0, 2, 1].into());
    let authority = uri.authority().map(|a| a.as_str());
    let forwarded =
        hygiene::Forwarded::new(&hygiene::Fields::scan(&headers), &client, "http", authority, version);
    hygiene::add_forwarded(&mut headers, forwarded);
    assert!(headers.contains_key(VIA));
    assert!(headers.contains_key("x-forwarded-proto"));
});
