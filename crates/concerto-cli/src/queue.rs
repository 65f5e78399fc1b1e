//! `concerto submit`, `concerto worker`, `concerto watch` and `concerto queue stats`: runs
//! queued on Redis Streams and executed by a pool of workers
//! (`concerto_runtime::queue`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use concerto_runtime::queue::{
    Queue, QueueStats, RunEvent, RunFactory, RunRequest, RunState, Worker, WorkerOptions,
};
use concerto_runtime::vm::host::HostError;
use concerto_runtime::{Runtime, RuntimeError, StateStore};

use crate::{EmitFormat, Execution, Source};

/// `--queue redis://HOST:PORT/DB[/NAME]`
#[derive(clap::Args)]
pub(crate) struct QueueArg {
    /// The queue: a Redis server and database, and the queue's name (default `default`).
    #[arg(long, value_name = "redis://HOST:PORT/DB[/NAME]")]
    queue: String,
}

/// `concerto submit` options.
#[derive(clap::Args)]
pub(crate) struct SubmitArgs {
    /// The `.conc-ir` file, or Concerto source (`.conc`), compiled first with concertoc.
    file: PathBuf,
    #[command(flatten)]
    queue: QueueArg,
    /// A variable the run's program may read (`std::env`), when the worker's `--allow-env`
    /// lets it; it cannot replace a variable of the worker's own environment. Repeatable.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// The concertoc to compile a `.conc` file with (default: `concertoc` on PATH).
    #[arg(long, value_name = "PATH")]
    compiler: Option<PathBuf>,
}

/// `concerto worker` options.
#[derive(clap::Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    queue: QueueArg,
    /// Runs executed at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
    /// Where the runs' journals, hashmaps, ledgers and memories live: an SQLite file or a
    /// Redis server [default: the queue's Redis server].
    #[arg(long = "state", value_name = "FILE.db|redis://HOST:PORT/DB")]
    state: Option<String>,
    /// The worker's name in the consumer group [default: HOST-PID].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// A run whose worker has not renewed its lease for this long is claimed by another
    /// worker and resumed from its journal.
    #[arg(long = "lease", value_name = "SECS", default_value_t = 10.0)]
    lease: f64,
    /// A run whose lease was lost this many times is dead-lettered at the next.
    #[arg(long = "max-attempts", value_name = "N", default_value_t = 3)]
    max_attempts: u64,
    /// How long a finished run's result and emits are kept.
    #[arg(long = "keep-results", value_name = "SECS", default_value_t = 7.0 * 24.0 * 3600.0)]
    keep_results: f64,
    /// On SIGTERM or Ctrl-C: how long running runs may take to finish before they are
    /// handed back to the queue.
    #[arg(long = "shutdown-grace", value_name = "SECS", default_value_t = 30.0)]
    shutdown_grace: f64,
    #[command(flatten)]
    exec: Execution,
}

/// `concerto watch` options.
#[derive(clap::Args)]
pub(crate) struct WatchArgs {
    /// The run's id (the last word `concerto submit` printed).
    run: String,
    #[command(flatten)]
    queue: QueueArg,
    /// How emits are written to stdout.
    #[arg(long, value_enum, default_value_t = EmitFormat::Text)]
    emit_format: EmitFormat,
}

/// `concerto queue` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum QueueCommand {
    /// Counts: queued, running (by worker), done, failed, dead-lettered.
    Stats {
        #[command(flatten)]
        queue: QueueArg,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Count finished runs of this many seconds back (the workers' --keep-results).
        #[arg(long = "keep-results", value_name = "SECS", default_value_t = 7.0 * 24.0 * 3600.0)]
        keep_results: f64,
    },
}

/// A positive number of seconds, or a message naming the flag.
fn seconds(flag: &str, secs: f64) -> Result<Duration, ExitCode> {
    if secs.is_finite() && secs > 0.0 {
        Ok(Duration::from_secs_f64(secs.min(1e9)))
    } else {
        eprintln!("error: --{flag} must be a positive number of seconds");
        Err(ExitCode::from(2))
    }
}

/// A multi-threaded async runtime (the worker runs runs on every core).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::from(1)
        })
}

