//! The two halves of an exchange that outlive its start: the [`Writer`] of the request body
//! (which may still be sending when the response head arrives: an upstream may answer before
//! it has read the whole request), and the [`ResponseBody`], which reads the rest of the
//! response from the connection, drives the writer meanwhile, and gives the connection back
//! to its pool after a clean end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::decode::{Decoded, Decoder};
use super::encode::{self, BodyFraming};
use super::{Conn, Home, Io, WriteError};
use crate::error::BoxError;
use crate::http::Body;

/// Body bytes gathered before a write: a body's frames are copied behind the head (one write
/// for a small request, as the client this replaced did with `writev(false)`) up to this much.
const WRITE_BATCH: usize = 64 * 1024;

/// Writes one request: the encoded head, then the body's frames as they come.
pub(super) struct Writer {
    /// Encoded bytes not yet written.
    out: BytesMut,
    /// The body, until its end has been read.
    body: Option<Body>,
    framing: BodyFraming,
    /// Body bytes framed so far (checked against `Content-Length`).
    framed: u64,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// Whether any byte reached the connection.
    wrote_any: bool,
}

impl Writer {
    /// A writer of `out` (the head) followed by `body`.
    pub(super) fn new(out: BytesMut, body: Option<Body>, framing: BodyFraming) -> Self {
        Self {
            out,
            body,
            framing,
            framed: 0,
            unflushed: false,
            wrote_any: false,
        }
    }

    /// Whether any byte of the request reached the connection.
    pub(super) fn wrote_any(&self) -> bool {
        self.wrote_any
    }

    /// The write buffer, empty once the request is written, for the connection's next one.
    pub(super) fn take_out(&mut self) -> BytesMut {
        std::mem::take(&mut self.out)
    }

    /// The body, when none of it was read (the request goes to another connection).
    pub(super) fn into_body(self) -> Option<Body> {
        self.body
    }

    /// Writes what there is; `Ready(Ok)` once the whole request is written and flushed.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut Io,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while !self.out.is_empty() {
                let n =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out)).map_err(WriteError::Io)?;
                if n == 0 {
                    let e = std::io::ErrorKind::WriteZero.into();
                    return Poll::Ready(Err(WriteError::Io(e)));
                }
                self.out.advance(n);
                self.wrote_any = true;
                self.unflushed = true;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.unflushed = false;
            }
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            // Gather frames that are ready, then write them in one go.
            while self.out.len() < WRITE_BATCH {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => self.data(&data)?,
                        Err(frame) => {
                            let trailers = frame.into_trailers().ok();
                            self.end(trailers.as_ref())?;
                        }
                    },
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(WriteError::Body(e))),
                    Poll::Ready(None) => self.end(None)?,
                    Poll::Pending if self.out.is_empty() => return Poll::Pending,
                    Poll::Pending => break,
                }
            }
        }
    }

    /// Frames body bytes.
    fn data(&mut self, data: &Bytes) -> Result<(), WriteError> {
        self.framed += data.len() as u64;
        match self.framing {
            BodyFraming::Length(n) if self.framed > n => return Err(WriteError::Length),
            BodyFraming::Chunked => encode::chunk(data, &mut self.out),
            _ => self.out.extend_from_slice(data),
        }
        Ok(())
    }

    /// The body has ended (with `trailers`, which only a chunked body can carry).
    fn end(&mut self, trailers: Option<&HeaderMap>) -> Result<(), WriteError> {
        self.body = None;
        match self.framing {
            BodyFraming::Length(n) if self.framed != n => Err(WriteError::Length),
            BodyFraming::Chunked => {
                encode::last_chunk(trailers, &mut self.out);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The body of a response still arriving on its connection.
pub(super) struct ResponseBody {
    /// The connection, until the response ends (or breaks).
    conn: Option<Conn>,
    decoder: Decoder,
    /// The rest of the request, when the upstream answered before taking all of it.
    writer: Option<Writer>,
    /// The connection may carry another request after this response.
    keep_alive: bool,
    home: Arc<dyn Home>,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Conn,
        decoder: Decoder,
        writer: Option<Writer>,
        keep_alive: bool,
        home: Arc<dyn Home>,
    ) -> Self {
        Self {
            conn: Some(conn),
            decoder,
            writer,
            keep_alive,
            home,
        }
    }

    /// The response has ended: the connection goes back when it is clean (the request was
    /// written to its end, no byte follows the response), else it closes.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive && self.writer.is_none() && conn.buf.is_empty() {
            self.home.keep(conn);
        }
        self.writer = None;
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            if let Some(w) = &mut this.writer {
                match w.poll(cx, &mut conn.io) {
                    Poll::Ready(Ok(())) => {
                        conn.out = w.take_out();
                        this.writer = None;
                    }
                    Poll::Ready(Err(WriteError::Body(e))) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    // The upstream stopped taking the request; its response may still come.
                    Poll::Ready(Err(_)) => {
                        this.keep_alive = false;
                        this.writer = None;
                    }
                    Poll::Pending => {}
                }
            }
            let decoded = match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::More) => match conn.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => this.decoder.eof(),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                other => other,
            };
            return Poll::Ready(match decoded {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    Some(Ok(Frame::data(data)))
                }
                Ok(Decoded::Trailers(trailers)) => {
                    this.finish();
                    Some(Ok(Frame::trailers(trailers)))
                }
                Ok(Decoded::End) => {
                    this.finish();
                    None
                }
                Ok(Decoded::More) => continue,
                Err(e) => {
                    this.conn = None;
                    Some(Err(Box::new(e) as BoxError))
                }
            });
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
