//! Interop: official MCP servers nobody here wrote, started on loopback (issue 16).
//!
//! `cargo xtask interop-setup` (run by `cargo xtask ci`) installs them into
//! `<target>/interop/` (or `$CONCERTO_INTEROP_DIR`) at the versions below; a test whose
//! server is missing fails with a message naming it and the command that installs it.
//!
//! - npm `@modelcontextprotocol/server-everything` 2026.8.31, over stdio and streamable HTTP;
//! - PyPI `mcp-server-time` 2026.10.19, over stdio.
//!
//! Cases: basic calls over both transports; item 2 (tool names that are not identifiers),
//! item 3 (declared signatures and result conversion), item 4 (a restarted HTTP server),
//! item 6 (sessions closed: EOF and exit, SIGTERM and kill, DELETE, drop). Item 5 and the
//! CLI's side of item 6 are in `crates/concerto-cli/tests/interop/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_tools::mcp::McpClients;
use concerto_vm::host::{HostErrorKind, Program};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const EVERYTHING: &str = "@modelcontextprotocol/server-everything 2026.8.31";
const TIME: &str = "mcp-server-time 2026.10.19";

/// Where `cargo xtask interop-setup` installed the servers: `$CONCERTO_INTEROP_DIR`, else
/// `interop/` in the target directory this test binary was built in.
fn interop_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCERTO_INTEROP_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // <target>/debug/deps/<this binary>
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lies in <target>/<profile>/deps");
    target.join("interop")
}

fn missing(what: &str, detail: &str) -> ! {
    panic!(
        "interop suite: {what} is missing ({detail}); install it with `cargo xtask interop-setup` \
         (needs Node.js with npm and Python 3 with venv; `cargo xtask ci` runs it)"
    )
}

/// `node` and the entry point of server-everything.
fn everything() -> (String, String) {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        missing("Node.js (`node` on PATH)", "server-everything runs on it");
    }
    let entry = interop_dir()
        .join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if !entry.is_file() {
        missing(EVERYTHING, &format!("no {}", entry.display()));
    }
    ("node".to_string(), entry.to_string_lossy().into_owned())
}

/// The `mcp-server-time` executable in the virtualenv.
fn time_server() -> String {
    let exe = interop_dir().join("venv/bin/mcp-server-time");
    if !exe.is_file() {
        missing(TIME, &format!("no {}", exe.display()));
    }
    exe.to_string_lossy().into_owned()
}

/// A program whose `connections` are `connections`.
fn program(connections: Value) -> Arc<Program> {
    let ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": [{"index": 0, "type": "nil", "value": null}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
            "return_type": "nil", "is_async": false, "locals": [],
            "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "connections": connections,
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
            "debug_info": true, "entry_point": "main"}
    });
    Arc::new(concerto_ir::load_str(&ir.to_string()).expect("the test program loads"))
}

fn mcp(name: &str, mut config: Value) -> Value {
    config["type"] = json!("mcp");
    json!({"name": name, "config": config})
}

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address").port()
}

/// server-everything serving streamable HTTP on `port`, with every stdout line it writes kept
/// (it logs each request there, DELETEs included). Killed when dropped.
struct EverythingHttp {
    child: tokio::process::Child,
    log: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl EverythingHttp {
    async fn start(port: u16) -> EverythingHttp {
        let (node, entry) = everything();
        let mut child = tokio::process::Command::new(node)
            .arg(entry)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                kept.lock().push(line);
            }
        });
        let mut err = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = err.next_line().await {
                if line.contains("listening on port") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            ready,
            Ok(true),
            "server-everything did not start on port {port}"
        );
        tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
        EverythingHttp { child, log }
    }

    fn seen(&self, text: &str) -> usize {
        self.log.lock().iter().filter(|l| l.contains(text)).count()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/mcp")
}

// ---------------------------------------------------------------------------------------
// Basic calls (stdio and streamable HTTP)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn everything_over_stdio_lists_and_calls_tools() {
    let (node, entry) = everything();
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Ev",
        json!({"transport": "stdio", "command": [node, entry, "stdio"], "timeout": 30})
    )]));
    let specs = clients.specs(&program, "Ev").await.expect("tools listed");
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"Ev::echo"), "{names:?}");
    assert!(names.contains(&"Ev::get-sum"), "{names:?}");
    let echoed = clients
        .call(&program, "Ev", "echo", json!({"message": "hi"}))
        .await
        .expect("the call reaches the server");
    assert_eq!(echoed, Ok(json!("Echo: hi")));
    clients.shutdown().await;
}

