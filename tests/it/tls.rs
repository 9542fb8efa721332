//! Listener TLS: HTTP/1.1 and HTTP/2 by ALPN, protocol versions and cipher suites, mTLS,
//! certificate reload from the files, TLS settings applied by a config reload, start errors.

// Helpers of tests: a failure in them fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Version;
use rustls::{CipherSuite, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::certs::{Leaf, TestCa};
use crate::support::client::{Conn, TlsClient, der_cert};
use crate::support::{Client, Toml, Upstream, Weir, eventually_async, scrape};

/// `routes` behind a TLS listener `main` serving `leaf` (with `client_ca` for mTLS); keys set
/// next go to the listener.
fn tls_config(leaf: &Leaf, client_ca: Option<&Path>, routes: Toml) -> Toml {
    let cfg = routes
        .listener("main")
        .path("tls.cert", &leaf.cert)
        .path("tls.key", &leaf.key);
    match client_ca {
        Some(ca) => cfg.path("tls.client_ca", ca),
        None => cfg,
    }
}

/// Writes `contents` next to `path`, then renames it over `path`, as a deploy tool would.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn alpn_picks_http2_or_http11_and_the_upstream_sees_https() {
    let ca = TestCa::new("tls-alpn");
    let leaf = ca.server("server", &["localhost"]);
    let up = Upstream::http1()
        .route("/hello", 200, "hello")
        .start()
        .await;
    let weir = Weir::start(tls_config(
        &leaf,
        None,
        Toml::one_route("tls-alpn", "tls-alpn-up", &[up.addr()]),
    ))
    .await;
    let addr = weir.addr();

    let h1 = TlsClient::builder(&[&ca.cert_pem])
        .alpn(&["http/1.1"])
        .build();
    let mut conn = h1.connect(addr).await.unwrap();
    let tls = conn.tls.clone().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(tls.version, ProtocolVersion::TLSv1_3);
    assert_eq!(tls.peer_cert, der_cert(&leaf.cert_pem).to_vec());
    for _ in 0..2 {
        let r = conn.get("/hello").await.unwrap();
        assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_11));
        assert_eq!(r.text(), "hello");
    }
    let seen = up.last_request();
    assert_eq!(
        seen.headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok()),
        Some("https")
    );

    // The client prefers http/1.1; weir's order (h2 first) wins.
    let h2 = TlsClient::builder(&[&ca.cert_pem])
        .alpn(&["http/1.1", "h2"])
        .build();
    let mut conn = h2.connect(addr).await.unwrap();
    assert_eq!(conn.tls.as_ref().unwrap().alpn.as_deref(), Some("h2"));
    let r = conn.get("/hello").await.unwrap();
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_2));
    assert_eq!(r.text(), "hello");
    assert_eq!(up.hits(), 3);
    assert_eq!(
        up.last_request()
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok()),
        Some("https")
    );

    // No ALPN at all: HTTP/1.1.
    let none = TlsClient::builder(&[&ca.cert_pem]).alpn(&[]).build();
    let mut conn = none.connect(addr).await.unwrap();
    assert_eq!(conn.tls.as_ref().unwrap().alpn, None);
    assert_eq!(conn.get("/hello").await.unwrap().status, 200);

    // Plain HTTP on the TLS port is not served.
    assert!(Client::h1_no_pool().try_get(addr, "/hello").await.is_err());
    assert_eq!(up.hits(), 4);
}

