//! `cargo xtask bench`: times every benchmark program with our release binary, its Python
//! twin with the real CPython executable, and its Lua twin when a Lua 5.4 interpreter is
//! installed. Each implementation of a program runs once untimed (warm-up: caches, the page
//! cache, CPU frequency), then the timed rounds alternate between the implementations; every
//! run's output, warm-up included, is checked against the expected result; the table reports
//! medians and the ratio ours/Python (and ours/Lua), with the geometric means of the ratios,
//! with and without `strings` (quadratic in CPython and Lua at its size). A Python twin whose
//! loop runs at module level (where every variable is a global-dictionary lookup) is refused:
//! twins are written the way a Python programmer writes a hot loop, inside a function.
//!
//! Programs: `../shared/bench/NAME.conc-ir` and `benches/programs/NAME.conc-ir`, each with
//! `NAME.expected.jsonl` and `NAME.py` (and optionally `NAME.lua`) beside it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

struct Program {
    name: String,
    ir: PathBuf,
    expected: Vec<Value>,
    python: Option<PathBuf>,
    lua: Option<PathBuf>,
}

struct Options {
    runs: usize,
    filter: Option<String>,
    markdown: bool,
    micro: bool,
}

fn options(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        runs: 5,
        filter: None,
        markdown: false,
        micro: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                opts.runs = it
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs")?;
                if opts.runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--filter" => opts.filter = Some(it.next().context("--filter needs a text")?.clone()),
            "--markdown" => opts.markdown = true,
            "--micro" => opts.micro = true,
            other => bail!(
                "unknown bench option `{other}` (--runs N, --filter TEXT (`--filter conn`: the connection layer only; `--filter orchestration`: concurrent agent calls only; `--filter state`: the state stores only; `--filter queue`: queue workers only), --markdown, --micro)"
            ),
        }
    }
    Ok(opts)
}

fn programs(dirs: &[PathBuf], filter: Option<&str>) -> Result<Vec<Program>> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut irs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".conc-ir"))
            .collect();
        irs.sort();
        for ir in irs {
            let stem = ir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .trim_end_matches(".conc-ir")
                .to_string();
            if filter.is_some_and(|f| !stem.contains(f)) {
                continue;
            }
            let sibling = |ext: &str| ir.with_file_name(format!("{stem}.{ext}"));
            let expected_path = sibling("expected.jsonl");
            let text = std::fs::read_to_string(&expected_path)
                .with_context(|| format!("{} has no expected output", ir.display()))?;
            let expected = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<Vec<Value>, _>>()
                .with_context(|| expected_path.display().to_string())?;
            let python = Some(sibling("py")).filter(|p| p.exists());
            let lua = Some(sibling("lua")).filter(|p| p.exists());
            out.push(Program {
                name: stem,
                ir,
                expected,
                python,
                lua,
            });
        }
    }
    Ok(out)
}

/// Refuses a Python twin with a `for` or `while` loop at module level (outside every
/// function and class): prints `line N` of the first and exits 1.
const MODULE_LOOP_CHECK: &str = r#"
import ast, sys
tree = ast.parse(open(sys.argv[1]).read(), sys.argv[1])
def walk(nodes):
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            print(node.lineno)
            sys.exit(1)
        walk(ast.iter_child_nodes(node))
walk(tree.body)
"#;

/// Checks that `script`'s loops run inside functions ([`MODULE_LOOP_CHECK`]).
fn check_python_twin(python: &std::path::Path, script: &std::path::Path) -> Result<()> {
    let out = Command::new(python)
        .args(["-c", MODULE_LOOP_CHECK])
        .arg(script)
        .output()
        .context("cannot run python3 for the twin check")?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => bail!(
            "{}: line {}: a loop at module level, where every variable is a global lookup; \
             write the twin as a Python programmer writes a hot loop, inside a function",
            script.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        _ => bail!(
            "{}: the twin check failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The real CPython executable behind `python3` (a launcher script's start-up is not timed).
fn python_executable() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!path.is_empty()).then(|| PathBuf::from(path))
}

fn lua_executable() -> Option<PathBuf> {
    for candidate in ["lua5.4", "lua"] {
        let ok = Command::new(candidate)
            .arg("-v")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
            })
            .is_some_and(|v| v.contains("5.4"));
        if ok {
            return Some(PathBuf::from(candidate));
        }
    }
    None
}

/// Runs a command once; returns (seconds, stdout).
fn time(cmd: &mut Command) -> Result<(f64, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let output = cmd.output().context("cannot start benchmark process")?;
    let elapsed = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "benchmark process failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((elapsed, String::from_utf8_lossy(&output.stdout).to_string()))
}

