//! `cargo xtask phoenix`: an interop check with Arize Phoenix (not run in CI; Phoenix is a
//! Python package). Starts `phoenix serve` on loopback with its database in a temporary
//! folder (telemetry and Phoenix's own calls to the internet off), runs two Concerto programs
//! with `concerto run --otlp` against a loopback OpenAI-compatible mock, so that their spans
//! go to Phoenix over OTLP/HTTP (protobuf), then reads the spans back through Phoenix's REST
//! API (`GET /v1/projects/<project>/spans`) and its GraphQL API and checks what Phoenix
//! stored: one trace per run, the span tree by parent ids, the span names, the GenAI
//! attributes with their types, and what Phoenix derived from them (span kinds `AGENT` and
//! `LLM`, `llm.model_name`, `llm.token_count.*`, the token counts summed up the tree).
//!
//! Phoenix is `--phoenix-bin PATH`, else `$PHOENIX_BIN`, else `phoenix` on PATH
//! (`pip install arize-phoenix`). Phoenix is stopped at the end, whatever the outcome.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

/// The Phoenix project the runs' spans go to: the resource attribute
/// `openinference.project.name`, set through `OTEL_RESOURCE_ATTRIBUTES`.
const PROJECT: &str = "concerto-xtask";

/// How long Phoenix may take to answer (its first start creates the database).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the exported spans may take to show in Phoenix's API (it inserts in batches).
const SPANS_TIMEOUT: Duration = Duration::from_secs(60);

/// Phoenix's timestamps are microseconds (from float seconds): the slack allowed when a
/// child's start and end are compared with its parent's.
const CLOCK_SLACK_US: i64 = 5;

