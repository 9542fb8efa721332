//! Compiled route matchers: host (exact or `*.suffix`), path prefix, methods, headers.
//!
//! Position: evaluated by [`crate::router::Router`] in file order for every request.
//! Config: `routes[].match`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Conditions a request must meet to take a route (`routes[].match`); all given conditions
/// must hold.
///
/// `Default` matches every request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// The request path starts with this (`/`-prefixed); `None` matches any path.
    pub path_prefix: Option<String>,
    /// The request host equals this, ignoring case (stored lowercase); `None` matches any.
    pub host: Option<String>,
    /// The request method is one of these; empty matches any method.
    pub methods: Vec<Method>,
    /// Each of these headers is present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One route's match conditions; every condition given must hold.
#[derive(Clone, Debug)]
pub(crate) struct Matcher {
    host: Option<Host>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Clone, Debug)]
enum Host {
    Exact(String),
    /// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
    Suffix(String),
}

impl Matcher {
    /// Compiles the `match` table of a route.
    pub(crate) fn new(cfg: &RouteMatch) -> Self {
        let host = cfg.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) if suffix.starts_with('.') => Host::Suffix(suffix.to_owned()),
                _ => Host::Exact(h),
            }
        });
        Self {
            host,
            path_prefix: cfg.path_prefix.clone(),
            methods: cfg.methods.clone(),
            headers: cfg.headers.clone(),
        }
    }

    /// True when the request satisfies every condition. `host` is the request's host without
    /// port (from `Host`, or the URI authority for HTTP/2).
    pub(crate) fn matches(
        &self,
        method: &Method,
        path: &str,
        host: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        if let Some(prefix) = &self.path_prefix
            && !path.starts_with(prefix.as_str())
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                Host::Exact(h) => host.eq_ignore_ascii_case(h),
                Host::Suffix(s) => {
                    host.len() > s.len()
                        && host
                            .get(host.len() - s.len()..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
                }
            };
            if !ok {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        host: Option<&str>,
        prefix: Option<&str>,
        methods: &[Method],
        headers: &[(&'static str, &'static str)],
    ) -> Matcher {
        Matcher::new(&RouteMatch {
            path_prefix: prefix.map(str::to_owned),
            host: host.map(str::to_owned),
            methods: methods.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
                .collect(),
        })
    }

    #[test]
    fn each_condition_must_hold() {
        let none = HeaderMap::new();
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", HeaderValue::from_static("1"));
        let all = m(
            Some("api.example.com"),
            Some("/api"),
            &[Method::GET],
            &[("x-canary", "1")],
        );
        assert!(all.matches(&Method::GET, "/api/v1", Some("API.example.com"), &canary));
        assert!(!all.matches(&Method::POST, "/api/v1", Some("api.example.com"), &canary));
        assert!(!all.matches(&Method::GET, "/other", Some("api.example.com"), &canary));
        assert!(!all.matches(&Method::GET, "/api", Some("web.example.com"), &canary));
        assert!(!all.matches(&Method::GET, "/api", None, &canary));
        assert!(!all.matches(&Method::GET, "/api", Some("api.example.com"), &none));
        assert!(m(None, None, &[], &[]).matches(&Method::DELETE, "/", None, &none));
    }

    #[test]
    fn wildcard_host_matches_subdomains_only() {
        let w = m(Some("*.example.com"), None, &[], &[]);
        let h = HeaderMap::new();
        assert!(w.matches(&Method::GET, "/", Some("a.example.com"), &h));
        assert!(w.matches(&Method::GET, "/", Some("a.b.example.com"), &h));
        assert!(!w.matches(&Method::GET, "/", Some("example.com"), &h));
        assert!(!w.matches(&Method::GET, "/", Some("badexample.com"), &h));
    }
}
