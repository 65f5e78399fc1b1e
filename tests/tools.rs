//! Tools and the outside world end to end: Concerto programs (`tests/tools/*.conc`, compiled
//! by `tests/tools/compile.sh`) run through the facade with the built-in tool layer, under
//! the permissions and sandbox a host would set. LLM requests are answered by a scripted
//! in-process connection layer; the MCP server and host agent are the Python fixtures of
//! `crates/concerto-tools/tests/fixtures`; HTTP servers are local threads on 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use concerto_runtime::vm::host::Connections;
use concerto_runtime::{RuntimeBuilder, RuntimeConfig, Sandbox, ToolPermission, Value};
use concerto_tests::scripted::{Scripted, emits, payload, text, tools};
use concerto_tests::{RunResult, run_ir_with};
use serde_json::json;

fn program(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(format!("{name}.conc-ir"));
    std::fs::read_to_string(path).expect("tool test program")
}

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/concerto-tools/tests/fixtures")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// Runs `ir` (placeholders already replaced) on a runtime `configure` set up.
fn run(ir: &str, configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder) -> RunResult {
    run_ir_with(ir.as_bytes(), configure)
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "concerto-tools-e2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(std::fs::canonicalize(&dir).expect("canonical temp dir"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The program's own tools

#[test]
fn own_tools_run_by_default() {
    let out = emits(&run(&program("own_tools"), |b| b));
    assert_eq!(payload(&out, "add"), json!(5));
    assert_eq!(payload(&out, "mul"), json!(20));
}

#[test]
fn a_disabled_own_tool_is_a_catchable_error_naming_it() {
    let out = emits(&run(&program("own_tools"), |b| {
        b.config(RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::Disabled))
    }));
    assert_eq!(payload(&out, "add"), json!(-1));
    assert_eq!(payload(&out, "add_denied_kind"), json!("not_enabled"));
    let denied = payload(&out, "add_denied");
    let denied = denied.as_str().unwrap_or_default();
    assert!(denied.contains("'Calc'"), "{denied}");
    assert!(denied.contains("--disable-tool Calc"), "{denied}");
}

#[test]
fn method_level_permission_allows_listed_methods_only() {
    let out = emits(&run(&program("own_tools"), |b| {
        b.config(
            RuntimeConfig::default()
                .with_tool_permission("Calc", ToolPermission::Methods(vec!["add".into()])),
        )
    }));
    assert_eq!(payload(&out, "add"), json!(5));
    assert_eq!(payload(&out, "mul"), json!(-1));
    let denied = payload(&out, "mul_denied");
    let denied = denied.as_str().unwrap_or_default();
    assert!(denied.contains("may not call 'mul'"), "{denied}");
    assert!(denied.contains("--allow-tool Calc.mul"), "{denied}");
}

// ---------------------------------------------------------------------------------------
// std::fs

fn fs_program(root: &Path, secret: &Path) -> String {
    program("fs_sandbox")
        .replace("ROOT", &root.to_string_lossy())
        .replace("SECRET", &secret.to_string_lossy())
}

