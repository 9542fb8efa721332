//! gRPC health checks (`grpc.health.v1.Health/Check`) against a real tonic health server.
//!
//! Each endpoint is tonic-health's own `grpc.health.v1.Health` service on 127.0.0.1 port 0; the
//! test flips a service's status with its `HealthReporter` and waits for weir's verdict in
//! `weir_endpoint_healthy{upstream,endpoint}` and `/status.json`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::support::{Toml, Weir, eventually_async, scrape, status_json};

const SECS: Duration = Duration::from_secs(5);

/// The service the checks of most tests ask about.
const ECHO: &str = "weir.test.Echo";

/// A tonic server with the standard health service; it stops when dropped.
struct HealthServer {
    addr: SocketAddr,
    reporter: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    /// Serves `grpc.health.v1.Health`: the server as a whole (`""`) SERVING, and each of
    /// `services` with its status.
    async fn start(services: &[(&str, ServingStatus)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, svc) = tonic_health::server::health_reporter();
        for (name, status) in services {
            reporter.set_service_status(name, *status).await;
        }
        let serve = Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            serve.await.expect("the health server runs");
        });
        HealthServer {
            addr,
            reporter,
            task,
        }
    }

    async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One route to upstream `up` over HTTP/2 at `servers`, checked with gRPC health checks about
/// `service` every 100 ms: one failure takes an endpoint out, two passes bring it back.
fn config(servers: &[&HealthServer], service: &str) -> Toml {
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    Toml::one_route("r", "up", &addrs)
        .set("protocol", "http2")
        .set("health.grpc", true)
        .set("health.grpc_service", service)
        .set("health.interval", "100ms")
        .set("health.timeout", "1s")
        .set("health.unhealthy_threshold", 1)
        .set("health.healthy_threshold", 2)
}

/// `weir_endpoint_healthy` of the endpoint at `addr` (None while unset).
async fn healthy(weir: &Weir, addr: SocketAddr) -> Option<f64> {
    scrape(weir.admin()).await.get(
        "weir_endpoint_healthy",
        &[("upstream", "up"), ("endpoint", &addr.to_string())],
    )
}

/// Waits until `weir_endpoint_healthy` of the endpoint at `addr` is `v`.
async fn wait_healthy(weir: &Weir, addr: SocketAddr, v: f64) {
    eventually_async(|| async { healthy(weir, addr).await == Some(v) }, SECS).await;
}

/// The `/status.json` entry of the endpoint at `addr`.
async fn endpoint_status(weir: &Weir, addr: SocketAddr) -> serde_json::Value {
    let status = status_json(weir.admin()).await;
    let eps = status["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in {status:#}"));
    eps.iter()
        .find(|e| e["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("no endpoint {addr} in {status:#}"))
        .clone()
}

#[tokio::test]
async fn a_service_not_serving_takes_its_endpoint_out_and_serving_brings_it_back() {
    let a = HealthServer::start(&[(ECHO, ServingStatus::Serving)]).await;
    let b = HealthServer::start(&[(ECHO, ServingStatus::Serving)]).await;
    let weir = Weir::start(config(&[&a, &b], ECHO)).await;
    wait_healthy(&weir, a.addr, 1.0).await;
    wait_healthy(&weir, b.addr, 1.0).await;

    // The server as a whole stays SERVING: the check asks about the service named.
    a.set(ECHO, ServingStatus::NotServing).await;
    wait_healthy(&weir, a.addr, 0.0).await;
    let ep = endpoint_status(&weir, a.addr).await;
    assert_eq!(ep["health"], "failing", "{ep}");
    assert_eq!(ep["serving"], false, "{ep}");
    assert_eq!(
        healthy(&weir, b.addr).await,
        Some(1.0),
        "the other one stays in"
    );
    assert_eq!(endpoint_status(&weir, b.addr).await["serving"], true);

    a.set(ECHO, ServingStatus::Serving).await;
    wait_healthy(&weir, a.addr, 1.0).await;
    let ep = endpoint_status(&weir, a.addr).await;
    assert_eq!(ep["health"], "healthy", "{ep}");
    assert_eq!(ep["serving"], true, "{ep}");
}

#[tokio::test]
async fn an_empty_service_name_asks_about_the_server_as_a_whole() {
    // ECHO is NOT_SERVING throughout: a check about "" does not look at it.
    let a = HealthServer::start(&[(ECHO, ServingStatus::NotServing)]).await;
    let b = HealthServer::start(&[]).await;
    let weir = Weir::start(config(&[&a, &b], "")).await;
    wait_healthy(&weir, a.addr, 1.0).await;

    a.set("", ServingStatus::NotServing).await;
    wait_healthy(&weir, a.addr, 0.0).await;
    assert_eq!(endpoint_status(&weir, a.addr).await["health"], "failing");
    assert_eq!(healthy(&weir, b.addr).await, Some(1.0));

    a.set("", ServingStatus::Serving).await;
    wait_healthy(&weir, a.addr, 1.0).await;
    assert_eq!(endpoint_status(&weir, a.addr).await["health"], "healthy");
}

#[tokio::test]
async fn a_service_the_server_does_not_know_fails_until_it_serves() {
    // tonic-health answers a service it was never told of with NOT_FOUND, trailers-only.
    let a = HealthServer::start(&[]).await;
    let b = HealthServer::start(&[(ECHO, ServingStatus::Serving)]).await;
    let weir = Weir::start(config(&[&a, &b], ECHO)).await;
    wait_healthy(&weir, a.addr, 0.0).await;
    assert_eq!(endpoint_status(&weir, a.addr).await["serving"], false);

    a.set(ECHO, ServingStatus::Serving).await;
    wait_healthy(&weir, a.addr, 1.0).await;
    assert_eq!(healthy(&weir, b.addr).await, Some(1.0));
}
