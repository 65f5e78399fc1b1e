//! Spawned tasks, parallel await, race and timeouts with IR written by hand: the task bodies
//! come from `tests/async/tasks.conc` (compiled by concertoc), `main` is assembled here,
//! since concertoc 1a8ede9 emits no SPAWN_ASYNC, AWAIT_ALL or race.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concerto_runtime::Runtime;
use concerto_runtime::vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program, Usage,
};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// Answers `done:<prompt>` after a delay that depends on the prompt; counts requests in
/// flight, their peak, and requests dropped before they were answered (cancelled).
#[derive(Default)]
struct Delayed {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    cancelled: AtomicUsize,
    answered: Mutex<Vec<String>>,
}

struct Flight<'a> {
    conn: &'a Delayed,
    finished: bool,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.conn.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Delayed {
    fn chat(self: Arc<Self>, request: ChatRequest) -> BoxFuture<Result<ChatResponse, HostError>> {
        let prompt = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let delay = match prompt.as_str() {
            "a" => 120,
            "b" => 20,
            "c" => 60,
            _ => 5_000,
        };
        Box::pin(async move {
            let conn = &*self;
            let now = conn.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            conn.peak.fetch_max(now, Ordering::SeqCst);
            let mut flight = Flight {
                conn,
                finished: false,
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            flight.finished = true;
            drop(flight);
            conn.answered.lock().push(prompt.clone());
            Ok(ChatResponse::text(
                format!("done:{prompt}"),
                "test-model",
                Usage {
                    input_tokens: 3,
                    cached_tokens: 0,
                    output_tokens: 2,
                    estimated: false,
                },
            ))
        })
    }
}

struct Shared(Arc<Delayed>);

impl Connections for Shared {
    fn chat(
        &self,
        _: &Arc<Program>,
        _: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        self.0.clone().chat(request)
    }
}

fn connection() -> Arc<Delayed> {
    Arc::default()
}

/// `tasks.conc-ir` with `main` replaced by `code`; `{"const": v}` operands become constant
/// indices.
fn program(code: &[Json]) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("async/tasks.conc-ir");
    let mut ir: Json = serde_json::from_slice(&std::fs::read(path).expect("ir")).expect("json");
    let mut instructions = Vec::new();
    for ins in code {
        let mut ins = ins.clone();
        if let Some(value) = ins.get("const").cloned() {
            let constants = ir["constants"].as_array_mut().expect("constants");
            let ty = match &value {
                Json::String(_) => "string",
                Json::Number(n) if n.is_i64() => "int",
                Json::Null => "nil",
                other => panic!("constant {other}"),
            };
            let index = constants.len();
            constants.push(json!({"index": index, "type": ty, "value": value}));
            ins = json!({"op": "LOAD_CONST", "arg": index});
        }
        instructions.push(ins);
    }
    let functions = ir["functions"].as_array_mut().expect("functions");
    let main = functions
        .iter_mut()
        .find(|f| f["name"] == "main")
        .expect("main");
    main["instructions"] = Json::Array(instructions);
    serde_json::to_vec(&ir).expect("bytes")
}

fn k(v: Json) -> Json {
    json!({ "const": v })
}

fn op(name: &str) -> Json {
    json!({ "op": name })
}

/// `emit(channel, <value on the stack>)`: the stack holds the value; pushes nothing.
fn emit_top(channel: &str) -> Vec<Json> {
    vec![
        json!({"op": "STORE_LOCAL", "name": "$tmp"}),
        k(json!(channel)),
        json!({"op": "LOAD_LOCAL", "name": "$tmp"}),
        op("EMIT"),
    ]
}

fn spawn(func: &str) -> Vec<Json> {
    vec![k(json!(func)), op("SPAWN_ASYNC")]
}

fn finish() -> Vec<Json> {
    vec![k(Json::Null), op("RETURN")]
}

struct Outcome {
    emits: Vec<(String, Json)>,
    error: Option<String>,
    runtime: Runtime,
}