#[test]
fn std_fs_works_inside_the_allowed_directory_and_nowhere_else() {
    let outside = TempDir::new("outside");
    let secret = outside.0.join("secret.txt");
    std::fs::write(&secret, "top secret").expect("secret");
    let root = outside.0.join("root");
    std::fs::create_dir_all(root.join("sub")).expect("root");
    // A symlink inside the root pointing at the directory that holds the secret.
    std::os::unix::fs::symlink(&outside.0, root.join("link")).expect("symlink");

    let ir = fs_program(&root, &secret);
    let out = emits(&run(&ir, |b| b.sandbox(Sandbox::default().allow_fs(&root))));
    assert_eq!(payload(&out, "read"), json!("first line\nsecond line\n"));
    assert_eq!(payload(&out, "exists"), json!(true));
    assert_eq!(payload(&out, "size"), json!(23));
    let mut listing: Vec<String> = serde_json::from_value(payload(&out, "listing")).expect("names");
    listing.sort();
    assert_eq!(listing, ["link", "notes.txt", "sub"]);
    assert_eq!(payload(&out, "exists_after_remove"), json!(false));
    assert_eq!(payload(&out, "missing"), json!(true));
    let attempts: Vec<String> = out
        .iter()
        .filter(|(c, _)| c == "attempt")
        .map(|(_, p)| p.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(attempts.len(), 5, "{out:?}");
    for outcome in &attempts {
        assert!(!outcome.starts_with("escaped"), "{outcome}");
        assert!(outcome.contains("--allow-fs"), "{outcome}");
    }
    assert_eq!(
        std::fs::read_to_string(&secret).expect("secret"),
        "top secret"
    );
}

#[test]
fn std_fs_without_an_allowed_directory_is_refused_with_a_hint() {
    let outside = TempDir::new("noroot");
    let ir = fs_program(&outside.0, &outside.0.join("secret.txt"));
    let result = run(&ir, |b| b);
    let error = result
        .error
        .expect("the first write is refused")
        .to_string();
    assert!(error.contains("--allow-fs"), "{error}");
    assert!(!outside.0.join("notes.txt").exists());
}

// ---------------------------------------------------------------------------------------
// std::http

/// A local HTTP/1.1 server answering `/hello` with 200 and `/redirect` with a 302 to
/// `redirect_to`, counting requests.
struct Server {
    addr: String,
    hits: Arc<AtomicUsize>,
}

fn serve(redirect_to: Option<String>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let response = match (&redirect_to, request_line.contains("/redirect")) {
                (Some(to), true) => format!(
                    "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                ),
                _ => "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
                    .to_string(),
            };
            let _ = stream.write_all(response.as_bytes());
        }
    });
    Server { addr, hits }
}

