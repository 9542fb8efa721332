//! The bounded body buffer for replay: a request body small enough is read once and re-sent
//! on every try; a larger one streams through untouched and its request is never retried.
//!
//! Position: [`super::Retry`] prepares the body before the first try. Config: `retry.max_body`.
//! Metrics: none; a body the client breaks answers 400 (`bad-request`) or 413.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::{BoxError, ProxyError, caused_by};
use crate::http::{Body, BodyTooLarge};

/// A request body made ready for one or more tries.
#[derive(Debug)]
pub(crate) enum Replay {
    /// The whole body (possibly empty), to be sent as `Body::full` clones on every try.
    Buffered(Bytes),
    /// Too large to buffer: sent once as it is (what was read already, then the rest).
    Streaming(Body),
}

impl Replay {
    /// Reads `body` when it is small enough to replay: empty, of an exact size up to
    /// `max_body`, or of unknown size and ending within `max_body` bytes. A body with trailers
    /// is not replayed. Fails only when reading fails, with the client's error.
    pub(crate) async fn prepare(mut body: Body, max_body: u64) -> Result<Self, ProxyError> {
        if body.is_end_stream() {
            return Ok(Self::Buffered(Bytes::new()));
        }
        let hint = body.size_hint();
        if hint.lower() > max_body {
            return Ok(Self::Streaming(body));
        }
        let mut chunks = VecDeque::new();
        let mut len = 0u64;
        loop {
            let frame = match body.frame().await {
                None => return Ok(Self::Buffered(concat(chunks, len))),
                Some(Err(e)) => return Err(client_error(&e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    len = len.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
                    if !data.is_empty() {
                        chunks.push_back(data);
                    }
                    if len > max_body {
                        return Ok(Self::Streaming(Prefixed::body(chunks, None, body)));
                    }
                    if body.is_end_stream() {
                        return Ok(Self::Buffered(concat(chunks, len)));
                    }
                }
                Err(other) => {
                    return Ok(Self::Streaming(Prefixed::body(chunks, Some(other), body)));
                }
            }
        }
    }
}

/// The answer to a request whose body could not be read: too large for the listener
/// ([`BodyTooLarge`] anywhere in the source chain) or otherwise the client's failure.
pub(crate) fn client_error(err: &BoxError) -> ProxyError {
    if caused_by::<BodyTooLarge>(&**err) {
        ProxyError::PayloadTooLarge
    } else {
        ProxyError::BadRequest("request body could not be read from the client")
    }
}

fn concat(mut chunks: VecDeque<Bytes>, len: u64) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop_front().unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
    for c in chunks {
        all.extend_from_slice(&c);
    }
    all.freeze()
}

/// What was read already, then the frame that stopped the reading, then the rest.
struct Prefixed {
    chunks: VecDeque<Bytes>,
    held: Option<Frame<Bytes>>,
    rest: Body,
}

impl Prefixed {
    fn body(chunks: VecDeque<Bytes>, held: Option<Frame<Bytes>>, rest: Body) -> Body {
        Body::boxed(Self { chunks, held, rest })
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(frame) = this.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.held.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let prefix: u64 = self
            .chunks
            .iter()
            .map(|c| u64::try_from(c.len()).unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        // Upper first: `set_lower` requires lower ≤ upper.
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(prefix));
        }
        hint.set_lower(rest.lower().saturating_add(prefix));
        hint
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;
    use http::HeaderMap;
    use http_body_util::StreamBody;

    use super::*;

    /// A body of `chunks` with no size hint.
    fn streamed(chunks: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Body::boxed(StreamBody::new(stream::iter(frames)))
    }

    async fn collect(body: Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn small_bodies_are_buffered() {
        let Replay::Buffered(b) = Replay::prepare(Body::empty(), 0).await.unwrap() else {
            panic!("empty body not buffered")
        };
        assert!(b.is_empty());
        let Replay::Buffered(b) = Replay::prepare(Body::full("hello"), 5).await.unwrap() else {
            panic!("exact body not buffered")
        };
        assert_eq!(b, "hello");
        let body = streamed(&["ab", "", "cd", "e"]);
        assert!(body.size_hint().exact().is_none());
        let Replay::Buffered(b) = Replay::prepare(body, 5).await.unwrap() else {
            panic!("unknown-size body not buffered")
        };
        assert_eq!(b, "abcde");
    }

    #[tokio::test]
    async fn large_bodies_stream_intact() {
        let Replay::Streaming(body) = Replay::prepare(Body::full("hello"), 4).await.unwrap() else {
            panic!("exact oversize body buffered")
        };
        assert_eq!(collect(body).await, "hello");
        let Replay::Streaming(body) = Replay::prepare(streamed(&["ab", "cd", "ef", "gh"]), 5)
            .await
            .unwrap()
        else {
            panic!("unknown oversize body buffered")
        };
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), 6, "the prefix read so far");
        assert_eq!(collect(body).await, "abcdefgh");
    }

    #[tokio::test]
    async fn trailers_stream_and_are_kept() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = Body::boxed(StreamBody::new(stream::iter(frames)));
        let Replay::Streaming(body) = Replay::prepare(body, 100).await.unwrap() else {
            panic!("body with trailers buffered")
        };
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "ab");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BodyTooLarge);

    #[tokio::test]
    async fn reading_errors_are_the_clients() {
        let failing = |err: BoxError| {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Err(err)];
            Body::boxed(StreamBody::new(stream::iter(frames)))
        };
        let err = Replay::prepare(failing(Box::new(Wrapped(BodyTooLarge))), 100)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "payload-too-large");
        let err = Replay::prepare(failing(Box::new(BodyTooLarge)), 100)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "payload-too-large");
        let err = Replay::prepare(failing(Box::new(std::io::Error::other("gone"))), 100)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProxyError::BadRequest(m) if m.contains("from the client")),
            "{err:?}"
        );
    }
}
