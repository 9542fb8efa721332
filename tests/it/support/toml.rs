//! Weir config files for tests: one builder, [`Toml`], for every config a test starts or reloads.
//!
//! A test names what it needs (routes, upstreams, listeners, their keys) and the builder renders
//! valid TOML, quoting strings and paths itself. Keys go to the table added last; a dotted key
//! reaches into its sub-tables (`retry.max_retries`, `match.path_prefix`):
//!
//! ```text
//! Toml::new()
//!     .route("api", "api-up").set("timeout", "300ms").set("match.path_prefix", "/api")
//!     .upstream("api-up", &[up.addr()]).set("retry.max_retries", 0)
//! ```
//!
//! Config files on disk (for reloads and watches) are [`ConfigFile`]s.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ::toml::{Table, Value};

/// A weir config under construction; `Display` renders it as TOML. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct Toml {
    doc: Table,
    at: At,
}

/// The table [`Toml::set`] writes to.
#[derive(Clone, Debug, Default)]
enum At {
    /// The file's top level.
    #[default]
    Top,
    /// `routes[i]`.
    Route(usize),
    /// `listeners[i]`.
    Listener(usize),
    /// A table by its path of keys, e.g. `["upstreams", "api-up"]`.
    Table(Vec<String>),
}

impl Toml {
    /// An empty config: weir's defaults, with no route.
    pub fn new() -> Self {
        Self::default()
    }

    /// A config with one route `route` (every path) to upstream `upstream` at `endpoints`; keys
    /// set next go to the upstream.
    pub fn one_route(route: &str, upstream: &str, endpoints: &[SocketAddr]) -> Self {
        Self::new()
            .route(route, upstream)
            .upstream(upstream, endpoints)
    }

    /// Adds a `[[routes]]` entry `name` to `upstream` (every path unless `match` says less).
    pub fn route(self, name: &str, upstream: &str) -> Self {
        self.push_route(name).set("upstream", upstream)
    }

    /// Adds a `[[routes]]` entry `name` that answers `status` itself (`respond.status`; set
    /// `respond.body` and `respond.headers.NAME` next for more).
    pub fn respond(self, name: &str, status: u16) -> Self {
        self.push_route(name)
            .set("respond.status", u32::from(status))
    }

    /// Adds a `[[routes]]` entry `name` split between upstreams by `(upstream, weight)`.
    pub fn split(self, name: &str, targets: &[(&str, u32)]) -> Self {
        let split: Vec<Value> = targets
            .iter()
            .map(|(upstream, weight)| {
                let mut t = Table::new();
                t.insert("upstream".into(), (*upstream).into());
                t.insert("weight".into(), (*weight).into());
                Value::Table(t)
            })
            .collect();
        self.push_route(name).set("split", split)
    }

    /// Adds `[upstreams.NAME]` with `endpoints`.
    pub fn upstream(self, name: &str, endpoints: &[SocketAddr]) -> Self {
        let endpoints: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        self.table(&format!("upstreams.{name}"))
            .set("endpoints", endpoints)
    }

    /// Adds a `[[listeners]]` entry `name`. The test harness moves it to 127.0.0.1 port 0
    /// unless the test sets `listen` and starts weir unpinned.
    pub fn listener(mut self, name: &str) -> Self {
        let listeners = array(&mut self.doc, "listeners");
        listeners.push(Value::Table(Table::new()));
        let i = listeners.len() - 1;
        self.at = At::Listener(i);
        self.set("name", name)
    }

    /// Makes the table at dotted `path` (`drain`, `admin`, `upstreams.api-up.health`) the one
    /// keys go to, creating it if needed.
    pub fn table(mut self, path: &str) -> Self {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        table_at(&mut self.doc, &path);
        self.at = At::Table(path);
        self
    }

    /// Sets `key` (dotted for sub-tables: `retry.max_retries`) in the table added last.
    /// Strings are quoted as TOML strings: a duration is `"300ms"`, a mode `"off"`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let (parents, last) = match key.rsplit_once('.') {
            Some((parents, last)) => (parents.split('.').map(str::to_owned).collect(), last),
            None => (Vec::new(), key),
        };
        let section = match &self.at {
            At::Top => &mut self.doc,
            At::Route(i) => entry(&mut self.doc, "routes", *i),
            At::Listener(i) => entry(&mut self.doc, "listeners", *i),
            At::Table(path) => table_at(&mut self.doc, path),
        };
        table_at(section, &parents).insert(last.to_owned(), value.into());
        self
    }

    /// Sets `key` to a file path (as a TOML string).
    pub fn path(self, key: &str, path: &Path) -> Self {
        let path = path.display().to_string();
        self.set(key, path)
    }

    fn push_route(mut self, name: &str) -> Self {
        let routes = array(&mut self.doc, "routes");
        routes.push(Value::Table(Table::new()));
        let i = routes.len() - 1;
        self.at = At::Route(i);
        self.set("name", name)
    }
}

impl fmt::Display for Toml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.doc.fmt(f)
    }
}

/// A config file in the temp directory, unique to this process and `name`, removed when dropped.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    /// A file `weir-<pid>-<name>.toml` in the temp directory (not written yet).
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("weir-{}-{name}.toml", std::process::id()));
        Self(path)
    }

    /// Writes `toml` to the file (replacing what it held) and returns its path.
    pub fn write(&self, toml: impl fmt::Display) -> &Path {
        std::fs::write(&self.0, toml.to_string()).expect("write the config file");
        &self.0
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The array of tables `key` of `doc`, created if needed.
fn array<'a>(doc: &'a mut Table, key: &str) -> &'a mut Vec<Value> {
    match doc.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(a) => a,
        other => panic!("{key} is {other}, not an array of tables"),
    }
}

/// Entry `i` of the array of tables `key`.
fn entry<'a>(doc: &'a mut Table, key: &str, i: usize) -> &'a mut Table {
    match array(doc, key).get_mut(i) {
        Some(Value::Table(t)) => t,
        other => panic!("{key}[{i}] is {other:?}, not a table"),
    }
}

/// The table at `path` below `table`, created (with its parents) if needed.
fn table_at<'a>(table: &'a mut Table, path: &[String]) -> &'a mut Table {
    path.iter().fold(table, |t, key| {
        match t
            .entry(key.as_str())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(inner) => inner,
            other => panic!("{key} is {other}, not a table"),
        }
    })
}
