//! `concerto`: runs Concerto programs compiled to IR by `concertoc`.
//!
//! Exit status: 0 when `main` returns, 1 on an uncaught runtime error, 2 when the IR cannot
//! be loaded or the command line is wrong.
#![allow(clippy::print_stderr, reason = "the CLI reports to its own stderr")]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use concerto_runtime::emit::{JsonLinesSink, TextSink};
use concerto_runtime::{Limits, ProcessSystem, Runtime, RuntimeConfig, RuntimeError};

/// Run Concerto programs compiled to IR (`.conc-ir`) by `concertoc`.
#[derive(Parser)]
#[command(name = "concerto", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Execute an IR file.
    ///
    /// Emits go to stdout: one line per emit, `[emit:channel] payload` (text) or
    /// `{"channel": …, "payload": …}` (jsonl). With jsonl, `print` output and diagnostics go to
    /// stderr so stdout carries only emits.
    Run {
        /// The `.conc-ir` file.
        file: PathBuf,
        /// How emits are written to stdout.
        #[arg(long, value_enum, default_value_t = EmitFormat::Text)]
        emit_format: EmitFormat,
        /// Stop the program after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300.0)]
        timeout: f64,
        /// Maximum nesting of calls.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        max_call_depth: usize,
        /// Do not print emits (text format only).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Load and validate an IR file without running it.
    Check {
        /// The `.conc-ir` file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EmitFormat {
    /// `[emit:channel] payload`, for people.
    Text,
    /// JSON lines, for programs.
    Jsonl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Command::Check { file } => match concerto_runtime::ir::load_path(&file) {
            Ok(program) => {
                for warning in &program.warnings {
                    eprintln!("warning: {warning}");
                }
                eprintln!(
                    "ok: {} functions, {} instructions",
                    program.functions.len(),
                    program.instruction_count()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: failed to load IR `{}`: {err}", file.display());
                ExitCode::from(2)
            }
        },
        Command::Run {
            file,
            emit_format,
            timeout,
            max_call_depth,
            quiet,
        } => run(file, emit_format, timeout, max_call_depth, quiet),
    }
}

fn run(
    file: PathBuf,
    format: EmitFormat,
    timeout: f64,
    max_call_depth: usize,
    quiet: bool,
) -> ExitCode {
    if !(timeout.is_finite() && timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let config = RuntimeConfig {
        execution_timeout: Duration::from_secs_f64(timeout.min(1e9)),
        ..RuntimeConfig::default()
    };
    let mut runtime = Runtime::new(config);
    runtime.set_limits(Limits::default().with_max_call_depth(max_call_depth));
    let print_out = match format {
        EmitFormat::Jsonl => concerto_runtime::stderr_writer(),
        EmitFormat::Text => concerto_runtime::stdout_writer(),
    };
    runtime.with_system(Arc::new(ProcessSystem::with_output(
        print_out,
        concerto_runtime::stderr_writer(),
    )));
    match format {
        EmitFormat::Jsonl => runtime.add_emit_sink(Arc::new(JsonLinesSink::new(std::io::stdout()))),
        EmitFormat::Text if !quiet => {
            runtime.add_emit_sink(Arc::new(TextSink::new(std::io::stdout())))
        }
        EmitFormat::Text => {}
    }
    if let Err(err) = runtime.load_ir(&file) {
        eprintln!(
            "error: failed to load IR `{}`: {}",
            file.display(),
            load_reason(&err)
        );
        return ExitCode::from(2);
    }
    if let Some(program) = runtime.program() {
        for warning in &program.warnings {
            eprintln!("warning: {warning}");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(runtime.execute());
    let _ = std::io::stdout().flush();
    for panic in runtime.listener_panics() {
        eprintln!("warning: {panic}");
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(RuntimeError::Execution(err)) => {
            eprintln!("runtime error: {}", err.message());
            let trace = err.trace();
            if trace.is_empty() {
                if let Some(loc) = err.location() {
                    eprintln!("  in {loc}");
                }
            }
            print_trace(trace);
            ExitCode::from(1)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

/// Prints a call trace, folding runs of identical frames (deep recursion) into one line.
fn print_trace(trace: &[concerto_runtime::vm::Location]) {
    let mut idx = 0;
    while idx < trace.len() {
        let loc = &trace[idx];
        let mut run = 1;
        while idx + run < trace.len() && trace[idx + run] == *loc {
            run += 1;
        }
        let lead = if idx == 0 { "in" } else { "called from" };
        if &*loc.function == "..." {
            eprintln!("  ... (frames omitted)");
        } else if run > 1 {
            eprintln!("  {lead} {loc} (×{run})");
        } else {
            eprintln!("  {lead} {loc}");
        }
        idx += run;
    }
}

fn load_reason(err: &RuntimeError) -> String {
    match err {
        RuntimeError::Load(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