#[test]
fn std_http_reaches_allowed_hosts_only_redirects_included() {
    let forbidden = serve(None);
    let allowed = serve(Some(format!("http://{}/secret", forbidden.addr)));
    let ir = program("http_sandbox")
        .replace("ALLOWED", &allowed.addr)
        .replace("FORBIDDEN", &forbidden.addr);
    let out = emits(&run(&ir, |b| {
        b.sandbox(Sandbox::default().allow_net(allowed.addr.clone()))
    }));
    assert_eq!(payload(&out, "status"), json!(200));
    assert_eq!(payload(&out, "body"), json!("hello"));
    for label in ["direct", "redirect"] {
        let outcome = payload(&out, label);
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(outcome.starts_with("refused: "), "{label}: {outcome}");
        assert!(outcome.contains("--allow-net"), "{label}: {outcome}");
    }
    assert_eq!(forbidden.hits.load(Ordering::SeqCst), 0);
    assert_eq!(allowed.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn std_http_without_allowed_domains_is_refused_with_a_hint() {
    let server = serve(None);
    let ir = program("http_sandbox")
        .replace("ALLOWED", &server.addr)
        .replace("FORBIDDEN", &server.addr);
    let error = run(&ir, |b| b)
        .error
        .expect("the first request is refused")
        .to_string();
    assert!(error.contains("--allow-net"), "{error}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// MCP servers

/// The test MCP server's command line, quoted for shlex.
fn mcp_command() -> String {
    format!("python3 '{}'", fixture("mcp/server.py"))
}

fn mcp_program() -> String {
    // The command is a JSON string inside the IR: escaped for JSON.
    let json_command = serde_json::to_string(&mcp_command()).expect("json");
    program("mcp_server").replace("\"MCP_COMMAND\"", &json_command)
}

#[test]
fn an_mcp_server_is_called_from_code_and_offered_to_agents_once_enabled() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Calc::add", json!({"a": 19, "b": 23}))]),
        text("It is 42."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let out = emits(&run(&mcp_program(), |b| {
        b.connections(connections).config(
            RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::AllMethods),
        )
    }));
    assert_eq!(payload(&out, "echo"), json!("ping"));
    // `add` answers the text "42" and the structured {"sum": 42}: the declared Int is 42.
    assert_eq!(payload(&out, "add"), json!(42));
    let fail = payload(&out, "fail");
    assert!(
        fail.as_str().unwrap_or_default().contains("no luck"),
        "{fail}"
    );
    assert_eq!(payload(&out, "answer"), json!("It is 42."));

    let requests = conn.requests();
    assert_eq!(requests.len(), 2);
    // Only the tools the `mcp` block declares are offered, with the server's descriptions.
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["Calc::add", "Calc::echo", "Calc::fail"]);
    // The tool result went back to the model.
    let last = requests[1].messages.last().expect("tool result");
    assert_eq!(last.role, "tool");
    assert!(last.content.contains("42"), "{}", last.content);
}

/// The 1x1 PNG and GIF of the test MCP server (`fixtures/mcp/server.py`).
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
const GIF: &str = "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=";

#[test]
fn images_an_mcp_tool_returns_reach_the_model_as_images_never_as_text() {
    let conn = Scripted::new(vec![
        tools(&[
            ("c1", "Gallery::snapshot", json!({})),
            ("c2", "Gallery::album", json!({})),
        ]),
        text("Two red dots and a white one."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let json_command = serde_json::to_string(&mcp_command()).expect("json");
    let ir = program("mcp_images").replace("\"MCP_COMMAND\"", &json_command);
    let out = emits(&run(&ir, |b| {
        b.connections(connections).config(
            RuntimeConfig::default().with_tool_permission("Gallery", ToolPermission::AllMethods),
        )
    }));
    // From code the text stands for the image.
    assert_eq!(
        payload(&out, "direct"),
        json!("a red dot\n[image (image/png)]")
    );
    assert_eq!(
        payload(&out, "answer"),
        json!("Two red dots and a white one.")
    );
    let requests = conn.requests();
    let results: Vec<_> = requests[1]
        .messages
        .iter()
        .filter(|m| m.role == "tool")
        .collect();
    assert_eq!(results.len(), 2);
    let shown = |m: &concerto_runtime::vm::host::ChatMessage| {
        m.images
            .iter()
            .map(|i| (i.mime_type.clone(), i.data.clone()))
            .collect::<Vec<_>>()
    };
    // An image block: the image, and its placeholder in the text.
    assert_eq!(results[0].content, "a red dot\n[image (image/png)]");
    assert_eq!(
        shown(results[0]),
        [("image/png".to_string(), PNG.to_string())]
    );
    // Structured content with base64 images, and the same PNG as a block: each image once,
    // the structured content's data replaced by placeholders.
    let mut album = shown(results[1]);
    album.sort();
    assert_eq!(
        album,
        [
            ("image/gif".to_string(), GIF.to_string()),
            ("image/png".to_string(), PNG.to_string())
        ]
    );
    for m in &results {
        assert!(
            !m.content.contains(PNG) && !m.content.contains(GIF),
            "{}",
            m.content
        );
    }
    assert!(
        results[1].content.contains("[image (image/gif)]"),
        "{}",
        results[1].content
    );
}

/// A run stopped after a model's tool call was journaled and before the model answered: the
/// resumed run replays the tool's result, images included, and the model's next request
/// carries them (the MCP server is not asked again).
#[test]
fn a_resumed_run_shows_the_model_the_journaled_images() {
    let dir = TempDir::new("resume-images");
    let db = dir.0.join("state.db");
    let json_command = serde_json::to_string(&mcp_command()).expect("json");
    let ir = program("mcp_images").replace("\"MCP_COMMAND\"", &json_command);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let run = |conn: Arc<Scripted>| {
        let connections: Arc<dyn Connections> = conn;
        let mut rt = concerto_runtime::Runtime::builder()
            .connections(connections)
            .state_store(concerto_runtime::StateStore::Sqlite(db.clone()))
            .config(
                RuntimeConfig::default()
                    .with_tool_permission("Gallery", ToolPermission::AllMethods),
            )
            .build()
            .expect("builds");
        rt.load_ir_bytes(ir.as_bytes()).expect("loads");
        let result = tokio.block_on(rt.execute_run("run-images"));
        let replayed = rt.replayed_operations();
        tokio.block_on(rt.shutdown());
        (result, replayed)
    };
    let first = Scripted::new(vec![
        tools(&[("c1", "Gallery::snapshot", json!({}))]),
        Err(concerto_runtime::vm::host::HostError::failed(
            "the provider went away",
        )),
    ]);
    let (result, _) = run(first.clone());
    assert!(result.is_err(), "the second model call failed");
    assert_eq!(first.requests().len(), 2);
    let second = Scripted::new(vec![text("A red dot.")]);
    let (result, replayed) = run(second.clone());
    result.expect("the resumed run completes");
    // The execution's random seed, the direct call, the emit of its result, the first model
    // call and the model's tool call; the failed second model call ended the first run and
    // was not journaled, so it is asked again.
    assert_eq!(replayed, 5);
    let requests = second.requests();
    assert_eq!(requests.len(), 1);
    let tool = requests[0]
        .messages
        .iter()
        .find(|m| m.role == "tool")
        .expect("the tool result");
    assert_eq!(tool.images.len(), 1);
    assert_eq!(tool.images[0].data, PNG);
}

#[test]
fn an_mcp_server_without_permission_is_refused_and_never_started() {
    let out = emits(&run(&mcp_program(), |b| b));
    let denied = payload(&out, "denied");
    let denied = denied.as_str().unwrap_or_default();
    assert!(denied.contains("MCP server 'Calc'"), "{denied}");
    assert!(denied.contains("--allow-tool Calc"), "{denied}");
    // The command line comes from the program: the refusal shows what enabling it starts.
    let script = fixture("mcp/server.py");
    assert!(
        denied.contains(&format!("would start `python3 {script}`")),
        "{denied}"
    );
    assert!(out.iter().all(|(c, _)| c != "echo"));
}

#[test]
fn a_switched_off_mcp_server_is_an_err_for_its_tools_and_agents_go_without_it() {
    let conn = Scripted::new(vec![text("Hi.")]);
    let connections: Arc<dyn Connections> = conn.clone();
    let json_command = serde_json::to_string(&mcp_command()).unwrap();
    let ir = program("mcp_switched_off").replace("\"MCP_COMMAND\"", &json_command);
    let result = run(&ir, |b| {
        b.connections(connections)
            .config(RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::Disabled))
    });
    assert!(result.error.is_none(), "{:?}", result.error);
    let out = emits(&result);
    assert_eq!(payload(&out, "direct_is_err"), json!(true));
    assert_eq!(payload(&out, "direct_kind"), json!("not_enabled"));
    let message = payload(&out, "direct_message");
    assert!(
        message.as_str().unwrap_or_default().contains("Calc"),
        "{message}"
    );
    assert_eq!(payload(&out, "answer"), json!("Hi."));
    // The agent was asked without the server's tools.
    let requests = conn.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].tools.is_empty(), "{:?}", requests[0].tools);
}

#[test]
fn mcp_method_level_permission() {
    let conn = Scripted::new(vec![text("unused")]);
    let connections: Arc<dyn Connections> = conn.clone();
    let result = run(&mcp_program(), |b| {
        b.connections(connections).config(
            RuntimeConfig::default()
                .with_tool_permission("Calc", ToolPermission::Methods(vec!["echo".into()])),
        )
    });
    // echo runs; add is refused and, uncaught, ends the run with a message naming it.
    assert_eq!(
        result.emits.first().map(|e| e["payload"].clone()),
        Some(json!("ping"))
    );
    let error = result.error.expect("add is refused").to_string();
    assert!(error.contains("may not call 'add'"), "{error}");
}

fn mcp_signatures_program() -> String {
    let json_command = serde_json::to_string(&mcp_command()).expect("json");
    program("mcp_signatures").replace("\"MCP_COMMAND\"", &json_command)
}

fn text_of(out: &[(String, serde_json::Value)], channel: &str) -> String {
    payload(out, channel)
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn mcp_tools_are_matched_by_identifier_form_checked_and_converted_from_code_and_for_agents() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Calc::get_sum", json!({"a": 19, "b": 23}))]),
        text("It is 42."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let result = run(&mcp_signatures_program(), |b| {
        b.connections(connections).config(
            RuntimeConfig::default()
                .with_tool_permission("Calc", ToolPermission::AllMethods)
                .with_tool_permission("Loose", ToolPermission::AllMethods),
        )
    });
    assert!(result.error.is_none(), "{:?}", result.error);
    let out = emits(&result);
    // `get_sum` reaches the server's `get-sum`; its text "5" is the declared Int.
    assert_eq!(payload(&out, "sum"), json!(6));
    // Structured content becomes the declared struct.
    assert_eq!(payload(&out, "city"), json!("Oslo"));
    assert_eq!(payload(&out, "temp"), json!(21.5));
    // `-> String` gives the bare text, not an `Ok`.
    assert_eq!(payload(&out, "echo"), json!("plain"));
    assert_eq!(payload(&out, "pair_none"), json!("a\n"));
    assert_eq!(payload(&out, "pair_some"), json!("a\nb"));
    // Text that parses exactly is an Int; other text is an Err(ToolError) of kind "type".
    assert_eq!(payload(&out, "parsed"), json!(42));
    assert_eq!(payload(&out, "unparsed_kind"), json!("type"));
    let unparsed = text_of(&out, "unparsed");
    assert!(unparsed.contains("Loose"), "{unparsed}");
    assert!(unparsed.contains("\"Echo: hi\""), "{unparsed}");
    assert!(unparsed.contains("`Int`"), "{unparsed}");
    // A declaration the server's inputSchema contradicts: tool, parameter and both types.
    assert_eq!(payload(&out, "mismatch_kind"), json!("type"));
    let mismatch = text_of(&out, "mismatch");
    for part in ["tool `add`", "parameter `a`", "`String`", "`integer`"] {
        assert!(mismatch.contains(part), "{part}: {mismatch}");
    }
    // Without `Result<_, ToolError>` the mismatch is raised (and here caught).
    let raised = text_of(&out, "raised");
    assert!(raised.starts_with("type: "), "{raised}");
    assert!(raised.contains("parameter `third`"), "{raised}");
    let failed = text_of(&out, "failed");
    assert!(failed.contains("boom"), "{failed}");
    assert!(raised.contains("tool `pair`"), "{raised}");
    // Two server tools with the same identifier form: an error naming both.
    let ambiguous = text_of(&out, "ambiguous");
    assert!(ambiguous.contains("more than one"), "{ambiguous}");
    assert!(ambiguous.contains("`a-b`, `a.b`;"), "{ambiguous}");
    // An agent offered that server fails, naming the mismatch, before asking the model.
    let refused = text_of(&out, "agent_refused");
    assert!(refused.contains("parameter `a`"), "{refused}");
    assert_eq!(payload(&out, "answer"), json!("It is 42."));

    // The model was offered the declared names and its call reached `get-sum`.
    let requests = conn.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        offered,
        [
            "Calc::get_sum",
            "Calc::weather",
            "Calc::echo",
            "Calc::pair",
            "Calc::fail"
        ]
    );
    let last = requests[1].messages.last().expect("tool result");
    assert_eq!(last.role, "tool");
    assert_eq!(last.content, "42");
}

#[test]
fn a_failing_mcp_tool_reaches_the_model_as_its_message() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Calc::fail", json!({"message": "disk full"}))]),
        text("Sorry."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let result = run(&mcp_program(), |b| {
        b.connections(connections).config(
            RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::AllMethods),
        )
    });
    assert!(result.error.is_none(), "{:?}", result.error);
    let requests = conn.requests();
    let last = requests[1].messages.last().expect("tool result");
    assert_eq!(last.role, "tool");
    assert_eq!(last.content, "error: disk full");
}

#[test]
fn metrics_count_tool_calls_made_from_code_as_well_as_by_models() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Calc::add", json!({"a": 19, "b": 23}))]),
        text("It is 42."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let mut rt = concerto_runtime::Runtime::builder()
        .connections(connections)
        .config(RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::AllMethods))
        .build()
        .expect("builds");
    rt.load_ir_bytes(mcp_program().as_bytes()).expect("loads");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(rt.execute()).expect("runs");
    let m = rt.metrics();
    // echo, add and fail from code, add by the model.
    assert_eq!(m.tool_calls, 4);
    assert_eq!(m.llm.by_agent["Clerk"].tool_calls, 1);
    // The program's own tools called from code count too: add and mul.
    let mut rt = concerto_runtime::Runtime::builder()
        .build()
        .expect("builds");
    rt.load_ir_bytes(program("own_tools").as_bytes())
        .expect("loads");
    tokio.block_on(rt.execute()).expect("runs");
    assert_eq!(rt.metrics().tool_calls, 2);
}

