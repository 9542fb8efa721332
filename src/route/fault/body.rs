//! Broken response bodies: a body sent slowly (paced at a byte rate), or cut off after half of
//! it, or both, for the fault layer's `slow_body` and `truncate` faults.
//!
//! Position: wraps a response body on its way back through [`super::Fault`]; the server sends
//! it. Config: `routes[].fault.truncate_percent`, `slow_body_percent`, `slow_body_rate`.
//!
//! A cut body yields its first half, waits [`CUT_PAUSE`], then fails with [`Truncated`]: hyper
//! then closes an HTTP/1 connection (the client has had fewer bytes than `Content-Length`, or a
//! chunked body without its last chunk) and resets an HTTP/2 stream. The pause is there because
//! hyper drops what it has not yet written to the socket when a body fails: without it, the
//! half (and even the head) could be lost with the connection.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;
use crate::http::Body;

/// The error a cut body ends with: the server records the request as `fault-injected`.
#[derive(Debug, thiserror::Error)]
#[error("response body cut off by fault injection")]
pub(crate) struct Truncated;

/// A response body passed through with the body faults of one request.
#[derive(Debug)]
pub(crate) struct FaultBody {
    inner: Body,
    /// The size hint the inner body gave before it was polled.
    hint: SizeHint,
    /// Data bytes yielded so far.
    sent: u64,
    /// Bytes taken from the inner body and not yet yielded.
    pending: Bytes,
    pace: Option<Pace>,
    cut: Cut,
    /// The pacing timer, then the pause before the cut; boxed once per broken body.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Pacing at `rate` bytes per second, in chunks of a tenth of a second's worth.
#[derive(Debug)]
struct Pace {
    rate: u64,
    chunk: usize,
    /// When the first byte could go: the first poll, right after the head.
    start: Option<Instant>,
}

/// Where the body is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Not cut.
    Never,
    /// After this many bytes; `None` until known (half the first chunk of a body of unknown
    /// length).
    After(Option<u64>),
    /// The bytes before the cut went out; waiting out [`CUT_PAUSE`].
    Pausing,
    /// The body failed.
    Done,
}

impl FaultBody {
    /// `inner` cut after half of it (`truncate`) and/or paced at `slow` bytes per second.
    pub(crate) fn new(inner: Body, truncate: bool, slow: Option<u64>) -> Self {
        use http_body::Body as _;

        let hint = inner.size_hint();
        let cut = if truncate {
            Cut::After(hint.exact().map(|n| n / 2))
        } else {
            Cut::Never
        };
        let pace = slow.map(|rate| Pace {
            rate: rate.max(1),
            chunk: usize::try_from(rate / 10).unwrap_or(usize::MAX).max(1),
            start: None,
        });
        Self {
            inner,
            hint,
            sent: 0,
            pending: Bytes::new(),
            pace,
            cut,
            sleep: None,
        }
    }

    /// Ready once `at` has passed (else the task is woken then).
    fn wait_until(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        if Instant::now() >= at {
            return Poll::Ready(());
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx)
    }

    /// Starts the pause before the cut.
    fn pause(&mut self) {
        self.cut = Cut::Pausing;
        self.pending = Bytes::new();
        let at = Instant::now() + CUT_PAUSE;
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Yields the next chunk of `pending`: at most a pacing chunk, never past the cut, and not
    /// before its pacing time.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        let mut n = self.pending.len();
        if let Cut::After(Some(at)) = self.cut {
            n = n.min(usize::try_from(at.saturating_sub(self.sent)).unwrap_or(usize::MAX));
        }
        if let Some(pace) = &mut self.pace {
            n = n.min(pace.chunk);
            let start = *pace.start.get_or_insert_with(Instant::now);
            let due = start + time_for(self.sent + n as u64, pace.rate);
            ready!(self.wait_until(cx, due));
        }
        self.sent += n as u64;
        Poll::Ready(self.pending.split_to(n))
    }

    /// Whether the cut point has been reached.
    fn at_cut(&self) -> bool {
        matches!(self.cut, Cut::After(Some(at)) if self.sent >= at)
    }
}

