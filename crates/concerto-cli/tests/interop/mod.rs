//! The `concerto` command against official MCP servers (issue 16): sessions end gracefully
//! when the command does, and the MCP SDK's own error lines stay off stderr.
//!
//! The servers are the ones `cargo xtask interop-setup` installs into `<target>/interop/`
//! (see `crates/concerto-tools/tests/interop.rs`); a missing one fails the test, naming it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn interop_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCERTO_INTEROP_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // <target>/debug/deps/<this binary>
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps")
        .join("interop")
}

/// The entry point of server-everything (run with `node`).
fn everything() -> String {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "interop suite: Node.js (`node` on PATH) is missing; server-everything runs on it"
    );
    let entry = interop_dir()
        .join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        entry.is_file(),
        "interop suite: @modelcontextprotocol/server-everything 2026.8.31 is missing (no {}); \
         install it with `cargo xtask interop-setup` (`cargo xtask ci` runs it)",
        entry.display()
    );
    entry.to_string_lossy().into_owned()
}

/// A folder of its own for one test.
fn scratch(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("concerto-cli-interop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// `try { emit("out", Ev.echo("hi")) } catch RuntimeError(e) { emit("err", e.message) }`
/// with MCP server `Ev` configured by `config`, written to `dir/main.conc-ir`.
pub(crate) fn echo_program(dir: &Path, config: Value) -> PathBuf {
    let mut config = config;
    config["type"] = json!("mcp");
    config["tools"] = json!([{"name": "echo", "params": [{"name": "message", "type": "String"}],
        "return_type": "String"}]);
    let ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": [
            {"index": 0, "type": "string", "value": "out"},
            {"index": 1, "type": "string", "value": "hi"},
            {"index": 2, "type": "string", "value": "err"},
            {"index": 3, "type": "nil", "value": null}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
            "return_type": "nil", "is_async": false, "locals": ["e"], "instructions": [
                {"op": "TRY_BEGIN", "offset": 8},
                {"op": "LOAD_CONST", "arg": 0}, {"op": "LOAD_LOCAL", "name": "Ev"},
                {"op": "LOAD_CONST", "arg": 1}, {"op": "CALL_METHOD", "name": "echo", "argc": 1},
                {"op": "EMIT"}, {"op": "TRY_END"}, {"op": "JUMP", "offset": 14},
                {"op": "CATCH", "type_name": "RuntimeError"}, {"op": "STORE_LOCAL", "name": "e"},
                {"op": "LOAD_CONST", "arg": 2}, {"op": "LOAD_LOCAL", "name": "e"},
                {"op": "FIELD_GET", "name": "message"}, {"op": "EMIT"},
                {"op": "LOAD_CONST", "arg": 3}, {"op": "RETURN"}]}],
        "connections": [{"name": "Ev", "config": config}],
        // The same call as a `@test` function, for `concerto test`.
        "tests": [{"description": "echo", "expect_fail": false, "instructions": [
            {"op": "LOAD_LOCAL", "name": "Ev"}, {"op": "LOAD_CONST", "arg": 1},
            {"op": "CALL_METHOD", "name": "echo", "argc": 1}, {"op": "POP"},
            {"op": "LOAD_CONST", "arg": 3}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
            "debug_info": true, "entry_point": "main"}
    });
    let path = dir.join("main.conc-ir");
    std::fs::write(&path, ir.to_string()).expect("the program is written");
    path
}

fn concerto(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concerto"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("concerto runs")
}