fn run(code: Vec<Vec<Json>>, conn: &Arc<Delayed>) -> Outcome {
    let builder = Runtime::builder().connections(Arc::new(Shared(conn.clone())));
    execute(builder, &code, None)
}

/// Builds a runtime from `builder`, runs `code` as `main` (journaled as run `run_id` when
/// given) and collects its emits.
fn execute(
    builder: concerto_runtime::RuntimeBuilder,
    code: &[Vec<Json>],
    run_id: Option<&str>,
) -> Outcome {
    let code: Vec<Json> = code.iter().flatten().cloned().collect();
    let mut runtime = builder.build().expect("builds");
    let emits = Arc::new(Mutex::new(Vec::new()));
    let sink = emits.clone();
    runtime.on_prefix("", move |channel, payload| {
        sink.lock().push((channel.to_string(), payload.to_json()))
    });
    runtime.load_ir_bytes(&program(&code)).expect("load");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let outcome = match run_id {
        Some(run) => tokio.block_on(runtime.execute_run(run)),
        None => tokio.block_on(runtime.execute()),
    };
    let error = outcome.err().map(|e| e.to_string());
    let emits = emits.lock().clone();
    Outcome {
        emits,
        error,
        runtime,
    }
}

fn payload(out: &Outcome, channel: &str) -> Json {
    out.emits
        .iter()
        .find(|(c, _)| c == channel)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("no emit on {channel}: {:?} / {:?}", out.emits, out.error))
}

#[test]
fn await_all_runs_tasks_concurrently_and_keeps_input_order() {
    let conn = connection();
    let out = run(
        vec![
            spawn("task_a"),
            spawn("task_b"),
            spawn("task_c"),
            vec![json!({"op": "AWAIT_ALL", "count": 3})],
            emit_top("all"),
            finish(),
        ],
        &conn,
    );
    assert_eq!(out.error, None);
    assert_eq!(payload(&out, "all"), json!(["done:a", "done:b", "done:c"]));
    // All three were in flight together; they finished fastest first.
    assert_eq!(conn.peak.load(Ordering::SeqCst), 3);
    let finished: Vec<Json> = out
        .emits
        .iter()
        .filter(|(c, _)| c == "finished")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(finished, [json!("b"), json!("c"), json!("a")]);
    // The tasks' agent calls count in the execution's metrics.
    let metrics = out.runtime.metrics();
    assert_eq!(metrics.agent_calls, 3);
    assert_eq!(metrics.total_tokens(), 15);
    assert_eq!(metrics.emit_count, 4);
}

#[test]
fn await_on_an_array_of_tasks_is_a_parallel_for() {
    let conn = connection();
    let out = run(
        vec![
            spawn("task_c"),
            spawn("task_a"),
            spawn("task_b"),
            vec![json!({"op": "BUILD_ARRAY", "count": 3}), op("AWAIT")],
            emit_top("results"),
            finish(),
        ],
        &conn,
    );
    assert_eq!(out.error, None);
    assert_eq!(
        payload(&out, "results"),
        json!(["done:c", "done:a", "done:b"])
    );
    assert_eq!(conn.peak.load(Ordering::SeqCst), 3);
}

#[test]
fn a_race_returns_the_first_result_and_cancels_the_others() {
    let conn = connection();
    let out = run(
        vec![
            spawn("task_slow"),
            spawn("task_b"),
            vec![json!({"op": "AWAIT_ANY", "count": 2})],
            emit_top("winner"),
            finish(),
        ],
        &conn,
    );
    assert_eq!(out.error, None);
    assert_eq!(payload(&out, "winner"), json!("done:b"));
    assert_eq!(
        conn.cancelled.load(Ordering::SeqCst),
        1,
        "the slow call was dropped"
    );
    assert!(!conn.answered.lock().contains(&"slow".to_string()));
    assert!(out.emits.iter().all(|(_, p)| p != &json!("slow")));
}

