//! `/status.json`: the [`StatusSnapshot`] for tools, written by serde from views shaped key for
//! key like the document (see the README's admin section): durations in seconds, floats with
//! three decimals, `null` for what is absent or not finite.
//!
//! Position: admin port, off the request path; renders a snapshot already taken and reads
//! nothing live. Config: none. Metrics: none.

use std::io;
use std::net::SocketAddr;

use serde::Serialize;
use serde_json::ser::{Formatter, Serializer};

use super::{EndpointView, StatusSnapshot, TargetView, UpstreamView};

/// The status document as JSON, one line: `version`, `taken_at`, `listeners`, `routes` and
/// `upstreams`.
pub(crate) fn json(s: &StatusSnapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    let written = Document::new(s)
        .serialize(&mut Serializer::with_formatter(&mut out, ThreeDecimals))
        .is_ok();
    // Views of strings, numbers and lists written into a `Vec` cannot fail; should one ever
    // fail, the answer is an empty document rather than half of one.
    if !written {
        out.clear();
    }
    out.push(b'\n');
    out
}

/// serde_json's compact form, with every float written with three decimals (`1.500`):
/// millisecond precision for seconds, and the document's form since it was first written.
/// serde_json writes a non-finite float as `null` before it gets here.
struct ThreeDecimals;

impl Formatter for ThreeDecimals {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        write!(w, "{value:.3}")
    }
}

// === The document's views ===

#[derive(Serialize)]
struct Document<'a> {
    version: &'a str,
    taken_at: String,
    listeners: Vec<Listener<'a>>,
    routes: Vec<Route<'a>>,
    upstreams: Vec<Upstream<'a>>,
}

#[derive(Serialize)]
struct Listener<'a> {
    name: &'a str,
    listen: SocketAddr,
    tls: bool,
}

#[derive(Serialize)]
struct Route<'a> {
    name: &'a str,
    priority: &'a str,
    timeout_ms: u128,
    targets: Vec<Target<'a>>,
    rate_limited: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Target<'a> {
    Upstream { upstream: &'a str, weight: u32 },
    Respond { respond: u16 },
}

#[derive(Serialize)]
struct Upstream<'a> {
    name: &'a str,
    balance: &'a str,
    discovery: Option<&'a str>,
    panic_mode: bool,
    endpoints: Vec<Endpoint<'a>>,
    breaker: Breaker<'a>,
    shed: Shed<'a>,
    retry: Retry,
    grpc: Grpc,
    hedge: Option<Hedge<'a>>,
}

#[derive(Serialize)]
struct Hedge<'a> {
    after: &'a str,
    delay_ms: Option<f64>,
}

#[derive(Serialize)]
struct Endpoint<'a> {
    address: &'a str,
    serving: bool,
    health: &'a str,
    ejected_for_seconds: Option<f64>,
    ejections: u32,
    ramp_share: Option<f64>,
    ewma_ms: f64,
    in_flight: u32,
    penalized_for_seconds: Option<f64>,
}

#[derive(Serialize)]
struct Breaker<'a> {
    state: &'a str,
    mode: &'a str,
    in_state_seconds: f64,
    trips: u32,
    open_remaining_seconds: Option<f64>,
    last_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Shed<'a> {
    mode: &'a str,
    adaptive: bool,
    in_flight: u32,
    limit: u32,
    queued: u32,
}

#[derive(Serialize)]
struct Grpc {
    calls: u64,
    failures: u64,
    error_ratio: Option<f64>,
}

#[derive(Serialize)]
struct Retry {
    budget_remaining: u64,
    median_latency_ms: Option<f64>,
}

impl<'a> Document<'a> {
    fn new(s: &'a StatusSnapshot) -> Self {
        Document {
            version: s.version,
            taken_at: humantime::format_rfc3339_seconds(s.taken_at).to_string(),
            listeners: s
                .listeners
                .iter()
                .map(|l| Listener {
                    name: &l.name,
                    listen: l.listen,
                    tls: l.tls,
                })
                .collect(),
            routes: s
                .routes
                .iter()
                .map(|r| Route {
                    name: &r.name,
                    priority: r.priority,
                    timeout_ms: r.deadline.as_millis(),
                    targets: r.targets.iter().map(Target::new).collect(),
                    rate_limited: r.rate_limited,
                })
                .collect(),
            upstreams: s.upstreams.iter().map(Upstream::new).collect(),
        }
    }
}

impl<'a> Target<'a> {
    fn new(t: &'a TargetView) -> Self {
        match t {
            TargetView::Upstream { name, weight } => Target::Upstream {
                upstream: name,
                weight: *weight,
            },
            TargetView::Respond(status) => Target::Respond { respond: *status },
        }
    }
}

