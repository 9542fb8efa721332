//! The client against real sockets: a scripted upstream on 127.0.0.1 sends exact bytes, for
//! every framing case and every way an upstream misbehaves, and the tests check the response,
//! the error, what the upstream received, and whether the connection went back to the pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use http_body_util::channel::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Conn, Home, Io, SendError, send};
use crate::error::ProxyError;
use crate::http::{Body, Request};

/// The pool of a test: the connections given back.
#[derive(Default)]
struct Kept(Mutex<Vec<Conn>>);

impl Home for Kept {
    fn keep(&self, conn: Conn) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Kept {
    fn take(&self) -> Option<Conn> {
        self.0.lock().unwrap().pop()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// One step of a scripted upstream connection.
#[derive(Clone)]
enum Step {
    /// Read until a request head (and `body` more bytes) has come; report what came.
    Read { body: usize },
    /// Read until the bytes received end with this.
    ReadUntil(&'static [u8]),
    /// Write these bytes.
    Write(&'static [u8]),
    /// Wait a little, so the client reads what came so far.
    Pause,
    /// Close the connection.
    Close,
}

/// A scripted upstream: accepts one connection and plays `steps` on it; what each read took
/// arrives on the receiver.
async fn upstream(steps: Vec<Step>) -> (Conn, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for step in steps {
            match step {
                Step::Read { body } => {
                    let mut want = None;
                    loop {
                        if want.is_none()
                            && let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n")
                        {
                            want = Some(i + 4 + body);
                        }
                        if want.is_some_and(|w| seen.len() >= w)
                            || !read_more(&mut s, &mut seen).await
                        {
                            break;
                        }
                    }
                    let _ = tx.send(std::mem::take(&mut seen));
                }
                Step::ReadUntil(end) => {
                    while !seen.ends_with(end) && read_more(&mut s, &mut seen).await {}
                    let _ = tx.send(std::mem::take(&mut seen));
                }
                Step::Write(bytes) => {
                    if s.write_all(bytes).await.is_err() {
                        return;
                    }
                }
                Step::Pause => tokio::time::sleep(Duration::from_millis(20)).await,
                Step::Close => return,
            }
        }
        // Hold the connection open until the client closes it.
        let mut b = [0u8; 64];
        while s.read(&mut b).await.is_ok_and(|n| n > 0) {}
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    (Conn::new(Io::Tcp(stream)), rx)
}

/// Reads what the client sent next onto `seen`; false at its close.
async fn read_more(s: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
    let mut b = [0u8; 4096];
    let n = s.read(&mut b).await.unwrap_or(0);
    seen.extend_from_slice(&b[..n]);
    n > 0
}

fn get(path: &str) -> Request {
    http::Request::get(path)
        .header("host", "up")
        .body(Body::empty())
        .unwrap()
}

async fn exchange(
    conn: Conn,
    req: Request,
    kept: &Arc<Kept>,
) -> Result<http::Response<Body>, ProxyError> {
    match send(conn, req, kept.clone()).await {
        Ok(resp) => Ok(resp),
        Err(SendError::Failed(e)) => Err(e),
        Err(SendError::Unsent(_)) => panic!("request came back unsent"),
    }
}

/// The body's bytes and trailers, or its error.
async fn collect(resp: http::Response<Body>) -> Result<(Bytes, Option<HeaderMap>), String> {
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

fn is_reset(r: &Result<http::Response<Body>, ProxyError>) -> bool {
    matches!(r, Err(ProxyError::UpstreamReset(_)))
}

/// The message of an `upstream-reset`; any other outcome fails the test.
fn reset_message(r: Result<http::Response<Body>, ProxyError>) -> String {
    match r {
        Err(ProxyError::UpstreamReset(e)) => e.to_string(),
        other => panic!("not an upstream-reset: {other:?}"),
    }
}

#[tokio::test]
async fn content_length_response_and_the_connection_is_reused() {
    let (conn, mut seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok"),
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\n"),
        Step::Pause,
        Step::Write(b"two"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let resp = exchange(conn, get("/a?b=1"), &kept).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-a"], "1");
    // The whole response was in: the connection is back before the body is read.
    assert_eq!(kept.count(), 1);
    assert_eq!(collect(resp).await.unwrap().0, "ok");
    assert_eq!(
        seen.recv().await.unwrap(),
        b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n"
    );
    let mut conn = kept.take().unwrap();
    assert!(conn.is_open());
    let resp = exchange(conn, get("/second"), &kept).await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(kept.count(), 0, "the body is still on the wire");
    assert_eq!(collect(resp).await.unwrap().0, "two");
    assert_eq!(kept.count(), 1);
    assert!(seen.recv().await.unwrap().starts_with(b"GET /second "));
}

#[tokio::test]
async fn chunked_response_in_pieces_with_trailers() {
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"),
        Step::Pause,
        Step::Write(b"lo\r\n6;ext=1\r\n world\r\n"),
        Step::Pause,
        Step::Write(b"0\r\ngrpc-status: 0\r\n\r\n"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let resp = exchange(conn, get("/"), &kept).await.unwrap();
    let (body, trailers) = collect(resp).await.unwrap();
    assert_eq!(body, "hello world");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(kept.count(), 1);
}

#[tokio::test]
async fn close_delimited_response_ends_with_the_connection() {
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\n\r\nuntil "),
        Step::Pause,
        Step::Write(b"the end"),
        Step::Close,
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let resp = exchange(conn, get("/"), &kept).await.unwrap();
    assert_eq!(collect(resp).await.unwrap().0, "until the end");
    assert_eq!(
        kept.count(),
        0,
        "a close-delimited body ends its connection"
    );
}

#[tokio::test]
async fn bodiless_responses_and_interim_ones() {
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\n"),
        Step::Pause,
        Step::Write(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 204 No Content\r\n\r\n"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let head = http::Request::head("/")
        .header("host", "up")
        .body(Body::empty())
        .unwrap();
    let resp = exchange(conn, head, &kept).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(collect(resp).await.unwrap().0, "");
    let resp = exchange(kept.take().unwrap(), get("/"), &kept)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert!(
        resp.headers().get("link").is_none(),
        "interim heads are dropped"
    );
    let resp = exchange(kept.take().unwrap(), get("/"), &kept)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(collect(resp).await.unwrap().0, "");
    assert_eq!(kept.count(), 1);
}

#[tokio::test]
async fn malformed_heads_are_upstream_resets() {
    let cases: [&'static [u8]; 6] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ];
    for bytes in cases {
        let (conn, _seen) = upstream(vec![Step::Read { body: 0 }, Step::Write(bytes)]).await;
        let kept = Arc::new(Kept::default());
        let r = exchange(conn, get("/"), &kept).await;
        assert!(is_reset(&r), "{}: {r:?}", String::from_utf8_lossy(bytes));
        assert_eq!(kept.count(), 0);
    }
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused() {
    static BIG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let mut h = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        h.extend(std::iter::repeat_n(b'a', super::MAX_HEAD + 10));
        h.extend(b"\r\ncontent-length: 0\r\n\r\n");
        h
    });
    let (conn, _seen) = upstream(vec![Step::Read { body: 0 }, Step::Write(&BIG)]).await;
    let kept = Arc::new(Kept::default());
    let e = reset_message(exchange(conn, get("/"), &kept).await);
    assert!(e.contains("64 KiB"), "{e}");
}

#[tokio::test]
async fn a_broken_body_is_an_error_and_closes_the_connection() {
    let cases: [(&'static [u8], bool, &str); 2] = [
        // A bad chunk size.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n",
            false,
            "malformed chunk",
        ),
        // A body shorter than declared: the close comes first.
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
            true,
            "before the end",
        ),
    ];
    for (bytes, close, want) in cases {
        let mut steps = vec![Step::Read { body: 0 }, Step::Write(bytes)];
        if close {
            steps.extend([Step::Pause, Step::Close]);
        }
        let (conn, _seen) = upstream(steps).await;
        let kept = Arc::new(Kept::default());
        let resp = exchange(conn, get("/"), &kept).await.unwrap();
        let err = collect(resp).await.unwrap_err();
        assert!(err.contains(want), "{err}");
        assert_eq!(kept.count(), 0);
    }
}

#[tokio::test]
async fn bytes_after_the_response_close_the_connection() {
    // A body longer than declared: the client gets the declared bytes, and the rest (which
    // could pass for the next response) never reaches another request.
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let resp = exchange(conn, get("/"), &kept).await.unwrap();
    assert_eq!(collect(resp).await.unwrap().0, "ok");
    assert_eq!(kept.count(), 0);
}

#[tokio::test]
async fn an_early_close_before_any_response_is_an_upstream_reset() {
    let (conn, _seen) = upstream(vec![Step::Read { body: 0 }, Step::Close]).await;
    let kept = Arc::new(Kept::default());
    assert!(is_reset(&exchange(conn, get("/"), &kept).await));
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-"),
        Step::Close,
    ])
    .await;
    assert!(is_reset(&exchange(conn, get("/"), &kept).await));
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    exchange(conn, get("/"), &kept).await.unwrap();
    assert_eq!(kept.count(), 0);
}

#[tokio::test]
async fn request_bodies_by_length_and_chunked_with_trailers() {
    let (conn, mut seen) = upstream(vec![
        Step::Read { body: 5 },
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Step::ReadUntil(b"0\r\nx-sum: 3\r\n\r\n"),
        Step::Write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let req = http::Request::post("/up")
        .header("host", "up")
        .header("content-length", "5")
        .body(Body::full("hello"))
        .unwrap();
    exchange(conn, req, &kept).await.unwrap();
    assert_eq!(
        seen.recv().await.unwrap(),
        b"POST /up HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\nhello"
    );
    // A streamed body of unknown length goes chunked, frames as they come, trailers at the end.
    let (mut tx, body) = Channel::<Bytes, crate::error::BoxError>::new(1);
    let req = http::Request::post("/up")
        .header("host", "up")
        .body(Body::boxed(body))
        .unwrap();
    let feed = tokio::spawn(async move {
        tx.send_data(Bytes::from_static(b"ab")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_data(Bytes::from_static(b"c")).await.unwrap();
        let mut t = HeaderMap::new();
        t.insert("x-sum", "3".parse().unwrap());
        tx.send_trailers(t).await.unwrap();
    });
    exchange(kept.take().unwrap(), req, &kept).await.unwrap();
    feed.await.unwrap();
    let got = seen.recv().await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("POST /up HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\nx-sum: 3\r\n\r\n"),
        "{text}"
    );
    assert_eq!(kept.count(), 1);
}

#[tokio::test]
async fn a_request_body_longer_than_its_length_is_not_sent_on() {
    let (conn, _seen) = upstream(vec![Step::Read { body: 2 }]).await;
    let kept = Arc::new(Kept::default());
    let req = http::Request::post("/")
        .header("host", "up")
        .header("content-length", "2")
        .body(Body::full("too long"))
        .unwrap();
    let e = reset_message(exchange(conn, req, &kept).await);
    assert!(e.contains("Content-Length"), "{e}");
}

#[tokio::test]
async fn an_early_answer_to_an_unfinished_upload_closes_the_connection() {
    let (conn, _seen) = upstream(vec![
        Step::Read { body: 0 },
        Step::Write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nnope"),
    ])
    .await;
    let kept = Arc::new(Kept::default());
    let (mut tx, body) = Channel::<Bytes, crate::error::BoxError>::new(1);
    tx.send_data(Bytes::from_static(b"first")).await.unwrap();
    let req = http::Request::post("/")
        .header("host", "up")
        .body(Body::boxed(body))
        .unwrap();
    let resp = exchange(conn, req, &kept).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(collect(resp).await.unwrap().0, "nope");
    assert_eq!(kept.count(), 0, "the rest of the upload is still owed");
    drop(tx);
}

#[tokio::test]
async fn a_client_body_error_is_the_clients() {
    let (conn, _seen) = upstream(vec![Step::Read { body: 0 }]).await;
    let kept = Arc::new(Kept::default());
    let (tx, body) = Channel::<Bytes, crate::error::BoxError>::new(1);
    tx.abort(Box::new(crate::http::BodyTooLarge));
    let req = http::Request::post("/")
        .header("host", "up")
        .body(Body::boxed(body))
        .unwrap();
    let r = exchange(conn, req, &kept).await;
    assert!(matches!(r, Err(ProxyError::PayloadTooLarge)), "{r:?}");
}

#[tokio::test]
async fn a_closed_idle_connection_is_seen_and_the_request_comes_back_unsent() {
    let (mut conn, _seen) = upstream(vec![Step::Close]).await;
    // The close arrives through the runtime's reactor: poll until it is seen (bounded).
    let mut closed = false;
    for _ in 0..500 {
        if !conn.is_open() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "an upstream's close was never seen");
    // A request on it anyway: the first write may still be taken by the kernel, then the
    // close is an error; if the write fails at once, the request comes back untouched.
    let kept = Arc::new(Kept::default());
    match send(conn, get("/again"), kept.clone()).await {
        Err(SendError::Unsent(req)) => assert_eq!(req.uri(), "/again"),
        Err(SendError::Failed(ProxyError::UpstreamReset(_))) => {}
        other => panic!("{other:?}"),
    }
}
