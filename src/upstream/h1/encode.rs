//! Writing a request to an upstream over HTTP/1.1: the head in origin form, and the body
//! framed by its `Content-Length` or else chunked (RFC 9112 §7), trailers included.
//!
//! Pure functions over a `BytesMut`, unit-tested here; [`super`] writes the bytes.

use bytes::{BufMut, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, request::Parts};

use super::H1Error;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body bytes follow the head.
    None,
    /// Exactly this many bytes, as the request's `Content-Length` says.
    Length(u64),
    /// Chunked: the body's length is not known ahead.
    Chunked,
}

/// Writes the head of `parts` (origin-form target, `Host` set) into `buf`, and says how the
/// body that follows is framed. `has_body`: the body may yield bytes (it is not known empty).
///
/// The request's own `Content-Length` frames a body; without one a body goes chunked (any
/// `Transfer-Encoding` the request carried is hop-by-hop and was removed by the listener; one
/// that is still here is replaced). A body known to be empty is sent with the head alone.
pub(super) fn head(
    parts: &Parts,
    has_body: bool,
    buf: &mut BytesMut,
) -> Result<BodyFraming, H1Error> {
    let framing = if !has_body {
        BodyFraming::None
    } else {
        match declared_length(&parts.headers)? {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Chunked,
        }
    };
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let method = parts.method.as_str();
    let mut len = method.len() + target.len() + b"  HTTP/1.1\r\n\r\n".len();
    for (name, value) in &parts.headers {
        len += name.as_str().len() + value.len() + 4;
    }
    if framing == BodyFraming::Chunked {
        len += CHUNKED_FIELD.len();
    }
    buf.reserve(len);
    buf.put_slice(method.as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(target.as_bytes());
    buf.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    if framing == BodyFraming::Chunked {
        buf.put_slice(CHUNKED_FIELD);
    }
    buf.put_slice(b"\r\n");
    Ok(framing)
}

const CHUNKED_FIELD: &[u8] = b"transfer-encoding: chunked\r\n";

/// The request's `Content-Length`; an error when it does not parse (the listener checked it,
/// so only a request built inside weir could get here with a bad one).
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let Some(value) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or(H1Error::BadContentLength)
}

/// Writes one chunk of a chunked body: size line, data, CRLF.
pub(super) fn chunk(data: &[u8], buf: &mut BytesMut) {
    if data.is_empty() {
        return; // an empty chunk would end the body
    }
    buf.reserve(data.len() + 20);
    let mut size = [0u8; 16];
    buf.put_slice(hex(data.len(), &mut size));
    buf.put_slice(b"\r\n");
    buf.put_slice(data);
    buf.put_slice(b"\r\n");
}

/// Writes the end of a chunked body: the last chunk, the trailers, the empty line.
pub(super) fn last_chunk(trailers: Option<&HeaderMap>, buf: &mut BytesMut) {
    buf.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
}

/// `n` in lowercase hex, in `out`'s tail.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &out[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn a_get_is_its_head_alone() {
        let p = parts(
            Request::get("/a?b=1")
                .header("host", "up:80")
                .header("x-v", "1")
                .header("x-v", "2")
                .body(())
                .unwrap(),
        );
        let mut buf = BytesMut::new();
        assert_eq!(head(&p, false, &mut buf).unwrap(), BodyFraming::None);
        assert_eq!(
            &buf[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: up:80\r\nx-v: 1\r\nx-v: 2\r\n\r\n"
        );
    }

    #[test]
    fn a_body_is_framed_by_its_length_or_chunked() {
        let p = parts(
            Request::post("/")
                .header("content-length", "5")
                .body(())
                .unwrap(),
        );
        let mut buf = BytesMut::new();
        assert_eq!(head(&p, true, &mut buf).unwrap(), BodyFraming::Length(5));
        let p = parts(
            Request::post("/")
                .header("transfer-encoding", "gzip")
                .body(())
                .unwrap(),
        );
        let mut buf = BytesMut::new();
        assert_eq!(head(&p, true, &mut buf).unwrap(), BodyFraming::Chunked);
        assert_eq!(
            &buf[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let p = parts(
            Request::post("/")
                .header("content-length", "x")
                .body(())
                .unwrap(),
        );
        assert!(head(&p, true, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn chunks_and_trailers() {
        let mut buf = BytesMut::new();
        chunk(b"", &mut buf);
        chunk(&[b'a'; 26], &mut buf);
        let mut t = HeaderMap::new();
        t.insert("x-sum", "9".parse().unwrap());
        last_chunk(Some(&t), &mut buf);
        let mut want = b"1a\r\n".to_vec();
        want.extend([b'a'; 26]);
        want.extend(b"\r\n0\r\nx-sum: 9\r\n\r\n");
        assert_eq!(&buf[..], &want[..]);
        let mut out = [0; 16];
        assert_eq!(hex(0, &mut out), b"0");
        assert_eq!(hex(0xfff, &mut out), b"fff");
    }
}
