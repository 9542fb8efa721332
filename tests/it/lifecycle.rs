//! Drain: readiness flips first, weir keeps serving for `drain.delay`, requests in flight
//! finish (HTTP/1 told `Connection: close`, HTTP/2 closed gracefully), a second signal cuts.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{Client, ConfigFile, Toml, Upstream, Weir, eventually, eventually_async};

/// One route `route` to `upstream` at `addr`, drained with `delay` and `timeout`.
fn config(route: &str, upstream: &str, addr: SocketAddr, delay: &str, timeout: &str) -> Toml {
    Toml::one_route(route, upstream, &[addr])
        .table("drain")
        .set("delay", delay)
        .set("timeout", timeout)
}

#[tokio::test]
async fn a_drain_flips_readiness_keeps_serving_for_the_delay_and_completes_requests_in_flight() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(400))
        .start()
        .await;
    let weir = Weir::start(config("dr-route", "dr-up", up.addr(), "500ms", "5s")).await;
    let (addr, admin) = (weir.addr(), weir.admin());
    assert_eq!(Client::h1().get(admin, "/readyz").await.status, 200);

    let in_flight: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { Client::h1_no_pool().get(addr, "/").await }))
        .collect();
    eventually(|| up.hits() == 4, Duration::from_secs(5)).await;

    let started = Instant::now();
    let drain = tokio::spawn(weir.drain(std::future::pending()));
    // Readiness goes false at once, while the admin port still answers.
    eventually_async(
        || async move { Client::h1().get(admin, "/readyz").await.status == 503 },
        Duration::from_secs(2),
    )
    .await;
    assert!(started.elapsed() < Duration::from_millis(400));
    // Within the delay weir still accepts and serves, and closes HTTP/1 connections after.
    let late = Client::h1_no_pool().get(addr, "/").await;
    assert_eq!(late.status, 200);
    assert_eq!(late.header("connection"), Some("close"));

    for r in in_flight {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "a request in flight at the drain completes");
        assert_eq!(r.header("connection"), Some("close"));
    }
    let drained = drain.await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "drain: 4 in flight at the signal and 1 during the delay; {} completed, {} cut; ended after {took:?}",
        drained.completed, drained.cut
    );
    assert!(drained.in_time, "{drained:?}");
    assert_eq!((drained.completed, drained.cut), (5, 0), "{drained:?}");
    assert!(
        took >= Duration::from_millis(500),
        "the delay was kept: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "then it ended: {took:?}");
    // Stopped: nothing accepts any more.
    assert!(Client::h1_no_pool().try_get(addr, "/").await.is_err());
}

#[tokio::test]
async fn an_http2_connection_is_closed_gracefully_after_its_stream_in_flight() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(300))
        .start()
        .await;
    let weir = Weir::start(config("dr-h2", "dr-h2-up", up.addr(), "0s", "10s")).await;
    let addr = weir.addr();
    let h2 = Client::h2();
    assert_eq!(h2.get(addr, "/warm").await.status, 200);
    let pending = {
        let h2 = h2.clone();
        tokio::spawn(async move { h2.get(addr, "/slow").await })
    };
    eventually(|| up.hits() == 2, Duration::from_secs(5)).await;
    let started = Instant::now();
    let drained = weir.drain(std::future::pending()).await;
    assert_eq!(pending.await.unwrap().status, 200);
    // The idle-after-stream HTTP/2 connection did not hold the drain to its 10 s timeout: weir
    // sent GOAWAY and the connection ended once its last stream did.
    assert!(drained.in_time, "{drained:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(drained.cut, 0);
}

