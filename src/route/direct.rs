//! Direct responses: a route that answers by itself (status, headers, body), with no upstream:
//! weir as a fake backend. The body is the configured text or a generated one of `body_bytes`.
//!
//! Position: the leaf of a `respond` route's stack. Config: `routes[].respond`.
//! Metrics: counted by the server with `reason="direct"`.
//!
//! A generated body is made once, when the route is built (each config generation), and shared
//! by every response: a request costs a reference count, whatever the size.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tower::Service;

use crate::error::ProxyError;
use crate::http::{Body, Request, Response};

/// A direct response (`routes[].respond`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Status code; default 200.
    pub status: StatusCode,
    /// Body; default empty.
    pub body: Bytes,
    /// A generated body of this many bytes (at most [`MAX_BODY_BYTES`]) instead of `body`;
    /// default none.
    pub body_bytes: Option<usize>,
    /// Response headers, in file order; default none.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            status: StatusCode::OK,
            body: Bytes::new(),
            body_bytes: None,
            headers: Vec::new(),
        }
    }
}

/// The largest generated body (`body_bytes`): 64 MiB.
pub(crate) const MAX_BODY_BYTES: usize = 64 << 20;

/// Answers every request with the configured response. Always ready; the future is ready.
#[derive(Clone, Debug)]
pub(crate) struct Direct {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Direct {
    /// A service answering with `cfg`.
    pub(crate) fn new(cfg: &Settings) -> Self {
        let mut headers = HeaderMap::with_capacity(cfg.headers.len());
        for (k, v) in &cfg.headers {
            headers.append(k.clone(), v.clone());
        }
        Self {
            shared: Arc::new(Shared {
                status: cfg.status,
                headers,
                body: match cfg.body_bytes {
                    Some(n) => generated(n),
                    None => cfg.body.clone(),
                },
            }),
        }
    }
}

impl Service<Request> for Direct {
    type Response = Response;
    type Error = ProxyError;
    type Future = Ready<Result<Response, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let mut resp = Response::new(Body::full(self.shared.body.clone()));
        *resp.status_mut() = self.shared.status;
        // The request's map, emptied, holds the response's fields: it has room already (hyper
        // parsed the request into the map of the connection's last response), where a fresh
        // map or a clone of the configured one costs two allocations per request.
        let mut headers = std::mem::take(req.headers_mut());
        headers.clear();
        for (name, value) in &self.shared.headers {
            headers.append(name.clone(), value.clone());
        }
        *resp.headers_mut() = headers;
        ready(Ok(resp))
    }
}

/// A body of `n` bytes: lines of 63 printable characters and a newline, the last one cut
/// where the size ends (readable with `curl`, and no two lines alike in their first 4 KiB).
fn generated(n: usize) -> Bytes {
    const CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-";
    let body: Vec<u8> = (0..n)
        .map(|i| match i % 64 {
            63 => b'\n',
            col => CHARS[(col + i / 64) % CHARS.len()],
        })
        .collect();
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn answers_with_the_configured_response() {
        let cfg = Settings {
            status: StatusCode::CREATED,
            body: Bytes::from_static(b"made"),
            body_bytes: None,
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            )],
        };
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .insert("x-asked", http::HeaderValue::from_static("1"));
        let resp = Direct::new(&cfg).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        // The request's fields are not echoed back in the response's.
        assert_eq!(resp.headers().len(), 1);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "made");
    }

    #[tokio::test]
    async fn a_generated_body_has_its_size_and_is_shared() {
        for n in [0, 1, 63, 64, 65, 4096, 100_001] {
            let cfg = Settings {
                body: Bytes::from_static(b"ignored"),
                body_bytes: Some(n),
                ..Settings::default()
            };
            let direct = Direct::new(&cfg);
            for _ in 0..2 {
                let resp = direct.clone().oneshot(Request::new(Body::empty())).await;
                let body = resp
                    .unwrap()
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(body.len(), n);
                assert!(body.iter().all(|b| b.is_ascii_graphic() || *b == b'\n'));
                assert!(body.iter().skip(63).step_by(64).all(|b| *b == b'\n'));
                if n > 0 {
                    // The route's buffer itself, not a copy.
                    assert_eq!(body.as_ptr(), direct.shared.body.as_ptr(), "{n}");
                }
            }
        }
    }
}
