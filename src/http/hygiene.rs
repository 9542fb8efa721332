//! Protocol hygiene: framing and `Host` checks (400), header limits (431), declared body size
//! (413), hop-by-hop stripping, `X-Forwarded-*` and `Via`.
//!
//! Framing is judged from the parsed request head only, never from body bytes. hyper's HTTP/1
//! parser already resolves a head with both `Content-Length` and `Transfer-Encoding: chunked`
//! the way RFC 9112 §6.1 allows: it drops `Content-Length`, reads the body as chunked, and
//! closes the connection after the response, so nothing pipelined behind it is read. What the
//! head still shows (conflicting `Content-Length` values, or both headers in an HTTP/2 request)
//! is refused with 400 here.
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

/// Checks the head of a request: `Host` (400), ambiguous framing (400), size and count of
/// headers (431), and a declared body larger than the limit (413).
///
/// `Host` (RFC 9112 §3.2): more than one is refused for every version, none is refused for
/// HTTP/1.1 (HTTP/1.0 may omit it, HTTP/2 has `:authority`), and a `Host` that disagrees with
/// the URI's authority (HTTP/2 `:authority`, or an HTTP/1 absolute-form target) is refused, so
/// the host a route matches on is the one the upstream sees.
pub fn check_request(
    method: &http::Method,
    uri: &http::Uri,
    version: Version,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<(), ProxyError> {
    if headers.len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    check_host(uri, version, headers)?;
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

fn check_host(uri: &http::Uri, version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if version == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        (Some(host), None)
            if uri
                .authority()
                .is_some_and(|a| !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes())) =>
        {
            Err(ProxyError::BadRequest(
                "Host disagrees with the request's authority",
            ))
        }
        _ => Ok(()),
    }
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

    fn with_host(h: &HeaderMap) -> HeaderMap {
        let mut h = h.clone();
        h.entry(HOST).or_insert(HeaderValue::from_static("a"));
        h
    }

    fn check(h: &HeaderMap) -> Result<(), ProxyError> {
        check_request(
            &Method::POST,
            &Uri::from_static("/x"),
            Version::HTTP_11,
            &with_host(h),
            &LIMITS,
        )
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
        let many = headers(&[("a", "1"), ("b", "2"), ("c", "3")]);
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
        let h = with_host(&h);
        assert!(
            check_request(
                &Method::PUT,
                &Uri::from_static("/"),
                Version::HTTP_11,
                &h,
                &limits
            )
            .is_ok()
        );
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
    fn host_must_be_single_and_agree_with_the_authority() {
        let host = |uri: &'static str, v: Version, pairs: &[(&'static str, &'static str)]| {
            check_request(
                &Method::GET,
                &Uri::from_static(uri),
                v,
                &headers(pairs),
                &LIMITS,
            )
            .map_err(|e| e.reason())
        };
        let one = [("host", "a.example")];
        let two = [("host", "a.example"), ("host", "b.example")];
        assert_eq!(host("/", Version::HTTP_11, &one), Ok(()));
        assert_eq!(host("/", Version::HTTP_11, &[]), Err("bad-request"));
        assert_eq!(host("/", Version::HTTP_10, &[]), Ok(()));
        assert_eq!(host("/", Version::HTTP_11, &two), Err("bad-request"));
        assert_eq!(host("/", Version::HTTP_10, &two), Err("bad-request"));
        assert_eq!(host("http://a.example/", Version::HTTP_2, &[]), Ok(()));
        assert_eq!(host("http://A.example/", Version::HTTP_2, &one), Ok(()));
        assert_eq!(
            host("http://b.example/", Version::HTTP_2, &one),
            Err("bad-request")
        );
        assert_eq!(
            host("http://a.example:81/", Version::HTTP_11, &one),
            Err("bad-request")
        );
        assert_eq!(
            host("http://a.example/", Version::HTTP_2, &two),
            Err("bad-request")
        );
    }
}
