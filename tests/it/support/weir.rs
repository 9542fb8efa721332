//! Starting weir under test: `App::start` on 127.0.0.1 port 0, in this process.

use std::net::SocketAddr;

use weir::{App, Config, Drained, ReloadError, Running};

/// A weir started for one test. Stop it with [`Weir::stop`]; dropping the test's runtime
/// ends it too.
pub struct Weir {
    running: Option<Running>,
}

impl Weir {
    /// Parses `toml` (as file `test.toml`), moves every listener and the admin port to
    /// 127.0.0.1 port 0, and starts it. Panics with every config error on an invalid config.
    pub async fn start(toml: &str) -> Weir {
        let mut config = match Config::from_toml(toml, "test.toml") {
            Ok(c) => c,
            Err(e) => panic!("invalid test config:\n{e}"),
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = any;
        for l in &mut config.listeners {
            l.listen = any;
        }
        let running = App::start(config).await.expect("weir starts");
        Weir {
            running: Some(running),
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("weir is running")
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.running().proxy_addr()
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.running().listener_addr(name).expect("listener exists")
    }

    /// The admin port's address.
    pub fn admin(&self) -> SocketAddr {
        self.running().admin_addr()
    }

    /// Reloads weir from the config file `path`, as SIGHUP does.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        self.running().reload_file(path)
    }

    /// Reloads weir whenever the config file `path` changes.
    pub fn watch(&self, path: &std::path::Path) {
        self.running().watch(path.to_path_buf());
    }

    /// Drains weir the way SIGTERM does; `cut` plays the second signal.
    pub async fn drain(mut self, cut: impl std::future::Future<Output = ()>) -> Drained {
        self.running
            .take()
            .expect("weir is running")
            .drain(cut)
            .await
    }

    /// Stops weir the way SIGTERM does; true when every connection finished in time.
    pub async fn stop(mut self) -> bool {
        self.running
            .take()
            .expect("weir is running")
            .shutdown()
            .await
    }
}

/// A config with one route `route` (all paths) to upstream `upstream` at `endpoints`, plus
/// `extra` TOML appended to the upstream table (e.g. `protocol = "http2"`).
pub fn one_route(route: &str, upstream: &str, endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[routes]]\nname = \"{route}\"\nupstream = \"{upstream}\"\n\n[upstreams.{upstream}]\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}
