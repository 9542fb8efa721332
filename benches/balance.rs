//! Pick cost of each balancer over 3, 100 and 1000 endpoints: loading the endpoint set's
//! snapshot and choosing one endpoint, as a try does in weir. No request is sent.
//!
//! Run with `cargo bench --bench balance`; the last lines print each case as a ratio to
//! `round_robin/3` of the same run.

// A bench fails loudly on a broken setup.
#![allow(clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};

use weir::config::{Balance, HashOn, UpstreamConfig};
use weir::internals::Balancer;
use weir::internals::metrics::Metrics;
use weir::internals::{Body, Request};

const SIZES: [usize; 3] = [3, 100, 1000];
const BALANCERS: [(&str, Balance); 4] = [
    ("p2c", Balance::P2c),
    ("round_robin", Balance::RoundRobin),
    ("least_request", Balance::LeastRequest),
    ("hash", Balance::Hash),
];

fn request() -> Request {
    let mut req = Request::new(Body::empty());
    req.headers_mut()
        .insert("x-user", http::HeaderValue::from_static("user-4711"));
    req
}

fn benches(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    let hash_on = HashOn::Header(http::HeaderName::from_static("x-user"));
    let mut group = c.benchmark_group("pick");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    let req = request();
    let client = Some(std::net::IpAddr::from([10, 1, 2, 3]));
    for n in SIZES {
        for (name, balance) in BALANCERS {
            let cfg = UpstreamConfig {
                name: Arc::from("bench"),
                endpoints: (0..n)
                    .map(|i| {
                        format!("10.0.{}.{}:8080", i / 250, i % 250)
                            .parse()
                            .expect("address")
                    })
                    .collect(),
                balance,
                hash_on: hash_on.clone(),
                ..UpstreamConfig::default()
            };
            let set = weir::internals::endpoint_set(&cfg, &metrics).expect("endpoint set");
            let balancer = Balancer::new(balance, &hash_on, cfg.outlier.ramp);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let snap = set.load();
                    black_box(balancer.pick(&snap, black_box(&req), client, None))
                });
            });
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    report_ratios();
}

/// Prints each case's mean as a ratio to `round_robin/3`, from criterion's estimates of this run.
fn report_ratios() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|t| t.join("criterion").join("pick"));
    let Some(dir) = dir else { return };
    let mean = |case: &str, n: usize| -> Option<f64> {
        let path = dir
            .join(case)
            .join(n.to_string())
            .join("new")
            .join("estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["mean"]["point_estimate"].as_f64()
    };
    let Some(base) = mean("round_robin", 3) else {
        return;
    };
    println!("\npick cost, as a ratio to round_robin over 3 endpoints ({base:.1} ns):");
    for (name, _) in BALANCERS {
        for n in SIZES {
            if let Some(ns) = mean(name, n) {
                println!("  {name:<14} {n:>5}  {ns:>9.1} ns  {:>7.2}x", ns / base);
            }
        }
    }
}
