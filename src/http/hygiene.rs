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

#[cfg(test)]
use http::HeaderName;
use http::header::{
    CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
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

/// The request fields weir reads on its walk before the request goes on, found in one pass
/// over the header map.
///
/// Looking each name up instead costs a hash of the name and a probe per lookup: about 14
/// lookups per proxied request (`Host` twice, `Content-Length`, `Upgrade`, `x-request-id`,
/// `traceparent`, `x-weir-priority`, and five for `X-Forwarded-*` and `Via`), about 1,400 of
/// its 35,500 instructions. One pass that switches on each name's spelling costs a few
/// instructions per field, and a request carries few fields.
///
/// Values are the first of their name, as `HeaderMap::get` gives them. A scan describes the map
/// it was taken of: a change to the map (stripping hop-by-hop fields) calls for a new one.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    /// The first `Host`, and how many there are (0, 1, or 2 for "more than one").
    host: Option<&'a HeaderValue>,
    hosts: u8,
    content_length: bool,
    transfer_encoding: bool,
    /// `Upgrade` is present, and a `Connection` token says `upgrade`.
    upgrade: bool,
    connection_upgrade: bool,
    /// A hop-by-hop field other than `Upgrade` is present.
    hop_by_hop: bool,
    forwarded_for: Option<&'a HeaderValue>,
    forwarded_proto: bool,
    forwarded_host: bool,
    via: Option<&'a HeaderValue>,
    /// `x-request-id` as the client sent it.
    pub request_id: Option<&'a HeaderValue>,
    /// `traceparent` as the client sent it.
    pub traceparent: Option<&'a HeaderValue>,
    /// `x-weir-priority` as the client sent it.
    pub priority: Option<&'a HeaderValue>,
    /// Whether the request is a gRPC call (its `content-type`, see [`crate::http::grpc`]).
    pub grpc: bool,
    /// Bytes of the header fields as the limits count them (name, value, 4 for `: ` and CRLF).
    field_bytes: usize,
}

impl<'a> Fields<'a> {
    /// One pass over `headers`.
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut f = Fields::default();
        for (name, value) in headers {
            let name = name.as_str();
            f.field_bytes += name.len() + value.len() + 4;
            match name {
                "host" => {
                    f.host = f.host.or(Some(value));
                    f.hosts = f.hosts.saturating_add(1).min(2);
                }
                "content-length" => f.content_length = true,
                "transfer-encoding" => {
                    f.transfer_encoding = true;
                    f.hop_by_hop = true;
                }
                "upgrade" => f.upgrade = true,
                "connection" => {
                    f.hop_by_hop = true;
                    f.connection_upgrade |=
                        tokens(value).any(|t| t.eq_ignore_ascii_case("upgrade"));
                }
                "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer" => f.hop_by_hop = true,
                "x-forwarded-for" => f.forwarded_for = f.forwarded_for.or(Some(value)),
                "x-forwarded-proto" => f.forwarded_proto = true,
                "x-forwarded-host" => f.forwarded_host = true,
                "via" => f.via = f.via.or(Some(value)),
                "x-request-id" => f.request_id = f.request_id.or(Some(value)),
                "traceparent" => f.traceparent = f.traceparent.or(Some(value)),
                "x-weir-priority" => f.priority = f.priority.or(Some(value)),
                "content-type" => f.grpc = crate::http::grpc::is_grpc_content_type(value),
                _ => {}
            }
        }
        f
    }

    /// True when the request asks to switch protocols (WebSocket and other HTTP/1.1 upgrades):
    /// `Upgrade`, and `upgrade` among the `Connection` tokens.
    pub fn is_upgrade(&self, version: Version) -> bool {
        version == Version::HTTP_11 && self.upgrade && self.connection_upgrade
    }

    /// Whether [`strip_hop_by_hop`] has anything to remove from the scanned map, for a request
    /// that does (`upgrade`) or does not switch protocols.
    pub fn has_hop_by_hop(&self, upgrade: bool) -> bool {
        self.hop_by_hop || (self.upgrade && !upgrade)
    }
}

