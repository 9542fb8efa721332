//! What a retry re-sends: the [`Template`] of a request (its head, its headers flattened into
//! one buffer, the replay body's bytes and its context), kept from the first try.
//!
//! Position: built by [`super::Retry`] before the first try (with the body [`super::replay`]
//! buffered); each retry's request is made from it. Config: none here. Metrics: none.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

use super::Shared;
use crate::http::context::RequestContext;
use crate::http::{Body, Request};

/// What a retry needs once the first try has failed: the saved head and body, and the request's
/// context.
pub(super) struct Template {
    /// Method, URI and version of the request: what a retry's head needs besides its headers
    /// (a whole `Parts`, with its empty headers and extensions, is 224 bytes).
    method: Method,
    uri: Uri,
    version: Version,
    /// The request's headers, flattened.
    headers: FlatHeaders,
    bytes: Bytes,
    /// The request's context (route label, deadline), when it has one.
    pub(super) context: Option<RequestContext>,
    /// Whether the request may reach the upstream twice ([`super::policy::Policy::may_resend`]).
    pub(super) may_resend: bool,
}

/// A request's headers in one flat buffer: one allocation and one copy, where cloning the
/// `HeaderMap` costs two allocations and a reference count per header (and as much again to
/// drop it) on every request. It becomes a map again only when a retry happens; the values
/// then share the buffer.
///
/// Layout per header: name length (u16), name, sensitive flag (u8), value length (u32), value.
struct FlatHeaders(Bytes);

// === impl Template ===

impl Template {
    /// Splits `head` into the template and the extensions the first try takes as they are,
    /// after giving the context its endpoint memo.
    pub(super) fn new(
        shared: &Shared,
        head: &mut http::request::Parts,
        bytes: Bytes,
    ) -> (Self, http::Extensions) {
        let context = head.extensions.get_mut::<RequestContext>().map(|ctx| {
            if shared.endpoint_memo {
                ctx.last_endpoint = Some(Arc::new(AtomicUsize::new(usize::MAX)));
            }
            ctx.clone()
        });
        let template = Template {
            may_resend: shared.policy.may_resend(&head.method, &head.headers),
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            headers: FlatHeaders::new(&head.headers),
            bytes,
            context,
        };
        (template, std::mem::take(&mut head.extensions))
    }

    /// The route label of the request, when it has a context.
    pub(super) fn route(&self) -> Option<&Arc<str>> {
        self.context.as_ref().map(|c| &c.route)
    }

    /// The request of a retry: a copy of the head, the buffered body, and only the context
    /// among the extensions (allocated when a retry happens, not on every request).
    pub(super) fn retry_request(&self) -> Request {
        let mut req = Request::new(Body::full(self.bytes.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.to_map();
        if let Some(ctx) = &self.context {
            req.extensions_mut().insert(ctx.clone());
        }
        req
    }
}

// === impl FlatHeaders ===

impl FlatHeaders {
    fn new(headers: &HeaderMap) -> Self {
        // Exact size first: a buffer filled to its capacity becomes `Bytes` without another
        // allocation.
        let size: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + FLAT_ENTRY_OVERHEAD)
            .sum();
        let mut buf = Vec::with_capacity(size);
        for (name, value) in headers {
            let (name, value_bytes) = (name.as_str().as_bytes(), value.as_bytes());
            // Names and values beyond these lengths cannot come through the listener's limits;
            // were one to, it is left out of the copy rather than truncated.
            let (Ok(name_len), Ok(value_len)) =
                (u16::try_from(name.len()), u32::try_from(value_bytes.len()))
            else {
                continue;
            };
            buf.extend_from_slice(&name_len.to_le_bytes());
            buf.extend_from_slice(name);
            buf.push(u8::from(value.is_sensitive()));
            buf.extend_from_slice(&value_len.to_le_bytes());
            buf.extend_from_slice(value_bytes);
        }
        Self(Bytes::from(buf))
    }

    /// The headers as a map again, in their original order.
    fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let buf = &self.0;
        let mut at = 0usize;
        while let Some(entry) = Self::entry(buf, at) {
            let (name, value, sensitive, next) = entry;
            if let (Some(Ok(name)), Ok(mut value)) = (
                buf.get(name).map(HeaderName::from_bytes),
                HeaderValue::from_maybe_shared(buf.slice(value)),
            ) {
                value.set_sensitive(sensitive);
                map.append(name, value);
            }
            at = next;
        }
        map
    }

    /// The entry at `at`: name range, value range, sensitive flag, next offset.
    #[allow(clippy::type_complexity)]
    fn entry(
        buf: &[u8],
        at: usize,
    ) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>, bool, usize)> {
        let name_len = usize::from(u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?));
        let name = at + 2..at + 2 + name_len;
        let flag = *buf.get(name.end)?;
        let len_at = name.end + 1;
        let value_len = u32::from_le_bytes(buf.get(len_at..len_at + 4)?.try_into().ok()?);
        let start = len_at + 4;
        let value = start..start + usize::try_from(value_len).ok()?;
        if value.end > buf.len() {
            return None;
        }
        let next = value.end;
        Some((name, value, flag != 0, next))
    }
}

/// Bytes a flattened header takes besides its name and value: lengths and the flag.
const FLAT_ENTRY_OVERHEAD: usize = 7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_headers_come_back_whole_and_in_order() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a.example"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(true);
        h.insert("authorization", secret);
        h.insert("x-empty", HeaderValue::from_static(""));
        let long = "v".repeat(70_000);
        h.insert("x-long", HeaderValue::from_str(&long).unwrap());
        let back = FlatHeaders::new(&h).to_map();
        assert_eq!(back, h);
        let multi: Vec<_> = back.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert!(back["authorization"].is_sensitive());
        assert!(!back["host"].is_sensitive());
        assert!(FlatHeaders::new(&HeaderMap::new()).to_map().is_empty());
    }
}
