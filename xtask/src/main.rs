//! Project automation: `cargo xtask ci` (everything CI checks) and `cargo xtask bench`
//! (our runtime against CPython and Lua on the CPU-bound benchmark programs).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask reports to the terminal"
)]

mod bench;
mod deps;
mod interop;
mod loopback;
mod phoenix;
mod queue_bench;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("durable") => durable(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("deps") => deps::check(&root()).and_then(|()| deps::check_minimal(&root())),
        Some("tidy") => tidy::check(&root()),
        Some("interop-setup") => interop::setup(),
        Some("phoenix") => phoenix::run(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  ci      fmt, clippy, tests, docs, dependency direction, tidy, conformance, examples\n          [--quick: no examples or corpora] [--keep-check: keep target/check]\n  bench   time the benchmark programs against CPython (and Lua when installed)\n  fuzz    generated and mutated IR into the runtime, optimised build [--minutes N (10)] [--seed S]\n  durable the kill-point harness of resumable runs with a long random-kill loop [--rounds N (200)] [--seed S]\n  chaos   the queue's chaos test at full size: worker processes killed and paused while runs complete\n          [--workers N (4)] [--runs N (200)] [--interval-ms N (2500)] [--seed S]\n  deps    check the crate dependency direction\n  tidy    check source hygiene\n  interop-setup  install the MCP servers of the interop suite into target/interop\n  phoenix spans exported over OTLP to a local Arize Phoenix, read back and checked\n          [--phoenix-bin PATH (else $PHOENIX_BIN, else phoenix on PATH)]"
            );
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The shared directory next to the checkout, when present.
pub(crate) fn shared() -> Option<PathBuf> {
    let dir = root().join("../shared");
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// `cargo` for the CI steps. CI builds once from a clean clone, so incremental compilation
/// would only write its caches (about a gigabyte and a half for this workspace) to a disk
/// that may be small; it is off.
fn ci_cargo() -> Command {
    let mut cmd = cargo();
    cmd.env("CARGO_INCREMENTAL", "0");
    cmd
}

/// Runs a command, failing with its name when it fails.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("\n==> {name}");
    let start = Instant::now();
    let result = f();
    println!(
        "<== {name}: {} in {:.1}s",
        if result.is_ok() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    result
}

/// Path of the release `concerto` binary (built on demand).
pub(crate) fn release_binary() -> Result<PathBuf> {
    run(
        "cargo build --release",
        cargo().args(["build", "--release", "-p", "concerto-cli"]),
    )?;
    let bin = root().join("target/release/concerto");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// A file the dev profile built, by its path under `target/debug` (no extension).
fn debug_artifact(name: &str) -> Result<PathBuf> {
    let path = root()
        .join("target/debug")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// `cargo xtask fuzz [--minutes N] [--seed S]`: the fuzzer of `tests/fuzz.rs` for N minutes
/// (10 by default) on an optimised build; panicking inputs are shrunk and saved under
/// `tests/fuzz/`, where every later `cargo test` replays them.
/// The kill-point harness of resumable runs (`crates/concerto-cli/tests/durable.rs`) with a
/// long random-kill loop: every kill point on SQLite and Redis, then `--rounds` rounds of
/// random kills per store (CI runs a few).
fn durable(args: &[String]) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds: u64 = match value("--rounds") {
        Some(r) => r.parse().context("--rounds takes a whole number")?,
        None => 200,
    };
    let mut cmd = cargo();
    cmd.args(DURABLE_TEST).args(["--", "--nocapture"]);
    cmd.env("CONCERTO_DURABLE_ROUNDS", rounds.to_string());
    if let Some(seed) = value("--seed") {
        seed.parse::<u64>().context("--seed takes a whole number")?;
        cmd.env("CONCERTO_DURABLE_SEED", seed);
    }
    run("the durable-run harness", &mut cmd)
}

/// `cargo xtask chaos`: the chaos test of `crates/concerto-cli/tests/queue.rs` at full size
/// (4 workers of concurrency 4, 200 runs, a kill or pause every 2.5 s ± half by default).
fn chaos(args: &[String]) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "concerto-cli",
        "--test",
        "queue",
        "chaos",
        "--",
        "--nocapture",
    ]);
    for (flag, var, default) in [
        ("--workers", "CONCERTO_CHAOS_WORKERS", "4"),
        ("--runs", "CONCERTO_CHAOS_RUNS", "200"),
        ("--interval-ms", "CONCERTO_CHAOS_INTERVAL_MS", "2500"),
        ("--concurrency", "CONCERTO_CHAOS_CONCURRENCY", "4"),
    ] {
        let v = value(flag).unwrap_or_else(|| default.to_string());
        v.parse::<u64>()
            .with_context(|| format!("{flag} takes a whole number"))?;
        cmd.env(var, v);
    }
    if let Some(seed) = value("--seed") {
        seed.parse::<u64>().context("--seed takes a whole number")?;
        cmd.env("CONCERTO_CHAOS_SEED", seed);
    }
    run("the queue's chaos test", &mut cmd)
}

