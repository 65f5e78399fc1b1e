//! The `concerto` binary: exit codes, the JSON-lines protocol, the text format, messages.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
mod interop;

use common::{
    answered, bin, fresh_dir, program_at, program_ir, programs, rate_limited, save_program,
    scripted_server,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn write_ir(name: &str, instructions: &str, constants: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("concerto-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let text = format!(
        r#"{{"version":"0.1.0","module":"m","source_file":"m.conc","constants":[{constants}],
        "functions":[{{"name":"main","module":"m","visibility":"private","params":[],"return_type":"nil",
        "is_async":false,"locals":[],"instructions":[{instructions}]}}],
        "metadata":{{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,"debug_info":true,"entry_point":"main"}}}}"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Fails, showing the whole stderr, unless it contains `text`.
fn assert_stderr_has(o: &Output, text: &str) {
    let err = stderr(o);
    assert!(err.contains(text), "stderr lacks {text:?}:\n{err}");
}

#[test]
fn jsonl_writes_one_object_per_emit_and_exits_zero() {
    let ir = repo().join("examples/hello/hello.conc-ir");
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 5);
    for line in &lines {
        let obj = line.as_object().unwrap();
        assert_eq!(obj.len(), 2, "{line}");
        assert!(obj["channel"].is_string());
        assert!(obj.contains_key("payload"));
    }
    assert_eq!(lines.last().unwrap()["channel"], "digest");
}

#[test]
fn text_format_is_for_people() {
    let ir = repo().join("examples/hello/hello.conc-ir");
    let out = bin().args(["run"]).arg(&ir).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("[emit:rejected] only 1 desk left for order 2"),
        "{}",
        stdout(&out)
    );
    let quiet = bin().args(["run", "--quiet"]).arg(&ir).output().unwrap();
    assert_eq!(stdout(&quiet), "");
}

#[test]
fn a_runtime_error_exits_one_with_function_and_span() {
    // 1 / 0 at line 7, column 3.
    let ir = write_ir(
        "div.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0,"span":[7,3]},{"op":"LOAD_CONST","arg":1,"span":[7,7]},{"op":"DIV","span":[7,3]},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"int","value":1},{"index":1,"type":"int","value":0}"#,
    );
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("runtime error: division by zero"), "{err}");
    assert!(err.contains("`main` at 7:3"), "{err}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn emits_before_an_error_are_kept() {
    let ir = write_ir(
        "partial.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"EMIT"},{"op":"LOAD_CONST","arg":1},{"op":"LOAD_CONST","arg":2},{"op":"DIV"},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"string","value":"first"},{"index":1,"type":"int","value":1},{"index":2,"type":"int","value":0}"#,
    );
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out).trim(), r#"{"channel":"first","payload":1}"#);
}

