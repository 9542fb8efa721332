//! `/status`: the [`StatusSnapshot`] as one HTML page for a person on call, with its CSS, and
//! [`escape`], the one place that escapes HTML.
//!
//! Position: admin port, off the request path; renders a snapshot already taken and reads
//! nothing live. Config: none. Metrics: none.

use std::fmt::Write as _;
use std::time::Duration;

use super::{EndpointView, GrpcView, StatusSnapshot, TargetView, UpstreamView};
use crate::resilience::breaker::{BreakerState, BreakerStatus};
use crate::resilience::shed::ShedStatus;

/// The status page: one self-contained HTML document (inline CSS, no script, no external
/// asset) that reloads itself every 5 seconds.
///
/// Stable hooks for tools and tests: `id="alerts"` (present only when a breaker is open or
/// half-open or an upstream is in panic mode), `id="routes"` with a row `id="route-NAME"` per
/// route, `id="upstream-NAME"` per upstream section, `class="breaker STATE"` (`closed`,
/// `half_open`, `open`), `id="panic-NAME"` for a panic-mode banner, and one row
/// `data-endpoint="ADDRESS"` per endpoint. Every name and address is HTML-escaped.
pub(crate) fn html(s: &StatusSnapshot) -> String {
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
        "<th>queued</th><th>retry budget</th><th>gRPC errors</th></tr></thead>\n<tbody>\n",
    ));
    for u in &s.upstreams {
        let name = escape(&u.name);
        let serving = u.endpoints.iter().filter(|e| e.serving).count();
        let _ = writeln!(
            out,
            "<tr class=\"overview\" data-upstream=\"{name}\"><td><a href=\"#upstream-{name}\">\
             {name}</a>{}</td><td>{}</td><td class=\"{}\">{serving} / {}</td><td>{} / {}</td>\
             <td>{}</td><td>{}</td><td class=\"grpc\">{}</td></tr>",
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
            grpc_ratio(&u.grpc),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// An upstream's gRPC error ratio and its call count: `1.5 % of 200`, or `–` before any call.
fn grpc_ratio(g: &GrpcView) -> String {
    match g.error_ratio() {
        Some(r) => format!("{:.1} % of {}", r * 100.0, g.calls),
        None => "&ndash;".to_owned(),
    }
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
    let _ = writeln!(
        out,
        "<tr><th>retries</th><td class=\"retry\">budget left <b>{}</b> &middot; median try \
         latency <b>{}</b></td></tr>",
        u.retry_budget_remaining,
        u.median_latency
            .map_or_else(|| "none yet".to_owned(), human)
    );
    if let Some((after, delay)) = &u.hedge {
        let _ = writeln!(
            out,
            "<tr><th>hedging</th><td class=\"hedge\">after <b>{}</b> &middot; delay in force \
             <b>{}</b></td></tr>",
            escape(after),
            delay.map_or_else(|| "none yet (too few tries)".to_owned(), human)
        );
    }
    out.push_str("</tbody>\n</table>\n");

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
pub(crate) fn escape(s: &str) -> String {
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
    use std::time::Duration;

    use super::*;
    use crate::admin::status::tests::{TWO_UPSTREAMS, snapshot, upstream};

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
