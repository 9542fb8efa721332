//! Hot reload: a config file (on SIGHUP, or when the file changes) → parse, validate, build the
//! next generation, bind and load what the listeners need, then swap it all in. An invalid
//! config, or one whose listeners cannot be bound or whose TLS files cannot be loaded, is
//! refused, its errors logged (file:line:key, or the address or file at fault), and everything
//! running keeps serving as it was.
//!
//! Position: off the request path; writes the `Current` pointer and moves the listeners
//! ([`crate::server::Listeners::apply`]). Config: the whole file (routes, upstreams and
//! listeners take effect; `[admin]`, `[drain]` and `workers` at the next start).
//! Metrics: `weir_config_reloads_total{result}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::Counter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors};
use crate::generation::BuildError;
use crate::generation::{Current, Generation};
use crate::metrics::{CONFIG_RELOADS_TOTAL, Metrics};
use crate::server::{ListenerError, Listeners};

/// Why a reload was refused; the running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is not a valid config (every error, with file:line:key).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The config does not compile into a generation.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener cannot be bound at its new address, or its TLS files cannot be loaded.
    #[error(transparent)]
    Listener(#[from] ListenerError),
}

/// Swaps configs into the live generation. Shared by the SIGHUP handler and the file watcher.
#[derive(Debug)]
pub(crate) struct Reloader {
    current: Current,
    listeners: Arc<Listeners>,
    metrics: Metrics,
    /// One reload at a time (SIGHUP and the file watch may fire together). The lock holds the
    /// bytes the last file reload read, and when.
    last_read: Mutex<Option<(Vec<u8>, Instant)>>,
    success: Counter,
    error: Counter,
}

impl Reloader {
    /// A reloader for `current` and `listeners`, counting into `metrics`.
    pub(crate) fn new(current: Current, metrics: Metrics, listeners: Arc<Listeners>) -> Self {
        let result =
            |r: &'static str| metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", r.into())]);
        Self {
            success: result("success"),
            error: result("error"),
            current,
            listeners,
            metrics,
            last_read: Mutex::new(None),
        }
    }

    /// Swaps in `config`, parsed and validated already: builds the next generation (upstreams
    /// whose settings did not change keep their state), binds the listeners whose address
    /// changed and reads every listener's TLS files; then swaps the generation in atomically
    /// and moves the listeners (see [`Listeners::apply`]). Requests in flight finish on the
    /// generation they started on. On an error nothing changes.
    pub(crate) fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.swap(config)
    }

    fn swap(&self, mut config: Config) -> Result<(), ReloadError> {
        let result = (|| {
            self.listeners.pin(&mut config.listeners);
            let config = Arc::new(config);
            let previous = self.current.load_full();
            let next = Generation::build_after(config.clone(), &self.metrics, Some(&previous))?;
            // Goes live only if the listeners take the new settings: a refused reload starts
            // no task and opens no connection.
            self.listeners.apply(&config.listeners, || {
                next.start();
                self.current.store(Arc::new(next));
            })?;
            crate::workers::warn_if_changed(self.listeners.workers(), config.workers);
            Ok(())
        })();
        self.count(&result);
        result
    }

    /// Reads, validates and swaps in the config file at `path` (SIGHUP). One change that is
    /// both written and signalled reloads once: a file whose bytes are those the last file
    /// reload read less than `ONCE` (2 s) ago is not reloaded again (the file watch sees the same
    /// write after its debounce). A SIGHUP later than that reloads the same bytes, which
    /// re-reads TLS files.
    pub(crate) fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        self.reload_file_if(path, true)
    }

    /// Reloads the file at `path` when it can be read and its bytes differ from those the last
    /// file reload read (the file watch).
    pub(crate) fn reload_changed_file(&self, path: &Path) -> Result<(), ReloadError> {
        self.reload_file_if(path, false)
    }

    /// Remembers the bytes of the file weir started from, so the watch reloads only a change.
    pub(crate) fn seed(&self, path: &Path) {
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none()
            && let Ok(bytes) = std::fs::read(path)
        {
            let long_ago = Instant::now()
                .checked_sub(ONCE)
                .unwrap_or_else(Instant::now);
            *last = Some((bytes, long_ago));
        }
    }

    /// Reads the file and reloads it, unless it holds the bytes the last file reload read and
    /// either `signalled` is false or that reload was less than [`ONCE`] ago.
    fn reload_file_if(&self, path: &Path, signalled: bool) -> Result<(), ReloadError> {
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Mid-swap, the watch may find no file: the next event will.
            Err(_) if !signalled => return Ok(()),
            Err(_) => {
                let result = Config::load(path).map(drop).map_err(ReloadError::Config);
                self.count(&result);
                return result;
            }
        };
        if let Some((seen, at)) = last.as_ref()
            && *seen == bytes
            && (!signalled || at.elapsed() < ONCE)
        {
            tracing::debug!(file = %path.display(), "config file unchanged since the last reload");
            return Ok(());
        }
        let file = path.display().to_string();
        let config = Config::from_toml(&String::from_utf8_lossy(&bytes), &file);
        *last = Some((bytes, Instant::now()));
        match config {
            Ok(config) => self.swap(config),
            Err(errors) => {
                let result = Err(ReloadError::Config(errors));
                self.count(&result);
                result
            }
        }
    }

    fn count(&self, result: &Result<(), ReloadError>) {
        match result {
            Ok(()) => {
                self.success.increment(1);
                tracing::info!("config reloaded; the new generation is live");
            }
            Err(e) => {
                self.error.increment(1);
                tracing::warn!(error = %e, "config reload refused; the running config stays");
            }
        }
    }
}

/// Reloads `file` whenever its directory changes and the file's bytes differ from the last
/// ones seen, until `stop`. Watching the directory (not the file) catches editors that save by
/// rename and Kubernetes ConfigMaps that swap a symlink; bursts of events are debounced.
pub(crate) async fn watch(reloader: Arc<Reloader>, file: PathBuf, stop: CancellationToken) {
    reloader.seed(&file);
    let what = "the config file";
    crate::watch::on_change(&[&file], what, "reload with SIGHUP", stop, || {
        let _ = reloader.reload_changed_file(&file);
    })
    .await;
}

/// Within this long of a file reload, the same bytes are not reloaded again: a write that is
/// also signalled reaches weir twice, once by SIGHUP and once by the watch after [`crate::watch::DEBOUNCE`].
const ONCE: Duration = Duration::from_secs(2);
