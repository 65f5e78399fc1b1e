//! Shared helpers for the workspace-level tests: running a fixture through the facade and
//! comparing emit streams the way the conformance corpus does (structural, type-strict,
//! object key order ignored).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test harness output"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use concerto_runtime::{Runtime, RuntimeBuilder, RuntimeConfig, RuntimeError};
use parking_lot::Mutex;
use serde_json::Value as Json;

/// Directory of the fixture cases.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases")
}

/// Every `.conc-ir` under `dir`, sorted.
pub fn ir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "conc-ir") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The outcome of running a program through the facade.
pub struct RunResult {
    /// `{"channel", "payload"}` per emit.
    pub emits: Vec<Json>,
    /// The uncaught error, if any.
    pub error: Option<RuntimeError>,
    /// Text written by `print`/`println` and `std::log`.
    pub printed: String,
}

/// Runs IR bytes through the facade with a recording listener.
pub fn run_ir_bytes(bytes: &[u8]) -> RunResult {
    run_ir_with(bytes, |b| b)
}

/// Runs IR bytes through the facade with a recording listener, on a runtime `configure` has
/// set up (components, settings).
pub fn run_ir_with(
    bytes: &[u8],
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> RunResult {
    run_loaded_with(|runtime| runtime.load_ir_bytes(bytes), configure, |_| {})
}

/// [`run_ir_with`], and `listen` registers the test's own listeners on the built runtime.
pub fn run_ir_listening(
    bytes: &[u8],
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    listen: impl FnOnce(&mut Runtime),
) -> RunResult {
    run_loaded_with(|runtime| runtime.load_ir_bytes(bytes), configure, listen)
}

/// Runs an IR file through the facade (so relative paths in it resolve against its folder)
/// with a recording listener, on a runtime `configure` has set up.
pub fn run_ir_path_with(
    path: &Path,
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
) -> RunResult {
    run_loaded_with(|runtime| runtime.load_ir(path), configure, |_| {})
}

fn run_loaded_with(
    load: impl FnOnce(&mut Runtime) -> Result<(), RuntimeError>,
    configure: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    listen: impl FnOnce(&mut Runtime),
) -> RunResult {
    let emits = Arc::new(Mutex::new(Vec::new()));
    let printed = Arc::new(Mutex::new(String::new()));
    let out = printed.clone();
    let writer: concerto_runtime::TextOut = Arc::new(move |t: &str| out.lock().push_str(t));
    let builder = configure(Runtime::builder()).system(Arc::new(
        concerto_runtime::ProcessSystem::with_output(writer.clone(), writer),
    ));
    let mut runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            return RunResult {
                emits: Vec::new(),
                error: Some(e),
                printed: String::new(),
            };
        }
    };
    let sink = emits.clone();
    runtime.on_prefix("", move |channel, payload| {
        let mut obj = serde_json::Map::new();
        obj.insert("channel".into(), Json::String(channel.to_string()));
        obj.insert("payload".into(), payload.to_json());
        sink.lock().push(Json::Object(obj));
    });
    listen(&mut runtime);
    let error = match load(&mut runtime) {
        Err(e) => Some(e),
        Ok(()) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(runtime.execute()).err()
        }
    };
    let emits = emits.lock().clone();
    let printed = printed.lock().clone();
    RunResult {
        emits,
        error,
        printed,
    }
}

/// Loads `bytes` and, when they load, runs them with nothing outside the process enabled,
/// quiet, under `timeout` and `limits`; returns whether they loaded. For the robustness sweep
/// and the fuzzer: whatever the bytes, this must return (or fail loudly), never panic.
pub fn exercise(
    bytes: &[u8],
    rt: &tokio::runtime::Runtime,
    timeout: std::time::Duration,
    limits: concerto_runtime::Limits,
) -> bool {
    let quiet: concerto_runtime::TextOut = Arc::new(|_: &str| {});
    let built = Runtime::builder()
        .config(RuntimeConfig {
            execution_timeout: timeout,
            ..RuntimeConfig::default()
        })
        .limits(limits)
        .system(Arc::new(concerto_runtime::ProcessSystem::with_output(
            quiet.clone(),
            quiet,
        )))
        .build();
    let Ok(mut runtime) = built else {
        panic!("a runtime with limits only must build: {:?}", built.err());
    };
    if runtime.load_ir_bytes(bytes).is_err() {
        return false;
    }
    let _ = rt.block_on(runtime.execute());
    true
}