/// Checks the head of a request: `Host` (400), ambiguous framing (400), size and count of
/// headers (431), and a declared body larger than the limit (413). `fields` is the scan of
/// `headers`.
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
    fields: &Fields<'_>,
    limits: &Limits,
) -> Result<(), ProxyError> {
    if headers.len() > limits.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    check_host(uri, version, fields)?;
    let head_bytes = method.as_str().len() + uri_len(uri) + 12 + fields.field_bytes;
    if head_bytes > limits.max_header_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    if !fields.content_length {
        return Ok(());
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
    if declared.is_some() && fields.transfer_encoding {
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

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE` (except
/// `TE: trailers`), `Trailer`, `Transfer-Encoding`, and `Upgrade` unless `upgrade` is true (in
/// which case `Connection: upgrade` is kept too).
///
/// One pass over the names finds out whether there is anything to do; most messages carry
/// none of these, and a removal costs a hash lookup each.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if Fields::scan(headers).has_hop_by_hop(upgrade) {
        remove_hop_by_hop(headers, upgrade);
    }
}

/// [`strip_hop_by_hop`] once a scan has found something to remove.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
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

/// What [`add_forwarded`] sets, worked out from a scan before the map changes.
#[derive(Debug)]
pub struct Forwarded {
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    via: Option<HeaderValue>,
}

impl Forwarded {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (set when
    /// absent, so the first proxy of a chain wins) and this hop appended to `Via`, for the
    /// request `fields` were scanned from. `client` is the peer address already rendered as a
    /// header value (once per connection).
    pub fn new(
        fields: &Fields<'_>,
        client: &HeaderValue,
        proto: &'static str,
        authority: Option<&str>,
        version: Version,
    ) -> Self {
        let forwarded_for = match fields.forwarded_for {
            None => Some(client.clone()),
            Some(prev) => {
                let mut joined = Vec::with_capacity(prev.len() + 2 + client.len());
                joined.extend_from_slice(prev.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(client.as_bytes());
                HeaderValue::from_bytes(&joined).ok()
            }
        };
        let forwarded_proto = (!fields.forwarded_proto).then(|| HeaderValue::from_static(proto));
        let forwarded_host = if fields.forwarded_host {
            None
        } else {
            fields
                .host
                .cloned()
                .or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()))
        };
        Self {
            forwarded_for,
            forwarded_proto,
            forwarded_host,
            via: via_value(fields.via, version),
        }
    }
}

/// Sets what `forwarded` worked out (see [`Forwarded::new`]).
pub fn add_forwarded(headers: &mut HeaderMap, forwarded: Forwarded) {
    let Forwarded {
        forwarded_for,
        forwarded_proto,
        forwarded_host,
        via,
    } = forwarded;
    for (name, value) in [
        (&X_FORWARDED_FOR, forwarded_for),
        (&X_FORWARDED_PROTO, forwarded_proto),
        (&X_FORWARDED_HOST, forwarded_host),
    ] {
        if let Some(v) = value {
            headers.insert(name.clone(), v);
        }
    }
    if let Some(v) = via {
        headers.insert(VIA, v);
    }
}

/// The `X-Forwarded-For` element of a peer: its IP address.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends this hop (`<protocol-version> weir`) to `Via`.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    if let Some(v) = via_value(headers.get(VIA), version) {
        headers.insert(VIA, v);
    }
}

/// `Via` with this hop after `prev`.
fn via_value(prev: Option<&HeaderValue>, version: Version) -> Option<HeaderValue> {
    let hop = match version {
        Version::HTTP_10 => "1.0 weir",
        Version::HTTP_2 => "2 weir",
        Version::HTTP_3 => "3 weir",
        _ => "1.1 weir",
    };
    match prev.and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {hop}")).ok(),
        None => Some(HeaderValue::from_static(hop)),
    }
}

fn check_host(uri: &http::Uri, version: Version, fields: &Fields<'_>) -> Result<(), ProxyError> {
    match (fields.host, fields.hosts) {
        (Some(_), 2..) => Err(ProxyError::BadRequest("more than one Host header")),
        (None, _) if version == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("HTTP/1.1 request without Host"))
        }
        (Some(host), _)
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
    use http::header::HOST;
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
        let h = with_host(h);
        let fields = Fields::scan(&h);
        check_request(
            &Method::POST,
            &Uri::from_static("/x"),
            Version::HTTP_11,
            &h,
            &fields,
            &LIMITS,
        )
    }

    fn forward(h: &mut HeaderMap, client: &str, authority: Option<&str>, version: Version) {
        let client = client_value(client.parse().unwrap());
        let forwarded = Forwarded::new(&Fields::scan(h), &client, "http", authority, version);
        add_forwarded(h, forwarded);
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
                &Fields::scan(&h),
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
        forward(&mut h, "127.0.0.1", None, Version::HTTP_11);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["via"], "1.1 weir");
        let mut h = headers(&[("via", "1.1 edge")]);
        forward(&mut h, "::1", Some("a.b:8"), Version::HTTP_2);
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
        assert!(Fields::scan(&h).is_upgrade(Version::HTTP_11));
        assert!(!Fields::scan(&h).is_upgrade(Version::HTTP_2));
        let alone = headers(&[("upgrade", "websocket")]);
        assert!(!Fields::scan(&alone).is_upgrade(Version::HTTP_11));
        let not_upgrade = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert!(!Fields::scan(&not_upgrade).is_upgrade(Version::HTTP_11));
    }

    #[test]
    fn host_must_be_single_and_agree_with_the_authority() {
        let host = |uri: &'static str, v: Version, pairs: &[(&'static str, &'static str)]| {
            let h = headers(pairs);
            check_request(
                &Method::GET,
                &Uri::from_static(uri),
                v,
                &h,
                &Fields::scan(&h),
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

    /// The scan matches names by spelling; these are the spellings of weir's own constants.
    #[test]
    fn scan_spellings_are_the_named_headers() {
        for name in [
            &KEEP_ALIVE,
            &PROXY_CONNECTION,
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &crate::http::X_REQUEST_ID,
            &crate::http::TRACEPARENT,
        ] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("1"));
            let f = Fields::scan(&h);
            let found = f.hop_by_hop
                || f.forwarded_for.is_some()
                || f.forwarded_proto
                || f.forwarded_host
                || f.request_id.is_some()
                || f.traceparent.is_some();
            assert!(found, "{name} not seen by the scan");
        }
        let h = headers(&[("x-weir-priority", "sheddable")]);
        assert_eq!(Fields::scan(&h).priority.unwrap(), "sheddable");
    }

    /// A scan finds what one lookup per name finds: the first value, and every hop-by-hop
    /// name, in a map of many fields and repeated names.
    #[test]
    fn scan_agrees_with_lookups() {
        let h = headers(&[
            ("accept", "*/*"),
            ("x-request-id", "first"),
            ("x-request-id", "second"),
            ("via", "1.1 a"),
            ("via", "1.1 b"),
            ("x-forwarded-for", "10.0.0.1"),
            ("host", "a.example"),
            ("cookie", "c=1"),
            ("traceparent", "00-x"),
        ]);
        let f = Fields::scan(&h);
        assert_eq!(f.request_id, h.get("x-request-id"));
        assert_eq!(f.via, h.get(VIA));
        assert_eq!(f.forwarded_for, h.get(&X_FORWARDED_FOR));
        assert_eq!(f.host, h.get(HOST));
        assert_eq!(f.traceparent, h.get("traceparent"));
        assert_eq!(
            (f.hosts, f.content_length, f.transfer_encoding),
            (1, false, false)
        );
        assert!(!f.has_hop_by_hop(false));
        for hop in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
        ] {
            let mut with = h.clone();
            with.append(HeaderName::from_static(hop), HeaderValue::from_static("x"));
            assert!(Fields::scan(&with).has_hop_by_hop(true), "{hop}");
        }
        let mut up = h.clone();
        up.append(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(Fields::scan(&up).has_hop_by_hop(false));
        assert!(!Fields::scan(&up).has_hop_by_hop(true));
    }
}
