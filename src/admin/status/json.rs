//! `/status.json`: the [`StatusSnapshot`] for tools (see the README's admin section):
//! durations in seconds, floats with three decimals, `null` for what is absent or not finite.
//!
//! Position: admin port, off the request path; renders a snapshot already taken and reads
//! nothing live. Config: none. Metrics: none.

use std::fmt::Write as _;
use std::time::Duration;

use super::{StatusSnapshot, TargetView, UpstreamView};

/// The status document as JSON: `routes` and `upstreams` (see the README's admin section).
pub fn json(s: &StatusSnapshot) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("{\"version\":");
    string(&mut out, s.version);
    out.push_str(",\"taken_at\":");
    string(
        &mut out,
        &humantime::format_rfc3339_seconds(s.taken_at).to_string(),
    );
    out.push_str(",\"listeners\":[");
    for (i, l) in s.listeners.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &l.name);
        out.push_str(",\"listen\":");
        string(&mut out, &l.listen.to_string());
        let _ = write!(out, ",\"tls\":{}}}", l.tls);
    }
    out.push_str("],\"routes\":[");
    for (i, r) in s.routes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &r.name);
        out.push_str(",\"priority\":");
        string(&mut out, r.priority);
        let _ = write!(out, ",\"timeout_ms\":{}", r.deadline.as_millis());
        out.push_str(",\"targets\":[");
        for (j, t) in r.targets.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            match t {
                TargetView::Upstream { name, weight } => {
                    out.push_str("{\"upstream\":");
                    string(&mut out, name);
                    let _ = write!(out, ",\"weight\":{weight}}}");
                }
                TargetView::Respond(status) => {
                    let _ = write!(out, "{{\"respond\":{status}}}");
                }
            }
        }
        let _ = write!(out, "],\"rate_limited\":{}}}", r.rate_limited);
    }
    out.push_str("],\"upstreams\":[");
    for (i, u) in s.upstreams.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        upstream_json(&mut out, u);
    }
    out.push_str("]}\n");
    out
}

fn upstream_json(out: &mut String, u: &UpstreamView) {
    out.push_str("{\"name\":");
    string(out, &u.name);
    out.push_str(",\"balance\":");
    string(out, u.balance);
    out.push_str(",\"discovery\":");
    match &u.discovery {
        Some(d) => string(out, d),
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"panic_mode\":{}", u.panic_mode);
    out.push_str(",\"endpoints\":[");
    for (j, e) in u.endpoints.iter().enumerate() {
        if j > 0 {
            out.push(',');
        }
        out.push_str("{\"address\":");
        string(out, &e.address);
        let _ = write!(out, ",\"serving\":{},\"health\":", e.serving);
        string(out, e.health);
        out.push_str(",\"ejected_for_seconds\":");
        seconds(out, e.ejected_for);
        let _ = write!(out, ",\"ejections\":{},\"ramp_share\":", e.ejections);
        number(out, e.ramp_share);
        out.push_str(",\"ewma_ms\":");
        number(out, Some(e.ewma_ms));
        let _ = write!(out, ",\"in_flight\":{}", e.in_flight);
        out.push_str(",\"penalized_for_seconds\":");
        seconds(out, e.penalized_for);
        out.push('}');
    }
    let b = &u.breaker;
    out.push_str("],\"breaker\":{\"state\":");
    string(out, b.state.as_str());
    out.push_str(",\"mode\":");
    string(out, b.mode.as_str());
    let _ = write!(
        out,
        ",\"in_state_seconds\":{:.3},\"trips\":{}",
        b.in_state_for.as_secs_f64(),
        b.trips
    );
    out.push_str(",\"open_remaining_seconds\":");
    seconds(out, b.open_remaining);
    out.push_str(",\"last_reason\":");
    match b.last_reason {
        Some(r) => string(out, r),
        None => out.push_str("null"),
    }
    let sh = &u.shed;
    out.push_str("},\"shed\":{\"mode\":");
    string(out, sh.mode.as_str());
    let _ = write!(
        out,
        ",\"adaptive\":{},\"in_flight\":{},\"limit\":{},\"queued\":{}}}",
        sh.adaptive, sh.in_flight, sh.limit, sh.queued
    );
    let _ = write!(
        out,
        ",\"retry\":{{\"budget_remaining\":{},\"median_latency_ms\":",
        u.retry_budget_remaining
    );
    number(out, u.median_latency.map(|d| d.as_secs_f64() * 1000.0));
    out.push_str("}}");
}

/// Appends `d` in seconds with millisecond precision, or `null`.
fn seconds(out: &mut String, d: Option<Duration>) {
    number(out, d.map(|d| d.as_secs_f64()));
}

/// Appends `x` with three decimals, or `null` when absent or not finite.
fn number(out: &mut String, x: Option<f64>) {
    match x {
        Some(x) if x.is_finite() => {
            let _ = write!(out, "{x:.3}");
        }
        _ => out.push_str("null"),
    }
}

/// Appends `s` as a JSON string.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
        let doc: serde_json::Value = serde_json::from_str(&json(&s)).unwrap();
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
    fn strings_are_escaped() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, r#""a\"b\\c\u0001""#);
    }
}