/// `concerto run` and `concerto test` with a stdio server: when the command ends, the server has read the end
/// of its input and exited by itself (status 0), rather than being killed with the
/// command's runtime.
#[test]
fn run_lets_a_stdio_server_exit_after_the_end_of_its_input() {
    let entry = everything();
    let dir = scratch("stdio");
    let record = dir.join("status");
    let program = echo_program(
        &dir,
        json!({"command": ["sh", "-c",
            format!("node '{entry}' stdio; echo $? > '{}'", record.display())]}),
    );
    let path = program.to_string_lossy();
    for command in ["run", "test"] {
        let _ = std::fs::remove_file(&record);
        let out = concerto(&[command, "--allow-tool", "Ev", &path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let expected = if command == "run" {
            "Echo: hi"
        } else {
            "1 passed"
        };
        assert!(
            stdout.contains(expected) && out.status.success(),
            "{command}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The command waited for the server: its status is there as soon as it returns.
        assert_eq!(
            std::fs::read_to_string(&record).ok().as_deref(),
            Some("0\n"),
            "{command}: the server did not exit by itself"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// server-everything over streamable HTTP on a free loopback port, keeping what it writes
/// to stdout (one line per request it handles).
struct HttpServer {
    child: std::process::Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl HttpServer {
    fn start() -> HttpServer {
        let entry = everything();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a loopback port")
            .port();
        let mut child = Command::new("node")
            .args([entry.as_str(), "streamableHttp"])
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                kept.lock().expect("log").push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (ready, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("listening on port") {
                    let _ = ready.send(());
                }
            }
        });
        let started = listening.recv_timeout(Duration::from_secs(20));
        let mut server = HttpServer { child, port, log };
        if started.is_err() {
            server.stop();
            panic!("server-everything did not start on port {port}");
        }
        server
    }

    fn seen(&self, text: &str) -> usize {
        let log = self.log.lock().expect("log");
        log.iter().filter(|l| l.contains(text)).count()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `concerto run` with a streamable-HTTP server: the session is ended with a DELETE before
/// the command exits.
#[test]
fn run_ends_an_http_session_with_a_delete() {
    let server = HttpServer::start();
    let dir = scratch("http");
    let program = echo_program(
        &dir,
        json!({"url": format!("http://127.0.0.1:{}/mcp", server.port)}),
    );
    let out = concerto(&[
        "run",
        "--allow-tool",
        "Ev",
        "--allow-net",
        "127.0.0.1",
        &program.to_string_lossy(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Echo: hi"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server logs a DELETE as it handles it; the command had its answer before exiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.seen("session termination") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.seen("Session initialized"), 1);
    assert_eq!(
        server.seen("session termination"),
        1,
        "{:?}",
        server.log.lock().expect("log")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP endpoint that is not an MCP endpoint (server-everything answers an HTML 404 on
/// any other path): the program catches the failure, whose message reads plainly, and
/// stderr stays free of the MCP SDK's own `ERROR` lines (they show only under `RUST_LOG`).
#[test]
fn a_handled_mcp_failure_leaves_stderr_clean() {
    let server = HttpServer::start();
    let dir = scratch("quiet");
    let program = echo_program(
        &dir,
        json!({"url": format!("http://127.0.0.1:{}/not-mcp", server.port)}),
    );
    let path = program.to_string_lossy();
    let args = [
        "run",
        "--allow-tool",
        "Ev",
        "--allow-net",
        "127.0.0.1",
        &path,
    ];
    let out = concerto(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("[emit:err]") && stdout.contains("404"),
        "{stdout}"
    );
    assert_eq!(stderr, "", "stderr is not clean");
    // The program's error reads plainly: no Rust type names, no HTML page, one line, a hint.
    for raw in ["rmcp::", "<html", "<!DOCTYPE", "WorkerTransport"] {
        assert!(!stdout.contains(raw), "{raw}: {stdout}");
    }
    assert_eq!(stdout.trim_end().lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("(an HTML page)") && stdout.contains("`/mcp`"),
        "{stdout}"
    );
    // Asked for, the SDK's lines are there.
    let logged = Command::new(env!("CARGO_BIN_EXE_concerto"))
        .args(args)
        .env("RUST_LOG", "rmcp=error")
        .output()
        .expect("concerto runs");
    let stderr = String::from_utf8_lossy(&logged.stderr);
    assert!(stderr.contains("rmcp"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8 against server-everything: `--metrics` counts a call made from code (not only the
/// calls models ask for).
#[test]
fn metrics_count_a_call_from_code_to_a_real_server() {
    let entry = everything();
    let dir = scratch("metrics");
    let program = echo_program(&dir, json!({"command": ["node", entry, "stdio"]}));
    let path = program.to_string_lossy();
    let out = concerto(&[
        "run",
        "--metrics",
        "--emit-format",
        "jsonl",
        "--allow-tool",
        "Ev",
        &path,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("Echo: hi"),
        "{stdout}{stderr}"
    );
    let metrics: Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get("metrics").cloned())
        .unwrap_or_else(|| panic!("no metrics line on stderr: {stderr}"));
    assert_eq!(metrics["tool_calls"], 1, "{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}