// ---------------------------------------------------------------------------------------
// Host agents

fn host_program() -> String {
    program("host_agent").replace("HOST_AGENT_SCRIPT", &fixture("host_agent.py"))
}

#[test]
fn a_host_agent_answers_line_by_line_once_enabled() {
    let out = emits(&run(&host_program(), |b| {
        b.config(RuntimeConfig::default().with_tool_permission("Echo", ToolPermission::AllMethods))
    }));
    assert_eq!(payload(&out, "first"), json!("echo: hello"));
    assert_eq!(payload(&out, "env"), json!("hello from the manifest"));
    // One process kept across calls: the third call of the same process.
    let count = payload(&out, "count");
    assert!(
        count.as_str().unwrap_or_default().ends_with(" 3"),
        "{count}"
    );
    assert_eq!(payload(&out, "schema"), json!(["forty two", 4]));
    let slow = payload(&out, "slow");
    assert!(
        slow.as_str().unwrap_or_default().contains("timed out"),
        "{slow}"
    );
    // The timed-out process was killed; the next call starts a new one (its first call).
    let (first_pid, after) = (
        count
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string(),
        payload(&out, "after_timeout"),
    );
    let after = after.as_str().unwrap_or_default();
    assert!(after.ends_with(" 1"), "{after}");
    assert!(!after.starts_with(&format!("{first_pid} ")), "{after}");
}

