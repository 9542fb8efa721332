//! The admin `/status` page: served as HTML with the routes, the upstreams, each breaker's
//! state and each endpoint; and what a real browser (headless Chromium) renders of it.

// Helpers of tests: a failed step fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::support::certs::TempDir;
use crate::support::{
    Client, RunningUpstream, Toml, Upstream, Weir, any_tool, status_entry, status_json,
};

/// A weir with two upstreams: `{p}-bad` (one endpoint that answers 500, its breaker opened by
/// two failures) on paths under `/bad`, and `{p}-good` (two healthy endpoints) on the rest.
/// Returns weir, the failing upstream and the two healthy ones.
async fn weir_with_an_open_breaker(p: &str) -> (Weir, RunningUpstream, [RunningUpstream; 2]) {
    let bad = Upstream::http1().fail_first(usize::MAX, 500).start().await;
    let good = [
        Upstream::http1().start().await,
        Upstream::http1().start().await,
    ];
    let (bad_up, good_up) = (format!("{p}-bad"), format!("{p}-good"));
    let cfg = Toml::new()
        .route(&format!("{p}-bad-route"), &bad_up)
        .set("match.path_prefix", "/bad")
        .set("timeout", "3s")
        .set("priority", "critical")
        .route(&format!("{p}-good-route"), &good_up)
        .set("rate_limit.rps", 1000)
        .upstream(&bad_up, &[bad.addr()])
        .set("retry.max_retries", 0)
        .set("breaker.consecutive_failures", 2)
        .set("breaker.open_for", "30s")
        .set("outlier.mode", "off")
        .upstream(&good_up, &[good[0].addr(), good[1].addr()])
        .set("balance", "round_robin");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..2 {
        assert_eq!(c.get(weir.addr(), "/bad").await.status, 500);
    }
    let rejected = c.get(weir.addr(), "/bad").await;
    assert_eq!(
        (rejected.status.as_u16(), rejected.header("x-weir-error")),
        (503, Some("circuit-open"))
    );
    assert_eq!(c.get(weir.addr(), "/").await.status, 200);
    (weir, bad, good)
}

/// The part of `page` from upstream `name`'s section to the end of that section.
fn section<'a>(page: &'a str, name: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"upstream-{name}\""))
        .unwrap_or_else(|| panic!("no section for upstream {name}:\n{page}"));
    let rest = &page[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

#[tokio::test]
async fn status_page_shows_routes_upstreams_breakers_and_endpoints() {
    let (weir, bad, good) = weir_with_an_open_breaker("sp").await;
    let reply = Client::h1().get(weir.admin(), "/status").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let page = reply.text();
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(page.contains(env!("CARGO_PKG_VERSION")));

    // Routes: name, priority, deadline, targets, rate limit.
    assert!(
        page.contains(
            "<tr class=\"route\" id=\"route-sp-bad-route\"><td>sp-bad-route</td>\
             <td>critical</td><td>3.0s</td>"
        ),
        "{page}"
    );
    assert!(page.contains(">sp-good</a> (1)</td><td>yes</td>"), "{page}");

    // The failing upstream: breaker open, its endpoint listed, an alert at the top.
    let bad_section = section(&page, "sp-bad");
    assert!(
        bad_section.contains("<span class=\"breaker open\">OPEN</span>"),
        "{bad_section}"
    );
    assert!(bad_section.contains("trips 1"), "{bad_section}");
    assert!(
        bad_section.contains("last reason consecutive"),
        "{bad_section}"
    );
    let left = bad_section
        .split_once("<span class=\"open-remaining\">open for ")
        .and_then(|(_, rest)| rest.split_once("s more"))
        .and_then(|(secs, _)| secs.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time left open: {bad_section}"));
    assert!((20.0..=30.0).contains(&left), "{left}");
    assert!(
        bad_section.contains(&format!("data-endpoint=\"{}\"", bad.addr())),
        "{bad_section}"
    );
    assert!(page.contains("id=\"alerts\""), "{page}");
    assert!(page.contains("sp-bad</a>: breaker OPEN"), "{page}");

    // The healthy upstream: closed, balancer named, one row per endpoint.
    let good_section = section(&page, "sp-good");
    assert!(
        good_section.contains("<span class=\"breaker closed\">closed</span>"),
        "{good_section}"
    );
    assert!(good_section.contains("balancer <b>round_robin</b>"));
    assert_eq!(good_section.matches("data-endpoint=").count(), 2);
    for g in &good {
        assert!(
            good_section.contains(&format!("data-endpoint=\"{}\"", g.addr())),
            "{good_section}"
        );
    }
    assert!(!page.contains("class=\"panic\""), "no panic mode: {page}");

    // `/status.json` carries the same facts.
    let status = status_json(weir.admin()).await;
    let u = status_entry(&status, "upstreams", "sp-good");
    assert_eq!(u["balance"], "round_robin");
    assert_eq!(u["panic_mode"], false);
    let addrs: Vec<&str> = u["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        [good[0].addr().to_string(), good[1].addr().to_string()]
    );
    assert_eq!(
        status_entry(&status, "upstreams", "sp-bad")["breaker"]["state"],
        "open"
    );
}

#[tokio::test]
async fn status_page_renders_in_headless_chromium() {
    let Some(browser) = any_tool(&["chromium", "chromium-browser", "google-chrome"]) else {
        return;
    };
    let (weir, bad, good) = weir_with_an_open_breaker("spb").await;
    let url = format!("http://{}/status", weir.admin());
    let dom = dump_dom(&browser, &url).await;

    // What the browser built from the page, not the bytes sent: the parsed DOM.
    assert!(dom.contains("<title>weir status</title>"), "{dom}");
    for name in ["spb-bad", "spb-good"] {
        assert!(dom.contains(&format!("id=\"upstream-{name}\"")), "{dom}");
    }
    let bad_section = section(&dom, "spb-bad");
    assert!(
        bad_section.contains("<span class=\"breaker open\">OPEN</span>"),
        "{bad_section}"
    );
    assert!(
        bad_section.contains(&format!("data-endpoint=\"{}\"", bad.addr())),
        "{bad_section}"
    );
    let good_section = section(&dom, "spb-good");
    assert!(
        good_section.contains("<span class=\"breaker closed\">closed</span>"),
        "{good_section}"
    );
    for g in &good {
        assert!(
            good_section.contains(&format!("data-endpoint=\"{}\"", g.addr())),
            "{good_section}"
        );
    }
    assert!(dom.contains("spb-bad</a>: breaker OPEN"), "{dom}");
}

/// Loads `url` in headless `browser` and returns the DOM it serialises after loading. The
/// browser runs in its own process group, which is killed when it is done or past
/// [`BROWSER_TIMEOUT`].
async fn dump_dom(browser: &Path, url: &str) -> String {
    let dir = TempDir::new("chromium");
    let dom_path = dir.0.join("dom.html");
    let err_path = dir.0.join("stderr.txt");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--disable-extensions",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.0.join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let group = ProcessGroup(child.id());
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            drop(group);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not finish within {BROWSER_TIMEOUT:?}; stderr:\n{}",
                browser.display(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        // The browser is a child process, not a future: poll its exit on the test's clock.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(group);
    let dom = std::fs::read_to_string(&dom_path).unwrap();
    assert!(
        status.success() && !dom.is_empty(),
        "{} exited with {status}; stderr:\n{}",
        browser.display(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    dom
}

/// Kills the browser's process group (its renderer and helper processes) on drop.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

/// How long the headless browser may take to load and serialise the page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