/// What a case expects besides its emits (`NAME.meta.json`).
#[derive(Debug, Default)]
pub struct Meta {
    /// Whether the run must end with an uncaught error.
    pub expect_error: bool,
    /// Substrings the error message must contain.
    pub error_contains: Vec<String>,
    /// Payload keys whose values are not compared (timings).
    pub ignore_keys: Vec<String>,
    /// Substrings the printed output must contain.
    pub printed_contains: Vec<String>,
}

/// Reads `NAME.meta.json` next to an IR file, if present.
pub fn read_meta(ir: &Path) -> Result<Meta, String> {
    let path = sibling(ir, "meta.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Meta::default());
    };
    let json: Json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let strings = |key: &str| -> Vec<String> {
        json.get(key)
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Meta {
        expect_error: json.get("exit").and_then(Json::as_str) == Some("error"),
        error_contains: strings("error_contains"),
        ignore_keys: strings("ignore_keys"),
        printed_contains: strings("printed_contains"),
    })
}

/// `dir/NAME.<ext>` for `dir/NAME.conc-ir`. For the 7ad10db build of a program,
/// `dir/NAME.head.conc-ir`, it is `dir/NAME.head.<ext>` when that file exists (the dialects
/// mean different things there) and otherwise the shared `dir/NAME.<ext>`.
pub fn sibling(ir: &Path, ext: &str) -> PathBuf {
    let stem = ir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .trim_end_matches(".conc-ir");
    let own = ir.with_file_name(format!("{stem}.{ext}"));
    match stem.strip_suffix(".head") {
        Some(base) if !own.exists() => ir.with_file_name(format!("{base}.{ext}")),
        _ => own,
    }
}

/// For `dir/NAME.head.conc-ir`, the 1a8ede9 build `dir/NAME.conc-ir` of the same program
/// when there is one and the two are expected to mean the same (no `NAME.head.expected.jsonl`).
pub fn seed_twin(head_ir: &Path) -> Option<PathBuf> {
    let name = head_ir.file_name()?.to_str()?;
    let base = name.strip_suffix(".head.conc-ir")?;
    let seed = head_ir.with_file_name(format!("{base}.conc-ir"));
    let own_expected = head_ir.with_file_name(format!("{base}.head.expected.jsonl"));
    (seed.exists() && !own_expected.exists()).then_some(seed)
}

/// Reads an expected-emits file (one JSON object per line).
pub fn read_expected(path: &Path) -> Result<Vec<Json>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Structural, type-strict JSON equality (Int ≠ Float, key order ignored, floats within
/// 1e-9 relative), skipping `ignore` keys inside objects.
pub fn json_equal(a: &Json, b: &Json, ignore: &[String]) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            if x.is_f64() != y.is_f64() {
                return false;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) if x.is_f64() => {
                    p == q || (p - q).abs() <= 1e-9 * p.abs().max(q.abs())
                }
                _ => x == y,
            }
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q, ignore))
        }
        (Json::Object(x), Json::Object(y)) => {
            let keys = |o: &serde_json::Map<String, Json>| -> Vec<String> {
                let mut k: Vec<String> =
                    o.keys().filter(|k| !ignore.contains(k)).cloned().collect();
                k.sort();
                k
            };
            keys(x) == keys(y)
                && x.iter()
                    .filter(|(k, _)| !ignore.contains(k))
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w, ignore)))
        }
        _ => a == b,
    }
}

/// Compares emit streams; `Err` describes the first difference.
pub fn compare_emits(got: &[Json], expected: &[Json], ignore: &[String]) -> Result<(), String> {
    for (idx, (g, e)) in got.iter().zip(expected).enumerate() {
        if !json_equal(g, e, ignore) {
            return Err(format!("emit {idx}: expected {e}, got {g}"));
        }
    }
    if got.len() != expected.len() {
        return Err(format!(
            "expected {} emits, got {} (first extra or missing: {})",
            expected.len(),
            got.len(),
            got.get(expected.len())
                .or_else(|| expected.get(got.len()))
                .map_or(String::new(), Json::to_string)
        ));
    }
    Ok(())
}

