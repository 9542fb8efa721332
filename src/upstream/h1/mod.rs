//! The HTTP/1.1 client of weir's upstream connections, driven inside the request's own task.
//!
//! Why by hand: hyper's client runs each connection as its own task and hands every request to
//! it through a channel (`SendRequest` → mpsc → connection task → oneshot back), so a proxied
//! request cost two task wake-ups and two hand-offs on top of the codec, and each upstream
//! connection held hyper's 8 KiB read and write buffers. Here the request's task writes the
//! request and reads the response itself: no task per connection, no channel, and a
//! connection's 4 KiB read buffer is reused from one response to the next. Measured against the
//! build before it (hyper's client), in one load-bench run (proxy alone on one core): CPU per
//! proxied request 0.92× at 64 connections and 0.81× at 256, RSS at 256 connections 19.2 MiB
//! instead of 27.3; callgrind, 0.93× the instructions per proxied request. A response's header
//! map is its request's, cleared: 2 allocations and 2 frees fewer per proxied request than a
//! new map for each, and 0.98× the instructions. hyper still serves the downstream side, HTTP/2
//! upstreams, and upgrades (a 101 hands its connection to the tunnel, which hyper's upgrade
//! machinery owns).
//!
//! The codec is `httparse` for response heads (the parser hyper uses) and RFC 9112 framing:
//! [`encode`] writes the head and frames the body by its `Content-Length` or chunked;
//! [`decode`] reads `Content-Length`, chunked (with trailers) and close-delimited bodies, no
//! body for `HEAD`, 1xx, 204 and 304, skips interim 1xx responses, and refuses what smuggling
//! is made of (both `Content-Length` and `Transfer-Encoding`, conflicting lengths, bad chunk
//! sizes, a head over 64 KiB). A connection goes back to its pool only after a clean end of
//! the response, with the request fully written and no byte after the response; anything else
//! closes it.
//!
//! Position: under [`crate::upstream::pool`], which owns the connections. Config: none of its
//! own (the pool's `connect_timeout`, `pool_idle_timeout`, `tls`). Metrics: none (the try is
//! counted by [`crate::upstream::forward`]).

mod body;
mod decode;

pub use decode::{ReadResponse, read_response};
mod encode;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use http::Method;
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{BoxError, ProxyError, caused_by};
use crate::http::{Body, BodyTooLarge, Request, RequestBodyError, RequestBodyStalled, Response};

use body::{ResponseBody, Writer};
use decode::{Decoded, Decoder, Parsed};

/// The longest response head (and trailer section) accepted: the limit of the client this
/// replaced (`UPSTREAM_READ_BUF`). nginx's `proxy_buffer_size` is 4–8 KiB.
const MAX_HEAD: usize = 64 * 1024;

/// The first read of a response reserves this much; a read that fills its room doubles the
/// next one, up to [`MAX_READ`]. 4 KiB holds the head and a small body of most responses.
const FIRST_READ: usize = 4 * 1024;

/// The most one read takes from the socket: how far ahead of the client weir reads.
const MAX_READ: usize = 16 * 1024;

/// Why an upstream's bytes do not make a response, or a request's body not its request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("upstream response head is larger than 64 KiB or has more than 100 fields")]
    HeadTooLarge,
    #[error("upstream response head is malformed: {0}")]
    Parse(httparse::Error),
    #[error("upstream response has an invalid status code")]
    BadStatus,
    #[error("upstream response has an invalid header field")]
    BadHeader,
    #[error("upstream response has both Content-Length and Transfer-Encoding")]
    BothLengths,
    #[error("upstream response has an invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("upstream response body has a malformed chunk")]
    BadChunk,
    #[error("upstream answered 101 Switching Protocols to a request that asked no upgrade")]
    UnexpectedUpgrade,
    #[error("upstream closed the connection before the end of the response")]
    EarlyClose,
    #[error("request body does not match its Content-Length")]
    BodyLength,
}

/// Where a connection goes back when its response has ended cleanly.
pub(crate) trait Home: Send + Sync {
    /// Takes `conn` for the next request.
    fn keep(&self, conn: Conn);
}

/// An open upstream connection and its read buffer.
pub(crate) struct Conn {
    io: Io,
    /// Bytes read and not yet taken: the start of a response.
    buf: BytesMut,
    /// The write buffer, kept between requests while it is small (one allocation less per
    /// request), lent to the request's writer meanwhile.
    out: BytesMut,
    /// How much the next read reserves.
    read_size: usize,
}

/// The transport under a connection.
pub(crate) enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .field("buffered", &self.buf.len())
            .finish()
    }
}

impl Conn {
    /// A connection over `io`, with no buffer until its first read.
    pub(crate) fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: BytesMut::new(),
            read_size: FIRST_READ,
        }
    }

    /// Whether the connection can take another request: the upstream has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket became readable.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Lets go of the read buffer's memory when it holds nothing, so an idle connection
    /// costs only its socket.
    pub(crate) fn shrink(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.read_size = FIRST_READ;
        }
        self.out = BytesMut::new();
    }

    /// Whether the buffer holds more than the next response needs: worth letting go of when
    /// the connection goes idle.
    pub(crate) fn is_large(&self) -> bool {
        self.buf.capacity() > 2 * FIRST_READ || self.out.capacity() > FIRST_READ
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// Why an exchange gave no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing was written: the connection had closed. The request comes back to be sent on
    /// another connection.
    Unsent(Box<Request>),
    /// The exchange failed after the request may have reached the upstream.
    Failed(ProxyError),
}

