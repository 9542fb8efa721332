//! One downstream connection's state: requests in flight, when it went idle, when a request
//! head started arriving, and since when a write to the client has made no progress.
//!
//! Position: shared by the connection task ([`crate::server`]), its IO wrapper and its
//! `ProxyService`. Config: `listeners[].header_read_timeout`, `idle_timeout`, `send_timeout`.
//!
//! [`Side`] lets the connection task wait on its timer, a stalled write and the listener's
//! stop without polling them each time the connection itself is woken.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::generation::Generation;
use crate::route::{RouteService, Target};

const NONE: u64 = u64::MAX;
const H2_PREFACE_START: &[u8] = b"PRI ";

/// The rare events a connection task waits on beside its connection (its timer, a stalled
/// write, the listener's stop), polled only after one of them woke the task.
///
/// `tokio::select!` polls every branch on every wake, and a connection is woken twice per
/// proxied request (the request, then the upstream's response): polling the `Notify`, the
/// cancellation token and the timer each time cost about 1,000 instructions per proxied
/// request (3 %). Here they are polled with a waker of their own, which marks them woken
/// before it wakes the task: a wake that came from the connection skips them with one atomic
/// swap. (`FuturesUnordered` keeps a waker per future for the same reason.)
#[derive(Debug, Default)]
pub(crate) struct Side {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Side {
    /// A fresh one, whose first [`Side::poll`] polls.
    pub(crate) fn new() -> Arc<Self> {
        let side = Arc::new(Self::default());
        side.rearm();
        side
    }

    /// Marks the side woken, so the next [`Side::poll`] polls a new future.
    pub(crate) fn rearm(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Polls `fut` when it woke the task since it was last polled (or after [`Side::rearm`]);
    /// otherwise `Pending` without touching it.
    pub(crate) fn poll<F: Future>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        // The task's waker first: a wake between the swap and the end of this poll wakes the
        // task again, and the next poll sees the mark.
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(self.clone());
        fut.poll(&mut Context::from_waker(&waker))
    }
}

impl Wake for Side {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// State of one connection: its timers (milliseconds since `epoch`) and the route stack its
/// last request used.
#[derive(Debug)]
pub(crate) struct ConnState {
    epoch: Instant,
    in_flight: AtomicU32,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    /// When a write to the client last returned `Pending` with none accepted since (`NONE`:
    /// writes are flowing).
    stalled_since: AtomicU64,
    /// Wakes the connection task when a write starts to stall, so `send_timeout` is timed
    /// from then and not from the task's next scheduled check.
    stall: Notify,
    upgraded: AtomicBool,
    last_service: Mutex<Option<LastService>>,
}

/// The route stack a connection's last request used, kept for its next one: cloning an erased
/// stack costs two allocations and an atomic per layer, and the requests of one connection
/// mostly take the same route. It holds its generation, so a target's address stays its own.
#[derive(Debug)]
struct LastService {
    generation: Arc<Generation>,
    target: usize,
    service: RouteService,
}

/// What the connection task should do now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConnAction {
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// Idle for `idle_timeout`: close gracefully (h1: close when idle; h2: GOAWAY).
    Idle,
    /// A request head has been arriving for longer than `header_read_timeout`: close now.
    SlowHead,
    /// A write to the client has made no progress for `send_timeout`: close now.
    SendStalled,
}

/// The timeouts a connection task applies (a listener's, as they were when it accepted).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// `header_read_timeout`.
    pub header_read: Duration,
    /// `idle_timeout`.
    pub idle: Duration,
    /// `send_timeout`; zero = none.
    pub send: Duration,
}