#[tokio::test]
async fn a_second_signal_cuts_the_drain_and_counts_what_was_cut() {
    let up = Upstream::hang().start().await;
    let weir = Weir::start(config("dr-cut", "dr-cut-up", up.addr(), "0s", "30s")).await;
    let addr = weir.addr();
    let _stuck: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { Client::h1_no_pool().try_get(addr, "/").await }))
        .collect();
    eventually(|| up.hits() == 2, Duration::from_secs(5)).await;
    let started = Instant::now();
    let drained = weir
        .drain(tokio::time::sleep(Duration::from_millis(200)))
        .await;
    assert!(!drained.in_time);
    assert_eq!(drained.cut, 2, "{drained:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reloads_under_steady_load_fail_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    let (a, b, c) = (
        Upstream::http1().start().await,
        Upstream::http1().start().await,
        Upstream::http1().start().await,
    );
    let weir = Weir::start(Toml::one_route("rl", "one", &[a.addr()])).await;
    let file = ConfigFile::new("reload-load");
    let addr = weir.addr();
    let (stop, sent, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                let c = Client::h1();
                while !stop.load(SeqCst) {
                    sent.fetch_add(1, SeqCst);
                    match c.try_get(addr, "/").await {
                        Ok(r) if r.status == 200 => {}
                        _ => {
                            failed.fetch_add(1, SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    eventually(|| a.hits() > 50, Duration::from_secs(5)).await;

    // 1. An endpoint is added.
    let v2 = Toml::one_route("rl", "one", &[a.addr(), b.addr()]);
    weir.reload_file(file.write(v2)).unwrap();
    eventually(|| b.hits() > 50, Duration::from_secs(5)).await;
    // 2. The route becomes a split.
    let v3 = Toml::new()
        .split("rl", &[("one", 1), ("two", 1)])
        .upstream("one", &[a.addr(), b.addr()])
        .upstream("two", &[c.addr()]);
    weir.reload_file(file.write(v3)).unwrap();
    eventually(|| c.hits() > 50, Duration::from_secs(5)).await;
    // 3. An invalid config is refused, with its file:line:key, and the old one keeps serving.
    let err = weir
        .reload_file(file.write("[[routes]]\nname = \"rl\"\ntimeout = \"fast\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(":3: routes[0].timeout"), "{err}");
    let before = c.hits();
    eventually(|| c.hits() > before + 50, Duration::from_secs(5)).await;

    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    eprintln!("reload run: {sent} requests, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across three reloads"
    );
    let m = crate::support::scrape(weir.admin()).await;
    let reloads = |r: &str| m.get("weir_config_reloads_total", &[("result", r)]);
    assert_eq!(
        (reloads("success"), reloads("error")),
        (Some(2.0), Some(1.0))
    );
}

#[tokio::test]
async fn an_unchanged_upstream_keeps_its_breaker_across_a_reload() {
    let up = Upstream::http1().fail_first(5, 503).start().await;
    // Route `route` to upstream `kept`, whose breaker stays open for `open_for`.
    let config = |route: &str, open_for: &str| {
        Toml::one_route(route, "kept", &[up.addr()])
            .set("retry.max_retries", 0)
            .set("breaker.consecutive_failures", 5)
            .set("breaker.open_for", open_for)
    };
    let weir = Weir::start(config("r1", "30s")).await;
    let c = Client::h1();
    for _ in 0..5 {
        assert_eq!(c.get(weir.addr(), "/").await.status, 503);
    }
    let state = |weir_admin| async move {
        let s = crate::support::status_json(weir_admin).await;
        crate::support::status_entry(&s, "upstreams", "kept")["breaker"]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(weir.admin()).await, "open");

    // Only the route changes: the upstream keeps its open breaker.
    let file = ConfigFile::new("reload-keep");
    weir.reload_file(file.write(config("r2", "30s"))).unwrap();
    assert_eq!(state(weir.admin()).await, "open");
    let r = c.get(weir.addr(), "/").await;
    assert_eq!(r.header("x-weir-error"), Some("circuit-open"));

    // The upstream's settings change: a new stack, a closed breaker.
    weir.reload_file(file.write(config("r2", "20s"))).unwrap();
    assert_eq!(state(weir.admin()).await, "closed");
    assert_eq!(c.get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn a_config_file_replaced_by_rename_is_reloaded_by_itself() {
    let up = Upstream::http1().start().await;
    let cfg = |status: u16| {
        Toml::new()
            .respond("w-direct", status)
            .set("match.path_prefix", "/direct")
            .route("w-up", "w-up")
            .upstream("w-up", &[up.addr()])
            .to_string()
    };
    let dir = std::env::temp_dir().join(format!("weir-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("weir.toml");
    std::fs::write(&file, cfg(201)).unwrap();
    let weir = Weir::start(&cfg(201)).await;
    weir.watch(&file);
    let addr = weir.addr();
    assert_eq!(Client::h1().get(addr, "/direct").await.status, 201);

    // Saved as editors and ConfigMaps do: a new file renamed over the old one.
    let next = dir.join(".weir.toml.new");
    std::fs::write(&next, cfg(202)).unwrap();
    std::fs::rename(&next, &file).unwrap();
    eventually_async(
        || async move { Client::h1().get(addr, "/direct").await.status == 202 },
        Duration::from_secs(5),
    )
    .await;
    // A broken save is refused; the running config stays.
    std::fs::write(&next, "[[routes]]\nname = 3\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    let admin = weir.admin();
    eventually_async(
        || async move {
            crate::support::scrape(admin)
                .await
                .get("weir_config_reloads_total", &[("result", "error")])
                == Some(1.0)
        },
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(Client::h1().get(addr, "/direct").await.status, 202);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An address on 127.0.0.1 that was free a moment ago (for a listener to move to).
#[allow(clippy::unwrap_used)] // a helper of tests: failing to bind fails the test
fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// One listener `name` at `listen`, with one route to `up`.
fn listener_config(name: &str, listen: &str, route: &str, up: SocketAddr) -> Toml {
    Toml::one_route(route, &format!("{route}-up"), &[up])
        .listener(name)
        .set("listen", listen)
}

#[tokio::test]
async fn a_reload_that_moves_a_listener_serves_the_new_address_and_retires_the_old() {
    let up = Upstream::http1()
        .route_delay("/slow", Duration::from_millis(500))
        .start()
        .await;
    let weir = Weir::start_unpinned(listener_config("mv", "127.0.0.1:0", "mv", up.addr())).await;
    let old = weir.listener("mv");
    let slow = tokio::spawn(async move { Client::h1_no_pool().get(old, "/slow").await });
    eventually(|| up.hits() == 1, Duration::from_secs(5)).await;

    let new = free_addr();
    weir.reload(listener_config("mv", &new.to_string(), "mv", up.addr()))
        .unwrap();
    assert_eq!(weir.listener("mv"), new);
    assert_eq!(Client::h1_no_pool().get(new, "/").await.status, 200);
    eventually_async(
        || async move { tokio::net::TcpStream::connect(old).await.is_err() },
        Duration::from_secs(5),
    )
    .await;
    let r = slow.await.unwrap();
    assert_eq!(
        r.status, 200,
        "the request in flight on the old socket completed"
    );
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn a_reload_that_keeps_a_listener_address_keeps_its_socket_and_connections() {
    let respond = |listen: &str, status: u16, max_body: u32| {
        Toml::new()
            .respond("same", status)
            .listener("same")
            .set("listen", listen)
            .set("max_body_bytes", max_body)
    };
    let weir = Weir::start_unpinned(respond("127.0.0.1:0", 201, 0)).await;
    let addr = weir.listener("same");
    let mut conn = crate::support::client::Conn::h1(addr).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, 201);

    // Reloaded with the address it is bound to: the same socket, a new generation, and new
    // limits for the connections accepted from now on.
    weir.reload(respond(&addr.to_string(), 202, 16)).unwrap();
    assert_eq!(weir.listener("same"), addr);
    assert_eq!(
        conn.get("/").await.unwrap().status,
        202,
        "the same connection"
    );
    let big = vec![b'x'; 100];
    let r = conn
        .send(http::Method::POST, "/", big.clone())
        .await
        .unwrap();
    assert_eq!(
        r.status, 202,
        "an open connection keeps the limits it was accepted with"
    );
    let mut fresh = crate::support::client::Conn::h1(addr).await.unwrap();
    let r = fresh.send(http::Method::POST, "/", big).await.unwrap();
    assert_eq!(r.status, 413, "a new connection gets the new limit");

    // Reloaded with the configured address (port 0): the same socket too.
    weir.reload(respond("127.0.0.1:0", 203, 16)).unwrap();
    assert_eq!(weir.listener("same"), addr);
    assert_eq!(conn.get("/").await.unwrap().status, 203);
    assert_eq!(fresh.get("/").await.unwrap().status, 203);
}

#[tokio::test]
async fn a_reload_whose_new_address_is_taken_is_refused_and_the_old_listener_serves_on() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let respond = |listen: &str, status: u16| {
        Toml::new()
            .respond("busy", status)
            .listener("busy")
            .set("listen", listen)
    };
    let weir = Weir::start_unpinned(respond("127.0.0.1:0", 201)).await;
    let addr = weir.listener("busy");
    let err = weir
        .reload(respond(&taken_addr.to_string(), 202))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "listeners[0].listen (listener busy): cannot listen on {taken_addr}"
        )),
        "{err}"
    );
    // Nothing changed: the old socket, the old routes.
    assert_eq!(weir.listener("busy"), addr);
    assert_eq!(Client::h1_no_pool().get(addr, "/").await.status, 201);
    let m = crate::support::scrape(weir.admin()).await;
    assert_eq!(
        m.get("weir_config_reloads_total", &[("result", "error")]),
        Some(1.0)
    );
    drop(taken);
}

#[tokio::test]
async fn a_reload_stops_a_removed_listener_and_starts_a_new_one() {
    let up = Upstream::http1().start().await;
    let weir =
        Weir::start_unpinned(listener_config("gone", "127.0.0.1:0", "swap", up.addr())).await;
    let gone = weir.listener("gone");
    assert_eq!(Client::h1_no_pool().get(gone, "/").await.status, 200);

    let fresh = free_addr();
    weir.reload(listener_config(
        "fresh",
        &fresh.to_string(),
        "swap",
        up.addr(),
    ))
    .unwrap();
    assert_eq!(weir.listener("fresh"), fresh);
    assert_eq!(Client::h1_no_pool().get(fresh, "/").await.status, 200);
    eventually_async(
        || async move { tokio::net::TcpStream::connect(gone).await.is_err() },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn a_listener_renamed_at_the_same_address_keeps_its_socket() {
    let respond = |name: &str, listen: &str, status: u16| {
        Toml::new()
            .respond("renamed", status)
            .listener(name)
            .set("listen", listen)
    };
    let weir = Weir::start_unpinned(respond("before", "127.0.0.1:0", 201)).await;
    let addr = weir.listener("before");
    let mut conn = crate::support::client::Conn::h1(addr).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, 201);
    weir.reload(respond("after", &addr.to_string(), 202))
        .unwrap();
    assert_eq!(weir.listener("after"), addr);
    assert_eq!(
        conn.get("/").await.unwrap().status,
        202,
        "the same connection"
    );
    assert_eq!(Client::h1_no_pool().get(addr, "/").await.status, 202);
}

#[tokio::test]
async fn a_drain_sends_http2_goaway_refusing_new_streams_while_the_one_in_flight_completes() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(1500))
        .start()
        .await;
    let weir = Weir::start(config("dr-goaway", "dr-goaway-up", up.addr(), "0s", "10s")).await;
    let uri = format!("http://{}/slow", weir.addr());
    // A raw HTTP/2 connection (h2c prior knowledge), so the frames weir sends are seen as such.
    let tcp = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::get(&uri).body(()).unwrap();
    let (in_flight, _) = send.send_request(request, true).unwrap();
    let in_flight = tokio::spawn(in_flight);
    eventually(|| up.hits() == 1, Duration::from_secs(5)).await;

    let drain = tokio::spawn(weir.drain(std::future::pending()));
    // h2 refuses new streams on this connection only once a GOAWAY frame from weir has been
    // read (`ready` then fails with that GOAWAY: `is_go_away`, `is_remote`, its reason). Were
    // weir to send none, `ready` would keep succeeding and this wait would time out; were it
    // to drop the connection instead, the error would be an I/O one, not a GOAWAY.
    eventually_async(
        || {
            let send = send.clone();
            async move { send.ready().await.is_err() }
        },
        Duration::from_secs(3),
    )
    .await;
    let goaway = send.clone().ready().await.unwrap_err();
    assert!(goaway.is_go_away(), "{goaway:?}");
    assert!(goaway.is_remote(), "{goaway:?}");
    assert_eq!(goaway.reason(), Some(h2::Reason::NO_ERROR), "{goaway:?}");
    assert!(
        !in_flight.is_finished(),
        "the GOAWAY came while the stream was still in flight"
    );
    let request = http::Request::get(&uri).body(()).unwrap();
    let refused = send.send_request(request, true).unwrap_err();
    assert!(refused.is_go_away(), "a new stream is refused: {refused:?}");

    // The stream in flight (id 1, at or below the GOAWAY's last stream id) completes.
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.unwrap().len());
    }
    // Then weir closes the connection, and the drain ends in time with nothing cut.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("weir closes the connection after its last stream")
        .unwrap();
    assert!(
        closed
            .as_ref()
            .map_or_else(|e| e.reason() == Some(h2::Reason::NO_ERROR), |()| true),
        "{closed:?}"
    );
    let drained = drain.await.unwrap();
    assert!(drained.in_time, "{drained:?}");
    assert_eq!((drained.completed, drained.cut), (1, 0), "{drained:?}");
    assert_eq!(
        up.hits(),
        1,
        "the refused stream never reached the upstream"
    );
}

/// A reload that builds a generation and then refuses it (its last upstream's TLS files do not
/// exist) starts none of the background tasks of the upstreams it built first: the runtime has
/// exactly as many tasks as before, and the health-checked endpoint never sees a connection.
/// The same upstreams in a reload that is accepted start their tasks and checks.
#[tokio::test]
async fn a_refused_reload_starts_no_task_and_opens_no_socket() {
    let up = Upstream::http1().start().await;
    let weir = Weir::start(Toml::one_route("rr-route", "rr-up", &[up.addr()])).await;
    let accepted = Toml::one_route("rr-route", "rr-up", &[up.addr()])
        .upstream("rr-checked", &[up.addr()])
        .set("health.interval", "10ms")
        .table("upstreams.rr-found")
        .set("dns", "rr.test:80")
        .set("dns_servers", vec!["127.0.0.1:9"]);
    let refused = accepted
        .clone()
        .upstream("rr-broken", &["127.0.0.1:9".parse().unwrap()])
        .set("tls.ca", "/nonexistent/weir-test-ca.pem");
    let runtime = tokio::runtime::Handle::current();
    let before = runtime.metrics().num_alive_tasks();
    // On this test's one-thread runtime no other task runs between the two counts.
    assert!(weir.reload(refused).is_err(), "the reload is refused");
    let after = runtime.metrics().num_alive_tasks();
    assert_eq!(after, before, "no task started");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.connections(), 0, "no health check was sent");

    // Accepted: the checks start (and can be seen), so the counts above can fail.
    weir.reload(accepted).expect("the reload is accepted");
    let after = runtime.metrics().num_alive_tasks();
    assert!(after > before, "tasks started");
    eventually(|| up.connections() > 0, Duration::from_secs(5)).await;
}