#[test]
fn a_host_agent_without_permission_is_refused_and_never_started() {
    let out = emits(&run(&host_program(), |b| b));
    let denied = payload(&out, "denied");
    let denied = denied.as_str().unwrap_or_default();
    assert!(denied.contains("host agent 'Echo'"), "{denied}");
    assert!(denied.contains("--allow-tool Echo"), "{denied}");
    let script = fixture("host_agent.py");
    assert!(
        denied.contains(&format!("would start `python3 {script}`")),
        "{denied}"
    );
    assert!(out.iter().all(|(c, _)| c != "first"));
}

// ---------------------------------------------------------------------------------------
// Host-registered tools

fn register_weather(b: RuntimeBuilder, calls: Arc<AtomicUsize>) -> RuntimeBuilder {
    b.tool(
        "Weather",
        "forecast",
        "The forecast for a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        move |args: Value| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let city = args.to_json()["city"].as_str().unwrap_or("?").to_string();
                Ok(Value::from(format!("sunny in {city}")))
            }
        },
    )
}

#[test]
fn a_host_registered_tool_is_offered_to_agents_and_called() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Weather::forecast", json!({"city": "Oslo"}))]),
        text("Sunny."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = calls.clone();
    let out = emits(&run(&program("host_tool"), |b| {
        register_weather(b, handler_calls)
            .connections(connections)
            .config(
                RuntimeConfig::default()
                    .with_tool_permission("Weather", ToolPermission::AllMethods),
            )
    }));
    assert_eq!(payload(&out, "answer"), json!("Sunny."));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let requests = conn.requests();
    let offered = &requests[0].tools;
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0].name, "Weather::forecast");
    assert_eq!(offered[0].description, "The forecast for a city");
    let last = requests[1].messages.last().expect("tool result");
    assert!(last.content.contains("sunny in Oslo"), "{}", last.content);
}

