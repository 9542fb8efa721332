//! Endpoints under real traffic: balancer shares, hash affinity, pushback, active health
//! checks, outlier ejection and its cap, panic mode, the recovery ramp, traffic splits.
//!
//! Upstreams here are [`Switch`]es: real HTTP/1.1 servers whose answers (status, delay,
//! `Retry-After`, health) the test changes while weir runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::dns::DnsServer;
use crate::support::{Client, Weir, eventually_async, scrape, status_json};

/// A real upstream whose answers the test switches at run time.
struct Switch {
    addr: SocketAddr,
    state: Arc<SwitchState>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct SwitchState {
    /// Status for requests other than `/healthz` (0 = 200).
    status: AtomicU16,
    /// Status for `/healthz` (0 = 200).
    health: AtomicU16,
    /// `Retry-After` seconds sent with the next `retry_after_left` responses.
    retry_after: AtomicU64,
    retry_after_left: AtomicUsize,
    /// Delay before answering, ms.
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    checks: AtomicUsize,
    connections: AtomicUsize,
}

impl Switch {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SwitchState::default());
        let st = state.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, SeqCst);
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, req.uri().path()).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn hits(&self) -> usize {
        self.state.hits.load(SeqCst)
    }
    fn status(&self, s: u16) {
        self.state.status.store(s, SeqCst);
    }
    fn health(&self, s: u16) {
        self.state.health.store(s, SeqCst);
    }
    fn delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn answer(st: &SwitchState, path: &str) -> hyper::Response<Full<Bytes>> {
    let code = if path == "/healthz" {
        st.checks.fetch_add(1, SeqCst);
        st.health.load(SeqCst)
    } else {
        st.hits.fetch_add(1, SeqCst);
        let ms = st.delay_ms.load(SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        st.status.load(SeqCst)
    };
    let code = if code == 0 { 200 } else { code };
    let mut resp = hyper::Response::builder().status(code);
    if path != "/healthz"
        && st
            .retry_after_left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        resp = resp.header("retry-after", st.retry_after.load(SeqCst).to_string());
    }
    resp.body(Full::new(Bytes::from_static(b"ok"))).unwrap()
}

async fn switches(n: usize) -> Vec<Switch> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Switch::start().await);
    }
    v
}

