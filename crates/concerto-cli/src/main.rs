//! `concerto`: runs Concerto programs compiled to IR by `concertoc` (or Concerto source,
//! compiled with the `concertoc` found on `PATH`), and their tests.
//!
//! Exit status: 0 when `main` returns (every test passed), 1 on an uncaught runtime error
//! (a failed test), 2 when the program cannot be compiled or loaded or the command line is
//! wrong.
#![allow(clippy::print_stderr, reason = "the CLI reports to its own stderr")]

mod answers;
mod config_file;
mod queue;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use concerto_runtime::emit::{JsonLinesSink, TextSink};
use concerto_runtime::progress::StatusLine;
use concerto_runtime::{
    Limits, ProcessSystem, Runtime, RuntimeBuilder, RuntimeConfig, RuntimeError, Sandbox,
    ToolPermission,
};

/// mimalloc instead of the system allocator: a run allocates and frees many small values
/// (strings, arrays, maps, JSON trees), which mimalloc's per-thread free lists serve faster.
/// Default feature `mimalloc`; without it the binary uses the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version line: this runtime's version and the compilers whose IR it runs.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (runs IR from concertoc 1a8ede9 and 7ad10db)"
);

/// Run Concerto programs compiled to IR (`.conc-ir`) by `concertoc`, or Concerto source
/// (`.conc`) with the `concertoc` on PATH.
#[derive(Parser)]
#[command(
    name = "concerto",
    version = VERSION,
    about,
    long_about = None,
    after_help = "Examples:\n  concerto run program.conc-ir\n  concerto run app.conc    compile with concertoc, then run\n  \
                  concerto run program.conc-ir --env .env\n  \
                  concerto run program.conc-ir --debug    trace every op to stderr\n  \
                  concerto run program.conc-ir --metrics\n  concerto test program.conc-ir --filter auth\n\n\
                  See `concerto run --help` for all options."
)]
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
    Run(Box<RunArgs>),
    /// Run the program's `@test` functions (never `main`), each in a fresh execution with a
    /// fresh in-memory store; one PASS/FAIL line per test and a summary. Exits 1 when any
    /// test fails.
    Test(Box<TestArgs>),
    /// Load and validate a program without running it; says which compiler's IR shape the
    /// file has.
    Check {
        /// The `.conc-ir` file (or `.conc` source, compiled with concertoc).
        file: PathBuf,
        /// The concertoc to compile a `.conc` file with (default: `concertoc` on PATH).
        #[arg(long, value_name = "PATH")]
        compiler: Option<PathBuf>,
    },
    /// Enqueue a run of a program on a Redis queue; prints the run's id as the last word.
    /// Workers (`concerto worker`) take and execute it; `concerto watch` follows it.
    Submit(Box<queue::SubmitArgs>),
    /// Take runs from a Redis queue and execute them, journaled and under a renewed lease:
    /// a run whose worker dies is resumed by another from its journal. Limits and
    /// permissions are this command's flags, never the submitter's. SIGTERM or Ctrl-C stops
    /// taking runs, lets running ones finish (--shutdown-grace) and hands the rest back.
    Worker(Box<queue::WorkerArgs>),
    /// Follow a queued run: print its emits as they come, then its end. Exits 0 when it
    /// is done, 1 when it failed or was dead-lettered.
    Watch(Box<queue::WatchArgs>),
    /// Inspect a Redis queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Print a shell completion script to stdout (e.g. `concerto completions bash >
    /// ~/.local/share/bash-completion/completions/concerto`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What a program may reach outside itself (`run`, `test` and `worker`).
#[derive(clap::Args, Clone)]
struct Access {
    /// Enable a tool, MCP server, host agent or host tool (`NAME`), or one method of it
    /// (`NAME.method`); repeatable. Everything that reaches outside the program is off
    /// until enabled.
    #[arg(long = "allow-tool", value_name = "NAME[.METHOD]")]
    allow_tool: Vec<String>,
    /// Switch a tool off (the program's own tools included; `std::fs`, `std::http` too);
    /// repeatable.
    #[arg(long = "disable-tool", value_name = "NAME")]
    disable_tool: Vec<String>,
    /// Let `std::fs` read and write inside DIR (recursively); repeatable.
    #[arg(long = "allow-fs", value_name = "DIR")]
    allow_fs: Vec<PathBuf>,
    /// Let `std::http`, a connection's `base_url` and an MCP server's URL reach DOMAIN
    /// (`std::http` and MCP check every redirect hop; connections follow none): that name
    /// only; `*.example.com` for subdomains; `localhost`, IP literals and `:port` suffixes
    /// work too (anything else, such as a URL, is refused); repeatable. A connection reaches
    /// its provider's own API without it, and its key goes to a host allowed here.
    #[arg(long = "allow-net", value_name = "DOMAIN")]
    allow_net: Vec<String>,
    /// Let the program read environment variable NAME (`std::env`, `env()`), the MCP
    /// servers and agents it starts inherit it, and a connection may take its API key from
    /// it; `PREFIX_*` for every variable starting with `PREFIX_` (a bare `*` allows every
    /// variable, API keys included); repeatable. Any other variable, those of `--env FILE`
    /// included, reads as unset.
    #[arg(long = "allow-env", value_name = "NAME")]
    allow_env: Vec<String>,
}