/// `try { <body> } catch RuntimeError(e) { e.kind }`, result emitted on `channel`.
fn try_kind(body: Vec<Json>, channel: &str) -> Vec<Json> {
    let mut code = vec![json!({"op": "TRY_BEGIN", "offset": body.len() + 3})];
    code.extend(body);
    code.push(op("TRY_END"));
    code.push(json!({"op": "JUMP", "offset": "END"}));
    code.push(json!({"op": "CATCH", "type_name": "RuntimeError"}));
    code.push(json!({"op": "STORE_LOCAL", "name": "e"}));
    code.push(json!({"op": "LOAD_LOCAL", "name": "e"}));
    code.push(json!({"op": "FIELD_GET", "name": "kind"}));
    let end = code.len();
    for ins in &mut code {
        if ins["offset"] == "END" {
            ins["offset"] = json!(end);
        }
    }
    code.extend(emit_top(channel));
    code
}

#[test]
fn a_timeout_cancels_the_task_and_raises_a_catchable_error() {
    let conn = connection();
    let out = run(
        vec![
            try_kind(
                vec![
                    k(json!("task_slow")),
                    op("SPAWN_ASYNC"),
                    json!({"op": "AWAIT", "arg": 50}),
                ],
                "outcome",
            ),
            finish(),
        ],
        &conn,
    );
    assert_eq!(out.error, None);
    assert_eq!(payload(&out, "outcome"), json!("timeout"));
    assert_eq!(conn.cancelled.load(Ordering::SeqCst), 1);
}

#[test]
fn an_error_in_one_task_is_raised_at_the_await_and_cancels_the_rest() {
    let conn = connection();
    let out = run(
        vec![
            try_kind(
                vec![
                    k(json!("task_slow")),
                    op("SPAWN_ASYNC"),
                    k(json!("task_fails")),
                    op("SPAWN_ASYNC"),
                    json!({"op": "AWAIT_ALL", "count": 2}),
                ],
                "outcome",
            ),
            finish(),
        ],
        &conn,
    );
    assert_eq!(out.error, None);
    assert_eq!(payload(&out, "outcome"), json!("index"));
    assert_eq!(conn.cancelled.load(Ordering::SeqCst), 1);
}

#[test]
fn spawning_something_that_is_not_a_function_is_a_clear_error() {
    let conn = connection();
    let out = run(vec![vec![k(json!(42)), op("SPAWN_ASYNC")], finish()], &conn);
    let error = out.error.expect("an error");
    assert!(
        error.contains("SPAWN_ASYNC expects a function, got Int"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Concurrent executions of one program on one runtime

fn one_call_runtime(conn: &Arc<Delayed>, limits: concerto_runtime::Limits) -> Runtime {
    let mut runtime = Runtime::builder()
        .limits(limits)
        .connections(Arc::new(Shared(conn.clone())))
        .build()
        .expect("builds");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("async/one_call.conc-ir");
    runtime.load_ir(path).expect("load");
    runtime
}

fn run_many(runtime: &mut Runtime, n: usize) -> concerto_runtime::Metrics {
    let executor = runtime.executor().expect("executor");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let executor = executor.clone();
                tokio::spawn(async move { executor.execute_with_metrics().await })
            })
            .collect();
        for handle in handles {
            let (result, metrics) = handle.await.expect("join");
            assert_eq!(result.expect("execution").to_json(), json!(null));
            // Each execution's own counters: exactly its one call.
            assert_eq!(metrics.agent_calls, 1);
            assert_eq!(metrics.emit_count, 1);
        }
    });
    executor.metrics()
}

#[test]
fn one_runtime_runs_many_executions_at_once_with_exact_metrics() {
    let conn = connection();
    let mut runtime = one_call_runtime(&conn, concerto_runtime::Limits::default());
    let totals = run_many(&mut runtime, 200);
    assert_eq!(totals.agent_calls, 200);
    assert_eq!(totals.emit_count, 200);
    assert_eq!(totals.total_tokens(), 1000);
    assert_eq!(totals.tokens_by_agent("Worker"), 1000);
    assert_eq!(totals.tokens_by_connection("llm"), 1000);
    assert!(
        conn.peak.load(Ordering::SeqCst) > 50,
        "executions overlap: peak {}",
        conn.peak.load(Ordering::SeqCst)
    );
}

