//! The future of [`super::Shed`]: the inner call holding a permit, a wait in the queue that
//! becomes the inner call when a slot is handed over, or a ready `overloaded` refusal.
//!
//! Position: returned by `Shed::call`; hands its permit to the response body when the inner
//! call resolves. Config: none. Metrics: none (admission and the queue count refusals).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use super::permit::Permit;
use super::queue::{Turn, Waiter};
use crate::error::ProxyError;
use crate::http::{Request, Response};

pin_project! {
    /// The future of [`Shed`](super::Shed): the inner call holding a slot, a wait in the queue,
    /// or a ready `overloaded` refusal.
    pub struct ResponseFuture<S>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S>
    where
        S: Service<Request>,
    {
        // Admitted on arrival: the inner call, made at once.
        Admitted {
            #[pin]
            inner: S::Future,
            permit: Option<Permit>,
        },
        // The queue paths are rare: boxed, so the common future stays small.
        Dequeued {
            inner: Pin<Box<Oneshot<S, Request>>>,
            permit: Option<Permit>,
        },
        Waiting {
            sleep: Pin<Box<Sleep>>,
            waiter: Waiter,
            call: Option<Box<(S, Request)>>,
        },
        Rejected,
    }
}

// === impl ResponseFuture ===

impl<S> ResponseFuture<S>
where
    S: Service<Request>,
{
    /// Admitted on arrival: `inner` is the call already made, holding `permit`.
    pub(super) fn admitted(inner: S::Future, permit: Permit) -> Self {
        Self {
            state: State::Admitted {
                inner,
                permit: Some(permit),
            },
        }
    }

    /// Queued: waits up to `wait` for a slot, then calls `svc` with `req`.
    pub(super) fn waiting(waiter: Waiter, wait: Duration, svc: S, req: Request) -> Self {
        Self {
            state: State::Waiting {
                sleep: Box::pin(tokio::time::sleep(wait)),
                waiter,
                call: Some(Box::new((svc, req))),
            },
        }
    }

    /// Refused at once: ready with `overloaded`, holding no queue place and no timer.
    pub(super) fn rejected() -> Self {
        Self {
            state: State::Rejected,
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request, Response = Response, Error = ProxyError>,
{
    type Output = Result<Response, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Admitted { inner, permit } => {
                    let out = ready!(inner.poll(cx));
                    return Poll::Ready(match permit.take() {
                        Some(permit) => permit.finish(out),
                        None => out,
                    });
                }
                StateProj::Dequeued { inner, permit } => {
                    let out = ready!(inner.as_mut().poll(cx));
                    return Poll::Ready(match permit.take() {
                        Some(permit) => permit.finish(out),
                        None => out,
                    });
                }
                StateProj::Rejected => return Poll::Ready(Err(ProxyError::Overloaded)),
                StateProj::Waiting {
                    sleep,
                    waiter,
                    call,
                } => match (ready!(waiter.poll_turn(cx, sleep.as_mut())), call.take()) {
                    (Turn::Granted(permit), Some(call)) => {
                        let (svc, req) = *call;
                        State::Dequeued {
                            inner: Box::pin(svc.oneshot(req)),
                            permit: Some(permit),
                        }
                    }
                    // `call` is taken only here, on leaving this state; a second turn cannot
                    // happen. Were it to, the permit is released on drop.
                    (Turn::Granted(_), None) | (Turn::Refused, _) => State::Rejected,
                },
            };
            self.as_mut().project().state.set(next);
        }
    }
}
