//! The resilience stack against real misbehaving upstreams: deadlines and per-try timeouts,
//! retries and their budget, the circuit breaker, load shedding with priorities, rate limits,
//! fault injection, and what `/status.json` shows.

// The helpers below are test code too: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::time::Instant;

use crate::support::{
    Client, Recorded, Reply, Toml, Upstream, Weir, eventually, eventually_async, scrape,
    status_entry, status_json,
};

const SECS: Duration = Duration::from_secs(5);

/// Tests that bound latency, or load weir with many clients, run one at a time, so that they do
/// not load each other's clocks.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `x-weir-error` of a reply.
fn reason(r: &Reply) -> Option<&str> {
    r.header("x-weir-error")
}

/// `(status, x-weir-error)` of a reply.
fn verdict(r: &Reply) -> (u16, Option<&str>) {
    (r.status.as_u16(), reason(r))
}

/// The `x-weir-deadline-ms` a recorded upstream request carried.
fn deadline_ms(rec: &Recorded) -> u64 {
    let v = rec
        .headers
        .get("x-weir-deadline-ms")
        .unwrap_or_else(|| panic!("no x-weir-deadline-ms upstream: {:?}", rec.headers));
    v.to_str()
        .unwrap()
        .parse()
        .expect("x-weir-deadline-ms is a number")
}

/// `Retry-After` in whole seconds; panics when absent or not a number.
fn retry_after(r: &Reply) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {r:?}"))
        .parse()
        .expect("Retry-After in seconds")
}

/// Sends `n` copies of `method path` at once (one task each); replies in request order, each
/// with its own latency.
async fn burst(
    c: &Client,
    addr: SocketAddr,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> Vec<(Reply, Duration)> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, path, headers) = (c.clone(), path.to_owned(), headers.clone());
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let started = Instant::now();
                let r = c.send(addr, Method::GET, &path, &h, Bytes::new()).await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// `(status, x-weir-error, latency)` of each reply, for failure messages.
fn summary(replies: &[(Reply, Duration)]) -> Vec<(u16, Option<&str>, Duration)> {
    replies
        .iter()
        .map(|(r, t)| (r.status.as_u16(), reason(r), *t))
        .collect()
}

/// Counts replies by `(status, x-weir-error)`.
fn tally(replies: &[(Reply, Duration)], status: u16, why: Option<&str>) -> usize {
    replies
        .iter()
        .filter(|(r, _)| verdict(r) == (status, why))
        .count()
}

/// Polls `/metrics` until the sum of `name{labels}` is `want`; panics with the samples after 5 s.
async fn metric_reaches(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) {
    let deadline = Instant::now() + SECS;
    loop {
        let m = scrape(admin).await;
        let got = m.sum(name, labels);
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{name}{labels:?} is {got}, not {want}: {:#?}",
                m.matching(name, &[])
            );
        }
        tokio::time::sleep(ms(20)).await;
    }
}

// === timeouts and deadlines ===

#[tokio::test]
async fn the_route_timeout_answers_504_and_cancels_the_upstream_request() {
    let hang = Upstream::hang().start().await;
    let cfg = Toml::new()
        .route("to-total", "to-total-up")
        .set("timeout", "300ms")
        .upstream("to-total-up", &[hang.addr()]);
    let weir = Weir::start(cfg).await;
    let started = Instant::now();
    let r = Client::h1().get(weir.addr(), "/").await;
    let took = started.elapsed();
    assert_eq!(verdict(&r), (504, Some("upstream-timeout")));
    assert!(
        took >= ms(300) && took < ms(2000),
        "answered after {took:?}"
    );
    eventually(|| hang.cancelled() == 1, SECS).await;
    assert_eq!(hang.hits(), 1, "an expired route deadline is not retried");
}

#[tokio::test]
async fn an_inbound_deadline_shortens_the_route_timeout() {
    let hang = Upstream::hang().start().await;
    let cfg = Toml::new()
        .route("to-inbound", "to-inbound-up")
        .set("timeout", "5s")
        .upstream("to-inbound-up", &[hang.addr()]);
    let weir = Weir::start(cfg).await;
    let started = Instant::now();
    let r = Client::h1()
        .send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-weir-deadline-ms", "200")],
            Bytes::new(),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(verdict(&r), (504, Some("upstream-timeout")));
    assert!(
        took >= ms(200) && took < ms(1500),
        "answered after {took:?}"
    );
    eventually(|| hang.cancelled() == 1, SECS).await;
}

