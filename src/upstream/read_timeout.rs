//! `read_timeout`: the longest wait for the next bytes of an upstream's response. Before the
//! head, [`Progress`] times the wait from the last bytes that went either way (a request body
//! the upstream is still reading is progress); in the body, [`ReadTimeoutBody`] times it from
//! the last frame. On expiry the head wait ends the try with `upstream-timeout` (504), and the
//! body yields [`BodyReadTimeout`], which aborts the response toward the client (HTTP/1: the
//! connection closes before the declared end; HTTP/2: `RST_STREAM`) and drops the upstream
//! body, which closes its connection (HTTP/1) or resets its stream (HTTP/2).
//!
//! Position: inside the forwarding leaf ([`crate::upstream::forward`]). Config:
//! `upstreams.<name>.read_timeout`. Metrics: `weir_upstream_attempts_total{outcome=
//! "upstream-timeout"}` (head), `weir_requests_total{reason="upstream-timeout"}` (both).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;

use crate::error::BoxError;
use crate::http::{Body, BodyReadTimeout, StallTimer, Watch, Watched};

/// When the request body of one try last moved toward the upstream, in milliseconds since the
/// try began. Shared by the try's future and its request body.
#[derive(Debug)]
pub(crate) struct Progress {
    base: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    /// A try that began at `base`.
    pub(crate) fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            last_ms: AtomicU64::new(0),
        })
    }

    /// Bytes moved now.
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the wait for the head ends, `timeout` after the last progress.
    pub(crate) fn deadline(&self, timeout: Duration) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + timeout
    }

    /// `body` as sent upstream: each frame the upstream connection takes is progress.
    pub(crate) fn track(self: &Arc<Self>, body: Body) -> Body {
        Body::boxed(Watched::new(body, Tracked(self.clone())))
    }
}

/// Stamps progress on every frame of a request body.
struct Tracked(Arc<Progress>);

impl Watch for Tracked {
    fn polled(&mut self, _: &mut Context<'_>, polled: Frames, _: bool) -> Frames {
        if polled.is_ready() {
            self.0.touch();
        }
        polled
    }
}

/// An upstream response body that fails with [`BodyReadTimeout`] when no frame arrives for
/// its timeout.
pub(crate) type ReadTimeoutBody = Watched<ReadTimeout>;

/// The timer of a [`ReadTimeoutBody`].
#[derive(Debug)]
pub(crate) struct ReadTimeout(StallTimer);

impl ReadTimeout {
    /// `inner`, bounded by `timeout` between frames.
    pub(crate) fn body(inner: Body, timeout: Duration) -> ReadTimeoutBody {
        Watched::new(inner, ReadTimeout(StallTimer::new(timeout)))
    }
}

impl Watch for ReadTimeout {
    fn polled(&mut self, cx: &mut Context<'_>, polled: Frames, _: bool) -> Frames {
        match polled {
            Poll::Ready(frame) => {
                self.0.progressed();
                Poll::Ready(frame)
            }
            Poll::Pending if self.0.expired(cx) => {
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

type Frames = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use http_body_util::BodyExt;

    use super::*;

    /// A body whose frames come from a channel.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Chan {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_the_timeout_and_frames_reset_it() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = ReadTimeout::body(Body::boxed(Chan(rx)), Duration::from_secs(3));
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(Bytes::from_static(b"a")).await.ok();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let started = Instant::now();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyReadTimeout>());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn progress_moves_the_head_deadline() {
        let p = Progress::new(Instant::now());
        let t = Duration::from_secs(3);
        assert_eq!(p.deadline(t), p.base + t);
        tokio::time::advance(Duration::from_secs(2)).await;
        p.touch();
        assert_eq!(p.deadline(t), p.base + Duration::from_secs(5));
    }
}