/// The kill-point harness's test target, built with the fault-injection feature.
const DURABLE_TEST: [&str; 7] = [
    "test",
    "-p",
    "concerto-cli",
    "--features",
    "fault-injection",
    "--test",
    "durable",
];

fn fuzz(args: &[String]) -> Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let minutes: f64 = match value("--minutes") {
        Some(m) => m.parse().context("--minutes takes a number")?,
        None => 10.0,
    };
    let seed: u64 = match value("--seed") {
        Some(s) => s.parse().context("--seed takes a whole number")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
    };
    let seconds = (minutes * 60.0).max(1.0).round() as u64;
    println!("fuzzing for {seconds} s with seed {seed}");
    run(
        "the fuzzer",
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "concerto-tests",
                "--test",
                "integration",
                "fuzz::",
                "--",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CONCERTO_FUZZ_SECONDS", seconds.to_string())
            .env("CONCERTO_FUZZ_SEED", seed.to_string()),
    )
}

/// The facade's examples CI builds and runs (offline, against the mock provider).
const FACADE_EXAMPLES: [&str; 3] = ["basic_usage", "configuration", "custom_connections"];

fn ci(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let keep_check = args.iter().any(|a| a == "--keep-check");
    let start = Instant::now();
    step("format", || {
        run(
            "cargo fmt --check",
            ci_cargo().args(["fmt", "--all", "--", "--check"]),
        )
    })?;
    step("tidy", || tidy::check(&root()))?;
    step("dependency direction", || deps::check(&root()))?;
    // Type-checking (clippy, rustdoc) writes metadata for every crate, a build writes
    // objects: in one target directory CI would need room for both. The checks get a target
    // directory of their own, removed once they pass (unless `--keep-check`), so the disk a CI
    // run needs is the larger of the two, not their sum.
    let check_dir = root().join("target/check");
    step("clippy", || {
        run(
            "cargo clippy",
            ci_cargo()
                .args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--features",
                    "concerto-cli/fault-injection",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env("CARGO_TARGET_DIR", &check_dir),
        )
    })?;
    step("docs", || {
        run(
            "cargo doc",
            ci_cargo()
                .args(["doc", "--workspace", "--no-deps"])
                .env("CARGO_TARGET_DIR", &check_dir)
                .env("RUSTDOCFLAGS", "-D warnings"),
        )
    })?;
    if !keep_check {
        std::fs::remove_dir_all(&check_dir)
            .with_context(|| format!("cannot remove {}", check_dir.display()))?;
    }
    // The interop suite's servers, from npm and PyPI. A failed install does not stop CI
    // here: the suite's tests then fail, each naming what is missing.
    if let Err(err) = step("interop servers", interop::setup) {
        println!("interop servers: {err:#} (the interop tests will fail, naming what is missing)");
    }
    step("tests", || {
        // Every target but the examples: `cargo test` would build each example with a test
        // harness (empty: they have no tests); the step "binary and examples" builds the
        // ones CI runs. The CLI is built with its fault-injection feature (inert unless
        // `CONCERTO_FAULT` is set) so the kill-point harness of resumable runs runs too,
        // with a short random-kill loop (`cargo xtask durable` runs a long one).
        run(
            "cargo test",
            ci_cargo()
                .args([
                    "test",
                    "--workspace",
                    "--lib",
                    "--bins",
                    "--tests",
                    "--benches",
                    "--features",
                    "concerto-cli/fault-injection",
                ])
                .env("CONCERTO_DURABLE_ROUNDS", "6"),
        )
    })?;
    step("minimal build (no default features)", || {
        // The dependency tree, then this build's own behaviour: the builder's tests compiled
        // without the features (settings that need one are refused naming it).
        deps::check_minimal(&root())?;
        run(
            "cargo test -p concerto-runtime --no-default-features",
            ci_cargo().args([
                "test",
                "-p",
                "concerto-runtime",
                "--no-default-features",
                "--test",
                "integration",
                "builder",
            ]),
        )?;
        // The `concerto` binary with the system allocator (without its `mimalloc` feature).
        run(
            "cargo build -p concerto-cli --no-default-features",
            ci_cargo().args([
                "build",
                "-p",
                "concerto-cli",
                "--no-default-features",
                "--bins",
            ]),
        )
    })?;
    step("doc tests", || {
        run(
            "cargo test --doc",
            ci_cargo().args(["test", "--workspace", "--doc"]),
        )
    })?;
    if !quick {
        // The dev build the tests already made: the corpora check behaviour, not speed, and an
        // optimised build would cost minutes of the CI budget (benchmarks use the release one).
        // Only the examples CI runs: clippy has type-checked the others, and each one links
        // the whole runtime (tens of megabytes apiece).
        step("binary and examples", || {
            let mut cmd = ci_cargo();
            cmd.args(["build", "--workspace", "--bins"]);
            for example in FACADE_EXAMPLES {
                cmd.args(["--example", example]);
            }
            run("cargo build --bins --example …", &mut cmd)
        })?;
        let bin = debug_artifact("concerto")?;
        step("bundled examples", || examples(&bin))?;
        match shared() {
            Some(shared) => {
                for corpus in CORPORA {
                    step(corpus.title, || conformance(&bin, &shared, corpus))?;
                }
            }
            None => {
                println!("\n(no ../shared directory: the shared conformance corpus is skipped)")
            }
        }
    }
    println!(
        "\nci: all checks passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the README's bundled examples (the agent example offline through `--mock`, and
/// the example without agents) and the facade examples.
fn examples(bin: &Path) -> Result<()> {
    for (example, args) in [
        ("examples/harbour/harbour.conc-ir", &["--mock"][..]),
        ("examples/hello/hello.conc-ir", &[][..]),
    ] {
        let output = Command::new(bin)
            .args(["run", "--emit-format", "jsonl"])
            .args(args)
            .arg(root().join(example))
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !output.status.success() {
            bail!(
                "the bundled example {example} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let lines = String::from_utf8_lossy(&output.stdout).lines().count();
        if lines == 0 {
            bail!("the bundled example {example} produced no emits");
        }
        println!("bundled example {example}: {lines} emits");
    }
    // The facade's examples (built by the step before): each must succeed offline and print
    // something.
    for example in FACADE_EXAMPLES {
        let path = debug_artifact(&format!("examples/{example}"))?;
        let output = Command::new(&path)
            .current_dir(root())
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "the example {example} failed ({}): {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        if stdout.trim().is_empty() {
            bail!("the example {example} printed nothing");
        }
        println!(
            "example {example}: {} lines of output",
            stdout.lines().count()
        );
    }
    Ok(())
}

/// One shared conformance corpus: its runner and the arguments it takes.
struct Corpus {
    title: &'static str,
    /// Folder of cases, under `../shared/conformance`.
    cases: &'static str,
    /// The runner script, under `../shared/conformance`.
    runner: &'static str,
    /// The runner's arguments before the folder; `{bin}` is our binary.
    args: &'static [&'static str],
}

/// Every shared corpus: concertoc 1a8ede9's (`vm`, `llm`) and 7ad10db's (`head/*`).
const CORPORA: &[Corpus] = &[
    Corpus {
        title: "VM conformance corpus (1a8ede9)",
        cases: "vm/cases",
        runner: "check.py",
        args: &["--cmd", "{bin} run --emit-format jsonl {ir}"],
    },
    Corpus {
        title: "LLM conformance corpus (1a8ede9)",
        cases: "llm/cases",
        runner: "run_llm.py",
        // Connections point at the runner's local mock server: a host the program chose.
        args: &[
            "--cmd",
            "{bin} run --allow-net 127.0.0.1 --emit-format jsonl {ir}",
        ],
    },
    Corpus {
        title: "VM conformance corpus (7ad10db)",
        cases: "head/vm",
        runner: "check.py",
        args: &["--cmd", "{bin} run --emit-format jsonl {ir}"],
    },
    Corpus {
        title: "LLM conformance corpus (7ad10db)",
        cases: "head/llm",
        runner: "run_llm.py",
        // Connections point at the runner's local mock server: a host the program chose.
        args: &[
            "--cmd",
            "{bin} run --allow-net 127.0.0.1 --emit-format jsonl {ir}",
        ],
    },
    Corpus {
        title: "external-agent conformance corpus (7ad10db)",
        cases: "head/agents",
        runner: "head/agents/run_agents.py",
        args: &[
            "--agent-flag",
            "--allow-tool {name}",
            "--cmd",
            "{bin} run --allow-net 127.0.0.1 --emit-format jsonl {ir}",
        ],
    },
    Corpus {
        title: "concerto test conformance corpus (7ad10db)",
        cases: "head/test",
        runner: "head/test/run_tests.py",
        args: &[
            "--test-cmd",
            "{bin} test --allow-net 127.0.0.1 {ir}",
            "--run-cmd",
            "{bin} run --allow-net 127.0.0.1 --emit-format jsonl {ir}",
        ],
    },
];

/// Runs one shared corpus with its runner; a corpus the shared folder does not have is
/// skipped with a message.
fn conformance(bin: &Path, shared: &Path, corpus: &Corpus) -> Result<()> {
    let base = shared.join("conformance");
    let runner = base.join(corpus.runner);
    let cases = base.join(corpus.cases);
    if !runner.exists() || !cases.exists() {
        println!("(no {} in {}: skipped)", corpus.cases, base.display());
        return Ok(());
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&runner);
    for arg in corpus.args {
        cmd.arg(arg.replace("{bin}", &bin.display().to_string()));
    }
    cmd.arg(cases);
    run(corpus.runner, &mut cmd)
}