#[tokio::test]
async fn time_server_over_stdio_answers_in_the_zone_asked() {
    let exe = time_server();
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Clock",
        json!({"transport": "stdio", "command": [exe, "--local-timezone", "UTC"], "timeout": 30})
    )]));
    let specs = clients
        .specs(&program, "Clock")
        .await
        .expect("tools listed");
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"Clock::get_current_time"), "{names:?}");
    assert!(names.contains(&"Clock::convert_time"), "{names:?}");
    let now = clients
        .call(
            &program,
            "Clock",
            "get_current_time",
            json!({"timezone": "Asia/Tokyo"}),
        )
        .await
        .expect("the call reaches the server")
        .expect("the tool answers");
    let text = now.to_string();
    assert!(text.contains("Asia/Tokyo"), "{text}");
    assert!(text.contains("+09:00"), "{text}");
    let bad = clients
        .call(
            &program,
            "Clock",
            "get_current_time",
            json!({"timezone": "Mars/Olympus"}),
        )
        .await
        .expect("the call reaches the server");
    let failure = bad.expect_err("an unknown zone is the tool's error");
    assert!(
        failure.message.contains("Mars/Olympus"),
        "{}",
        failure.message
    );
    clients.shutdown().await;
}

#[tokio::test]
async fn everything_over_http_lists_and_calls_tools() {
    let port = free_port();
    let server = EverythingHttp::start(port).await;
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Web",
        json!({"url": url(port), "timeout": 30})
    )]));
    let specs = clients.specs(&program, "Web").await.expect("tools listed");
    assert!(specs.iter().any(|s| s.name == "Web::echo"));
    let echoed = clients
        .call(&program, "Web", "echo", json!({"message": "over http"}))
        .await
        .expect("the call reaches the server");
    assert_eq!(echoed, Ok(json!("Echo: over http")));
    clients.shutdown().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 4: a restarted streamable-HTTP server
// ---------------------------------------------------------------------------------------

/// The server restarts between two calls: it no longer knows the session and answers its
/// requests with 400. The next call starts a new session at once instead of waiting for the
/// block's `timeout` (30 s here).
#[tokio::test]
async fn a_restarted_http_server_gets_a_new_session_at_once() {
    let port = free_port();
    let server = EverythingHttp::start(port).await;
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Web",
        json!({"url": url(port), "timeout": 30})
    )]));
    let first = clients
        .call(&program, "Web", "echo", json!({"message": "one"}))
        .await
        .expect("the first call reaches the server");
    assert_eq!(first, Ok(json!("Echo: one")));
    server.stop().await;
    let server = EverythingHttp::start(port).await;
    for message in ["two", "three"] {
        let started = Instant::now();
        let next = clients
            .call(&program, "Web", "echo", json!({"message": message}))
            .await;
        let took = started.elapsed();
        assert_eq!(
            next.as_ref().map_err(|e| e.message.clone()),
            Ok(&Ok(json!(format!("Echo: {message}")))),
            "after the restart (took {took:?})"
        );
        assert!(took < Duration::from_secs(5), "the call took {took:?}");
    }
    assert_eq!(
        server.seen("Session initialized"),
        1,
        "{:?}",
        server.log.lock()
    );
    clients.shutdown().await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Item 6: sessions are closed gracefully
// ---------------------------------------------------------------------------------------

/// `sh -c 'node … stdio; echo $? > record'`: the record holds the server's exit status
/// when it exited by itself (0 after the end of its input); it stays absent when the shell
/// was killed.
fn recorded_stdio_command(record: &std::path::Path) -> Value {
    let (node, entry) = everything();
    json!([
        "sh",
        "-c",
        format!("'{node}' '{entry}' stdio; echo $? > '{}'", record.display())
    ])
}