impl<'a> Upstream<'a> {
    fn new(u: &'a UpstreamView) -> Self {
        let (b, sh) = (&u.breaker, &u.shed);
        Upstream {
            name: &u.name,
            balance: u.balance,
            discovery: u.discovery.as_deref(),
            panic_mode: u.panic_mode,
            endpoints: u.endpoints.iter().map(Endpoint::new).collect(),
            breaker: Breaker {
                state: b.state.as_str(),
                mode: b.mode.as_str(),
                in_state_seconds: b.in_state_for.as_secs_f64(),
                trips: b.trips,
                open_remaining_seconds: b.open_remaining.map(|d| d.as_secs_f64()),
                last_reason: b.last_reason,
            },
            shed: Shed {
                mode: sh.mode.as_str(),
                adaptive: sh.adaptive,
                in_flight: sh.in_flight,
                limit: sh.limit,
                queued: sh.queued,
            },
            retry: Retry {
                budget_remaining: u.retry_budget_remaining,
                median_latency_ms: u.median_latency.map(|d| d.as_secs_f64() * 1000.0),
            },
            grpc: Grpc {
                calls: u.grpc.calls,
                failures: u.grpc.failures,
                error_ratio: u.grpc.error_ratio(),
            },
            hedge: u.hedge.as_ref().map(|(after, delay)| Hedge {
                after,
                delay_ms: delay.map(|d| d.as_secs_f64() * 1000.0),
            }),
        }
    }
}

impl<'a> Endpoint<'a> {
    fn new(e: &'a EndpointView) -> Self {
        Endpoint {
            address: &e.address,
            serving: e.serving,
            health: e.health,
            ejected_for_seconds: e.ejected_for.map(|d| d.as_secs_f64()),
            ejections: e.ejections,
            ramp_share: e.ramp_share,
            ewma_ms: e.ewma_ms,
            in_flight: e.in_flight,
            penalized_for_seconds: e.penalized_for.map(|d| d.as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::admin::status::tests::{TWO_UPSTREAMS, snapshot, upstream};

    #[test]
    fn json_writes_endpoint_state_in_seconds_and_shares() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let e = &mut upstream(&mut s, "v2").endpoints[0];
        e.serving = false;
        e.health = "failing";
        e.ejected_for = Some(Duration::from_millis(1500));
        e.ejections = 2;
        e.ramp_share = Some(0.25);
        e.ewma_ms = f64::NAN;
        e.penalized_for = Some(Duration::from_secs(3));
        let doc: serde_json::Value = serde_json::from_slice(&json(&s)).unwrap();
        let e = &doc["upstreams"][1]["endpoints"][0];
        assert_eq!(e["serving"], false);
        assert_eq!(e["health"], "failing");
        assert_eq!(e["ejected_for_seconds"], 1.5);
        assert_eq!(e["ejections"], 2);
        assert_eq!(e["ramp_share"], 0.25);
        assert_eq!(e["ewma_ms"], serde_json::Value::Null, "NaN is not JSON");
        assert_eq!(e["penalized_for_seconds"], 3.0);
    }

    #[test]
    fn floats_have_three_decimals_and_the_document_one_line() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let u = upstream(&mut s, "v2");
        u.median_latency = Some(Duration::from_micros(123_456));
        u.breaker.in_state_for = Duration::from_nanos(1_234_567_891);
        let e = &mut u.endpoints[0];
        e.ejected_for = Some(Duration::from_millis(1500));
        e.ramp_share = Some(0.25);
        e.ewma_ms = 29.987_654;
        let text = String::from_utf8(json(&s)).unwrap();
        for want in [
            "\"ejected_for_seconds\":1.500,",
            "\"ramp_share\":0.250,",
            "\"ewma_ms\":29.988,",
            "\"in_state_seconds\":1.235,",
            "\"median_latency_ms\":123.456}",
            "\"timeout_ms\":15000,",
            "\"discovery\":null,",
        ] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert!(text.starts_with("{\"version\":\""), "{text}");
        assert!(text.ends_with("}]}\n"), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "{text}");
    }

    #[test]
    fn targets_are_an_upstream_with_its_weight_or_a_direct_response() {
        let text = String::from_utf8(json(&snapshot(TWO_UPSTREAMS))).unwrap();
        let split = r#""targets":[{"upstream":"backend","weight":9},{"upstream":"v2","weight":1}]"#;
        assert!(text.contains(split), "{text}");
        let direct = snapshot("[[routes]]\nname = \"d\"\nrespond = { status = 204 }\n");
        let text = String::from_utf8(json(&direct)).unwrap();
        assert!(text.contains(r#""targets":[{"respond":204}]"#), "{text}");
    }

    #[test]
    fn strings_are_escaped() {
        let mut s = snapshot(TWO_UPSTREAMS);
        upstream(&mut s, "v2").discovery = Some("a\"b\\c\u{1}".to_owned());
        let text = String::from_utf8(json(&s)).unwrap();
        assert!(text.contains(r#""discovery":"a\"b\\c\u0001""#), "{text}");
    }
}