#[test]
fn a_host_registered_tool_without_permission_is_never_run() {
    let conn = Scripted::new(vec![text("unused")]);
    let connections: Arc<dyn Connections> = conn.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let handler_calls = calls.clone();
    let out = emits(&run(&program("host_tool"), |b| {
        b.connections(connections)
            // The plain-function form of registration.
            .tool_fn(
                "Weather",
                "forecast",
                "The forecast for a city",
                json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                move |_| {
                    handler_calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Value::from("sunny"))
                },
            )
    }));
    let error = payload(&out, "error");
    let error = error.as_str().unwrap_or_default();
    assert!(error.contains("host tool 'Weather'"), "{error}");
    assert!(error.contains("--allow-tool Weather"), "{error}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(conn.requests().is_empty());
}

#[test]
fn a_plain_function_registered_as_a_tool_is_called_too() {
    let conn = Scripted::new(vec![
        tools(&[("c1", "Weather::forecast", json!({"city": "Bergen"}))]),
        text("Rain."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let out =
        emits(&run(&program("host_tool"), |b| {
            b.connections(connections)
                .tool_fn(
                    "Weather",
                    "forecast",
                    "The forecast for a city",
                    json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                    |args| {
                        let city = args.to_json()["city"].as_str().unwrap_or("?").to_string();
                        Ok(Value::from(format!("rain in {city}")))
                    },
                )
                .config(RuntimeConfig::default().with_tool_permission(
                    "Weather",
                    ToolPermission::Methods(vec!["forecast".into()]),
                ))
        }));
    assert_eq!(payload(&out, "answer"), json!("Rain."));
    let last = conn.requests()[1]
        .messages
        .last()
        .cloned()
        .expect("tool result");
    assert!(last.content.contains("rain in Bergen"), "{}", last.content);
}

// ---------------------------------------------------------------------------------------
// A ledger reached by an agent through a tool

#[test]
fn an_agent_reads_a_ledger_through_a_tool() {
    let conn = Scripted::new(vec![
        tools(&[(
            "c1",
            "Knowledge::lookup",
            json!({"question": "office opening hours"}),
        )]),
        text("9 to 17."),
    ]);
    let connections: Arc<dyn Connections> = conn.clone();
    let out = emits(&run(&program("ledger_tool"), |b| {
        b.connections(connections)
    }));
    assert_eq!(payload(&out, "answer"), json!("9 to 17."));
    assert_eq!(payload(&out, "facts"), json!(2));
    let requests = conn.requests();
    assert_eq!(requests[0].tools[0].name, "Knowledge::lookup");
    let result = requests[1].messages.last().expect("tool result");
    assert_eq!(result.role, "tool");
    assert!(
        result.content.contains("Open 9 to 17"),
        "{}",
        result.content
    );
}

// ---------------------------------------------------------------------------------------
// Closing sessions and processes (`Runtime::shutdown`)

/// `program` with MCP server `Calc`'s and host `Echo`'s commands wrapped in a shell: with
/// `pid`, it writes its pid to `calc` / `echo` and becomes the server (`exec`); without, it
/// runs the server and then writes its exit status there (nothing when the shell was
/// killed).
fn wrapped(ir: &str, calc: &Path, echo: &Path, pid: bool) -> String {
    let mut ir: serde_json::Value = serde_json::from_str(ir).expect("IR");
    let wrap = |cmd: String, file: &Path| {
        let script = if pid {
            format!("echo $$ > '{}'; exec {cmd}", file.display())
        } else {
            format!("{cmd}; echo $? > '{}'", file.display())
        };
        json!(["sh", "-c", script])
    };
    if let Some(conns) = ir["connections"].as_array_mut() {
        for conn in conns.iter_mut().filter(|c| c["name"] == "Calc") {
            conn["config"]["command"] = wrap(mcp_command(), calc);
        }
    }
    if let Some(hosts) = ir["hosts"].as_array_mut() {
        for host in hosts.iter_mut().filter(|h| h["name"] == "Echo") {
            let cmd = wrap(format!("python3 '{}'", fixture("host_agent.py")), echo);
            host["command"] = json!("sh");
            host["args"] = json!(cmd.as_array().map(|a| a[1..].to_vec()));
        }
    }
    ir.to_string()
}

/// One execution each of the MCP and the host agent programs, each on a runtime of its own,
/// then `shutdown` (or a plain drop), on a tokio runtime of its own.
fn run_then(shutdown: bool, dir: &Path) -> (PathBuf, PathBuf) {
    let (calc, echo) = (dir.join("calc"), dir.join("echo"));
    let mcp = wrapped(&mcp_program(), &calc, &echo, !shutdown);
    let host = wrapped(&host_program(), &calc, &echo, !shutdown);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let connections: Arc<dyn Connections> = Scripted::new(vec![text("It is 42.")]);
        for ir in [mcp, host] {
            let mut runtime = concerto_runtime::Runtime::builder()
                .connections(connections.clone())
                .config(
                    RuntimeConfig::default()
                        .with_tool_permission("Calc", ToolPermission::AllMethods)
                        .with_tool_permission("Echo", ToolPermission::AllMethods),
                )
                .build()
                .expect("runtime");
            runtime.load_ir_bytes(ir.as_bytes()).expect("program");
            let _ = runtime.execute().await;
            if shutdown {
                runtime.shutdown().await;
            }
        }
    });
    (calc, echo)
}

#[test]
fn shutdown_lets_mcp_servers_and_host_agents_exit_after_the_end_of_their_input() {
    let dir = TempDir::new("shutdown");
    let (calc, echo) = run_then(true, &dir.0);
    // `shutdown` returned only once both had exited, by themselves.
    assert_eq!(std::fs::read_to_string(calc).ok().as_deref(), Some("0\n"));
    assert_eq!(std::fs::read_to_string(echo).ok().as_deref(), Some("0\n"));
}

#[test]
fn dropping_a_runtime_without_shutdown_still_stops_its_processes() {
    let dir = TempDir::new("dropped");
    let (calc, echo) = run_then(false, &dir.0);
    for file in [calc, echo] {
        let pid = std::fs::read_to_string(&file).expect("the server wrote its pid");
        let pid: u32 = pid.trim().parse().expect("a pid");
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            !running(),
            "{} (pid {pid}) outlived its runtime",
            file.display()
        );
    }
}

#[test]
fn a_runtime_stays_usable_after_shutdown() {
    let connections: Arc<dyn Connections> =
        Scripted::new(vec![text("It is 42."), text("It is 42.")]);
    let mut runtime = concerto_runtime::Runtime::builder()
        .connections(connections)
        .config(RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::AllMethods))
        .build()
        .expect("runtime");
    runtime
        .load_ir_bytes(mcp_program().as_bytes())
        .expect("program");
    let echoed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = echoed.clone();
    runtime.on("echo", move |v: Value| seen.lock().push(v));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        for _ in 0..2 {
            runtime.execute().await.expect("the run");
            runtime.shutdown().await;
        }
    });
    // Both executions reached the server: the second started it again.
    assert_eq!(echoed.lock().len(), 2);
}
