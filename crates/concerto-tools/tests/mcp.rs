//! MCP servers declared by a program, against the tiny test server in
//! `tests/fixtures/mcp/server.py` (stdio, and streamable HTTP on 127.0.0.1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_tools::ToolFailure;
use concerto_tools::mcp::{McpClients, declared_params};
use concerto_vm::host::{HostErrorKind, Program};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

fn fixture() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp/server.py")
}

/// `python3 '<fixture>'` (quoted, as a user would quote a path in a `command`).
fn server_command() -> String {
    format!("python3 '{}'", fixture())
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
    Arc::new(concerto_ir::load_str(&ir.to_string()).unwrap())
}

/// An `mcp` block with `config` merged over the type.
fn mcp(name: &str, config: Value) -> Value {
    let mut block = json!({"type": "mcp"});
    for (k, v) in config.as_object().unwrap() {
        block[k] = v.clone();
    }
    json!({"name": name, "config": block})
}

/// A stdio server named `Calc` running the fixture, with `extra` fields.
fn calc(extra: Value) -> Arc<Program> {
    let mut config = json!({"transport": "stdio", "command": server_command()});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    program(json!([mcp("Calc", config)]))
}

async fn pid(clients: &McpClients, program: &Arc<Program>) -> u32 {
    let value = clients
        .call(program, "Calc", "pid", json!({}))
        .await
        .unwrap()
        .unwrap();
    value.as_str().unwrap().parse().unwrap()
}

fn process_exists(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// The fixture serving streamable HTTP on 127.0.0.1 (killed when dropped).
struct HttpServer {
    _child: tokio::process::Child,
    url: String,
}

async fn http_server() -> HttpServer {
    let mut child = tokio::process::Command::new("python3")
        .arg(fixture())
        .arg("--http")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let port: u16 = line.strip_prefix("PORT ").unwrap().trim().parse().unwrap();
    HttpServer {
        _child: child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}

#[tokio::test]
async fn specs_list_the_servers_tools() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let specs = clients.specs(&program, "Calc").await.unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"Calc::add"), "{names:?}");
    assert!(names.contains(&"Calc::echo"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("Calc::")), "{names:?}");
    let add = specs.iter().find(|s| s.name == "Calc::add").unwrap();
    assert_eq!(add.description, "Adds two integers.");
    assert_eq!(
        add.parameters,
        json!({"type": "object",
               "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
               "required": ["a", "b"]})
    );
    clients.shutdown().await;
}

#[tokio::test]
async fn specs_fail_when_a_declared_tool_is_missing() {
    let clients = McpClients::new();
    let program = calc(json!({"tools": [
        {"name": "add", "params": [{"name": "a", "type": "Int"}, {"name": "b", "type": "Int"}],
         "return_type": "Result<Int, ToolError>"},
        {"name": "create_issue", "params": [], "return_type": "Result<String, ToolError>"}
    ]}));
    let err = clients.specs(&program, "Calc").await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`Calc`"), "{}", err.message);
    assert!(err.message.contains("`create_issue`"), "{}", err.message);
    let (missing, offered) = err.message.split_once("(it offers").unwrap();
    assert!(
        !missing.contains("`add`"),
        "only missing tools are named: {}",
        err.message
    );
    assert!(offered.contains("`add`"), "{}", err.message);
    clients.shutdown().await;
}

#[tokio::test]
async fn stdio_call_returns_structured_content() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let value = clients
        .call(&program, "Calc", "add", json!({"a": 2, "b": 3}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value, json!({"sum": 5}));
    clients.shutdown().await;
}

