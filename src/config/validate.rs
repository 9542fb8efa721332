//! Cross-key checks on a read `Config`: references, duplicates, clashes and orderings.
//!
//! Position: file → validated `Config` (second half, after `read`); no I/O. Keys: `listeners[*]`
//! names and addresses vs `admin.listen`, route names and upstream references, retry backoff,
//! breaker open time and shed limits.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::error::Collector;
use crate::config::read::{join, quote};
use crate::config::render::duration;
use crate::config::{Config, RouteAction, UpstreamConfig};

/// Records every cross-key problem of `config`, each at the line of the key it is about.
pub(crate) fn validate(config: &Config, c: &mut Collector) {
    listeners(config, c);
    routes(config, c);
    for u in &config.upstreams {
        upstream(u, c);
    }
}

fn listeners(config: &Config, c: &mut Collector) {
    for (i, l) in config.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let earlier = &config.listeners[..i];
        if let Some(j) = earlier.iter().position(|o| o.name == l.name) {
            let p = if c.seen(&format!("{path}.name")) {
                format!("{path}.name")
            } else {
                path.clone()
            };
            c.at_path(
                &p,
                format!(
                    "duplicate listener name (listeners[{j}] is also {})",
                    quote(&l.name)
                ),
            );
        }
        let listen = format!("{path}.listen");
        if clash(l.listen, config.admin.listen) {
            c.at_path(
                &listen,
                format!(
                    "address clashes with the admin port admin.listen = {} (got {})",
                    quote(&config.admin.listen.to_string()),
                    quote(&l.listen.to_string())
                ),
            );
        }
        if let Some(j) = earlier.iter().position(|o| clash(o.listen, l.listen)) {
            c.at_path(
                &listen,
                format!(
                    "address clashes with listeners[{j}].listen = {} (got {})",
                    quote(&config.listeners[j].listen.to_string()),
                    quote(&l.listen.to_string())
                ),
            );
        }
    }
}

fn routes(config: &Config, c: &mut Collector) {
    for (i, r) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(j) = config.routes[..i].iter().position(|o| o.name == r.name) {
            let p = if c.seen(&format!("{path}.name")) {
                format!("{path}.name")
            } else {
                path.clone()
            };
            c.at_path(
                &p,
                format!(
                    "duplicate route name (routes[{j}] is also {})",
                    quote(&r.name)
                ),
            );
        }
        match &r.action {
            RouteAction::Upstream(name) => reference(config, c, &format!("{path}.upstream"), name),
            RouteAction::Split(targets) => {
                for (j, t) in targets.iter().enumerate() {
                    reference(
                        config,
                        c,
                        &format!("{path}.split[{j}].upstream"),
                        &t.upstream,
                    );
                }
            }
            RouteAction::Respond(_) => {}
        }
    }
}

/// A route's reference to an upstream must name one in `[upstreams]`.
fn reference(config: &Config, c: &mut Collector, path: &str, name: &str) {
    if config.upstream(name).is_some() {
        return;
    }
    let message = if config.upstreams.is_empty() {
        format!(
            "no such upstream: no [upstreams.NAME] table is defined (got {})",
            quote(name)
        )
    } else {
        let names: Vec<&str> = config.upstreams.iter().map(|u| &*u.name).collect();
        format!(
            "no such upstream (expected one of: {}) (got {})",
            names.join(", "),
            quote(name)
        )
    };
    c.at_path(path, message);
}

fn upstream(u: &UpstreamConfig, c: &mut Collector) {
    let path = join("upstreams", &u.name);
    let r = &u.retry;
    if r.backoff_base > r.backoff_cap {
        let lo = (Value::Duration(r.backoff_base), "backoff_base");
        let hi = (Value::Duration(r.backoff_cap), "backoff_cap");
        order(c, &join(&path, "retry"), lo, hi);
    }
    let b = &u.breaker;
    if b.open_for > b.open_for_max {
        let lo = (Value::Duration(b.open_for), "open_for");
        let hi = (Value::Duration(b.open_for_max), "open_for_max");
        order(c, &join(&path, "breaker"), lo, hi);
    }
    let s = &u.shed;
    if s.min_limit > s.max_in_flight {
        let lo = (Value::Count(s.min_limit), "min_limit");
        let hi = (Value::Count(s.max_in_flight), "max_in_flight");
        order(c, &join(&path, "shed"), lo, hi);
    }
}

/// A value in an ordering message.
enum Value {
    Duration(Duration),
    Count(u32),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Duration(d) => duration(*d),
            Value::Count(n) => n.to_string(),
        }
    }
}

/// Reports `lo > hi` at `lo` if it was written in the file, else at `hi`.
fn order(c: &mut Collector, table: &str, lo: (Value, &str), hi: (Value, &str)) {
    let (lo_value, lo_key) = lo;
    let (hi_value, hi_key) = hi;
    let lo_path = join(table, lo_key);
    let hi_path = join(table, hi_key);
    if c.seen(&lo_path) {
        let got = c
            .text(&lo_path)
            .map_or_else(|| lo_value.text(), str::to_owned);
        let message = format!("must not exceed {hi_key} = {} (got {got})", hi_value.text());
        c.at_path(&lo_path, message);
    } else {
        let got = c
            .text(&hi_path)
            .map_or_else(|| hi_value.text(), str::to_owned);
        let message = format!(
            "must be at least {lo_key} = {} (got {got})",
            lo_value.text()
        );
        c.at_path(&hi_path, message);
    }
}

/// Whether two listening addresses would fight over one port. Port 0 never clashes: the system
/// picks a free port for each.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
