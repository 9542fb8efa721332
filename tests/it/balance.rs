//! Endpoints under real traffic: balancer shares, hash affinity, pushback, active health
//! checks, outlier ejection and its cap, panic mode, the recovery ramp, traffic splits.
//!
//! Upstreams here serve health checks on `/healthz` (counted apart from `hits()`), and the test
//! switches their answers (status, delay, health) while weir runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use crate::support::dns::DnsServer;
use crate::support::{
    Client, RunningUpstream, Toml, Upstream, Weir, eventually_async, scrape, status_json,
};

const SECS: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An HTTP/1.1 upstream with health checks on `/healthz`.
fn upstream() -> crate::support::UpstreamBuilder {
    Upstream::http1().health("/healthz")
}

async fn upstreams(n: usize) -> Vec<RunningUpstream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(upstream().start().await);
    }
    v
}

/// One route `r` over upstream `up` at `eps`, with no retries and no breaker (so every request
/// is one try, and shares are the balancer's alone); keys set next go to the upstream.
fn config(eps: &[&RunningUpstream]) -> Toml {
    let addrs: Vec<SocketAddr> = eps.iter().map(|u| u.addr()).collect();
    Toml::one_route("r", "up", &addrs)
        .set("retry.max_retries", 0)
        .set("breaker.mode", "off")
}

/// Active health checks on `/healthz` every 50 ms, `threshold` results to change a verdict.
fn checked(cfg: Toml, threshold: u32) -> Toml {
    cfg.set("health.path", "/healthz")
        .set("health.interval", "50ms")
        .set("health.timeout", "1s")
        .set("health.healthy_threshold", threshold)
        .set("health.unhealthy_threshold", threshold)
}

/// `n` sequential GETs on `path`; returns how many answered 200.
async fn send(weir: &Weir, c: &Client, n: usize, headers: &[(&str, &str)]) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if c.send(weir.addr(), Method::GET, "/", headers, Bytes::new())
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    ok
}

