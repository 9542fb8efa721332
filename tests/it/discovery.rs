//! DNS discovery against a real (test) DNS server: the hickory resolver over `dns_servers`,
//! `resolve_once`, and the discovery loop following answers that change and fail.

// The helpers below are test code too: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use tokio_util::sync::CancellationToken;
use weir::internals::discovery::{self, HickoryResolver, ResolveError, resolve_once};
use weir::internals::metrics::{DNS_RESOLUTIONS_TOTAL, Metrics};

use crate::support::dns::DnsServer;
use crate::support::{Scrape, eventually};

const SECS: Duration = Duration::from_secs(5);

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn auths(list: &[&str]) -> Vec<Authority> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn answers_that_change_are_seen_at_the_next_resolution() {
    let dns = DnsServer::start().await;
    // A long TTL: the change must still be seen at once, since the resolver keeps no cache.
    dns.set_ttl(300);
    dns.set("api.weir.test", vec![v4(2), v4(1), v4(2)]);
    let resolver = HickoryResolver::with_servers(&[dns.addr()]).unwrap();
    let target = Authority::from_static("api.weir.test:8080");

    let first = resolve_once(&resolver, &target).await.unwrap();
    assert_eq!(first, auths(&["10.0.0.1:8080", "10.0.0.2:8080"]));
    let asked = dns.queries();
    assert!(asked >= 1);

    dns.set("API.weir.test.", vec![v4(3)]);
    let second = resolve_once(&resolver, &target).await.unwrap();
    assert_eq!(second, auths(&["10.0.0.3:8080"]));
    assert!(
        dns.queries() > asked,
        "the second resolution asked the server"
    );
    assert_eq!(dns.tcp_queries(), 0, "plain answers come over UDP");
}

#[tokio::test]
async fn servfail_is_an_error_that_names_the_host() {
    let dns = DnsServer::start().await;
    dns.set("flaky.weir.test", vec![v4(1)]);
    dns.fail(true);
    let resolver = HickoryResolver::with_servers(&[dns.addr()]).unwrap();
    let target = Authority::from_static("flaky.weir.test:80");

    let err = resolve_once(&resolver, &target).await.unwrap_err();
    assert!(matches!(err, ResolveError::Lookup { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("cannot resolve flaky.weir.test: "),
        "{err}"
    );
    assert!(dns.queries() >= 1);

    dns.fail(false);
    let got = resolve_once(&resolver, &target).await.unwrap();
    assert_eq!(got, auths(&["10.0.0.1:80"]), "a failure is not remembered");
}

#[tokio::test]
async fn an_unknown_name_or_one_without_address_is_an_error() {
    let dns = DnsServer::start().await;
    let resolver = HickoryResolver::with_servers(&[dns.addr()]).unwrap();

    let err = resolve_once(&resolver, &Authority::from_static("nope.weir.test:80"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope.weir.test"), "{err}");

    dns.set("empty.weir.test", vec![]);
    let err = resolve_once(&resolver, &Authority::from_static("empty.weir.test:80"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty.weir.test"), "{err}");
}

#[tokio::test]
async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let dns = DnsServer::start().await;
    dns.set("big.weir.test", vec![v4(7)]);
    dns.truncate_udp(true);
    let resolver = HickoryResolver::with_servers(&[dns.addr()]).unwrap();

    let got = resolve_once(&resolver, &Authority::from_static("big.weir.test:80"))
        .await
        .unwrap();
    assert_eq!(got, auths(&["10.0.0.7:80"]));
    assert!(dns.udp_queries() >= 1);
    assert!(dns.tcp_queries() >= 1);
}

#[tokio::test]
async fn the_loop_follows_the_server_and_keeps_the_last_set_through_failures() {
    let dns = DnsServer::start().await;
    dns.set("loop.weir.test", vec![v4(1), v4(2)]);
    let resolver = Arc::new(HickoryResolver::with_servers(&[dns.addr()]).unwrap());
    let metrics = Metrics::new().unwrap();
    let cancel = CancellationToken::new();
    let published: Arc<Mutex<Vec<Vec<Authority>>>> = Arc::default();
    let sink = published.clone();
    let task = tokio::spawn(discovery::run(
        "dns_loop".into(),
        Authority::from_static("loop.weir.test:9000"),
        Duration::from_millis(50),
        resolver,
        metrics.clone(),
        cancel.clone(),
        move |addrs| {
            sink.lock().unwrap().push(addrs);
            true
        },
    ));
    let last = || published.lock().unwrap().last().cloned();
    let count = |result: &str| {
        Scrape::parse(&metrics.render())
            .get(
                DNS_RESOLUTIONS_TOTAL,
                &[("upstream", "dns_loop"), ("result", result)],
            )
            .unwrap_or(0.0)
    };

    let first = auths(&["10.0.0.1:9000", "10.0.0.2:9000"]);
    eventually(|| last() == Some(first.clone()), SECS).await;

    dns.set("loop.weir.test", vec![v4(3)]);
    let second = auths(&["10.0.0.3:9000"]);
    eventually(|| last() == Some(second.clone()), SECS).await;

    dns.fail(true);
    let published_before = published.lock().unwrap().len();
    let errors_before = count("error");
    eventually(|| count("error") >= errors_before + 3.0, SECS).await;
    // Nothing was published while the server failed: the last good set stays.
    let during = published.lock().unwrap()[published_before..].to_vec();
    assert!(during.iter().all(|a| *a == second), "{during:?}");

    dns.fail(false);
    dns.set("loop.weir.test", vec![v4(4)]);
    let third = auths(&["10.0.0.4:9000"]);
    eventually(|| last() == Some(third.clone()), SECS).await;
    assert!(count("ok") >= 3.0);

    cancel.cancel();
    tokio::time::timeout(SECS, task).await.unwrap().unwrap();
}
