//! The router: which route serves a request. First match in file order wins.
//!
//! Position: step 3 of the walk, called by [`crate::server::service`] after hygiene.
//! Config: `routes[].match`. Unmatched requests fail with `no-route` (404).

pub(crate) mod matcher;

use http::header::HOST;
use http::request::Parts;

use matcher::Matcher;

/// The compiled routes of one generation, in file order. Generic over what a route is, so the
/// router knows matchers and nothing of the stacks behind them.
#[derive(Debug)]
pub(crate) struct Router<R> {
    routes: Vec<(Matcher, R)>,
}

impl<R> Router<R> {
    /// A router over `routes`, each with its matcher, tried in the order given.
    pub(crate) fn new(routes: Vec<(Matcher, R)>) -> Self {
        Self { routes }
    }

    /// The routes, in match order.
    pub(crate) fn routes(&self) -> impl Iterator<Item = &R> {
        self.routes.iter().map(|(_, r)| r)
    }

    /// The first route whose matcher accepts the request, or `None` (`no-route`).
    pub(crate) fn route(&self, parts: &Parts) -> Option<&R> {
        let host = request_host(parts);
        let path = parts.uri.path();
        self.routes
            .iter()
            .find(|(m, _)| m.matches(&parts.method, path, host, &parts.headers))
            .map(|(_, r)| r)
    }
}

/// The host a request is for, without port: the `Host` header, else the URI authority (h2).
pub(crate) fn request_host(parts: &Parts) -> Option<&str> {
    let raw = match parts.headers.get(HOST).and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        None => parts.uri.authority()?.as_str(),
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_from_header_or_authority_without_port() {
        let (p, ()) = http::Request::get("/")
            .header("host", "a.example:8080")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&p), Some("a.example"));
        let (p, ()) = http::Request::get("http://b.example/x")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&p), Some("b.example"));
        let (p, ()) = http::Request::get("/")
            .header("host", "[::1]:80")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&p), Some("::1"));
        let (p, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        assert_eq!(request_host(&p), None);
    }
}
