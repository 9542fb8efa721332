//! Hedged requests against real upstreams: a stalled endpoint is raced by a hedge to the other
//! one, and cancelled; hedges stop when the retry budget is spent; a request that may not be
//! sent twice is never hedged.

// The helpers below are test code too: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::time::Instant;

use crate::support::{Client, RunningUpstream, Toml, Upstream, Weir, eventually, scrape};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `weir_hedges_total{upstream, result}` now.
async fn hedges(weir: &Weir, upstream: &str, result: &str) -> f64 {
    scrape(weir.admin())
        .await
        .get(
            "weir_hedges_total",
            &[("upstream", upstream), ("result", result)],
        )
        .unwrap_or(0.0)
}

/// One route to `upstream` over a stalled and a fast endpoint, tried in turn (the stalled one
/// first), hedged after 100 ms.
fn stalled_and_fast(
    route: &str,
    upstream: &str,
    stalled: &RunningUpstream,
    fast: &RunningUpstream,
) -> Toml {
    Toml::one_route(route, upstream, &[stalled.addr(), fast.addr()])
        .set("balance", "round_robin")
        .set("retry.max_retries", 0)
        .set("hedge.after", "100ms")
        .set("breaker.mode", "off")
        .set("outlier.mode", "off")
}

#[tokio::test]
async fn a_hedged_get_answers_from_the_other_endpoint_and_the_stalled_try_is_cancelled() {
    let stalled = Upstream::http1()
        .route("/", 200, "stalled")
        .delay(Duration::from_secs(10))
        .start()
        .await;
    let fast = Upstream::http1().route("/", 200, "fast").start().await;
    let weir = Weir::start(stalled_and_fast("hg", "hg-up", &stalled, &fast)).await;
    let c = Client::h1();
    // The requests whose first try went to the stalled endpoint (round robin sends it there
    // at least once in four) are answered by their hedge, at least 100 ms later, well before
    // the stall's 10 s.
    let mut hedged = 0;
    for _ in 0..4 {
        let started = Instant::now();
        let r = c.get(weir.addr(), "/").await;
        let took = started.elapsed();
        assert_eq!((r.status.as_u16(), r.text()), (200, "fast".to_owned()));
        assert!(
            took < Duration::from_secs(5),
            "answered by a hedge, not the stall: {took:?}"
        );
        if took >= ms(100) {
            hedged += 1;
        }
    }
    assert!(hedged >= 1, "the stalled endpoint got a first try");
    assert_eq!(stalled.hits(), hedged, "each stalled try was hedged");
    assert_eq!(hedges(&weir, "hg-up", "won").await, hedged as f64);
    // The stalled tries were dropped: the upstream sees the cancel (its connection closed).
    eventually(|| stalled.cancelled() == hedged, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn hedges_stop_when_the_retry_budget_is_spent() {
    let stalled = Upstream::http1()
        .route("/", 200, "stalled")
        .delay(ms(400))
        .start()
        .await;
    let fast = Upstream::http1().route("/", 200, "fast").start().await;
    // A budget of 2 hedges in the first 1.5 s: no ratio, a floor of 2 per second, which
    // allows 2 × the budget's age in seconds (at least 1) over its 10 s window.
    let cfg = stalled_and_fast("hb", "hb-up", &stalled, &fast)
        .set("retry.budget_ratio", 0.0)
        .set("retry.budget_min_per_sec", 2)
        .set("retry.budget_window", "10s");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..6 {
        let r = c.get(weir.addr(), "/").await;
        assert_eq!(r.status.as_u16(), 200);
    }
    let (won, skipped) = (
        hedges(&weir, "hb-up", "won").await,
        hedges(&weir, "hb-up", "skipped_budget").await,
    );
    // Every request whose first try met the stall was hedged or skipped; the first two are
    // hedged, and a third before 1.5 s finds the budget spent.
    let met_stall = stalled.hits() as f64;
    assert_eq!(won + skipped, met_stall, "won {won}, skipped {skipped}");
    assert!(won >= 2.0, "won {won}");
    assert!(
        skipped >= 1.0,
        "the budget ran out: won {won}, skipped {skipped}"
    );
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_never_hedged() {
    let stalled = Upstream::http1()
        .route("/", 200, "stalled")
        .delay(ms(300))
        .start()
        .await;
    let fast = Upstream::http1().route("/", 200, "fast").start().await;
    let weir = Weir::start(stalled_and_fast("hp", "hp-up", &stalled, &fast)).await;
    let c = Client::h1();
    let mut texts = Vec::new();
    for _ in 0..2 {
        let r = c
            .send(
                weir.addr(),
                Method::POST,
                "/",
                &[],
                Bytes::from_static(b"order"),
            )
            .await;
        texts.push(r.text());
    }
    texts.sort();
    assert_eq!(
        texts,
        ["fast", "stalled"],
        "each POST answered by its only try"
    );
    assert_eq!(stalled.hits() + fast.hits(), 2);
    assert_eq!(hedges(&weir, "hp-up", "won").await, 0.0);
    assert_eq!(hedges(&weir, "hp-up", "lost").await, 0.0);
}