impl Access {
    /// The tool permissions, into `config`.
    fn permissions(&self, config: &mut RuntimeConfig) {
        for entry in &self.allow_tool {
            // `NAME.method` allows one method; `NAME` all of them. (Tool names never contain
            // a dot; `std::fs`-style names are whole names.)
            match entry.rsplit_once('.') {
                Some((tool, method)) if !tool.is_empty() && !method.is_empty() => {
                    let perm = config
                        .tool_permissions
                        .entry(tool.to_string())
                        .or_insert_with(|| ToolPermission::Methods(Vec::new()));
                    if let ToolPermission::Methods(list) = perm {
                        list.push(method.to_string());
                    }
                }
                _ => {
                    config
                        .tool_permissions
                        .insert(entry.clone(), ToolPermission::AllMethods);
                }
            }
        }
        for name in &self.disable_tool {
            config
                .tool_permissions
                .insert(name.clone(), ToolPermission::Disabled);
        }
    }

    /// [`Access::sandbox`], with `keys` (the variables of `--env FILE`) approved as API-key
    /// variables of connections.
    fn sandbox_with_keys(&self, keys: &[String]) -> Sandbox {
        keys.iter()
            .fold(self.sandbox(), |sandbox, key| sandbox.allow_key_env(key))
    }

    /// The sandbox of `std::fs`, `std::http` and `std::env`.
    fn sandbox(&self) -> Sandbox {
        let mut sandbox = Sandbox::default();
        for dir in &self.allow_fs {
            sandbox = sandbox.allow_fs(dir);
        }
        for domain in &self.allow_net {
            sandbox = sandbox.allow_net(domain);
        }
        for name in &self.allow_env {
            sandbox = sandbox.allow_env(name);
        }
        sandbox
    }
}

