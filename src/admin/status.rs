//! `/status` (HTML) and `/status.json`: what an engineer on call wants to see at a glance —
//! routes, upstreams, and per upstream its endpoints, the breaker state and time in it,
//! in-flight requests, the concurrency limit, the queue, the retry budget left and the
//! observed median latency. Both documents render one [`StatusSnapshot`].
//!
//! Position: admin port, off the request path; reads the policies' handles of the live
//! generation once per page and never writes. Config: none. Metrics: none (the same facts
//! are gauges).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::RouteAction;
use crate::generation::Generation;
use crate::resilience::breaker::{BreakerState, BreakerStatus};
use crate::resilience::shed::ShedStatus;

/// A read-only picture of one generation, taken once by [`StatusSnapshot::collect`] and
/// rendered by [`json`] and [`html`]; later changes to the live state do not show in it.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    /// Weir's version (`CARGO_PKG_VERSION`).
    pub version: &'static str,
    /// Wall-clock time the snapshot was taken.
    pub taken_at: SystemTime,
    /// The admin port's configured address (`admin.listen`).
    pub admin: SocketAddr,
    /// The downstream listeners, in config order.
    pub listeners: Vec<ListenerView>,
    /// The routes, in match order.
    pub routes: Vec<RouteView>,
    /// The upstreams, in config order.
    pub upstreams: Vec<UpstreamView>,
}

/// One downstream listener as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerView {
    /// The listener's name.
    pub name: Arc<str>,
    /// The configured address (port 0 when the system picks it).
    pub listen: SocketAddr,
    /// Whether the listener terminates TLS.
    pub tls: bool,
}

/// One route as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteView {
    /// The route's name.
    pub name: Arc<str>,
    /// Its priority (`critical`, `default` or `sheddable`).
    pub priority: &'static str,
    /// Its total deadline (`timeout`).
    pub deadline: Duration,
    /// What serves it: upstreams with their weights, or a direct response.
    pub targets: Vec<TargetView>,
    /// Whether the route has a rate limit.
    pub rate_limited: bool,
}

/// One target of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetView {
    /// An upstream and its split weight (1 for a route with a single upstream).
    Upstream {
        /// The upstream's name.
        name: Arc<str>,
        /// Its weight in the split.
        weight: u32,
    },
    /// A direct response with this status code.
    Respond(u16),
}

/// One upstream: its endpoints and the state of its policies.
#[derive(Clone, Debug)]
pub struct UpstreamView {
    /// The upstream's name.
    pub name: Arc<str>,
    /// The configured balancer (`p2c`, `round_robin`, `least_request` or `hash`).
    pub balance: &'static str,
    /// The name resolved for endpoints (`dns`); `None` for a static endpoint list.
    pub discovery: Option<String>,
    /// Whether every endpoint is unhealthy and traffic fails open to all of them.
    pub panic_mode: bool,
    /// The endpoints, in set order.
    pub endpoints: Vec<EndpointView>,
    /// The circuit breaker.
    pub breaker: BreakerStatus,
    /// Load shedding.
    pub shed: ShedStatus,
    /// Retries the budget would allow now (0 when spent).
    pub retry_budget_remaining: u64,
    /// Median try latency of the last 10 to 20 seconds; `None` before any timed try.
    pub median_latency: Option<Duration>,
}

pub use crate::upstream::endpoints::EndpointView;