#[tokio::test]
async fn tls12_is_served_and_older_versions_and_other_suites_are_refused() {
    let ca = TestCa::new("tls-versions");
    let leaf = ca.server("server", &["localhost"]);
    let weir = Weir::start(tls_config(
        &leaf,
        None,
        Toml::new().respond("tls-versions", 204),
    ))
    .await;
    let addr = weir.addr();

    let tls12 = TlsClient::builder(&[&ca.cert_pem]).tls12_only().build();
    let mut conn = tls12.connect(addr).await.unwrap();
    let info = conn.tls.clone().unwrap();
    assert_eq!(info.version, ProtocolVersion::TLSv1_2);
    // The test certificate is ECDSA P-256, and the client's preference picks among the
    // intermediate suites (Mozilla's "server preference: no").
    let ecdsa_aead = [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    assert!(ecdsa_aead.contains(&info.suite), "{:?}", info.suite);
    assert_eq!(conn.get("/").await.unwrap().status, 204);

    // SSL 3.0, TLS 1.0 and TLS 1.1 ClientHellos (no supported_versions extension) get a
    // protocol_version alert.
    for version in [0x0300, 0x0301, 0x0302] {
        let alert = raw_exchange(addr, &client_hello(version, &[0xc0, 0x13, 0x00, 0x2f])).await;
        assert_eq!(alert.first(), Some(&0x15), "an alert record: {alert:?}");
        assert_eq!(alert.get(6), Some(&70), "protocol_version: {alert:?}");
    }

    // A client offering only a CBC suite, outside the list, is refused at the handshake.
    let cbc = TlsClient::builder(&[&ca.cert_pem])
        .tls12_only()
        .suites(vec![cbc_suite()])
        .build();
    let err = cbc.connect(addr).await.err().expect("no common suite");
    assert!(format!("{err:?}").contains("HandshakeFailure"), "{err:?}");
}

#[tokio::test]
async fn mtls_accepts_a_client_certificate_from_its_ca_and_refuses_the_others() {
    let ca = TestCa::new("mtls");
    let leaf = ca.server("server", &["localhost"]);
    let alice = ca.client("alice", "alice");
    let other = TestCa::new("mtls-other");
    let mallory = other.client("mallory", "mallory");
    let up = Upstream::http1().start().await;
    let weir = Weir::start(tls_config(
        &leaf,
        Some(&ca.ca_path()),
        Toml::one_route("mtls", "mtls-up", &[up.addr()]),
    ))
    .await;
    let addr = weir.addr();

    let ok = TlsClient::builder(&[&ca.cert_pem])
        .identity(&alice.cert_pem, &alice.key_pem)
        .build();
    assert_eq!(ok.get(addr, "/").await.unwrap().status, 200);
    assert_eq!(up.hits(), 1);

    // TLS 1.3: the client finishes its side, then reads weir's alert instead of a response.
    let anonymous = TlsClient::builder(&[&ca.cert_pem]).build();
    let err = anonymous.get(addr, "/").await.expect_err("refused");
    assert!(
        format!("{err:?}").contains("CertificateRequired"),
        "{err:?}"
    );
    // TLS 1.2: the handshake itself fails.
    let anonymous12 = TlsClient::builder(&[&ca.cert_pem]).tls12_only().build();
    assert!(anonymous12.connect(addr).await.is_err());

    let stranger = TlsClient::builder(&[&ca.cert_pem])
        .identity(&mallory.cert_pem, &mallory.key_pem)
        .build();
    let err = stranger.get(addr, "/").await.expect_err("refused");
    assert!(format!("{err:?}").contains("UnknownCA"), "{err:?}");
    assert_eq!(up.hits(), 1, "no refused client got a request through");

    // The refused handshakes did not disturb the listener.
    assert_eq!(ok.get(addr, "/").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_and_open_ones_keep_working() {
    let ca_a = TestCa::new("reload-a");
    let ca_b = TestCa::new("reload-b");
    let a = ca_a.server("server", &["localhost"]);
    let b = ca_b.server("server", &["localhost"]);
    let routes = Toml::new()
        .respond("cert-reload", 200)
        .set("respond.body", "hi");
    let weir = Weir::start(tls_config(&a, None, routes)).await;
    let addr = weir.addr();
    let client = TlsClient::builder(&[&ca_a.cert_pem, &ca_b.cert_pem])
        .alpn(&["http/1.1"])
        .build();
    let (a_der, b_der) = (
        der_cert(&a.cert_pem).to_vec(),
        der_cert(&b.cert_pem).to_vec(),
    );
    let mut open = client.connect(addr).await.unwrap();
    assert_eq!(open.tls.as_ref().unwrap().peer_cert, a_der);
    assert_eq!(open.get("/").await.unwrap().text(), "hi");

    // A broken certificate file is not used: new handshakes still get A.
    replace(
        &a.cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    let fresh = client.connect(addr).await.unwrap();
    assert_eq!(fresh.tls.as_ref().unwrap().peer_cert, a_der);

    // B, from another CA, replaces A: key first, then the certificate.
    replace(&a.key, &b.key_pem);
    replace(&a.cert, &b.cert_pem);
    eventually_async(
        || {
            let (client, b_der) = (client.clone(), b_der.clone());
            async move {
                let conn = client.connect(addr).await.unwrap();
                conn.tls.unwrap().peer_cert == b_der
            }
        },
        Duration::from_secs(10),
    )
    .await;
    let mut after = client.connect(addr).await.unwrap();
    assert_eq!(after.get("/").await.unwrap().text(), "hi");
    // A client that trusts only A's CA is now refused.
    let only_a = TlsClient::builder(&[&ca_a.cert_pem]).build();
    assert!(only_a.connect(addr).await.is_err());

    // The connection opened before the swap still works.
    let r = open.get("/").await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hi"));
}

#[tokio::test]
async fn a_config_reload_turns_tls_on_for_new_connections_and_keeps_open_ones() {
    let ca = TestCa::new("reload-on");
    let leaf = ca.server("server", &["localhost"]);
    let up = Upstream::http1().start().await;
    let route = Toml::one_route("tls-on", "tls-on-up", &[up.addr()]);
    let weir = Weir::start(route.clone().listener("main")).await;
    let addr = weir.addr();
    let mut plain = Conn::h1(addr).await.unwrap();
    assert_eq!(plain.get("/").await.unwrap().status, 200);

    weir.reload(tls_config(&leaf, None, route.clone())).unwrap();
    assert_eq!(weir.addr(), addr, "the same socket");
    let client = TlsClient::builder(&[&ca.cert_pem]).build();
    let r = client.get(addr, "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last_request()
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok()),
        Some("https")
    );
    // The plaintext connection accepted before goes on as it was.
    assert_eq!(plain.get("/").await.unwrap().status, 200);
    assert_eq!(
        up.last_request()
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok()),
        Some("http")
    );

    // A reload naming a certificate that cannot be read is refused; TLS goes on as it was.
    let missing = Leaf {
        cert: ca.dir().join("missing.pem"),
        ..ca.server("other", &["localhost"])
    };
    let err = weir
        .reload(tls_config(&missing, None, route))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    assert_eq!(client.get(addr, "/").await.unwrap().status, 200);
    let m = scrape(weir.admin()).await;
    assert_eq!(
        m.get("weir_config_reloads_total", &[("result", "error")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_certificate_that_cannot_be_loaded_stops_the_start_and_names_the_file() {
    let ca = TestCa::new("start-error");
    let leaf = ca.server("server", &["localhost"]);
    std::fs::write(&leaf.key, "not a key").unwrap();
    let err = Weir::try_start(tls_config(
        &leaf,
        None,
        Toml::new().respond("start-error", 200),
    ))
    .await
    .err()
    .expect("no start")
    .to_string();
    assert!(err.contains(&leaf.key.display().to_string()), "{err}");
    assert!(err.contains("listeners[0].tls (listener main)"), "{err}");

    let other = TestCa::new("start-error-ca");
    let leaf = other.server("server", &["localhost"]);
    let missing = other.dir().join("no-ca.pem");
    let err = Weir::try_start(tls_config(
        &leaf,
        Some(&missing),
        Toml::new().respond("start-error-ca", 200),
    ))
    .await
    .err()
    .expect("no start")
    .to_string();
    assert!(err.contains("no-ca.pem"), "{err}");
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_closed_after_the_header_read_timeout() {
    let ca = TestCa::new("tls-slow");
    let leaf = ca.server("server", &["localhost"]);
    let cfg = tls_config(&leaf, None, Toml::new().respond("tls-slow", 200))
        .set("header_read_timeout", "300ms");
    let weir = Weir::start(cfg).await;
    let addr = weir.addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Half a record header, then nothing.
    stream.write_all(&[0x16, 0x03]).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("closed by weir")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // The listener serves on.
    let client = TlsClient::builder(&[&ca.cert_pem]).build();
    assert_eq!(client.get(addr, "/").await.unwrap().status, 200);
}

/// A TLS record holding a ClientHello with `version` as its client_version, these cipher suite
/// bytes, no session id, and one extension: signature_algorithms (ECDSA P-256 SHA-256, RSA
/// PKCS#1 SHA-256), which any certificate-based handshake needs.
fn client_hello(version: u16, suites: &[u8]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&u16::try_from(suites.len()).unwrap().to_be_bytes());
    body.extend_from_slice(suites);
    body.extend_from_slice(&[1, 0]); // compression: null
    let sig_algs = [0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01];
    body.extend_from_slice(&u16::try_from(sig_algs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&sig_algs);
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&len[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Writes `bytes` on a new connection and reads until the peer closes (at most 5 s).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

/// ECDHE-ECDSA with AES-128-CBC-SHA256: a real suite outside the intermediate list. rustls
/// cannot run it, but a client can offer it: weir must refuse before any of it is used.
fn cbc_suite() -> rustls::SupportedCipherSuite {
    use rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as GCM;
    let rustls::SupportedCipherSuite::Tls12(gcm) = GCM else {
        panic!("a TLS 1.2 suite")
    };
    let fake = rustls::Tls12CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
            hash_provider: gcm.common.hash_provider,
            confidentiality_limit: gcm.common.confidentiality_limit,
        },
        prf_provider: gcm.prf_provider,
        kx: gcm.kx,
        sign: gcm.sign,
        aead_alg: gcm.aead_alg,
    };
    rustls::SupportedCipherSuite::Tls12(Box::leak(Box::new(fake)))
}