/// `concerto test` options.
#[derive(clap::Args)]
struct TestArgs {
    /// The `.conc-ir` file (or `.conc` source, compiled with concertoc).
    file: PathBuf,
    /// Run only the tests whose description contains TEXT (`auth` matches `auth :: login`).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Print only failures and the summary.
    #[arg(long, short)]
    quiet: bool,
    /// The concertoc to compile a `.conc` file with (default: `concertoc` on PATH).
    #[arg(long, value_name = "PATH")]
    compiler: Option<PathBuf>,
    /// Stop each test after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    timeout: f64,
    /// Read environment variables (API keys, …) from a dotenv file.
    #[arg(long = "env", value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Answer model calls that no `mock` covers from the built-in mock provider.
    #[arg(long)]
    mock: bool,
    /// Not available: every test runs with a fresh in-memory store.
    #[arg(long = "state", value_name = "STORE", hide = true)]
    state: Option<String>,
    #[command(flatten)]
    access: Access,
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
    let debug = matches!(&cli.command, Command::Run(args) if args.debug);
    // `run --trace FILE`: the run's spans are collected from the start.
    let chrome = match &cli.command {
        Command::Run(args) if args.trace.is_some() => Some(concerto_runtime::ChromeTrace::new()),
        _ => None,
    };
    // `run --otlp URL` or the standard variable: the spans are exported as they end. Made
    // before any async runtime exists (its HTTP client is a blocking one).
    let otlp = match &cli.command {
        Command::Run(args) if args.otlp.is_some() || concerto_runtime::otel::endpoint_in_env() => {
            match concerto_runtime::otel::OtlpExport::new(args.otlp.as_deref()) {
                Ok(export) => Some(export),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    // `run`: the live status line, counting from the run's spans.
    let status = match &cli.command {
        Command::Run(args) => status_line(args),
        _ => None,
    };
    init_logging(debug, chrome.clone(), otlp.as_ref(), status.as_ref());
    match cli.command {
        Command::Check { file, compiler } => {
            let source = match Source::prepare(&file, compiler.as_deref()) {
                Ok(source) => source,
                Err(code) => return code,
            };
            match concerto_runtime::ir::load_path(&source.ir) {
                Ok(program) => {
                    for warning in &program.warnings {
                        eprintln!("warning: {warning}");
                    }
                    eprintln!(
                        "ok: {} functions, {} instructions, {} tests; IR shape: {}",
                        program.functions.len(),
                        program.instruction_count(),
                        program.tests.len(),
                        program.dialect.describe()
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: failed to load IR `{}`: {err}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Run(args) => {
            let code = run(*args, chrome, status);
            // Everything the run's spans still have queued goes out before the process ends.
            if let Some(export) = &otlp
                && let Err(e) = export.shutdown()
            {
                eprintln!("warning: {e}");
            }
            code
        }
        Command::Submit(args) => queue::submit(*args),
        Command::Worker(args) => queue::worker(*args),
        Command::Watch(args) => queue::watch(*args),
        Command::Queue(command) => queue::queue_command(command),
        Command::Test(args) => test(*args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "concerto",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

/// The IR to load: the file the user named, or (for `.conc` source) what concertoc wrote
/// into a temporary folder, kept until this is dropped.
struct Source {
    ir: PathBuf,
    /// The folder of the file the user named.
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Source {
    /// Compiles `file` when it is Concerto source (`.conc`); failures are reported here and
    /// come back as the exit code.
    fn prepare(
        file: &std::path::Path,
        compiler: Option<&std::path::Path>,
    ) -> Result<Source, ExitCode> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        if file.extension().and_then(|e| e.to_str()) != Some("conc") {
            return Ok(Source {
                ir: file.to_path_buf(),
                dir,
                _tmp: None,
            });
        }
        let compiler = compiler.map_or_else(|| PathBuf::from("concertoc"), PathBuf::from);
        let tmp = tempfile::Builder::new()
            .prefix("concerto-")
            .tempdir()
            .map_err(|e| {
                eprintln!("error: cannot create a temporary folder for the IR: {e}");
                ExitCode::from(2)
            })?;
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("program");
        let ir = tmp.path().join(format!("{stem}.conc-ir"));
        // concertoc finds the project's Concerto.toml from the source's folder.
        let output = std::process::Command::new(&compiler)
            .arg(file)
            .arg("-o")
            .arg(&ir)
            .stdin(std::process::Stdio::null())
            .output();
        match output {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "error: `{}` is Concerto source and needs the compiler, but `{}` was not \
                     found. Install concertoc (build it from the Concerto repository: \
                     `cargo build --release -p concertoc`, then put target/release/concertoc \
                     on PATH) or name it with --compiler PATH; or run the compiled \
                     `.conc-ir` file instead",
                    file.display(),
                    compiler.display()
                );
                Err(ExitCode::from(2))
            }
            Err(e) => {
                eprintln!("error: cannot run `{}`: {e}", compiler.display());
                Err(ExitCode::from(2))
            }
            Ok(out) if !out.status.success() || !ir.exists() => {
                let _ = std::io::stderr().write_all(&out.stderr);
                let _ = std::io::stderr().write_all(&out.stdout);
                eprintln!(
                    "error: `{}` did not compile ({})",
                    file.display(),
                    out.status
                );
                Err(ExitCode::from(2))
            }
            Ok(_) => Ok(Source {
                ir,
                dir,
                _tmp: Some(tmp),
            }),
        }
    }
}

/// What `run` and `test` set up alike: the program (compiled first when it is source), a
/// runtime builder with the timeout, the permissions, the sandbox and the program's folder.
fn setup(
    file: &std::path::Path,
    compiler: Option<&std::path::Path>,
    timeout: f64,
    access: &Access,
    overrides: HashMap<String, concerto_runtime::ConnectionOverride>,
) -> Result<(Source, RuntimeBuilder), ExitCode> {
    if !(timeout.is_finite() && timeout > 0.0) {
        eprintln!("error: --timeout must be a positive number of seconds");
        return Err(ExitCode::from(2));
    }
    let source = Source::prepare(file, compiler)?;
    // The sandbox comes with the system (`sandbox_with_keys`): the env file's variables are
    // approved key variables.
    let builder = Runtime::builder()
        .config(runtime_config(timeout, access, overrides))
        .program_dir(&source.dir);
    Ok((source, builder))
}

/// The runtime configuration of a command: the timeout, the connection overrides and the
/// tool permissions.
fn runtime_config(
    timeout: f64,
    access: &Access,
    overrides: HashMap<String, concerto_runtime::ConnectionOverride>,
) -> RuntimeConfig {
    let mut config = RuntimeConfig {
        execution_timeout: Duration::from_secs_f64(timeout.min(1e9)),
        connection_overrides: overrides,
        ..RuntimeConfig::default()
    };
    access.permissions(&mut config);
    config
}

/// The console (`print` to `print_out`, diagnostics to stderr) and environment, with the
/// variables of `--env FILE`, and the names of those variables (connections may read keys
/// from them; the program may not, unless `--allow-env` says so).
fn system(
    print_out: concerto_runtime::TextOut,
    env_file: Option<&std::path::Path>,
) -> Result<(ProcessSystem, Vec<String>), ExitCode> {
    system_with_log(print_out, concerto_runtime::stderr_writer(), env_file)
}

/// [`system`] with `std::log` lines going to `log_out`.
fn system_with_log(
    print_out: concerto_runtime::TextOut,
    log_out: concerto_runtime::TextOut,
    env_file: Option<&std::path::Path>,
) -> Result<(ProcessSystem, Vec<String>), ExitCode> {
    let system = ProcessSystem::with_output(print_out, log_out);
    let Some(path) = env_file else {
        return Ok((system, Vec::new()));
    };
    match read_env_file(path) {
        Ok(vars) => {
            let names = vars.iter().map(|(name, _)| name.clone()).collect();
            Ok((system.with_env(vars), names))
        }
        Err(err) => {
            eprintln!("error: cannot read env file `{}`: {err}", path.display());
            Err(ExitCode::from(2))
        }
    }
}

/// Builds the runtime; a setting it refuses is reported.
fn build(builder: RuntimeBuilder) -> Result<Runtime, ExitCode> {
    builder.build().map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::from(2)
    })
}

/// Loads the program (relative paths resolve against the folder `setup` chose).
fn load(runtime: &mut Runtime, source: &Source, file: &std::path::Path) -> Result<(), ExitCode> {
    runtime.load_ir(&source.ir).map_err(|err| {
        eprintln!(
            "error: failed to load IR `{}`: {}",
            file.display(),
            load_reason(&err)
        );
        ExitCode::from(2)
    })
}

/// The single-threaded async runtime a command runs on.
fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("error: cannot start the async runtime: {err}");
            ExitCode::from(1)
        })
}

fn test(args: TestArgs) -> ExitCode {
    let TestArgs {
        file,
        filter,
        quiet,
        compiler,
        timeout,
        env_file,
        mock,
        state,
        access,
    } = args;
    if state.is_some() {
        eprintln!(
            "error: --state cannot be used with `concerto test`: every test runs with a fresh \
             in-memory store, so tests never read or change a real store"
        );
        return ExitCode::from(2);
    }
    let (source, mut builder) =
        match setup(&file, compiler.as_deref(), timeout, &access, HashMap::new()) {
            Ok(prepared) => prepared,
            Err(code) => return code,
        };
    match system(concerto_runtime::stderr_writer(), env_file.as_deref()) {
        Ok((system, keys)) => {
            builder = builder
                .system(Arc::new(system))
                .sandbox(access.sandbox_with_keys(&keys));
        }
        Err(code) => return code,
    };
    if mock {
        builder = builder.mock_provider();
    }
    let mut runtime = match build(builder) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Err(code) = load(&mut runtime, &source, &file) {
        return code;
    }
    let rt = match async_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let report = rt.block_on(runtime.run_tests(filter.as_deref()));
    // MCP sessions and host agents are closed gracefully before the command exits.
    rt.block_on(runtime.shutdown());
    let report = match report {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let mut out = String::new();
    let total = report.outcomes.len();
    out.push_str(&format!(
        "running {total} test{}",
        if total == 1 { "" } else { "s" }
    ));
    if report.filtered_out > 0 {
        out.push_str(&format!(" ({} filtered out)", report.filtered_out));
    }
    out.push_str("\n\n");
    for o in &report.outcomes {
        if quiet && o.passed {
            continue;
        }
        let status = if o.passed { "PASS" } else { "FAIL" };
        let suffix = if o.passed && o.expect_fail {
            " (expected failure)"
        } else {
            ""
        };
        out.push_str(&format!("  {status}  {}{suffix}\n", o.description));
    }
    let (passed, failed) = (report.passed(), report.failed());
    out.push_str(&format!(
        "\ntest result: {}. {passed} passed, {failed} failed\n",
        if failed == 0 { "ok" } else { "FAILED" }
    ));
    let failures: Vec<_> = report.outcomes.iter().filter(|o| !o.passed).collect();
    if !failures.is_empty() {
        out.push_str("\nfailures:\n");
        for o in failures {
            out.push_str(&format!(
                "  {} -- {}\n",
                o.description,
                o.message.as_deref().unwrap_or("failed")
            ));
        }
    }
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `concerto run` options.
#[derive(clap::Args)]
struct RunArgs {
    /// The `.conc-ir` file, or Concerto source (`.conc`), compiled first with concertoc.
    file: PathBuf,
    /// How emits are written to stdout.
    #[arg(long, value_enum, default_value_t = EmitFormat::Text)]
    emit_format: EmitFormat,
    #[command(flatten)]
    exec: Execution,
    /// Do not print emits (text format only).
    #[arg(long, short)]
    quiet: bool,
    /// Write every LLM request and response of the run to FILE as JSON lines (a new file:
    /// an existing one is replaced).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Answer LLM requests from a recording made with --record, without network.
    #[arg(long, value_name = "FILE", conflicts_with = "mock")]
    replay: Option<PathBuf>,
    /// Print metrics (calls, tokens, cost, time) to stderr after the run.
    #[arg(long)]
    metrics: bool,
    /// Write the run's spans (the run, its tasks, agent calls, their requests and HTTP
    /// attempts, tool calls) to FILE as Chrome Trace Event JSON, for ui.perfetto.dev or
    /// chrome://tracing: which calls ran in parallel and where the time went. Written when
    /// the run ends, whatever its outcome (an existing file is replaced); a FILE that cannot
    /// be created is refused before the program runs.
    #[arg(long, value_name = "FILE.json")]
    trace: Option<PathBuf>,
    /// Export the run's spans over OTLP/HTTP (protobuf) to the collector at URL, a base URL
    /// as in OTEL_EXPORTER_OTLP_ENDPOINT (spans go to URL/v1/traces): Jaeger, Grafana
    /// Tempo, Honeycomb, Arize Phoenix, Langfuse. Without it, a non-empty
    /// OTEL_EXPORTER_OTLP_ENDPOINT (a base URL) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (the
    /// full URL) turns the export on.
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// Put the text of prompts and replies on the spans of model requests
    /// (gen_ai.input.messages, gen_ai.output.messages) in --trace and --otlp output. Off by
    /// default: without it the spans carry no prompt or completion text.
    #[arg(long)]
    trace_content: bool,
    /// Show the live status line on stderr even when it would be off: stderr not a terminal
    /// (then it is written as plain lines, a new one each time it changes), --quiet,
    /// --emit-format jsonl, --debug. The line shows the agent calls in flight and done,
    /// retries, fallbacks, tokens and cost so far, and the elapsed time; on a terminal it is
    /// on by default and cleared when the run ends.
    #[arg(long)]
    progress: bool,
    /// The concertoc to compile a `.conc` file with (default: `concertoc` on PATH).
    #[arg(long, value_name = "PATH")]
    compiler: Option<PathBuf>,
    /// Keep hashmap NAME in the JSON file PATH: loaded before the run, saved atomically
    /// after it (a corrupt file is an error, never an empty start); repeatable.
    #[arg(long = "persist", value_name = "NAME=PATH")]
    persist: Vec<String>,
    /// Limit the memory held by hashmaps (estimated bytes); a write past it stops the
    /// program with an error naming the hashmap. In-memory store only: refused with --state.
    #[arg(long = "max-hashmap-bytes", value_name = "BYTES")]
    max_hashmap_bytes: Option<usize>,
    /// Trace execution to stderr: one line per executed op with its function, IR
    /// instruction index (`pc`), op name and the top of the operand registers (`top`,
    /// shortened to 80 characters). The lines are log events of target `concerto::trace`
    /// at level TRACE: `RUST_LOG=concerto::trace=trace` turns them on as well, and
    /// RUST_LOG's other directives still apply. Runs slower than a normal run.
    #[arg(long)]
    debug: bool,
    /// Keep hashmaps, ledgers and memories in a durable or shared store instead of process
    /// memory: an SQLite file (`state.db`: every write committed before the program goes on)
    /// or a Redis server (`redis://HOST:PORT/DB`: shared by every runtime pointing at it).
    /// Runs are then journaled: the run id is printed on stderr.
    #[arg(long = "state", value_name = "FILE.db|redis://HOST:PORT/DB")]
    state: Option<String>,
    /// Resume run RUN_ID (needs --state): every effect the run had journaled — agent and
    /// tool calls, emit-await answers, std::fs and std::http operations, hashmap, ledger and
    /// memory reads and writes, the clock and randomness, emits — is replayed from the
    /// journal, not repeated; the effect in flight when the run stopped is performed again
    /// (at least once for it). Emits the run had delivered are not delivered again (see
    /// --replay-emits). An id with no journal starts that run.
    #[arg(long = "resume", value_name = "RUN_ID", requires = "state")]
    resume: Option<String>,
    /// With --resume: deliver again the emits the earlier run delivered (for a consumer that
    /// starts fresh and wants the program's whole output).
    #[arg(long = "replay-emits", requires = "resume")]
    replay_emits: bool,
    /// Answer emit-await from standard input (needs --emit-format jsonl): each emit-await is
    /// written to stdout as `{"channel": C, "payload": P, "await": true}` and its answer is
    /// read as one line of JSON from stdin; end of input or a line that is not JSON is an
    /// error for that emit-await.
    #[arg(long = "answer-awaits")]
    answer_awaits: bool,
}

/// Limits, permissions, connections and the mock: what `run` and `worker` take alike.
#[derive(clap::Args)]
struct Execution {
    /// Read connection overrides and fallbacks, permissions and limits from a TOML file
    /// (sections `[connections.NAME]`, `[permissions]`, `[limits]`). The permission flags
    /// add to the file's lists; a limit flag replaces the file's value.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stop the program after this many seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Maximum nesting of calls [default: 1000].
    #[arg(long, value_name = "N")]
    max_call_depth: Option<usize>,
    /// Stop the program after N steps (loop iterations and calls, counted the same way on
    /// every run) with a step-limit error.
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Answer every agent call from the built-in deterministic mock provider (offline;
    /// no API keys needed).
    #[arg(long)]
    mock: bool,
    /// With --mock: answer each agent call after this many milliseconds (demonstrations and
    /// tests of concurrency and resume).
    #[arg(long = "mock-latency-ms", value_name = "MS", requires = "mock")]
    mock_latency_ms: Option<u64>,
    /// Read environment variables (API keys, …) from a dotenv file; they take precedence
    /// over the process environment.
    #[arg(long = "env", value_name = "FILE")]
    env_file: Option<PathBuf>,
    #[command(flatten)]
    access: Access,
}

/// [`Execution`] read: the config file merged with the flags.
struct Settings {
    file: config_file::ConfigFile,
    config_path: Option<PathBuf>,
    access: Access,
    timeout: f64,
    limits: Limits,
    retry_budget: Option<u32>,
    mock: Option<Option<u64>>,
    env_file: Option<PathBuf>,
    /// Where the program's `std::log` lines go (stderr when none).
    log_out: Option<concerto_runtime::TextOut>,
}

impl Execution {
    /// Reads the config file and puts its permissions before the flags'; a limit flag wins
    /// over the file's value. Errors are reported here.
    fn settings(self, max_hashmap_bytes: Option<usize>) -> Result<Settings, ExitCode> {
        let file = match &self.config {
            Some(path) => config_file::ConfigFile::load(path).map_err(|err| {
                eprintln!("error: {err}");
                ExitCode::from(2)
            })?,
            None => config_file::ConfigFile::default(),
        };
        let mut access = self.access;
        let file_access = &file.permissions;
        for (flags, from_file) in [
            (&mut access.allow_tool, &file_access.allow_tool),
            (&mut access.disable_tool, &file_access.disable_tool),
            (&mut access.allow_net, &file_access.allow_net),
            (&mut access.allow_env, &file_access.allow_env),
        ] {
            flags.splice(0..0, from_file.iter().cloned());
        }
        access
            .allow_fs
            .splice(0..0, file_access.allow_fs.iter().cloned());
        let limits = &file.limits;
        let timeout = self.timeout.or(limits.timeout).unwrap_or(300.0);
        if !(timeout.is_finite() && timeout > 0.0) {
            eprintln!("error: --timeout must be a positive number of seconds");
            return Err(ExitCode::from(2));
        }
        let built = Limits::default()
            .with_max_call_depth(
                self.max_call_depth
                    .or(limits.max_call_depth)
                    .unwrap_or(1000),
            )
            .with_max_hashmap_bytes(max_hashmap_bytes.or(limits.max_hashmap_bytes))
            .with_max_steps(self.max_steps.or(limits.max_steps));
        let retry_budget = limits.retry_budget;
        Ok(Settings {
            config_path: self.config,
            access,
            timeout,
            limits: built,
            retry_budget,
            mock: self.mock.then_some(self.mock_latency_ms),
            env_file: self.env_file,
            log_out: None,
            file,
        })
    }
}

impl Settings {
    /// The runtime configuration: the timeout, the connection overrides, the permissions.
    fn runtime_config(&self) -> RuntimeConfig {
        runtime_config(self.timeout, &self.access, self.file.connection_overrides())
    }

    /// Adds the limits, the retry budget, the console and environment (the env file's
    /// variables, then `extra` over them) with the sandbox, and the mock to `builder`.
    fn apply(
        &self,
        mut builder: RuntimeBuilder,
        print_out: concerto_runtime::TextOut,
        extra: &[(String, String)],
    ) -> Result<RuntimeBuilder, ExitCode> {
        builder = builder.limits(self.limits.clone());
        if let Some(retries) = self.retry_budget {
            builder = builder.retry_budget(retries);
        }
        let log_out = self
            .log_out
            .clone()
            .unwrap_or_else(concerto_runtime::stderr_writer);
        let (system, keys) = system_with_log(print_out, log_out, self.env_file.as_deref())?;
        builder = builder
            .system(Arc::new(system.with_env(extra.iter().cloned())))
            .sandbox(self.access.sandbox_with_keys(&keys));
        Ok(match self.mock {
            Some(Some(ms)) => builder.mock_provider_with_latency(Duration::from_millis(ms)),
            Some(None) => builder.mock_provider(),
            None => builder,
        })
    }

    /// When the config file names a connection that is neither one of the program's nor a
    /// fallback's: reported, exit code 2.
    fn check_connections(&self, program: &concerto_runtime::ir::Program) -> Result<(), ExitCode> {
        let declared: Vec<&str> = program
            .connections
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if let (Some(path), Some(name)) = (
            &self.config_path,
            self.file.unused_connections(&declared).first(),
        ) {
            eprintln!(
                "error: config file `{}`: connections.{name} is neither a connection of the \
                 program ({}) nor a fallback's connection",
                path.display(),
                if declared.is_empty() {
                    "it declares none".to_string()
                } else {
                    declared.join(", ")
                }
            );
            return Err(ExitCode::from(2));
        }
        Ok(())
    }
}

/// The variables of a dotenv file.
fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, String> {
    let iter = dotenvy::from_path_iter(path).map_err(|e| e.to_string())?;
    iter.map(|item| item.map_err(|e| e.to_string())).collect()
}

fn run(
    args: RunArgs,
    chrome: Option<concerto_runtime::ChromeTrace>,
    status: Option<StatusLine>,
) -> ExitCode {
    let RunArgs {
        file,
        emit_format: format,
        exec,
        quiet,
        record,
        replay,
        metrics,
        trace: trace_file,
        otlp: _,
        trace_content,
        progress: _,
        compiler,
        persist,
        max_hashmap_bytes,
        debug,
        state,
        resume,
        replay_emits,
        answer_awaits,
    } = args;
    if answer_awaits && format != EmitFormat::Jsonl {
        eprintln!("error: --answer-awaits needs --emit-format jsonl");
        return ExitCode::from(2);
    }
    // The trace file is written when the run ends; a path that cannot take it is refused
    // before the program runs and has effects. The check leaves the path as it found it.
    if let Some(path) = &trace_file {
        let existed = path.exists();
        match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(_) if !existed => {
                let _ = std::fs::remove_file(path);
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: cannot write the trace to {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if resume.as_deref() == Some("") || state.as_deref() == Some("") {
        eprintln!("error: --state and --resume take a value that is not empty");
        return ExitCode::from(2);
    }
    let mut settings = match exec.settings(max_hashmap_bytes) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let source = match Source::prepare(&file, compiler.as_deref()) {
        Ok(source) => source,
        Err(code) => return code,
    };
    let builder = Runtime::builder()
        .config(RuntimeConfig {
            trace_content,
            ..settings.runtime_config()
        })
        .program_dir(&source.dir);
    let mut print_out = match format {
        EmitFormat::Jsonl => concerto_runtime::stderr_writer(),
        EmitFormat::Text => concerto_runtime::stdout_writer(),
    };
    // While the status line is shown, the program's output and the emits are written above
    // it, whole lines at a time (stdout and stderr are often the same terminal).
    if let Some(status) = &status {
        print_out = status.text_out(print_out);
        settings.log_out = Some(status.text_out(concerto_runtime::stderr_writer()));
    }
    let stdout = || -> Box<dyn Write + Send> {
        match &status {
            Some(status) => Box::new(status.writer(std::io::stdout())),
            None => Box::new(std::io::stdout()),
        }
    };
    let mut builder = match settings.apply(builder, print_out, &[]) {
        Ok(builder) => builder,
        Err(code) => return code,
    };
    if let Some(state) = &state {
        builder = builder
            .state_store(concerto_runtime::StateStore::parse(state))
            .replay_emits(replay_emits);
    }
    if let Some(path) = replay {
        builder = builder.replay_llm(path);
    }
    if let Some(path) = record {
        builder = builder.record_llm(path);
    }
    match format {
        EmitFormat::Jsonl => {
            builder = builder.emit_sink(Arc::new(JsonLinesSink::new(stdout())));
        }
        EmitFormat::Text if !quiet => {
            builder = builder.emit_sink(Arc::new(TextSink::new(stdout())));
        }
        EmitFormat::Text => {}
    }
    for entry in &persist {
        let Some((name, path)) = entry
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
        else {
            eprintln!("error: --persist expects NAME=PATH, got `{entry}`");
            return ExitCode::from(2);
        };
        builder = builder.persist_hashmap(name, path);
    }
    let mut runtime = match build(builder) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Err(code) = load(&mut runtime, &source, &file) {
        return code;
    }
    if answer_awaits {
        let answers = answers::Stdin::default();
        runtime.on_emit_any(move |channel, payload| answers.ask(channel, payload));
    }
    if let Some(program) = runtime.program() {
        for warning in &program.warnings {
            eprintln!("warning: {warning}");
        }
        if let Err(code) = settings.check_connections(program) {
            return code;
        }
    }
    let run_id = state.as_ref().map(|_| {
        let run_id = resume.clone().unwrap_or_else(|| runtime.new_run_id());
        // The store location may hold credentials (redis://:password@…): not printed.
        eprintln!("run id: {run_id} (resume with --resume {run_id} and the same --state)");
        run_id
    });
    let rt = match async_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    if let Some(status) = &status {
        status.start();
    }
    let trace = debug || tracing::enabled!(target: TRACE_TARGET, tracing::Level::TRACE);
    let result = if trace {
        // The interpreter's debug loop, with a tracer: the normal loop has no hook.
        let mut debugger = runtime.into_debugger();
        debugger.set_tracer(trace_op);
        // A traced run is journaled like any other.
        let result = rt.block_on(async {
            if let Some(run_id) = &run_id {
                debugger.journal_run(run_id).await?;
            }
            debugger.run_to_end().await
        });
        runtime = debugger.into_runtime();
        result
    } else if let Some(run_id) = &run_id {
        rt.block_on(runtime.execute_run(run_id))
    } else {
        rt.block_on(runtime.execute())
    };
    // MCP sessions and host agents are closed gracefully before the command exits.
    rt.block_on(runtime.shutdown());
    // Cleared (on a terminal) before anything else is reported.
    if let Some(status) = &status {
        status.finish();
    }
    let _ = std::io::stdout().flush();
    for panic in runtime.listener_panics() {
        eprintln!("warning: {panic}");
    }
    if metrics {
        print_metrics(runtime.metrics(), format);
    }
    // The runtime's spans are closed once it is dropped (a task's span lives as long as it).
    drop(runtime);
    drop(rt);
    let mut trace_failed = false;
    if let (Some(path), Some(chrome)) = (&trace_file, &chrome)
        && let Err(e) = chrome.write(path)
    {
        eprintln!(
            "error: could not write the trace to {}: {e}",
            path.display()
        );
        trace_failed = true;
    }
    match result {
        Ok(_) if trace_failed => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(RuntimeError::Execution(err)) => {
            eprintln!("runtime error: {}", err.message());
            let trace = err.trace();
            if trace.is_empty()
                && let Some(loc) = err.location()
            {
                eprintln!("  in {loc}");
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

/// The log target of `--debug` trace lines.
const TRACE_TARGET: &str = "concerto::trace";

/// Logs to stderr under `RUST_LOG`; `--debug` adds the trace target and drops timestamps
/// (one short line per op). Without `RUST_LOG`, errors are logged, except those of the MCP
/// SDK (`rmcp`): it logs failures the runtime reports itself, as the program's error or the
/// value it handles, so its lines show only when `RUST_LOG` asks for them
/// (`RUST_LOG=rmcp=debug`).
fn init_logging(
    debug: bool,
    chrome: Option<concerto_runtime::ChromeTrace>,
    otlp: Option<&concerto_runtime::otel::OtlpExport>,
    status: Option<&StatusLine>,
) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let asked = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    let mut filter = if asked {
        tracing_subscriber::EnvFilter::from_default_env()
    } else {
        tracing_subscriber::EnvFilter::new("error,rmcp=off")
    };
    if debug && let Ok(directive) = format!("{TRACE_TARGET}=trace").parse() {
        filter = filter.add_directive(directive);
    }
    // Log lines written while the status line is shown go above it.
    let writer = match status {
        Some(status) => {
            let status = status.clone();
            BoxMakeWriter::new(move || status.writer(std::io::stderr()))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let logger = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let logger = if debug {
        logger.without_time().with_filter(filter).boxed()
    } else {
        logger.with_filter(filter).boxed()
    };
    // `--trace`: the spans of the run, whatever RUST_LOG says about log lines.
    let chrome = chrome.map(|layer| {
        layer.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(concerto_runtime::vm::SPAN_TARGET, tracing::Level::INFO),
        )
    });
    let otlp = otlp.map(|export| export.layer());
    // The status line counts from the run's spans.
    let status = status.map(|layer| {
        layer.clone().with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(concerto_runtime::vm::SPAN_TARGET, tracing::Level::INFO),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(logger)
        .with(chrome)
        .with(otlp)
        .with(status)
        .try_init();
}

/// `run`'s live status line, or none: on when stderr is a terminal, unless --quiet,
/// --emit-format jsonl or --debug (whose trace lines fill stderr) turn it off; --progress
/// turns it on in every case. Drawn over itself on a terminal, else written as plain lines.
fn status_line(args: &RunArgs) -> Option<StatusLine> {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let by_default = terminal && !args.quiet && !args.debug && args.emit_format == EmitFormat::Text;
    if !(args.progress || by_default) {
        return None;
    }
    Some(if terminal {
        StatusLine::stderr()
    } else {
        StatusLine::lines(std::io::stderr())
    })
}

/// `--debug`: one trace line for an op about to run.
fn trace_op(event: &concerto_runtime::vm::TraceEvent<'_>) {
    const MAX: usize = 80;
    let top = match event.top {
        None => "-".to_string(),
        Some(concerto_runtime::vm::Value::Str(s)) => format!("{:?}", s.as_str()),
        Some(v) => v.to_display(),
    };
    let top = match top.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &top[..cut]),
        None => top,
    };
    tracing::trace!(
        target: TRACE_TARGET,
        function = %event.function,
        pc = event.pc,
        op = %concerto_runtime::vm::op_name(event.op),
        depth = event.depth,
        top = %top,
    );
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

/// `--metrics`: the run's counters on stderr — a table for people, or with `--emit-format
/// jsonl` one line `{"metrics": {…}}` (see `Metrics::to_json`) for programs.
fn print_metrics(m: &concerto_runtime::Metrics, format: EmitFormat) {
    if format == EmitFormat::Jsonl {
        eprintln!("{{\"metrics\": {}}}", m.to_json());
        return;
    }
    // `$0.0123`, `unknown (3 calls without a price)`, `$0.0123 + unknown (…)`.
    let money = |c: concerto_runtime::Cost| {
        if c.unpriced_calls > 0 && c.known_usd == 0.0 {
            c.to_string()
        } else {
            format!("${c:.4}")
        }
    };
    let mut out = String::from("metrics:\n");
    let mut row = |label: &str, value: String| out.push_str(&format!("  {label:<16} {value}\n"));
    row("execution time", format!("{} ms", m.execution_time_ms));
    row("agent calls", m.agent_calls.to_string());
    row("tool calls", m.tool_calls.to_string());
    row("emits", m.emit_count.to_string());
    row("errors caught", m.errors.to_string());
    row("total tokens", m.total_tokens().to_string());
    row("estimated cost", money(m.estimated_cost()));
    let mut time = concerto_runtime::TimeTotals::default();
    for c in m.llm.by_connection.values() {
        time.merge(&c.time);
    }
    if time.timed > 0 {
        row(
            "LLM time",
            format!(
                "{} ms over {} timed {} (waiting for limits {} ms, connecting {} ms, to first byte {} ms, runtime overhead {} µs)",
                time.total_us / 1000,
                time.timed,
                if time.timed == 1 {
                    "request"
                } else {
                    "requests"
                },
                time.queue_us / 1000,
                time.connect_us / 1000,
                time.ttfb_us / 1000,
                time.overhead_us
            ),
        );
    }
    let tables = [
        ("agent", &m.llm.by_agent),
        ("connection", &m.llm.by_connection),
    ];
    let width = tables
        .iter()
        .flat_map(|(title, map)| map.keys().map(String::as_str).chain([*title]))
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(0);
    for (title, map) in tables {
        if map.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "  {title:<width$}  {:>6} {:>6} {:>7} {:>7} {:>6} {:>9} {:>8} {:>9}  cost\n",
            "calls", "failed", "retries", "re-asks", "tools", "tokens in", "cached", "out"
        ));
        for (name, c) in map {
            let cost = concerto_runtime::Cost {
                known_usd: c.cost_usd,
                unpriced_calls: c.unpriced,
            };
            out.push_str(&format!(
                "  {name:<width$}  {:>6} {:>6} {:>7} {:>7} {:>6} {:>9} {:>8} {:>9}  {}{}\n",
                c.requests,
                c.failures,
                c.retries,
                c.schema_retries,
                c.tool_calls,
                c.input_tokens,
                c.cached_tokens,
                c.output_tokens,
                money(cost),
                if c.estimated_usage > 0 {
                    " (tokens partly estimated)"
                } else {
                    ""
                }
            ));
        }
    }
    eprint!("{out}");
}
