//! Logs and traces: the global `tracing` subscriber, installed once by [`init`] from `main`.
//!
//! Logs are JSON lines on stdout, one object per event with its fields flattened in, filtered
//! by `RUST_LOG` (default `info`). That is all there is without the cargo feature `otel`.
//!
//! With the feature `otel` and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set to a non-empty value, weir also exports one span
//! per request over OTLP HTTP/protobuf, in batches from a background thread:
//!
//! - the span is `weir::request` at `info` level (so `RUST_LOG` must let `info` through for
//!   `weir::request`), kind server, named by the request method, with the attributes
//!   `http.request.method`, `http.route`, `http.response.status_code`, `weir.upstream` and
//!   `weir.reason` (the access log's), and status error on a 5xx;
//! - its parent is the inbound W3C `traceparent` (and `tracestate`), and its span id is the
//!   parent id weir sends upstream in `traceparent`, so the upstream's spans hang under it;
//!   without an inbound one it starts a trace;
//! - `service.name` is `OTEL_SERVICE_NAME` (default `weir`); the exporter's standard variables
//!   (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, ...), the batch settings
//!   (`OTEL_BSP_*`) and the sampler (`OTEL_TRACES_SAMPLER`, default: follow the inbound
//!   sampled flag, sample new traces) apply;
//! - the collector is reached over plain HTTP (no TLS).
//!
//! Without the variable the feature does nothing: no exporter, no span per request.
//! [`Telemetry::shutdown`] exports what is still buffered when weir stops.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The installed subscriber's exporter, if any. Call [`Telemetry::shutdown`] on the way out so
/// the spans still buffered are exported.
#[derive(Debug)]
#[must_use = "call `shutdown` on exit so buffered spans are exported"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    otel: Option<otel::Export>,
}

impl Telemetry {
    /// Exports the spans still buffered (waiting at most 5 s) and stops the exporter. Does
    /// nothing when no span is exported. Call it outside any async runtime.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(export) = self.otel {
            export.shutdown();
        }
    }
}

/// Installs the global subscriber: JSON lines on stdout filtered by `RUST_LOG` (default
/// `info`), plus OTLP span export when the feature `otel` is built and the environment asks for
/// it (see the module docs). Call it once, from `main`, before the runtime starts; when a
/// global subscriber is already installed, that one stays and this does nothing.
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // What `tracing_subscriber::fmt().json()...with_env_filter(filter).init()` builds, as layers
    // so that the OTLP layer can go on top with a filter of its own.
    let logs = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stdout),
        )
        .with(filter);
    #[cfg(feature = "otel")]
    if otel::configured() {
        return otel::init(logs);
    }
    let _ = logs.try_init();
    Telemetry {
        #[cfg(feature = "otel")]
        otel: None,
    }
}

/// What one request's trace needs on its walk: with OTLP export on, the request's span (its
/// parent the inbound `traceparent`, its span id the one sent upstream; it ends when this value
/// drops, when the response head is ready); without it, nothing, and every method is weir's own
/// rule or a no-op. The only place the request walk meets the `otel` feature.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    #[cfg(feature = "otel")]
    span: Option<tracing::Span>,
}

impl RequestTrace {
    /// Starts the trace of a request with `method` and inbound `headers`.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn start(method: &http::Method, headers: &http::HeaderMap) -> Self {
        Self {
            #[cfg(feature = "otel")]
            span: otel::request_span(method, headers),
        }
    }

    /// The `traceparent` to send upstream: the span's, or
    /// [`crate::http::context::traceparent`] of the `inbound` one.
    pub(crate) fn traceparent(&self, inbound: Option<&http::HeaderValue>) -> http::HeaderValue {
        #[cfg(feature = "otel")]
        if let Some(tp) = otel::traceparent(self.span.as_ref()) {
            return tp;
        }
        crate::http::context::traceparent(inbound)
    }

    /// Records on the span what the access log says: route (when one matched), upstream,
    /// status, reason; a 5xx marks the span as an error.
    #[cfg_attr(not(feature = "otel"), allow(unused_variables))]
    pub(crate) fn record(
        &self,
        route: &str,
        upstream: &str,
        status: http::StatusCode,
        reason: &str,
    ) {
        #[cfg(feature = "otel")]
        otel::record_response(self.span.as_ref(), route, upstream, status, reason);
    }
}

