//! Fencing of leased runs (`Runtime::execute_leased_run`, issue 18) on a real SQLite file and
//! a real `redis-server`: holder A runs `tests/queue/chaos.conc` (concertoc 7ad10db) at lease
//! epoch 1 and is held inside its first agent call; holder B takes the run over at epoch 2
//! and finishes it; then A's call returns. A must write nothing more — its journal row and
//! its hashmap write are refused by the store — and stop with a `cancelled` error naming the
//! fence, leaving B's results exact. A holder of an older epoch cannot even start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concerto_runtime::vm::ErrorKind;
use concerto_runtime::vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program, Usage,
};
use concerto_runtime::{ProcessSystem, Runtime, RuntimeError, Sandbox, StateStore, Value};
use tokio::sync::Notify;

use crate::stores::redis_server;

/// Answers `answer to: <prompt>`; while `held`, the first request waits for `release`.
#[derive(Default)]
struct Gate {
    held: bool,
    asked: parking_lot::Mutex<Vec<String>>,
    arrived: Notify,
    release: Notify,
}

struct Conn(Arc<Gate>);

impl Connections for Conn {
    fn chat(
        &self,
        _: &Arc<Program>,
        _: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let gate = self.0.clone();
        Box::pin(async move {
            let prompt = request
                .messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let first = {
                let mut asked = gate.asked.lock();
                asked.push(prompt.clone());
                asked.len() == 1
            };
            if gate.held && first {
                let released = gate.release.notified();
                gate.arrived.notify_one();
                released.await;
            }
            Ok(ChatResponse::text(
                format!("answer to: {prompt}"),
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

fn runtime(
    state: &StateStore,
    gate: Arc<Gate>,
    emits: Arc<parking_lot::Mutex<Vec<String>>>,
) -> Runtime {
    let mut runtime = Runtime::builder()
        .connections(Arc::new(Conn(gate)))
        .state_store(state.clone())
        .system(Arc::new(
            ProcessSystem::default().with_env([("RUN_N".to_string(), "7".to_string())]),
        ))
        .sandbox(Sandbox::default().allow_env("RUN_N"))
        .build()
        .expect("build");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("queue/chaos.head.conc-ir");
    runtime.load_ir(path).expect("load");
    runtime.on_prefix("", move |channel, payload| {
        emits.lock().push(format!("{channel} {payload}"));
    });
    runtime
}

fn a_holder_fenced_out_writes_nothing_more(state: StateStore) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let gate_a = Arc::new(Gate {
        held: true,
        ..Gate::default()
    });
    let emits_a = Arc::default();
    let mut a = runtime(&state, gate_a.clone(), Arc::clone(&emits_a));
    let arrived = gate_a.arrived.notified();
    let holder_a = tokio.spawn(async move {
        let result = a.execute_leased_run("r7", 1).await;
        (a, result)
    });
    tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), arrived)
            .await
            .expect("A reached its first agent call");
    });
    // B takes the run over (epoch 2) and finishes it: it performs the call A has in flight.
    let gate_b = Arc::new(Gate::default());
    let emits_b: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let mut b = runtime(&state, gate_b.clone(), emits_b.clone());
    tokio
        .block_on(b.execute_leased_run("r7", 2))
        .expect("B finishes the run");
    assert_eq!(
        emits_b.lock().last().map(String::as_str),
        Some("done 3"),
        "{:?}",
        emits_b.lock()
    );
    // A's call returns now: its journal row is refused, and it stops.
    gate_a.release.notify_one();
    let (mut a, result) = tokio.block_on(holder_a).unwrap();
    let err = match result {
        Err(RuntimeError::Execution(err)) => err,
        other => panic!("A should be fenced out, got {other:?}"),
    };
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.message().contains("lease epoch 1 was refused"), "{err}");
    assert!(err.message().contains("stands at 2"), "{err}");
    assert_eq!(*emits_a.lock(), vec!["start 7".to_string()]);
    // The store holds B's counts only; a third look at the run (epoch 3) replays B's journal
    // whole: no row of A's is in it.
    let gate_c = Arc::new(Gate::default());
    let emits_c: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let mut c = runtime(&state, gate_c.clone(), emits_c.clone());
    let value = tokio
        .block_on(c.execute_leased_run("r7", 3))
        .expect("replayed");
    assert_eq!(value, Value::Nil);
    assert!(gate_c.asked.lock().is_empty(), "{:?}", gate_c.asked.lock());
    assert!(emits_c.lock().is_empty(), "nothing delivered again");
    // A holder of an older epoch cannot start the run again.
    let again = tokio.block_on(a.execute_leased_run("r7", 2)).unwrap_err();
    assert!(again.to_string().contains("stands at 3"), "{again}");
    drop((a, b, c));
    tokio.shutdown_timeout(Duration::from_secs(5));
}

#[test]
fn a_holder_fenced_out_writes_nothing_more_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_holder_fenced_out_writes_nothing_more(StateStore::Sqlite(dir.path().join("state.db")));
}

#[test]
fn a_holder_fenced_out_writes_nothing_more_on_redis() {
    let server = redis_server::RedisServer::start();
    a_holder_fenced_out_writes_nothing_more(StateStore::Redis(server.url()));
}
