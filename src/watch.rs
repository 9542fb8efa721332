//! One debounced watch over the directories of some files, shared by the config reload
//! ([`crate::reload::watch`]) and the listeners' certificates ([`crate::tls::server::watch`]).
//!
//! Watching the directory (not the file) catches editors that save by rename and Kubernetes
//! ConfigMaps and Secrets that swap a symlink; a burst of events within [`DEBOUNCE`] counts as
//! one change. Off the request path. Config: none. Metrics: none.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio_util::sync::CancellationToken;

/// Calls `changed` after each debounced burst of events in the directories of `files`, until
/// `stop`. `what` names the files in the logs ("the config file"); when they cannot be watched
/// it says so at `warn`, with `otherwise` (how they still reload), and returns.
pub(crate) async fn on_change(
    files: &[&Path],
    what: &'static str,
    otherwise: &'static str,
    stop: CancellationToken,
    mut changed: impl FnMut(),
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let debouncer = new_debouncer(DEBOUNCE, None, move |events: DebounceEventResult| {
        let _ = tx.send(events);
    });
    let mut debouncer = match debouncer {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {what}; {otherwise}");
            return;
        }
    };
    let mut dirs: Vec<PathBuf> = files.iter().map(|f| dir_of(f)).collect();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = debouncer.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e,
                "cannot watch the directory of {what}; {otherwise}");
            return;
        }
    }
    loop {
        tokio::select! {
            events = rx.recv() => match events {
                None => return,
                Some(Err(errors)) => tracing::debug!(?errors, "watch errors on {what}"),
                Some(Ok(_)) => changed(),
            },
            () = stop.cancelled() => return,
        }
    }
}

/// The directory `file` is in (`.` for a bare file name).
fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// How long a burst of file events is gathered before it counts as one change.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(200);
