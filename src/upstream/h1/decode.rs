//! Reading an upstream's HTTP/1.1 response: the head, parsed with `httparse`, and the body's
//! framing (RFC 9112 §6.3), decoded from the connection's read buffer without copying.
//!
//! A pure state machine over a `BytesMut`: no I/O, so every framing case and every malformed
//! input is unit-tested here byte by byte; [`super::body`] feeds it from the socket.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

use super::H1Error;

/// The most header fields an upstream response head (or its trailers) may carry: hyper's
/// default, which the client this module replaced used.
pub(super) const MAX_HEADERS: usize = 100;

/// The longest chunk-size line (size, extensions, CRLF) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, optionally with trailers.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// What parsing the buffer's start gave.
#[derive(Debug)]
pub(super) enum Parsed {
    /// A final response head.
    Head(Head),
    /// An interim 1xx response (other than 101), consumed and ignored (RFC 9110 §15.2).
    Interim,
    /// The head is not complete yet.
    Partial,
}

/// Parses the response head at the start of `buf`, removing it from `buf` when complete.
/// `head_request`: the request was `HEAD` (its response has no body). A head longer than
/// `max_head` bytes is an error.
///
/// A final head's fields go into `headers`, cleared first, which then moves into the head:
/// the caller passes the request's map, so the response reuses its allocation instead of the
/// request's being freed and a new one made (2 allocations and 2 frees per proxied request).
/// `headers` is untouched while the head is partial or interim, so a request that comes back
/// unsent still has its own; a complete final head clears it, valid or not.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
    headers: &mut HeaderMap,
) -> Result<Parsed, H1Error> {
    // Uninitialised: a head with 3 fields should not pay for writing 100 (3.2 KiB).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(H1Error::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
        Err(e) => return Err(H1Error::Parse(e)),
    };
    if len > max_head {
        return Err(H1Error::HeadTooLarge);
    }
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::BadStatus)?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrades go through the upgrade path; a 101 to anything else is a broken upstream.
            return Err(H1Error::UnexpectedUpgrade);
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    // Where each field lies in the head, so the values can share its bytes once it is frozen:
    // on the stack for the common head of a few fields, else in a vector.
    let mut few = [(0, 0, 0, 0); FEW_HEADERS];
    let many;
    let spans: &[Span] = if resp.headers.len() <= FEW_HEADERS {
        for (span, field) in few.iter_mut().zip(resp.headers.iter()) {
            *span = span_of(buf.as_ptr(), field);
        }
        &few[..resp.headers.len()]
    } else {
        many = spans(buf.as_ptr(), resp.headers);
        &many
    };
    let head = buf.split_to(len).freeze();
    fill(headers, &head, spans)?;
    let (framing, keep_alive) = framing(status, version, headers, head_request)?;
    Ok(Parsed::Head(Head {
        status,
        version,
        headers: std::mem::take(headers),
        framing,
        keep_alive,
    }))
}

/// Where a field lies in its buffer: name start and end, value start and end.
type Span = (usize, usize, usize, usize);

/// Heads with at most this many fields keep their spans on the stack (zeroing room for all
/// 100 cost more instructions than parsing the head).
const FEW_HEADERS: usize = 16;

/// Where `field` lies in the buffer that starts at `base`.
fn span_of(base: *const u8, field: &httparse::Header<'_>) -> Span {
    let n = field.name.as_ptr() as usize - base as usize;
    let v = field.value.as_ptr() as usize - base as usize;
    (n, n + field.name.len(), v, v + field.value.len())
}

