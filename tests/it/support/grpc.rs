//! A real gRPC server (tonic, a hand-written service over the prost codec) whose answers a
//! test scripts, and a tonic client for it.
//!
//! The service is `weir.test.Echo`, written as tonic's generated code would be (messages by
//! hand, no protoc): `Unary` answers a [`Call`] with one [`Reply`] of the same name; `Stream`
//! answers with `Call::count` replies (index 0, 1, ...). Any other path gets UNIMPLEMENTED.
//!
//! Build with [`GrpcUpstream::new`], script it, then [`GrpcUpstream::start`]. A call walks
//! these steps, in order (`n` is its 0-based arrival number over both methods):
//! 1. the request message is decoded, then the call is counted in `calls()` and its
//!    `grpc-timeout` header recorded (`seen_timeouts()`);
//! 2. `delay(d)`: it waits `d` before answering;
//! 3. `fail_first(k, code)` with `n < k`, else `always(code)`: the call ends with that status,
//!    trailers-only (no message, the status in the response head);
//! 4. `Unary` answers its reply; `Stream` sends its replies, then OK in the trailers, or with
//!    `stream_then_fail(k, code)` sends `k` replies (whatever `count` says), then `code` in the
//!    trailers.
//!
//! A call whose handler is dropped while it waits in step 2 (the peer reset the stream or went
//! away) is counted in `cancelled()`.
//!
//! [`GrpcClient`] makes unary and server-streaming calls; [`grpc_request`] builds the same call
//! as a raw HTTP/2 request, for a test that looks at the HTTP level; [`parse_grpc_timeout`]
//! reads a recorded `grpc-timeout`.
//!
//! The server is tonic's `server::Grpc` served by hyper's HTTP/2 server (h2c, prior
//! knowledge), not `tonic::transport::Server`: that one enforces an inbound `grpc-timeout`
//! itself, answering CANCELLED when it expires, which would race weir's own deadline. For the
//! same reason [`GrpcClient`] is `tonic::client::Grpc` over a hyper-util client rather than a
//! tonic `Channel`: a channel enforces the `grpc-timeout` it sends, so the client would give up
//! at the moment weir answers. Both ends still speak tonic's framing, codec and status rules.
//! Dropping the [`RunningGrpcUpstream`] aborts every task it spawned.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::server::conn::http2;
use hyper_util::client::legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::tasks::Tasks;
use tonic::codegen::{BoxFuture, BoxStream, StdError};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// The service's full name.
pub const SERVICE: &str = "weir.test.Echo";
/// The path of the unary method.
pub const UNARY: &str = "/weir.test.Echo/Unary";
/// The path of the server-streaming method.
pub const STREAM: &str = "/weir.test.Echo/Stream";

/// The request message of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Call {
    /// Echoed in every reply.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How many replies `Stream` sends (unless `stream_then_fail` says otherwise).
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// Ignored by the server: makes a message as large as a test needs.
    #[prost(bytes = "vec", tag = "3")]
    pub padding: Vec<u8>,
}

/// The response message of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reply {
    /// The call's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The reply's place in a stream (0 for `Unary`).
    #[prost(uint32, tag = "2")]
    pub index: u32,
}

impl Call {
    /// A call named `name` (one reply from `Stream`).
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            count: 1,
            padding: Vec::new(),
        }
    }
}

/// One call as the server received it.
#[derive(Clone, Debug)]
pub struct SeenCall {
    /// The method's path ([`UNARY`] or [`STREAM`]).
    pub path: &'static str,
    /// The call's name.
    pub name: String,
    /// Its `grpc-timeout` header as sent (`None`: absent).
    pub grpc_timeout: Option<String>,
}

/// Settings of a gRPC upstream under construction; see the module docs for their order.
#[derive(Clone, Debug, Default)]
pub struct GrpcUpstream {
    delay: Option<Duration>,
    fail_first: (usize, Option<Code>),
    always: Option<Code>,
    stream_then_fail: Option<(usize, Code)>,
}

impl GrpcUpstream {
    /// A server that answers every call normally.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ends the first `n` calls with `code`, trailers-only.
    pub fn fail_first(mut self, n: usize, code: Code) -> Self {
        self.fail_first = (n, Some(code));
        self
    }