#[tokio::test]
async fn the_remaining_deadline_is_passed_upstream() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .route("to-pass", "to-pass-up")
        .set("timeout", "2s")
        .upstream("to-pass-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();

    assert_eq!(c.get(weir.addr(), "/").await.status, 200);
    let left = deadline_ms(&up.last_request());
    assert!(
        (1000..=2000).contains(&left),
        "route timeout 2s, {left} ms passed on"
    );

    for (inbound, most) in [("700", 700), ("60000", 2000)] {
        let r = c
            .send(
                weir.addr(),
                Method::GET,
                "/",
                &[("x-weir-deadline-ms", inbound)],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200);
        let left = deadline_ms(&up.last_request());
        assert!(
            left > 0 && left <= most && left >= most / 2,
            "inbound {inbound} ms, route 2s: {left} ms passed on"
        );
    }
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn per_try_timeouts_are_retried_within_the_route_deadline() {
    let hang = Upstream::hang().start().await;
    let cfg = Toml::new()
        .route("to-try", "to-try-up")
        .set("timeout", "400ms")
        .upstream("to-try-up", &[hang.addr()])
        .set("try_timeout", "150ms")
        .set("retry.max_retries", 2);
    let weir = Weir::start(cfg).await;
    let started = Instant::now();
    let r = Client::h1().get(weir.addr(), "/").await;
    let took = started.elapsed();
    assert_eq!(verdict(&r), (504, Some("upstream-timeout")));
    assert!(
        took >= ms(150) && took < ms(1000),
        "route deadline 400ms, answered after {took:?}"
    );
    let hits = hang.hits();
    assert!(
        (2..=3).contains(&hits),
        "150ms tries in a 400ms deadline: {hits} tries"
    );
    eventually(|| hang.cancelled() == hang.hits(), SECS).await;
    assert_eq!(hang.hits(), hits, "nothing is tried after the answer");
}

// === retries ===

#[tokio::test]
async fn idempotent_requests_are_retried_on_configured_statuses() {
    let up = Upstream::http1().fail_first(2, 503).start().await;
    let weir = Weir::start(Toml::one_route("re-status", "re-status-up", &[up.addr()])).await;
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    assert_eq!(up.hits(), 3);

    let route = [("route", "re-status"), ("upstream", "re-status-up")];
    let status = [route[0], route[1], ("reason", "status")];
    metric_reaches(weir.admin(), "weir_retries_total", &status, 2.0).await;
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.sum("weir_requests_total", &route),
        1.0,
        "one request, whatever its tries"
    );
    assert_eq!(
        m.sum(
            "weir_requests_total",
            &[route[0], route[1], ("status", "200")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_reset_before_response_headers_is_retried() {
    let up = Upstream::http1().reset_first(1).start().await;
    let weir = Weir::start(Toml::one_route("re-reset", "re-reset-up", &[up.addr()])).await;
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 2);
    metric_reaches(
        weir.admin(),
        "weir_retries_total",
        &[("route", "re-reset"), ("upstream", "re-reset-up")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_post_that_may_have_reached_the_upstream_is_not_retried() {
    let closing = Upstream::http1().close_after_read().start().await;
    let failing = Upstream::http1().fail_first(1, 503).start().await;
    let cfg = Toml::new()
        .route("re-post-close", "re-post-close-up")
        .set("match.path_prefix", "/close")
        .route("re-post-fail", "re-post-fail-up")
        .upstream("re-post-close-up", &[closing.addr()])
        .upstream("re-post-fail-up", &[failing.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();

    let r = c
        .send(weir.addr(), Method::POST, "/close", &[], "order #1")
        .await;
    assert_eq!(verdict(&r), (502, Some("upstream-reset")));
    assert_eq!(closing.hits(), 1, "the POST may have been applied once");
    assert_eq!(&closing.last_request().body[..], b"order #1");

    let r = c
        .send(weir.addr(), Method::POST, "/fail", &[], "order #2")
        .await;
    assert_eq!(verdict(&r), (503, None), "the upstream's own 503");
    assert_eq!(failing.hits(), 1);
    // The upstream has recovered: the 503 above was only because a POST is not retried.
    let r = c
        .send(weir.addr(), Method::POST, "/fail", &[], "order #3")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(failing.hits(), 2);
}

#[tokio::test]
async fn an_idempotency_key_allows_a_post_retry_only_where_configured() {
    let yes = Upstream::http1().fail_first(1, 503).start().await;
    let no = Upstream::http1().fail_first(1, 503).start().await;
    let cfg = Toml::new()
        .route("re-ik-yes", "re-ik-yes-up")
        .set("match.path_prefix", "/yes")
        .route("re-ik-no", "re-ik-no-up")
        .upstream("re-ik-yes-up", &[yes.addr()])
        .set("retry.idempotency_key", true)
        .upstream("re-ik-no-up", &[no.addr()])
        .set("retry.idempotency_key", false);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    let key = [("idempotency-key", "7f3c2a")];

    let r = c
        .send(weir.addr(), Method::POST, "/yes", &key, "pay 10")
        .await;
    assert_eq!(r.status, 200, "retried: the upstream allows keyed retries");
    assert_eq!(yes.hits(), 2);
    let seen = yes.requests();
    assert!(seen.iter().all(|s| &s.body[..] == b"pay 10"), "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.headers["idempotency-key"] == "7f3c2a")
    );

    let r = c
        .send(weir.addr(), Method::POST, "/no", &key, "pay 10")
        .await;
    assert_eq!(verdict(&r), (503, None), "not retried");
    assert_eq!(no.hits(), 1);
}

#[tokio::test]
async fn a_request_that_never_left_is_retried_on_another_endpoint_whatever_its_method() {
    let (_held, closed) = crate::support::closed_port();
    let healthy = Upstream::http1().start().await;
    let cfg = Toml::one_route("re-refused", "re-refused-up", &[closed, healthy.addr()])
        .set("balance", "round_robin")
        .set("retry.budget_ratio", 1.0)
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for i in 0..20 {
        let body = format!("post {i}");
        let r = c
            .send(weir.addr(), Method::POST, "/", &[], body.clone())
            .await;
        assert_eq!(verdict(&r), (200, None), "POST {i}");
    }
    assert_eq!(
        healthy.hits(),
        20,
        "every POST reached the healthy endpoint once"
    );
    let m = scrape(weir.admin()).await;
    let retries = m.sum("weir_retries_total", &[("upstream", "re-refused-up")]);
    assert!(
        retries >= 1.0,
        "round robin sent some first tries to the refused port, and they were retried: {retries}"
    );
}

#[tokio::test]
async fn a_buffered_body_is_replayed_intact_on_a_retry() {
    let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();

    // Recorded: the upstream read both tries in full.
    let failing = Upstream::http1().fail_first(1, 503).start().await;
    // Echoed: the first try is reset after its head, the second echoes the body back.
    let echo = Upstream::http1().echo().reset_first(1).start().await;
    let cfg = Toml::new()
        .route("re-body-rec", "re-body-rec-up")
        .set("match.path_prefix", "/rec")
        .route("re-body-echo", "re-body-echo-up")
        .upstream("re-body-rec-up", &[failing.addr()])
        .upstream("re-body-echo-up", &[echo.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();

    let r = c
        .send(weir.addr(), Method::PUT, "/rec", &[], body.clone())
        .await;
    assert_eq!(r.status, 200);
    let seen = failing.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert!(
            s.body == body,
            "a try carried {} bytes, not the 4096 sent",
            s.body.len()
        );
    }

    let r = c
        .send(weir.addr(), Method::PUT, "/echo", &[], body.clone())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(echo.hits(), 2);
    assert!(r.body == body, "echoed {} bytes", r.body.len());
}

#[tokio::test]
async fn an_upstream_retry_after_within_the_cap_delays_the_retry() {
    let honoured = Upstream::http1()
        .fail_first(1, 503)
        .fail_header("retry-after", "1")
        .start()
        .await;
    let capped = Upstream::http1()
        .fail_first(1, 503)
        .fail_header("retry-after", "1")
        .start()
        .await;
    let cfg = Toml::new()
        .route("re-ra", "re-ra-up")
        .set("match.path_prefix", "/ra")
        .route("re-ra-cap", "re-ra-cap-up")
        .upstream("re-ra-up", &[honoured.addr()])
        .set("retry.backoff_cap", "2s")
        .upstream("re-ra-cap-up", &[capped.addr()])
        .set("retry.backoff_cap", "500ms");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();

    let started = Instant::now();
    let r = c.get(weir.addr(), "/ra").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(honoured.hits(), 2);
    let seen = honoured.requests();
    let gap = seen[1].received - seen[0].received;
    assert!(
        gap >= ms(1000) && took < ms(5000),
        "Retry-After: 1 honoured: tries {gap:?} apart, answered after {took:?}"
    );

    let started = Instant::now();
    let r = c.get(weir.addr(), "/cap").await;
    let took = started.elapsed();
    assert_eq!(
        verdict(&r),
        (503, None),
        "a Retry-After beyond the cap is not waited for"
    );
    assert_eq!(capped.hits(), 1);
    assert!(took < ms(1000), "{took:?}");
}

// === retry budget ===

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().fail_first(usize::MAX, 503).start().await;
    let cfg = Toml::one_route("rb-storm", "rb-storm-up", &[up.addr()])
        .set("retry.max_retries", 3)
        .set("retry.budget_ratio", 0.2)
        .set("retry.budget_min_per_sec", 5)
        .set("retry.budget_window", "10s")
        .set("breaker.mode", "off")
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    const N: usize = 200;
    const CONCURRENCY: usize = 8;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = Client::h1();
    let addr = weir.addr();
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (c, next) = (c.clone(), next.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < N {
                    statuses.push(c.get(addr, "/").await.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for w in workers {
        statuses.extend(w.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(statuses.len(), N);
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");

    let hits = up.hits();
    let bound = 1.2 * N as f64 + 5.0 * (secs.ceil() + 1.0);
    assert!(
        hits >= N && (hits as f64) <= bound,
        "{N} requests in {secs:.2}s made {hits} tries; the budget allows {bound}"
    );
    assert!(
        hits < 2 * N,
        "far from the {} of an unbudgeted storm",
        4 * N
    );
    let m = scrape(weir.admin()).await;
    let exhausted = m.sum(
        "weir_retry_budget_exhausted_total",
        &[("upstream", "rb-storm-up")],
    );
    assert!(exhausted > 0.0, "{}", m.text());
    let retries = m.sum("weir_retries_total", &[("upstream", "rb-storm-up")]);
    assert_eq!(
        retries as usize,
        hits - N,
        "every try beyond the first is a counted retry"
    );
}

// === circuit breaker ===

#[tokio::test]
async fn the_breaker_opens_lets_only_probes_through_and_closes_by_itself() {
    let up = Upstream::http1()
        .fail_first(5, 503)
        .route_delay("/slow", ms(300))
        .start()
        .await;
    let cfg = Toml::one_route("cb", "cb-up", &[up.addr()])
        .set("retry.max_retries", 0)
        .set("breaker.consecutive_failures", 5)
        .set("breaker.open_for", "1s")
        .set("breaker.half_open_probes", 3)
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let (c, addr, admin) = (Client::h1(), weir.addr(), weir.admin());
    let state = || async move {
        scrape(admin)
            .await
            .get("weir_circuit_state", &[("upstream", "cb-up")])
    };

    for i in 0..5 {
        let r = c.get(addr, "/").await;
        assert_eq!(
            verdict(&r),
            (503, None),
            "failure {i} comes from the upstream"
        );
    }
    assert_eq!(up.hits(), 5);

    // Open: refused at once, with the time it stays open; the upstream sees nothing.
    let r = c.get(addr, "/").await;
    assert_eq!(verdict(&r), (503, Some("circuit-open")));
    let wait = retry_after(&r);
    assert!(
        (1..=2).contains(&wait),
        "Retry-After {wait} for open_for 1s"
    );
    assert_eq!(up.hits(), 5);
    assert_eq!(state().await, Some(1.0), "open");

    // Half-open: of a burst, only the probes reach the upstream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let replies = burst(&c, addr, 10, "/slow", &[]).await;
        let through = replies.len() - tally(&replies, 503, Some("circuit-open"));
        if through > 0 {
            assert_eq!(
                tally(&replies, 200, None),
                through,
                "probes pass: {:?}",
                summary(&replies)
            );
            break through;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never let a probe through"
        );
        tokio::time::sleep(ms(50)).await;
    };
    assert!((1..=3).contains(&admitted), "{admitted} probes of 3");
    assert_eq!(up.hits(), 5 + admitted, "only probes reached the upstream");

    // The probes succeed and it closes by itself; every refused request stayed away.
    let mut passed = admitted;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(addr, "/").await;
        match verdict(&r) {
            (200, None) => passed += 1,
            (503, Some("circuit-open")) => {}
            other => panic!("{other:?}"),
        }
        if r.status == 200 && state().await == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the breaker never closed");
    }
    assert_eq!(up.hits(), 5 + passed);
    for _ in 0..5 {
        assert_eq!(c.get(addr, "/").await.status, 200, "closed");
    }
    let m = scrape(admin).await;
    let to = |state: &str| {
        m.sum(
            "weir_circuit_transitions_total",
            &[("upstream", "cb-up"), ("to", state)],
        )
    };
    assert_eq!(
        (to("open"), to("half_open"), to("closed")),
        (1.0, 1.0, 1.0),
        "{}",
        m.text()
    );
    assert_eq!(
        m.get(
            "weir_circuit_transitions_total",
            &[
                ("upstream", "cb-up"),
                ("to", "open"),
                ("reason", "consecutive")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "weir_circuit_transitions_total",
            &[
                ("upstream", "cb-up"),
                ("to", "closed"),
                ("reason", "probe_succeeded")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_dry_run_breaker_counts_but_rejects_nothing() {
    let up = Upstream::http1().fail_first(10, 503).start().await;
    let cfg = Toml::one_route("cb-dry", "cb-dry-up", &[up.addr()])
        .set("retry.max_retries", 0)
        .set("breaker.mode", "dry_run")
        .set("breaker.consecutive_failures", 5)
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for i in 0..15 {
        let r = c.get(weir.addr(), "/").await;
        let want = if i < 10 { 503 } else { 200 };
        assert_eq!(verdict(&r), (want, None), "request {i}");
    }
    assert_eq!(up.hits(), 15, "nothing rejected");
    let m = scrape(weir.admin()).await;
    let would = m.sum(
        "weir_dry_run_rejections_total",
        &[("upstream", "cb-dry-up"), ("policy", "breaker")],
    );
    assert!(would > 0.0, "{}", m.text());
}

// === load shedding ===

#[tokio::test]
async fn beyond_max_in_flight_requests_are_refused_at_once() {
    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().delay(ms(300)).start().await;
    let cfg = Toml::one_route("sh-limit", "sh-limit-up", &[up.addr()])
        .set("shed.max_in_flight", 2)
        .set("shed.min_limit", 1)
        .set("shed.queue", 0)
        .set("retry.max_retries", 0);
    let weir = Weir::start(cfg).await;
    let replies = burst(&Client::h1(), weir.addr(), 10, "/", &[]).await;
    assert_eq!(tally(&replies, 200, None), 2, "{:?}", summary(&replies));
    assert_eq!(
        tally(&replies, 503, Some("overloaded")),
        8,
        "{:?}",
        summary(&replies)
    );
    for (r, took) in replies.iter().filter(|(r, _)| r.status == 503) {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(*took < ms(100), "refused after {took:?}");
    }
    assert_eq!(up.hits(), 2);
    metric_reaches(
        weir.admin(),
        "weir_shed_total",
        &[("upstream", "sh-limit-up")],
        8.0,
    )
    .await;
}

#[tokio::test]
async fn a_bounded_queue_holds_requests_until_a_slot_frees() {
    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().delay(ms(300)).start().await;
    let cfg = Toml::one_route("sh-queue", "sh-queue-up", &[up.addr()])
        .set("shed.max_in_flight", 2)
        .set("shed.min_limit", 1)
        .set("shed.queue", 2)
        .set("shed.queue_timeout", "1s")
        .set("retry.max_retries", 0);
    let weir = Weir::start(cfg).await;
    let replies = burst(&Client::h1(), weir.addr(), 10, "/", &[]).await;
    assert_eq!(tally(&replies, 200, None), 4, "{:?}", summary(&replies));
    assert_eq!(
        tally(&replies, 503, Some("overloaded")),
        6,
        "{:?}",
        summary(&replies)
    );
    let mut served: Vec<Duration> = replies
        .iter()
        .filter(|(r, _)| r.status == 200)
        .map(|(_, t)| *t)
        .collect();
    served.sort();
    assert!(
        served[3] >= ms(550),
        "two waited for a slot, then 300ms more: {served:?}"
    );
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn under_pressure_sheddable_requests_go_first() {
    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().delay(ms(1000)).start().await;
    let cfg = Toml::new()
        .route("sh-prio-shed", "sh-prio-up")
        .set("match.path_prefix", "/batch")
        .set("priority", "sheddable")
        .route("sh-prio-crit", "sh-prio-up")
        .set("priority", "critical")
        .upstream("sh-prio-up", &[up.addr()])
        .set("shed.max_in_flight", 2)
        .set("shed.min_limit", 1)
        .set("shed.queue", 2)
        .set("shed.queue_timeout", "5s")
        .set("retry.max_retries", 0);
    let weir = Weir::start(cfg).await;
    let (c, addr, admin) = (Client::h1(), weir.addr(), weir.admin());
    let spawn = |path: &'static str, header: Option<(&'static str, &'static str)>| {
        let c = c.clone();
        tokio::spawn(async move {
            let h: Vec<(&str, &str)> = header.into_iter().collect();
            let started = Instant::now();
            let r = c.send(addr, Method::GET, path, &h, Bytes::new()).await;
            (r, started.elapsed())
        })
    };
    let shed_status = || async move {
        let status = status_json(admin).await;
        let shed = &status_entry(&status, "upstreams", "sh-prio-up")["shed"];
        (
            shed["in_flight"].as_u64().unwrap(),
            shed["limit"].as_u64().unwrap(),
            shed["queued"].as_u64().unwrap(),
        )
    };

    // Three critical requests hold both slots and the one slot of the critical reserve above
    // the limit; two sheddable ones (a sheddable route, and a critical route's request that
    // lowers itself) wait in the queue.
    let held = [
        spawn("/pay", None),
        spawn("/pay", None),
        spawn("/pay", None),
    ];
    eventually(|| up.hits() == 3, SECS).await;
    let waiting = [
        spawn("/batch", None),
        spawn("/pay", Some(("x-weir-priority", "sheddable"))),
    ];
    eventually_async(|| async { shed_status().await == (3, 2, 2) }, SECS).await;

    // Two critical arrivals find the queue full: they push the sheddable waiters out.
    let late = [spawn("/pay", None), spawn("/pay", None)];
    for w in waiting {
        let (r, took) = w.await.unwrap();
        assert_eq!(verdict(&r), (503, Some("overloaded")), "evicted");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(
            took < ms(5000),
            "refused before its queue timeout: {took:?}"
        );
    }
    for t in held.into_iter().chain(late) {
        let (r, _) = t.await.unwrap();
        assert_eq!(verdict(&r), (200, None), "critical requests are served");
    }
    assert_eq!(up.hits(), 5);
    assert!(
        up.requests()
            .iter()
            .all(|r| r.uri.path() == "/pay" && !r.headers.contains_key("x-weir-priority")),
        "no sheddable request reached the upstream"
    );
    metric_reaches(
        admin,
        "weir_shed_total",
        &[("upstream", "sh-prio-up"), ("reason", "evicted")],
        2.0,
    )
    .await;
    assert_eq!(shed_status().await, (0, 2, 0));
}

/// Shedding under sustained overload, wired end to end: more clients than slots and queue
/// places keep sending; some requests are refused as `overloaded`, none of those reaches the
/// upstream, and `weir_shed_total` counts each. How much is served at three times capacity,
/// and how fast a refusal is, are figures of `benches/overload_proxy.rs` (`goodput`), not
/// bounds here.
#[tokio::test]
async fn under_overload_some_requests_are_refused_as_overloaded_and_none_reach_the_upstream() {
    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().delay(ms(100)).start().await;
    let cfg = Toml::one_route("sh-over", "sh-over-up", &[up.addr()])
        .set("shed.max_in_flight", 2)
        .set("shed.queue", 2)
        .set("shed.queue_timeout", "20ms")
        .set("retry.max_retries", 0)
        .set("breaker.mode", "off")
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let addr = weir.addr();
    // 8 clients, each sending its next request as soon as the last is answered: with 2 slots
    // and 2 queue places, the others find no room.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let c = Client::h1();
                let mut verdicts = Vec::new();
                for _ in 0..20 {
                    let r = c.get(addr, "/").await;
                    verdicts.push((r.status.as_u16(), reason(&r).map(str::to_owned)));
                }
                verdicts
            })
        })
        .collect();
    let mut verdicts = Vec::new();
    for c in clients {
        verdicts.extend(c.await.unwrap());
    }
    let served = verdicts.iter().filter(|v| **v == (200, None)).count();
    let refused = verdicts
        .iter()
        .filter(|(status, why)| *status == 503 && why.as_deref() == Some("overloaded"))
        .count();
    assert_eq!(served + refused, verdicts.len(), "{verdicts:?}");
    assert!(served > 0, "nothing served: {verdicts:?}");
    assert!(
        refused > 0,
        "8 clients on 2 slots and 2 queue places, none refused"
    );
    assert_eq!(up.hits(), served, "no refused request reached the upstream");
    metric_reaches(
        weir.admin(),
        "weir_shed_total",
        &[("upstream", "sh-over-up")],
        refused as f64,
    )
    .await;
}

/// DESIGN §2: "a rejected request costs microseconds, not a queue slot". Once weir has timed how
/// long a slot is held, an arrival whose expected wait exceeds the queue timeout is refused
/// without taking a queue place (`reason="queue_wait"`) instead of waiting the timeout out
/// (`queue_timeout`). How fast refusals are under overload is a figure of
/// `benches/overload_proxy.rs` (`goodput`).
#[tokio::test]
async fn an_arrival_that_would_outwait_the_queue_timeout_is_refused_without_queueing() {
    let up = Upstream::http1().delay(ms(300)).start().await;
    let cfg = Toml::one_route("sh-wait", "sh-wait-up", &[up.addr()])
        .set("shed.max_in_flight", 1)
        .set("shed.min_limit", 1)
        .set("shed.queue", 4)
        .set("shed.queue_timeout", "50ms")
        .set("retry.max_retries", 0);
    let weir = Weir::start(cfg).await;
    let (c, addr, admin) = (Client::h1(), weir.addr(), weir.admin());
    // The first request fills the only slot, so the 300ms it holds it is timed.
    assert_eq!(c.get(addr, "/").await.status, 200);
    let held = {
        let c = c.clone();
        tokio::spawn(async move { c.get(addr, "/").await })
    };
    eventually(|| up.hits() == 2, SECS).await;

    // The slot is held: the next arrival expects to wait about 300ms for it, past the 50ms.
    let r = c.get(addr, "/").await;
    assert_eq!(verdict(&r), (503, Some("overloaded")));
    let status = status_json(admin).await;
    let shed = &status_entry(&status, "upstreams", "sh-wait-up")["shed"];
    assert_eq!(
        shed["queued"].as_u64(),
        Some(0),
        "it took no queue place: {shed}"
    );
    let shed_total = |reason: &'static str| async move {
        scrape(admin).await.sum(
            "weir_shed_total",
            &[("upstream", "sh-wait-up"), ("reason", reason)],
        )
    };
    assert_eq!(shed_total("queue_wait").await, 1.0);
    assert_eq!(shed_total("queue_timeout").await, 0.0);

    assert_eq!(verdict(&held.await.unwrap()), (200, None));
    assert_eq!(
        up.hits(),
        2,
        "the refused request never reached the upstream"
    );
}

/// With `adaptive = true` the limit follows latency: once a fast phase has set the baseline, the
/// upstream slows down twelvefold and the limit in force falls below what it was. How far and
/// how fast it falls is a figure of `benches/overload_proxy.rs` (`adaptive`).
#[tokio::test]
async fn the_adaptive_limit_falls_after_the_upstream_slows() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    let _heavy = HEAVY.lock().await;
    let up = Upstream::http1().delay(ms(5)).start().await;
    let cfg = Toml::one_route("sh-adaptive", "sh-adaptive-up", &[up.addr()])
        .set("shed.adaptive", true)
        .set("shed.min_limit", 2)
        .set("shed.max_in_flight", 32)
        .set("shed.queue", 0);
    let weir = Weir::start(cfg).await;
    let (addr, admin) = (weir.addr(), weir.admin());
    let limit = || async move {
        let status = status_json(admin).await;
        status_entry(&status, "upstreams", "sh-adaptive-up")["shed"]["limit"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(limit().await, 32, "the limit starts at its ceiling");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = Client::h1();
                while !stop.load(SeqCst) {
                    let _ = c.try_get(addr, "/").await;
                }
            })
        })
        .collect();
    // The baseline is the mean of the first ten windows of at least 10 samples and 100ms:
    // 2500 fast round trips from 16 clients cover them.
    eventually(|| up.hits() >= 2_500, Duration::from_secs(60)).await;
    let before = limit().await;
    up.set_delay(ms(60));
    eventually_async(|| async { limit().await < before }, Duration::from_secs(60)).await;
    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }
}

/// HTTP/2 `REFUSED_STREAM` means the server did not process the request (RFC 9113 §8.7): even a
/// POST is retried, by weir's retry layer, and answered by the next stream.
#[tokio::test]
async fn a_post_refused_with_refused_stream_is_retried() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = streams.clone();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(sock).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            if seen.fetch_add(1, SeqCst) == 0 {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
            drop(req);
            let resp = http::Response::builder().status(200).body(()).unwrap();
            let mut body = respond.send_response(resp, false).unwrap();
            body.send_data(Bytes::from_static(b"second"), true).unwrap();
        }
    });
    let cfg = Toml::one_route("h2-refused", "h2-refused-up", &[addr]).set("protocol", "http2");
    let weir = Weir::start(cfg).await;
    let r = Client::h1()
        .send(
            weir.addr(),
            Method::POST,
            "/",
            &[],
            Bytes::from_static(b"payload"),
        )
        .await;
    assert_eq!(verdict(&r), (200, None));
    assert_eq!(r.text(), "second");
    assert_eq!(streams.load(SeqCst), 2, "one refused stream, one answered");
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.get(
            "weir_retries_total",
            &[
                ("route", "h2-refused"),
                ("upstream", "h2-refused-up"),
                ("reason", "upstream-connect")
            ]
        ),
        Some(1.0),
        "{}",
        m.text()
    );
    server.abort();
}

// === rate limiting ===

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .route("rl-route", "rl-route-up")
        .set("rate_limit.rps", 5)
        .set("rate_limit.burst", 5)
        .upstream("rl-route-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let replies = burst(&Client::h2(), weir.addr(), 6, "/", &[]).await;
    assert_eq!(tally(&replies, 200, None), 5, "{:?}", summary(&replies));
    assert_eq!(
        tally(&replies, 429, Some("rate-limited")),
        1,
        "{:?}",
        summary(&replies)
    );
    let (limited, _) = replies.iter().find(|(r, _)| r.status == 429).unwrap();
    assert!(retry_after(limited) >= 1);
    assert_eq!(up.hits(), 5);
    metric_reaches(
        weir.admin(),
        "weir_rate_limited_total",
        &[("route", "rl-route")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_keyed_rate_limit_keeps_users_apart() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .route("rl-user", "rl-user-up")
        .set("rate_limit.rps", 0.5)
        .set("rate_limit.burst", 2)
        .set("rate_limit.key", "header:x-user")
        .upstream("rl-user-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for user in ["ada", "bob"] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = c
                .send(
                    weir.addr(),
                    Method::GET,
                    "/",
                    &[("x-user", user)],
                    Bytes::new(),
                )
                .await;
            got.push(verdict(&r).0);
        }
        assert_eq!(got, [200, 200, 429], "user {user}");
    }
    assert_eq!(up.hits(), 4);
}

/// One GET from a client socket bound to `from` (any address of 127.0.0.0/8 is the loopback),
/// on a connection of its own; the response's status.
async fn status_from(from: std::net::IpAddr, to: SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .unwrap()
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut head))
        .await
        .unwrap()
        .unwrap();
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A direct response keyed by client address still sees the client: such a route keeps the
/// request context that other direct responses go without.
#[tokio::test]
async fn a_direct_response_rate_limited_by_client_ip_keeps_clients_apart() {
    let cfg = Toml::new()
        .respond("rl-direct", 200)
        .set("rate_limit.rps", 0.01)
        .set("rate_limit.burst", 1)
        .set("rate_limit.key", "client_ip");
    let weir = Weir::start(cfg).await;
    let (one, two) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    assert_eq!(status_from(one, weir.addr()).await, 200);
    assert_eq!(status_from(one, weir.addr()).await, 429);
    assert_eq!(status_from(two, weir.addr()).await, 200);
    assert_eq!(status_from(two, weir.addr()).await, 429);
}

// === fault injection ===

#[tokio::test]
async fn an_injected_abort_never_reaches_the_upstream() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .route("fi-abort", "fi-abort-up")
        .set("fault.abort_percent", 100.0)
        .set("fault.abort_status", 418)
        .upstream("fi-abort-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..5 {
        let r = c.get(weir.addr(), "/").await;
        assert_eq!(verdict(&r), (418, Some("fault-injected")));
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn fault_headers_work_only_where_the_route_allows_them() {
    let up = Upstream::http1().start().await;
    let cfg = Toml::new()
        .route("fi-allowed", "fi-hdr-up")
        .set("match.path_prefix", "/allowed")
        .set("fault.allow_header", true)
        .route("fi-denied", "fi-hdr-up")
        .upstream("fi-hdr-up", &[up.addr()]);
    let weir = Weir::start(cfg).await;
    let (c, addr) = (Client::h1(), weir.addr());
    let send = |path: &'static str, header: (&'static str, &'static str)| {
        let c = c.clone();
        async move {
            let started = Instant::now();
            let r = c
                .send(addr, Method::GET, path, &[header], Bytes::new())
                .await;
            (r, started.elapsed())
        }
    };

    let (r, _) = send("/allowed", ("x-weir-fault-abort", "503")).await;
    assert_eq!(verdict(&r), (503, Some("fault-injected")));
    assert_eq!(up.hits(), 0);
    let (r, took) = send("/allowed", ("x-weir-fault-delay", "200ms")).await;
    assert_eq!(verdict(&r), (200, None));
    assert!(took >= ms(200) && took < ms(2000), "{took:?}");
    assert_eq!(up.hits(), 1);

    let (r, _) = send("/denied", ("x-weir-fault-abort", "503")).await;
    assert_eq!(verdict(&r), (200, None), "ignored without allow_header");
    let (r, took) = send("/denied", ("x-weir-fault-delay", "1s")).await;
    assert_eq!(verdict(&r), (200, None));
    assert!(took < ms(800), "ignored without allow_header: {took:?}");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn a_direct_response_can_be_delayed_like_a_slow_backend() {
    let cfg = Toml::new()
        .respond("fi-fake", 201)
        .set("respond.body", "fake")
        .set("fault.delay_percent", 100.0)
        .set("fault.delay", "200ms");
    let weir = Weir::start(cfg).await;
    let started = Instant::now();
    let r = Client::h1().get(weir.addr(), "/").await;
    let took = started.elapsed();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (201, "fake"));
    assert!(took >= ms(200) && took < ms(2000), "{took:?}");
}

// === visibility ===

#[tokio::test]
async fn status_json_shows_an_open_breaker_and_the_upstreams_shed_retry_and_route_state() {
    let up = Upstream::http1().fail_first(usize::MAX, 500).start().await;
    let cfg = Toml::new()
        .route("st-route", "st-up")
        .set("timeout", "3s")
        .set("priority", "critical")
        .upstream("st-up", &[up.addr()])
        .set("retry.max_retries", 0)
        .set("breaker.consecutive_failures", 2)
        .set("breaker.open_for", "30s")
        .set("shed.max_in_flight", 64)
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    for _ in 0..2 {
        assert_eq!(verdict(&c.get(weir.addr(), "/").await), (500, None));
    }
    assert_eq!(
        verdict(&c.get(weir.addr(), "/").await),
        (503, Some("circuit-open"))
    );

    let reply = c.get(weir.admin(), "/status.json").await;
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    let status = status_json(weir.admin()).await;
    let u = status_entry(&status, "upstreams", "st-up");
    let e = &u["endpoints"][0];
    assert_eq!(e["address"], up.addr().to_string(), "{u:#}");
    assert_eq!(e["serving"], true, "{u:#}");
    assert_eq!(u["endpoints"].as_array().map(Vec::len), Some(1), "{u:#}");

    let b = &u["breaker"];
    assert_eq!(b["state"], "open", "{u:#}");
    assert_eq!(b["mode"], "enforce");
    assert_eq!(b["trips"].as_u64(), Some(1));
    assert_eq!(b["last_reason"], "consecutive");
    let remaining = b["open_remaining_seconds"].as_f64().expect("a number");
    assert!(remaining > 20.0 && remaining <= 30.0, "{remaining}");
    let in_state = b["in_state_seconds"].as_f64().expect("a number");
    assert!((0.0..10.0).contains(&in_state), "{in_state}");

    let s = &u["shed"];
    assert_eq!(s["mode"], "enforce");
    assert_eq!(s["adaptive"], false);
    assert_eq!(
        (
            s["in_flight"].as_u64(),
            s["limit"].as_u64(),
            s["queued"].as_u64()
        ),
        (Some(0), Some(64), Some(0)),
        "{u:#}"
    );
    let r = &u["retry"];
    assert!(r["budget_remaining"].is_number(), "{u:#}");
    assert!(
        r["median_latency_ms"].is_number() || r["median_latency_ms"].is_null(),
        "{u:#}"
    );

    let route = status_entry(&status, "routes", "st-route");
    assert_eq!(route["priority"], "critical");
    assert_eq!(route["timeout_ms"].as_u64(), Some(3000));
    assert!(route["targets"].to_string().contains("st-up"), "{route:#}");
}
