//! Hot reload: a config file (on SIGHUP, or when the file changes) → parse, validate, build the
//! next generation, swap it in atomically. An invalid config is refused, its errors logged with
//! file:line:key, and the running generation keeps serving.
//!
//! Position: off the request path; writes only the `Current` pointer. Config: the whole file
//! (routes and upstreams take effect; listener, `[admin]` and `[drain]` settings at the next
//! start). Metrics: `weir_config_reloads_total{result}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio_util::sync::CancellationToken;

use crate::admin::metrics::{CONFIG_RELOADS_TOTAL, Metrics};
use crate::config::{Config, ConfigErrors};
use crate::generation::{Current, Generation};
use crate::route::BuildError;

/// Why a reload was refused; the running config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or is not a valid config (every error, with file:line:key).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The config does not compile into a generation.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The config asks for a feature this build cannot serve.
    #[error("{0} is not supported by this version of weir")]
    Unsupported(String),
}

/// Swaps configs into the live generation. Shared by the SIGHUP handler and the file watcher.
#[derive(Debug)]
pub struct Reloader {
    current: Current,
    metrics: Metrics,
    success: Counter,
    error: Counter,
}

impl Reloader {
    /// A reloader for `current`, counting into `metrics`.
    pub fn new(current: Current, metrics: Metrics) -> Self {
        let result =
            |r: &'static str| metrics.counter(CONFIG_RELOADS_TOTAL, &[("result", r.into())]);
        Self {
            success: result("success"),
            error: result("error"),
            current,
            metrics,
        }
    }

    /// Swaps in `config`, parsed and validated already: builds the next generation (upstreams
    /// whose settings did not change keep their state) and swaps it in atomically; requests in
    /// flight finish on the generation they started on.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let result = crate::app::unsupported(&config)
            .map_or(Ok(()), |what| Err(ReloadError::Unsupported(what)))
            .and_then(|()| {
                let previous = self.current.load_full();
                let next =
                    Generation::build_after(Arc::new(config), &self.metrics, Some(&previous))?;
                self.current.store(Arc::new(next));
                Ok(())
            });
        self.count(&result);
        result
    }

    /// Reads, validates and swaps in the config file at `path`.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        match Config::load(path) {
            Ok(config) => self.reload(config),
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
pub async fn watch(reloader: Arc<Reloader>, file: PathBuf, stop: CancellationToken) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let debouncer = new_debouncer(DEBOUNCE, None, move |events: DebounceEventResult| {
        let _ = tx.send(events);
    });
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return;
        }
    };
    if let Err(e) = debouncer.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
        return;
    }
    let mut last = std::fs::read(&file).ok();
    loop {
        tokio::select! {
            events = rx.recv() => match events {
                None => return,
                Some(Err(errors)) => {
                    tracing::debug!(?errors, "config watch errors");
                }
                Some(Ok(_)) => {
                    let now = std::fs::read(&file).ok();
                    if now.is_some() && now != last {
                        last = now;
                        let _ = reloader.reload_file(&file);
                    }
                }
            },
            () = stop.cancelled() => return,
        }
    }
}

/// How long a burst of file events is gathered before it counts as one change.
const DEBOUNCE: Duration = Duration::from_millis(200);
