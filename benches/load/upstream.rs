//! Upstream for the load benchmarks (`benches/load/run.sh`, `benches/load/grpc.sh`).
//!
//! A minimal server: every request gets `200` with the 2-byte body `ok`
//! (`content-length: 2`) on a keep-alive connection, except a request with
//! `content-type: application/grpc*`, which gets a unary gRPC answer: `200`,
//! `content-type: application/grpc`, one 9-byte gRPC frame as data, then the
//! trailers `grpc-status: 0`. A request body is read to its end before the
//! answer, as a gRPC server reads the request message. It runs on a
//! current-thread runtime because it shares one core with the load generator.
//!
//! By default it speaks HTTP/1.1 only; `--http2` makes it speak HTTP/2 with
//! prior knowledge (h2c) only, as gRPC over plain TCP needs.
//!
//! Usage: `bench-upstream [--listen ADDR] [--http2]` (default `127.0.0.1:18000`, HTTP/1.1).

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const DEFAULT_LISTEN: &str = "127.0.0.1:18000";
const USAGE: &str = "usage: bench-upstream [--listen ADDR] [--http2]";
/// The gRPC answer's one message: compressed flag 0, length 4 (big-endian), then the protobuf
/// `{1: "ok"}` (field 1, wire type 2, length 2, `ok`).
const GRPC_FRAME: &[u8] = &[0, 0, 0, 0, 4, 0x0a, 2, b'o', b'k'];

/// What the command line asks for.
struct Args {
    listen: SocketAddr,
    http2: bool,
}

/// Parses `--listen ADDR` / `--listen=ADDR` and `--http2` from the command line.
fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut http2 = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_owned();
        } else if arg == "--http2" {
            http2 = true;
        } else if arg == "-h" || arg == "--help" {
            return Err(USAGE.into());
        } else {
            return Err(format!("unknown argument {arg:?}; {USAGE}").into());
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))?;
    Ok(Args { listen, http2 })
}

/// The answer body: `ok`, or a gRPC message followed by its trailers.
type Answer = Either<Full<Bytes>, GrpcBody>;

async fn handle(req: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let body = req.into_body();
    if !body.is_end_stream() {
        // A body that fails midway ends the stream anyway; the answer is then never read.
        let _ = body.collect().await;
    }
    if !grpc {
        return Ok(Response::new(Either::Left(Full::new(Bytes::from_static(
            b"ok",
        )))));
    }
    let mut resp = Response::new(Either::Right(GrpcBody::ok()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let listener = TcpListener::bind(args.listen).await?;
    loop {
        // An accept error is transient (out of file descriptors, peer reset
        // before accept): keep serving the connections already open.
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        // Best effort: a failure only costs latency, never correctness.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        // Connection errors (client reset, closed mid-request) end only that
        // connection; there is nothing useful to do with them here.
        if args.http2 {
            tokio::spawn(async move {
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service_fn(handle))
                    .await;
            });
        } else {
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(io, service_fn(handle))
                    .await;
            });
        }
    }
}

// === impl GrpcBody ===

/// A unary gRPC answer body: one data frame, then one trailers frame. Its size is not known up
/// front (the default size hint), so no `content-length` goes out, as from a gRPC server.
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl GrpcBody {
    /// The message [`GRPC_FRAME`] and `grpc-status: 0` (OK).
    fn ok() -> Self {
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self {
            data: Some(Bytes::from_static(GRPC_FRAME)),
            trailers: Some(trailers),
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
