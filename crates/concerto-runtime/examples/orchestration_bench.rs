//! The orchestration benchmark (`cargo xtask bench` runs it; or
//! `cargo run --release -p concerto-runtime --example orchestration_bench`): 1000 agent calls,
//! at most 100 in flight, against the built-in mock answering after 50 ms, so the ideal is
//! 10 waves x 50 ms = 0.5 s.
//!
//! - `executions`: 1000 concurrent executions of a one-call program on one runtime
//!   (`benches/orchestration/one_call.conc`), through an [`Executor`];
//! - `fan_out`: one program that spawns 1000 tasks and awaits them all
//!   (`benches/orchestration/fan_out.conc`, `main` assembled here: concertoc 1a8ede9 has no
//!   spawn).
//!
//! Prints one JSON line per case with the median wall time of several runs.

#![allow(clippy::print_stdout, reason = "a benchmark prints its results")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_runtime::conn::MockConnections;
use concerto_runtime::{Executor, Limits, Runtime};
use serde_json::{Value as Json, json};

const CALLS: usize = 1000;
const IN_FLIGHT: usize = 100;
const LATENCY: Duration = Duration::from_millis(50);
const RUNS: usize = 5;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/orchestration")
}

fn bench_runtime(ir: &[u8]) -> Runtime {
    let built = Runtime::builder()
        .limits(Limits::default().with_max_concurrent_agent_calls(Some(IN_FLIGHT)))
        .connections(Arc::new(MockConnections::new().with_latency(LATENCY)))
        .build();
    let mut runtime = match built {
        Ok(runtime) => runtime,
        Err(e) => panic!("cannot build the benchmark runtime: {e}"),
    };
    if let Err(e) = runtime.load_ir_bytes(ir) {
        panic!("cannot load the benchmark program: {e}");
    }
    runtime
}

/// `fan_out.conc-ir` with `main` = spawn `call_once` CALLS times into an array, await it,
/// emit the number of results.
fn fan_out_ir() -> Vec<u8> {
    let text = std::fs::read(dir().join("fan_out.conc-ir")).expect("fan_out.conc-ir");
    let mut ir: Json = serde_json::from_slice(&text).expect("IR");
    let constants = ir["constants"].as_array_mut().expect("constants");
    let mut constant = |ty: &str, value: Json| {
        let index = constants.len();
        constants.push(json!({"index": index, "type": ty, "value": value}));
        index
    };
    let zero = constant("int", json!(0));
    let one = constant("int", json!(1));
    let calls = constant("int", json!(CALLS));
    let func = constant("string", json!("call_once"));
    let channel = constant("string", json!("results"));
    let nil = constant("nil", Json::Null);
    let code = json!([
        {"op": "BUILD_ARRAY", "count": 0},
        {"op": "STORE_LOCAL", "name": "tasks"},
        {"op": "LOAD_CONST", "arg": zero},
        {"op": "STORE_LOCAL", "name": "i"},
        {"op": "LOAD_LOCAL", "name": "i"},
        {"op": "LOAD_CONST", "arg": calls},
        {"op": "LT"},
        {"op": "JUMP_IF_FALSE", "offset": 18},
        {"op": "LOAD_LOCAL", "name": "tasks"},
        {"op": "LOAD_CONST", "arg": func},
        {"op": "SPAWN_ASYNC"},
        {"op": "CALL_METHOD", "name": "push", "argc": 1},
        {"op": "POP"},
        {"op": "LOAD_LOCAL", "name": "i"},
        {"op": "LOAD_CONST", "arg": one},
        {"op": "ADD"},
        {"op": "STORE_LOCAL", "name": "i"},
        {"op": "JUMP", "offset": 4},
        {"op": "LOAD_CONST", "arg": channel},
        {"op": "LOAD_LOCAL", "name": "tasks"},
        {"op": "AWAIT"},
        {"op": "CALL_METHOD", "name": "len", "argc": 0},
        {"op": "EMIT"},
        {"op": "LOAD_CONST", "arg": nil},
        {"op": "RETURN"}
    ]);
    let main = ir["functions"]
        .as_array_mut()
        .expect("functions")
        .iter_mut()
        .find(|f| f["name"] == "main")
        .expect("main");
    main["instructions"] = code;
    serde_json::to_vec(&ir).expect("json")
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn executions(executor: &Executor) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..CALLS)
        .map(|_| {
            let executor = executor.clone();
            tokio::spawn(async move { executor.execute().await })
        })
        .collect();
    for handle in handles {
        if let Err(e) = handle.await.expect("join") {
            panic!("an execution failed: {e}");
        }
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let ideal = (CALLS / IN_FLIGHT) as f64 * LATENCY.as_secs_f64();

    // 1000 concurrent executions of a one-call program on one runtime.
    let one_call = std::fs::read(dir().join("one_call.conc-ir")).expect("one_call.conc-ir");
    let mut runtime = bench_runtime(&one_call);
    let executor = runtime.executor().expect("executor");
    let mut times = Vec::new();
    for _ in 0..RUNS {
        times.push(rt.block_on(executions(&executor)));
    }
    let calls = executor.metrics().agent_calls;
    assert_eq!(
        calls,
        (CALLS * RUNS) as u64,
        "every execution made its call"
    );
    let t = median(times);
    println!(
        "{}",
        json!({"case": "executions", "median_s": t, "ideal_s": ideal, "ratio": t / ideal, "calls": CALLS})
    );

    // One program spawning 1000 tasks and awaiting them all.
    let mut runtime = bench_runtime(&fan_out_ir());
    let results = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = results.clone();
    runtime.on("results", move |v| sink.lock().push(v.to_json()));
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        if let Err(e) = rt.block_on(runtime.execute()) {
            panic!("the fan-out program failed: {e}");
        }
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(runtime.metrics().agent_calls, CALLS as u64);
    }
    assert!(results.lock().iter().all(|r| *r == json!(CALLS)));
    let t = median(times);
    println!(
        "{}",
        json!({"case": "fan_out", "median_s": t, "ideal_s": ideal, "ratio": t / ideal, "calls": CALLS})
    );
}