/// `n` GETs, `conc` at a time.
async fn send_concurrently(weir: &Weir, n: usize, conc: usize) {
    let addr = weir.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..conc {
        let per = n / conc + usize::from(w < n % conc);
        tasks.spawn(async move {
            let c = Client::h1();
            for _ in 0..per {
                let _ = c.get(addr, "/").await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// `weir_endpoint_healthy` of `ep` (None while unset).
async fn healthy(weir: &Weir, ep: &RunningUpstream) -> Option<f64> {
    let s = scrape(weir.admin()).await;
    s.get(
        "weir_endpoint_healthy",
        &[("upstream", "up"), ("endpoint", &ep.addr().to_string())],
    )
}

/// Waits until `weir_endpoint_healthy` of `ep` is `v`.
async fn wait_healthy(weir: &Weir, ep: &RunningUpstream, v: f64) {
    eventually_async(|| async { healthy(weir, ep).await == Some(v) }, SECS).await;
}

/// Waits until the series `name{labels}` reads `v`.
async fn wait_metric(weir: &Weir, name: &str, labels: &[(&str, &str)], v: f64) {
    eventually_async(
        || async { scrape(weir.admin()).await.get(name, labels) == Some(v) },
        SECS,
    )
    .await;
}

/// Each upstream's `hits()`.
fn hits(s: &[RunningUpstream]) -> Vec<usize> {
    s.iter().map(RunningUpstream::hits).collect()
}

#[tokio::test]
async fn round_robin_gives_each_endpoint_the_same_share() {
    let s = upstreams(3).await;
    let weir = Weir::start(config(&[&s[0], &s[1], &s[2]]).set("balance", "round_robin")).await;
    let c = Client::h1();
    assert_eq!(send(&weir, &c, 300, &[]).await, 300);
    assert_eq!(hits(&s), vec![100, 100, 100]);
}

#[tokio::test]
async fn least_request_spreads_evenly_and_favours_the_endpoint_with_fewer_in_flight() {
    let s = upstreams(2).await;
    let weir = Weir::start(config(&[&s[0], &s[1]]).set("balance", "least_request")).await;
    // Idle endpoints: ties rotate, so sequential requests alternate.
    let c = Client::h1();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    assert_eq!((s[0].hits(), s[1].hits()), (50, 50));
    // One slow endpoint holds its requests longer, so it has more in flight and gets fewer.
    s[1].set_delay(ms(40));
    send_concurrently(&weir, 200, 8).await;
    let (fast, slow) = (s[0].hits() - 50, s[1].hits() - 50);
    eprintln!("least_request: 40 ms endpoint {slow} of 200, fast one {fast}");
    assert_eq!(fast + slow, 200);
    assert!(
        slow * 4 < fast,
        "the slow endpoint got {slow} of 200, the fast one {fast}"
    );
}

#[tokio::test]
async fn p2c_sends_clearly_less_to_a_slow_endpoint() {
    let fast = upstream().start().await;
    let slow = upstream().delay(ms(50)).start().await;
    let weir = Weir::start(config(&[&fast, &slow])).await;
    send_concurrently(&weir, 300, 8).await;
    let (fast, slow) = (fast.hits(), slow.hits());
    eprintln!("p2c: 50 ms endpoint {slow} of 300, fast one {fast}");
    assert_eq!(fast + slow, 300);
    assert!(
        slow * 5 < fast,
        "p2c: the 50 ms endpoint got {slow} of 300, the fast one {fast}"
    );
}

#[tokio::test]
async fn pushback_keeps_p2c_off_an_endpoint_that_sent_retry_after() {
    // The first answer of endpoint 0 is a 503 with Retry-After: 30; later ones are 200.
    let pushed = upstream()
        .fail_first(1, 503)
        .fail_header("retry-after", "30")
        .start()
        .await;
    let other = upstream().start().await;
    let weir = Weir::start(config(&[&pushed, &other])).await;
    let c = Client::h1();
    // Until endpoint 0 has been tried once.
    let mut n = 0;
    while pushed.hits() == 0 {
        c.get(weir.addr(), "/").await;
        n += 1;
        assert!(n < 100, "endpoint 0 never picked");
    }
    let before = (pushed.hits(), other.hits());
    assert_eq!(send(&weir, &c, 50, &[]).await, 50);
    let after = (pushed.hits() - before.0, other.hits() - before.1);
    // Without the penalty, p2c over two idle endpoints would split about evenly.
    assert_eq!(
        after,
        (0, 50),
        "a pushed-back endpoint gets nothing while another serves"
    );
}

#[tokio::test]
async fn hash_keeps_keys_on_their_endpoint_and_moves_only_the_keys_of_one_that_leaves() {
    let s = upstreams(3).await;
    let cfg = config(&[&s[0], &s[1], &s[2]])
        .set("balance", "hash")
        .set("hash_on", "header:x-user");
    let weir = Weir::start(checked(cfg, 1)).await;
    let c = Client::h1();
    let owner = |before: &[usize]| -> usize {
        let now = hits(&s);
        let moved: Vec<usize> = (0..3).filter(|&i| now[i] != before[i]).collect();
        assert_eq!(moved.len(), 1, "one request reaches one endpoint");
        moved[0]
    };
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut first = Vec::new();
    for u in &users {
        let before = hits(&s);
        assert_eq!(
            c.send(
                weir.addr(),
                Method::GET,
                "/",
                &[("x-user", u.as_str())],
                Bytes::new()
            )
            .await
            .status,
            200
        );
        first.push(owner(&before));
    }
    for i in 0..3 {
        assert!(
            first.contains(&i),
            "60 keys reach every endpoint: {first:?}"
        );
    }
    // Sticky: the same key goes to the same endpoint.
    for (u, &was) in users.iter().zip(&first) {
        let before = hits(&s);
        c.send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-user", u.as_str())],
            Bytes::new(),
        )
        .await;
        assert_eq!(owner(&before), was, "{u} moved without a change");
    }
    // Endpoint 1 fails its checks and leaves: only its keys move.
    s[1].set_health(503);
    wait_healthy(&weir, &s[1], 0.0).await;
    let mut moved_to = Vec::new();
    for (u, &was) in users.iter().zip(&first) {
        let before = hits(&s);
        c.send(
            weir.addr(),
            Method::GET,
            "/",
            &[("x-user", u.as_str())],
            Bytes::new(),
        )
        .await;
        let now = owner(&before);
        if was == 1 {
            assert_ne!(now, 1);
            moved_to.push(now);
        } else {
            assert_eq!(now, was, "{u} of a remaining endpoint moved");
        }
    }
    assert!(!moved_to.is_empty());
}

#[tokio::test]
async fn a_failing_health_check_takes_an_endpoint_out_and_passing_ones_bring_it_back() {
    let s = upstreams(2).await;
    let cfg = config(&[&s[0], &s[1]])
        .set("balance", "round_robin")
        .set("outlier.ramp", "0s");
    let weir = Weir::start(checked(cfg, 2)).await;
    let c = Client::h1();
    wait_healthy(&weir, &s[0], 1.0).await;
    s[0].set_health(500);
    wait_healthy(&weir, &s[0], 0.0).await;
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 20, &[]).await, 20);
    assert_eq!(
        s[0].hits(),
        before,
        "an endpoint failing its checks gets no traffic"
    );
    let status = status_json(weir.admin()).await;
    let ep = &status["upstreams"][0]["endpoints"][0];
    assert_eq!(ep["health"], "failing", "{ep}");
    assert_eq!(ep["serving"], false, "{ep}");

    s[0].set_health(200);
    wait_healthy(&weir, &s[0], 1.0).await;
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 20, &[]).await, 20);
    assert_eq!(s[0].hits() - before, 10, "back in the rotation");
}

