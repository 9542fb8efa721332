//! The worker runtimes: worker 0 is the runtime weir was started on, and workers 1..N each run
//! a current-thread runtime on a thread of their own (`weir-worker-N`), so that connections are
//! served on N cores without work stealing: each worker accepts on its own socket of every
//! listener (`SO_REUSEPORT`) and keeps the connections it accepts.
//!
//! Position: under step 1 of the walk; [`crate::server::Listeners`] spawns each socket's
//! accept loop on its worker's [`Handle`]. Everything else (admin, reload, health checks,
//! discovery, upkeep) stays on worker 0. Config: `workers` (read at start). Metrics: none.

use std::cell::Cell;
use std::num::NonZero;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The worker runtimes of one running weir. Dropping it stops workers 1..N: their runtimes
/// end, and with them whatever still runs on them.
#[derive(Debug)]
pub(crate) struct Workers {
    /// Worker `i`'s runtime at `i`; worker 0's is the runtime `start` was called on.
    handles: Vec<Handle>,
    /// Ends the worker threads.
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least 1): worker 0 is the runtime this is called on, and
    /// each further one a current-thread runtime on a thread of its own. With `count` 1 it
    /// starts nothing. Fails outside a tokio runtime, or when a thread or runtime cannot be
    /// started (then the workers already started stop again).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let here = Handle::try_current().map_err(std::io::Error::other)?;
        let mut workers = Workers {
            handles: vec![here],
            stop: CancellationToken::new(),
            threads: Vec::new(),
        };
        for index in 1..count.max(1) {
            let (handle, thread) = spawn(index, workers.stop.clone())?;
            workers.handles.push(handle);
            workers.threads.push(thread);
        }
        if count > 1 {
            info!(workers = count, "worker runtimes started");
        }
        Ok(workers)
    }

    /// Each worker's runtime, worker 0 first.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // A worker never owns the `Workers` that started it; were it dropped there, waiting
            // for that thread would wait forever.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// The number of workers that `workers = configured` gives: itself, or for 0 one per core
/// this process may run on (`std::thread::available_parallelism`, which counts the CPU
/// affinity mask and cgroup CPU limits); at least 1.
pub(crate) fn resolve(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, NonZero::get),
        n => n,
    }
}

/// How many per-worker slots a structure that keeps state per worker (the upstream pools'
/// idle queues) makes: one per core this process may run on, the number of workers unless
/// `workers` says otherwise. Indexed with `current() % slots`, so any number of workers is
/// served correctly; with more workers than cores some share a slot.
pub(crate) fn slots() -> usize {
    resolve(0)
}

/// The index of the worker running the calling thread: `1..N` on the worker threads, 0
/// everywhere else (worker 0, and any thread that is no worker). One thread-local read.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Logs a warning when a reloaded config asks for another number of workers than weir runs
/// with (`running`): the number of workers is fixed at start.
pub(crate) fn warn_if_changed(running: usize, configured: usize) {
    let wanted = resolve(configured);
    if wanted != running {
        warn!(
            running,
            configured,
            wanted,
            "workers: a change takes effect only at the next start; running on as before"
        );
    }
}

thread_local! {
    /// This thread's worker index (see [`current`]).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts worker `index` on a thread of its own: a current-thread runtime that runs until
/// `stop` fires. Returns once the runtime is built (or could not be).
fn spawn(index: usize, stop: CancellationToken) -> std::io::Result<(Handle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(format!("weir-worker-{index}"))
        .spawn(move || {
            // Built here, not by the caller: a runtime must not be dropped on a thread that runs
            // async code, and this one ends here too.
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            INDEX.with(|i| i.set(index));
            let _ = tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(stop.cancelled());
            // Tasks still on this runtime are dropped; blocking work (a DNS lookup, say) gets
            // a moment to end, and is then left behind.
            runtime.shutdown_timeout(SHUTDOWN);
        })?;
    // Waits for the thread to build its runtime: microseconds, once per worker at start.
    match rx.recv() {
        Ok(Ok(handle)) => Ok((handle, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other(format!(
                "worker {index} ended before its runtime started"
            )))
        }
    }
}

/// How long a stopping worker waits for its blocking work.
const SHUTDOWN: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_worker_is_the_runtime_it_starts_on_and_spawns_nothing() {
        let workers = Workers::start(1).unwrap();
        assert_eq!(workers.handles().len(), 1);
        assert!(workers.threads.is_empty());
        assert_eq!(workers.handles()[0].id(), Handle::current().id());
        assert_eq!(current(), 0);
        // 0 starts one as well.
        assert_eq!(Workers::start(0).unwrap().handles().len(), 1);
    }

    #[tokio::test]
    async fn each_worker_runs_on_its_own_named_thread_and_knows_its_index() {
        let workers = Workers::start(3).unwrap();
        let handles = workers.handles();
        assert_eq!(handles.len(), 3);
        assert_eq!(handles[0].id(), Handle::current().id());
        for (i, h) in handles.iter().enumerate().skip(1) {
            let (index, name) = h
                .spawn(async {
                    let name = std::thread::current().name().map(str::to_owned);
                    (current(), name)
                })
                .await
                .unwrap();
            assert_eq!(index, i);
            assert_eq!(name.as_deref(), Some(format!("weir-worker-{i}").as_str()));
            assert_ne!(h.id(), handles[0].id());
        }
        assert_eq!(current(), 0, "off the worker threads");
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads_and_their_tasks() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // A task that never ends by itself: it ends when its runtime does, dropping `tx`.
        workers.handles()[1].spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let thread = workers.threads[0].thread().clone();
        drop(workers);
        assert!(rx.await.is_err(), "the task was dropped with its runtime");
        assert_eq!(thread.name(), Some("weir-worker-1"));
    }

    #[test]
    fn outside_a_runtime_there_is_no_worker_0() {
        assert!(Workers::start(2).is_err());
    }

    #[test]
    fn zero_is_one_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
        assert_eq!(resolve(0), cores);
        assert_eq!(resolve(1), 1);
        assert_eq!(resolve(7), 7);
    }
}