impl ConnState {
    /// A new connection, idle since now.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            stalled_since: AtomicU64::new(NONE),
            stall: Notify::new(),
            upgraded: AtomicBool::new(false),
            last_service: Mutex::new(None),
        })
    }

    /// The stack of `target` (of `generation`) for a request: the one this connection kept, or
    /// a clone of the target's. A concurrent request (HTTP/2) that finds it taken clones.
    pub(crate) fn take_service(
        &self,
        generation: &Arc<Generation>,
        target: &Target,
    ) -> RouteService {
        let key = std::ptr::from_ref(target) as usize;
        if let Ok(mut last) = self.last_service.try_lock()
            && let Some(kept) = last.take()
            && kept.target == key
            && Arc::ptr_eq(&kept.generation, generation)
        {
            return kept.service;
        }
        target.service.clone()
    }

    /// Keeps `service`, the stack of `target`, for the connection's next request.
    pub(crate) fn keep_service(
        &self,
        generation: Arc<Generation>,
        target: &Target,
        service: RouteService,
    ) {
        if let Ok(mut last) = self.last_service.try_lock() {
            *last = Some(LastService {
                generation,
                target: std::ptr::from_ref(target) as usize,
                service,
            });
        }
    }

    /// A request head was parsed: the connection is busy.
    pub(crate) fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
    }

    /// A request was answered (or dropped).
    pub(crate) fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// The connection was handed to a protocol upgrade (WebSocket); timers no longer apply.
    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// Resolves when a write to the client has just started to stall.
    pub(crate) async fn stalled(&self) {
        self.stall.notified().await;
    }

    /// Decides what the connection task should do, given the listener's timeouts.
    pub(crate) fn next_action(&self, t: Timeouts) -> ConnAction {
        let now = Instant::now();
        let stalled = self.stalled_since.load(Ordering::Acquire);
        let send_deadline =
            (stalled != NONE && !t.send.is_zero()).then(|| self.at(stalled) + t.send);
        if let Some(at) = send_deadline
            && now >= at
        {
            return ConnAction::SendStalled;
        }
        match self.timers(now, t.header_read, t.idle) {
            ConnAction::WaitUntil(at) => {
                ConnAction::WaitUntil(send_deadline.map_or(at, |s| s.min(at)))
            }
            other => other,
        }
    }

    fn timers(&self, now: Instant, header_read: Duration, idle: Duration) -> ConnAction {
        if self.upgraded.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire) > 0 {
            return ConnAction::WaitUntil(now + idle.max(header_read));
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE && !header_read.is_zero() {
            let deadline = self.at(head) + header_read;
            return if now >= deadline {
                ConnAction::SlowHead
            } else {
                ConnAction::WaitUntil(deadline.min(now + idle))
            };
        }
        let deadline = self.at(self.idle_since.load(Ordering::Acquire)) + idle;
        if idle.is_zero() {
            return ConnAction::WaitUntil(now + header_read.max(Duration::from_secs(3600)));
        }
        if now >= deadline {
            ConnAction::Idle
        } else {
            // Wake within header_read too, so a head that starts meanwhile is timed precisely.
            let cap = if header_read.is_zero() {
                deadline
            } else {
                now + header_read
            };
            ConnAction::WaitUntil(deadline.min(cap))
        }
    }

    /// Bytes arrived. On an HTTP/1 connection with nothing in flight they start a request head,
    /// and its timer. `timed` is the connection's own flag: cleared when the first bytes are the
    /// HTTP/2 preface (frames are not heads).
    fn on_read(&self, timed: &mut bool, first: &mut bool, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if std::mem::take(first) && bytes.starts_with(H2_PREFACE_START) {
            *timed = false;
        }
        if *timed
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A write returned: `Pending` starts the stall clock (once), progress stops it.
    fn on_write<T>(&self, res: &Poll<io::Result<T>>, progressed: impl FnOnce(&T) -> bool) {
        let stalled = self.stalled_since.load(Ordering::Relaxed) != NONE;
        match res {
            Poll::Pending if !stalled => {
                self.stalled_since.store(self.now_ms(), Ordering::Release);
                self.stall.notify_one();
            }
            Poll::Ready(Ok(v)) if stalled && progressed(v) => {
                self.stalled_since.store(NONE, Ordering::Release);
            }
            _ => {}
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// The connection's socket, reporting what it reads to [`ConnState`].
#[derive(Debug)]
pub(crate) struct ConnIo<T> {
    inner: T,
    state: Arc<ConnState>,
    timed: bool,
    first: bool,
}

impl<T> ConnIo<T> {
    /// Wraps `inner`; `state` is shared with the connection's service and task.
    pub(crate) fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            timed: true,
            first: true,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if res.is_ready() {
            let new = buf.filled().get(before..).unwrap_or_default();
            this.state.on_read(&mut this.timed, &mut this.first, new);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.state.on_write(&res, |n| *n > 0);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.state.on_write(&res, |n| *n > 0);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_flush(cx);
        this.state.on_write(&res, |()| true);
        res
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);
    const T: Timeouts = Timeouts {
        header_read: HEAD,
        idle: IDLE,
        send: Duration::from_secs(5),
    };

    /// A future that counts its polls and waits on a `Notify`.
    async fn counted(notify: &Notify, polls: &AtomicU32) {
        polls.fetch_add(1, Ordering::Relaxed);
        let mut notified = std::pin::pin!(notify.notified());
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            notified.as_mut().poll(cx)
        })
        .await;
    }

    #[test]
    fn a_side_future_is_polled_only_after_it_woke_the_task() {
        let (notify, polls) = (Notify::new(), AtomicU32::new(0));
        let mut fut = std::pin::pin!(counted(&notify, &polls));
        let side = Side::new();
        let task = Arc::new(Counted::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(side.poll(&mut cx, fut.as_mut()).is_pending());
        let first = polls.load(Ordering::Relaxed);
        assert!(first > 0, "the first poll polls the future");
        for _ in 0..3 {
            // Woken by something else (the connection): the future is not touched.
            assert!(side.poll(&mut cx, fut.as_mut()).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), first);
        assert_eq!(task.wakes.load(Ordering::Relaxed), 0);

        notify.notify_one();
        assert_eq!(
            task.wakes.load(Ordering::Relaxed),
            1,
            "its wake reaches the task"
        );
        assert!(side.poll(&mut cx, fut.as_mut()).is_ready());
        assert!(polls.load(Ordering::Relaxed) > first);

        // After a rearm, a new future is polled without a wake of its own.
        let (notify2, polls2) = (Notify::new(), AtomicU32::new(0));
        let mut fut2 = std::pin::pin!(counted(&notify2, &polls2));
        side.rearm();
        assert!(side.poll(&mut cx, fut2.as_mut()).is_pending());
        assert!(polls2.load(Ordering::Relaxed) > 0);
    }

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Counted {
        wakes: AtomicU32,
    }

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_closes_after_idle_timeout_not_header_timeout() {
        let s = ConnState::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(s.next_action(T), ConnAction::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_head_closes_after_header_timeout() {
        let s = ConnState::new();
        let (mut scan, mut first) = (true, true);
        tokio::time::advance(Duration::from_secs(5)).await;
        s.on_read(&mut scan, &mut first, b"GET / HTTP/1.1\r\nHo");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.next_action(T), ConnAction::SlowHead);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connection_is_left_alone_and_idle_restarts_after() {
        let s = ConnState::new();
        s.begin_request();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
        s.end_request();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.next_action(T), ConnAction::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_frames_do_not_start_a_head_timer() {
        let s = ConnState::new();
        let (mut scan, mut first) = (true, true);
        s.on_read(&mut scan, &mut first, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_without_progress_for_send_timeout_closes_and_progress_resets_it() {
        let s = ConnState::new();
        s.begin_request();
        s.on_write::<usize>(&Poll::Pending, |n| *n > 0);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            s.next_action(T),
            ConnAction::WaitUntil(Instant::now() + Duration::from_secs(1))
        );
        s.on_write(&Poll::Ready(Ok(10usize)), |n| *n > 0);
        tokio::time::advance(Duration::from_secs(4)).await;
        s.on_write::<usize>(&Poll::Pending, |n| *n > 0);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(s.next_action(T), ConnAction::WaitUntil(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.next_action(T), ConnAction::SendStalled);
        let none = Timeouts {
            send: Duration::ZERO,
            ..T
        };
        assert!(matches!(s.next_action(none), ConnAction::WaitUntil(_)));
    }
}