async fn connect(queue: &QueueArg) -> Result<Queue, ExitCode> {
    Queue::connect(&queue.queue).await.map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

pub(crate) fn submit(args: SubmitArgs) -> ExitCode {
    let mut vars = Vec::new();
    for entry in &args.vars {
        match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => {
                vars.push((name.to_string(), value.to_string()));
            }
            _ => {
                eprintln!("error: --var expects NAME=VALUE, got `{entry}`");
                return ExitCode::from(2);
            }
        }
    }
    let source = match Source::prepare(&args.file, args.compiler.as_deref()) {
        Ok(source) => source,
        Err(code) => return code,
    };
    let ir = match std::fs::read(&source.ir) {
        Ok(ir) => ir,
        Err(err) => {
            eprintln!("error: cannot read `{}`: {err}", source.ir.display());
            return ExitCode::from(2);
        }
    };
    // Refused here rather than by every worker.
    if let Err(err) = concerto_runtime::ir::load_bytes(&ir) {
        eprintln!("error: failed to load IR `{}`: {err}", args.file.display());
        return ExitCode::from(2);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let queue = match connect(&args.queue).await {
            Ok(queue) => queue,
            Err(code) => return code,
        };
        match queue.submit(&ir, &vars).await {
            Ok(run) => {
                let _ = writeln!(
                    std::io::stdout(),
                    "submitted to queue `{}`: run {run}",
                    queue.name()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        }
    })
}

/// This machine's name, for the default worker name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

pub(crate) fn worker(args: WorkerArgs) -> ExitCode {
    let WorkerArgs {
        queue,
        concurrency,
        state,
        name,
        lease,
        max_attempts,
        keep_results,
        shutdown_grace,
        exec,
    } = args;
    let durations = (
        seconds("lease", lease),
        seconds("keep-results", keep_results),
        seconds("shutdown-grace", shutdown_grace),
    );
    let (Ok(lease), Ok(keep_results), Ok(shutdown_grace)) = durations else {
        return ExitCode::from(2);
    };
    if concurrency == 0 || max_attempts == 0 {
        eprintln!("error: --concurrency and --max-attempts must be at least 1");
        return ExitCode::from(2);
    }
    let settings = match exec.settings(None) {
        Ok(settings) => Arc::new(settings),
        Err(code) => return code,
    };
    // The env file is read now, so a bad one stops the worker before it takes a run.
    if let Err(code) = crate::system(
        concerto_runtime::stderr_writer(),
        settings.env_file.as_deref(),
    ) {
        return code;
    }
    let file_vars: Vec<String> = match &settings.env_file {
        Some(path) => match crate::read_env_file(path) {
            Ok(vars) => vars.into_iter().map(|(name, _)| name).collect(),
            Err(_) => Vec::new(),
        },
        None => Vec::new(),
    };
    let name = name.unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()));
    let mut options = WorkerOptions::new(&name);
    options.concurrency = concurrency;
    options.lease = lease;
    options.max_attempts = max_attempts;
    options.keep_results = keep_results;
    options.shutdown_grace = shutdown_grace;
    options.state = state.as_deref().map(StateStore::parse);
    let factory: RunFactory =
        Arc::new(move |request: &RunRequest| {
            // The worker's environment is the worker's: a run's variables add to it only.
            if let Some((var, _)) = request.env.iter().find(|(var, _)| {
                std::env::var_os(var).is_some() || file_vars.iter().any(|f| f == var)
            }) {
                return Err(RuntimeError::Host(HostError::failed(format!(
                    "the run's variable {var} would replace one of the worker's own environment; \
                 submitted variables may only add new ones"
                ))));
            }
            let builder = Runtime::builder().config(settings.runtime_config());
            settings
                .apply(builder, concerto_runtime::stderr_writer(), &request.env)
                .map_err(|_| {
                    RuntimeError::Host(HostError::failed("the worker's --env file cannot be read"))
                })
        });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let stop = shutdown_signal();
        let worker = match Worker::connect(&queue.queue, options, factory).await {
            Ok(worker) => worker,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        let worker = Arc::new(worker.on_warning(|message| eprintln!("warning: {message}")));
        eprintln!(
            "worker {name}: taking runs from queue `{}` (concurrency {concurrency})",
            worker.queue().name()
        );
        match worker.run_until(stop).await {
            Ok(report) => {
                eprintln!(
                    "worker {name}: stopped: {} taken, {} done, {} failed, {} lost to another \
                     worker, {} handed back, {} left for another attempt",
                    report.taken,
                    report.done,
                    report.failed,
                    report.lost,
                    report.handed_back,
                    report.left
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        }
    })
}

/// SIGTERM or Ctrl-C: the handlers are installed when this is called (inside the async
/// runtime, before the worker connects), so a signal that arrives while the worker is still
/// starting stops it gracefully too; the future completes on the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) fn watch(args: WatchArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let queue = match connect(&args.queue).await {
            Ok(queue) => queue,
            Err(code) => return code,
        };
        let format = args.emit_format;
        let ended = concerto_runtime::queue::watch(&queue, &args.run, |event| {
            if let RunEvent::Emit { channel, payload } = event {
                let line = match format {
                    EmitFormat::Jsonl => {
                        serde_json::json!({"channel": channel, "payload": payload}).to_string()
                    }
                    EmitFormat::Text => format!("[emit:{channel}] {}", display(payload)),
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        })
        .await;
        match ended {
            Ok(RunEvent::End {
                state: RunState::Done,
                result,
                ..
            }) => {
                let result = result.map_or_else(|| "nil".to_string(), |r| r.to_string());
                eprintln!("run {}: done: {result}", args.run);
                ExitCode::SUCCESS
            }
            Ok(RunEvent::End { state, error, .. }) => {
                eprintln!(
                    "run {}: {}: {}",
                    args.run,
                    state.name(),
                    error.unwrap_or_default()
                );
                ExitCode::from(1)
            }
            Ok(RunEvent::Emit { .. }) => ExitCode::from(1),
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        }
    })
}

/// A payload as the text format shows it: strings bare, everything else as JSON.
fn display(payload: &serde_json::Value) -> String {
    match payload {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn queue_command(command: QueueCommand) -> ExitCode {
    let QueueCommand::Stats {
        queue,
        json,
        keep_results,
    } = command;
    let Ok(keep) = seconds("keep-results", keep_results) else {
        return ExitCode::from(2);
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let client = match connect(&queue).await {
            Ok(client) => client,
            Err(code) => return code,
        };
        match client.stats(keep).await {
            Ok(stats) => {
                let _ = writeln!(std::io::stdout(), "{}", render(&stats, client.name(), json));
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(1)
            }
        }
    })
}

fn render(stats: &QueueStats, name: &str, json: bool) -> String {
    if json {
        return serde_json::json!({
            "queue": name,
            "queued": stats.queued,
            "running": stats.running,
            "done": stats.done,
            "failed": stats.failed,
            "dead": stats.dead,
            "running_by_worker": stats.by_worker,
        })
        .to_string();
    }
    let mut out = format!(
        "queue `{name}`: {} queued, {} running, {} done, {} failed, {} dead-lettered",
        stats.queued, stats.running, stats.done, stats.failed, stats.dead
    );
    for (worker, n) in &stats.by_worker {
        out.push_str(&format!("\n  {worker}: {n} running"));
    }
    out
}