impl http_body::Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.cut {
                Cut::Pausing => {
                    if let Some(sleep) = &mut this.sleep {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    this.cut = Cut::Done;
                    return Poll::Ready(Some(Err(Box::new(Truncated))));
                }
                Cut::Done => return Poll::Ready(None),
                Cut::Never | Cut::After(_) => {}
            }
            if this.at_cut() {
                this.pause();
                continue;
            }
            if !this.pending.is_empty() {
                let data = ready!(this.poll_pending(cx));
                if this.at_cut() {
                    this.pause();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                // The inner body ended (or sent its trailers) before the cut: cut here.
                None if this.cut != Cut::Never => {
                    this.pause();
                    continue;
                }
                other => return Poll::Ready(other),
            };
            match frame.into_data() {
                Ok(data) => {
                    if this.cut == Cut::After(None) {
                        this.cut = Cut::After(Some(this.sent + data.len() as u64 / 2));
                    }
                    this.pending = data;
                }
                Err(_trailers) if this.cut != Cut::Never => this.pause(),
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.cut {
            Cut::Done => true,
            Cut::Never => self.pending.is_empty() && self.inner.is_end_stream(),
            Cut::After(_) | Cut::Pausing => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.hint.exact() {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => self.hint,
        }
    }
}

/// How long `bytes` take at `rate` bytes per second.
fn time_for(bytes: u64, rate: u64) -> Duration {
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How long a cut body waits after its first half before it fails (see the module docs).
pub(crate) const CUT_PAUSE: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;

    /// Every frame of `body` with the time it came, and how the body ended.
    async fn drain(mut body: FaultBody) -> (Vec<(Duration, Bytes)>, Result<(), BoxError>) {
        let start = Instant::now();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => frames.push((start.elapsed(), d)),
                    Err(_) => frames.push((start.elapsed(), Bytes::from_static(b"<trailers>"))),
                },
                Err(e) => return (frames, Err(e)),
            }
        }
        (frames, Ok(()))
    }

    fn bytes(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    fn joined(frames: &[(Duration, Bytes)]) -> Vec<u8> {
        frames.iter().flat_map(|(_, b)| b.to_vec()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_body_sends_half_then_fails_after_the_pause() {
        let body = FaultBody::new(Body::full(bytes(1000)), true, None);
        assert_eq!(body.size_hint().exact(), Some(1000), "Content-Length stays");
        assert!(!body.is_end_stream());
        let (frames, end) = drain(body).await;
        assert_eq!(joined(&frames), bytes(1000)[..500].to_vec());
        assert_eq!(frames[0].0, Duration::ZERO);
        assert!(end.unwrap_err().is::<Truncated>());
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_comes_after_the_pause() {
        let mut body = FaultBody::new(Body::full(bytes(10)), true, None);
        let start = Instant::now();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), 5);
        let end = body.frame().await.unwrap().unwrap_err();
        assert!(end.is::<Truncated>());
        assert_eq!(start.elapsed(), CUT_PAUSE);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_of_unknown_length_is_cut_in_its_first_chunk() {
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(
            [bytes(300), bytes(300)].map(|b| Ok::<_, BoxError>(Frame::data(b))),
        ));
        let body = FaultBody::new(Body::boxed(stream), true, None);
        assert_eq!(body.size_hint().exact(), None);
        let (frames, end) = drain(body).await;
        assert_eq!(joined(&frames).len(), 150);
        assert!(end.is_err());
        // An empty body has nothing to cut: it fails after the pause.
        let (frames, end) = drain(FaultBody::new(Body::empty(), true, None)).await;
        assert!(frames.is_empty() && end.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_paced_at_its_rate() {
        // 4096 bytes at 16384 B/s: chunks of 1638 bytes, the last byte at 250ms.
        let body = FaultBody::new(Body::full(bytes(4096)), false, Some(16_384));
        assert_eq!(body.size_hint().exact(), Some(4096));
        let (frames, end) = drain(body).await;
        end.unwrap();
        assert_eq!(joined(&frames), bytes(4096).to_vec());
        let sizes: Vec<usize> = frames.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [1638, 1638, 820]);
        let at: Vec<Duration> = frames.iter().map(|(t, _)| *t).collect();
        assert_eq!(at[2], Duration::from_millis(250));
        // Each chunk goes when the bytes through its end are due at the rate (tokio's timer
        // rounds up to the millisecond).
        for (at, through) in at.iter().zip([1638, 3276, 4096]) {
            let due = time_for(through, 16_384);
            assert!(
                *at >= due && *at - due < Duration::from_millis(1),
                "{at:?} {due:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_and_cut_together() {
        let body = FaultBody::new(Body::full(bytes(2000)), true, Some(1000));
        let (frames, end) = drain(body).await;
        assert!(end.unwrap_err().is::<Truncated>());
        assert_eq!(joined(&frames).len(), 1000);
        assert_eq!(frames.last().unwrap().0, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_pass_a_slow_body_after_its_data() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = [Frame::data(bytes(10)), Frame::trailers(trailers)];
        let stream = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames.map(Ok::<_, BoxError>),
        ));
        let body = FaultBody::new(Body::boxed(stream), false, Some(100));
        let (frames, end) = drain(body).await;
        end.unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], (Duration::from_millis(100), bytes(10)));
        assert_eq!(&frames[1].1[..], b"<trailers>");
    }
}