const MISSING: &str = "Arize Phoenix not found: pass --phoenix-bin PATH or set PHOENIX_BIN, or \
put `phoenix` on PATH. Install it with `pip install arize-phoenix` (in a virtual \
environment: `python3 -m venv ~/phoenix && ~/phoenix/bin/pip install arize-phoenix`, then \
`cargo xtask phoenix --phoenix-bin ~/phoenix/bin/phoenix`)";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    let phoenix_bin = phoenix_bin(args)?;
    crate::run(
        "cargo build -p concerto-cli",
        crate::cargo().args(["build", "-p", "concerto-cli"]),
    )?;
    let concerto = crate::debug_artifact("concerto")?;
    let dir = TempDir::new()?;
    let phoenix = Phoenix::start(&phoenix_bin, &dir.0)?;
    println!(
        "phoenix: Arize Phoenix {} up at {} in {:.1}s ({})",
        phoenix.version,
        phoenix.url(),
        phoenix.up_after.as_secs_f64(),
        phoenix_bin.display()
    );
    let llm = MockLlm::start()?;
    for scenario in SCENARIOS {
        run_program(&concerto, &dir.0, scenario, &llm, &phoenix)?;
    }
    let expected_total: usize = SCENARIOS.iter().map(|s| s.tree().count()).sum();
    let spans = phoenix.read_spans(expected_total)?;
    println!(
        "phoenix: {} spans read back from {}/v1/projects/{PROJECT}/spans",
        spans.len(),
        phoenix.url()
    );
    let mut traces = Vec::new();
    for scenario in SCENARIOS {
        traces.push(check_scenario(scenario, &spans)?);
    }
    let trace_count = spans
        .iter()
        .map(trace_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if trace_count != SCENARIOS.len() {
        bail!(
            "Phoenix holds the spans in {trace_count} traces, expected {} (one per run):\n{}",
            SCENARIOS.len(),
            dump(&spans)
        );
    }
    check_graphql(&phoenix, &spans, &traces)?;
    println!(
        "\nphoenix: ok: Phoenix {} stored and understood the spans of {} runs in {:.1}s",
        phoenix.version,
        SCENARIOS.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The Phoenix command: `--phoenix-bin`, else `$PHOENIX_BIN`, else `phoenix` on PATH.
fn phoenix_bin(args: &[String]) -> Result<PathBuf> {
    let mut chosen = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--phoenix-bin" => {
                chosen = Some(it.next().context("--phoenix-bin needs a path")?.clone());
            }
            other => bail!("unknown phoenix option `{other}` (--phoenix-bin PATH)"),
        }
    }
    let chosen = chosen.or_else(|| std::env::var("PHOENIX_BIN").ok().filter(|v| !v.is_empty()));
    match chosen {
        Some(bin) if bin.contains(std::path::MAIN_SEPARATOR) => {
            let path = PathBuf::from(&bin);
            if !path.is_file() {
                bail!("{bin}: no such file (from --phoenix-bin or PHOENIX_BIN). {MISSING}");
            }
            Ok(path)
        }
        Some(bin) => on_path(&bin).ok_or_else(|| anyhow!("`{bin}` is not on PATH. {MISSING}")),
        None => on_path("phoenix").ok_or_else(|| anyhow!(MISSING)),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A folder under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("concerto-phoenix-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `phoenix serve`, killed on drop.
struct Phoenix {
    child: Child,
    port: u16,
    log: PathBuf,
    version: String,
    up_after: Duration,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("cannot bind a loopback port")?
        .local_addr()?
        .port())
}

impl Phoenix {
    /// Starts `BIN serve` on loopback ports, its working folder (database, exports) under
    /// `dir`, and waits until `/healthz` answers.
    fn start(bin: &Path, dir: &Path) -> Result<Phoenix> {
        let work = dir.join("phoenix");
        std::fs::create_dir_all(&work)?;
        let port = free_port()?;
        let grpc_port = free_port()?;
        let log = dir.join("phoenix.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").current_dir(&work);
        // Nothing from the caller's environment configures this Phoenix (another database,
        // authentication, a collector of its own spans).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("PHOENIX_") || name.starts_with("OTEL_") {
                cmd.env_remove(&*name);
            }
        }
        cmd.env("PHOENIX_WORKING_DIR", &work)
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
            // No analytics pixels, web fonts, sandbox download or assistant.
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            .env("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
            .env("PHOENIX_DISABLE_AGENT_ASSISTANT", "true")
            .env("PHOENIX_LOG_MIGRATIONS", "false")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{} serve`. {MISSING}", bin.display()))?;
        let start = Instant::now();
        let mut phoenix = Phoenix {
            child,
            port,
            log,
            version: String::new(),
            up_after: Duration::ZERO,
        };
        loop {
            if let Some(status) = phoenix.child.try_wait()? {
                bail!(
                    "Phoenix (`{} serve`) exited ({status}) before it answered on port {port}; \
                     the end of its log:\n{}",
                    bin.display(),
                    phoenix.log_tail()
                );
            }
            if matches!(phoenix.get("/healthz"), Ok((200, _))) {
                break;
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "Phoenix did not answer on {}/healthz within {} s; the end of its log:\n{}",
                    phoenix.url(),
                    START_TIMEOUT.as_secs(),
                    phoenix.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        phoenix.up_after = start.elapsed();
        phoenix.version = match phoenix.get("/arize_phoenix_version") {
            Ok((200, v)) => v.trim().to_string(),
            _ => "(version unknown)".to_string(),
        };
        Ok(phoenix)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        http(self.port, "GET", path, None)
    }

    /// The project's spans, once Phoenix holds `expected` of them (then once more a second
    /// later, so that a span too many is seen too).
    fn read_spans(&self, expected: usize) -> Result<Vec<Value>> {
        let start = Instant::now();
        let path = format!("/v1/projects/{PROJECT}/spans?limit=1000");
        loop {
            let (status, body) = self.get(&path)?;
            let last = if status == 200 {
                let spans = spans_of(&body)?;
                if spans.len() >= expected {
                    std::thread::sleep(Duration::from_secs(1));
                    let (status, body) = self.get(&path)?;
                    if status != 200 {
                        bail!("GET {path}: {status}: {body}");
                    }
                    return spans_of(&body);
                }
                format!("{} of the {expected} spans:\n{}", spans.len(), dump(&spans))
            } else if status == 404 {
                let projects = self.get("/v1/projects").map(|(_, b)| b).unwrap_or_default();
                format!(
                    "no project `{PROJECT}` (no span arrived, or the resource attribute \
                     openinference.project.name was not honoured); projects: {projects}"
                )
            } else {
                bail!("GET {path}: {status}: {body}");
            };
            if start.elapsed() > SPANS_TIMEOUT {
                bail!(
                    "after {} s Phoenix holds {last}\nthe end of Phoenix's log:\n{}",
                    SPANS_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn graphql(&self, query: &str) -> Result<Value> {
        let body = json!({ "query": query }).to_string();
        let (status, text) = http(self.port, "POST", "/graphql", Some(&body))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("POST /graphql: {status}: {text}"))?;
        if status != 200 || value.get("errors").is_some_and(|e| !e.is_null()) {
            bail!("POST /graphql: {status}: {text}");
        }
        Ok(value["data"].clone())
    }
}

fn spans_of(body: &str) -> Result<Vec<Value>> {
    let value: Value = serde_json::from_str(body).context("Phoenix's span list is not JSON")?;
    value["data"]
        .as_array()
        .cloned()
        .with_context(|| format!("Phoenix's span list has no `data` array: {body}"))
}

/// One HTTP/1.1 request to `127.0.0.1:port` (the connection closed after it); the status
/// and the body.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let content_type = if method == "POST" {
        "content-type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: application/json\r\n\
         connection: close\r\n{content_type}content-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("{method} {path}: no complete answer"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{method} {path}: no HTTP head in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: no status in `{head}`"))?;
    let mut payload = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload).with_context(|| format!("{method} {path}: bad chunks"))?;
    }
    Ok((status, String::from_utf8_lossy(&payload).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A loopback OpenAI-compatible server that answers each chat completion by its prompt
/// (unknown prompts get a 400): the first "Name a colour" is rate-limited (429), which
/// the run's retry answers.
struct MockLlm {
    url: String,
    /// `<status> <model> <prompt>` of every request answered.
    log: Arc<Mutex<Vec<String>>>,
}

impl MockLlm {
    fn start() -> Result<MockLlm> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the mock LLM")?;
        let url = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Mutex::new(Vec::new()));
        let limited = Arc::new(AtomicBool::new(false));
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, limited) = (seen.clone(), limited.clone());
                std::thread::spawn(move || answer(stream, &seen, &limited));
            }
        });
        Ok(MockLlm { url, log })
    }

    /// The requests answered since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn answer(mut stream: TcpStream, seen: &Mutex<Vec<String>>, limited: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((_, body)) = crate::loopback::read_request(&mut stream) else {
        return;
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("?").to_string();
    let prompt = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    // The answer and its token counts (prompt, completion).
    let answer = if prompt.starts_with("Name a colour") {
        if limited.swap(true, Ordering::SeqCst) {
            Ok(("Teal", 8, 3))
        } else {
            Err(429)
        }
    } else if prompt.starts_with("Draft a note") {
        Ok(("Tides turn twice a day.", 21, 5))
    } else if prompt.starts_with("Tighten this") {
        Ok(("Tides turn twice daily.", 13, 4))
    } else {
        Err(400)
    };
    let (status, extra, body) = match answer {
        Err(429) => (
            429,
            "retry-after-ms: 30\r\n",
            json!({"error": {"message": "Slow down", "type": "rate_limit"}}),
        ),
        Err(status) => (
            status,
            "",
            json!({"error": {"message": format!("unexpected prompt {prompt:?}")}}),
        ),
        Ok((text, input, output)) => (
            200,
            "",
            json!({
                "id": "chatcmpl-phoenix", "object": "chat.completion", "created": 1,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output}
            }),
        ),
    };
    if let Ok(mut log) = seen.lock() {
        log.push(format!("{status} {model} {prompt:?}"));
    }
    let body = body.to_string();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

/// One run: a test program of the CLI, what it must emit, the requests the mock must see,
/// and the span tree Phoenix must hold for it.
struct Scenario {
    title: &'static str,
    /// Under `crates/concerto-cli/tests/programs`.
    program: &'static str,
    /// `concerto run --config` file, if any.
    config: Option<&'static str>,
    /// An emit the run must make: channel and payload.
    emit: (&'static str, fn() -> Value),
    /// The requests the mock must answer, in order (`<status> <model>`).
    requests: &'static [&'static str],
    tree: fn() -> Node,
}

impl Scenario {
    fn tree(&self) -> Node {
        (self.tree)()
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        title: "one agent call, rate-limited once then retried (fallback.conc)",
        program: "fallback.conc-ir",
        config: Some("[connections.openai]\nretry = { max_attempts = 2, backoff = \"none\" }\n"),
        emit: ("text", || json!("Teal")),
        requests: &["429 gpt-4o", "200 gpt-4o"],
        tree: writer_tree,
    },
    Scenario {
        title: "a two-stage pipeline, one agent call per stage (pipeline_calls.conc)",
        program: "pipeline_calls.head.conc-ir",
        config: None,
        emit: ("done", || json!(true)),
        requests: &["200 gpt-4o-mini", "200 gpt-4o-mini"],
        tree: pipeline_tree,
    },
];

/// An expected span: its name, the attribute that tells it from a sibling of the same name,
/// the span kind Phoenix gives it, the attributes it must hold (value and JSON type), those
/// it must not hold, and its children.
struct Node {
    name: String,
    key: Option<(&'static str, Value)>,
    kind: &'static str,
    attrs: Vec<(&'static str, Value)>,
    absent: Vec<&'static str>,
    children: Vec<Node>,
}

impl Node {
    fn new(name: impl Into<String>, kind: &'static str) -> Node {
        Node {
            name: name.into(),
            key: None,
            kind,
            attrs: Vec::new(),
            absent: Vec::new(),
            children: Vec::new(),
        }
    }

    fn key(mut self, name: &'static str, value: Value) -> Node {
        self.attrs.push((name, value.clone()));
        self.key = Some((name, value));
        self
    }

    fn attrs(mut self, attrs: &[(&'static str, Value)]) -> Node {
        self.attrs.extend_from_slice(attrs);
        self
    }

    fn absent(mut self, names: &[&'static str]) -> Node {
        self.absent.extend_from_slice(names);
        self
    }

    fn children(mut self, children: Vec<Node>) -> Node {
        self.children = children;
        self
    }

    /// The number of spans in this subtree.
    fn count(&self) -> usize {
        1 + self.children.iter().map(Node::count).sum::<usize>()
    }
}

/// The GenAI attributes of an agent call or request answered by `model` with these token
/// counts, and what Phoenix derives from them (OpenInference `llm.*`).
fn answered(model: &str, input: i64, output: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!(model)),
        ("gen_ai.response.model", json!(model)),
        ("gen_ai.usage.input_tokens", json!(input)),
        ("gen_ai.usage.output_tokens", json!(output)),
        ("gen_ai.response.finish_reasons", json!("stop")),
        ("llm.model_name", json!(model)),
        ("llm.provider", json!("openai")),
        ("llm.token_count.prompt", json!(input)),
        ("llm.token_count.completion", json!(output)),
        ("llm.token_count.total", json!(input + output)),
    ]
}

/// An agent call `agent` on `model`: the call, its request, the request's attempts.
fn agent_call(agent: &str, model: &str, usage: (i64, i64), line: i64) -> Node {
    Node::new(format!("invoke_agent {agent}"), "AGENT")
        .attrs(&[
            ("gen_ai.operation.name", json!("invoke_agent")),
            ("gen_ai.agent.name", json!(agent)),
            ("concerto.agent", json!(agent)),
            ("concerto.connection", json!("openai")),
            ("concerto.requests", json!(1)),
            ("code.line.number", json!(line)),
        ])
        .attrs(&answered(model, usage.0, usage.1))
        .absent(&["error.type"])
        .children(vec![
            Node::new(format!("chat {model}"), "LLM")
                .key("concerto.round", json!(0))
                .attrs(&[("gen_ai.operation.name", json!("chat"))])
                .attrs(&answered(model, usage.0, usage.1))
                .absent(&["error.type"]),
        ])
}

/// The attempt `n` of a request on `model`, as the connection layer records it.
fn attempt(model: &str, n: i64) -> Node {
    Node::new(format!("chat {model}"), "LLM")
        .key("concerto.attempt", json!(n))
        .attrs(&[
            ("gen_ai.operation.name", json!("chat")),
            ("gen_ai.provider.name", json!("openai")),
            ("gen_ai.request.model", json!(model)),
            ("concerto.connection", json!("openai")),
            ("concerto.fallback", json!(0)),
            ("llm.model_name", json!(model)),
        ])
}

/// `fallback.conc` with a 429 then a 200: run → invoke_agent Writer → chat gpt-4o (the
/// request) → two attempts, the first refused.
fn writer_tree() -> Node {
    let mut call = agent_call("Writer", "gpt-4o", (8, 3), 10);
    let request = &mut call.children[0];
    request.attrs.push(("concerto.attempts", json!(2)));
    request.children = vec![
        attempt("gpt-4o", 1).attrs(&[
            ("error.type", json!("429")),
            ("http.response.status_code", json!(429)),
        ]),
        attempt("gpt-4o", 2).absent(&["error.type", "http.response.status_code"]),
    ];
    Node::new("run", "UNKNOWN").children(vec![call])
}

/// `pipeline_calls.conc`: run → pipeline Newsletter → stage draft, stage edit → one agent
/// call each → its request → one attempt.
fn pipeline_tree() -> Node {
    let stage = |name: &'static str, agent: &'static str, usage: (i64, i64), line: i64| {
        let mut call = agent_call(agent, "gpt-4o-mini", usage, line);
        call.children[0].children = vec![attempt("gpt-4o-mini", 1).absent(&["error.type"])];
        Node::new(format!("stage {name}"), "UNKNOWN")
            .attrs(&[
                ("concerto.stage", json!(name)),
                ("concerto.pipeline", json!("Newsletter")),
                ("concerto.attempt", json!(1)),
            ])
            .children(vec![call])
    };
    Node::new("run", "UNKNOWN").children(vec![
        Node::new("pipeline Newsletter", "UNKNOWN")
            .attrs(&[
                ("concerto.pipeline", json!("Newsletter")),
                ("concerto.stages", json!(2)),
            ])
            .children(vec![
                stage("draft", "Drafter", (21, 5), 15),
                stage("edit", "Editor", (13, 4), 22),
            ]),
    ])
}

/// Runs a scenario's program with `--otlp` to Phoenix, its connection at the mock.
fn run_program(
    concerto: &Path,
    dir: &Path,
    scenario: &Scenario,
    llm: &MockLlm,
    phoenix: &Phoenix,
) -> Result<()> {
    let source = crate::root()
        .join("crates/concerto-cli/tests/programs")
        .join(scenario.program);
    let mut ir: Value = serde_json::from_str(
        &std::fs::read_to_string(&source)
            .with_context(|| format!("cannot read {}", source.display()))?,
    )
    .with_context(|| format!("{} is not JSON", source.display()))?;
    ir["connections"][0]["config"]["base_url"] = json!(llm.url);
    let program = dir.join(scenario.program);
    std::fs::write(&program, ir.to_string())?;
    let mut cmd = Command::new(concerto);
    cmd.args(["run", "--emit-format", "jsonl", "--allow-net", "127.0.0.1"]);
    if let Some(config) = scenario.config {
        let path = dir.join("runtime.toml");
        std::fs::write(&path, config)?;
        cmd.arg("--config").arg(path);
    }
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            cmd.env_remove(name);
        }
    }
    let output = cmd
        .args(["--otlp", &phoenix.url()])
        .arg(&program)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={PROJECT}"),
        )
        .env("OPENAI_API_KEY", "sk-phoenix-check")
        .output()
        .with_context(|| format!("cannot run {}", concerto.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "`concerto run` of {} failed ({}): {stdout}{stderr}",
            scenario.program,
            output.status
        );
    }
    if stderr.contains("warning: OTLP") {
        bail!(
            "`concerto run` of {} could not export its spans to Phoenix: {stderr}",
            scenario.program
        );
    }
    let (channel, payload) = (scenario.emit.0, (scenario.emit.1)());
    let emitted = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|e| e["channel"] == channel && e["payload"] == payload);
    if !emitted {
        bail!(
            "`concerto run` of {} did not emit {channel} = {payload}: {stdout}{stderr}",
            scenario.program
        );
    }
    let requests = llm.take();
    let seen: Vec<String> = requests
        .iter()
        .map(|r| r.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    if seen != scenario.requests {
        bail!(
            "the mock LLM saw {requests:?} for {}, expected {:?}",
            scenario.program,
            scenario.requests
        );
    }
    println!(
        "phoenix: ran {} with --otlp {}: {} requests to the mock LLM",
        scenario.program,
        phoenix.url(),
        requests.len()
    );
    Ok(())
}

fn trace_id(span: &Value) -> &str {
    span["context"]["trace_id"].as_str().unwrap_or("")
}

fn span_id(span: &Value) -> &str {
    span["context"]["span_id"].as_str().unwrap_or("")
}

fn name(span: &Value) -> &str {
    span["name"].as_str().unwrap_or("")
}

/// Microseconds since the epoch of one of Phoenix's ISO 8601 times
/// (`2026-12-07T20:31:09.051490+00:00`, UTC).
fn micros(time: &Value) -> Option<i64> {
    let text = time.as_str()?;
    let (date, rest) = text.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let clock = rest.trim_end_matches('Z');
    let clock = clock.strip_suffix("+00:00").unwrap_or(clock);
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    let us: i64 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) * 1_000_000) + us)
}

/// The spans as a tree by parent ids, one trace after another (for failure messages).
fn dump(spans: &[Value]) -> String {
    fn walk(spans: &[Value], parent: &Value, depth: usize, out: &mut String) {
        let mut children: Vec<&Value> =
            spans.iter().filter(|s| s["parent_id"] == *parent).collect();
        children.sort_by_key(|s| micros(&s["start_time"]));
        for span in children {
            out.push_str(&format!(
                "{}{} [{}] {}\n",
                "  ".repeat(depth + 1),
                name(span),
                span["span_kind"].as_str().unwrap_or("?"),
                span["attributes"]
            ));
            walk(spans, &json!(span_id(span)), depth + 1, out);
        }
    }
    let mut out = String::new();
    let ids: std::collections::BTreeSet<&str> = spans.iter().map(span_id).collect();
    for span in spans {
        let orphan = span["parent_id"].as_str().is_some_and(|p| !ids.contains(p));
        if span["parent_id"].is_null() || orphan {
            out.push_str(&format!(
                "trace {}{}:\n",
                trace_id(span),
                if orphan { " (parent not stored)" } else { "" }
            ));
            out.push_str(&format!(
                "  {} [{}] {}\n",
                name(span),
                span["span_kind"].as_str().unwrap_or("?"),
                span["attributes"]
            ));
            walk(spans, &json!(span_id(span)), 1, &mut out);
        }
    }
    out
}

/// What was checked of one trace: its root span id, the spans and attributes checked.
struct Checked {
    root: String,
    spans: usize,
    attributes: usize,
    tokens: i64,
}

/// Finds the trace of `scenario` (the one whose root has the scenario's first child) and
/// checks it against the expected tree; prints the tree as Phoenix stored it.
fn check_scenario(scenario: &Scenario, spans: &[Value]) -> Result<Checked> {
    let tree = scenario.tree();
    let marker = tree.children.first().map_or("", |c| c.name.as_str());
    let trace = spans
        .iter()
        .find(|s| name(s) == marker)
        .map(trace_id)
        .with_context(|| {
            format!(
                "Phoenix holds no span `{marker}` ({}):\n{}",
                scenario.title,
                dump(spans)
            )
        })?;
    let mine: Vec<Value> = spans
        .iter()
        .filter(|s| trace_id(s) == trace)
        .cloned()
        .collect();
    let fail = |what: String| {
        anyhow!(
            "{} ({}): {what}\n{}",
            scenario.program,
            scenario.title,
            dump(&mine)
        )
    };
    let roots: Vec<&Value> = mine.iter().filter(|s| s["parent_id"].is_null()).collect();
    if roots.len() != 1 || name(roots[0]) != tree.name {
        return Err(fail(format!(
            "expected one root span `{}` in trace {trace}, found {:?}",
            tree.name,
            roots.iter().map(|s| name(s)).collect::<Vec<_>>()
        )));
    }
    if mine.len() != tree.count() {
        return Err(fail(format!(
            "trace {trace} holds {} spans, expected {}",
            mine.len(),
            tree.count()
        )));
    }
    println!("\n{}: trace {trace}, {} spans", scenario.title, mine.len());
    let mut checked = Checked {
        root: span_id(roots[0]).to_string(),
        spans: 0,
        attributes: 0,
        tokens: 0,
    };
    check_node(&tree, roots[0], None, &mine, 0, &mut checked)
        .map_err(|e| fail(format!("{e:#}")))?;
    Ok(checked)
}

/// Checks one span against its expectation, then its children (matched by name and key
/// attribute), and prints it with the attributes checked.
fn check_node(
    node: &Node,
    span: &Value,
    parent: Option<&Value>,
    trace: &[Value],
    depth: usize,
    checked: &mut Checked,
) -> Result<()> {
    let what = format!("span `{}` ({})", node.name, span_id(span));
    let attrs = &span["attributes"];
    let kind = span["span_kind"].as_str().unwrap_or("");
    if kind != node.kind {
        bail!(
            "{what}: Phoenix gives it the span kind {kind:?}, expected {:?}",
            node.kind
        );
    }
    for (key, want) in &node.attrs {
        let got = &attrs[*key];
        // Equal as JSON, which tells 8 from "8" and 8 from 8.0.
        if got != want {
            let got = if got.is_null() {
                "missing".to_string()
            } else {
                got.to_string()
            };
            bail!(
                "{what}: attribute {key} is {got}, expected {want}\n  all its attributes: {attrs}"
            );
        }
    }
    for key in &node.absent {
        if !attrs[*key].is_null() {
            bail!("{what}: attribute {key} = {} was not expected", attrs[*key]);
        }
    }
    if let Some(parent) = parent {
        let (start, end) = (micros(&span["start_time"]), micros(&span["end_time"]));
        let (p_start, p_end) = (micros(&parent["start_time"]), micros(&parent["end_time"]));
        let (Some(start), Some(end), Some(p_start), Some(p_end)) = (start, end, p_start, p_end)
        else {
            bail!("{what}: times Phoenix gives are not ISO 8601: {span}");
        };
        if start > end || start + CLOCK_SLACK_US < p_start || end > p_end + CLOCK_SLACK_US {
            bail!(
                "{what}: from {} to {} is not within its parent `{}` ({} to {})",
                span["start_time"],
                span["end_time"],
                name(parent),
                parent["start_time"],
                parent["end_time"]
            );
        }
    }
    if node.kind == "LLM" {
        checked.tokens += attrs["llm.token_count.total"].as_i64().unwrap_or(0);
    }
    checked.spans += 1;
    checked.attributes += node.attrs.len() + node.absent.len();
    let shown: Vec<String> = node
        .attrs
        .iter()
        .filter(|(k, _)| !k.starts_with("llm."))
        .map(|(k, _)| format!("{k}={}", attrs[*k]))
        .collect();
    let derived: Vec<String> = node
        .attrs
        .iter()
        .filter(|(k, _)| k.starts_with("llm."))
        .map(|(k, _)| format!("{k}={}", attrs[*k]))
        .collect();
    println!(
        "  {}{} [{kind}] {}{}",
        "  ".repeat(depth),
        node.name,
        shown.join(" "),
        if derived.is_empty() {
            String::new()
        } else {
            format!(" | Phoenix: {}", derived.join(" "))
        }
    );
    let mut children: Vec<&Value> = trace
        .iter()
        .filter(|s| s["parent_id"].as_str() == Some(span_id(span)))
        .collect();
    children.sort_by_key(|s| micros(&s["start_time"]));
    if children.len() != node.children.len() {
        bail!(
            "{what}: {} children {:?}, expected {:?}",
            children.len(),
            children.iter().map(|s| name(s)).collect::<Vec<_>>(),
            node.children.iter().map(|c| &c.name).collect::<Vec<_>>()
        );
    }
    let mut previous_end = None;
    for child in &node.children {
        let found: Vec<&&Value> = children
            .iter()
            .filter(|s| name(s) == child.name)
            .filter(|s| {
                child
                    .key
                    .as_ref()
                    .is_none_or(|(k, v)| s["attributes"][*k] == *v)
            })
            .collect();
        let [one] = found.as_slice() else {
            bail!(
                "{what}: {} children `{}`{}, expected one",
                found.len(),
                child.name,
                child
                    .key
                    .as_ref()
                    .map_or(String::new(), |(k, v)| format!(" with {k} = {v}"))
            );
        };
        // Siblings in the expected order ran one after the other (stages, attempts).
        if let (Some(prev), Some(start)) = (previous_end, micros(&one["start_time"]))
            && start + CLOCK_SLACK_US < prev
        {
            bail!(
                "{what}: child `{}` started before its previous sibling ended",
                child.name
            );
        }
        previous_end = micros(&one["end_time"]);
        check_node(child, one, Some(span), trace, depth + 1, checked)?;
    }
    Ok(())
}

/// Through Phoenix's GraphQL API (what its UI shows): the project's trace count, and the
/// token counts Phoenix sums up each run's tree. Prints its project totals and error
/// statuses as notes (they show how Phoenix reads the spans; they are not checked).
fn check_graphql(phoenix: &Phoenix, spans: &[Value], traces: &[Checked]) -> Result<()> {
    let data = phoenix.graphql(
        "{ projects { edges { node { name traceCount tokenCountTotal \
         costSummary { total { cost } } \
         spans(first: 1000) { edges { node { spanId name spanKind statusCode \
         cumulativeTokenCountTotal } } } } } } }",
    )?;
    let project = data["projects"]["edges"]
        .as_array()
        .and_then(|edges| edges.iter().find(|e| e["node"]["name"] == PROJECT))
        .map(|e| &e["node"])
        .with_context(|| format!("GraphQL lists no project `{PROJECT}`: {data}"))?;
    let trace_count = project["traceCount"].as_i64().unwrap_or(-1);
    if trace_count != traces.len() as i64 {
        bail!(
            "GraphQL: project `{PROJECT}` has traceCount {trace_count}, expected {}",
            traces.len()
        );
    }
    let graph_spans = project["spans"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if graph_spans.len() != spans.len() {
        bail!(
            "GraphQL lists {} spans in project `{PROJECT}`, the REST API {}",
            graph_spans.len(),
            spans.len()
        );
    }
    println!(
        "\nGraphQL: project `{PROJECT}`: {trace_count} traces, {} spans",
        graph_spans.len()
    );
    for trace in traces {
        let root = graph_spans
            .iter()
            .map(|e| &e["node"])
            .find(|n| n["spanId"] == trace.root.as_str())
            .with_context(|| format!("GraphQL lists no root span {}", trace.root))?;
        let cumulative = root["cumulativeTokenCountTotal"].as_f64().unwrap_or(-1.0);
        if cumulative != trace.tokens as f64 {
            bail!(
                "GraphQL: the root span {} sums {cumulative} tokens over its tree, expected {} \
                 (the LLM spans' llm.token_count.total)",
                trace.root,
                trace.tokens
            );
        }
        println!(
            "  root {}: cumulativeTokenCountTotal {cumulative} ({} spans, {} attributes checked)",
            trace.root, trace.spans, trace.attributes
        );
    }
    // Notes: how Phoenix's project view reads these spans.
    let tokens: i64 = traces.iter().map(|t| t.tokens).sum();
    println!(
        "note: Phoenix's project totals: tokenCountTotal {} (the LLM spans hold {tokens}), \
         cost {:.8} USD (Phoenix's own price table; concerto.cost_usd on the requests sums to \
         {:.8})",
        project["tokenCountTotal"],
        project["costSummary"]["total"]["cost"]
            .as_f64()
            .unwrap_or(f64::NAN),
        spans
            .iter()
            .filter(|s| s["attributes"]["concerto.round"].is_i64())
            .filter_map(|s| s["attributes"]["concerto.cost_usd"].as_f64())
            .sum::<f64>()
    );
    // A span with `error.type` has the status ERROR (what Phoenix marks and filters on);
    // the others do not.
    let mut failed = 0;
    for s in spans {
        let status = graph_spans
            .iter()
            .map(|e| &e["node"])
            .find(|n| n["spanId"] == span_id(s))
            .map_or(Value::Null, |n| n["statusCode"].clone());
        let errs = !s["attributes"]["error.type"].is_null();
        if errs != (status == "ERROR") {
            bail!(
                "`{}` (error.type {}) has status {status} in Phoenix",
                name(s),
                s["attributes"]["error.type"]
            );
        }
        failed += usize::from(errs);
    }
    println!("  {failed} span(s) with error.type, each with status ERROR; no other span has it");
    Ok(())
}
