//! The queue from Rust (issue 18): `concerto_runtime::queue::Queue` submits runs and follows
//! them, a `Worker` inside this process executes them with runtimes its factory builds (the
//! built-in mock provider here), on a real `redis-server`. Each run's events are exactly the
//! emits the same program makes when executed alone by a `Runtime`, then its end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concerto_runtime::queue::{
    Queue, RunEvent, RunFactory, RunRequest, RunState, Worker, WorkerOptions, watch,
};
use concerto_runtime::{ProcessSystem, Runtime, RuntimeBuilder, Sandbox};

use crate::stores::redis_server::RedisServer;

fn program() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("queue/chaos.head.conc-ir"))
        .expect("program")
}

/// What every run gets: the mock provider, RUN_N readable, the run's variables.
fn builder(env: &[(String, String)]) -> RuntimeBuilder {
    Runtime::builder()
        .mock_provider()
        .sandbox(Sandbox::default().allow_env("RUN_N"))
        .system(Arc::new(ProcessSystem::default().with_env(env.to_vec())))
}

/// The emits of the program run alone with `env`, as `(channel, payload JSON)`.
fn alone(env: &[(String, String)]) -> Vec<(String, serde_json::Value)> {
    let emits = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = emits.clone();
    let mut runtime = builder(env).build().expect("build");
    runtime.load_ir_bytes(&program()).expect("load");
    runtime.on_prefix("", move |channel, payload| {
        seen.lock().push((channel.to_string(), payload.to_json()));
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(runtime.execute())
        .expect("run alone");
    emits.lock().clone()
}

#[test]
fn a_worker_in_process_runs_what_a_client_submits() {
    let server = RedisServer::start();
    let address = format!("{}/api", server.url());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let factory: RunFactory = Arc::new(|request: &RunRequest| Ok(builder(&request.env)));
    let mut options = WorkerOptions::new("in-process");
    options.concurrency = 2;
    let envs: Vec<Vec<(String, String)>> = (1..=3)
        .map(|n| vec![("RUN_N".to_string(), n.to_string())])
        .collect();
    let expected: Vec<_> = envs.iter().map(|env| alone(env)).collect();
    let report = tokio.block_on(async {
        let queue = Queue::connect(&address).await.expect("queue");
        let mut runs = Vec::new();
        for env in &envs {
            runs.push(queue.submit(&program(), env).await.expect("submit"));
        }
        let worker = Arc::new(
            Worker::connect(&address, options, factory)
                .await
                .expect("worker"),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let working = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        for (run, expected) in runs.iter().zip(&expected) {
            let mut events = Vec::new();
            let end = tokio::time::timeout(
                Duration::from_secs(60),
                watch(&queue, run, |e| events.push(e.clone())),
            )
            .await
            .expect("the run ends")
            .expect("watched");
            let emits: Vec<(String, serde_json::Value)> = events
                .iter()
                .filter_map(|e| match e {
                    RunEvent::Emit { channel, payload } => Some((channel.clone(), payload.clone())),
                    RunEvent::End { .. } => None,
                })
                .collect();
            assert_eq!(&emits, expected, "run {run}");
            assert_eq!(
                end,
                RunEvent::End {
                    state: RunState::Done,
                    result: Some(serde_json::Value::Null),
                    error: None
                }
            );
            let info = queue.run_info(run).await.expect("info").expect("known");
            assert_eq!((info.state, info.attempts), (RunState::Done, 1));
        }
        let stats = queue.stats(Duration::from_secs(3600)).await.expect("stats");
        assert_eq!((stats.done, stats.queued, stats.running), (3, 0, 0));
        let _ = stop.send(());
        working.await.expect("worker task").expect("worker")
    });
    assert_eq!(
        (report.taken, report.done, report.lost),
        (3, 3, 0),
        "{report:?}"
    );
}