#[cfg(feature = "otel")]
mod otel {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue, Method, StatusCode};
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, Tracer};
    use tracing::{Level, Span, Subscriber};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;

    use super::{SubscriberExt, SubscriberInitExt, Telemetry};

    /// Set once the OTLP layer is installed; until then (and without it) requests get no span.
    static ACTIVE: AtomicBool = AtomicBool::new(false);

    const SERVICE_NAME_DEFAULT: &str = "weir";

    /// Whether the environment names an OTLP endpoint.
    pub(super) fn configured() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
    }

    /// Installs `logs` with the OTLP layer on top; `logs` alone (and a warning) when the
    /// exporter cannot be built.
    pub(super) fn init<S>(logs: S) -> Telemetry
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static,
    {
        match Export::start() {
            Ok((export, tracer)) => {
                if logs.with(layer(tracer)).try_init().is_err() {
                    export.shutdown();
                    return Telemetry { otel: None };
                }
                ACTIVE.store(true, Ordering::Relaxed);
                Telemetry { otel: Some(export) }
            }
            Err(e) => {
                let _ = logs.try_init();
                tracing::warn!(error = %e, "OTLP span export is off");
                Telemetry { otel: None }
            }
        }
    }

    /// The tracing-to-OpenTelemetry layer: weir's own spans only (not those of the libraries
    /// under it, which would include the exporter's own HTTP client), no per-span code
    /// location, thread or busy/idle attributes.
    pub(super) fn layer<S>(tracer: Tracer) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target("weir", Level::TRACE))
    }

    /// The provider and the small runtime its exporter's HTTP client runs on.
    #[derive(Debug)]
    pub(super) struct Export {
        provider: SdkTracerProvider,
        runtime: tokio::runtime::Runtime,
    }

    impl Export {
        fn start() -> Result<(Self, Tracer), Box<dyn std::error::Error + Send + Sync>> {
            // The batch processor exports from its own thread with a plain executor, while the
            // hyper client needs a tokio runtime (timers, connection tasks): one worker thread
            // of its own, entered around every poll of an export ([`OnRuntime`]). Its own so
            // that the final flush still works after the main runtime has stopped.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("weir-otlp")
                .enable_all()
                .build()?;
            let exporter = {
                let _entered = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()?
            };
            let service = std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| SERVICE_NAME_DEFAULT.to_owned());
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(OnRuntime {
                    inner: exporter,
                    runtime: runtime.handle().clone(),
                })
                .with_resource(Resource::builder().with_service_name(service).build())
                .build();
            let tracer = provider.tracer("weir");
            Ok((Self { provider, runtime }, tracer))
        }

        pub(super) fn shutdown(self) {
            if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(error = %e, "OTLP span export: final flush failed");
            }
            self.runtime.shutdown_background();
        }
    }

    /// A span exporter whose futures run with `runtime` entered.
    #[derive(Debug)]
    struct OnRuntime<E> {
        inner: E,
        runtime: tokio::runtime::Handle,
    }

    impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            let _entered = self.runtime.enter();
            Entered {
                runtime: self.runtime.clone(),
                inner: self.inner.export(batch),
            }
        }

        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            let _entered = self.runtime.enter();
            self.inner.shutdown_with_timeout(timeout)
        }

        fn force_flush(&self) -> OTelSdkResult {
            let _entered = self.runtime.enter();
            self.inner.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.inner.set_resource(resource);
        }
    }

    pin_project_lite::pin_project! {
        /// `inner`, polled with `runtime` entered.
        struct Entered<F> {
            runtime: tokio::runtime::Handle,
            #[pin]
            inner: F,
        }
    }

    impl<F: Future> Future for Entered<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            let _entered = this.runtime.enter();
            this.inner.poll(cx)
        }
    }

    /// The span of one request with `method` and inbound `headers`, when OTLP export is on:
    /// `weir::request`, its parent the inbound `traceparent`. Not entered: it lasts from this
    /// call until it is dropped, when the response head is ready.
    pub(super) fn request_span(method: &Method, headers: &HeaderMap) -> Option<Span> {
        ACTIVE
            .load(Ordering::Relaxed)
            .then(|| new_request_span(method, headers))
    }

    fn new_request_span(method: &Method, headers: &HeaderMap) -> Span {
        let span = tracing::info_span!(
            target: "weir::request",
            "request",
            otel.name = method.as_str(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method.as_str(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            weir.upstream = tracing::field::Empty,
            weir.reason = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        // Fails only when the span is disabled (RUST_LOG) or already started: then it has no
        // remote parent, and `traceparent` falls back to weir's own rule.
        let _ = span.set_parent(parent);
        span
    }

    /// The `traceparent` to send upstream for a request whose span is `span`: the span's trace
    /// id, its own span id as the parent id, its sampled flag. `None` when there is no span or
    /// it is not recorded by the OTLP layer (filtered out by `RUST_LOG`, exporter shut down);
    /// the caller then uses [`crate::http::context::traceparent`].
    pub(super) fn traceparent(span: Option<&Span>) -> Option<HeaderValue> {
        let cx = span?.context();
        let otel = cx.span();
        let sc = otel.span_context();
        if !sc.is_valid() {
            return None;
        }
        HeaderValue::from_str(&format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        ))
        .ok()
    }

    /// Records on the request's span what the access log says: route (when one matched),
    /// upstream, status, reason; a 5xx marks the span as an error.
    pub(super) fn record_response(
        span: Option<&Span>,
        route: &str,
        upstream: &str,
        status: StatusCode,
        reason: &str,
    ) {
        let Some(span) = span else { return };
        if !route.is_empty() {
            span.record("http.route", route);
        }
        // Numbers as i64: the layer keeps other integer types as strings.
        span.record("http.response.status_code", i64::from(status.as_u16()));
        span.record("weir.upstream", upstream);
        span.record("weir.reason", reason);
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }

    /// Inbound headers as a propagation carrier.
    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    #[cfg(test)]
    mod tests {
        use std::sync::{Arc, Mutex};

        use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
        use opentelemetry::{KeyValue, Value};

        use super::*;

        /// Keeps what it is given.
        #[derive(Clone, Debug, Default)]
        struct Collect(Arc<Mutex<Vec<SpanData>>>);

        impl SpanExporter for Collect {
            fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
                self.0.lock().unwrap().extend(batch);
                std::future::ready(Ok(()))
            }
        }

        /// Runs one request span through the OTLP layer: returns the traceparent sent upstream
        /// and the exported spans.
        fn one_request(inbound: Option<&str>, status: StatusCode) -> (String, Vec<SpanData>) {
            let collect = Collect::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(collect.clone())
                .build();
            let subscriber = tracing_subscriber::registry().with(layer(provider.tracer("weir")));
            let mut headers = HeaderMap::new();
            if let Some(tp) = inbound {
                headers.insert("traceparent", HeaderValue::from_str(tp).unwrap());
            }
            let sent = tracing::subscriber::with_default(subscriber, || {
                let span = new_request_span(&Method::GET, &headers);
                let sent = traceparent(Some(&span)).expect("a recorded span");
                record_response(Some(&span), "api", "backend", status, "upstream");
                sent
            });
            provider.force_flush().unwrap();
            let spans = collect.0.lock().unwrap().clone();
            (sent.to_str().unwrap().to_owned(), spans)
        }

        fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
            span.attributes
                .iter()
                .find(|KeyValue { key: k, .. }| k.as_str() == key)
                .map(|kv| &kv.value)
        }

        #[test]
        fn span_has_the_inbound_parent_and_sends_its_own_id_upstream() {
            let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let (sent, spans) = one_request(Some(inbound), StatusCode::OK);
            assert_eq!(spans.len(), 1, "{spans:?}");
            let span = &spans[0];
            let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
            assert_eq!(span.span_context.trace_id(), trace);
            assert_eq!(
                span.parent_span_id,
                SpanId::from_hex("00f067aa0ba902b7").unwrap()
            );
            assert!(span.parent_span_is_remote);
            assert_eq!(span.span_kind, SpanKind::Server);
            assert_eq!(span.name, "GET");
            assert_eq!(span.status, Status::Unset);
            assert_eq!(
                sent,
                format!("00-{trace}-{}-01", span.span_context.span_id()),
                "the upstream's parent is the exported span"
            );
            assert_eq!(
                attr(span, "http.response.status_code"),
                Some(&Value::I64(200))
            );
            assert_eq!(attr(span, "http.route"), Some(&Value::from("api")));
            assert_eq!(attr(span, "weir.reason"), Some(&Value::from("upstream")));
        }

        #[test]
        fn without_inbound_traceparent_the_span_starts_a_sampled_trace() {
            let (sent, spans) = one_request(Some("garbage"), StatusCode::BAD_GATEWAY);
            assert_eq!(spans.len(), 1, "{spans:?}");
            let span = &spans[0];
            assert_eq!(span.parent_span_id, SpanId::INVALID);
            assert!(matches!(span.status, Status::Error { .. }), "{span:?}");
            let sc = &span.span_context;
            assert_eq!(sent, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));
        }

        #[test]
        fn unsampled_inbound_trace_is_not_exported_but_gets_a_new_span_id() {
            let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
            let (sent, spans) = one_request(Some(inbound), StatusCode::OK);
            assert!(spans.is_empty(), "{spans:?}");
            assert!(
                sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{sent}"
            );
            assert!(sent.ends_with("-00"), "{sent}");
            assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
        }

        #[test]
        fn no_span_before_export_is_installed() {
            assert!(request_span(&Method::GET, &HeaderMap::new()).is_none());
            assert!(traceparent(None).is_none());
        }
    }
}