#[tokio::test]
async fn shutdown_lets_a_stdio_server_exit_after_the_end_of_its_input() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let record = dir.path().join("status");
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Ev",
        json!({"command": recorded_stdio_command(&record), "timeout": 30})
    )]));
    let echoed = clients
        .call(&program, "Ev", "echo", json!({"message": "bye"}))
        .await
        .expect("the call reaches the server");
    assert_eq!(echoed, Ok(json!("Echo: bye")));
    let started = Instant::now();
    clients.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(&record).ok().as_deref(),
        Some("0\n"),
        "the server did not exit by itself"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A stdio server that neither exits after the end of its input nor on `SIGTERM` (it
/// ignores it): `shutdown` waits 3 s, sends `SIGTERM`, waits 3 s more, then kills it.
#[tokio::test]
async fn shutdown_kills_a_stdio_server_that_does_not_exit() {
    let (node, entry) = everything();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let pid_file = dir.path().join("pid");
    let clients = McpClients::new();
    let script = format!(
        "echo $$ > '{}'; trap '' TERM; '{node}' '{entry}' stdio; exec sleep 60",
        pid_file.display()
    );
    let program = program(json!([mcp(
        "Ev",
        json!({"command": ["sh", "-c", script], "timeout": 30})
    )]));
    let echoed = clients
        .call(&program, "Ev", "echo", json!({"message": "stay"}))
        .await
        .expect("the call reaches the server");
    assert_eq!(echoed, Ok(json!("Echo: stay")));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file")
        .trim()
        .parse()
        .expect("a pid");
    let started = Instant::now();
    clients.shutdown().await;
    let took = started.elapsed();
    assert!(!process_exists(pid), "process {pid} survived the shutdown");
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(12),
        "{took:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_an_http_session_with_a_delete() {
    let port = free_port();
    let server = EverythingHttp::start(port).await;
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Web",
        json!({"url": url(port), "timeout": 30})
    )]));
    let echoed = clients
        .call(&program, "Web", "echo", json!({"message": "bye"}))
        .await
        .expect("the call reaches the server");
    assert_eq!(echoed, Ok(json!("Echo: bye")));
    assert_eq!(server.seen("session termination"), 0);
    clients.shutdown().await;
    // The server logs the DELETE as it handles it; the client has its answer by now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.seen("session termination") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.seen("session termination"),
        1,
        "{:?}",
        server.log.lock()
    );
    server.stop().await;
}

/// Without `shutdown`, dropping the clients still stops a stdio server (best effort: the
/// child is killed; nothing can be awaited in `Drop`).
#[tokio::test]
async fn dropping_the_clients_stops_a_stdio_server() {
    let clients = McpClients::new();
    let (node, entry) = everything();
    let program = program(json!([mcp(
        "Ev",
        // The server ignores the extra argument, which tells its process apart.
        json!({"command": [node, entry, "stdio", "dropped-clients-marker"], "timeout": 30})
    )]));
    let _ = clients
        .call(&program, "Ev", "echo", json!({"message": "x"}))
        .await
        .expect("the call reaches the server");
    let pid = child_with_arg("dropped-clients-marker").expect("the server's process");
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!process_exists(pid), "process {pid} outlived the clients");
}

/// The pid of the child of this test process that has `marker` among its arguments.
fn child_with_arg(marker: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|dir| {
        let pid = dir.file_name().to_str()?.parse::<u32>().ok()?;
        let cmdline = std::fs::read(dir.path().join("cmdline")).ok()?;
        let stat = std::fs::read_to_string(dir.path().join("stat")).ok()?;
        let parent = stat
            .rsplit_once(") ")?
            .1
            .split(' ')
            .nth(1)?
            .parse::<u32>()
            .ok()?;
        let has = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == marker.as_bytes());
        (parent == me && has).then_some(pid)
    })
}

// ---------------------------------------------------------------------------------------
// Items 2 and 3: tool names that are not identifiers, declared signatures
// ---------------------------------------------------------------------------------------

/// server-everything over stdio with the tools `tools` declared (`[{name, params,
/// return_type}]`, as the compilers write an `mcp` block's signatures).
fn declared_everything(tools: Value) -> Arc<Program> {
    let (node, entry) = everything();
    program(json!([mcp(
        "Ev",
        json!({"command": [node, entry, "stdio"], "timeout": 30, "tools": tools})
    )]))
}

fn param(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty})
}

