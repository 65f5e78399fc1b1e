//! The state-store benchmark (`cargo xtask bench` runs it; or
//! `cargo run --release -p concerto-runtime --example state_bench`): a Concerto program doing
//! 100 000 hashmap operations (50 000 sets, then 50 000 gets, `benches/state/hashmap_ops.conc`)
//! on each store — process memory, SQLite (a temporary file, every write committed), Redis (a
//! `redis-server` started here on a free port) — and on Redis from 8 runtimes at once, each
//! doing its share; SQLite and Redis also with the run journaled (`Runtime::execute_run`:
//! each write committed with its journal row, each read recorded). Prints one JSON line per
//! case with operations per second.

#![allow(clippy::print_stdout, reason = "a benchmark prints its results")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concerto_runtime::{Runtime, StateStore};
use serde_json::{Value as Json, json};

const OPS_PER_RUN: u64 = 100_000;

fn program(n: u64) -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/state/hashmap_ops.conc-ir");
    let mut ir: Json =
        serde_json::from_slice(&std::fs::read(path).expect("hashmap_ops.conc-ir")).expect("IR");
    // Constant 0 is the loop bound `n` (sets, then as many gets).
    ir["constants"][0]["value"] = json!(n);
    serde_json::to_vec(&ir).expect("json")
}

/// Runs the program once on `state`; the emitted sum is checked.
async fn run(state: StateStore, n: u64, module: &str) -> Duration {
    run_as(state, n, module, None).await
}

/// [`run`], journaled as run `run_id` when given (a resumable run: every write committed
/// with its journal row, every read recorded).
async fn run_as(state: StateStore, n: u64, module: &str, run_id: Option<&str>) -> Duration {
    let mut ir: Json = serde_json::from_slice(&program(n)).expect("IR");
    ir["module"] = json!(module);
    let mut runtime = Runtime::builder()
        .state_store(state)
        .build()
        .expect("the state store setting is valid");
    runtime
        .load_ir_bytes(&serde_json::to_vec(&ir).expect("json"))
        .expect("load");
    let sums = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = sums.clone();
    runtime.on("sum", move |v| sink.lock().push(v.to_json()));
    let started = Instant::now();
    let outcome = match run_id {
        Some(run) => runtime.execute_run(run).await,
        None => runtime.execute().await,
    };
    if let Err(e) = outcome {
        panic!("the benchmark program failed: {e}");
    }
    let took = started.elapsed();
    assert_eq!(sums.lock().clone(), vec![json!(n * (n - 1) / 2)]);
    took
}

fn report(case: &str, ops: u64, took: Duration) {
    println!(
        "{}",
        json!({"case": case, "ops": ops, "seconds": took.as_secs_f64(),
               "ops_per_s": ops as f64 / took.as_secs_f64()})
    );
}

/// A throw-away redis-server on a free port, stopped on drop.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let n = OPS_PER_RUN / 2;

    let took = rt.block_on(run(StateStore::Memory, n, "bench"));
    report("memory", OPS_PER_RUN, took);

    let dir = std::env::temp_dir().join(format!("concerto-state-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let took = rt.block_on(run(StateStore::Sqlite(dir.join("state.db")), n, "bench"));
    report("sqlite", OPS_PER_RUN, took);
    let took = rt.block_on(run_as(
        StateStore::Sqlite(dir.join("journaled.db")),
        n,
        "bench",
        Some("bench-run"),
    ));
    report("sqlite_journaled", OPS_PER_RUN, took);
    let _ = std::fs::remove_dir_all(&dir);

    let Some(redis) = Redis::start() else {
        println!(
            "{}",
            json!({"case": "redis", "skipped": "redis-server is not installed"})
        );
        return;
    };
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let took = rt.block_on(run(StateStore::Redis(url.clone()), n, "bench1"));
    report("redis", OPS_PER_RUN, took);
    let took = rt.block_on(run_as(
        StateStore::Redis(url.clone()),
        n,
        "bench_journaled",
        Some("bench-run"),
    ));
    report("redis_journaled", OPS_PER_RUN, took);

    // 8 runtimes at once on one server, each doing an eighth of the operations.
    let share = n / 8;
    let started = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    run(StateStore::Redis(url), share, &format!("bench8_{i}")).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join");
        }
    });
    report("redis_8_runtimes", share * 2 * 8, started.elapsed());
    drop(redis);
}