/// Runs one fixture case and checks emits, exit and messages.
pub fn check_case(ir: &Path) -> Result<(), String> {
    let bytes = std::fs::read(ir).map_err(|e| format!("{}: {e}", ir.display()))?;
    let meta = read_meta(ir)?;
    let expected = read_expected(&sibling(ir, "expected.jsonl"))?;
    let result = run_ir_bytes(&bytes);
    compare_emits(&result.emits, &expected, &meta.ignore_keys)?;
    match (&result.error, meta.expect_error) {
        (None, true) => return Err("expected an uncaught error, the run succeeded".into()),
        (Some(e), false) => return Err(format!("unexpected error: {e}")),
        (Some(e), true) => {
            let text = e.to_string();
            for needle in &meta.error_contains {
                if !text.contains(needle.as_str()) {
                    return Err(format!("error `{text}` does not contain `{needle}`"));
                }
            }
        }
        (None, false) => {}
    }
    for needle in &meta.printed_contains {
        if !result.printed.contains(needle.as_str()) {
            return Err(format!(
                "printed output {:?} does not contain {needle:?}",
                result.printed
            ));
        }
    }
    Ok(())
}

/// A scripted in-process connection layer and helpers to read emits, shared by the tests
/// that run agent programs.
pub mod scripted {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use concerto_runtime::vm::host::{
        BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program,
        ToolCall, Usage,
    };
    use parking_lot::Mutex;
    use serde_json::Value as Json;

    use crate::RunResult;

    /// Answers requests from a script and records them.
    #[derive(Default)]
    pub struct Scripted {
        replies: Mutex<VecDeque<Result<ChatResponse, HostError>>>,
        requests: Mutex<Vec<(u32, ChatRequest)>>,
    }

    impl Scripted {
        pub fn new(replies: Vec<Result<ChatResponse, HostError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                replies: Mutex::new(replies.into()),
                requests: Mutex::new(Vec::new()),
            })
        }

        pub fn requests(&self) -> Vec<ChatRequest> {
            self.requests
                .lock()
                .iter()
                .map(|(_, r)| r.clone())
                .collect()
        }
    }

    impl Connections for Scripted {
        fn chat(
            &self,
            _: &Arc<Program>,
            connection: ConnectionId,
            request: ChatRequest,
        ) -> BoxFuture<Result<ChatResponse, HostError>> {
            self.requests.lock().push((connection.0, request));
            let reply =
                self.replies.lock().pop_front().unwrap_or_else(|| {
                    Err(HostError::failed("the test script has no more replies"))
                });
            Box::pin(async move { reply })
        }
    }

    pub fn text(t: &str) -> Result<ChatResponse, HostError> {
        let mut r = ChatResponse::text(
            t,
            "gpt-4o",
            Usage {
                input_tokens: 11,
                cached_tokens: 0,
                output_tokens: 5,
                estimated: false,
            },
        );
        r.provider = "openai".into();
        Ok(r)
    }

    pub fn tools(calls: &[(&str, &str, Json)]) -> Result<ChatResponse, HostError> {
        let mut r = ChatResponse::text("", "gpt-4o", Usage::default());
        r.tool_calls = calls
            .iter()
            .map(|(id, name, args)| ToolCall {
                id: (*id).into(),
                name: (*name).into(),
                arguments: args.clone(),
            })
            .collect();
        Ok(r)
    }

    /// The emits as `channel → payload`, in order.
    pub fn emits(result: &RunResult) -> Vec<(String, Json)> {
        if let Some(e) = &result.error {
            panic!("program failed: {e}");
        }
        result
            .emits
            .iter()
            .map(|e| {
                (
                    e["channel"].as_str().unwrap_or_default().to_string(),
                    e["payload"].clone(),
                )
            })
            .collect()
    }

    pub fn payload(emits: &[(String, Json)], channel: &str) -> Json {
        emits
            .iter()
            .find(|(c, _)| c == channel)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("no emit on {channel}: {emits:?}"))
    }
}