    /// Ends every call (after the `fail_first` ones) with `code`, trailers-only.
    pub fn always(mut self, code: Code) -> Self {
        self.always = Some(code);
        self
    }

    /// `Stream` sends `k` replies, then ends with `code` in the trailers.
    pub fn stream_then_fail(mut self, k: usize, code: Code) -> Self {
        self.stream_then_fail = Some((k, code));
        self
    }

    /// Waits `d` before answering each call.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(self) -> RunningGrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gRPC upstream");
        let addr = listener.local_addr().expect("gRPC upstream addr");
        let shared = Arc::new(Shared {
            cfg: self,
            seen: Mutex::new(Vec::new()),
            cancelled: AtomicUsize::new(0),
            tasks: Tasks::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        RunningGrpcUpstream {
            addr,
            shared,
            accept,
        }
    }
}

/// A started gRPC upstream; dropping it stops it and every task it spawned.
pub struct RunningGrpcUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl RunningGrpcUpstream {
    /// The bound address (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls received so far, both methods (counted once the request message is decoded).
    pub fn calls(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// The `grpc-timeout` header of each call so far, in arrival order (`None`: absent).
    pub fn seen_timeouts(&self) -> Vec<Option<String>> {
        self.seen().into_iter().map(|c| c.grpc_timeout).collect()
    }

    /// Every call so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenCall> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Calls abandoned by the peer before they were answered.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(SeqCst)
    }
}

impl Drop for RunningGrpcUpstream {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.tasks.abort_all();
    }
}

/// A `grpc-timeout` value (`199873u`, `2S`, ...) as a duration; `None` when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A raw HTTP/2 gRPC request for `path` carrying `call` as its one length-prefixed message,
/// for a test that looks at the HTTP level (with [`super::Client::h2`]).
pub fn grpc_request(path: &str, call: &Call) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    use prost::Message as _;
    let message = call.encode_to_vec();
    let len = u32::try_from(message.len()).expect("a message under 4 GiB");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0); // not compressed
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&message);
    super::client::build_request(
        http::Method::POST,
        path,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        framed.into(),
    )
}

// === the client ===

/// A tonic client of `weir.test.Echo` over one HTTP/2 (h2c) connection pool to `addr`. It sends
/// a request's `grpc-timeout` and enforces none itself (see the module docs). Every call is
/// bounded: it panics if no answer came within 10 s.
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<legacy::Client<HttpConnector, tonic::body::Body>>,
}

/// The bound on each [`GrpcClient`] call.
const CALL_LIMIT: Duration = Duration::from_secs(10);

impl GrpcClient {
    /// A client of the server (or the weir) at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let mut builder = legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true);
        let origin = format!("http://{addr}").parse().expect("an origin");
        Self {
            grpc: tonic::client::Grpc::with_origin(builder.build_http(), origin),
        }
    }

    /// `Unary` with `call`.
    pub async fn unary(&self, call: impl tonic::IntoRequest<Call>) -> Result<Reply, Status> {
        self.unary_at(UNARY, call)
            .await
            .map(tonic::Response::into_inner)
    }

    /// A unary call to `path` (any path: for one no route or service knows), with the whole
    /// response (metadata included).
    pub async fn unary_at(
        &self,
        path: &str,
        call: impl tonic::IntoRequest<Call>,
    ) -> Result<tonic::Response<Reply>, Status> {
        let path: PathAndQuery = path.parse().expect("a gRPC path");
        let mut grpc = self.grpc.clone();
        let req = call.into_request();
        bounded(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unknown(format!("client not ready: {e}")))?;
            grpc.unary(req, path, ProstCodec::default()).await
        })
        .await
    }

    /// `Stream` with `call`: the replies received, then how the call ended (`Ok(())`: OK in the
    /// trailers). A call refused before any reply gives no replies and that status.
    pub async fn stream(
        &self,
        call: impl tonic::IntoRequest<Call>,
    ) -> (Vec<Reply>, Result<(), Status>) {
        let path = PathAndQuery::from_static(STREAM);
        let mut grpc = self.grpc.clone();
        let req = call.into_request();
        bounded(async move {
            if let Err(e) = grpc.ready().await {
                let e = Status::unknown(format!("client not ready: {e}"));
                return (Vec::new(), Err(e));
            }
            let mut stream = match grpc
                .server_streaming(req, path, ProstCodec::default())
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => return (Vec::new(), Err(status)),
            };
            let mut replies = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(reply)) => replies.push(reply),
                    Ok(None) => return (replies, Ok(())),
                    Err(status) => return (replies, Err(status)),
                }
            }
        })
        .await
    }
}