#[tokio::test]
async fn stdio_call_joins_text_content() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let echoed = clients
        .call(&program, "Calc", "echo", json!({"text": "héllo"}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, json!("héllo"));
    let pair = clients
        .call(
            &program,
            "Calc",
            "pair",
            json!({"first": "a", "second": "b"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pair, json!("a\nb"));
    clients.shutdown().await;
}

#[tokio::test]
async fn tool_error_is_ok_err() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let result = clients
        .call(&program, "Calc", "fail", json!({"message": "disk full"}))
        .await
        .unwrap();
    assert_eq!(result, Err(ToolFailure::from("disk full")));
    clients.shutdown().await;
}

#[tokio::test]
async fn unknown_tool_is_a_host_error_naming_server_and_tool() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let err = clients
        .call(&program, "Calc", "divide", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`Calc`"), "{}", err.message);
    assert!(err.message.contains("`divide`"), "{}", err.message);
    assert!(
        err.message.contains("`add`"),
        "lists what it offers: {}",
        err.message
    );
    // The session is still good.
    let ok = clients
        .call(&program, "Calc", "echo", json!({"text": "still here"}))
        .await
        .unwrap();
    assert_eq!(ok, Ok(json!("still here")));
    clients.shutdown().await;
}

#[tokio::test]
async fn unknown_server_and_llm_connection_are_host_errors() {
    let clients = McpClients::new();
    let program = program(json!([
        {"name": "openai", "config": {"provider": "openai", "api_key_env": "OPENAI_API_KEY"}}
    ]));
    let err = clients
        .call(&program, "Git", "search", json!({}))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("no MCP server `Git`"),
        "{}",
        err.message
    );
    let err = clients.specs(&program, "openai").await.unwrap_err();
    assert!(
        err.message.contains("`openai` is an LLM connection"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn arguments_must_be_an_object() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let err = clients
        .call(&program, "Calc", "add", json!([1, 2]))
        .await
        .unwrap_err();
    assert!(
        err.message.contains("`Calc`, tool `add`"),
        "{}",
        err.message
    );
    assert!(err.message.contains("JSON object"), "{}", err.message);
}

#[tokio::test]
async fn bad_command_fails_naming_server_tool_and_command() {
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Ghost",
        json!({"transport": "stdio", "command": "concerto-no-such-mcp-server --flag"})
    )]));
    let err = clients
        .call(&program, "Ghost", "search", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`Ghost`"), "{}", err.message);
    assert!(err.message.contains("`search`"), "{}", err.message);
    assert!(
        err.message.contains("`concerto-no-such-mcp-server`"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn server_that_dies_at_start_reports_its_stderr() {
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Broken",
        json!({"command": "python3 -c \"import sys; sys.stderr.write('cannot open database\\n'); sys.exit(2)\""})
    )]));
    let err = clients.specs(&program, "Broken").await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`Broken`"), "{}", err.message);
    assert!(
        err.message.contains("cannot open database"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn env_values_never_appear_in_messages() {
    let clients = McpClients::new();
    let secret = "sk-test-0123456789-secret";
    let program = program(json!([mcp(
        "Leaky",
        json!({"command": "python3 -c \"import os, sys; sys.stderr.write('token=' + os.environ['LEAKY_TOKEN'] + '\\n'); sys.exit(1)\"",
               "env": {"LEAKY_TOKEN": secret}})
    )]));
    let err = clients.specs(&program, "Leaky").await.unwrap_err();
    assert!(err.message.contains("token=[redacted]"), "{}", err.message);
    assert!(!err.message.contains(secret), "{}", err.message);
    assert!(!format!("{clients:?}").contains(secret));
}

#[tokio::test]
async fn http_server_not_running_fails() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let clients = McpClients::new();
    let program = program(json!([mcp(
        "Remote",
        json!({"transport": "http", "url": format!("http://127.0.0.1:{port}/mcp"), "timeout": 10})
    )]));
    let started = Instant::now();
    let err = clients
        .call(&program, "Remote", "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message.contains("`Remote`, tool `add`"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&format!("127.0.0.1:{port}")),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn http_transport_lists_and_calls_tools() {
    let server = http_server().await;
    let clients = McpClients::new();
    let program = program(json!([
        mcp("Web", json!({"transport": "http", "url": server.url})),
        mcp("Inferred", json!({"url": server.url}))
    ]));
    let specs = clients.specs(&program, "Web").await.unwrap();
    assert!(specs.iter().any(|s| s.name == "Web::add"));
    let sum = clients
        .call(&program, "Web", "add", json!({"a": 20, "b": 22}))
        .await
        .unwrap();
    assert_eq!(sum, Ok(json!({"sum": 42})));
    let failed = clients
        .call(&program, "Web", "fail", json!({"message": "nope"}))
        .await
        .unwrap();
    assert_eq!(failed, Err(ToolFailure::from("nope")));
    let err = clients
        .call(&program, "Web", "divide", json!({}))
        .await
        .unwrap_err();
    assert!(err.message.contains("`divide`"), "{}", err.message);
    for name in ["Inferred"] {
        let echoed = clients
            .call(&program, name, "echo", json!({"text": name}))
            .await
            .unwrap();
        assert_eq!(echoed, Ok(json!(name)));
    }
    clients.shutdown().await;
}

#[tokio::test]
async fn timeout_returns_timeout_kind_and_the_session_survives() {
    let clients = McpClients::new();
    let program = calc(json!({"timeout": 1}));
    let started = Instant::now();
    let err = clients
        .call(&program, "Calc", "sleep", json!({"seconds": 10}))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind, HostErrorKind::Timeout);
    assert!(
        err.message.contains("`Calc`, tool `sleep`"),
        "{}",
        err.message
    );
    assert!(err.message.contains("1s"), "{}", err.message);
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let ok = clients
        .call(&program, "Calc", "echo", json!({"text": "after"}))
        .await
        .unwrap();
    assert_eq!(ok, Ok(json!("after")));
    clients.shutdown().await;
}

#[tokio::test]
async fn fractional_timeout_is_honoured() {
    let clients = McpClients::new();
    let program = calc(json!({"timeout": 0.5}));
    let started = Instant::now();
    let err = clients
        .call(&program, "Calc", "sleep", json!({"seconds": 5}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Timeout);
    assert!(err.message.contains("0.5s"), "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(3));
    clients.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_died() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let first = pid(&clients, &program).await;
    let err = clients
        .call(&program, "Calc", "exit", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message.contains("`Calc`, tool `exit`"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("exit tool called; dying"),
        "{}",
        err.message
    );
    let second = pid(&clients, &program).await;
    assert_ne!(first, second);
    clients.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_was_killed_between_calls() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let first = pid(&clients, &program).await;
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(first.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // However the death is noticed (before the call or during it), a later call works on a
    // new process.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        match clients.call(&program, "Calc", "pid", json!({})).await {
            Ok(value) => break value.unwrap().as_str().unwrap().parse::<u32>().unwrap(),
            Err(err) => {
                assert!(err.message.contains("`Calc`"), "{}", err.message);
                assert!(
                    Instant::now() < deadline,
                    "never reconnected: {}",
                    err.message
                );
            }
        }
    };
    assert_ne!(first, second);
    clients.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_every_call() {
    let clients = Arc::new(McpClients::new());
    let program = calc(json!({}));
    let first = pid(&clients, &program).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let clients = clients.clone();
        let program = program.clone();
        tasks.push(tokio::spawn(async move {
            clients
                .call(&program, "Calc", "add", json!({"a": i, "b": 1}))
                .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap(), Ok(json!({"sum": i + 1})));
    }
    assert_eq!(pid(&clients, &program).await, first);
    clients.specs(&program, "Calc").await.unwrap();
    assert_eq!(pid(&clients, &program).await, first);
    clients.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_program_has_its_own_session() {
    let clients = McpClients::new();
    let one = calc(json!({}));
    let two = calc(json!({}));
    let a = pid(&clients, &one).await;
    let b = pid(&clients, &two).await;
    assert_ne!(a, b);
    assert_eq!(pid(&clients, &one).await, a);
    clients.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_child_process() {
    let clients = McpClients::new();
    let program = calc(json!({}));
    let first = pid(&clients, &program).await;
    assert!(process_exists(first));
    clients.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while process_exists(first) {
        assert!(
            Instant::now() < deadline,
            "process {first} still runs after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still usable: the next call starts a new server.
    let second = pid(&clients, &program).await;
    assert_ne!(first, second);
    clients.shutdown().await;
}

#[tokio::test]
async fn command_quoting_args_env_and_cwd_reach_the_child() {
    let dir = std::env::temp_dir().join(format!("concerto-mcp-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clients = McpClients::new();
    let program = calc(json!({
        "command": format!("python3 '{}' 'two words' \"double \\\"quoted\\\"\" plain", fixture()),
        "args": ["extra", 7],
        "env": {"CONCERTO_MCP_TEST": "value-1", "CONCERTO_MCP_NUMBER": 42},
        "cwd": dir.to_str().unwrap()
    }));
    let argv = clients
        .call(&program, "Calc", "argv", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        argv,
        json!({"argv": ["two words", "double \"quoted\"", "plain", "extra", "7"]})
    );
    let env = clients
        .call(
            &program,
            "Calc",
            "env",
            json!({"name": "CONCERTO_MCP_TEST"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env, json!({"value": "value-1"}));
    let number = clients
        .call(
            &program,
            "Calc",
            "env",
            json!({"name": "CONCERTO_MCP_NUMBER"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(number, json!({"value": "42"}));
    let cwd = clients
        .call(&program, "Calc", "cwd", json!(null))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        std::fs::canonicalize(cwd.as_str().unwrap()).unwrap(),
        std::fs::canonicalize(&dir).unwrap()
    );
    clients.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn command_as_an_array_is_used_verbatim() {
    let clients = McpClients::new();
    let program = calc(json!({"command": ["python3", fixture(), "a b", "$HOME"]}));
    let argv = clients
        .call(&program, "Calc", "argv", json!({}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(argv, json!({"argv": ["a b", "$HOME"]}));
    clients.shutdown().await;
}

#[tokio::test]
async fn invalid_configurations_fail_naming_the_field() {
    let clients = McpClients::new();
    let cases = [
        (
            json!({"transport": "stdio", "command": "python3 'unbalanced"}),
            "quotes",
        ),
        (json!({"transport": "stdio"}), "needs a `command`"),
        (json!({"transport": "http"}), "needs a `url`"),
        (
            json!({"transport": "websocket", "url": "ws://x"}),
            "unknown transport `websocket`",
        ),
        (json!({"url": "ftp://127.0.0.1/x"}), "`ftp` URL"),
        (
            json!({"command": "python3", "env": "x"}),
            "`env` must be an object",
        ),
        (json!({"command": "python3", "timeout": -1}), "`timeout`"),
        (
            json!({"command": "python3", "timeout": "soon"}),
            "`timeout`",
        ),
        (json!({"command": ""}), "`command` is empty"),
        (json!({}), "neither `command`"),
    ];
    for (config, expected) in cases {
        let program = program(json!([mcp("Bad", config.clone())]));
        let err = clients
            .call(&program, "Bad", "x", json!({}))
            .await
            .unwrap_err();
        assert!(
            err.message.contains("MCP server `Bad`"),
            "{config}: {}",
            err.message
        );
        assert!(err.message.contains(expected), "{config}: {}", err.message);
    }
}

#[test]
fn declared_params_follow_the_ir() {
    let program = program(json!([mcp(
        "Git",
        json!({"transport": "stdio", "command": "git-mcp --x", "tools": [
            {"name": "search",
             "params": [{"name": "query", "type": "String"}, {"name": "max", "type": "Int"}],
             "return_type": "Result<String, ToolError>"},
            {"name": "status", "params": [], "return_type": "Result<String, ToolError>"}
        ]})
    )]));
    assert_eq!(
        declared_params(&program, "Git", "search"),
        Some(vec!["query".to_string(), "max".to_string()])
    );
    assert_eq!(declared_params(&program, "Git", "status"), Some(vec![]));
    assert_eq!(declared_params(&program, "Git", "push"), None);
    assert_eq!(declared_params(&program, "Other", "search"), None);
}

/// A stdio server inherits PATH, HOME, LANG, TMPDIR and the variables the host allowed, not
/// the rest of the runtime's environment (cargo's `CARGO_*` variables stand for secrets here);
/// the manifest's own variables are set on top.
#[tokio::test]
async fn a_stdio_server_gets_a_minimal_environment_plus_what_was_allowed() {
    assert!(
        std::env::var("CARGO_PKG_NAME").is_ok(),
        "run under cargo test"
    );
    let program = calc(json!({
        "command": ["python3", fixture()],
        "env": {"CONCERTO_MCP_TEST": "declared"}
    }));
    async fn read_env(clients: &McpClients, program: &Arc<Program>, name: &str) -> Value {
        clients
            .call(program, "Calc", "env", json!({"name": name}))
            .await
            .unwrap()
            .unwrap()
    }
    let read = |clients, name| read_env(clients, &program, name);
    let minimal = McpClients::new();
    assert_eq!(
        read(&minimal, "CARGO_PKG_NAME").await,
        json!({"value": null})
    );
    assert_eq!(
        read(&minimal, "CONCERTO_MCP_TEST").await,
        json!({"value": "declared"})
    );
    // PATH is passed (a version manager's `python3` wrapper may put its own folders first).
    let path = read(&minimal, "PATH").await["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        path.ends_with(&std::env::var("PATH").unwrap_or_default()),
        "{path}"
    );
    minimal.shutdown().await;
    let allowed = McpClients::new().with_env_allowed(vec!["CARGO_PKG_NAME".into()]);
    assert_eq!(
        read(&allowed, "CARGO_PKG_NAME").await,
        json!({"value": "concerto-tools"})
    );
    assert_eq!(
        read(&allowed, "CARGO_MANIFEST_DIR").await,
        json!({"value": null})
    );
    allowed.shutdown().await;
}

/// A loopback listener on `ip` that counts the bytes it receives and answers every request
/// with `response`; its port and the count.
fn counting_listener(
    ip: &str,
    response: impl Fn(u16) -> String + Send + 'static,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 16384];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                if String::from_utf8_lossy(&buf[..n]).contains("\r\n\r\n") {
                    break;
                }
            }
            let _ = stream.write_all(response(port).as_bytes());
        }
    });
    (port, count)
}

/// With a net check, an HTTP server's URL must go to an allowed host, and so must every
/// redirect: a refused host receives nothing.
#[tokio::test]
async fn an_http_server_and_its_redirects_reach_only_allowed_hosts() {
    let (forbidden, forbidden_bytes) = counting_listener("127.0.0.2", |_| {
        "HTTP/1.1 500 No\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
    });
    let (redirector, redirector_bytes) = counting_listener("127.0.0.1", move |_| {
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.2:{forbidden}/mcp\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
    });
    let only_first = Arc::new(|host: &str, _port: u16| host == "127.0.0.1");
    let clients = McpClients::new().with_net_allowed(only_first);
    // The URL itself goes to a host that is not allowed: refused before any connection.
    let direct = program(json!([mcp(
        "Direct",
        json!({"transport": "http", "url": format!("http://127.0.0.2:{forbidden}/mcp"), "timeout": 5})
    )]));
    let err = clients
        .call(&direct, "Direct", "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotEnabled, "{}", err.message);
    assert!(
        err.message.contains("--allow-net 127.0.0.2"),
        "{}",
        err.message
    );
    // The URL is allowed, its redirect is not: the redirect is not followed.
    let redirected = program(json!([mcp(
        "Hop",
        json!({"transport": "http", "url": format!("http://127.0.0.1:{redirector}/mcp"), "timeout": 5})
    )]));
    let err = clients
        .call(&redirected, "Hop", "add", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotEnabled, "{}", err.message);
    assert!(
        err.message.contains("redirects to `127.0.0.2:"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("--allow-net 127.0.0.2"),
        "{}",
        err.message
    );
    assert!(redirector_bytes.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(forbidden_bytes.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Without a net check (a library user's own choice), the same redirect is followed.
    let open = McpClients::new();
    let _ = open.call(&redirected, "Hop", "add", json!({})).await;
    assert!(forbidden_bytes.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// The fixture over HTTP on `port`, answering requests of another process's session as
/// `unknown` says (`MCP_UNKNOWN_SESSION`).
async fn http_server_on(port: u16, unknown: &str) -> HttpServer {
    let mut child = tokio::process::Command::new("python3")
        .arg(fixture())
        .arg("--http")
        .env("MCP_PORT", port.to_string())
        .env("MCP_UNKNOWN_SESSION", unknown)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), format!("PORT {port}"));
    HttpServer {
        _child: child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}

/// A server that restarted no longer knows the session: whether it says so with 404, with
/// 400 and a JSON-RPC error without an id, or with a plain 400, the next call opens a new
/// session at once and succeeds (the block's timeout is 30 s).
#[tokio::test]
async fn a_server_that_forgot_the_session_gets_a_new_one_at_once() {
    for unknown in ["404", "400-json", "400-text"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = http_server_on(port, unknown).await;
        let clients = McpClients::new();
        let program = program(json!([mcp(
            "Web",
            json!({"url": server.url, "timeout": 30})
        )]));
        let first = pid_of(&clients, &program).await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _server = http_server_on(port, unknown).await;
        let started = Instant::now();
        let second = pid_of(&clients, &program).await;
        assert_ne!(first, second, "{unknown}: the restarted server answered");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{unknown}: {:?}",
            started.elapsed()
        );
        clients.shutdown().await;
    }
}

async fn pid_of(clients: &McpClients, program: &Arc<Program>) -> String {
    match clients.call(program, "Web", "pid", json!({})).await {
        Ok(Ok(Value::String(pid))) => pid,
        other => panic!("{other:?}"),
    }
}
