//! A [`Permit`]: one admitted request's hold on a slot, given back when its response ends (the
//! body read to the end or failed, or dropped; at the head when the whole body came with it)
//! or the call fails or is dropped.
//!
//! Position: made by admission (at once, or when a waiter's turn comes), held by
//! `ResponseFuture` and then by the response body. Config: none. Metrics: it feeds the service
//! time, the adaptive limit's samples and the dry run's late count of
//! `weir_dry_run_rejections_total`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;

use super::admit::Shared;
use crate::error::{BoxError, ProxyError};
use crate::http::{Body, Response, Watch, Watched};
use crate::resilience::Outcome;

/// One admitted request's slot; given back on drop.
pub(super) struct Permit {
    shared: Arc<Shared>,
    /// When it was admitted, if timed: for the adaptive limit's samples (every call), for the
    /// service time (calls that filled their share or came through the queue) and for a dry
    /// run's late count.
    started: Option<Instant>,
    /// Whether the time it is held feeds the service time.
    serviced: bool,
    /// Dry run, no service time known on arrival: the wait enforcing would have allowed it.
    /// Held longer than that, it counts as a would-be refusal when released.
    dry_wait: Option<Duration>,
}

/// Holds a request's permit until its response body ends (or fails) or is dropped, so a
/// streaming response counts in flight.
struct PermitBody(Option<Permit>);

// === impl Permit ===

impl Permit {
    /// A slot just taken; `contended` when it was the last of its share or came through the
    /// queue, the admissions whose service time predicts queue waits.
    pub(super) fn new(shared: Arc<Shared>, contended: bool, dry_wait: Option<Duration>) -> Self {
        let serviced = contended && shared.timing;
        let timed = serviced || dry_wait.is_some() || shared.gradient.is_some();
        Self {
            started: timed.then(Instant::now),
            shared,
            serviced,
            dry_wait,
        }
    }

    /// The inner call resolved with `out`: samples its round trip for the adaptive limit (at
    /// the response head), then keeps the slot until the response body ends or is dropped.
    pub(super) fn finish(self, out: Result<Response, ProxyError>) -> Result<Response, ProxyError> {
        if let Some(started) = self.started.filter(|_| self.shared.gradient.is_some()) {
            let counts = match &out {
                Ok(_) => true,
                Err(e) => Outcome::of_error(e) != Outcome::Ignored,
            };
            if counts {
                self.shared.sample(started.elapsed());
            }
        }
        match out {
            Ok(resp) if !resp.body().is_whole() => {
                Ok(resp.map(|body| Body::boxed(Watched::new(body, PermitBody(Some(self))))))
            }
            // Nothing left to stream (the body is empty, or the upstream sent all of it with
            // the head): the slot is released here.
            Ok(resp) => Ok(resp),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(started) = self
            .started
            .filter(|_| self.serviced || self.dry_wait.is_some())
        {
            let held = started.elapsed();
            // Any slot given back lets a waiter in, so every one counts for the expected wait.
            if self.serviced {
                self.shared.estimate.observe_service(held);
            }
            if self.dry_wait.is_some_and(|wait| held > wait) {
                self.shared.metrics.dry_run.increment(1);
            }
        }
        self.shared.release();
    }
}

// === impl PermitBody ===

impl Watch for PermitBody {
    fn polled(
        &mut self,
        _: &mut Context<'_>,
        polled: Poll<Option<Result<Frame<Bytes>, BoxError>>>,
        end: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let over = match &polled {
            Poll::Ready(Some(Ok(_))) => end,
            Poll::Ready(Some(Err(_)) | None) => true,
            Poll::Pending => false,
        };
        if over {
            drop(self.0.take());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt, service_fn};

    use crate::error::ProxyError;
    use crate::http::context::Priority;
    use crate::http::{Body, Request, Response};
    use crate::metrics::Metrics;
    use crate::resilience::Mode;
    use crate::resilience::shed::ShedLayer;
    use crate::resilience::shed::testing::*;

    #[tokio::test(start_paused = true)]
    async fn dropping_an_admitted_call_frees_its_slot_for_a_waiter() {
        let (_m, layer, leaf, svc) = setup(settings(Mode::Enforce, 1, 2, 10_000));
        let hold = spawn(&svc, 1, Priority::Default);
        settle().await;
        let waiter = spawn(&svc, 2, Priority::Default);
        settle().await;
        hold.abort();
        settle().await;
        assert_eq!(leaf.log(), [1, 2]);
        let st = layer.handle().status();
        assert_eq!((st.in_flight, st.queued), (1, 0));
        leaf.release(1);
        assert!(waiter.await.unwrap().is_ok());
        assert_eq!(layer.handle().status().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_body_holds_its_slot_until_it_ends_or_is_dropped_and_a_whole_one_does_not()
    {
        use http_body_util::BodyExt;

        let m = Metrics::new().unwrap();
        let layer = ShedLayer::new("u".into(), &settings(Mode::Enforce, 1, 4, 1000), &m);
        // Call 0 answers with an empty body, call 4 with a whole one (all of it read with the
        // head), the others with a streamed one that has a chunk still to read.
        let svc = layer.layer(service_fn(|req: Request| async move {
            let body = match req.extensions().get::<u32>() {
                Some(0) => Body::empty(),
                Some(4) => Body::full("whole"),
                _ => Body::boxed(
                    http_body_util::Full::new(bytes::Bytes::from_static(b"hello"))
                        .map_err(|never| match never {}),
                ),
            };
            Ok::<_, ProxyError>(Response::new(body))
        }));
        let call = |n: u32| svc.clone().oneshot(req(n, Priority::Default));
        let in_flight = || layer.handle().status().in_flight;
        let gauge = || {
            layer.handle().publish();
            metric(&m, "weir_in_flight{upstream=\"u\"}")
        };

        let resp = call(1).await.unwrap();
        assert_eq!((in_flight(), gauge()), (1, Some(1.0)));
        assert!(!http_body::Body::is_end_stream(resp.body()));
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(5));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert_eq!((in_flight(), gauge()), (0, Some(0.0)));

        // While a body is unread its slot is taken: the next call queues until it is dropped.
        let resp = call(2).await.unwrap();
        let next = spawn(&svc, 3, Priority::Default);
        settle().await;
        assert_eq!(layer.handle().status().queued, 1);
        drop(resp);
        let resp = next.await.unwrap().unwrap();
        assert_eq!(in_flight(), 1);
        drop(resp);
        assert_eq!((in_flight(), gauge()), (0, Some(0.0)));

        // Nothing to stream: released with the head.
        let resp = call(0).await.unwrap();
        assert_eq!(in_flight(), 0);
        drop(resp);

        // The whole body in hand: released with the head too, and the body is intact.
        let resp = call(4).await.unwrap();
        assert_eq!((in_flight(), gauge()), (0, Some(0.0)));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "whole");
    }
}
