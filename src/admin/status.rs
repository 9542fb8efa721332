//! `/status.json`: what an engineer on call wants to see at a glance — routes, upstreams, and
//! per upstream the breaker state and time in it, in-flight requests, the concurrency limit,
//! the queue, the retry budget left and the observed median latency.
//!
//! Position: admin port, off the request path; reads the policies' handles of the live
//! generation and never writes. Config: none. Metrics: none (the same facts are gauges).

use std::fmt::Write as _;

use crate::config::RouteAction;
use crate::generation::Generation;

/// The status document of `generation`, as JSON.
pub fn json(generation: &Generation) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("{\"routes\":[");
    for (i, r) in generation.config.routes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &r.name);
        out.push_str(",\"priority\":");
        string(&mut out, r.priority.as_str());
        let _ = write!(out, ",\"timeout_ms\":{}", r.timeout.as_millis());
        out.push_str(",\"targets\":[");
        match &r.action {
            RouteAction::Upstream(u) => {
                out.push_str("{\"upstream\":");
                string(&mut out, u);
                out.push_str(",\"weight\":1}");
            }
            RouteAction::Split(split) => {
                for (j, t) in split.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"upstream\":");
                    string(&mut out, &t.upstream);
                    let _ = write!(out, ",\"weight\":{}}}", t.weight);
                }
            }
            RouteAction::Respond(resp) => {
                let _ = write!(out, "{{\"respond\":{}}}", resp.status.as_u16());
            }
        }
        out.push_str("],\"rate_limited\":");
        out.push_str(if r.rate_limit.is_some() {
            "true"
        } else {
            "false"
        });
        out.push('}');
    }
    out.push_str("],\"upstreams\":[");
    for (i, u) in generation.upstreams.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        string(&mut out, &u.name);
        out.push_str(",\"endpoints\":[");
        for (j, e) in u.endpoints.load().endpoints().iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            string(&mut out, e.addr().as_str());
        }
        let b = u.breaker.status();
        out.push_str("],\"breaker\":{\"state\":");
        string(&mut out, b.state.as_str());
        out.push_str(",\"mode\":");
        string(&mut out, b.mode.as_str());
        let _ = write!(
            out,
            ",\"in_state_seconds\":{:.3},\"trips\":{}",
            b.in_state_for.as_secs_f64(),
            b.trips
        );
        out.push_str(",\"open_remaining_seconds\":");
        match b.open_remaining {
            Some(d) => {
                let _ = write!(out, "{:.3}", d.as_secs_f64());
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"last_reason\":");
        match b.last_reason {
            Some(r) => string(&mut out, r),
            None => out.push_str("null"),
        }
        let s = u.shed.status();
        out.push_str("},\"shed\":{\"mode\":");
        string(&mut out, s.mode.as_str());
        let _ = write!(
            out,
            ",\"adaptive\":{},\"in_flight\":{},\"limit\":{},\"queued\":{}}}",
            s.adaptive, s.in_flight, s.limit, s.queued
        );
        let _ = write!(
            out,
            ",\"retry\":{{\"budget_remaining\":{},\"median_latency_ms\":",
            u.retry.budget_remaining()
        );
        match u.retry.median_latency() {
            Some(d) => {
                let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
            }
            None => out.push_str("null"),
        }
        out.push_str("}}");
    }
    out.push_str("]}\n");
    out
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
    use std::sync::Arc;

    use super::*;
    use crate::admin::metrics::Metrics;
    use crate::config::Config;

    #[test]
    fn status_names_every_route_and_upstream_with_its_policies() {
        let cfg = Config::from_toml(
            r#"
[[routes]]
name = "api"
upstream = "backend"
[[routes]]
name = "canary"
split = [{ upstream = "backend", weight = 9 }, { upstream = "v2", weight = 1 }]
[upstreams."backend"]
endpoints = ["127.0.0.1:1"]
[upstreams.v2]
endpoints = ["127.0.0.1:2"]
shed = { mode = "dry_run", adaptive = true }
"#,
            "t.toml",
        )
        .unwrap();
        let metrics = Metrics::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let generation = Generation::build(Arc::new(cfg), &metrics).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&json(&generation)).unwrap();
        assert_eq!(doc["routes"][0]["name"], "api");
        assert_eq!(doc["routes"][1]["targets"][1]["weight"], 1);
        let ups = doc["upstreams"].as_array().unwrap();
        assert_eq!(ups.len(), 2);
        let backend = ups.iter().find(|u| u["name"] == "backend").unwrap();
        assert_eq!(backend["breaker"]["state"], "closed");
        assert_eq!(backend["shed"]["in_flight"], 0);
        assert_eq!(backend["shed"]["limit"], 1024);
        assert!(backend["retry"]["budget_remaining"].as_u64().unwrap() > 0);
        let v2 = ups.iter().find(|u| u["name"] == "v2").unwrap();
        assert_eq!(v2["shed"]["mode"], "dry_run");
        assert_eq!(v2["shed"]["adaptive"], true);
        assert_eq!(v2["endpoints"][0], "127.0.0.1:2");
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, r#""a\"b\\c\u0001""#);
    }
}
