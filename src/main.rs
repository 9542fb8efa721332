//! The `weir` command: run a config (or the embedded default), or check one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use weir::{App, Config};

/// A resilience proxy for HTTP.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Config file to run; without it weir runs its embedded default (127.0.0.1:8080, admin on
    /// 127.0.0.1:9901).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file: print every error as FILE:LINE: key.path: message; exit 1 if any.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check { file }) = &cli.command {
        return check(file);
    }
    let telemetry = weir::telemetry::init();
    let code = serve(&cli);
    // After the runtime has stopped: export the spans still buffered.
    telemetry.shutdown();
    code
}

fn serve(cli: &Cli) -> ExitCode {
    let config = match &cli.config {
        None => Config::embedded_default(),
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.file, line = e.line, key = %e.path, "{}", e.message);
                }
                report(&errors);
                return ExitCode::FAILURE;
            }
        },
    };
    match run(config, cli.config.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "weir stopped");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    // Worker 0: a current-thread runtime on this thread. `App::start` adds workers 1..N
    // (`workers`, by default one per core), each a current-thread runtime of its own with its
    // own socket on every listener, so connections spread over the cores without a
    // work-stealing scheduler: a connection stays on the worker that accepted it, and no task
    // wake-up pays for the atomic operations and cross-core hand-offs of stealing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let running = App::start(config).await?;
        if let Some(file) = file {
            running.watch(file.to_path_buf());
        }
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "weir started");
        let which = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => match file {
                    // Errors are logged and counted by `reload_file`; the running config stays.
                    Some(file) => drop(running.reload_file(file)),
                    None => tracing::warn!("SIGHUP: weir runs its embedded config; nothing to reload"),
                },
            }
        };
        tracing::info!(signal = which, "stopping");
        // A second signal ends the drain at once.
        let again = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let drained = running.drain(again).await;
        tracing::info!(
            in_time = drained.in_time,
            completed = drained.completed,
            cut = drained.cut,
            "stopped"
        );
        Ok(())
    })
}

fn check(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(_) => {
            #[allow(clippy::print_stdout)] // `weir check` reports on the terminal
            {
                println!("{}: ok", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            report(&errors);
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stderr)] // config errors are for the person at the terminal
fn report(errors: &weir::config::ConfigErrors) {
    for e in &errors.0 {
        eprintln!("{e}");
    }
}
