//! The tasks a test server spawns (connections, HTTP/2 streams), aborted together when it is
//! dropped, so that no task outlives its test.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

/// A set of spawned tasks; clones share it. Also the HTTP/2 executor of a test server, so
/// stream tasks die with it.
#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<Option<Vec<AbortHandle>>>>);

impl Tasks {
    /// An open set.
    pub fn new() -> Self {
        Tasks(Arc::new(Mutex::new(Some(Vec::new()))))
    }

    /// Spawns `fut` into the set; once the set is closed, it is aborted at once.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut).abort_handle();
        match self.0.lock().unwrap().as_mut() {
            Some(tasks) => {
                tasks.retain(|t| !t.is_finished());
                tasks.push(handle);
            }
            None => handle.abort(),
        }
    }

    /// Aborts every task and closes the set.
    pub fn abort_all(&self) {
        let tasks = self.0.lock().unwrap().take().unwrap_or_default();
        tasks.iter().for_each(AbortHandle::abort);
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Tasks {
    fn execute(&self, fut: F) {
        self.spawn(fut);
    }
}
