//! Upstream for the load benchmark (`benches/load/run.sh`).
//!
//! A minimal HTTP/1.1 server: every request gets `200` with the 2-byte body
//! `ok` (`content-length: 2`) on a keep-alive connection. It runs on a
//! current-thread runtime because it shares one core with the load generator.
//!
//! Usage: `bench-upstream [--listen ADDR]` (default `127.0.0.1:18000`).

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const DEFAULT_LISTEN: &str = "127.0.0.1:18000";
const USAGE: &str = "usage: bench-upstream [--listen ADDR]";

/// Parses `--listen ADDR` / `--listen=ADDR` from the command line.
fn parse_args() -> Result<SocketAddr, Box<dyn Error>> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs an address")?;
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_owned();
        } else if arg == "-h" || arg == "--help" {
            return Err(USAGE.into());
        } else {
            return Err(format!("unknown argument {arg:?}; {USAGE}").into());
        }
    }
    Ok(listen
        .parse()
        .map_err(|e| format!("bad --listen address {listen:?}: {e}"))?)
}

async fn handle(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = parse_args()?;
    let listener = TcpListener::bind(addr).await?;
    loop {
        // An accept error is transient (out of file descriptors, peer reset
        // before accept): keep serving the connections already open.
        let Ok((stream, _peer)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        // Best effort: a failure only costs latency, never correctness.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Connection errors (client reset, closed mid-request) end only
            // that connection; there is nothing useful to do with them here.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
