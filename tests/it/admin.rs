//! The admin port: `/metrics` names and labels, `/healthz`, `/readyz`, `/config`.

use std::time::Duration;

use crate::support::{Client, Toml, Upstream, Weir, eventually_async, scrape};

#[tokio::test]
async fn metrics_count_requests_attempts_and_connections_with_config_labels() {
    let up = Upstream::http1().fail_first(1, 503).start().await;
    let (_held, closed) = crate::support::closed_port();
    let cfg = Toml::new()
        .route("m-api", "m-up")
        .set("match.path_prefix", "/api")
        .upstream("m-up", &[up.addr()])
        .route("m-down", "m-dead")
        .set("match.path_prefix", "/down")
        .upstream("m-dead", &[closed]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    // The upstream's first answer is a 503: retried (GET), so the client sees 200.
    assert_eq!(c.get(weir.addr(), "/api/a").await.status, 200);
    assert_eq!(c.get(weir.addr(), "/api/b").await.status, 200);
    assert_eq!(c.get(weir.addr(), "/api/c?secret=1").await.status, 200);
    assert_eq!(c.get(weir.addr(), "/down").await.status, 502);
    assert_eq!(c.get(weir.addr(), "/nowhere").await.status, 404);

    // Histograms reach the exposition after upkeep; poll instead of sleeping.
    let admin = weir.admin();
    eventually_async(
        || async move {
            scrape(admin)
                .await
                .has("weir_request_duration_seconds_bucket")
        },
        Duration::from_secs(8),
    )
    .await;
    let m = scrape(admin).await;
    let req = |route: &str, up: &str, status: &str, reason: &str| {
        m.get(
            "weir_requests_total",
            &[
                ("route", route),
                ("upstream", up),
                ("status", status),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(req("m-api", "m-up", "200", "upstream"), Some(3.0));
    assert_eq!(req("m-api", "m-up", "503", "upstream"), None);
    assert_eq!(
        req("m-down", "m-dead", "502", "upstream-connect"),
        Some(1.0)
    );
    assert_eq!(req("", "", "404", "no-route"), Some(1.0));
    assert_eq!(
        m.get(
            "weir_upstream_attempts_total",
            &[("upstream", "m-up"), ("outcome", "response")]
        ),
        Some(4.0)
    );
    let retries = |up: &str, reason: &str| {
        m.get(
            "weir_retries_total",
            &[("route", "m-api"), ("upstream", up), ("reason", reason)],
        )
    };
    assert_eq!(retries("m-up", "status"), Some(1.0));
    assert_eq!(
        m.get(
            "weir_upstream_attempts_total",
            &[("upstream", "m-dead"), ("outcome", "upstream-connect")]
        ),
        Some(3.0),
        "a request that never left is retried, whatever its method"
    );
    assert_eq!(m.get("weir_in_flight", &[("upstream", "m-up")]), Some(0.0));
    assert_eq!(
        m.get("weir_downstream_connections", &[("listener", "main")]),
        Some(1.0)
    );
    assert!(m.get("weir_build_info", &[("version", env!("CARGO_PKG_VERSION"))]) == Some(1.0));
    assert_eq!(
        m.get(
            "weir_request_duration_seconds_count",
            &[("route", "m-api"), ("upstream", "m-up")]
        ),
        Some(3.0)
    );
    assert!(
        m.has("weir_request_duration_seconds_bucket"),
        "a histogram, not a summary"
    );
    assert!(!m.text().contains("quantile="), "no summaries");
    assert!(!m.text().contains("secret"), "no request data in labels");
}

#[tokio::test]
async fn healthz_and_readyz_answer_and_config_renders_the_effective_config_with_its_defaults() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::one_route("cfg-route", "cfg-up", &[up.addr()]).set("connect_timeout", "2s");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    let health = c.get(weir.admin(), "/healthz").await;
    assert_eq!(health.status, 200);
    let ready = c.get(weir.admin(), "/readyz").await;
    assert_eq!(ready.status, 200);
    let cfg = c.get(weir.admin(), "/config").await;
    assert_eq!(cfg.status, 200);
    let text = cfg.text();
    assert!(text.contains("connect_timeout = \"2s\""), "{text}");
    // Defaults are filled in.
    for key in [
        "idle_timeout = \"1m\"",
        "max_retries = 2",
        "budget_ratio = 0.2",
        "header_read_timeout = \"10s\"",
    ] {
        assert!(
            text.replace("60s", "1m").contains(key),
            "missing {key} in\n{text}"
        );
    }
    weir::Config::from_toml(&text, "effective.toml")
        .expect("the effective config is valid weir config");
    assert_eq!(c.get(weir.admin(), "/nope").await.status, 404);
}