/// One route `r` over upstream `up` with `eps`, no retries and no breaker unless `extra`
/// says otherwise (so every request is one try, and shares are the balancer's alone).
fn config(eps: &[&Switch], up_extra: &str, tables: &str) -> String {
    let list: Vec<String> = eps.iter().map(|s| format!("\"{}\"", s.addr())).collect();
    format!(
        "[[routes]]\nname = \"r\"\nupstream = \"up\"\n\n[upstreams.up]\nendpoints = [{}]\n{up_extra}\n\
         [upstreams.up.retry]\nmax_retries = 0\n[upstreams.up.breaker]\nmode = \"off\"\n{tables}\n",
        list.join(", ")
    )
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
async fn healthy(weir: &Weir, ep: &Switch) -> Option<f64> {
    let s = scrape(weir.admin()).await;
    s.get(
        "weir_endpoint_healthy",
        &[("upstream", "up"), ("endpoint", &ep.addr().to_string())],
    )
}

/// Waits until `weir_endpoint_healthy` of `ep` is `v`.
async fn wait_healthy(weir: &Weir, ep: &Switch, v: f64) {
    eventually_async(
        || async { healthy(weir, ep).await == Some(v) },
        Duration::from_secs(5),
    )
    .await;
}

/// Waits until the series `name{labels}` reads `v`.
async fn wait_metric(weir: &Weir, name: &str, labels: &[(&str, &str)], v: f64) {
    eventually_async(
        || async { scrape(weir.admin()).await.get(name, labels) == Some(v) },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn round_robin_gives_each_endpoint_the_same_share() {
    let s = switches(3).await;
    let weir = Weir::start(&config(
        &[&s[0], &s[1], &s[2]],
        "balance = \"round_robin\"",
        "",
    ))
    .await;
    let c = Client::h1();
    assert_eq!(send(&weir, &c, 300, &[]).await, 300);
    let hits: Vec<usize> = s.iter().map(Switch::hits).collect();
    assert_eq!(hits, vec![100, 100, 100]);
}

#[tokio::test]
async fn least_request_spreads_evenly_and_favours_the_endpoint_with_fewer_in_flight() {
    let s = switches(2).await;
    let weir = Weir::start(&config(&[&s[0], &s[1]], "balance = \"least_request\"", "")).await;
    // Idle endpoints: ties rotate, so sequential requests alternate.
    let c = Client::h1();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    assert_eq!((s[0].hits(), s[1].hits()), (50, 50));
    // One slow endpoint holds its requests longer, so it has more in flight and gets fewer.
    s[1].delay(40);
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
    let s = switches(2).await;
    s[1].delay(50);
    let weir = Weir::start(&config(&[&s[0], &s[1]], "", "")).await;
    send_concurrently(&weir, 300, 8).await;
    let (fast, slow) = (s[0].hits(), s[1].hits());
    eprintln!("p2c: 50 ms endpoint {slow} of 300, fast one {fast}");
    assert_eq!(fast + slow, 300);
    assert!(
        slow * 5 < fast,
        "p2c: the 50 ms endpoint got {slow} of 300, the fast one {fast}"
    );
}

#[tokio::test]
async fn pushback_keeps_p2c_off_an_endpoint_that_sent_retry_after() {
    let s = switches(2).await;
    // The first answer of endpoint 0 is a 503 with Retry-After: 30.
    s[0].status(503);
    s[0].state.retry_after.store(30, SeqCst);
    s[0].state.retry_after_left.store(1, SeqCst);
    let weir = Weir::start(&config(&[&s[0], &s[1]], "", "")).await;
    let c = Client::h1();
    // Until endpoint 0 has been tried once.
    let mut n = 0;
    while s[0].hits() == 0 {
        c.get(weir.addr(), "/").await;
        n += 1;
        assert!(n < 100, "endpoint 0 never picked");
    }
    s[0].status(200);
    let before = (s[0].hits(), s[1].hits());
    assert_eq!(send(&weir, &c, 50, &[]).await, 50);
    let after = (s[0].hits() - before.0, s[1].hits() - before.1);
    // Without the penalty, p2c over two idle endpoints would split about evenly.
    assert_eq!(
        after,
        (0, 50),
        "a pushed-back endpoint gets nothing while another serves"
    );
}

#[tokio::test]
async fn hash_keeps_keys_on_their_endpoint_and_moves_only_the_keys_of_one_that_leaves() {
    let s = switches(3).await;
    let extra = "balance = \"hash\"\nhash_on = \"header:x-user\"";
    let tables = "[upstreams.up.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    let weir = Weir::start(&config(&[&s[0], &s[1], &s[2]], extra, tables)).await;
    let c = Client::h1();
    let owner = |before: &[usize]| -> usize {
        let now: Vec<usize> = s.iter().map(Switch::hits).collect();
        let moved: Vec<usize> = (0..3).filter(|&i| now[i] != before[i]).collect();
        assert_eq!(moved.len(), 1, "one request reaches one endpoint");
        moved[0]
    };
    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut first = Vec::new();
    for u in &users {
        let before: Vec<usize> = s.iter().map(Switch::hits).collect();
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
        let before: Vec<usize> = s.iter().map(Switch::hits).collect();
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
    s[1].health(503);
    wait_healthy(&weir, &s[1], 0.0).await;
    let mut moved_to = Vec::new();
    for (u, &was) in users.iter().zip(&first) {
        let before: Vec<usize> = s.iter().map(Switch::hits).collect();
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
    let s = switches(2).await;
    let tables = "[upstreams.up.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n\n[upstreams.up.outlier]\nramp = \"0s\"\n";
    let weir = Weir::start(&config(
        &[&s[0], &s[1]],
        "balance = \"round_robin\"",
        tables,
    ))
    .await;
    let c = Client::h1();
    wait_healthy(&weir, &s[0], 1.0).await;
    s[0].health(500);
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

    s[0].health(200);
    wait_healthy(&weir, &s[0], 1.0).await;
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 20, &[]).await, 20);
    assert_eq!(s[0].hits() - before, 10, "back in the rotation");
}

#[tokio::test]
async fn outlier_ejection_never_ejects_more_than_the_cap() {
    let s = switches(4).await;
    for f in &s[..3] {
        f.status(502);
    }
    let tables = "[upstreams.up.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\nmax_ejection_percent = 50\n";
    let weir = Weir::start(&config(
        &[&s[0], &s[1], &s[2], &s[3]],
        "balance = \"round_robin\"",
        tables,
    ))
    .await;
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
    let s = switches(2).await;
    let tables = "[upstreams.up.health]\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    let weir = Weir::start(&config(
        &[&s[0], &s[1]],
        "balance = \"round_robin\"",
        tables,
    ))
    .await;
    s[0].health(503);
    s[1].health(503);
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
    s[1].health(200);
    wait_metric(&weir, "weir_panic_mode", &[("upstream", "up")], 0.0).await;
    let before = s[0].hits();
    send(&weir, &c, 10, &[]).await;
    assert_eq!(s[0].hits(), before);
}

#[tokio::test]
async fn an_endpoint_back_from_ejection_ramps_up_instead_of_taking_its_full_share_at_once() {
    let s = switches(2).await;
    s[0].status(502);
    let tables = "[upstreams.up.outlier]\nconsecutive_failures = 2\nbase_ejection = \"300ms\"\nmax_ejection_percent = 50\nramp = \"3s\"\n";
    let weir = Weir::start(&config(
        &[&s[0], &s[1]],
        "balance = \"round_robin\"",
        tables,
    ))
    .await;
    let c = Client::h1();
    send(&weir, &c, 4, &[]).await;
    wait_healthy(&weir, &s[0], 0.0).await;
    s[0].status(200);
    wait_healthy(&weir, &s[0], 1.0).await;
    // Early in the ramp (share 10 % rising): round robin alone would give it half.
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    let early = s[0].hits() - before;
    eprintln!("ramp: {early} of 100 early in the ramp");
    assert!(early < 35, "early in its ramp it took {early} of 100");
    let status = status_json(weir.admin()).await;
    let share = status["upstreams"][0]["endpoints"][0]["ramp_share"].as_f64();
    assert!(share.is_some_and(|s| (0.1..0.5).contains(&s)), "{status}");
    // After the ramp, it is back to its full share.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = s[0].hits();
    assert_eq!(send(&weir, &c, 100, &[]).await, 100);
    assert_eq!(s[0].hits() - before, 50);
}

#[tokio::test]
async fn a_split_route_shares_traffic_by_weight() {
    let a = Switch::start().await;
    let b = Switch::start().await;
    let toml = format!(
        "[[routes]]\nname = \"canary\"\nsplit = [{{ upstream = \"stable\", weight = 90 }}, {{ upstream = \"canary\", weight = 10 }}]\n\n\
         [upstreams.stable]\nendpoints = [\"{}\"]\n\n[upstreams.canary]\nendpoints = [\"{}\"]\n",
        a.addr(),
        b.addr()
    );
    let weir = Weir::start(&toml).await;
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
    let up = Switch::start().await;
    let port = up.addr().port();
    dns.set("backend.weir.test", vec![std::net::Ipv4Addr::LOCALHOST]);
    let toml = format!(
        "[[routes]]\nname = \"r\"\nupstream = \"up\"\n\n[upstreams.up]\ndns = \"backend.weir.test:{port}\"\n\
         dns_refresh = \"100ms\"\ndns_servers = [\"{}\"]\n",
        dns.addr()
    );
    let weir = Weir::start(&toml).await;
    let c = Client::h1();
    eventually_async(
        || async { c.get(weir.addr(), "/").await.status == 200 },
        Duration::from_secs(5),
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
    let conns = up.state.connections.load(SeqCst);
    // Several refreshes with the same answer: the endpoint, and its pooled connection, stay.
    let q = dns.queries();
    eventually_async(|| async { dns.queries() >= q + 3 }, Duration::from_secs(5)).await;
    assert_eq!(send(&weir, &c, 10, &[]).await, 10);
    assert_eq!(
        up.state.connections.load(SeqCst),
        conns,
        "no new connection"
    );
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
        Duration::from_secs(5),
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
    eventually_async(|| async { dns.queries() >= q + 2 }, Duration::from_secs(5)).await;
    assert_eq!(send(&weir, &c, 5, &[]).await, 5);
}