/// Where each of `fields` lies in the buffer that starts at `base`.
fn spans(base: *const u8, fields: &[httparse::Header<'_>]) -> Vec<Span> {
    fields.iter().map(|f| span_of(base, f)).collect()
}

/// Room left in a response's header map for what weir adds (`via`, `x-request-id`, and a few
/// more), so those inserts do not grow and rehash it.
const ADDED_HEADERS: usize = 4;

/// The least a response's header map holds. Once the response is written, hyper clears its map
/// and parses the connection's next request into it, to which weir then adds up to 8 fields
/// (`X-Forwarded-*`, `Via`, `x-request-id`, `traceparent`, the deadline). Sized only for the
/// response (2 fields from the load bench's upstream: room for 6), that request's map grew and
/// rehashed once per request: 975 instructions and two allocations of a proxied request's
/// 38,800. Twelve fields is one size class up (16 slots, the same one the grown map had).
const MIN_HEADERS: usize = 12;

/// Clears `headers` and fills it with the fields at `spans` of `head`, with room for what
/// weir adds; the values share `head`'s bytes.
fn fill(headers: &mut HeaderMap, head: &Bytes, spans: &[Span]) -> Result<(), H1Error> {
    headers.clear();
    headers.reserve((spans.len() + ADDED_HEADERS).max(MIN_HEADERS));
    for &(n0, n1, v0, v1) in spans {
        let name = HeaderName::from_bytes(&head[n0..n1]).map_err(|_| H1Error::BadHeader)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(v0..v1)).map_err(|_| H1Error::BadHeader)?;
        headers.append(name, value);
    }
    Ok(())
}