/// Sends `req` (origin-form target, `Host` set) over `conn` and waits for the response head.
/// The response body reads the rest from the connection, and gives the connection to `home`
/// after a clean end; if the whole response is already in, the connection goes back at once
/// and the body is the bytes read.
///
/// Errors: `Unsent` when the first write failed; else `upstream-reset` (the connection broke,
/// or the upstream's bytes do not make a response), or the client's request body's own error
/// (`payload-too-large`, `bad-request`).
///
/// Not an `async fn`: the head is encoded before the future exists, and the future holds each
/// of its parts once (an `async fn` keeps its arguments beside the locals made of them: 1,072
/// bytes where this is 528).
pub(crate) fn send(
    mut conn: Conn,
    req: Request,
    home: Arc<dyn Home>,
) -> impl Future<Output = Result<Response, SendError>> + Send {
    let (mut parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    let framing = encode::head(&parts, has_body, &mut out).ok();
    let mut writer = framing.map(|framing| Writer::new(out, has_body.then_some(body), framing));
    let head_request = parts.method == Method::HEAD;
    async move {
        // No writer before the first poll: the head did not encode.
        if writer.is_none() {
            return Err(SendError::Failed(ProxyError::BadRequest(
                "invalid content-length",
            )));
        }
        // Set when writing failed after the first bytes: the upstream may still answer (a 413 to
        // a body it will not read), but the connection is done.
        let mut broken = false;
        let head = std::future::poll_fn(|cx| {
            if let Some(w) = &mut writer {
                match w.poll(cx, &mut conn.io) {
                    Poll::Ready(Ok(())) => {
                        conn.out = w.take_out();
                        writer = None;
                    }
                    Poll::Ready(Err(WriteError::Io(e))) if !w.wrote_any() => {
                        return Poll::Ready(Err(Err(e)));
                    }
                    Poll::Ready(Err(WriteError::Io(_))) => {
                        broken = true;
                        writer = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Ok(e.into_proxy()))),
                    Poll::Pending => {}
                }
            }
            loop {
                match decode::parse_head(&mut conn.buf, head_request, MAX_HEAD, &mut parts.headers)
                {
                    Ok(Parsed::Head(head)) => return Poll::Ready(Ok(head)),
                    Ok(Parsed::Interim) => continue,
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Poll::Ready(Err(Ok(reset(e)))),
                }
                match conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Ok(reset(H1Error::EarlyClose)))),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Ok(reset(e)))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        let head = match head {
            Ok(head) => head,
            // The first write failed: nothing left, the request goes elsewhere.
            Err(Err(_)) => {
                let body = writer.and_then(Writer::into_body).unwrap_or_default();
                return Err(SendError::Unsent(Box::new(Request::from_parts(
                    parts, body,
                ))));
            }
            Err(Ok(e)) => return Err(SendError::Failed(e)),
        };
        drop(parts);
        let mut decoder = Decoder::new(head.framing, MAX_HEAD);
        let keep_alive = head.keep_alive && !broken;
        let mut builder = http::Response::builder()
            .status(head.status)
            .version(head.version);
        if let Some(h) = builder.headers_mut() {
            *h = head.headers;
        }
        // The whole response may be in already (a small body): then the connection goes back now
        // and the body is the bytes read, with no state left to poll.
        let buffered = u64::try_from(conn.buf.len()).unwrap_or(u64::MAX);
        let complete = writer.is_none() && decoder.remaining().is_some_and(|n| n <= buffered);
        let body = if complete {
            let data = match decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => Body::full(data),
                _ => Body::empty(),
            };
            if keep_alive && conn.buf.is_empty() {
                home.keep(conn);
            }
            data
        } else {
            Body::boxed(ResponseBody::new(conn, decoder, writer, keep_alive, home))
        };
        builder
            .body(body)
            .map_err(|e| SendError::Failed(ProxyError::UpstreamReset(Box::new(e))))
    }
}

/// A broken exchange: `upstream-reset`.
fn reset<E: Into<BoxError>>(e: E) -> ProxyError {
    ProxyError::UpstreamReset(e.into())
}

/// Why writing the request stopped.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// The connection failed.
    Io(io::Error),
    /// The request body failed (the client's side).
    Body(BoxError),
    /// The request body's length is not its `Content-Length`.
    Length,
}

impl WriteError {
    /// The request's error: the client's request body, as the listener names it, or
    /// `upstream-reset`.
    fn into_proxy(self) -> ProxyError {
        match self {
            WriteError::Io(e) => reset(e),
            WriteError::Body(e) => sent_error(e),
            WriteError::Length => reset(H1Error::BodyLength),
        }
    }
}

/// An error after the request may have reached the upstream: the client's request body (too
/// large: 413; unreadable or stalled: 400), or else the upstream connection (502). The one
/// mapping of every upstream client's errors (this one, the upgrade path and HTTP/2).
pub(crate) fn sent_error(e: impl Into<BoxError>) -> ProxyError {
    let e = e.into();
    if caused_by::<BodyTooLarge>(&*e) {
        ProxyError::PayloadTooLarge
    } else if caused_by::<RequestBodyError>(&*e) {
        ProxyError::BadRequest("request body could not be read from the client")
    } else if caused_by::<RequestBodyStalled>(&*e) {
        ProxyError::BadRequest("the client stopped sending the request body")
    } else {
        ProxyError::UpstreamReset(e)
    }
}

// === impl Io ===

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
