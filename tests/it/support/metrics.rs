//! Scrape weir's admin `/metrics` and look samples up by name and labels.
//!
//! Parses the Prometheus text format: `# HELP` / `# TYPE` lines are skipped (the `TYPE` names are
//! kept for [`Scrape::has`]), label values may contain `\"`, `\\`, `\n`, commas and braces, and
//! histogram `_bucket` / `_sum` / `_count` lines are ordinary samples.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::client::Client;

/// A parsed `/metrics` page.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    text: String,
    families: Vec<String>,
    samples: Vec<Sample>,
}

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name as written on the line (e.g. `weir_request_duration_seconds_bucket`).
    pub name: String,
    /// Labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Sample value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

/// `GET http://admin/metrics` over HTTP/1.1; panics unless the status is 200.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let reply = Client::h1().get(admin, "/metrics").await;
    assert_eq!(
        reply.status,
        200,
        "GET /metrics on {admin}: {}",
        reply.text()
    );
    Scrape::parse(&reply.text())
}

/// `GET http://admin/status.json` over HTTP/1.1, parsed; panics unless the status is 200 and the
/// body is JSON.
pub async fn status_json(admin: SocketAddr) -> serde_json::Value {
    let reply = Client::h1().get(admin, "/status.json").await;
    assert_eq!(
        reply.status,
        200,
        "GET /status.json on {admin}: {}",
        reply.text()
    );
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("/status.json is not JSON ({e}): {}", reply.text()))
}

/// The entry of `/status.json`'s `section` (`upstreams` or `routes`) called `name`, whether the
/// section is an array of objects with a `name` field or an object keyed by name.
pub fn status_entry<'a>(
    status: &'a serde_json::Value,
    section: &str,
    name: &str,
) -> &'a serde_json::Value {
    let list = &status[section];
    let found = match list {
        serde_json::Value::Array(items) => items.iter().find(|i| i["name"] == name),
        serde_json::Value::Object(map) => map.get(name),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("/status.json has no {section} entry {name:?}: {status:#}"))
}

impl Scrape {
    /// Parses a page in the Prometheus text format; panics on a malformed line.
    pub fn parse(text: &str) -> Self {
        let mut scrape = Scrape {
            text: text.to_owned(),
            ..Scrape::default()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if let (Some("TYPE"), Some(name)) = (words.next(), words.next()) {
                    scrape.families.push(name.to_owned());
                }
                continue;
            }
            let sample =
                parse_sample(line).unwrap_or_else(|e| panic!("bad metrics line {line:?}: {e}"));
            scrape.samples.push(sample);
        }
        scrape
    }

    /// The value of the one sample named exactly `name` whose labels include all of `labels`
    /// (other labels are ignored); `None` if none matches, a panic if several do.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.matching(name, labels);
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => panic!(
                "{name} {labels:?} matches {} samples (use sum?): {many:#?}",
                many.len()
            ),
        }
    }

    /// Sum of every sample named exactly `name` whose labels include all of `labels`; 0 if none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    /// Whether a sample named exactly `name` exists, or a `# TYPE name` line declares it.
    pub fn has(&self, name: &str) -> bool {
        self.families.iter().any(|f| f == name) || self.samples.iter().any(|s| s.name == name)
    }

    /// Every sample named exactly `name` whose labels include all of `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .collect()
    }

    /// Every sample, in page order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The raw page.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    // The value, optionally followed by a timestamp.
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` into `labels`; returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value without '\"'")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling '\\'")?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other), // `\\` and `\"`
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}
