//! Drain: readiness flips first, weir keeps serving for `drain.delay`, requests in flight
//! finish (HTTP/1 told `Connection: close`, HTTP/2 closed gracefully), a second signal cuts.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::weir::{Weir, one_route};
use crate::support::{Client, Upstream, eventually, eventually_async};

fn config(route: &str, upstream: &str, addr: std::net::SocketAddr, drain: &str) -> String {
    format!(
        "[drain]\n{drain}\n\n{}",
        one_route(route, upstream, &[addr], "")
    )
}

#[tokio::test]
async fn a_drain_flips_readiness_keeps_serving_for_the_delay_and_completes_requests_in_flight() {
    let up = Upstream::http1()
        .delay(Duration::from_millis(400))
        .start()
        .await;
    let weir = Weir::start(&config(
        "dr-route",
        "dr-up",
        up.addr(),
        "delay = \"500ms\"\ntimeout = \"5s\"",
    ))
    .await;
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
    let weir = Weir::start(&config(
        "dr-h2",
        "dr-h2-up",
        up.addr(),
        "delay = \"0s\"\ntimeout = \"10s\"",
    ))
    .await;
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
    let weir = Weir::start(&config(
        "dr-cut",
        "dr-cut-up",
        up.addr(),
        "delay = \"0s\"\ntimeout = \"30s\"",
    ))
    .await;
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