impl StatusSnapshot {
    /// Reads `generation` once: its config and every upstream's policy handles.
    pub fn collect(generation: &Generation) -> Self {
        let config = &generation.config;
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerView {
                name: l.name.clone(),
                listen: l.listen,
                tls: l.tls.is_some(),
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| RouteView {
                name: r.name.clone(),
                priority: r.priority.as_str(),
                deadline: r.timeout,
                targets: match &r.action {
                    RouteAction::Upstream(u) => vec![TargetView::Upstream {
                        name: u.clone(),
                        weight: 1,
                    }],
                    RouteAction::Split(split) => split
                        .iter()
                        .map(|t| TargetView::Upstream {
                            name: t.upstream.clone(),
                            weight: t.weight,
                        })
                        .collect(),
                    RouteAction::Respond(resp) => vec![TargetView::Respond(resp.status.as_u16())],
                },
                rate_limited: r.rate_limit.is_some(),
            })
            .collect();
        let upstreams = generation
            .upstreams
            .iter()
            .map(|u| {
                let cfg = config.upstreams.iter().find(|c| c.name == u.name);
                let (endpoints, panic_mode) = u.endpoints.views();
                UpstreamView {
                    name: u.name.clone(),
                    balance: cfg.map_or("p2c", |c| c.balance.as_str()),
                    discovery: cfg.and_then(|c| c.dns.as_ref()).map(ToString::to_string),
                    panic_mode,
                    endpoints,
                    breaker: u.breaker.status(),
                    shed: u.shed.status(),
                    retry_budget_remaining: u.retry.budget_remaining(),
                    median_latency: u.retry.median_latency(),
                }
            })
            .collect();
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION"),
            taken_at: SystemTime::now(),
            admin: config.admin.listen,
            listeners,
            routes,
            upstreams,
        }
    }
}

// === JSON ===

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

// === HTML ===

/// The status page: one self-contained HTML document (inline CSS, no script, no external
/// asset) that reloads itself every 5 seconds.
///
/// Stable hooks for tools and tests: `id="alerts"` (present only when a breaker is open or
/// half-open or an upstream is in panic mode), `id="routes"` with a row `id="route-NAME"` per
/// route, `id="upstream-NAME"` per upstream section, `class="breaker STATE"` (`closed`,
/// `half_open`, `open`), `id="panic-NAME"` for a panic-mode banner, and one row
/// `data-endpoint="ADDRESS"` per endpoint. Every name and address is HTML-escaped.
pub fn html(s: &StatusSnapshot) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta http-equiv=\"refresh\" content=\"5\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>weir status</title>\n<style>\n",
    ));
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n");
    header_html(&mut out, s);
    alerts_html(&mut out, s);
    overview_html(&mut out, s);
    routes_html(&mut out, s);
    for u in &s.upstreams {
        upstream_html(&mut out, u);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn header_html(out: &mut String, s: &StatusSnapshot) {
    let _ = write!(
        out,
        "<header id=\"summary\">\n<h1>weir <span id=\"version\">{}</span></h1>\n<p class=\"facts\">",
        escape(s.version)
    );
    let _ = write!(
        out,
        "as of <span id=\"taken-at\">{}</span> &middot; {} route{} &middot; {} upstream{} \
         &middot; listeners:",
        humantime::format_rfc3339_seconds(s.taken_at),
        s.routes.len(),
        plural(s.routes.len()),
        s.upstreams.len(),
        plural(s.upstreams.len()),
    );
    for (i, l) in s.listeners.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        let _ = write!(
            out,
            "{} {}{}",
            escape(&l.name),
            l.listen,
            if l.tls { " (tls)" } else { "" }
        );
    }
    let _ = write!(
        out,
        " &middot; admin {} &middot; refreshes every 5s &middot; \
         <a href=\"/status.json\">status.json</a> &middot; <a href=\"/config\">config</a> \
         &middot; <a href=\"/metrics\">metrics</a></p>\n</header>\n",
        s.admin
    );
}

/// The banner of things that need a person now: open breakers and panic mode.
fn alerts_html(out: &mut String, s: &StatusSnapshot) {
    let mut items = String::new();
    for u in &s.upstreams {
        let name = escape(&u.name);
        match u.breaker.state {
            BreakerState::Open => {
                let _ = writeln!(
                    items,
                    "<li><a href=\"#upstream-{name}\">{name}</a>: breaker OPEN{}</li>",
                    match u.breaker.open_remaining {
                        Some(d) => format!(" for {} more", human(d)),
                        None => String::new(),
                    }
                );
            }
            BreakerState::HalfOpen => {
                let _ = writeln!(
                    items,
                    "<li><a href=\"#upstream-{name}\">{name}</a>: breaker half-open (probing)</li>"
                );
            }
            BreakerState::Closed => {}
        }
        if u.panic_mode {
            let _ = writeln!(
                items,
                "<li><a href=\"#upstream-{name}\">{name}</a>: PANIC MODE</li>"
            );
        }
    }
    if !items.is_empty() {
        let _ = write!(
            out,
            "<section id=\"alerts\">\n<h2>Needs attention</h2>\n<ul>\n{items}</ul>\n</section>\n"
        );
    }
}