async fn bounded<T>(call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(answer) => answer,
        Err(_) => panic!("no gRPC answer within {CALL_LIMIT:?}"),
    }
}

// === the server's internals ===

struct Shared {
    cfg: GrpcUpstream,
    seen: Mutex<Vec<SeenCall>>,
    cancelled: AtomicUsize,
    /// Connection and stream tasks, aborted when the upstream is dropped.
    tasks: Tasks,
}

impl Shared {
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(fut);
    }

    /// Steps 1 to 3 of the module docs: records the call, waits, and gives the scripted
    /// trailers-only status if there is one.
    async fn begin(&self, path: &'static str, req: &tonic::Request<Call>) -> Result<(), Status> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(SeenCall {
                path,
                name: req.get_ref().name.clone(),
                grpc_timeout: req
                    .metadata()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap_or("<not ASCII>").to_owned()),
            });
            seen.len() - 1
        };
        let mut guard = CancelGuard {
            shared: self,
            armed: true,
        };
        if let Some(d) = self.cfg.delay {
            tokio::time::sleep(d).await;
        }
        guard.armed = false;
        let scripted = match self.cfg.fail_first {
            (k, Some(code)) if n < k => Some(code),
            _ => self.cfg.always,
        };
        match scripted {
            Some(code) => Err(Status::new(code, format!("scripted {code:?}"))),
            None => Ok(()),
        }
    }
}

/// Counts the call as cancelled if dropped while still armed.
struct CancelGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancelled.fetch_add(1, SeqCst);
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let svc = TowerToHyperService::new(Echo(shared.clone()));
        let exec = shared.tasks.clone();
        shared.spawn(async move {
            let _ = http2::Builder::new(exec)
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The `weir.test.Echo` service, as tonic's generated server would route it.
#[derive(Clone)]
struct Echo(Arc<Shared>);

impl<B> tonic::codegen::Service<http::Request<B>> for Echo
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.0.clone();
        match req.uri().path() {
            UNARY => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(UnarySvc(shared), req).await)
            }),
            STREAM => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(StreamSvc(shared), req).await)
            }),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(Status::GRPC_STATUS, (Code::Unimplemented as i32).into());
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

struct UnarySvc(Arc<Shared>);

impl tonic::server::UnaryService<Call> for UnarySvc {
    type Response = Reply;
    type Future = BoxFuture<tonic::Response<Reply>, Status>;

    fn call(&mut self, req: tonic::Request<Call>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            shared.begin(UNARY, &req).await?;
            Ok(tonic::Response::new(Reply {
                name: req.into_inner().name,
                index: 0,
            }))
        })
    }
}

struct StreamSvc(Arc<Shared>);

impl tonic::server::ServerStreamingService<Call> for StreamSvc {
    type Response = Reply;
    type ResponseStream = BoxStream<Reply>;
    type Future = BoxFuture<tonic::Response<BoxStream<Reply>>, Status>;

    fn call(&mut self, req: tonic::Request<Call>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            shared.begin(STREAM, &req).await?;
            let call = req.into_inner();
            let (count, end) = match shared.cfg.stream_then_fail {
                Some((k, code)) => (k, Some(Status::new(code, format!("scripted {code:?}")))),
                None => (call.count as usize, None),
            };
            let mut items: Vec<Result<Reply, Status>> = (0..count)
                .map(|i| {
                    Ok(Reply {
                        name: call.name.clone(),
                        index: i as u32,
                    })
                })
                .collect();
            items.extend(end.map(Err));
            let stream: BoxStream<Reply> = Box::pin(futures_util::stream::iter(items));
            Ok(tonic::Response::new(stream))
        })
    }
}