#[tokio::test]
async fn outlier_ejection_never_ejects_more_than_the_cap() {
    let s = upstreams(4).await;
    for f in &s[..3] {
        f.set_status(502);
    }
    let cfg = config(&[&s[0], &s[1], &s[2], &s[3]])
        .set("balance", "round_robin")
        .set("outlier.consecutive_failures", 3)
        .set("outlier.base_ejection", "30s")
        .set("outlier.max_ejection_percent", 50);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    send(&weir, &c, 40, &[]).await;
    wait_metric(
        &weir,
        "weir_endpoint_ejections_total",
        &[("upstream", "up")],
        2.0,
    )
    .await;
    // More failures do not eject a third: 50 % of 4 is 2.
    send(&weir, &c, 40, &[]).await;
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.get("weir_endpoint_ejections_total", &[("upstream", "up")]),
        Some(2.0)
    );
    let mut down = 0;
    for f in &s {
        if healthy(&weir, f).await == Some(0.0) {
            down += 1;
        }
    }
    assert_eq!(down, 2);
    assert_eq!(
        healthy(&weir, &s[3]).await,
        Some(1.0),
        "the good one serves"
    );
    assert_eq!(m.get("weir_panic_mode", &[("upstream", "up")]), Some(0.0));
}

#[tokio::test]
async fn when_every_endpoint_is_down_weir_fails_open_to_all_of_them() {
    let s = upstreams(2).await;
    let cfg = config(&[&s[0], &s[1]]).set("balance", "round_robin");
    let weir = Weir::start(checked(cfg, 1)).await;
    s[0].set_health(503);
    s[1].set_health(503);
    wait_metric(&weir, "weir_panic_mode", &[("upstream", "up")], 1.0).await;
    assert_eq!(healthy(&weir, &s[0]).await, Some(0.0));
    let c = Client::h1();
    let before = (s[0].hits(), s[1].hits());
    assert_eq!(
        send(&weir, &c, 10, &[]).await,
        10,
        "panic mode still serves"
    );
    assert_eq!((s[0].hits() - before.0, s[1].hits() - before.1), (5, 5));
    // One comes back: panic mode ends and only it serves.
    s[1].set_health(200);
    wait_metric(&weir, "weir_panic_mode", &[("upstream", "up")], 0.0).await;
    let before = s[0].hits();
    send(&weir, &c, 10, &[]).await;
    assert_eq!(s[0].hits(), before);
}

