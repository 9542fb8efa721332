//! TLS from weir to its upstreams: verification against `ca`, SNI, ALPN (HTTP/2 or HTTP/1.1),
//! client certificates (mTLS), `upstream-tls` failures, and TLS files that cannot be loaded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Version;

use crate::support::certs::TestCa;
use crate::support::upstream::Handshake;
use crate::support::{Client, RunningUpstream, Toml, Upstream, Weir, eventually};

const SECS: Duration = Duration::from_secs(5);

/// Adds a route `route` (every path) to upstream `upstream` at `addr` over TLS verified
/// against `ca`, sending `sni` when given; keys set next go to the upstream (`protocol`, ...).
fn tls_route(
    cfg: Toml,
    route: &str,
    upstream: &str,
    addr: SocketAddr,
    ca: &Path,
    sni: Option<&str>,
) -> Toml {
    tls_upstream(cfg.route(route, upstream), upstream, addr, ca, sni)
}

/// Adds upstream `upstream` at `addr` over TLS verified against `ca`, sending `sni` when
/// given; keys set next go to it (`tls.cert`, `protocol`, ...).
fn tls_upstream(cfg: Toml, upstream: &str, addr: SocketAddr, ca: &Path, sni: Option<&str>) -> Toml {
    let cfg = cfg.upstream(upstream, &[addr]).path("tls.ca", ca);
    match sni {
        Some(sni) => cfg.set("tls.sni", sni),
        None => cfg,
    }
}

/// Adds a route on `/good` to a healthy plain upstream: shows weir still serves.
fn good_route(cfg: Toml, route: &str, upstream: &str, addr: SocketAddr) -> Toml {
    cfg.route(route, upstream)
        .set("match.path_prefix", "/good")
        .upstream(upstream, &[addr])
}

fn handshake(sni: Option<&str>, alpn: Option<&str>, client_cert: bool) -> Handshake {
    Handshake {
        sni: sni.map(str::to_owned),
        alpn: alpn.map(str::to_owned),
        client_cert,
    }
}

/// Waits until `up` has counted a failed handshake.
async fn refused_by(up: &RunningUpstream) {
    eventually(|| up.tls_failures() >= 1, SECS).await;
}

#[tokio::test]
async fn http1_over_tls_verifies_against_ca_sends_sni_and_reuses_the_connection() {
    let ca = TestCa::new("tls-up-h1");
    let leaf = ca.server("backend", &["backend.test"]);
    let up = Upstream::http1()
        .tls(&leaf.cert, &leaf.key)
        .alpn(&["http/1.1"])
        .route("/hello", 200, "over tls")
        .start()
        .await;
    let cfg = tls_route(
        Toml::new(),
        "tu-h1",
        "tu-h1-up",
        up.addr(),
        &ca.ca_path(),
        Some("backend.test"),
    );
    let weir = Weir::start(cfg).await;

    let c = Client::h1();
    for _ in 0..3 {
        let r = c.get(weir.addr(), "/hello").await;
        assert_eq!(r.status, 200, "{:?}", r.header("x-weir-error"));
        assert_eq!(r.text(), "over tls");
    }
    assert_eq!(up.hits(), 3);
    let seen = up.last_request();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri.path(), "/hello");
    assert_eq!(
        up.handshakes(),
        [handshake(Some("backend.test"), Some("http/1.1"), false)],
        "one handshake with the configured SNI: the pooled TLS connection is reused"
    );
}

#[tokio::test]
async fn an_ip_endpoint_is_verified_against_its_ip_and_sent_no_sni() {
    let ca = TestCa::new("tls-up-ip");
    let leaf = ca.server("ip", &["127.0.0.1"]);
    let up = Upstream::http1().tls(&leaf.cert, &leaf.key).start().await;
    let cfg = tls_route(
        Toml::new(),
        "tu-ip",
        "tu-ip-up",
        up.addr(),
        &ca.ca_path(),
        None,
    );
    let weir = Weir::start(cfg).await;

    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(r.status, 200, "{:?}", r.header("x-weir-error"));
    assert_eq!(up.hits(), 1);
    assert_eq!(up.handshakes(), [handshake(None, None, false)]);
}