fn overview_html(out: &mut String, s: &StatusSnapshot) {
    out.push_str(concat!(
        "<section id=\"overview\">\n<h2>Upstreams at a glance</h2>\n<table>\n<thead><tr>",
        "<th>upstream</th><th>breaker</th><th>endpoints serving</th><th>in flight / limit</th>",
        "<th>queued</th><th>retry budget</th></tr></thead>\n<tbody>\n",
    ));
    for u in &s.upstreams {
        let name = escape(&u.name);
        let serving = u.endpoints.iter().filter(|e| e.serving).count();
        let _ = writeln!(
            out,
            "<tr class=\"overview\" data-upstream=\"{name}\"><td><a href=\"#upstream-{name}\">\
             {name}</a>{}</td><td>{}</td><td class=\"{}\">{serving} / {}</td><td>{} / {}</td>\
             <td>{}</td><td>{}</td></tr>",
            if u.panic_mode {
                " <span class=\"tag bad\">panic</span>"
            } else {
                ""
            },
            breaker_badge(&u.breaker),
            if serving == 0 { "bad" } else { "" },
            u.endpoints.len(),
            u.shed.in_flight,
            limit(&u.shed),
            u.shed.queued,
            u.retry_budget_remaining,
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn routes_html(out: &mut String, s: &StatusSnapshot) {
    out.push_str(concat!(
        "<section id=\"routes\">\n<h2>Routes</h2>\n<table>\n<thead><tr><th>route</th>",
        "<th>priority</th><th>deadline</th><th>targets (weight)</th><th>rate limited</th>",
        "</tr></thead>\n<tbody>\n",
    ));
    for r in &s.routes {
        let name = escape(&r.name);
        let _ = write!(
            out,
            "<tr class=\"route\" id=\"route-{name}\"><td>{name}</td><td>{}</td><td>{}</td><td>",
            escape(r.priority),
            human(r.deadline)
        );
        for (i, t) in r.targets.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            match t {
                TargetView::Upstream { name, weight } => {
                    let name = escape(name);
                    let _ = write!(
                        out,
                        "<a class=\"target\" href=\"#upstream-{name}\">{name}</a> ({weight})"
                    );
                }
                TargetView::Respond(status) => {
                    let _ = write!(
                        out,
                        "<span class=\"target\">direct response {status}</span>"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "</td><td>{}</td></tr>",
            if r.rate_limited { "yes" } else { "no" }
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn upstream_html(out: &mut String, u: &UpstreamView) {
    let name = escape(&u.name);
    let _ = write!(
        out,
        "<section class=\"upstream\" id=\"upstream-{name}\">\n<h2>upstream \
         <span class=\"name\">{name}</span> {}</h2>\n",
        breaker_badge(&u.breaker)
    );
    if u.panic_mode {
        let _ = writeln!(
            out,
            "<p class=\"panic\" id=\"panic-{name}\">PANIC MODE: no endpoint is healthy, so \
             traffic goes to every endpoint, healthy or not.</p>"
        );
    }
    let _ = writeln!(
        out,
        "<p class=\"facts\">balancer <b>{}</b> &middot; endpoints: {}</p>",
        escape(u.balance),
        match &u.discovery {
            Some(d) => format!("resolved from <b>{}</b>", escape(d)),
            None => "static".to_owned(),
        }
    );

    // Policies: breaker, shedding, retries.
    let b = &u.breaker;
    out.push_str("<table class=\"policies\">\n<tbody>\n");
    let _ = write!(
        out,
        "<tr><th>breaker</th><td>{} for {}",
        breaker_badge(b),
        human(b.in_state_for)
    );
    if let Some(d) = b.open_remaining {
        let _ = write!(
            out,
            " &middot; <span class=\"open-remaining\">open for {} more</span>",
            human(d)
        );
    }
    let _ = writeln!(
        out,
        " &middot; trips {} &middot; last reason {}</td></tr>",
        b.trips,
        b.last_reason.map_or_else(|| "none".to_owned(), escape)
    );
    let sh = &u.shed;
    let _ = writeln!(
        out,
        "<tr><th>shedding</th><td class=\"shed\">{}in flight <b>{}</b> / limit <b>{}</b>{} \
         &middot; queued <b>{}</b></td></tr>",
        mode_tag(sh.mode.as_str()),
        sh.in_flight,
        limit(sh),
        if sh.adaptive { " (adaptive)" } else { "" },
        sh.queued
    );
    let _ = write!(
        out,
        "<tr><th>retries</th><td class=\"retry\">budget left <b>{}</b> &middot; median try \
         latency <b>{}</b></td></tr>\n</tbody>\n</table>\n",
        u.retry_budget_remaining,
        u.median_latency
            .map_or_else(|| "none yet".to_owned(), human)
    );

    // Endpoints.
    out.push_str(concat!(
        "<table class=\"endpoints\">\n<thead><tr><th>endpoint</th><th>serving</th>",
        "<th>health</th><th>ejected (left, times)</th><th>ramp</th><th>EWMA</th>",
        "<th>in flight</th><th>pushback</th></tr></thead>\n<tbody>\n",
    ));
    if u.endpoints.is_empty() {
        out.push_str("<tr class=\"none\"><td colspan=\"8\" class=\"bad\">no endpoints</td></tr>\n");
    }
    for e in &u.endpoints {
        endpoint_html(out, e);
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn endpoint_html(out: &mut String, e: &EndpointView) {
    let addr = escape(&e.address);
    let _ = write!(
        out,
        "<tr class=\"endpoint{}\" data-endpoint=\"{addr}\"><td class=\"address\">{addr}</td>\
         <td class=\"serving {}\">{}</td><td class=\"health {}\">{}</td>",
        if e.serving { "" } else { " down" },
        if e.serving { "good" } else { "bad" },
        if e.serving { "yes" } else { "NO" },
        escape(e.health),
        escape(e.health),
    );
    match e.ejected_for {
        Some(d) => {
            let _ = write!(
                out,
                "<td class=\"ejected bad\">{} left, {}&times;</td>",
                human(d),
                e.ejections
            );
        }
        None if e.ejections > 0 => {
            let _ = write!(out, "<td class=\"ejected\">no, {}&times;</td>", e.ejections);
        }
        None => out.push_str("<td class=\"ejected\">no</td>"),
    }
    match e.ramp_share {
        Some(r) if r.is_finite() => {
            let _ = write!(
                out,
                "<td class=\"ramp warn\">{:.0}%</td>",
                r.clamp(0.0, 1.0) * 100.0
            );
        }
        _ => out.push_str("<td class=\"ramp\">&mdash;</td>"),
    }
    if e.ewma_ms.is_finite() {
        let _ = write!(out, "<td class=\"ewma\">{:.1} ms</td>", e.ewma_ms);
    } else {
        out.push_str("<td class=\"ewma\">&mdash;</td>");
    }
    let _ = write!(out, "<td class=\"in-flight\">{}</td>", e.in_flight);
    match e.penalized_for {
        Some(d) => {
            let _ = writeln!(
                out,
                "<td class=\"pushback warn\">{} left</td></tr>",
                human(d)
            );
        }
        None => out.push_str("<td class=\"pushback\">&mdash;</td></tr>\n"),
    }
}

/// The breaker state as a coloured badge: `<span class="breaker STATE">`, plus the mode when
/// it is not `enforce`.
fn breaker_badge(b: &BreakerStatus) -> String {
    let state = b.state.as_str();
    let text = match b.state {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "OPEN",
    };
    format!(
        "<span class=\"breaker {state}\">{text}</span>{}",
        mode_tag(b.mode.as_str())
    )
}

/// A tag naming a policy mode other than `enforce` (`dry_run`, `off`); empty for `enforce`.
fn mode_tag(mode: &'static str) -> String {
    if mode == "enforce" {
        String::new()
    } else {
        format!(" <span class=\"tag mode\">{}</span> ", escape(mode))
    }
}

/// The shedding limit in force, or `none` when shedding is off.
fn limit(s: &ShedStatus) -> String {
    if s.limit == 0 {
        "none".to_owned()
    } else {
        s.limit.to_string()
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `d` for a person: `850ms`, `12.3s`, `4m05s`, `2h07m`.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// `s` with the characters that are special in HTML text and attribute values (`&`, `<`,
/// `>`, `"`, `'`) replaced by character references.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's style: large type, state in colour and in words (closed green, half-open amber,
/// open red), readable in light and dark mode.
const CSS: &str = r"
:root { color-scheme: light dark; --good: #1a7f37; --warn: #b35900; --bad: #cf222e; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.2em 2em; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 1.4em 0 .4em; }
.facts { margin: .2em 0 .6em; color: GrayText; }
.facts b { color: CanvasText; }
table { border-collapse: collapse; margin: .3em 0 .8em; }
th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #8884; vertical-align: top; }
thead th { font-weight: 600; color: GrayText; font-size: .9em; }
.policies th { width: 7em; }
td.address { font-family: ui-monospace, monospace; }
section.upstream { border-top: 2px solid #8886; }
.breaker { display: inline-block; padding: 0 .5em; border-radius: .3em; color: #fff; font-weight: 700; font-size: .9em; }
.breaker.closed { background: var(--good); }
.breaker.half_open { background: var(--warn); }
.breaker.open { background: var(--bad); }
.tag { display: inline-block; padding: 0 .4em; border: 1px solid currentColor; border-radius: .3em; font-size: .8em; }
.good { color: var(--good); }
.warn { color: var(--warn); }
.bad, .down td.address { color: var(--bad); font-weight: 700; }
.panic { background: var(--bad); color: #fff; font-weight: 700; font-size: 1.1em; padding: .5em .8em; border-radius: .3em; }
#alerts { border: 3px solid var(--bad); border-radius: .4em; padding: 0 1em; }
#alerts h2 { color: var(--bad); margin-top: .5em; }
#alerts li { font-weight: 700; }
";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    const TWO_UPSTREAMS: &str = r#"
[[routes]]
name = "api"
upstream = "backend"
[[routes]]
name = "canary"
split = [{ upstream = "backend", weight = 9 }, { upstream = "v2", weight = 1 }]
[upstreams."backend"]
endpoints = ["127.0.0.1:1"]
[upstreams.v2]
endpoints = ["127.0.0.1:2", "127.0.0.1:3", "localhost:4"]
shed = { mode = "dry_run", adaptive = true }
"#;

    fn snapshot(toml: &str) -> StatusSnapshot {
        let cfg = Config::from_toml(toml, "t.toml").unwrap();
        let metrics = Metrics::new().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let generation = Generation::build(Arc::new(cfg), &metrics).unwrap();
        StatusSnapshot::collect(&generation)
    }

    fn upstream<'a>(s: &'a mut StatusSnapshot, name: &str) -> &'a mut UpstreamView {
        s.upstreams.iter_mut().find(|u| &*u.name == name).unwrap()
    }

    /// The part of `page` from the section of upstream `name` up to the next section.
    fn section<'a>(page: &'a str, name: &str) -> &'a str {
        let start = page
            .find(&format!(
                "<section class=\"upstream\" id=\"upstream-{name}\">"
            ))
            .unwrap_or_else(|| panic!("no section for {name}:\n{page}"));
        let rest = &page[start..];
        let end = rest.find("</section>").unwrap();
        &rest[..end]
    }

    #[test]
    fn status_names_every_route_and_upstream_with_its_policies() {
        let s = snapshot(TWO_UPSTREAMS);
        let doc: serde_json::Value = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["routes"][0]["name"], "api");
        assert_eq!(doc["routes"][1]["targets"][1]["weight"], 1);
        let ups = doc["upstreams"].as_array().unwrap();
        assert_eq!(ups.len(), 2);
        let backend = ups.iter().find(|u| u["name"] == "backend").unwrap();
        assert_eq!(backend["balance"], "p2c");
        assert_eq!(backend["discovery"], serde_json::Value::Null);
        assert_eq!(backend["panic_mode"], false);
        assert_eq!(backend["breaker"]["state"], "closed");
        assert_eq!(backend["shed"]["in_flight"], 0);
        assert_eq!(backend["shed"]["limit"], 1024);
        assert!(backend["retry"]["budget_remaining"].as_u64().unwrap() > 0);
        let v2 = ups.iter().find(|u| u["name"] == "v2").unwrap();
        assert_eq!(v2["shed"]["mode"], "dry_run");
        assert_eq!(v2["shed"]["adaptive"], true);
        let e = &v2["endpoints"][0];
        assert_eq!(e["address"], "127.0.0.1:2");
        assert_eq!(e["serving"], true);
        assert_eq!(e["health"], "unchecked");
        assert_eq!(e["ejected_for_seconds"], serde_json::Value::Null);
        assert_eq!(e["ejections"], 0);
        assert_eq!(e["ramp_share"], serde_json::Value::Null);
        // Before any response, the prior latency (30 ms), decaying.
        let ewma = e["ewma_ms"].as_f64().unwrap();
        assert!(ewma > 29.0 && ewma <= 30.0, "{ewma}");
        assert_eq!(e["in_flight"], 0);
        assert_eq!(e["penalized_for_seconds"], serde_json::Value::Null);
        assert_eq!(v2["endpoints"].as_array().unwrap().len(), 3);
    }

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

    #[test]
    fn escape_neutralises_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(
            escape(r#"a" onmouseover="x"#),
            "a&quot; onmouseover=&quot;x"
        );
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("plain-name_1.2"), "plain-name_1.2");
    }

    #[test]
    fn html_escapes_text_from_config_and_the_network() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let v2 = upstream(&mut s, "v2");
        v2.discovery = Some("<script>x</script>:53".to_owned());
        v2.endpoints[0].address = "\"><script>alert(1)</script>".to_owned();
        let page = html(&s);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;:53"), "{page}");
        assert!(
            page.contains("data-endpoint=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
            "{page}"
        );
    }

    #[test]
    fn html_is_one_self_contained_refreshing_document() {
        let page = html(&snapshot(TWO_UPSTREAMS));
        assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("<style>"));
        for external in ["<script", "<link", "src=", "http://", "https://"] {
            assert!(!page.contains(external), "{external} in\n{page}");
        }
        assert!(page.contains(&format!(
            "<span id=\"version\">{}</span>",
            env!("CARGO_PKG_VERSION")
        )));
        assert_eq!(page.matches("<section class=\"upstream\"").count(), 2);
        assert!(page.trim_end().ends_with("</html>"));
    }

    #[test]
    fn html_lists_routes_with_priority_deadline_targets_and_rate_limit() {
        let page = html(&snapshot(TWO_UPSTREAMS));
        let row = |name: &str| {
            let start = page
                .find(&format!("<tr class=\"route\" id=\"route-{name}\">"))
                .unwrap_or_else(|| panic!("no row for route {name}:\n{page}"));
            let rest = &page[start..];
            rest[..rest.find("</tr>").unwrap()].to_owned()
        };
        let canary = row("canary");
        assert!(
            canary.contains("<td>default</td><td>15.0s</td>"),
            "{canary}"
        );
        assert!(canary.contains(">backend</a> (9)"), "{canary}");
        assert!(canary.contains(">v2</a> (1)"), "{canary}");
        assert!(canary.contains("<td>no</td>"), "{canary}");
        assert!(row("api").contains(">backend</a> (1)"));
    }

    #[test]
    fn an_open_breaker_renders_red_with_time_left_and_an_alert() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let closed = html(&s);
        assert!(!closed.contains("id=\"alerts\""), "{closed}");
        assert!(
            section(&closed, "backend").contains("<span class=\"breaker closed\">closed</span>")
        );

        let b = &mut upstream(&mut s, "backend").breaker;
        b.state = BreakerState::Open;
        b.open_remaining = Some(Duration::from_secs(25));
        b.in_state_for = Duration::from_secs(5);
        b.trips = 1;
        b.last_reason = Some("consecutive");
        let page = html(&s);
        let backend = section(&page, "backend");
        assert!(
            backend.contains("<span class=\"breaker open\">OPEN</span>"),
            "{backend}"
        );
        assert!(backend.contains("open for 25.0s more"), "{backend}");
        assert!(backend.contains("for 5.0s"), "{backend}");
        assert!(backend.contains("trips 1"), "{backend}");
        assert!(backend.contains("last reason consecutive"), "{backend}");
        assert!(!section(&page, "v2").contains("breaker open"));
        assert!(page.contains("id=\"alerts\""), "{page}");
        assert!(
            page.contains("backend</a>: breaker OPEN for 25.0s more"),
            "{page}"
        );

        upstream(&mut s, "backend").breaker.state = BreakerState::HalfOpen;
        let page = html(&s);
        assert!(
            section(&page, "backend")
                .contains("<span class=\"breaker half_open\">half-open</span>")
        );
    }

    #[test]
    fn html_has_one_endpoint_row_per_endpoint() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let page = html(&s);
        assert_eq!(page.matches("data-endpoint=").count(), 4, "{page}");
        let v2 = section(&page, "v2");
        for addr in ["127.0.0.1:2", "127.0.0.1:3", "localhost:4"] {
            assert_eq!(
                v2.matches(&format!("data-endpoint=\"{addr}\"")).count(),
                1,
                "{v2}"
            );
        }
        assert_eq!(
            section(&page, "backend").matches("data-endpoint=").count(),
            1
        );

        let e = &mut upstream(&mut s, "v2").endpoints[1];
        e.serving = false;
        e.health = "failing";
        e.ejected_for = Some(Duration::from_secs(90));
        e.ejections = 3;
        e.ramp_share = Some(0.4);
        e.ewma_ms = 12.34;
        e.in_flight = 7;
        e.penalized_for = Some(Duration::from_millis(500));
        let page = html(&s);
        let v2 = section(&page, "v2");
        let start = v2.find("data-endpoint=\"127.0.0.1:3\"").unwrap();
        let row = &v2[start..start + v2[start..].find("</tr>").unwrap()];
        for want in [
            "class=\"serving bad\">NO<",
            "class=\"health failing\">failing<",
            "1m30s left, 3&times;",
            ">40%<",
            ">12.3 ms<",
            "class=\"in-flight\">7<",
            ">500ms left<",
        ] {
            assert!(row.contains(want), "{want} not in {row}");
        }
    }

    #[test]
    fn panic_banner_shows_only_in_panic_mode() {
        let mut s = snapshot(TWO_UPSTREAMS);
        let calm = html(&s);
        assert!(!calm.contains("class=\"panic\""), "{calm}");
        assert!(!calm.contains("PANIC MODE"), "{calm}");

        upstream(&mut s, "v2").panic_mode = true;
        let page = html(&s);
        assert_eq!(page.matches("class=\"panic\"").count(), 1, "{page}");
        assert!(section(&page, "v2").contains("<p class=\"panic\" id=\"panic-v2\">PANIC MODE"));
        assert!(!section(&page, "backend").contains("PANIC"));
        assert!(page.contains("v2</a>: PANIC MODE"), "alert banner: {page}");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(2 * 3600 + 7 * 60 + 9)), "2h07m");
    }
}
