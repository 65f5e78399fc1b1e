//! Each resource limit of `RuntimeConfig` / `Limits` ends the program with its own clean
//! error (or applies back-pressure), and nothing emitted before is lost. Hashmap memory is in
//! `memory.rs`, agent calls in flight in `async.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concerto_runtime::vm::ErrorKind;
use concerto_runtime::{EmitMode, Limits, Runtime, RuntimeConfig, RuntimeError};
use parking_lot::Mutex;
use serde_json::json;

type Emits = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

fn run(name: &str, config: RuntimeConfig, limits: Limits) -> (Emits, Result<(), RuntimeError>) {
    let mut runtime = Runtime::builder()
        .config(config)
        .limits(limits)
        .build()
        .expect("builds");
    let emits: Emits = Arc::default();
    let sink = emits.clone();
    runtime.on_prefix("", move |c, p| {
        sink.lock().push((c.to_string(), p.to_json()))
    });
    runtime
        .load_ir(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("limits/{name}.conc-ir")))
        .expect("load");
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(runtime.execute())
        .map(|_| ());
    (emits, result)
}

fn kind(result: &Result<(), RuntimeError>) -> Option<ErrorKind> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.as_execution())
        .map(|e| e.kind())
}

#[test]
fn the_execution_timeout_stops_the_program_and_keeps_its_emits() {
    let config = RuntimeConfig {
        execution_timeout: Duration::from_millis(200),
        ..RuntimeConfig::default()
    };
    let (emits, result) = run("spin", config, Limits::default());
    assert_eq!(kind(&result), Some(ErrorKind::ExecutionTimeout));
    let message = result.expect_err("timed out").to_string();
    assert!(message.contains("timed out after 0.200 s"), "{message}");
    assert_eq!(
        emits.lock().clone(),
        vec![("started".to_string(), json!(1))]
    );
}

#[test]
fn the_call_depth_limit_stops_runaway_recursion_and_keeps_its_emits() {
    let (emits, result) = run(
        "deep",
        RuntimeConfig::default(),
        Limits::default().with_max_call_depth(50),
    );
    assert_eq!(kind(&result), Some(ErrorKind::CallDepth));
    let message = result.expect_err("too deep").to_string();
    assert!(message.contains("50"), "{message}");
    assert!(message.contains("down"), "{message}");
    assert_eq!(
        emits.lock().clone(),
        vec![("started".to_string(), json!(1))]
    );
}

#[test]
fn a_bounded_batch_queue_delivers_every_emit_in_order() {
    let config = RuntimeConfig {
        emit_mode: EmitMode::Batch { max_batch: 0 },
        ..RuntimeConfig::default()
    };
    let (emits, result) = run(
        "many_emits",
        config,
        Limits::default().with_max_emit_queue(Some(16)),
    );
    assert!(result.is_ok(), "{result:?}");
    let values: Vec<serde_json::Value> = emits.lock().iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(values, (0..1000).map(|i| json!(i)).collect::<Vec<_>>());
}

#[test]
fn the_step_budget_stops_a_program_at_the_same_place_every_time() {
    let budget = |steps: u64| {
        let (emits, result) = run(
            "counted",
            RuntimeConfig::default(),
            Limits::default().with_max_steps(Some(steps)),
        );
        (emits.lock().clone(), result)
    };
    // A loop iteration is one step: 5500 steps get through 5000 iterations, not 6000.
    let (first, result) = budget(5500);
    assert_eq!(kind(&result), Some(ErrorKind::StepLimit));
    let message = result.expect_err("out of steps").to_string();
    assert!(message.contains("ran out of steps (5500"), "{message}");
    let reached: Vec<i64> = first.iter().filter_map(|(_, p)| p.as_i64()).collect();
    assert_eq!(reached, vec![1000, 2000, 3000, 4000, 5000]);
    // Deterministic: the same budget stops at the same emit.
    let (second, _) = budget(5500);
    assert_eq!(first, second);
    // Enough steps: the program finishes.
    let (done, result) = budget(200_000);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        done.last().cloned(),
        Some(("done".to_string(), json!(100000)))
    );
}

#[test]
fn a_step_budget_ends_an_endless_loop_without_a_timeout() {
    let started = std::time::Instant::now();
    let (emits, result) = run(
        "spin",
        RuntimeConfig::default(),
        Limits::default().with_max_steps(Some(1_000_000)),
    );
    assert_eq!(kind(&result), Some(ErrorKind::StepLimit));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        emits.lock().clone(),
        vec![("started".to_string(), json!(1))]
    );
}

#[test]
fn debug_puts_the_call_trace_into_the_error_text() {
    let text = |debug: bool| {
        let config = RuntimeConfig {
            debug,
            ..RuntimeConfig::default()
        };
        let (_, result) = run("deep", config, Limits::default().with_max_call_depth(5));
        result.expect_err("too deep").to_string()
    };
    let plain = text(false);
    assert!(!plain.contains("called from"), "{plain}");
    let detailed = text(true);
    assert!(detailed.starts_with(&plain), "{detailed}");
    assert!(detailed.contains("\n  called from `down`"), "{detailed}");
    assert!(detailed.contains("called from `main`"), "{detailed}");
}
