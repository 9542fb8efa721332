//! Protocol hygiene: framing checks (400), header limits (431), declared body size (413),
//! hop-by-hop stripping, `X-Forwarded-*` and `Via`.
//!
//! Position: run by [`crate::server::service`] on every request before routing, and on every
//! response before it goes back. Config: `listeners[].max_header_bytes`, `max_headers`,
//! `max_body_bytes`.

use std::net::IpAddr;

use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, HeaderValue, Version};

use crate::error::ProxyError;
use crate::http::{
    KEEP_ALIVE, PROXY_CONNECTION, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};

/// Request limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the request head (request line and headers); beyond: 431.
    pub max_header_bytes: usize,
    /// Number of header fields; beyond: 431.
    pub max_headers: usize,
    /// Bytes of the request body; beyond: 413. 0 = unlimited.
    pub max_body_bytes: u64,
}

/// Checks the head of a request: ambiguous framing (400), size and count of headers (431),
/// and a declared body larger than the limit (413).
pub fn check_request(
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<(), ProxyError> {
    if headers.len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    let mut head_bytes = method.as_str().len() + uri_len(uri) + 12;
    for (name, value) in headers {
        head_bytes += name.as_str().len() + value.len() + 4;
    }
    if head_bytes > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }

    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let declared = match lengths.next() {
        None => None,
        Some(first) => {
            let len = parse_content_length(first)?;
            for other in lengths {
                if parse_content_length(other)? != len {
                    return Err(ProxyError::BadRequest("conflicting Content-Length values"));
                }
            }
            Some(len)
        }
    };
    if declared.is_some() && headers.contains_key(TRANSFER_ENCODING) {
        return Err(ProxyError::BadRequest(
            "Content-Length together with Transfer-Encoding",
        ));
    }
    if let Some(len) = declared
        && limits.max_body_bytes > 0
        && len > limits.max_body_bytes
    {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}

/// True when the request asks to switch protocols (WebSocket and other HTTP/1.1 upgrades).
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE` (except
/// `TE: trailers`), `Trailer`, `Transfer-Encoding`, and `Upgrade` unless `upgrade` is true (in
/// which case `Connection: upgrade` is kept too).
///
/// One pass over the names finds out whether there is anything to do; most requests carry
/// none of these, and a removal costs a hash lookup each.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let found = headers.keys().any(|name| {
        name == CONNECTION
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || name == PROXY_AUTHENTICATE
            || name == PROXY_AUTHORIZATION
            || name == TE
            || name == TRAILER
            || name == TRANSFER_ENCODING
            || (name == UPGRADE && !upgrade)
    });
    if !found {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<http::HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(tokens)
            .filter_map(|t| http::HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            if upgrade && name == UPGRADE {
                continue;
            }
            headers.remove(name);
        }
        headers.remove(CONNECTION);
        if upgrade {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        headers.remove(name);
    }
    for name in [
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TRAILER,
        TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(UPGRADE);
    }
    if let Some(te) = headers.get(TE)
        && !tokens(te).all(|t| t.eq_ignore_ascii_case("trailers"))
    {
        headers.remove(TE);
    }
}

/// Adds `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (set when
/// absent, so the first proxy of a chain wins) and appends this hop to `Via`. `client` is the
/// peer address already rendered as a header value (once per connection).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    authority: Option<&str>,
    version: Version,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        None => Some(client.clone()),
        Some(prev) => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + client.len());
            joined.extend_from_slice(prev.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        let host = headers
            .get(HOST)
            .cloned()
            .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    append_via(headers, version);
}

/// The `X-Forwarded-For` element of a peer: its IP address.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends this hop (`<protocol-version> weir`) to `Via`.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let hop = match version {
        Version::HTTP_10 => "1.0 weir",
        Version::HTTP_2 => "2 weir",
        Version::HTTP_3 => "3 weir",
        _ => "1.1 weir",
    };
    let value = match headers.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {hop}")).ok(),
        None => Some(HeaderValue::from_static(hop)),
    };
    if let Some(v) = value {
        headers.insert(VIA, v);
    }
}

/// Scans the bytes of an HTTP/1 connection as they arrive and notices a request head that
/// carries both `Content-Length` and `Transfer-Encoding` — the request-smuggling shape that
/// hyper's parser resolves silently (it drops `Content-Length`), and that weir refuses.
///
/// It tracks lines: a line that looks like a request line starts a head, an empty line ends it;
/// a body with a `Content-Length` is skipped by count, a chunked body line by line.
#[derive(Debug)]
pub struct HeadScanner {
    line: [u8; 64],
    line_len: usize,
    in_head: bool,
    length: Option<u64>,
    saw_chunked: bool,
    skip: u64,
    ambiguous: bool,
}

impl Default for HeadScanner {
    fn default() -> Self {
        Self {
            line: [0; 64],
            line_len: 0,
            in_head: false,
            length: None,
            saw_chunked: false,
            skip: 0,
            ambiguous: false,
        }
    }
}