#[tokio::test]
async fn protocol_http2_takes_what_alpn_chooses() {
    let ca = TestCa::new("tls-up-alpn");
    let leaf = ca.server("backend", &["backend.test"]);
    // An upstream offering h2 gets HTTP/2; one offering only http/1.1 gets HTTP/1.1.
    for (offered, version) in [
        (&["h2", "http/1.1"][..], Version::HTTP_2),
        (&["http/1.1"][..], Version::HTTP_11),
    ] {
        let up = Upstream::auto()
            .tls(&leaf.cert, &leaf.key)
            .alpn(offered)
            .route("/v", 200, "chosen")
            .start()
            .await;
        let cfg = tls_route(
            Toml::new(),
            "tu-alpn",
            "tu-alpn-up",
            up.addr(),
            &ca.ca_path(),
            Some("backend.test"),
        )
        .set("protocol", "http2");
        let weir = Weir::start(cfg).await;
        for c in [Client::h1(), Client::h2()] {
            let r = c.get(weir.addr(), "/v").await;
            assert_eq!(r.status, 200, "{offered:?}: {:?}", r.header("x-weir-error"));
            assert_eq!(r.text(), "chosen");
            assert_eq!(up.last_request().version, version, "{offered:?}");
        }
        let alpn = if version == Version::HTTP_2 {
            "h2"
        } else {
            "http/1.1"
        };
        let handshakes = up.handshakes();
        assert!(!handshakes.is_empty());
        assert!(
            handshakes
                .iter()
                .all(|h| *h == handshake(Some("backend.test"), Some(alpn), false)),
            "{handshakes:?}"
        );
        weir.stop().await;
    }
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_answers_502_upstream_tls_and_weir_keeps_serving() {
    let ca = TestCa::new("tls-up-trust");
    let other = TestCa::new("tls-up-other");
    let foreign = other.server("foreign", &["backend.test"]);
    let named = ca.server("named", &["backend.test"]);
    let plain = Upstream::http1().route("/good", 200, "fine").start().await;
    // (case, upstream certificate, sni): signed by another CA; signed by ours for another name.
    let cases = [
        ("foreign-ca", &foreign, "backend.test"),
        ("wrong-name", &named, "elsewhere.test"),
    ];
    for (case, leaf, sni) in cases {
        for protocol in ["http1", "http2"] {
            let up = Upstream::auto().tls(&leaf.cert, &leaf.key).start().await;
            let route = format!("tu-bad-{case}-{protocol}");
            let upstream = format!("{route}-up");
            let cfg = good_route(
                Toml::new(),
                &format!("{route}-good"),
                &format!("{route}-good-up"),
                plain.addr(),
            );
            let cfg = tls_route(cfg, &route, &upstream, up.addr(), &ca.ca_path(), Some(sni))
                .set("protocol", protocol);
            let weir = Weir::start(cfg).await;
            let c = Client::h1();
            for _ in 0..2 {
                let r = c.get(weir.addr(), "/").await;
                assert_eq!(r.status, 502, "{case} {protocol}");
                assert_eq!(
                    r.header("x-weir-error"),
                    Some("upstream-tls"),
                    "{case} {protocol}"
                );
                let good = c.get(weir.addr(), "/good").await;
                assert_eq!(good.status, 200, "{case} {protocol}: weir keeps serving");
                assert_eq!(good.text(), "fine");
            }
            refused_by(&up).await;
            assert_eq!(up.hits(), 0, "{case} {protocol}: no request reached it");
            assert!(up.handshakes().is_empty(), "{case} {protocol}");
            // A certificate fault is not retried: one handshake per request.
            assert_eq!(up.tls_failures(), 2, "{case} {protocol}");
            weir.stop().await;
        }
    }
}

#[tokio::test]
async fn an_upstream_requiring_mtls_gets_the_configured_client_certificate() {
    let ca = TestCa::new("tls-up-mtls");
    let leaf = ca.server("backend", &["backend.test"]);
    let client = ca.client("weir-client", "weir");
    for protocol in ["http1", "http2"] {
        let up = Upstream::auto()
            .tls(&leaf.cert, &leaf.key)
            .client_ca(&ca.ca_path())
            .alpn(&["h2", "http/1.1"])
            .start()
            .await;
        let (with_cert, without) = (
            format!("tu-mtls-{protocol}"),
            format!("tu-nomtls-{protocol}"),
        );
        let sni = Some("backend.test");
        let cfg = Toml::new()
            .route(&with_cert, &format!("{with_cert}-up"))
            .set("match.path_prefix", "/cert");
        let cfg = tls_upstream(
            cfg,
            &format!("{with_cert}-up"),
            up.addr(),
            &ca.ca_path(),
            sni,
        )
        .path("tls.cert", &client.cert)
        .path("tls.key", &client.key)
        .set("protocol", protocol);
        let cfg = tls_route(
            cfg,
            &without,
            &format!("{without}-up"),
            up.addr(),
            &ca.ca_path(),
            sni,
        )
        .set("protocol", protocol);
        let weir = Weir::start(cfg).await;
        let c = Client::h1();

        let r = c.get(weir.addr(), "/cert").await;
        assert_eq!(r.status, 200, "{protocol}: {:?}", r.header("x-weir-error"));
        assert_eq!(up.hits(), 1);
        assert!(
            up.handshakes().iter().all(|h| h.client_cert),
            "{protocol}: {:?}",
            up.handshakes()
        );

        let r = c.get(weir.addr(), "/no-cert").await;
        assert_eq!(r.status, 502, "{protocol}");
        assert_eq!(r.header("x-weir-error"), Some("upstream-tls"), "{protocol}");
        refused_by(&up).await;
        assert_eq!(
            up.hits(),
            1,
            "{protocol}: the refused request never arrived"
        );

        // The route with the certificate still works.
        assert_eq!(c.get(weir.addr(), "/cert").await.status, 200, "{protocol}");
        assert_eq!(up.hits(), 2);
        weir.stop().await;
    }
}

#[tokio::test]
async fn a_missing_ca_file_stops_start_and_reload_naming_the_file() {
    let ca = TestCa::new("tls-up-missing");
    let missing = ca.dir().join("no-such-ca.pem");
    let up = Upstream::http1().start().await;
    let cfg = tls_route(
        Toml::new(),
        "tu-missing",
        "tu-missing-up",
        up.addr(),
        &missing,
        None,
    )
    .to_string();

    let config = weir::Config::from_toml(&cfg, "test.toml").unwrap();
    let err = weir::App::start(config).await.unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("upstreams.tu-missing-up.tls"), "{err}");

    // On reload the same config is refused and the running one keeps serving.
    let weir = Weir::start(Toml::one_route("tu-missing", "tu-missing-up", &[up.addr()])).await;
    let file = ca.dir().join("weir.toml");
    std::fs::write(&file, &cfg).unwrap();
    let err = weir.reload_file(&file).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    let r = Client::h1().get(weir.addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn tcp_failures_stay_upstream_connect_and_the_handshake_is_bounded_by_connect_timeout() {
    let ca = TestCa::new("tls-up-connect");
    // Nothing listens here: connection refused.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    // Accepts TCP and never answers the ClientHello.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = mute.accept().await {
            held.push(stream);
        }
    });
    for protocol in ["http1", "http2"] {
        for (case, addr) in [("refused", closed), ("mute", mute_addr)] {
            let route = format!("tu-conn-{case}-{protocol}");
            let cfg = tls_route(
                Toml::new(),
                &route,
                &format!("{route}-up"),
                addr,
                &ca.ca_path(),
                Some("backend.test"),
            )
            .set("protocol", protocol)
            .set("connect_timeout", "200ms");
            let weir = Weir::start(cfg).await;
            let started = tokio::time::Instant::now();
            let r = Client::h1().get(weir.addr(), "/").await;
            assert_eq!(r.status, 502, "{case} {protocol}");
            assert_eq!(
                r.header("x-weir-error"),
                Some("upstream-connect"),
                "{case} {protocol}"
            );
            // Three tries (two retries) of at most 200 ms each, plus backoff.
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{case} {protocol}: {:?}",
                started.elapsed()
            );
            weir.stop().await;
        }
    }
    holder.abort();
}