#[test]
fn a_load_error_exits_two_with_its_reason() {
    let ir = write_ir("bad.conc-ir", r#"{"op":"NOPE"}"#, "");
    let out = bin().args(["run"]).arg(&ir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("failed to load IR"), "{err}");
    assert!(err.contains("unknown opcode `NOPE`"), "{err}");

    let missing = bin()
        .args(["run", "/no/such/file.conc-ir"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert_stderr_has(&missing, "cannot read");
}

#[test]
fn bad_usage_exits_two() {
    let out = bin().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin()
        .args(["run", "x.conc-ir", "--emit-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn print_goes_to_stderr_in_jsonl_mode_and_stdout_in_text_mode() {
    let ir = write_ir(
        "print.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"LOAD_LOCAL","name":"println"},{"op":"CALL","argc":1},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"string","value":"hello from print"}"#,
    );
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("hello from print"));
    let out = bin().args(["run"]).arg(&ir).output().unwrap();
    assert!(stdout(&out).contains("hello from print"));
}

#[test]
fn infinite_loops_stop_at_the_timeout() {
    let ir = write_ir("spin.conc-ir", r#"{"op":"JUMP","offset":0}"#, "");
    let start = std::time::Instant::now();
    let out = bin()
        .args(["run", "--timeout", "0.3"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert!(start.elapsed().as_secs() < 10);
}

#[test]
fn check_validates_without_running() {
    let ir = repo().join("examples/hello/hello.conc-ir");
    let out = bin().args(["check"]).arg(&ir).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).starts_with("ok:"), "{}", stderr(&out));
}

fn harbour() -> PathBuf {
    repo().join("examples/harbour/harbour.conc-ir")
}

fn jsonl(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mock_runs_the_agent_example_offline_and_deterministically() {
    let run = || {
        bin()
            .args(["run", "--mock", "--emit-format", "jsonl"])
            .arg(harbour())
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .unwrap()
    };
    let first = run();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let emits = jsonl(&first);
    assert_eq!(
        emits[0]["payload"],
        "[mock response to: Greet the harbour master.]"
    );
    let berthing = emits
        .iter()
        .find(|e| e["channel"] == "berthing")
        .expect("structured reply");
    assert_eq!(berthing["payload"]["berth"], 0);
    assert_eq!(emits.last().unwrap()["payload"], 4);
    assert_eq!(stdout(&run()), stdout(&first), "the mock is deterministic");
}

#[test]
fn a_missing_api_key_is_a_clear_error_not_a_mock() {
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(harbour())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).is_empty(),
        "no invented replies: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("OPENAI_API_KEY"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("mock"), "{}", stderr(&out));
}

#[test]
fn record_then_replay_gives_the_same_run_without_a_provider() {
    let dir = std::env::temp_dir().join(format!("concerto-cli-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("calls.jsonl");
    let recorded = bin()
        .args(["run", "--mock", "--emit-format", "jsonl", "--record"])
        .arg(&file)
        .arg(harbour())
        .output()
        .unwrap();
    assert_eq!(recorded.status.code(), Some(0), "{}", stderr(&recorded));
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 3, "one line per call:\n{lines}");
    for line in lines.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(entry["request"]["messages"].is_array(), "{entry}");
        assert!(entry["response"]["text"].is_string(), "{entry}");
    }
    let replayed = bin()
        .args(["run", "--emit-format", "jsonl", "--replay"])
        .arg(&file)
        .arg(harbour())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(replayed.status.code(), Some(0), "{}", stderr(&replayed));
    assert_eq!(stdout(&replayed), stdout(&recorded));
}

#[test]
fn metrics_and_env_file() {
    let dir = std::env::temp_dir().join(format!("concerto-cli-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = dir.join("test.env");
    std::fs::write(&env, "CONCERTO_CLI_TEST_VAR=from-env-file\n").unwrap();
    // `env("CONCERTO_CLI_TEST_VAR")` then EMIT.
    let ir = write_ir(
        "env.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"LOAD_LOCAL","name":"env"},
           {"op":"CALL","argc":1},{"op":"EMIT"},{"op":"LOAD_CONST","arg":2},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"string","value":"var"},
           {"index":1,"type":"string","value":"CONCERTO_CLI_TEST_VAR"},
           {"index":2,"type":"nil","value":null}"#,
    );
    // The file's variables are for keys and the runtime; the program reads one only when
    // allowed.
    let hidden = bin()
        .args(["run", "--emit-format", "jsonl", "--env"])
        .arg(&env)
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(hidden.status.code(), Some(0), "{}", stderr(&hidden));
    assert_eq!(jsonl(&hidden)[0]["payload"], serde_json::Value::Null);
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--metrics", "--env"])
        .arg(&env)
        .args(["--allow-env", "CONCERTO_CLI_*"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(jsonl(&out)[0]["payload"], "from-env-file");
    assert_stderr_has(&out, r#""emit_count":1"#);
    let missing = bin()
        .args(["run", "--env", "/nonexistent/file.env"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// A one-thread HTTP server that answers every request with 401 and an error body that
/// echoes `echo` (as some providers echo the key they were given). Returns its base URL.
fn echoing_server(echo: &str) -> String {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = format!(
        r#"{{"error": {{"message": "Incorrect API key provided: {echo}", "type": "invalid_request_error"}}}}"#
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = common::read_request(&mut stream);
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_canary_api_key_never_appears_in_any_output() {
    let canary = "sk-canary-7f3a9c2e1b5d4a68";
    let url = echoing_server(canary);
    let dir = std::env::temp_dir().join(format!("concerto-cli-canary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The bundled agent example, pointed at the echoing server.
    let mut ir: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(harbour()).unwrap()).unwrap();
    for conn in ir["connections"].as_array_mut().unwrap() {
        conn["config"]["base_url"] = serde_json::Value::String(url.clone());
        conn["config"]["retry"] = serde_json::json!({"max_attempts": 1, "backoff": "none"});
    }
    let path = save_program(&dir, "harbour.conc-ir", &ir);
    let record = dir.join("calls.jsonl");
    for format in ["jsonl", "text"] {
        let out = bin()
            .args(["run", "--metrics", "--allow-net", "127.0.0.1"])
            .args(["--emit-format", format, "--record"])
            .arg(&record)
            .arg(&path)
            .env("OPENAI_API_KEY", canary)
            .env("ANTHROPIC_API_KEY", canary)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        // The first call is a builder call: its error ends the run.
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("401"), "{}", stderr(&out));
        assert!(!stdout(&out).contains(canary), "stdout leaks the key");
        assert!(
            !stderr(&out).contains(canary),
            "stderr leaks the key: {}",
            stderr(&out)
        );
        let recorded = std::fs::read_to_string(&record).unwrap();
        assert!(!recorded.is_empty());
        assert!(!recorded.contains(canary), "the recording leaks the key");
    }
}

/// A copy of the tool test program `name` with `replacements` applied, written into `dir`.
fn tool_program(dir: &Path, name: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let mut text =
        std::fs::read_to_string(repo().join(format!("tests/tools/{name}.conc-ir"))).unwrap();
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    let path = dir.join(format!("{name}.conc-ir"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tool_flags_switch_tools_off_and_methods_on() {
    let dir = fresh_dir("tool-flags");
    let ir = tool_program(&dir, "own_tools", &[]);
    let run = |flags: &[&str]| {
        let mut cmd = bin();
        cmd.args(["run", "--emit-format", "jsonl"])
            .args(flags)
            .arg(&ir);
        stdout(&cmd.output().unwrap())
    };
    let default = run(&[]);
    assert!(
        default.contains(r#"{"channel":"add","payload":5}"#),
        "{default}"
    );
    let disabled = run(&["--disable-tool", "Calc"]);
    assert!(
        disabled.contains(r#"{"channel":"add","payload":-1}"#),
        "{disabled}"
    );
    assert!(disabled.contains("--disable-tool Calc"), "{disabled}");
    let one_method = run(&["--allow-tool", "Calc.add"]);
    assert!(
        one_method.contains(r#"{"channel":"add","payload":5}"#),
        "{one_method}"
    );
    assert!(
        one_method.contains(r#"{"channel":"mul","payload":-1}"#),
        "{one_method}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn allow_fs_opens_one_directory_to_std_fs() {
    let dir = fresh_dir("allow-fs");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let ir = tool_program(
        &dir,
        "fs_sandbox",
        &[
            ("ROOT", root.to_str().unwrap()),
            ("SECRET", secret.to_str().unwrap()),
        ],
    );
    let refused = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_stderr_has(&refused, "--allow-fs");
    let allowed = bin()
        .args(["run", "--emit-format", "jsonl", "--allow-fs"])
        .arg(&root)
        .arg(&ir)
        .output()
        .unwrap();
    let out = stdout(&allowed);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    assert!(
        out.contains(r#"{"channel":"read","payload":"first line\nsecond line\n"}"#),
        "{out}"
    );
    assert!(!out.contains("escaped"), "{out}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn persist_keeps_a_hashmap_between_runs_and_the_byte_limit_stops_a_program() {
    let dir = fresh_dir("persist");
    let file = dir.join("counts.json");
    let counter = repo().join("tests/memory/counter.conc-ir");
    let persist = format!("counts={}", file.display());
    for expected in 1..=2 {
        let out = bin()
            .args(["run", "--emit-format", "jsonl", "--persist", &persist])
            .arg(&counter)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let line = format!(r#"{{"channel":"runs","payload":{expected}}}"#);
        assert!(stdout(&out).contains(&line), "{}", stdout(&out));
    }
    let bad = bin()
        .args(["run", "--persist", "nope"])
        .arg(&counter)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("NAME=PATH"), "{}", stderr(&bad));

    let fill = repo().join("tests/memory/fill.conc-ir");
    let limited_run = |state: Option<&Path>| {
        let mut cmd = bin();
        cmd.args([
            "run",
            "--emit-format",
            "jsonl",
            "--max-hashmap-bytes",
            "50000",
        ]);
        if let Some(db) = state {
            cmd.arg("--state").arg(db);
        }
        cmd.arg(&fill).output().unwrap()
    };
    let limited = limited_run(None);
    assert_eq!(limited.status.code(), Some(1));
    assert_stderr_has(&limited, "hashmap 'big'");
    assert!(
        stdout(&limited).contains(r#""payload":40"#),
        "{}",
        stdout(&limited)
    );
    // A store that cannot enforce the limit: refused before the program runs, not ignored.
    let refused = limited_run(Some(&dir.join("limited.db")));
    assert_ne!(refused.status.code(), Some(0));
    assert_stderr_has(&refused, "max-hashmap-bytes");
    assert_eq!(stdout(&refused), "", "nothing ran");
    let _ = std::fs::remove_dir_all(dir);
}

/// The `{"metrics": …}` lines of a run's stderr.
fn metrics_lines(o: &Output) -> Vec<serde_json::Value> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with(r#"{"metrics""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn metrics_in_jsonl_mode_are_one_json_object_on_stderr() {
    let out = bin()
        .args(["run", "--mock", "--metrics", "--emit-format", "jsonl"])
        .arg(harbour())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let found = metrics_lines(&out);
    assert_eq!(found.len(), 1, "one metrics object: {}", stderr(&out));
    let m = &found[0]["metrics"];
    assert!(m["total_tokens"].as_u64().unwrap() > 0, "{m}");
    assert!(m["agent_calls"].as_u64().unwrap() > 0, "{m}");
    let emits = jsonl(&out);
    assert_eq!(m["emit_count"].as_u64().unwrap(), emits.len() as u64);
    for (kind, names) in [
        ("agents", ["Clerk", "Planner"]),
        ("connections", ["openai", "anthropic"]),
    ] {
        for name in names {
            let c = &m[kind][name];
            assert!(c["requests"].as_u64().unwrap() > 0, "{kind} {name}: {m}");
            assert!(
                c["total_tokens"].as_u64().unwrap() > 0,
                "{kind} {name}: {m}"
            );
            // The mock has no price: unknown, never a made-up zero.
            assert!(c["cost_usd"].is_null(), "{kind} {name}: {m}");
        }
    }
    let by_agent: u64 = ["Clerk", "Planner"]
        .iter()
        .map(|a| m["agents"][a]["total_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(by_agent, m["total_tokens"].as_u64().unwrap());
    assert!(m["estimated_cost_usd"].is_null(), "{m}");
    // stdout still carries emits only.
    for line in stdout(&out).lines() {
        let obj: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(obj["channel"].is_string(), "not an emit: {line}");
        assert_eq!(obj.as_object().unwrap().len(), 2, "not an emit: {line}");
    }
    assert!(!stdout(&out).contains("metrics"));
}

#[test]
fn metrics_in_text_mode_are_a_table_on_stderr() {
    let out = bin()
        .args(["run", "--mock", "--metrics"])
        .arg(harbour())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(metrics_lines(&out).is_empty(), "no JSON for people: {err}");
    let row = |label: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` row: {err}"))
            .to_string()
    };
    let number = |label: &str| -> u64 {
        row(label)
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(number("total tokens") > 0, "{err}");
    assert!(number("agent calls") > 0, "{err}");
    assert_eq!(number("emits"), stdout(&out).lines().count() as u64);
    assert!(row("estimated cost").contains("unknown"), "{err}");
    for name in ["Clerk", "Planner", "openai", "anthropic"] {
        let cells: Vec<String> = row(name).split_whitespace().map(String::from).collect();
        assert!(
            cells[1].parse::<u64>().unwrap() > 0,
            "calls of {name}: {err}"
        );
    }
    assert!(err.contains("calls"), "column headers: {err}");
    // stdout still carries emits only.
    for line in stdout(&out).lines() {
        assert!(line.starts_with("[emit:"), "not an emit: {line}");
    }
}

/// The `--debug` trace lines of a run's stderr, as `(function, pc, op, top)`.
fn trace_lines(o: &Output) -> Vec<(String, u32, String, String)> {
    stderr(o)
        .lines()
        .filter(|l| l.contains("concerto::trace:"))
        .map(|line| {
            let field = |name: &str| -> String {
                let start = line
                    .find(&format!(" {name}="))
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    + name.len()
                    + 2;
                let rest = &line[start..];
                if name == "top" {
                    rest.to_string()
                } else {
                    rest.split(' ').next().unwrap().to_string()
                }
            };
            (
                field("function"),
                field("pc").parse().unwrap(),
                field("op"),
                field("top"),
            )
        })
        .collect()
}

#[test]
fn debug_traces_one_line_per_op_to_stderr() {
    // `let x = 2 + 40; emit("sum", x); return 2`
    let ir = write_ir(
        "trace.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"ADD"},{"op":"STORE_LOCAL","name":"x"},
           {"op":"LOAD_CONST","arg":2},{"op":"LOAD_LOCAL","name":"x"},{"op":"EMIT"},
           {"op":"LOAD_CONST","arg":0},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"int","value":2},{"index":1,"type":"int","value":40},{"index":2,"type":"string","value":"sum"}"#,
    );
    let plain = bin()
        .env_remove("RUST_LOG")
        .args(["run", "--emit-format", "jsonl"])
        .arg(&ir)
        .output()
        .unwrap();
    let out = bin()
        .env_remove("RUST_LOG")
        .args(["run", "--emit-format", "jsonl", "--debug"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The program's output is the same; the trace is on stderr only.
    assert_eq!(stdout(&out), stdout(&plain));
    assert_eq!(stdout(&out).trim(), r#"{"channel":"sum","payload":42}"#);
    assert!(trace_lines(&plain).is_empty(), "{}", stderr(&plain));
    let lines = trace_lines(&out);
    assert!(lines.len() >= 4, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains('\u{1b}'),
        "no colours when not a terminal"
    );
    // Straight-line code: one line per op, in order, every one in main.
    for pair in lines.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "{lines:?}");
    }
    assert!(lines.iter().all(|(f, pc, _, _)| f == "main" && *pc <= 8));
    assert!(lines.iter().any(|(_, _, op, _)| op == "ADD"), "{lines:?}");
    let emit = lines
        .iter()
        .find(|(_, _, op, _)| op == "EMIT")
        .expect("an EMIT line");
    assert_eq!((emit.1, emit.3.as_str()), (6, r#""sum""#));
    assert_eq!(lines.last().unwrap().2, "RETURN");
}

#[test]
fn debug_traces_calls_into_other_functions_and_errors() {
    let hello = repo().join("examples/hello/hello.conc-ir");
    let plain = bin()
        .env_remove("RUST_LOG")
        .arg("run")
        .arg(&hello)
        .output()
        .unwrap();
    let out = bin()
        .env_remove("RUST_LOG")
        .args(["run", "--debug"])
        .arg(&hello)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The same emits; pipeline durations are timings and may differ by a millisecond.
    let untimed = |o: &Output| {
        stdout(o)
            .lines()
            .map(|l| match l.find("\"duration_ms\": ") {
                Some(at) => l[..at].to_string(),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(untimed(&out), untimed(&plain));
    let lines = trace_lines(&out);
    for function in ["main", "reserve", "Order::total"] {
        assert!(
            lines.iter().any(|(f, _, _, _)| f == function),
            "no op of {function} traced"
        );
    }
    assert!(lines.iter().all(|(_, _, _, top)| top.chars().count() <= 81));
    // A failing program: the trace ends at the failing op, then the error as usual.
    let ir = write_ir(
        "trace-div.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0,"span":[7,3]},{"op":"LOAD_CONST","arg":1,"span":[7,7]},{"op":"DIV","span":[7,3]},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"int","value":1},{"index":1,"type":"int","value":0}"#,
    );
    let out = bin()
        .env_remove("RUST_LOG")
        .args(["run", "--debug"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("runtime error: division by zero"), "{err}");
    assert!(err.contains("`main` at 7:3"), "{err}");
    let last = trace_lines(&out).pop().expect("trace lines");
    assert_eq!((last.1, last.2.as_str()), (2, "DIV"));
}

#[test]
fn rust_log_selects_the_trace_too() {
    let hello = repo().join("examples/hello/hello.conc-ir");
    let out = bin()
        .env("RUST_LOG", "concerto::trace=trace")
        .arg("run")
        .arg(&hello)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(trace_lines(&out).len() > 100, "{}", stderr(&out));
    // --debug traces whatever level RUST_LOG sets for the rest.
    let out = bin()
        .env("RUST_LOG", "warn")
        .args(["run", "--debug"])
        .arg(&hello)
        .output()
        .unwrap();
    assert!(trace_lines(&out).len() > 100);
}

#[test]
fn help_documents_debug() {
    let top = bin().arg("--help").output().unwrap();
    assert!(stdout(&top).contains("--debug"), "{}", stdout(&top));
    let run = bin().args(["run", "--help"]).output().unwrap();
    let text = stdout(&run);
    assert!(text.contains("--debug"), "{text}");
    assert!(text.contains("concerto::trace"), "{text}");
}

/// Lines of a file (none when it does not exist yet).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[test]
fn a_killed_run_resumes_without_repeating_completed_calls() {
    let dir = fresh_dir("resume");
    let db = dir.join("state.db");
    let program = repo().join("tests/resume/ten_calls.conc-ir");
    let first_log = dir.join("first.jsonl");
    let mut child = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--mock",
            "--mock-latency-ms",
            "150",
        ])
        .arg("--state")
        .arg(&db)
        .arg("--record")
        .arg(&first_log)
        .arg(&program)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once six calls have completed (the recorder logs each completed call).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while lines_of(&first_log).len() < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run stalled"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let first = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&first.stderr).to_string();
    let run_id = err
        .lines()
        .find_map(|l| l.strip_prefix("run id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id on stderr: {err}"))
        .to_string();
    let completed_first = lines_of(&first_log).len();
    assert!((6..10).contains(&completed_first), "{completed_first}");

    let second_log = dir.join("second.jsonl");
    let resumed = bin()
        .args(["run", "--emit-format", "jsonl", "--mock"])
        .arg("--state")
        .arg(&db)
        .args(["--resume", &run_id])
        .arg("--record")
        .arg(&second_log)
        .arg(&program)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    // The mock's request log: exactly the calls that had not completed (at most one repeated:
    // a call completed but killed before its journal record was committed).
    let asked: Vec<String> = lines_of(&second_log)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["request"]["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let remaining = 10 - completed_first;
    assert!(
        asked.len() == remaining || asked.len() == remaining + 1,
        "first run completed {completed_first}; resumed run asked {asked:?}"
    );
    assert_eq!(asked.last().map(String::as_str), Some("step 9"));
    // The consumer of both runs' output sees every emit once: the resumed run delivers only
    // what the first run had not delivered (the emit in flight at the kill at most twice).
    let expected: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"channel":"step","payload":[{i},"[mock response to: step {i}]"]}}"#))
        .chain([r#"{"channel":"done","payload":10}"#.to_string()])
        .collect();
    let first_out: Vec<String> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let resumed_out: Vec<String> = stdout(&resumed).lines().map(str::to_string).collect();
    assert_eq!(first_out[..], expected[..first_out.len()], "first run");
    let start = expected.len() - resumed_out.len();
    assert!(
        start == first_out.len() || start + 1 == first_out.len(),
        "first run delivered {first_out:?}, the resumed run {resumed_out:?}"
    );
    assert_eq!(resumed_out[..], expected[start..], "resumed run");
    let _ = std::fs::remove_dir_all(dir);
}

/// A run traced with `--debug` is journaled like any other: resumed under its id, it asks
/// the provider nothing again.
#[test]
fn a_debugged_run_is_journaled_and_resumes_without_repeating_calls() {
    let dir = fresh_dir("resume-debug");
    let db = dir.join("state.db");
    let program = repo().join("tests/resume/ten_calls.conc-ir");
    let run = |log: &Path, extra: &[&str]| {
        bin()
            .args(["run", "--emit-format", "jsonl", "--mock", "--debug"])
            .arg("--state")
            .arg(&db)
            .arg("--record")
            .arg(log)
            .args(extra)
            .arg(&program)
            .output()
            .unwrap()
    };
    let first_log = dir.join("first.jsonl");
    let first = run(&first_log, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(lines_of(&first_log).len(), 10);
    let err = stderr(&first);
    let run_id = err
        .lines()
        .find_map(|l| l.strip_prefix("run id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id on stderr"))
        .to_string();
    let second_log = dir.join("second.jsonl");
    let resumed = run(&second_log, &["--resume", &run_id]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        lines_of(&second_log).is_empty(),
        "the resumed run asked again: {:?}",
        lines_of(&second_log)
    );
    // It had delivered everything: nothing again, unless asked for.
    assert_eq!(stdout(&resumed), "", "emits delivered again");
    let third_log = dir.join("third.jsonl");
    let again = run(&third_log, &["--resume", &run_id, "--replay-emits"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(lines_of(&third_log).is_empty());
    let out = stdout(&again);
    assert_eq!(out.lines().count(), 11, "{out}");
    assert!(out.contains(r#"{"channel":"step","payload":[3,"[mock response to: step 3]"]}"#));
    assert!(out.contains(r#"{"channel":"done","payload":10}"#), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A resumed run does not send a `std::http` request or append to a file again: it gets the
/// reply and the contents the first run got.
#[test]
fn a_resumed_run_does_not_repeat_its_http_requests_or_file_writes() {
    let dir = fresh_dir("resume-outside");
    let db = dir.join("state.db");
    let (url, seen) = recording_server();
    let server = url.trim_start_matches("http://").to_string();
    let log = dir.join("orders.log");
    let program = dir.join("outside_once.conc-ir");
    let ir = std::fs::read_to_string(repo().join("tests/resume/outside_once.conc-ir"))
        .unwrap()
        .replace("SERVER", &server)
        .replace("LOG_FILE", log.to_str().unwrap());
    std::fs::write(&program, ir).unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["run", "--emit-format", "jsonl", "--allow-net", "127.0.0.1"])
            .arg("--allow-fs")
            .arg(&dir)
            .arg("--state")
            .arg(&db)
            .args(extra)
            .arg(&program)
            .env("RESUME_GO", "now")
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert_stderr_has(&first, "RESUME_GO");
    let err = stderr(&first);
    let run_id = err
        .lines()
        .find_map(|l| l.strip_prefix("run id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id on stderr: {err}"))
        .to_string();
    let posts = || {
        String::from_utf8_lossy(&seen.lock().unwrap())
            .matches("POST /orders")
            .count()
    };
    assert_eq!(posts(), 1);
    let first_out = jsonl(&first);
    assert_eq!(first_out.len(), 2, "{first_out:?}");
    // With --replay-emits the resumed run shows the journaled replies again.
    let resumed = run(&[
        "--resume",
        &run_id,
        "--allow-env",
        "RESUME_GO",
        "--replay-emits",
    ]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(posts(), 1, "the resumed run sent the request again");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "appended\n");
    let out = jsonl(&resumed);
    assert_eq!(out[0]["payload"], 401);
    assert_eq!(out[1]["payload"], "appended\n");
    assert_eq!(out[2]["payload"], "now");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resume_without_a_durable_store_is_a_usage_error() {
    let out = bin()
        .args(["run", "--resume", "abc"])
        .arg(repo().join("tests/resume/ten_calls.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--state"), "{}", stderr(&out));
    // An empty run id or store location is refused, not taken as a name.
    for args in [
        ["--state", "", "--resume", "abc"],
        ["--state", "s.db", "--resume", ""],
    ] {
        let out = bin()
            .arg("run")
            .args(args)
            .arg(repo().join("tests/resume/ten_calls.conc-ir"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_stderr_has(&out, "--state and --resume take a value that is not empty");
    }
}

// ---- concertoc 7ad10db programs: `concerto test`, `check`, source files ----

/// A fresh empty folder under the system temp dir.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "concerto-cli-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn concerto_test_reports_each_test_and_fails_when_one_fails() {
    let out = bin()
        .arg("test")
        .arg(programs().join("checks.head.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "  PASS  harbour :: docking records the berth",
        "  PASS  harbour :: every test starts with empty berths",
        "  PASS  pilot :: a mocked model answers without a request",
        "  FAIL  pilot :: counting is off by one",
        "  PASS  pilot :: a panic is expected (expected failure)",
        "  FAIL  pilot :: the message must match",
        "test result: FAILED. 4 passed, 2 failed",
        "  pilot :: counting is off by one -- assertion failed: 4 != 5",
        "  pilot :: the message must match -- expected a failure containing \"rocks\"",
    ] {
        assert!(text.contains(line), "stdout lacks {line:?}:\n{text}");
    }
    // Tests never run main.
    assert!(!text.contains("main_ran"), "{text}");
}

#[test]
fn concerto_test_filters_and_quiets() {
    let ir = programs().join("checks.head.conc-ir");
    let out = bin()
        .args(["test", "--filter", "harbour"])
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("running 2 tests (4 filtered out)"), "{text}");
    assert!(text.contains("2 passed, 0 failed"), "{text}");
    assert!(!text.contains("pilot ::"), "{text}");

    let quiet = bin().args(["test", "--quiet"]).arg(&ir).output().unwrap();
    let text = stdout(&quiet);
    assert!(!text.contains("PASS"), "{text}");
    assert!(
        text.contains("  FAIL  pilot :: counting is off by one"),
        "{text}"
    );
    assert!(text.contains("4 passed, 2 failed"), "{text}");
}

#[test]
fn concerto_test_refuses_a_state_store() {
    let out = bin()
        .args(["test", "--state", "state.db"])
        .arg(programs().join("checks.head.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_stderr_has(&out, "--state cannot be used with `concerto test`");
    assert_eq!(stdout(&out), "");
}

#[test]
fn concerto_run_never_runs_tests() {
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(programs().join("checks.head.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"channel\":\"docked\",\"payload\":\"Borealis\"}\n{\"channel\":\"main_ran\",\"payload\":true}\n"
    );
}

#[test]
fn a_file_with_only_tests_runs_under_test_and_fails_under_run() {
    let dir = scratch("tests-only");
    let ir = dir.join("only.conc-ir");
    std::fs::write(
        &ir,
        r#"{"version":"0.1.0","module":"only","source_file":"only.conc",
        "constants":[{"index":0,"type":"int","value":2},{"index":1,"type":"nil","value":null}],
        "tests":[{"description":"two is two","expect_fail":false,"instructions":[
          {"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":0},{"op":"LOAD_LOCAL","name":"assert_eq"},
          {"op":"CALL","argc":2},{"op":"POP"},{"op":"LOAD_CONST","arg":1},{"op":"RETURN"}]}],
        "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
          "debug_info":true,"entry_point":"main"}}"#,
    )
    .unwrap();
    let test = bin().arg("test").arg(&ir).output().unwrap();
    assert_eq!(test.status.code(), Some(0), "{}", stderr(&test));
    assert!(
        stdout(&test).contains("1 passed, 0 failed"),
        "{}",
        stdout(&test)
    );
    let run = bin().arg("run").arg(&ir).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_stderr_has(&run, "has only tests");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_names_the_dialect_and_refuses_a_mix() {
    let head = bin()
        .arg("check")
        .arg(programs().join("ferry.head.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(head.status.code(), Some(0), "{}", stderr(&head));
    assert_stderr_has(&head, "concertoc 7ad10db");
    let seed = bin()
        .arg("check")
        .arg(repo().join("examples/harbour/harbour.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(seed.status.code(), Some(0), "{}", stderr(&seed));
    assert_stderr_has(&seed, "concertoc 1a8ede9");

    // 7ad10db's `models` beside 1a8ede9's `hosts`.
    let mut ir: serde_json::Value =
        serde_json::from_slice(&std::fs::read(programs().join("checks.head.conc-ir")).unwrap())
            .unwrap();
    ir["hosts"] = serde_json::json!([{"name": "Old", "connector": "old"}]);
    let dir = scratch("mixed");
    let path = dir.join("mixed.conc-ir");
    std::fs::write(&path, ir.to_string()).unwrap();
    let mixed = bin().arg("check").arg(&path).output().unwrap();
    assert_eq!(mixed.status.code(), Some(2));
    assert_stderr_has(&mixed, "`hosts` (1a8ede9 external agents)");
    assert_stderr_has(&mixed, "`models` (7ad10db LLM agents)");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_source_file_is_compiled_and_its_relative_paths_resolve_next_to_it() {
    // Run from an unrelated folder: the agent's `echo_agent.py` is found next to the source,
    // not in the temporary folder the IR was compiled into nor in the working directory.
    let cwd = scratch("source");
    let log = cwd.join("compiler.log");
    let out = bin()
        .current_dir(&cwd)
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-tool",
            "Ferry",
            "--compiler",
        ])
        .arg(programs().join("fake_concertoc.sh"))
        .arg(programs().join("ferry.conc"))
        .env("FAKE_CONCERTOC_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"channel\":\"ferry\",\"payload\":\"heard: cross the sound\"}\n"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let words: Vec<&str> = logged.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{logged}");
    assert!(words[1].ends_with("programs/ferry.conc"), "{logged}");
    // The IR went to a temporary folder that is gone after the run.
    let ir = Path::new(words[2]);
    assert!(ir.ends_with("ferry.conc-ir"), "{logged}");
    assert!(!ir.starts_with(programs()), "{logged}");
    assert!(
        !ir.exists(),
        "the temporary IR {} is still there",
        ir.display()
    );
    let _ = std::fs::remove_dir_all(cwd);
}

#[test]
fn the_compiler_is_found_on_path_and_a_missing_one_says_how_to_get_it() {
    let bindir = scratch("path");
    std::os::unix::fs::symlink(
        programs().join("fake_concertoc.sh"),
        bindir.join("concertoc"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = bin()
        .args(["test", "--filter", "harbour"])
        .arg(programs().join("checks.conc"))
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 passed, 0 failed"),
        "{}",
        stdout(&out)
    );

    let empty = scratch("nopath");
    let missing = bin()
        .arg("run")
        .arg(programs().join("checks.conc"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert_stderr_has(&missing, "`concertoc` was not found");
    assert_stderr_has(&missing, "--compiler PATH");
    let _ = std::fs::remove_dir_all(bindir);
    let _ = std::fs::remove_dir_all(empty);
}

#[test]
fn each_emit_reaches_a_piped_stdout_while_the_program_still_runs() {
    use std::io::BufRead;
    // Emits once, then loops for ever.
    let spin = repo().join("tests/limits/spin.conc-ir");
    let mut child = bin()
        .args(["run", "--emit-format", "jsonl", "--timeout", "60"])
        .arg(&spin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(20));
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("the emit did not arrive while the program ran");
    assert_eq!(line, "{\"channel\":\"started\",\"payload\":1}\n");
    assert!(running, "the program had already ended");
}

#[test]
fn version_names_the_supported_compilers_and_completions_cover_the_commands() {
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let version = stdout(&out);
    assert!(
        version.contains("1a8ede9") && version.contains("7ad10db"),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["run", "test", "check", "allow-tool", "max-steps"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let bad = bin().args(["completions", "cmd.exe"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// A loopback server that keeps every byte it receives and answers 401; its base URL and
/// what it received.
fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.lock().unwrap().extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&buf[..n]).contains("\r\n\r\n") {
                    break;
                }
            }
            let body = r#"{"error": {"message": "no", "type": "invalid_request_error"}}"#;
            let response = format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (format!("http://{addr}"), seen)
}

/// The harbour example with every connection reading its key from `variable` and sending
/// to `url`, written into `dir`.
fn harbour_keyed(dir: &Path, url: &str, variable: &str) -> PathBuf {
    let mut ir: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(harbour()).unwrap()).unwrap();
    for conn in ir["connections"].as_array_mut().unwrap() {
        conn["config"]["base_url"] = serde_json::json!(url);
        conn["config"]["api_key_env"] = serde_json::json!(variable);
        conn["config"]["retry"] = serde_json::json!({"max_attempts": 1, "backoff": "none"});
    }
    save_program(dir, "harbour-keyed.conc-ir", &ir)
}

#[test]
fn a_key_variable_the_host_did_not_approve_is_never_read_or_sent() {
    let canary = "canary-aws-9d1e7c3b";
    let dir = fresh_dir("key-approval");
    let (url, seen) = recording_server();
    let path = harbour_keyed(&dir, &url, "MY_AWS_SECRET");
    // First the host: a base_url the program chose needs --allow-net, or nothing is sent.
    let host_refused = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-env",
            "MY_AWS_SECRET",
        ])
        .arg(&path)
        .env("MY_AWS_SECRET", canary)
        .output()
        .unwrap();
    assert_eq!(
        host_refused.status.code(),
        Some(1),
        "{}",
        stderr(&host_refused)
    );
    assert_stderr_has(&host_refused, "--allow-net 127.0.0.1");
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing may reach the server"
    );
    let run = |extra: &[&str]| {
        bin()
            .args(["run", "--emit-format", "jsonl", "--allow-net", "127.0.0.1"])
            .args(extra)
            .arg(&path)
            .env("MY_AWS_SECRET", canary)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert_stderr_has(&refused, "MY_AWS_SECRET");
    assert_stderr_has(&refused, "--allow-env MY_AWS_SECRET");
    assert!(!stdout(&refused).contains(canary) && !stderr(&refused).contains(canary));
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing may reach the server"
    );

    // Approved with --allow-env: the key goes to the connection's server.
    let approved = run(&["--allow-env", "MY_AWS_SECRET"]);
    assert_eq!(approved.status.code(), Some(1), "{}", stderr(&approved));
    assert_stderr_has(&approved, "401");
    let received = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(received.contains(&format!("Bearer {canary}")), "{received}");
    assert!(!stderr(&approved).contains(canary));

    // Approved by an --env FILE that sets it (and only there).
    seen.lock().unwrap().clear();
    let env = dir.join("keys.env");
    std::fs::write(&env, "MY_AWS_SECRET=from-the-file-5b2a\n").unwrap();
    let from_file = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--env",
        ])
        .arg(&env)
        .arg(&path)
        .env_remove("MY_AWS_SECRET")
        .output()
        .unwrap();
    assert_eq!(from_file.status.code(), Some(1), "{}", stderr(&from_file));
    let received = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(received.contains("Bearer from-the-file-5b2a"), "{received}");
}

/// Spellings of a host that is not the allowed one are refused before anything is sent:
/// userinfo naming the allowed host, a numeric address, a different port, mixed case of a
/// name that is not allowed.
#[test]
fn a_connection_host_in_disguise_is_refused_and_receives_nothing() {
    let dir = fresh_dir("host-disguise");
    let (url, seen) = recording_server();
    let port = url.rsplit(':').next().unwrap().to_string();
    let cases = [
        (format!("http://127.0.0.2@127.0.0.1:{port}"), "127.0.0.2"),
        (format!("http://2130706433:{port}"), "127.0.0.1"),
        (format!("http://127.0.0.1:{port}"), "127.0.0.1:1"),
        (format!("http://LocalHost:{port}"), "example.com"),
    ];
    for (base, allowed) in &cases {
        let path = harbour_keyed(&dir, base, "OPENAI_API_KEY");
        let out = bin()
            .args(["run", "--emit-format", "jsonl", "--allow-net", allowed])
            .arg(&path)
            .env("OPENAI_API_KEY", "sk-canary-disguise")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{base}: {}", stderr(&out));
        assert_stderr_has(&out, "--allow-net");
        assert!(!stderr(&out).contains("sk-canary-disguise"));
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{} bytes reached the server",
        seen.lock().unwrap().len()
    );
    // The positive control: the same server, allowed, receives the request.
    let path = harbour_keyed(&dir, &url, "OPENAI_API_KEY");
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--allow-net", "127.0.0.1"])
        .arg(&path)
        .env("OPENAI_API_KEY", "sk-canary-disguise")
        .output()
        .unwrap();
    assert_stderr_has(&out, "401");
    assert!(!seen.lock().unwrap().is_empty());
}

/// A program whose manifest sets `provider = "mock"` runs offline, and says so on stderr.
#[test]
fn a_program_that_mocks_its_own_connection_says_so_on_stderr() {
    let dir = fresh_dir("program-mock");
    let mut ir: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(harbour()).unwrap()).unwrap();
    let mut names = Vec::new();
    // Spellings the connection layer takes for the mock: each must be announced.
    let spellings = ["mock", "Mock", " MOCK "];
    for (i, conn) in ir["connections"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        conn["config"] = serde_json::json!({"provider": spellings[i % spellings.len()]});
        names.push(conn["name"].as_str().unwrap().to_string());
    }
    assert!(names.len() >= 2, "the example has two connections");
    let path = save_program(&dir, "mocked.conc-ir", &ir);
    let out = bin()
        .args(["run", "--emit-format", "jsonl"])
        .arg(&path)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in &names {
        assert_stderr_has(
            &out,
            &format!("connection `{name}` answers from the built-in mock provider"),
        );
    }
}

/// A program naming the older HTTP+SSE transport is refused when it loads, by `check` as by
/// `run`, naming the transport and the alternatives (issue 16).
#[test]
fn the_old_sse_transport_is_refused_at_load_naming_the_alternatives() {
    let dir = std::env::temp_dir().join(format!("concerto-cli-sse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = interop::echo_program(
        &dir,
        serde_json::json!({"transport": "sse", "url": "http://127.0.0.1:9/sse"}),
    );
    let run = ["run", "--allow-tool", "Ev", "--allow-net", "127.0.0.1"];
    for args in [&["check"][..], &run[..]] {
        let command = args[0];
        let out = bin().args(args).arg(&program).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        for part in [
            "MCP server Ev",
            "transport `sse`",
            "transport: \"http\"",
            "stdio",
        ] {
            assert!(stderr.contains(part), "{command}: {part}: {stderr}");
        }
        assert!(!stderr.contains("rmcp"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The one-call program `programs/fallback.conc-ir` with its connection's `base_url` (a
/// program's choice) at `url`, written into `dir`.
fn fallback_program_at(dir: &Path, url: &str) -> PathBuf {
    program_at(dir, "fallback.conc-ir", url, "fallback.conc-ir")
}

fn emitted(o: &Output, channel: &str) -> serde_json::Value {
    jsonl(o)
        .into_iter()
        .find(|e| e["channel"] == channel)
        .map(|e| e["payload"].clone())
        .unwrap_or_else(|| panic!("no emit on {channel}: {}", stdout(o)))
}

#[test]
fn a_bad_config_file_exits_two_naming_the_file_the_line_and_the_reason() {
    let dir = fresh_dir("bad-config");
    let ir = write_ir(
        "nil.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"nil","value":null}"#,
    );
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        "[connections.openai]\nmodel = \"gpt-4o-mini\"\nfallback = [{ connection = \"b\" }]\n",
    )
    .unwrap();
    let out = bin()
        .args(["run", "--config"])
        .arg(&config)
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_stderr_has(&out, &format!("config file `{}`", config.display()));
    assert_stderr_has(&out, "line 3");
    assert_stderr_has(&out, "unknown field `fallback`");
    let missing = bin()
        .args(["run", "--config"])
        .arg(dir.join("absent.toml"))
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert_stderr_has(&missing, "cannot read config file");
    // A connection that is neither the program's nor a fallback's: a misspelt name.
    std::fs::write(&config, "[connections.opena]\nmodel = \"gpt-4o-mini\"\n").unwrap();
    let misspelt = bin()
        .args(["run", "--config"])
        .arg(&config)
        .arg(&ir)
        .output()
        .unwrap();
    assert_eq!(misspelt.status.code(), Some(2), "{}", stderr(&misspelt));
    assert_stderr_has(
        &misspelt,
        "connections.opena is neither a connection of the program (it declares none) nor a \
         fallback's connection",
    );
}

/// The reviewed file instead of a long command line: `allow_net` lets the program's own
/// `base_url` be reached, the connection override names its key variable (no approval
/// needed) and a fallback to a connection only the file declares; a rate-limited primary
/// falls back, and the emits and `--metrics` name the connection that answered.
#[test]
fn a_config_file_opens_the_network_and_sets_a_fallback_that_answers() {
    let dir = fresh_dir("config-fallback");
    let (primary, primary_count) = scripted_server(|_| rate_limited());
    let (backup, backup_count) = scripted_server(|_| answered("backup-model", "Teal", (8, 3)));
    let program = fallback_program_at(&dir, &primary);
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            r#"# Reviewed deployment settings.
[connections.openai]
api_key_env = "CONCERTO_CFG_KEY"
retry = {{ max_attempts = 2, backoff = "none" }}
fallbacks = [{{ connection = "backup" }}]
fallback_on = ["rate_limited"]

[connections.backup]
base_url = "{backup}"
api_key_env = "CONCERTO_CFG_KEY"
model = "backup-model"

[permissions]
allow_net = ["127.0.0.1"]
"#
        ),
    )
    .unwrap();
    let run = |with_config: bool| {
        let mut cmd = bin();
        cmd.args(["run", "--metrics", "--emit-format", "jsonl"]);
        if with_config {
            cmd.arg("--config").arg(&config);
        }
        cmd.arg(&program)
            .env("CONCERTO_CFG_KEY", "sk-config-test")
            .env_remove("OPENAI_API_KEY")
            .output()
            .unwrap()
    };
    // Without the file the program's base_url is refused before anything is sent (the
    // program handles the refusal as a not_enabled AgentError).
    let refused = run(false);
    assert_eq!(refused.status.code(), Some(0), "{}", stderr(&refused));
    assert_eq!(emitted(&refused, "error_kind"), "not_enabled");
    assert_eq!(primary_count.load(std::sync::atomic::Ordering::SeqCst), 0);

    let out = run(true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "text"), "Teal");
    assert_eq!(emitted(&out, "connection"), "backup");
    assert_eq!(emitted(&out, "model"), "backup-model");
    let m = &metrics_lines(&out)[0]["metrics"];
    assert_eq!(m["connections"]["backup"]["requests"], 1, "{m}");
    assert_eq!(m["connections"]["backup"]["total_tokens"], 11, "{m}");
    assert!(m["connections"].get("openai").is_none(), "{m}");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        (primary_count.load(SeqCst), backup_count.load(SeqCst)),
        (2, 1)
    );
}

/// Issue 16, item 1, through the whole binary: a provider that keeps answering 429 after
/// the run's retry budget (set in the file's `[limits]`) is spent gives the program a
/// rate-limited `AgentError` with the provider's retry-after; the run goes on and exits 0.
#[test]
fn a_rate_limit_that_outlasts_the_retries_is_an_error_the_program_handles() {
    let dir = fresh_dir("config-budget");
    let (primary, count) = scripted_server(|_| rate_limited());
    let program = fallback_program_at(&dir, &primary);
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        "[connections.openai]\nretry = { max_attempts = 3, backoff = \"none\" }\n\n\
         [permissions]\nallow_net = [\"127.0.0.1\"]\n\n[limits]\nretry_budget = 1\n",
    )
    .unwrap();
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--config"])
        .arg(&config)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-config-test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "error_kind"), "rate_limited");
    assert_eq!(emitted(&out, "status"), 429);
    assert_eq!(emitted(&out, "retry_after_ms"), 30);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A limit flag on the command line replaces the file's value; a permission flag adds
    // to the file's list.
    let strict = dir.join("strict.toml");
    std::fs::write(&strict, "[limits]\nmax_steps = 1\n").unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["run", "--emit-format", "jsonl", "--config"])
            .arg(&strict)
            .args(extra)
            .arg(&program)
            .env("OPENAI_API_KEY", "sk-config-test")
            .output()
            .unwrap()
    };
    let stopped = run(&[]);
    assert_eq!(stopped.status.code(), Some(1), "{}", stderr(&stopped));
    assert_stderr_has(&stopped, "step");
    let flagged = run(&["--max-steps", "100000", "--allow-net", "127.0.0.1"]);
    assert_eq!(flagged.status.code(), Some(0), "{}", stderr(&flagged));
    assert_eq!(emitted(&flagged, "error_kind"), "rate_limited");
}

/// An `--allow-net` entry that is not a host allows nothing: it is refused at the start
/// rather than taken for a permission.
#[test]
fn an_allow_net_entry_that_is_not_a_host_is_a_usage_error() {
    let hello = repo().join("examples/hello/hello.conc-ir");
    for entry in ["http://127.0.0.1:18555", "127.0.0.1/v1", "*", ""] {
        let out = bin()
            .args(["run", "--allow-net", entry])
            .arg(&hello)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{entry}: {}", stderr(&out));
        assert_stderr_has(&out, &format!("invalid allowed domain `{entry}`"));
    }
    let fine = bin()
        .args([
            "run",
            "--allow-net",
            "127.0.0.1:18555",
            "--allow-net",
            "*.example.com",
        ])
        .arg(&hello)
        .output()
        .unwrap();
    assert_eq!(fine.status.code(), Some(0), "{}", stderr(&fine));
}

/// `--answer-awaits`: each emit-await is a line on stdout marked `"await": true`, answered by
/// the next line of stdin; a line that is not JSON and the end of input are errors the
/// program catches, each naming the channel.
#[test]
fn emit_await_is_answered_from_standard_input() {
    use std::io::{BufRead, BufReader, Write};
    let dir = fresh_dir("answer-awaits");
    let mut ir: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/emit/await_emit.conc-ir")).unwrap(),
    )
    .unwrap();
    assert_eq!(common::make_emit_awaits(&mut ir), 3);
    let program = dir.join("await_emit.conc-ir");
    std::fs::write(&program, ir.to_string()).unwrap();

    let refused = bin()
        .args(["run", "--answer-awaits"])
        .arg(&program)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_stderr_has(&refused, "--answer-awaits needs --emit-format jsonl");

    let mut child = bin()
        .args(["run", "--emit-format", "jsonl", "--answer-awaits"])
        .arg(&program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(
        next(),
        serde_json::json!({"channel": "before", "payload": 1})
    );
    // Each question is answered only after it is read: the program waits.
    let question = next();
    assert_eq!(question["await"], true);
    assert_eq!(question["channel"], "ask");
    assert_eq!(question["payload"]["question"], "proceed?");
    writeln!(stdin, r#"{{"go": true, "items": [1, 2]}}"#).unwrap();
    assert_eq!(
        next(),
        serde_json::json!({"channel": "answer", "payload": {"go": true, "items": [1, 2]}})
    );
    assert_eq!(next()["channel"], "nobody_listens");
    writeln!(stdin, "yes please").unwrap();
    let caught = next();
    assert_eq!(caught["channel"], "missing_handler");
    let message = caught["payload"].as_str().unwrap();
    assert!(
        message.contains("the answer to the emit-await on `nobody_listens` is not JSON"),
        "{message}"
    );
    assert_eq!(next()["channel"], "fails");
    drop(stdin);
    let caught = next();
    assert_eq!(caught["channel"], "handler_error");
    let message = caught["payload"].as_str().unwrap();
    assert!(
        message.contains("standard input ended before an answer to the emit-await on `fails`"),
        "{message}"
    );
    assert_eq!(
        next(),
        serde_json::json!({"channel": "after", "payload": 2})
    );
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

/// Resuming a run with a program that makes other effects than the journal records stops
/// at the first one that differs, naming its position and both effects; nothing of the
/// other program's effects is made.
#[test]
fn a_resumed_run_that_diverges_from_its_journal_stops_naming_both_effects() {
    let dir = fresh_dir("diverge");
    let db = dir.join("state.db");
    let first = bin()
        .args(["run", "--emit-format", "jsonl", "--resume", "shared-id"])
        .arg("--state")
        .arg(&db)
        .arg(repo().join("tests/memory/counter.conc-ir"))
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let record = dir.join("calls.jsonl");
    let other = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--mock",
            "--resume",
            "shared-id",
        ])
        .arg("--state")
        .arg(&db)
        .arg("--record")
        .arg(&record)
        .arg(repo().join("tests/resume/ten_calls.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1), "{}", stderr(&other));
    assert_stderr_has(
        &other,
        "run `shared-id` diverges from its journal at effect main#1",
    );
    assert_stderr_has(
        &other,
        "the journal has hashmap `counts`.get(\"runs\"), the program now makes agent call `Worker`",
    );
    assert!(
        lines_of(&record).is_empty(),
        "the other program's call was made"
    );
    assert_eq!(stdout(&other), "");
    let _ = std::fs::remove_dir_all(dir);
}

/// The `X` events of a `--trace` file, and the file's text.
fn trace_events(path: &Path) -> (Vec<serde_json::Value>, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the trace is JSON");
    let events = json["traceEvents"]
        .as_array()
        .expect("traceEvents")
        .iter()
        .filter(|e| e["ph"] == "X")
        .cloned()
        .collect();
    (events, text)
}

fn span_of(e: &serde_json::Value) -> (f64, f64) {
    let ts = e["ts"].as_f64().unwrap();
    (ts, ts + e["dur"].as_f64().unwrap())
}

/// `e` lies within `outer` in time, on the same track.
fn assert_inside(e: &serde_json::Value, outer: &serde_json::Value) {
    let ((s, t), (os, ot)) = (span_of(e), span_of(outer));
    assert!(os <= s && t <= ot, "{e} is not inside {outer}");
    assert_eq!(e["tid"], outer["tid"], "{e} / {outer}");
}

/// Issue 20, `--trace`, through the whole binary against loopback servers: a call whose
/// connection answers 429 twice falls back to a second connection. The trace holds the
/// run, the agent call, its request and the three HTTP attempts (two refused, with status
/// and error type, then the fallback's), nested in time on one track, with the GenAI
/// attributes of the reply; the key, the prompt and the completion appear nowhere in it.
#[test]
fn a_trace_file_shows_the_call_its_refused_attempts_and_the_fallback_that_answered() {
    let dir = fresh_dir("trace-fallback");
    let (primary, primary_count) = scripted_server(|_| rate_limited());
    let (backup, _) = scripted_server(|_| answered("backup-model", "Teal", (8, 3)));
    let program = fallback_program_at(&dir, &primary);
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            r#"[connections.openai]
api_key_env = "CONCERTO_TRACE_KEY"
retry = {{ max_attempts = 2, backoff = "none" }}
fallbacks = [{{ connection = "backup" }}]
fallback_on = ["rate_limited"]

[connections.backup]
base_url = "{backup}"
api_key_env = "CONCERTO_TRACE_KEY"
model = "backup-model"

[permissions]
allow_net = ["127.0.0.1"]
"#
        ),
    )
    .unwrap();
    let trace = dir.join("trace.json");
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--config"])
        .arg(&config)
        .arg("--trace")
        .arg(&trace)
        .arg(&program)
        .env("CONCERTO_TRACE_KEY", "sk-trace-canary-4711")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "text"), "Teal");
    assert_eq!(primary_count.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (events, text) = trace_events(&trace);
    for secret in ["sk-trace-canary-4711", "Name a colour", "Teal"] {
        assert!(!text.contains(secret), "{secret} is in the trace: {text}");
    }
    let named = |name: &str| -> Vec<serde_json::Value> {
        events
            .iter()
            .filter(|e| e["name"] == name)
            .cloned()
            .collect()
    };
    let run = &named("run")[0];
    let call = &named("invoke_agent Writer")[0];
    let args = &call["args"];
    assert_eq!(args["gen_ai.operation.name"], "invoke_agent", "{call}");
    assert_eq!(args["gen_ai.request.model"], "gpt-4o", "{call}");
    assert_eq!(args["gen_ai.response.model"], "backup-model", "{call}");
    assert_eq!(args["gen_ai.usage.input_tokens"], 8, "{call}");
    assert_eq!(args["gen_ai.usage.output_tokens"], 3, "{call}");
    assert_eq!(args["gen_ai.response.finish_reasons"], "stop", "{call}");
    assert_eq!(args["concerto.usage.estimated"], false, "{call}");
    assert_eq!(args["concerto.connection"], "openai", "{call}");
    assert_eq!(args["concerto.agent"], "Writer", "{call}");
    assert_eq!(args["gen_ai.agent.name"], "Writer", "{call}");
    assert_eq!(args["gen_ai.provider.name"], "openai", "{call}");
    assert_eq!(args["concerto.requests"], 1, "{call}");
    assert_eq!(
        args["concerto.cost_usd"], "unknown",
        "backup-model has no price: {call}"
    );
    // Where the call is in the source: `Writer.execute(...)` on line 10 of fallback.conc.
    assert_eq!(args["code.function.name"], "main", "{call}");
    assert_eq!(args["code.file.path"], "fallback.conc", "{call}");
    assert_eq!(args["code.line.number"], 10, "{call}");
    assert!(
        args["code.column.number"].as_u64().is_some_and(|c| c > 0),
        "{call}"
    );
    assert_inside(call, run);
    let request = &named("chat gpt-4o")[0];
    assert_eq!(
        request["args"]["concerto.connection"], "backup",
        "{request}"
    );
    assert_eq!(
        request["args"]["gen_ai.response.model"], "backup-model",
        "{request}"
    );
    assert_eq!(
        request["args"]["gen_ai.usage.output_tokens"], 3,
        "{request}"
    );
    assert_eq!(request["args"]["concerto.attempts"], 3, "{request}");
    assert_inside(request, call);
    let attempts: Vec<_> = events
        .iter()
        .filter(|e| e["args"]["concerto.attempt"].is_u64())
        .collect();
    assert_eq!(attempts.len(), 3, "{text}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_inside(attempt, request);
        let a = &attempt["args"];
        if i < 2 {
            assert_eq!(attempt["name"], "chat gpt-4o", "{attempt}");
            assert_eq!(a["concerto.attempt"], i as u64 + 1, "{attempt}");
            assert_eq!(a["concerto.fallback"], 0, "{attempt}");
            assert_eq!(a["concerto.connection"], "openai", "{attempt}");
            assert_eq!(a["gen_ai.provider.name"], "openai", "{attempt}");
            assert_eq!(a["http.response.status_code"], 429, "{attempt}");
            assert_eq!(a["error.type"], "429", "{attempt}");
        } else {
            assert_eq!(attempt["name"], "chat backup-model", "{attempt}");
            assert_eq!(a["concerto.fallback"], 1, "{attempt}");
            assert_eq!(a["concerto.connection"], "backup", "{attempt}");
            assert!(a.get("error.type").is_none(), "{attempt}");
        }
    }
    // In the order they were made.
    assert!(span_of(attempts[0]).1 <= span_of(attempts[1]).0, "{text}");
    assert!(span_of(attempts[1]).1 <= span_of(attempts[2]).0, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace` with calls made in parallel: two spawned tasks each make an agent call that the
/// mock answers after 300 ms. Each task has a track of its own, its call lies inside its
/// task's span, and the two calls overlap in time; the run takes about one call's time, not
/// two.
#[test]
fn a_trace_file_shows_calls_made_in_parallel_side_by_side() {
    let dir = fresh_dir("trace-parallel");
    let program = parallel_program(&dir);
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--mock",
            "--mock-latency-ms",
            "300",
            "--emit-format",
            "jsonl",
        ])
        .arg("--trace")
        .arg(&trace)
        .arg(&program)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        jsonl(&out)
            .iter()
            .filter(|e| e["channel"] == "finished")
            .count(),
        2,
        "{}",
        stdout(&out)
    );

    let (events, text) = trace_events(&trace);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let track_names: Vec<String> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        track_names.contains(&"task task_a".to_string()),
        "{track_names:?}"
    );
    assert!(
        track_names.contains(&"task task_b".to_string()),
        "{track_names:?}"
    );
    let run = events.iter().find(|e| e["name"] == "run").expect("run");
    let task_spans: Vec<_> = events.iter().filter(|e| e["name"] == "task").collect();
    let calls: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "invoke_agent Worker")
        .collect();
    assert_eq!((task_spans.len(), calls.len()), (2, 2), "{text}");
    for call in &calls {
        let task = task_spans
            .iter()
            .find(|t| t["tid"] == call["tid"])
            .expect("the call is on its task's track");
        assert_inside(call, task);
        assert_ne!(call["tid"], run["tid"], "{call}");
        let (s, t) = span_of(call);
        assert!(t - s >= 300_000.0, "the mock answered after 300 ms: {call}");
    }
    assert_ne!(calls[0]["tid"], calls[1]["tid"]);
    let ((a0, a1), (b0, b1)) = (span_of(calls[0]), span_of(calls[1]));
    assert!(a0 < b1 && b0 < a1, "the calls overlap: {text}");
    let (r0, r1) = span_of(run);
    assert!(
        r1 - r0 < 600_000.0,
        "the run took one call's time, not two: {run}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tests/async/tasks.conc-ir` with a `main` written here (concertoc has no spawn): spawn
/// `task_a` and `task_b`, await both, return nil. Each task makes one agent call and emits
/// `finished`.
fn parallel_program(dir: &Path) -> PathBuf {
    let tasks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/async/tasks.conc-ir");
    let mut ir: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tasks).unwrap()).unwrap();
    spawn_from_main(&mut ir, "task_a", "task_b");
    save_program(dir, "parallel.conc-ir", &ir)
}

/// Makes `main` spawn the functions `a` and `b` (no parameters) as tasks and await both
/// (neither compiler has a spawn the tests could write in source).
fn spawn_from_main(ir: &mut serde_json::Value, a: &str, b: &str) {
    let constants = ir["constants"].as_array_mut().unwrap();
    let base = constants.len();
    for (i, value) in [a, b].iter().enumerate() {
        constants.push(serde_json::json!({"index": base + i, "type": "string", "value": value}));
    }
    constants.push(serde_json::json!({"index": base + 2, "type": "nil", "value": null}));
    let main = ir["functions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "main")
        .unwrap();
    main["instructions"] = serde_json::json!([
        {"op": "LOAD_CONST", "arg": base},
        {"op": "SPAWN_ASYNC"},
        {"op": "LOAD_CONST", "arg": base + 1},
        {"op": "SPAWN_ASYNC"},
        {"op": "AWAIT_ALL", "count": 2},
        {"op": "POP"},
        {"op": "LOAD_CONST", "arg": base + 2},
        {"op": "RETURN"}
    ]);
}

/// Where a call's time went, seen by the program, `--metrics` and `--trace`: two calls run
/// as parallel tasks through a connection that allows one request at a time, against a
/// loopback server that holds each response head back 150 ms and streams three chunks 80 ms
/// apart over a new connection each. Each `Response.timing` adds up (the parts within the
/// total), one call waited for the other (`queue_ms`), both made a connection, both
/// streamed (`first_token_ms` after `ttfb_ms`); the metrics sum the two; each request span
/// and attempt span carries the same parts in microseconds.
#[test]
fn response_timing_metrics_and_spans_show_where_a_calls_time_went() {
    use std::io::Write;
    let dir = fresh_dir("timing");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                if common::read_request(&mut stream).is_none() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(150));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                );
                let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
                    let c = serde_json::json!({"id": "s", "object": "chat.completion.chunk",
                        "created": 1, "model": "gpt-4o",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                    format!("data: {c}\n\n")
                };
                let mut events = vec![chunk(
                    serde_json::json!({"role": "assistant"}),
                    serde_json::Value::Null,
                )];
                for piece in ["All ", "clear", "."] {
                    events.push(chunk(
                        serde_json::json!({"content": piece}),
                        serde_json::Value::Null,
                    ));
                }
                events.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
                events.push("data: [DONE]\n\n".to_string());
                for event in events {
                    std::thread::sleep(std::time::Duration::from_millis(80));
                    if stream.write_all(event.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut ir = program_ir("timed.head.conc-ir");
    let config = &mut ir["connections"][0]["config"];
    config["base_url"] = serde_json::json!(url);
    config["stream"] = serde_json::json!(true);
    config["rate_limit"] = serde_json::json!({"concurrent_requests": 1});
    spawn_from_main(&mut ir, "first", "second");
    let program = save_program(&dir, "timed.conc-ir", &ir);
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--metrics",
            "--allow-net",
            "127.0.0.1",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-timing-canary")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let timings: Vec<serde_json::Value> = jsonl(&out)
        .into_iter()
        .filter(|e| e["channel"] == "timing")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(timings.len(), 2, "{}", stdout(&out));
    let ms = |t: &serde_json::Value, field: &str| {
        t[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} is not a number: {t}"))
    };
    for t in &timings {
        let (total, queue, ttfb, first) = (
            ms(t, "total_ms"),
            ms(t, "queue_ms"),
            ms(t, "ttfb_ms"),
            ms(t, "first_token_ms"),
        );
        assert!(ms(t, "connect_ms") <= ttfb, "{t}");
        assert!(ttfb >= 150 && first >= ttfb + 80, "{t}");
        assert!(queue + first <= total, "{t}");
        assert!(ms(t, "overhead_us") / 1000 + queue + ttfb <= total, "{t}");
    }
    let queued: Vec<u64> = timings.iter().map(|t| ms(t, "queue_ms")).collect();
    assert!(
        queued.iter().any(|q| *q >= 300) && queued.iter().any(|q| *q < 150),
        "one call waited for the other's ~550 ms: {queued:?}"
    );

    let metrics = &metrics_lines(&out)[0]["metrics"]["connections"]["openai"];
    assert_eq!(metrics["timed_requests"], 2, "{metrics}");
    assert!(metrics["queue_ms"].as_u64().unwrap() >= 300, "{metrics}");
    assert!(metrics["ttfb_ms"].as_u64().unwrap() >= 300, "{metrics}");
    // Whole milliseconds: the sum of the microseconds, rounded down once.
    let summed: u64 = timings.iter().map(|t| ms(t, "total_ms")).sum();
    let llm_ms = metrics["llm_time_ms"].as_u64().unwrap();
    assert!(
        (summed..=summed + 1).contains(&llm_ms),
        "{summed}: {metrics}"
    );

    // The table for people has the same sums on one line.
    let text = bin()
        .args(["run", "--metrics", "--allow-net", "127.0.0.1"])
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-timing-canary")
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let line = stderr(&text)
        .lines()
        .find(|l| l.trim_start().starts_with("LLM time"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no LLM time line: {}", stderr(&text)));
    assert!(
        line.contains(" ms over 2 timed requests (waiting for limits "),
        "{line}"
    );

    let (events, _) = trace_events(&trace);
    let requests: Vec<_> = events
        .iter()
        .filter(|e| e["args"]["concerto.round"].is_u64())
        .collect();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let args = &request["args"];
        let us = |f: &str| args[f].as_u64().unwrap_or_else(|| panic!("{f}: {request}"));
        assert!(
            us("concerto.queue_us") + us("concerto.first_token_us") <= us("concerto.total_us"),
            "{request}"
        );
        assert!(us("concerto.ttfb_us") >= 150_000, "{request}");
        assert!(
            us("concerto.connect_us") <= us("concerto.ttfb_us"),
            "{request}"
        );
        let attempt = events
            .iter()
            .find(|e| {
                e["args"]["concerto.attempt"].is_u64() && {
                    let (a, b) = (span_of(e), span_of(request));
                    a.0 >= b.0 && a.1 <= b.1
                }
            })
            .expect("the request's attempt");
        // The attempt's bar begins when the limit let it go: the wait is not in it.
        let waited = us("concerto.queue_us") as f64;
        assert!(
            span_of(attempt).0 + 1000.0 >= span_of(request).0 + waited,
            "{attempt} {request}"
        );
        assert_eq!(
            attempt["args"]["concerto.ttfb_us"], args["concerto.ttfb_us"],
            "{attempt}"
        );
        assert_eq!(
            attempt["args"]["concerto.first_token_us"], args["concerto.first_token_us"],
            "{attempt}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tool-round program `programs/tool_call.head.conc-ir`, written into `dir`, against a
/// loopback model that first asks for `Stock::count` (reading the tool's wire name from the
/// request) and then answers "Seven lanterns".
fn tool_call_program(dir: &Path) -> PathBuf {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, mut stream) in listener.incoming().flatten().enumerate() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let Some((_, body)) = common::read_request(&mut stream) else {
                continue;
            };
            let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let message = if n == 0 {
                let tool = request["tools"][0]["function"]["name"].clone();
                serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": tool, "arguments": "{\"item\": \"lanterns\"}"}}]})
            } else {
                serde_json::json!({"role": "assistant", "content": "Seven lanterns"})
            };
            let reply = serde_json::json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": if n == 0 { "tool_calls" } else { "stop" }}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}
            })
            .to_string();
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{reply}",
                    reply.len()
                )
                .as_bytes(),
            );
        }
    });
    program_at(dir, "tool_call.head.conc-ir", &url, "tool_call.conc-ir")
}

/// `--trace` with a tool round: the model (a loopback server that reads the tool's wire
/// name from the request) asks for `Stock::count`, then answers. The trace holds two
/// requests (rounds 0 and 1) and between them the tool call, with its GenAI name and call
/// id, all inside the agent call.
#[test]
fn a_trace_file_shows_a_tool_call_between_the_two_requests() {
    let dir = fresh_dir("trace-tool");
    let program = tool_call_program(&dir);
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-trace-tool-canary")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "text"), "Seven lanterns");

    let (events, text) = trace_events(&trace);
    assert!(!text.contains("sk-trace-tool-canary"), "{text}");
    assert!(
        !text.contains("lanterns"),
        "prompt, arguments or reply in the trace: {text}"
    );
    assert!(
        !text.contains("90210"),
        "the tool's result in the trace: {text}"
    );
    let call = events
        .iter()
        .find(|e| e["name"] == "invoke_agent Storekeeper")
        .expect("the agent call");
    assert_eq!(call["args"]["concerto.requests"], 2, "{call}");
    assert_eq!(call["args"]["gen_ai.usage.input_tokens"], 20, "{call}");
    assert!(
        call["args"]["concerto.cost_usd"].is_f64(),
        "gpt-4o has a price: {call}"
    );
    let requests: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "chat gpt-4o")
        .collect();
    let rounds: Vec<_> = requests
        .iter()
        .filter(|e| e["args"]["concerto.round"].is_u64())
        .collect();
    assert_eq!(rounds.len(), 2, "{text}");
    assert_eq!(rounds[0]["args"]["concerto.round"], 0);
    assert_eq!(
        rounds[0]["args"]["gen_ai.response.finish_reasons"],
        "tool_calls"
    );
    assert_eq!(rounds[1]["args"]["concerto.round"], 1);
    let tool = events
        .iter()
        .find(|e| e["name"] == "execute_tool Stock::count")
        .expect("the tool call");
    assert_eq!(
        tool["args"]["gen_ai.operation.name"], "execute_tool",
        "{tool}"
    );
    assert_eq!(tool["args"]["gen_ai.tool.name"], "Stock::count", "{tool}");
    assert_eq!(tool["args"]["gen_ai.tool.call.id"], "call_1", "{tool}");
    assert!(tool["args"].get("error.type").is_none(), "{tool}");
    for inner in [rounds[0], rounds[1], tool] {
        assert_inside(inner, call);
    }
    assert!(span_of(rounds[0]).1 <= span_of(tool).0, "{text}");
    assert!(span_of(tool).1 <= span_of(rounds[1]).0, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--trace` path that cannot be written is refused before the program runs (exit 2,
/// naming the path): the program's effects do not happen (the loopback server is never
/// called).
#[test]
fn a_trace_path_that_cannot_be_written_is_refused_before_the_run() {
    let dir = fresh_dir("trace-unwritable");
    let (url, count) = scripted_server(|_| rate_limited());
    let program = fallback_program_at(&dir, &url);
    let out = bin()
        .args(["run", "--allow-net", "127.0.0.1", "--trace"])
        .arg(dir.join("missing").join("t.json"))
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-unwritable")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_stderr_has(&out, "cannot write the trace to ");
    assert_stderr_has(&out, "t.json");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The check leaves no file behind when the run does not happen for another reason.
    let trace = dir.join("t.json");
    let out = bin()
        .args(["run", "--trace"])
        .arg(&trace)
        .arg(dir.join("missing.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!trace.exists(), "an empty trace file was left behind");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `--debug` run (the interpreter's debug loop) is traced like any other: one `run` span,
/// with the tasks and their agent calls inside it.
#[test]
fn a_debugged_run_has_its_run_span_around_its_calls() {
    let dir = fresh_dir("trace-debug");
    let program = parallel_program(&dir);
    let trace = dir.join("trace.json");
    let out = bin()
        .env_remove("RUST_LOG")
        .args([
            "run",
            "--mock",
            "--mock-latency-ms",
            "50",
            "--emit-format",
            "jsonl",
            "--debug",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (events, text) = trace_events(&trace);
    let runs: Vec<_> = events.iter().filter(|e| e["name"] == "run").collect();
    assert_eq!(runs.len(), 1, "{text}");
    let calls: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "invoke_agent Worker")
        .collect();
    assert_eq!(calls.len(), 2, "{text}");
    // Each call is on its task's track, within the run's time.
    let run = span_of(runs[0]);
    for call in calls {
        let (start, end) = span_of(call);
        assert!(run.0 <= start && end <= run.1, "{call} {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An attempt cut short keeps what it got as far as it got: a stream whose head and first
/// chunk arrive and which then stalls until the run's `--timeout` ends the run leaves its
/// attempt span with `concerto.ttfb_us` and `concerto.first_token_us`.
#[test]
fn an_attempt_cut_short_by_the_run_timeout_keeps_its_head_and_first_token_times() {
    use std::io::Write;
    let dir = fresh_dir("timing-cut");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                if common::read_request(&mut stream).is_none() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
                let chunk = serde_json::json!({"id": "s", "object": "chat.completion.chunk",
                    "created": 1, "model": "gpt-4o",
                    "choices": [{"index": 0, "delta": {"content": "All "}, "finish_reason": null}]});
                let _ = stream.write_all(format!("data: {chunk}\n\n").as_bytes());
                std::thread::sleep(std::time::Duration::from_secs(10));
            });
        }
    });
    let mut ir = program_ir("timed.head.conc-ir");
    ir["connections"][0]["config"]["base_url"] = serde_json::json!(url);
    ir["connections"][0]["config"]["stream"] = serde_json::json!(true);
    let program = save_program(&dir, "timed.conc-ir", &ir);
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--timeout",
            "1",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-timing-cut")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (events, text) = trace_events(&trace);
    let attempt = events
        .iter()
        .find(|e| e["args"]["concerto.attempt"].is_u64())
        .unwrap_or_else(|| panic!("no attempt: {text}"));
    let us = |f: &str| {
        attempt["args"][f]
            .as_u64()
            .unwrap_or_else(|| panic!("{f}: {attempt}"))
    };
    assert!(us("concerto.ttfb_us") >= 100_000, "{attempt}");
    assert!(
        us("concerto.first_token_us") >= us("concerto.ttfb_us") + 100_000,
        "{attempt}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace` shows the calls a program's own code makes outside the process: each
/// `std::http` request is a span named by its method with the server's address and port
/// and the status (the query, which carries a token here, is not recorded), a request to a
/// port where nothing listens has `error.type`, and each call of an MCP server's tool is an
/// `execute_tool <Server.tool>` span; all are children of the run's span, in program order.
#[test]
fn a_trace_file_shows_the_http_and_mcp_calls_a_program_makes() {
    let dir = fresh_dir("trace-outside");
    let (server, count) = scripted_server(|_| (201, "", "{}".to_string()));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let command = format!(
        "python3 '{}' '{}'",
        repo().join("tests/durable/mcp_counter.py").display(),
        dir.join("mcp.log").display()
    );
    let text = std::fs::read_to_string(programs().join("outside_calls.head.conc-ir"))
        .unwrap()
        .replace("\"MCP_COMMAND\"", &serde_json::to_string(&command).unwrap())
        .replace("http://SERVER/", &format!("{server}/"))
        .replace("http://CLOSED/", &format!("http://{closed}/"));
    let program = dir.join("outside_calls.conc-ir");
    std::fs::write(&program, text).unwrap();
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--allow-tool",
            "Calc",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "posted"), 201);
    assert_eq!(emitted(&out, "closed"), "unreachable");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    let (events, text) = trace_events(&trace);
    assert!(
        !text.contains("secret-query"),
        "the query is not recorded: {text}"
    );
    let run = events.iter().find(|e| e["name"] == "run").expect("the run");
    let port = |address: &str| address.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let posted = events
        .iter()
        .find(|e| e["name"] == "POST")
        .expect("the POST");
    assert_eq!(posted["args"]["http.request.method"], "POST", "{posted}");
    assert_eq!(posted["args"]["server.address"], "127.0.0.1", "{posted}");
    assert_eq!(posted["args"]["server.port"], port(&server), "{posted}");
    assert_eq!(posted["args"]["http.response.status_code"], 201, "{posted}");
    assert_eq!(posted["args"]["otel.kind"], "client", "{posted}");
    let refused = events.iter().find(|e| e["name"] == "GET").expect("the GET");
    assert_eq!(refused["args"]["server.port"], port(&closed), "{refused}");
    assert_eq!(refused["args"]["error.type"], "request_failed", "{refused}");
    assert!(
        refused["args"]["http.response.status_code"].is_null(),
        "{refused}"
    );
    let tools: Vec<_> = events
        .iter()
        .filter(|e| e["name"] == "execute_tool Calc.add")
        .collect();
    assert_eq!(tools.len(), 2, "{text}");
    for tool in &tools {
        assert_eq!(tool["args"]["gen_ai.tool.name"], "Calc.add", "{tool}");
        assert_eq!(tool["args"]["concerto.tool.kind"], "mcp", "{tool}");
        assert_eq!(tool["args"]["otel.kind"], "client", "{tool}");
        assert!(tool["args"]["error.type"].is_null(), "{tool}");
        assert_inside(tool, run);
    }
    assert_inside(posted, run);
    assert_inside(refused, run);
    assert!(span_of(posted).1 <= span_of(refused).0, "{text}");
    assert!(span_of(refused).1 <= span_of(tools[0]).0, "{text}");
    assert!(span_of(tools[0]).1 <= span_of(tools[1]).0, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace-content` is the host's opt-in to prompt and reply text on the spans: with it,
/// each request span of a tool round carries the messages it sent (`gen_ai.input.messages`:
/// the prompt, then the tool call and its result) and the reply (`gen_ai.output.messages`:
/// the tool call asked for, then the answer); the agent call, attempt and tool spans carry
/// none, and the API key appears nowhere. (Without the flag none of this text is in the
/// trace: the tool-round test above.)
#[test]
fn trace_content_puts_prompts_and_replies_on_the_request_spans() {
    let dir = fresh_dir("trace-content");
    let program = tool_call_program(&dir);
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--trace-content",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-trace-content-canary")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "text"), "Seven lanterns");
    let (events, text) = trace_events(&trace);
    assert!(!text.contains("sk-trace-content-canary"), "{text}");
    let rounds: Vec<_> = events
        .iter()
        .filter(|e| e["args"]["concerto.round"].is_u64())
        .collect();
    assert_eq!(rounds.len(), 2, "{text}");
    let messages = |e: &serde_json::Value, field: &str| -> serde_json::Value {
        serde_json::from_str(
            e["args"][field]
                .as_str()
                .unwrap_or_else(|| panic!("{field}: {e}")),
        )
        .unwrap()
    };
    let first_in = messages(rounds[0], "gen_ai.input.messages");
    let user = first_in
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .expect("the prompt");
    assert!(
        user["parts"][0]["content"]
            .as_str()
            .unwrap()
            .contains("lanterns"),
        "{first_in}"
    );
    let first_out = messages(rounds[0], "gen_ai.output.messages");
    assert_eq!(first_out[0]["parts"][0]["type"], "tool_call", "{first_out}");
    assert_eq!(
        first_out[0]["parts"][0]["name"], "Stock::count",
        "{first_out}"
    );
    assert_eq!(
        first_out[0]["parts"][0]["arguments"]["item"], "lanterns",
        "{first_out}"
    );
    let second_in = messages(rounds[1], "gen_ai.input.messages");
    let answered = second_in
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["parts"].as_array().unwrap().iter())
        .find(|p| p["type"] == "tool_call_response")
        .expect("the tool's result");
    assert_eq!(answered["id"], "call_1", "{second_in}");
    let second_out = messages(rounds[1], "gen_ai.output.messages");
    assert_eq!(
        second_out[0]["parts"][0]["content"], "Seven lanterns",
        "{second_out}"
    );
    assert_eq!(second_out[0]["finish_reason"], "stop", "{second_out}");
    for e in events
        .iter()
        .filter(|e| !e["args"]["concerto.round"].is_u64())
    {
        let args = e["args"].to_string();
        assert!(
            !args.contains("lanterns"),
            "text outside the request spans: {e}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace` with a schema re-ask: the first reply does not match the schema, the second
/// does. The agent call holds two requests, `concerto.schema_attempt` 0 then 1, one after
/// the other.
#[test]
fn a_trace_file_shows_each_schema_re_ask_as_a_request() {
    let dir = fresh_dir("trace-schema");
    let (url, count) = scripted_server(|n| {
        let content = if n == 0 {
            r#"{"item": "lamp"}"#
        } else {
            r#"{"item": "lamp", "units": 7}"#
        };
        let mut body = serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]
        });
        // The first reply reports no usage: the runtime estimates it, and says so.
        if n > 0 {
            body["usage"] = serde_json::json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14});
        }
        (200, "", body.to_string())
    });
    let program = program_at(
        &dir,
        "schema_reask.head.conc-ir",
        &url,
        "schema_reask.conc-ir",
    );
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--allow-net",
            "127.0.0.1",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-trace-schema-canary")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "units"), 7);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);

    let (events, text) = trace_events(&trace);
    assert!(!text.contains("sk-trace-schema-canary"), "{text}");
    assert!(!text.contains("lanterns"), "{text}");
    let call = events
        .iter()
        .find(|e| e["name"] == "invoke_agent Counter")
        .expect("the agent call");
    assert_eq!(
        call["args"]["concerto.method"], "execute_with_schema",
        "{call}"
    );
    assert_eq!(call["args"]["concerto.requests"], 2, "{call}");
    let requests: Vec<_> = events
        .iter()
        .filter(|e| e["args"]["concerto.schema_attempt"].is_u64())
        .collect();
    assert_eq!(requests.len(), 2, "{text}");
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(
            request["args"]["concerto.schema_attempt"], i as u64,
            "{request}"
        );
        assert_eq!(
            request["args"]["concerto.usage.estimated"],
            i == 0,
            "{request}"
        );
        assert_inside(request, call);
    }
    assert_eq!(call["args"]["concerto.usage.estimated"], true, "{call}");
    assert!(span_of(requests[0]).1 <= span_of(requests[1]).0, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call whose replies never match its schema fails like any other: its span carries
/// `error.type` `schema` (with the status ERROR) and `--metrics` counts the failure.
#[test]
fn a_schema_failure_is_an_error_on_its_span_and_in_the_metrics() {
    let dir = fresh_dir("trace-schema-fail");
    let (url, count) = scripted_server(|_| answered("gpt-4o", r#"{"item": "lamp"}"#, (10, 4)));
    let program = program_at(
        &dir,
        "schema_reask.head.conc-ir",
        &url,
        "schema_reask.conc-ir",
    );
    let trace = dir.join("trace.json");
    let out = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--metrics",
            "--allow-net",
            "127.0.0.1",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .env("OPENAI_API_KEY", "sk-schema-fail")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        emitted(&out, "error")
            .as_str()
            .unwrap()
            .contains("schema validation failed")
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    let (events, text) = trace_events(&trace);
    let call = events
        .iter()
        .find(|e| e["name"] == "invoke_agent Counter")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(call["args"]["error.type"], "schema", "{call}");
    assert_eq!(call["args"]["otel.status_code"], "ERROR", "{call}");
    let metrics = &metrics_lines(&out)[0]["metrics"]["agents"]["Counter"];
    assert_eq!(metrics["failures"], 1, "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--trace` when things fail: an agent call whose connection answers 429 (one attempt
/// allowed) carries `error.type` on its attempt (`429`), its request and itself
/// (`rate_limited`, the `AgentError` kind the program sees); a run that then fails is
/// traced too, with its error kind, and the file is written although the run exits 1.
#[test]
fn a_trace_file_carries_the_error_type_of_what_failed() {
    let dir = fresh_dir("trace-errors");
    let (primary, _) = scripted_server(|_| rate_limited());
    let program = fallback_program_at(&dir, &primary);
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        "[connections.openai]\napi_key_env = \"CONCERTO_TRACE_KEY\"\n\
         retry = { max_attempts = 1, backoff = \"none\" }\n\n\
         [permissions]\nallow_net = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    let trace = dir.join("trace.json");
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--config"])
        .arg(&config)
        .arg("--trace")
        .arg(&trace)
        .arg(&program)
        .env("CONCERTO_TRACE_KEY", "sk-trace-error-canary")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "error_kind"), "rate_limited");
    let (events, text) = trace_events(&trace);
    assert!(!text.contains("sk-trace-error-canary"), "{text}");
    let call = events
        .iter()
        .find(|e| e["name"] == "invoke_agent Writer")
        .expect("the agent call");
    assert_eq!(call["args"]["error.type"], "rate_limited", "{call}");
    let request = events
        .iter()
        .find(|e| e["args"]["concerto.round"].is_u64())
        .expect("the request");
    assert_eq!(request["args"]["error.type"], "rate_limited", "{request}");
    let attempt = events
        .iter()
        .find(|e| e["args"]["concerto.attempt"].is_u64())
        .expect("the attempt");
    assert_eq!(attempt["args"]["error.type"], "429", "{attempt}");
    assert_eq!(
        attempt["args"]["http.response.status_code"], 429,
        "{attempt}"
    );
    let run = events.iter().find(|e| e["name"] == "run").expect("run");
    assert!(run["args"].get("error.type").is_none(), "{run}");

    // A run that fails: integer division by zero, uncaught.
    let failing = write_ir(
        "trace-fails.conc-ir",
        r#"{"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"DIV"},{"op":"RETURN"}"#,
        r#"{"index":0,"type":"int","value":1},{"index":1,"type":"int","value":0}"#,
    );
    let out = bin()
        .args(["run", "--trace"])
        .arg(&trace)
        .arg(&failing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (events, text) = trace_events(&trace);
    let run = events.iter().find(|e| e["name"] == "run").expect("run");
    let kind = run["args"]["error.type"].as_str().unwrap_or_default();
    assert!(!kind.is_empty(), "{text}");
    assert!(stderr(&out).contains("division"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An in-process OTLP/HTTP receiver: every `POST /v1/traces` body is decoded as an
/// `ExportTraceServiceRequest` and answered 200; the raw bodies are kept too (to search
/// for secrets). Returns the base URL and the collected requests.
#[allow(clippy::type_complexity)]
fn otlp_receiver() -> (
    String,
    std::sync::Arc<
        std::sync::Mutex<
            Vec<(
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
                Vec<u8>,
            )>,
        >,
    >,
) {
    use prost::Message;
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let body = common::read_request_bytes(&mut stream).map(|(head, body)| {
                assert!(
                    head.to_ascii_lowercase().starts_with("post /v1/traces"),
                    "{head}"
                );
                body
            });
            if let Some(body) = body {
                let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                    body.as_slice(),
                )
                .expect("an OTLP protobuf body");
                sink.lock().unwrap().push((request, body));
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\
                  connection: close\r\n\r\n",
            );
        }
    });
    (url, got)
}

/// One exported span, flattened: name, ids, times and attributes as JSON values.
#[derive(Debug)]
struct Exported {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    start: u64,
    end: u64,
    /// The span status's code: 0 unset, 1 ok, 2 error.
    status: i32,
    /// The span kind: 1 internal, 3 client.
    kind: i32,
    attrs: serde_json::Map<String, serde_json::Value>,
}

fn exported_spans(
    requests: &[(
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        Vec<u8>,
    )],
) -> (Vec<Exported>, Vec<String>) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for (request, _) in requests {
        for rs in &request.resource_spans {
            for kv in rs.resource.iter().flat_map(|r| &r.attributes) {
                if kv.key == "service.name"
                    && let Some(V::StringValue(s)) =
                        kv.value.as_ref().and_then(|v| v.value.as_ref())
                {
                    services.push(s.clone());
                }
            }
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let attrs = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(V::StringValue(s)) => serde_json::json!(s),
                            Some(V::IntValue(i)) => serde_json::json!(i),
                            Some(V::BoolValue(b)) => serde_json::json!(b),
                            Some(V::DoubleValue(d)) => serde_json::json!(d),
                            other => serde_json::json!(format!("{other:?}")),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect();
                spans.push(Exported {
                    name: span.name.clone(),
                    trace_id: span.trace_id.clone(),
                    span_id: span.span_id.clone(),
                    parent: span.parent_span_id.clone(),
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    status: span.status.as_ref().map_or(0, |s| s.code),
                    kind: span.kind,
                    attrs,
                });
            }
        }
    }
    (spans, services)
}

/// Issue 20, `--otlp URL` through the whole binary: the 429, 429, fallback call of the
/// trace test, exported to an in-process OTLP/HTTP receiver that decodes the protobuf. One
/// trace: run → invoke_agent → chat (the request) → three attempts, linked by parent ids;
/// the GenAI attributes typed (ints as ints); `error.type` on the refused attempts; the
/// service named `concerto`; the key, the prompt and the completion in no byte sent.
/// Spans the collector does not take are not lost in silence: a collector that refuses
/// every export (503, counted) and one that is not listening at all each leave the run's
/// result alone (exit 0, its emits) and a warning on stderr saying how many spans could not
/// be sent and why.
#[test]
fn otlp_export_failures_are_reported_on_stderr() {
    let dir = fresh_dir("otlp-failing");
    let (answer, _) = scripted_server(|_| answered("gpt-4o", "Teal", (8, 3)));
    let program = fallback_program_at(&dir, &answer);
    let (refusing, refused) = scripted_server(|_| (503, "", "{}".to_string()));
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for collector in [&refusing, &closed] {
        let out = bin()
            .args([
                "run",
                "--emit-format",
                "jsonl",
                "--allow-net",
                "127.0.0.1",
                "--otlp",
            ])
            .arg(collector)
            .arg(&program)
            .env("OPENAI_API_KEY", "sk-otlp-failing")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(emitted(&out, "text"), "Teal");
        let err = stderr(&out);
        let warning = err
            .lines()
            .find(|l| l.starts_with("warning: OTLP export: "))
            .unwrap_or_else(|| panic!("no export warning for {collector}: {err}"));
        assert!(warning.contains("spans could not be sent: "), "{warning}");
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the refusing collector was asked"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn otlp_export_sends_the_span_tree_with_its_genai_attributes() {
    let dir = fresh_dir("otlp-fallback");
    let (collector, received) = otlp_receiver();
    let (primary, _) = scripted_server(|_| rate_limited());
    let (backup, _) = scripted_server(|_| answered("backup-model", "Teal", (8, 3)));
    let program = fallback_program_at(&dir, &primary);
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            "[connections.openai]\napi_key_env = \"CONCERTO_OTLP_KEY\"\n\
             retry = {{ max_attempts = 2, backoff = \"none\" }}\n\
             fallbacks = [{{ connection = \"backup\" }}]\nfallback_on = [\"rate_limited\"]\n\n\
             [connections.backup]\nbase_url = \"{backup}\"\napi_key_env = \"CONCERTO_OTLP_KEY\"\n\
             model = \"backup-model\"\n\n[permissions]\nallow_net = [\"127.0.0.1\"]\n"
        ),
    )
    .unwrap();
    let out = bin()
        .args(["run", "--emit-format", "jsonl", "--config"])
        .arg(&config)
        .args(["--otlp", &collector])
        .arg(&program)
        .env("CONCERTO_OTLP_KEY", "sk-otlp-canary-2024")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "text"), "Teal");

    let received = received.lock().unwrap();
    assert!(
        !received.is_empty(),
        "nothing was exported: {}",
        stderr(&out)
    );
    for (_, raw) in received.iter() {
        for secret in [&b"sk-otlp-canary-2024"[..], b"Name a colour", b"Teal"] {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret),
                "{} was sent",
                String::from_utf8_lossy(secret)
            );
        }
    }
    let (spans, services) = exported_spans(&received);
    assert!(
        services.iter().all(|s| s == "concerto") && !services.is_empty(),
        "{services:?}"
    );
    let find = |pred: &dyn Fn(&Exported) -> bool| -> Vec<&Exported> {
        spans.iter().filter(|s| pred(s)).collect()
    };
    let run = find(&|s| s.name == "run");
    let call = find(&|s| s.name == "invoke_agent Writer");
    let request = find(&|s| s.name == "chat gpt-4o" && s.attrs.contains_key("concerto.round"));
    assert_eq!(
        (run.len(), call.len(), request.len()),
        (1, 1, 1),
        "{spans:#?}"
    );
    let (run, call, request) = (run[0], call[0], request[0]);
    assert!(
        spans.iter().all(|s| s.trace_id == run.trace_id),
        "one trace: {spans:#?}"
    );
    assert_eq!(call.parent, run.span_id);
    assert_eq!(request.parent, call.span_id);
    assert_eq!((run.status, call.status, request.status), (0, 0, 0));
    // The call runs in the process; its requests go out to the provider.
    assert_eq!((run.kind, call.kind, request.kind), (1, 1, 3));
    let a = &call.attrs;
    assert_eq!(a["gen_ai.operation.name"], "invoke_agent", "{a:?}");
    assert_eq!(a["gen_ai.provider.name"], "openai", "{a:?}");
    assert_eq!(a["gen_ai.request.model"], "gpt-4o", "{a:?}");
    assert_eq!(a["gen_ai.response.model"], "backup-model", "{a:?}");
    assert_eq!(a["gen_ai.usage.input_tokens"], 8, "{a:?}");
    assert_eq!(a["gen_ai.usage.output_tokens"], 3, "{a:?}");
    assert_eq!(a["concerto.agent"], "Writer", "{a:?}");
    assert_eq!(a["code.line.number"], 10, "{a:?}");
    assert!(call.start <= request.start && request.end <= call.end);
    let mut attempts = find(&|s| s.attrs.contains_key("concerto.attempt"));
    attempts.sort_by_key(|s| s.start);
    assert_eq!(attempts.len(), 3, "{spans:#?}");
    for (i, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.parent, request.span_id, "{attempt:?}");
        let refused = i < 2;
        assert_eq!(
            attempt.attrs.get("error.type").is_some(),
            refused,
            "{attempt:?}"
        );
        // A refused attempt's status is an error (what backends mark and filter on); the
        // request and the call it was retried within succeeded.
        assert_eq!(attempt.status, if refused { 2 } else { 0 }, "{attempt:?}");
        assert_eq!(attempt.kind, 3, "{attempt:?}");
        if refused {
            assert_eq!(attempt.attrs["error.type"], "429", "{attempt:?}");
            assert_eq!(
                attempt.attrs["http.response.status_code"], 429,
                "{attempt:?}"
            );
        } else {
            assert_eq!(attempt.name, "chat backup-model", "{attempt:?}");
            assert_eq!(attempt.attrs["concerto.fallback"], 1, "{attempt:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--otlp` with calls made in parallel: the two spawned tasks' spans are siblings under
/// the run span, each task's agent call its child, and the two calls overlap in time.
#[test]
fn otlp_export_shows_parallel_calls_as_overlapping_siblings() {
    let dir = fresh_dir("otlp-parallel");
    let (collector, received) = otlp_receiver();
    let program = parallel_program(&dir);
    let out = bin()
        .args([
            "run",
            "--mock",
            "--mock-latency-ms",
            "200",
            "--emit-format",
            "jsonl",
        ])
        .arg(&program)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let received = received.lock().unwrap();
    let (spans, _) = exported_spans(&received);
    let run = spans.iter().find(|s| s.name == "run").expect("run");
    let tasks: Vec<_> = spans.iter().filter(|s| s.name == "task").collect();
    let calls: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "invoke_agent Worker")
        .collect();
    assert_eq!((tasks.len(), calls.len()), (2, 2), "{spans:#?}");
    for task in &tasks {
        assert_eq!(task.parent, run.span_id, "{task:?}");
    }
    for call in &calls {
        assert!(
            tasks.iter().any(|t| t.span_id == call.parent),
            "a call's parent is a task: {call:?}"
        );
    }
    assert_ne!(calls[0].parent, calls[1].parent);
    assert!(
        calls[0].start < calls[1].end && calls[1].start < calls[0].end,
        "the calls overlap: {calls:#?}"
    );
    drop(received);

    // The per-signal variable (a full URL) turns the export on too; OTEL_SERVICE_NAME names
    // the service.
    let (collector, received) = otlp_receiver();
    let out = bin()
        .args(["run", "--mock", "--emit-format", "jsonl"])
        .arg(&program)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{collector}/v1/traces"),
        )
        .env("OTEL_SERVICE_NAME", "harbour-bot")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (spans, services) = exported_spans(&received.lock().unwrap());
    assert_eq!(
        spans.iter().filter(|s| s.name == "task").count(),
        2,
        "{spans:#?}"
    );
    assert!(
        !services.is_empty() && services.iter().all(|s| s == "harbour-bot"),
        "{services:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--otlp` with a pipeline: the run holds the pipeline span, the pipeline its two stage
/// spans (one after the other), and each stage the agent call its code made.
#[test]
fn otlp_export_puts_each_stage_call_under_its_stage() {
    let (collector, received) = otlp_receiver();
    let out = bin()
        .args([
            "run",
            "--mock",
            "--emit-format",
            "jsonl",
            "--otlp",
            &collector,
        ])
        .arg(programs().join("pipeline_calls.head.conc-ir"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(emitted(&out, "done"), true);
    let (spans, _) = exported_spans(&received.lock().unwrap());
    let one = |name: &str| -> &Exported {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        found[0]
    };
    let run = one("run");
    let pipeline = one("pipeline Newsletter");
    assert_eq!(pipeline.parent, run.span_id);
    assert_eq!(pipeline.attrs["concerto.stages"], 2, "{pipeline:?}");
    let (draft, edit) = (one("stage draft"), one("stage edit"));
    for stage in [draft, edit] {
        assert_eq!(stage.parent, pipeline.span_id, "{stage:?}");
        assert_eq!(stage.attrs["concerto.attempt"], 1, "{stage:?}");
    }
    assert!(draft.end <= edit.start, "{draft:?} / {edit:?}");
    assert_eq!(one("invoke_agent Drafter").parent, draft.span_id);
    assert_eq!(one("invoke_agent Editor").parent, edit.span_id);
}

/// `--trace` with emit-awaits answered from standard input: one `emit_await <channel>` span
/// per question, lasting until its answer; the two that got no usable answer (a line that
/// is not JSON, the end of input) carry `error.type`. The answers are not in the file.
#[test]
fn a_trace_file_shows_each_emit_await_until_its_answer() {
    use std::io::Write;
    let dir = fresh_dir("trace-awaits");
    let mut ir: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/emit/await_emit.conc-ir")).unwrap(),
    )
    .unwrap();
    assert_eq!(common::make_emit_awaits(&mut ir), 3);
    let program = dir.join("await_emit.conc-ir");
    std::fs::write(&program, ir.to_string()).unwrap();
    let trace = dir.join("trace.json");
    let mut child = bin()
        .args([
            "run",
            "--emit-format",
            "jsonl",
            "--answer-awaits",
            "--trace",
        ])
        .arg(&trace)
        .arg(&program)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"go": true, "items": ["secret-answer-77"]}}"#).unwrap();
    writeln!(stdin, "yes please").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let (events, text) = trace_events(&trace);
    assert!(!text.contains("secret-answer-77"), "{text}");
    let run = events.iter().find(|e| e["name"] == "run").expect("run");
    let awaits: Vec<_> = events
        .iter()
        .filter(|e| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("emit_await "))
        })
        .collect();
    let names: Vec<_> = awaits.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "emit_await ask",
            "emit_await nobody_listens",
            "emit_await fails"
        ],
        "{text}"
    );
    for (i, e) in awaits.iter().enumerate() {
        assert_inside(e, run);
        assert_eq!(e["args"]["error.type"].is_string(), i > 0, "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