#[test]
fn max_concurrent_agent_calls_bounds_calls_in_flight_across_executions() {
    let conn = connection();
    let limits = concerto_runtime::Limits::default().with_max_concurrent_agent_calls(Some(10));
    let mut runtime = one_call_runtime(&conn, limits);
    let totals = run_many(&mut runtime, 100);
    assert_eq!(totals.agent_calls, 100);
    assert_eq!(conn.peak.load(Ordering::SeqCst), 10);
}

/// Answers `done:<prompt>` after a delay given per prompt, or fails for one prompt; keeps
/// the prompts it was asked.
struct Ordered {
    delays: Vec<(&'static str, u64)>,
    fail: Option<&'static str>,
    asked: Mutex<Vec<String>>,
}

impl Connections for Ordered {
    fn chat(
        &self,
        _: &Arc<Program>,
        _: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let prompt = request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        self.asked.lock().push(prompt.clone());
        let delay = self
            .delays
            .iter()
            .find(|(p, _)| *p == prompt)
            .map_or(10, |(_, ms)| *ms);
        let fails = self.fail == Some(prompt.as_str());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if fails {
                return Err(HostError::failed(format!(
                    "{prompt}: the provider went away"
                )));
            }
            Ok(ChatResponse::text(
                format!("done:{prompt}"),
                "test-model",
                Usage::default(),
            ))
        })
    }
}

/// Runs `code` journaled as run `run` in the SQLite file `db` against `conn`.
fn run_journaled(code: &[Vec<Json>], conn: Arc<Ordered>, db: &Path, run: &str) -> Outcome {
    let builder = Runtime::builder()
        .connections(conn)
        .state_store(concerto_runtime::StateStore::Sqlite(db.to_path_buf()));
    execute(builder, code, Some(run))
}

/// Three spawned tasks each make an agent call; the first run ends when one call fails,
/// after the other two completed. Resumed with the tasks finishing in the opposite order,
/// each task's effects are found by its path (not by the order calls complete in): only the
/// failed call is asked again, the others' results and emits come from the journal.
#[test]
fn a_resumed_run_replays_each_task_by_its_path_whatever_order_they_finish_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("state.db");
    let code = vec![
        spawn("task_a"),
        spawn("task_b"),
        spawn("task_c"),
        vec![json!({"op": "AWAIT_ALL", "count": 3})],
        emit_top("all"),
        finish(),
    ];
    let first = Arc::new(Ordered {
        delays: vec![("a", 10), ("b", 40), ("c", 150)],
        fail: Some("c"),
        asked: Mutex::default(),
    });
    let out = run_journaled(&code, first.clone(), &db, "tasks");
    assert!(
        out.error
            .as_deref()
            .unwrap_or_default()
            .contains("c: the provider went away")
    );
    let finished = |out: &Outcome| -> Vec<Json> {
        out.emits
            .iter()
            .filter(|(c, _)| c == "finished")
            .map(|(_, p)| p.clone())
            .collect()
    };
    assert_eq!(finished(&out), [json!("a"), json!("b")]);

    let second = Arc::new(Ordered {
        delays: vec![("a", 150), ("b", 40), ("c", 10)],
        fail: None,
        asked: Mutex::default(),
    });
    let out = run_journaled(&code, second.clone(), &db, "tasks");
    assert_eq!(out.error, None);
    assert_eq!(*second.asked.lock(), ["c"], "asked again");
    assert_eq!(payload(&out, "all"), json!(["done:a", "done:b", "done:c"]));
    // a's and b's emits were delivered by the first run.
    assert_eq!(finished(&out), [json!("c")]);
    assert!(out.runtime.replayed_operations() >= 4);
}