impl HeadScanner {
    /// Feeds the next bytes read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                bytes = bytes.get(n..).unwrap_or_default();
                self.skip -= n as u64;
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let (line, rest) = bytes.split_at(end);
                    self.push(line);
                    self.end_line();
                    bytes = rest.get(1..).unwrap_or_default();
                }
                None => {
                    self.push(bytes);
                    return;
                }
            }
        }
    }

    /// True once a head with both `Content-Length` and `Transfer-Encoding` has been seen.
    pub fn ambiguous(&self) -> bool {
        self.ambiguous
    }

    fn push(&mut self, part: &[u8]) {
        let start = self.line_len.min(self.line.len());
        let take = (self.line.len() - start).min(part.len());
        if let (Some(dst), Some(src)) = (self.line.get_mut(start..start + take), part.get(..take)) {
            dst.copy_from_slice(src);
        }
        // The full length (saturating) tells an empty line from a long one.
        self.line_len = self.line_len.saturating_add(part.len());
    }

    fn end_line(&mut self) {
        let kept = self.line_len.min(self.line.len());
        let mut line = self.line.get(..kept).unwrap_or_default();
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        let blank = self.line_len <= 1 && line.is_empty();
        if blank {
            if self.in_head {
                match (self.length, self.saw_chunked) {
                    (Some(_), true) => self.ambiguous = true,
                    (Some(n), false) => self.skip = n,
                    (None, _) => {}
                }
            }
            self.in_head = false;
        } else if looks_like_request_line(line) {
            self.in_head = true;
            self.length = None;
            self.saw_chunked = false;
        } else if self.in_head {
            if let Some(value) = header_value(line, b"content-length:") {
                self.length = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0),
                );
            } else if header_value(line, b"transfer-encoding:").is_some() {
                self.saw_chunked = true;
            }
        }
        self.line_len = 0;
    }
}

fn looks_like_request_line(line: &[u8]) -> bool {
    // "<METHOD> <target> HTTP/1.x": a token of uppercase letters, then a space.
    let method_len = line.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method_len > 0 && line.get(method_len) == Some(&b' ')
}

fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let (head, value) = (line.get(..name.len())?, line.get(name.len()..)?);
    head.eq_ignore_ascii_case(name).then_some(value)
}

fn parse_content_length(v: &HeaderValue) -> Result<u64, ProxyError> {
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or(ProxyError::BadRequest("invalid Content-Length"))
}

fn uri_len(uri: &http::Uri) -> usize {
    uri.path_and_query().map_or(1, |p| p.as_str().len())
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use http::{Method, Uri};

    use super::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 200,
        max_headers: 3,
        max_body_bytes: 10,
    };

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn check(h: &HeaderMap) -> Result<(), ProxyError> {
        check_request(&Method::POST, &Uri::from_static("/x"), h, &LIMITS)
    }

    #[test]
    fn framing_and_limits() {
        assert!(check(&headers(&[("content-length", "5")])).is_ok());
        let both = headers(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert_eq!(check(&both).unwrap_err().reason(), "bad-request");
        let conflict = headers(&[("content-length", "5"), ("content-length", "6")]);
        assert_eq!(check(&conflict).unwrap_err().reason(), "bad-request");
        let same = headers(&[("content-length", "5"), ("content-length", "5")]);
        assert!(check(&same).is_ok());
        let bad = headers(&[("content-length", "five")]);
        assert_eq!(check(&bad).unwrap_err().reason(), "bad-request");
        let big = headers(&[("content-length", "11")]);
        assert_eq!(check(&big).unwrap_err().reason(), "payload-too-large");
        let many = headers(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
        assert_eq!(check(&many).unwrap_err().reason(), "headers-too-large");
        let mut long = HeaderMap::new();
        long.insert("x-long", HeaderValue::from_str(&"v".repeat(200)).unwrap());
        assert_eq!(check(&long).unwrap_err().reason(), "headers-too-large");
    }

    #[test]
    fn unlimited_body_when_zero() {
        let limits = Limits {
            max_body_bytes: 0,
            ..LIMITS
        };
        let h = headers(&[("content-length", "999999")]);
        assert!(check_request(&Method::PUT, &Uri::from_static("/"), &h, &limits).is_ok());
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_names() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "basic x"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(names, vec!["x-kept"]);

        let mut h = headers(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "ws"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "ws");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_headers_append_and_keep_first() {
        let mut h = headers(&[("x-forwarded-for", "10.0.0.1"), ("host", "api.example.com")]);
        add_forwarded(
            &mut h,
            &client_value("127.0.0.1".parse().unwrap()),
            "http",
            None,
            Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["via"], "1.1 weir");
        let mut h = headers(&[("via", "1.1 edge")]);
        add_forwarded(
            &mut h,
            &client_value("::1".parse().unwrap()),
            "http",
            Some("a.b:8"),
            Version::HTTP_2,
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-host"], "a.b:8");
        assert_eq!(h["via"], "1.1 edge, 2 weir");
    }

    #[test]
    fn upgrade_needs_connection_token() {
        let h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        assert!(!is_upgrade(Version::HTTP_2, &h));
        assert!(!is_upgrade(
            Version::HTTP_11,
            &headers(&[("upgrade", "websocket")])
        ));
    }

    #[test]
    fn scanner_finds_length_with_chunked_across_reads() {
        let mut s = HeadScanner::default();
        s.feed(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokPOST /x HTTP/1.1\r\nContent-Le");
        assert!(!s.ambiguous());
        s.feed(b"ngth: 5\r\nTransfer-");
        s.feed(b"Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(s.ambiguous());
    }

    #[test]
    fn scanner_ignores_clean_heads_and_bodies() {
        let mut s = HeadScanner::default();
        s.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        s.feed(
            b"PUT / HTTP/1.1\r\nContent-Length: 40\r\n\r\nTransfer-Encoding: chunked\r\nabc\r\n",
        );
        assert!(!s.ambiguous());
    }
}
