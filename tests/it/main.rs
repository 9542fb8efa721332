//! Integration tests: real upstreams and real weir listeners on 127.0.0.1 port 0.

mod admin;
mod balance;
mod cli;
mod config;
mod deploy;
mod discovery;
mod fake_backend;
mod grpc;
mod grpc_health;
mod hardening;
mod hedge;
mod lifecycle;
mod proxy;
mod resilience;
mod status_page;
mod support;
mod support_selftest;
mod tls;
mod tls_upstream;
mod workers;
