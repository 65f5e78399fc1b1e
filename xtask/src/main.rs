//! Project automation: `cargo xtask ci` (everything CI checks) and `cargo xtask bench`
//! (our runtime against CPython and Lua on the CPU-bound benchmark programs).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask reports to the terminal"
)]

mod bench;
mod deps;
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
        Some("deps") => deps::check(&root()),
        Some("tidy") => tidy::check(&root()),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n  ci      fmt, clippy, tests, docs, dependency direction, tidy, conformance, examples\n  bench   time the benchmark programs against CPython (and Lua when installed)\n  deps    check the crate dependency direction\n  tidy    check source hygiene"
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
    profile_binary("release")
}

/// Builds the `concerto` binary with cargo profile `profile` and returns its path.
fn profile_binary(profile: &str) -> Result<PathBuf> {
    run(
        &format!("cargo build --profile {profile}"),
        cargo().args(["build", "--profile", profile, "-p", "concerto-cli"]),
    )?;
    let dir = if profile == "dev" { "debug" } else { profile };
    let bin = root().join("target").join(dir).join("concerto");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

fn ci(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let start = Instant::now();
    step("format", || {
        run(
            "cargo fmt --check",
            cargo().args(["fmt", "--all", "--", "--check"]),
        )
    })?;
    step("tidy", || tidy::check(&root()))?;
    step("dependency direction", || deps::check(&root()))?;
    step("clippy", || {
        run(
            "cargo clippy",
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )
    })?;
    step("tests", || {
        run(
            "cargo test",
            cargo().args(["test", "--workspace", "--all-targets"]),
        )
    })?;
    step("doc tests", || {
        run(
            "cargo test --doc",
            cargo().args(["test", "--workspace", "--doc"]),
        )
    })?;
    step("docs", || {
        run(
            "cargo doc",
            cargo()
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )
    })?;
    if !quick {
        // The dev build the tests already made: the corpora check behaviour, not speed, and an
        // optimised build would cost minutes of the CI budget (benchmarks use the release one).
        let bin = step("binary", || profile_binary("dev").map(|_| ()))
            .and_then(|_| profile_binary("dev"))?;
        step("bundled examples", || examples(&bin))?;
        match shared() {
            Some(shared) => {
                step("VM conformance corpus", || conformance(&bin, &shared))?;
                step("LLM conformance corpus", || llm_conformance(&bin, &shared))?;
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
    // The facade's examples: each must succeed offline and print something. Built together
    // first (in parallel), then run.
    run(
        "cargo build --examples",
        cargo().args(["build", "-q", "-p", "concerto-runtime", "--examples"]),
    )?;
    for example in ["basic_usage", "configuration", "custom_connections"] {
        let output = cargo()
            .args(["run", "-q", "-p", "concerto-runtime", "--example", example])
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .with_context(|| format!("cannot run cargo for the example {example}"))?;
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

fn conformance(bin: &Path, shared: &Path) -> Result<()> {
    let check = shared.join("conformance/check.py");
    let cases = shared.join("conformance/vm/cases");
    run(
        "conformance check.py",
        Command::new("python3")
            .arg(check)
            .arg("--cmd")
            .arg(format!("{} run --emit-format jsonl {{ir}}", bin.display()))
            .arg(cases),
    )
}

/// The shared LLM corpus: each case against `tools/mockllm.py`, a scripted local server.
fn llm_conformance(bin: &Path, shared: &Path) -> Result<()> {
    let runner = shared.join("conformance/run_llm.py");
    let cases = shared.join("conformance/llm/cases");
    if !runner.exists() || !cases.exists() {
        println!("(no shared LLM corpus: skipped)");
        return Ok(());
    }
    run(
        "conformance run_llm.py",
        Command::new("python3")
            .arg(runner)
            .arg("--cmd")
            .arg(format!("{} run --emit-format jsonl {{ir}}", bin.display()))
            .arg(cases),
    )
}
