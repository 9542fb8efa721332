//! Starting weir under test: `App::start` on 127.0.0.1 port 0, in this process.
//!
//! A config is anything that displays as weir TOML: a [`super::Toml`] built for the test, or a
//! string where the file's text is the point of the test.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;

use weir::{App, Config, Drained, ReloadError, Running};

/// A weir started for one test. Stop it with [`Weir::stop`]; dropping the test's runtime
/// ends it too.
pub struct Weir {
    running: Option<Running>,
}

impl Weir {
    /// Parses `toml` (as file `test.toml`), moves every listener and the admin port to
    /// 127.0.0.1 port 0, and starts it. The listeners stay there across reloads, whatever the
    /// reloaded file says (they are pinned). Panics with every config error on an invalid
    /// config.
    pub async fn start(toml: impl Display) -> Weir {
        match Self::try_start(toml).await {
            Ok(weir) => weir,
            Err(e) => panic!("weir does not start: {e}"),
        }
    }

    /// Like [`Weir::start`], returning the start error.
    pub async fn try_start(toml: impl Display) -> Result<Weir, weir::StartError> {
        let mut config = parse(&toml.to_string(), "test.toml");
        config.admin.listen = any();
        let pins: Vec<(Arc<str>, SocketAddr)> = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), any()))
            .collect();
        let running = App::start_pinned(config, pins).await?;
        Ok(Weir {
            running: Some(running),
        })
    }

    /// Parses `toml` and starts it with its listener addresses as written, so that a reload
    /// can move them; every listener must be on 127.0.0.1 (port 0, or one the test owns). The
    /// admin port moves to 127.0.0.1 port 0.
    pub async fn start_unpinned(toml: impl Display) -> Weir {
        let mut config = parse(&toml.to_string(), "test.toml");
        config.admin.listen = any();
        for l in &config.listeners {
            assert_eq!(
                l.listen.ip(),
                any().ip(),
                "listener {} off 127.0.0.1",
                l.name
            );
        }
        let running = App::start(config).await.expect("weir starts");
        Weir {
            running: Some(running),
        }
    }

    /// Reloads weir from `toml` (as file `reload.toml`), as SIGHUP does with a file. Listener
    /// addresses are used as written unless pinned (see [`Weir::start`]); an unpinned listener
    /// must be on 127.0.0.1.
    pub fn reload(&self, toml: impl Display) -> Result<(), ReloadError> {
        let config = parse(&toml.to_string(), "reload.toml");
        for l in &config.listeners {
            assert_eq!(
                l.listen.ip(),
                any().ip(),
                "listener {} off 127.0.0.1",
                l.name
            );
        }
        self.running().reload(config)
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

fn parse(toml: &str, file: &str) -> Config {
    match Config::from_toml(toml, file) {
        Ok(c) => c,
        Err(e) => panic!("invalid test config:\n{e}\n--- {file} ---\n{toml}"),
    }
}

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