/// Item 2: `get_sum` is server-everything's `get-sum`, for code and for a model.
#[tokio::test]
async fn a_declared_identifier_finds_the_servers_dashed_tool() {
    let clients = McpClients::new();
    let program = declared_everything(json!([
        {"name": "get_sum", "params": [param("a", "Int"), param("b", "Int")],
         "return_type": "Result<String, ToolError>"},
        {"name": "get_structured_content", "params": [param("location", "String")],
         "return_type": "Result<Map<String, Any>, ToolError>"}
    ]));
    let specs = clients.specs(&program, "Ev").await.expect("tools listed");
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Ev::get_sum", "Ev::get_structured_content"]);
    let sum = clients
        .call(&program, "Ev", "get_sum", json!({"a": 2, "b": 40}))
        .await
        .expect("the call reaches the server");
    assert_eq!(sum, Ok(json!("The sum of 2 and 40 is 42.")));
    // Item 3: structured content (the tool has an outputSchema) to the declared map.
    let weather = clients
        .call(
            &program,
            "Ev",
            "get_structured_content",
            json!({"location": "Chicago"}),
        )
        .await
        .expect("the call reaches the server")
        .expect("the tool answers");
    assert!(
        weather.get("temperature").is_some_and(Value::is_number),
        "{weather}"
    );
    assert!(
        weather.get("conditions").is_some_and(Value::is_string),
        "{weather}"
    );
    clients.shutdown().await;
}

/// Item 3: a declared parameter whose type the server's `inputSchema` does not have is an
/// error naming the tool, the parameter and both types, before anything is sent.
#[tokio::test]
async fn a_declared_signature_that_disagrees_with_the_server_is_named() {
    let clients = McpClients::new();
    let program = declared_everything(json!([
        {"name": "echo", "params": [param("message", "Int")],
         "return_type": "Result<String, ToolError>"}
    ]));
    let err = clients
        .call(&program, "Ev", "echo", json!({"message": 1}))
        .await
        .expect_err("a mismatch");
    assert_eq!(err.kind, HostErrorKind::Type, "{}", err.message);
    for part in ["echo", "message", "Int", "string"] {
        assert!(err.message.contains(part), "{part}: {}", err.message);
    }
    clients.shutdown().await;
}

/// Item 3: text converts to `Int` only when it parses exactly; `get-sum`'s sentence does
/// not, and the error says so.
#[tokio::test]
async fn text_that_is_not_a_number_does_not_become_an_int() {
    let clients = McpClients::new();
    let program = declared_everything(json!([
        {"name": "get_sum", "params": [param("a", "Int"), param("b", "Int")],
         "return_type": "Result<Int, ToolError>"}
    ]));
    let err = clients
        .call(&program, "Ev", "get_sum", json!({"a": 1, "b": 1}))
        .await
        .expect_err("the text is not an Int");
    assert_eq!(err.kind, HostErrorKind::Type, "{}", err.message);
    assert!(err.message.contains("Int"), "{}", err.message);
    clients.shutdown().await;
}

// Item 8 (a tool's error reaching a model as its message; `--metrics` counting calls from
// code) is tested with the scripted connection layer in the workspace tests: it concerns
// what the runtime does with a result, not the server that gave it.

/// Item 7 against server-everything: `get-tiny-image`'s image reaches a model as an image,
/// its text keeps a placeholder and never the data; from code the placeholder is all.
#[tokio::test]
async fn a_real_servers_image_is_taken_out_for_the_model() {
    let clients = McpClients::new();
    let program = declared_everything(json!([
        {"name": "get_tiny_image", "params": [], "return_type": "Result<String, ToolError>"}
    ]));
    let (value, images) = clients
        .call_for_model(&program, "Ev", "get_tiny_image", json!({}))
        .await
        .expect("the call reaches the server");
    let text = value.expect("the tool answers").to_string();
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].mime_type, "image/png");
    assert!(images[0].data.len() > 100, "{images:?}");
    assert!(text.contains("[image (image/png)]"), "{text}");
    assert!(!text.contains(&images[0].data), "{text}");
    let from_code = clients
        .call(&program, "Ev", "get_tiny_image", json!({}))
        .await
        .expect("the call reaches the server")
        .expect("the tool answers")
        .to_string();
    assert!(!from_code.contains(&images[0].data), "{from_code}");
    clients.shutdown().await;
}