#[tokio::test]
async fn an_endpoint_back_from_ejection_ramps_up_instead_of_taking_its_full_share_at_once() {
    let s = upstreams(2).await;
    s[0].set_status(502);
    let cfg = config(&[&s[0], &s[1]])
        .set("balance", "round_robin")
        .set("outlier.consecutive_failures", 2)
        .set("outlier.base_ejection", "300ms")
        .set("outlier.max_ejection_percent", 50)
        .set("outlier.ramp", "3s");
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    send(&weir, &c, 4, &[]).await;
    wait_healthy(&weir, &s[0], 0.0).await;
    s[0].set_status(200);
    wait_healthy(&weir, &s[0], 1.0).await;
    // Early in the ramp (share 10 % rising): round robin alone would give it half.
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    let early = s[0].hits() - before;
    eprintln!("ramp: {early} of 100 early in the ramp");
    assert!(early < 35, "early in its ramp it took {early} of 100");
    let ramp_share = || async {
        let status = status_json(weir.admin()).await;
        status["upstreams"][0]["endpoints"][0]["ramp_share"].clone()
    };
    let share = ramp_share().await.as_f64();
    assert!(share.is_some_and(|s| (0.1..0.5).contains(&s)), "{share:?}");
    // After the ramp (its status shows no share any more), it is back to its full share.
    eventually_async(
        || async { ramp_share().await.is_null() },
        Duration::from_secs(10),
    )
    .await;
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    assert_eq!(s[0].hits() - before, 50);
}

#[tokio::test]
async fn a_split_route_shares_traffic_by_weight() {
    let a = Upstream::http1().start().await;
    let b = Upstream::http1().start().await;
    let cfg = Toml::new()
        .split("canary", &[("stable", 90), ("canary", 10)])
        .upstream("stable", &[a.addr()])
        .upstream("canary", &[b.addr()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    let n = 1000;
    assert_eq!(send(&weir, &c, n, &[]).await, n);
    let canary = b.hits();
    eprintln!("split 90/10: canary {canary} of {n}");
    assert_eq!(a.hits() + canary, n);
    // Binomial(1000, 0.1): mean 100, sd 9.5; ±4.5 sd.
    assert!(
        (57..=143).contains(&canary),
        "canary got {canary} of {n} at weight 10 %"
    );
}

#[tokio::test]
async fn dns_discovery_follows_the_resolver_keeps_endpoints_that_remain_and_the_last_good_set() {
    let dns = DnsServer::start().await;
    let up = Upstream::http1().start().await;
    let port = up.addr().port();
    dns.set("backend.weir.test", vec![std::net::Ipv4Addr::LOCALHOST]);
    let cfg = Toml::new()
        .route("r", "up")
        .table("upstreams.up")
        .set("dns", format!("backend.weir.test:{port}"))
        .set("dns_refresh", "100ms")
        .set("dns_servers", vec![dns.addr().to_string()]);
    let weir = Weir::start(cfg).await;
    let c = Client::h1();
    eventually_async(
        || async { c.get(weir.addr(), "/").await.status == 200 },
        SECS,
    )
    .await;
    let status = status_json(weir.admin()).await;
    assert_eq!(
        status["upstreams"][0]["endpoints"][0]["address"],
        format!("127.0.0.1:{port}")
    );
    assert_eq!(
        status["upstreams"][0]["discovery"],
        format!("backend.weir.test:{port}")
    );
    assert_eq!(send(&weir, &c, 10, &[]).await, 10);
    let conns = up.connections();
    // Several refreshes with the same answer: the endpoint, and its pooled connection, stay.
    let q = dns.queries();
    eventually_async(|| async { dns.queries() >= q + 3 }, SECS).await;
    assert_eq!(send(&weir, &c, 10, &[]).await, 10);
    assert_eq!(up.connections(), conns, "no new connection");
    // The resolver fails: the last good set keeps serving, and the failures are counted.
    dns.fail(true);
    eventually_async(
        || async {
            let m = scrape(weir.admin()).await;
            m.get(
                "weir_dns_resolutions_total",
                &[("upstream", "up"), ("result", "error")],
            )
            .is_some_and(|n| n >= 2.0)
        },
        SECS,
    )
    .await;
    assert_eq!(send(&weir, &c, 10, &[]).await, 10);
    let m = scrape(weir.admin()).await;
    assert!(
        m.get(
            "weir_dns_resolutions_total",
            &[("upstream", "up"), ("result", "ok")]
        )
        .is_some_and(|n| n >= 2.0)
    );
    // The name goes away for good (answered, but with no address): still the last set.
    dns.fail(false);
    dns.remove("backend.weir.test");
    let q = dns.queries();
    eventually_async(|| async { dns.queries() >= q + 2 }, SECS).await;
    assert_eq!(send(&weir, &c, 5, &[]).await, 5);
}
