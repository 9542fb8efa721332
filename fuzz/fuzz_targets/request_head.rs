//! An HTTP/1 request head, as untrusted bytes, through weir's hygiene checks.
//!
//! The bytes are parsed with httparse into method, URI, version and headers (what hyper hands
//! weir), then `check_request`, `is_upgrade`, `strip_hop_by_hop` and `add_forwarded` run on
//! them. The raw bytes also go through `HeadScanner`, whole, byte by byte and in splits drawn
//! from the input, and the scanner must reach the same verdict each way.
#![no_main]

use http::header::{CONNECTION, PROXY_AUTHORIZATION, TRAILER, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use weir::http::KEEP_ALIVE;
use weir::http::hygiene::{self, HeadScanner, Limits};

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
    scan(data);

    let mut parsed = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut parsed);
    let Ok(status) = req.parse(data) else {
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

    // A complete head carrying both framings, with a request line the scanner documents it
    // recognises (an uppercase method), must be seen as ambiguous by a fresh scanner.
    if status.is_complete()
        && method.as_str().len() < 32
        && method.as_str().bytes().all(|b| b.is_ascii_uppercase())
        && headers.contains_key(http::header::CONTENT_LENGTH)
        && headers.contains_key(TRANSFER_ENCODING)
    {
        let mut s = HeadScanner::default();
        s.feed(data);
        assert!(
            s.ambiguous(),
            "a Content-Length + Transfer-Encoding head went unnoticed"
        );
    }

    let loose = hygiene::check_request(&method, &uri, &headers, &UNLIMITED);
    if let Err(e) = &loose {
        // Without limits only framing can be refused.
        assert_eq!(e.reason(), "bad-request", "{e:?}");
    }
    if hygiene::check_request(&method, &uri, &headers, &TIGHT).is_ok() {
        assert!(loose.is_ok(), "passes tight limits but not loose ones");
    }

    let upgrade = hygiene::is_upgrade(version, &headers);
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
    hygiene::add_forwarded(&mut headers, &client, "http", authority, version);
    assert!(headers.contains_key(VIA));
    assert!(headers.contains_key("x-forwarded-proto"));
});

/// Feeds `data` to a scanner whole, byte by byte, and in input-drawn splits: one verdict.
fn scan(data: &[u8]) {
    let mut whole = HeadScanner::default();
    whole.feed(data);

    let mut bytewise = HeadScanner::default();
    for b in data.chunks(1) {
        bytewise.feed(b);
    }

    // Split lengths from a small generator seeded by the input, so a mutation moves the cuts.
    let mut state = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut split = HeadScanner::default();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % 17) as usize;
        let (part, tail) = rest.split_at(n.min(rest.len()));
        split.feed(part);
        rest = tail;
    }

    assert_eq!(
        whole.ambiguous(),
        bytewise.ambiguous(),
        "byte-by-byte feed differs"
    );
    assert_eq!(whole.ambiguous(), split.ambiguous(), "split feed differs");
}