fn check_ours(program: &Program, stdout: &str) -> Result<()> {
    let got: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    if got != program.expected {
        bail!(
            "{}: our output {got:?} differs from the expected {:?}",
            program.name,
            program.expected
        );
    }
    Ok(())
}

/// A twin prints one line per expected payload, in Python/Lua literal syntax.
fn check_twin(program: &Program, lang: &str, stdout: &str) -> Result<()> {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let payloads: Vec<&Value> = program.expected.iter().map(|e| &e["payload"]).collect();
    let ok = lines.len() == payloads.len()
        && lines.iter().zip(&payloads).all(|(line, payload)| {
            let normalized = line
                .replace('\'', "\"")
                .replace("True", "true")
                .replace("False", "false")
                .replace("None", "null");
            match serde_json::from_str::<Value>(&normalized) {
                Ok(v) => &&v == payload,
                Err(_) => payload.as_str() == Some(*line),
            }
        });
    if !ok {
        bail!(
            "{}: the {lang} twin printed {lines:?}, expected {payloads:?}",
            program.name
        );
    }
    Ok(())
}

pub(crate) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

fn geomean(ratios: &[f64]) -> String {
    if ratios.is_empty() {
        return "-".to_string();
    }
    format!(
        "{:.2}",
        (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp()
    )
}

/// Median wall time of `concerto run` on the hello-world program, over 50 runs.
fn startup(bin: &std::path::Path) -> Result<f64> {
    let hello = crate::root().join("benches/startup/hello.conc-ir");
    let mut samples = Vec::new();
    for _ in 0..50 {
        let (t, out) = time(
            Command::new(bin)
                .args(["run", "--emit-format", "jsonl"])
                .arg(&hello),
        )?;
        if !out.contains("\"hello\"") {
            bail!("the start-up program printed {out:?}");
        }
        samples.push(t);
    }
    Ok(median(&mut samples))
}

/// The criterion micro-benchmarks (dispatch loop, values, IR load).
fn micro() -> Result<()> {
    for (krate, bench) in [("concerto-vm", "dispatch"), ("concerto-ir", "load")] {
        crate::run(
            &format!("cargo bench -p {krate} --bench {bench}"),
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(crate::root())
                .args(["bench", "-p", krate, "--bench", bench]),
        )?;
    }
    Ok(())
}

/// Runs `cargo run --release -p PACKAGE --example EXAMPLE` and returns the JSON lines it
/// printed.
fn example_results(package: &str, example: &str, what: &str) -> Result<Vec<Value>> {
    example_results_with(package, example, what, &[])
}

/// [`example_results`] with arguments for the example.
fn example_results_with(
    package: &str,
    example: &str,
    what: &str,
    args: &[&str],
) -> Result<Vec<Value>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(crate::root())
        .args([
            "run",
            "--release",
            "-q",
            "-p",
            package,
            "--example",
            example,
            "--",
        ])
        .args(args)
        .output()
        .with_context(|| format!("cannot run the {what} benchmark"))?;
    if !output.status.success() {
        bail!(
            "the {what} benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("{what} benchmark result")))
        .collect()
}

/// The connection-layer benchmark: `concerto-conn/examples/conn_bench.rs` against its
/// in-process mock provider, printed with the targets of the LLM-connections work.
fn connections() -> Result<()> {
    println!(
        "\nconnection layer: 1000 agent calls through the Connections trait, 100 in flight, mock answering after 50 ms; then one call at a time against an instant mock"
    );
    println!("spans not exported (no subscriber):");
    let results = example_results("concerto-conn", "conn_bench", "connection")?;
    connection_report(&results)?;
    // The same with the spans exported over OTLP/HTTP to a local collector that accepts
    // and counts them.
    let (url, received) = otlp_sink()?;
    println!("spans exported over OTLP/HTTP to a local collector ({url}):");
    let results = example_results_with(
        "concerto-conn",
        "conn_bench",
        "connection",
        &["--otlp", &url],
    )?;
    connection_report(&results)?;
    let (requests, bytes) = *received.lock().unwrap_or_else(|e| e.into_inner());
    println!("  collector received  {requests} export requests, {bytes} bytes");
    if requests == 0 {
        bail!("the OTLP collector of the benchmark received nothing");
    }
    Ok(())
}

/// Requests and body bytes a collector received.
type Received = std::sync::Arc<std::sync::Mutex<(u64, u64)>>;

/// A loopback HTTP server that answers every request 200 and counts the requests and body
/// bytes it received: the collector of the benchmark's OTLP export.
fn otlp_sink() -> Result<(String, Received)> {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the OTLP sink")?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let seen = counts.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let Some((_, body)) = crate::loopback::read_request(&mut stream) else {
                    return;
                };
                if let Ok(mut c) = seen.lock() {
                    c.0 += 1;
                    c.1 += body.len() as u64;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    Ok((url, counts))
}

/// Prints one run of the connection benchmark against its targets.
fn connection_report(results: &[Value]) -> Result<()> {
    let r = results
        .last()
        .context("the connection benchmark printed no result")?;
    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let total = f("ours_total_s");
    let ideal = f("ideal_total_s");
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "  total wall time     {:>8.3} s   (ideal {ideal:.3} s, ratio {:.3}; target <= 1.15)  {}",
        total,
        total / ideal,
        verdict(total / ideal <= 1.15)
    );
    println!(
        "  CPU per call        {:>8.1} us  (bare hyper client {:.1} us, ratio {:.2}; target <= 1.5)  {}",
        f("ours_cpu_us_per_call"),
        f("bare_cpu_us_per_call"),
        f("cpu_ratio"),
        verdict(f("cpu_ratio") <= 1.5)
    );
    println!(
        "  added latency       {:>8.1} us median, {:.1} us p99 (targets <= 50 / <= 200)  {}",
        f("added_latency_us_median"),
        f("added_latency_us_p99"),
        verdict(f("added_latency_us_median") <= 50.0 && f("added_latency_us_p99") <= 200.0)
    );
    Ok(())
}

/// The orchestration benchmark: `concerto-runtime/examples/orchestration_bench.rs`.
fn orchestration() -> Result<()> {
    println!(
        "\norchestration: 1000 agent calls, 100 in flight, mock answering after 50 ms (ideal 0.5 s)"
    );
    for r in example_results("concerto-runtime", "orchestration_bench", "orchestration")? {
        let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let case = match r.get("case").and_then(Value::as_str) {
            Some("executions") => "1000 concurrent executions, one runtime",
            Some("fan_out") => "one program, 1000 spawned tasks",
            _ => "?",
        };
        let ratio = f("ratio");
        println!(
            "  {case:<40} {:>7.3} s median  (ratio {ratio:.3}; target <= 1.15)  {}",
            f("median_s"),
            if ratio <= 1.15 { "ok" } else { "MISSED" }
        );
    }
    Ok(())
}

/// The state-store benchmark: `concerto-runtime/examples/state_bench.rs`.
fn state_stores() -> Result<()> {
    println!(
        "\nstate stores: 100 000 hashmap operations (50 000 set, 50 000 get) from a Concerto program"
    );
    for r in example_results("concerto-runtime", "state_bench", "state-store")? {
        let case = r.get("case").and_then(Value::as_str).unwrap_or("?");
        match r.get("skipped").and_then(Value::as_str) {
            Some(why) => println!("  {case:<20} skipped: {why}"),
            None => println!(
                "  {case:<20} {:>12.0} ops/s  ({:.3} s)",
                r.get("ops_per_s")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
                r.get("seconds").and_then(Value::as_f64).unwrap_or(f64::NAN)
            ),
        }
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let opts = options(args)?;
    let bin = crate::release_binary()?;
    if opts.micro {
        return micro();
    }
    if opts.filter.as_deref() == Some("conn") {
        return connections();
    }
    if opts.filter.as_deref() == Some("orchestration") {
        return orchestration();
    }
    if opts.filter.as_deref() == Some("state") {
        return state_stores();
    }
    if opts.filter.as_deref() == Some("queue") {
        return crate::queue_bench::run(&bin, opts.runs.min(3));
    }
    let startup_ms = startup(&bin)? * 1e3;
    let mut dirs = Vec::new();
    if let Some(shared) = crate::shared() {
        dirs.push(shared.join("bench"));
    }
    dirs.push(crate::root().join("benches/programs"));
    let programs = programs(&dirs, opts.filter.as_deref())?;
    if programs.is_empty() {
        bail!("no benchmark programs found");
    }
    let python = python_executable();
    let lua = lua_executable();
    if let Some(exe) = &python {
        for program in &programs {
            if let Some(script) = &program.python {
                check_python_twin(exe, script)?;
            }
        }
    }
    println!(
        "bench: {} programs, {} runs each, alternating; python: {}; lua: {}",
        programs.len(),
        opts.runs,
        python
            .as_ref()
            .map_or("not found".into(), |p| p.display().to_string()),
        lua.as_ref()
            .map_or("not installed (column skipped)".into(), |p| p
                .display()
                .to_string()),
    );
    struct Row {
        name: String,
        ours: f64,
        python: Option<f64>,
        lua: Option<f64>,
    }
    let mut rows = Vec::new();
    for program in &programs {
        let mut ours = Vec::new();
        let mut py = Vec::new();
        let mut lu = Vec::new();
        // Round 0 is the untimed warm-up; every round's output is checked.
        for round in 0..=opts.runs {
            let (t, out) = time(
                Command::new(&bin)
                    .args(["run", "--emit-format", "jsonl"])
                    .arg(&program.ir),
            )?;
            check_ours(program, &out)?;
            if round > 0 {
                ours.push(t);
            }
            if let (Some(exe), Some(script)) = (&python, &program.python) {
                let (t, out) = time(Command::new(exe).arg(script))?;
                check_twin(program, "Python", &out)?;
                if round > 0 {
                    py.push(t);
                }
            }
            if let (Some(exe), Some(script)) = (&lua, &program.lua) {
                let (t, out) = time(Command::new(exe).arg(script))?;
                check_twin(program, "Lua", &out)?;
                if round > 0 {
                    lu.push(t);
                }
            }
        }
        let row = Row {
            name: program.name.clone(),
            ours: median(&mut ours),
            python: (!py.is_empty()).then(|| median(&mut py)),
            lua: (!lu.is_empty()).then(|| median(&mut lu)),
        };
        eprintln!("  {}: ours {:.1} ms", row.name, row.ours * 1e3);
        rows.push(row);
    }
    let ratios = |twin: fn(&Row) -> Option<f64>, with_strings: bool| -> Vec<f64> {
        rows.iter()
            .filter(|r| with_strings || r.name != "strings")
            .filter_map(|r| twin(r).map(|t| r.ours / t))
            .collect()
    };
    let means = |twin: fn(&Row) -> Option<f64>| {
        format!(
            "{} ({})",
            geomean(&ratios(twin, true)),
            geomean(&ratios(twin, false))
        )
    };
    let py_means = means(|r| r.python);
    let lua_means = means(|r| r.lua);
    let fmt_ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.1}", s * 1e3));
    let fmt_ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
    println!("\nstart-up: `concerto run` of hello world, median of 50 runs: {startup_ms:.2} ms");
    if opts.markdown {
        println!("\n| program | ours (ms) | CPython (ms) | ours/CPython | Lua (ms) | ours/Lua |");
        println!("|---|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {:.1} | {} | {} | {} | {} |",
                r.name,
                r.ours * 1e3,
                fmt_ms(r.python),
                fmt_ratio(r.ours, r.python),
                fmt_ms(r.lua),
                fmt_ratio(r.ours, r.lua)
            );
        }
        println!(
            "| **geometric mean (without strings)** | | | **{py_means}** | | **{lua_means}** |"
        );
    } else {
        println!(
            "\n{:<16} {:>10} {:>12} {:>8} {:>10} {:>8}",
            "program", "ours ms", "CPython ms", "ratio", "Lua ms", "ratio"
        );
        for r in &rows {
            println!(
                "{:<16} {:>10.1} {:>12} {:>8} {:>10} {:>8}",
                r.name,
                r.ours * 1e3,
                fmt_ms(r.python),
                fmt_ratio(r.ours, r.python),
                fmt_ms(r.lua),
                fmt_ratio(r.ours, r.lua)
            );
        }
        println!(
            "{:<16} {:>10} {:>12} {:>8} {:>10} {:>8}   (without strings in parentheses)",
            "geomean", "", "", py_means, "", lua_means
        );
    }
    if opts.filter.is_none() {
        connections()?;
        orchestration()?;
        state_stores()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The twin check refuses a loop at module level (also inside an `if` there) and takes
    /// loops inside functions and methods.
    #[test]
    fn a_python_twin_with_a_module_level_loop_is_refused() {
        let Some(python) = python_executable() else {
            panic!("python3 is needed by the benchmark runner and its tests");
        };
        let dir = std::env::temp_dir().join(format!("concerto-twin-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let global = write(
            "global.py",
            "total = 0\nfor i in range(10):\n    total += i\nprint(total)\n",
        );
        let nested = write(
            "nested.py",
            "if __name__ == '__main__':\n    i = 0\n    while i < 3:\n        i += 1\n",
        );
        let local = write(
            "local.py",
            "class A:\n    def f(self):\n        for i in range(3):\n            pass\n\n\
             def main():\n    for i in range(3):\n        print(i)\n\n\nmain()\n",
        );
        let err = check_python_twin(&python, &global).unwrap_err().to_string();
        assert!(err.contains("line 2: a loop at module level"), "{err}");
        let err = check_python_twin(&python, &nested).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        check_python_twin(&python, &local).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