/// The body's framing and whether the connection stays open, by RFC 9112 §6.3 and §9.3.
///
/// Stricter than the RFC's "ought to" where a lenient reading is how responses get smuggled:
/// a response with both `Transfer-Encoding` and `Content-Length`, or with `Content-Length`
/// values that differ or do not parse, is refused (Envoy and HAProxy refuse both too).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    head_request: bool,
) -> Result<(Framing, bool), H1Error> {
    let mut keep_alive = match version {
        Version::HTTP_10 => has_token(headers, "keep-alive"),
        _ => !has_token(headers, "close"),
    };
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, keep_alive));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(H1Error::BothLengths);
        }
        // §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing: close after it.
        if version == Version::HTTP_10 {
            keep_alive = false;
        }
        return Ok(if last_coding_is_chunked(headers) {
            (Framing::Chunked, keep_alive)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| H1Error::BadContentLength)?;
        for part in text.split(',') {
            let n = parse_length(part.trim()).ok_or(H1Error::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::BadContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

/// A `Content-Length` value: digits only (no sign, no spaces), within `u64`.
fn parse_length(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether the last transfer coding is `chunked`.
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

/// Whether `Connection` lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// What the body decoder took from the buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailers of a chunked body (only when there are any); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

/// The body decoder of one response.
#[derive(Debug)]
pub(super) struct Decoder {
    state: State,
    /// The longest trailer section accepted, in bytes.
    max_trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `n` body bytes left (Content-Length).
    Length(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// `n` bytes left of the current chunk.
    ChunkData(u64),
    /// At the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    /// Until the connection closes.
    Close,
    /// The body has ended.
    Done,
}

impl Decoder {
    /// The decoder for `framing`; trailers longer than `max_trailers` bytes are an error.
    pub(super) fn new(framing: Framing, max_trailers: usize) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self {
            state,
            max_trailers,
        }
    }

    /// Whether the body has ended.
    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many body bytes are known to be still to come, when known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body from `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => {
                    return Ok(Decoded::More);
                }
                State::Length(n) => {
                    let (data, left) = take(n, buf);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::ChunkData(n) => {
                    let (data, left) = take(n, buf);
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::Close if buf.is_empty() => return Ok(Decoded::More),
                State::Close => return Ok(Decoded::Data(buf.split().freeze())),
                State::ChunkSize => {
                    let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::BadChunk);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    return self.trailers(buf);
                }
            }
        }
    }

    /// The trailer section after the last chunk.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (len, spans) = match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((len, parsed))) => (len, spans(buf.as_ptr(), parsed)),
            Ok(httparse::Status::Partial) if buf.len() > self.max_trailers => {
                return Err(H1Error::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(Decoded::More),
            Err(httparse::Error::TooManyHeaders) => return Err(H1Error::HeadTooLarge),
            Err(e) => return Err(H1Error::Parse(e)),
        };
        if len > self.max_trailers {
            return Err(H1Error::HeadTooLarge);
        }
        let section = buf.split_to(len).freeze();
        let mut trailers = HeaderMap::new();
        fill(&mut trailers, &section, &spans)?;
        self.state = State::Done;
        Ok(Decoded::Trailers(trailers))
    }

    /// The connection closed: the end of a close-delimited body, an error for any other.
    pub(super) fn eof(&mut self) -> Result<Decoded, H1Error> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            _ => Err(H1Error::EarlyClose),
        }
    }
}

/// How one response read from untrusted bytes came out (see [`read_response`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResponse {
    /// The final response's status.
    pub status: u16,
    /// Body bytes decoded.
    pub body: usize,
    /// Whether the body ended before the input did (else the input's end was taken as the
    /// connection's close).
    pub ended: bool,
    /// Whether the connection could carry another request (clean end, keep-alive, no byte
    /// left over).
    pub reusable: bool,
}

/// Reads one response from `input` as a connection would, fed `step` bytes at a time (0 is
/// taken as 1), the end of `input` being the connection's close: interim heads skipped, the
/// body decoded by its framing. The error is the reason weir gives. For the fuzz target
/// (`fuzz/fuzz_targets/response.rs`): whatever the bytes, this returns and never panics, and
/// the body is never more than the input.
pub fn read_response(
    input: &[u8],
    step: usize,
    head_request: bool,
) -> Result<ReadResponse, String> {
    let step = step.max(1);
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| {
        let end = (fed + step).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        let more = end > fed;
        fed = end;
        more
    };
    let head = loop {
        match parse_head(
            &mut buf,
            head_request,
            super::MAX_HEAD,
            &mut HeaderMap::new(),
        )
        .map_err(|e| e.to_string())?
        {
            Parsed::Head(head) => break head,
            Parsed::Interim => {}
            Parsed::Partial if feed(&mut buf) => {}
            Parsed::Partial => return Err(H1Error::EarlyClose.to_string()),
        }
    };
    let mut decoder = Decoder::new(head.framing, super::MAX_HEAD);
    let mut body = 0;
    let ended = loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(data) => body += data.len(),
            Decoded::Trailers(_) | Decoded::End => break true,
            Decoded::More if feed(&mut buf) => {}
            Decoded::More => {
                decoder.eof().map_err(|e| e.to_string())?;
                break false;
            }
        }
    };
    let reusable = ended && head.keep_alive && buf.is_empty() && fed == input.len();
    Ok(ReadResponse {
        status: head.status.as_u16(),
        body,
        ended,
        reusable,
    })
}

/// Up to `n` bytes from the front of `buf`, and how many of the `n` are still to come.
fn take(n: u64, buf: &mut BytesMut) -> (Bytes, u64) {
    let len = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
    (buf.split_to(len).freeze(), n - len as u64)
}

/// Where the first CRLF of `buf` starts; an error when none is within `limit` bytes, or when a
/// bare LF comes first.
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, H1Error> {
    match buf.iter().take(limit).position(|&b| b == b'\n') {
        Some(0) => Err(H1Error::BadChunk),
        Some(i) if buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err(H1Error::BadChunk),
        None if buf.len() >= limit => Err(H1Error::BadChunk),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (`1a;ext=1`): hex digits, then optional whitespace and
/// extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(H1Error::BadChunk);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(H1Error::BadChunk);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| H1Error::BadChunk)?;
    u64::from_str_radix(hex, 16).map_err(|_| H1Error::BadChunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Parsed, H1Error> {
        parse_head(
            &mut BytesMut::from(bytes),
            false,
            64 * 1024,
            &mut HeaderMap::new(),
        )
    }

    fn final_head(bytes: &[u8]) -> Head {
        match head(bytes) {
            Ok(Parsed::Head(h)) => h,
            other => panic!("not a head: {other:?}"),
        }
    }

    /// Decodes all of `body` with `framing`, then an EOF when `eof`.
    fn decode_all(framing: Framing, body: &[u8], eof: bool) -> Result<Vec<Decoded>, H1Error> {
        let mut buf = BytesMut::from(body);
        let mut d = Decoder::new(framing, 1024);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf)? {
                Decoded::More if eof => {
                    out.push(d.eof()?);
                    return Ok(out);
                }
                Decoded::More => {
                    out.push(Decoded::More);
                    return Ok(out);
                }
                Decoded::End => {
                    out.push(Decoded::End);
                    return Ok(out);
                }
                other => out.push(other),
            }
        }
    }

    fn data(s: &str) -> Decoded {
        Decoded::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn head_fields_reuse_the_given_map_and_leave_it_alone_until_complete() {
        let mut map = HeaderMap::with_capacity(40);
        map.insert("x-request-field", HeaderValue::from_static("1"));
        let capacity = map.capacity();
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: b\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut map),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut map),
            Ok(Parsed::Partial)
        ));
        assert_eq!(
            map.get("x-request-field").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        buf.extend_from_slice(b"content-length: 0\r\n\r\n");
        let Ok(Parsed::Head(h)) = parse_head(&mut buf, false, 1024, &mut map) else {
            panic!("no head")
        };
        assert_eq!(h.headers.len(), 2);
        assert!(h.headers.get("x-request-field").is_none());
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(
            h.headers.capacity(),
            capacity,
            "the given map's allocation is reused"
        );
        assert!(map.is_empty());
    }

    #[test]
    fn content_length_head_and_body() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: b\r\n\r\nokNEXT"[..]);
        let Parsed::Head(h) = parse_head(&mut buf, false, 1024, &mut HeaderMap::new()).unwrap()
        else {
            panic!("partial")
        };
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.headers["x-a"], "b");
        let mut d = Decoder::new(h.framing, 1024);
        assert_eq!(d.decode(&mut buf).unwrap(), data("ok"));
        assert!(d.is_done());
        // What follows the body stays in the buffer: the caller sees bytes after the response.
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn a_partial_head_waits_and_a_long_one_fails() {
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-le"),
            Ok(Parsed::Partial)
        ));
        let mut long = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        let mut buf = BytesMut::from(&long[..]);
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut HeaderMap::new()),
            Err(H1Error::HeadTooLarge)
        ));
        long.extend(b"\r\ncontent-length: 0\r\n\r\n");
        let mut buf = BytesMut::from(&long[..]);
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut HeaderMap::new()),
            Err(H1Error::HeadTooLarge)
        ));
    }

    #[test]
    fn too_many_headers_is_a_head_too_large() {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            h.extend(format!("x-{i}: v\r\n").as_bytes());
        }
        h.extend(b"\r\n");
        assert!(matches!(head(&h), Err(H1Error::HeadTooLarge)));
    }

    #[test]
    fn a_head_with_many_fields_keeps_them_all() {
        let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..40 {
            h.extend(format!("x-{i}: v{i}\r\n").as_bytes());
        }
        h.extend(b"content-length: 0\r\n\r\n");
        let head = final_head(&h);
        assert_eq!(head.headers.len(), 41);
        assert_eq!(head.headers["x-0"], "v0");
        assert_eq!(head.headers["x-39"], "v39");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            head(b"HTTP/1.1 2x0 OK\r\n\r\n"),
            Err(H1Error::Parse(_))
        ));
        assert!(matches!(
            head(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(H1Error::Parse(_))
        ));
    }

    #[test]
    fn interim_responses_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut HeaderMap::new()),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            parse_head(&mut buf, false, 1024, &mut HeaderMap::new()),
            Ok(Parsed::Interim)
        ));
        let Ok(Parsed::Head(h)) = parse_head(&mut buf, false, 1024, &mut HeaderMap::new()) else {
            panic!("no final head")
        };
        assert_eq!(h.status, StatusCode::NO_CONTENT);
        assert_eq!(h.framing, Framing::Empty);
        assert!(buf.is_empty());
        assert!(matches!(
            head(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"),
            Err(H1Error::UnexpectedUpgrade)
        ));
    }

    #[test]
    fn bodiless_responses() {
        // HEAD, 204 and 304 have no body whatever their headers say.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"[..]);
        let Ok(Parsed::Head(h)) = parse_head(&mut buf, true, 1024, &mut HeaderMap::new()) else {
            panic!()
        };
        assert_eq!(h.framing, Framing::Empty);
        let h = final_head(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
    }

    #[test]
    fn framing_by_headers() {
        let h = final_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let h = final_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        // A last coding other than chunked: the body runs to the close.
        let h = final_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        // Neither header: close-delimited.
        let h = final_head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        // Repeated equal lengths are one length.
        let h = final_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(3));
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let h = final_head(b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = final_head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.version, Version::HTTP_10);
        assert!(!h.keep_alive);
        let h =
            final_head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(h.keep_alive);
        let h = final_head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    }

    #[test]
    fn conflicting_framing_is_refused() {
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(H1Error::BothLengths)
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2, 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(H1Error::BadContentLength)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_body_in_pieces_and_short() {
        let mut d = Decoder::new(Framing::Length(5), 1024);
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), data("ab"));
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::More);
        assert_eq!(d.remaining(), Some(3));
        buf.extend_from_slice(b"cdeXY");
        assert_eq!(d.decode(&mut buf).unwrap(), data("cde"));
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"XY");
        // A body shorter than declared: the close comes first.
        assert!(matches!(
            decode_all(Framing::Length(5), b"abc", true),
            Err(H1Error::EarlyClose)
        ));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let body = b"3;name=v\r\nabc\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 7\r\nx-b: 2\r\n\r\nREST";
        let mut buf = BytesMut::from(&body[..]);
        let mut d = Decoder::new(Framing::Chunked, 1024);
        assert_eq!(d.decode(&mut buf).unwrap(), data("abc"));
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            data("abcdefghijklmnopqrstuvwxyz")
        );
        let Decoded::Trailers(t) = d.decode(&mut buf).unwrap() else {
            panic!("no trailers")
        };
        assert_eq!(t["x-sum"], "7");
        assert_eq!(t["x-b"], "2");
        assert!(d.is_done());
        assert_eq!(&buf[..], b"REST");
    }

    #[test]
    fn chunked_body_byte_by_byte() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut d = Decoder::new(Framing::Chunked, 1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut ended = false;
        for &b in body {
            buf.extend_from_slice(&[b]);
            loop {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(d) => got.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => {
                        ended = true;
                        break;
                    }
                    Decoded::Trailers(_) => panic!("no trailers sent"),
                }
            }
        }
        assert!(ended);
        assert_eq!(got, b"hello");
    }

    #[test]
    fn bad_chunks_are_errors() {
        for bad in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"2\r\nabXX0\r\n\r\n",
            b"-2\r\nab\r\n",
            b"2 x\r\nab\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked, bad, true).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A chunk-size line that never ends.
        let endless = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(Framing::Chunked, &endless, false).is_err());
        // The connection closes in the middle of a chunk.
        assert!(matches!(
            decode_all(Framing::Chunked, b"5\r\nhel", true),
            Err(H1Error::EarlyClose)
        ));
        // Trailers beyond the limit.
        let mut long = b"0\r\nx-t: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        assert!(matches!(
            decode_all(Framing::Chunked, &long, false),
            Err(H1Error::HeadTooLarge)
        ));
    }

    #[test]
    fn a_whole_response_reads_alike_in_any_steps() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let want = ReadResponse {
            status: 200,
            body: 3,
            ended: true,
            reusable: true,
        };
        for step in [0, 1, 2, 7, 1000] {
            assert_eq!(
                read_response(input, step, false),
                Ok(want.clone()),
                "step {step}"
            );
        }
        let r = read_response(b"HTTP/1.1 200 OK\r\n\r\nuntil close", 3, false).unwrap();
        assert_eq!((r.body, r.ended, r.reusable), (11, false, false));
        let e = read_response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
            4,
            false,
        );
        assert!(e.unwrap_err().contains("before the end"));
    }

    #[test]
    fn close_delimited_body_ends_at_eof() {
        let out = decode_all(Framing::Close, b"all of it", true).unwrap();
        assert_eq!(out, vec![data("all of it"), Decoded::End]);
    }
}
