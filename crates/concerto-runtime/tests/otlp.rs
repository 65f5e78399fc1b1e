//! `RuntimeConfig::otlp_endpoint`: an embedder turns the export on through the runtime's
//! configuration, without a subscriber of its own. (The process's global subscriber is
//! set by the first run that asks: every test of this binary is traced from then on, which
//! changes nothing they check.)

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use concerto_runtime::{Runtime, RuntimeConfig, RuntimeError, SetupError};

/// A loopback OTLP/HTTP collector keeping the bodies it is sent (protobuf: span names and
/// string attributes appear in them as UTF-8).
fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut raw = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + len {
                    sink.lock()
                        .expect("lock")
                        .push(raw[end + 4..end + 4 + len].to_vec());
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                    );
                    raw.clear();
                }
            }
        }
    });
    (url, bodies)
}

fn one_call() -> String {
    format!(
        "{}/../../tests/async/one_call.conc-ir",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn contains(bodies: &Mutex<Vec<Vec<u8>>>, text: &str) -> bool {
    bodies
        .lock()
        .expect("lock")
        .iter()
        .any(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// The spans of a run are at the collector when `execute` returns (no shutdown, no wait): the
/// run's span and its agent call's; so are an `Executor`'s executions. A second runtime
/// naming another endpoint fails its
/// first run with a setup error naming the endpoint in use; one naming the same endpoint
/// shares the exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_in_the_config_exports_each_run_before_it_returns() {
    let (url, bodies) = collector();
    let config = RuntimeConfig {
        otlp_endpoint: Some(url.clone()),
        ..RuntimeConfig::default()
    };
    let mut runtime = Runtime::builder()
        .config(config.clone())
        .mock_provider()
        .build()
        .expect("builds");
    runtime.load_ir(one_call()).expect("loads");
    runtime.execute().await.expect("runs");
    assert!(
        contains(&bodies, "invoke_agent Worker"),
        "the agent call's span"
    );
    assert!(contains(&bodies, "gen_ai.operation.name"), "its attributes");
    let after_first = bodies.lock().expect("lock").len();

    let mut same = Runtime::builder()
        .config(config)
        .mock_provider()
        .build()
        .expect("builds");
    same.load_ir(one_call()).expect("loads");
    same.execute().await.expect("runs");
    assert!(
        bodies.lock().expect("lock").len() > after_first,
        "the second run was exported too"
    );

    // An executor's executions too, each before it returns.
    let executor = same.executor().expect("executor");
    let before = bodies.lock().expect("lock").len();
    executor.execute().await.expect("runs");
    assert!(
        bodies.lock().expect("lock").len() > before,
        "an executor's execution was exported before it returned"
    );

    let (other, _) = collector();
    let mut elsewhere = Runtime::builder()
        .config(RuntimeConfig {
            otlp_endpoint: Some(other),
            ..RuntimeConfig::default()
        })
        .mock_provider()
        .build()
        .expect("builds");
    elsewhere.load_ir(one_call()).expect("loads");
    match elsewhere.execute().await {
        Err(RuntimeError::Setup(SetupError::Otlp(message))) => {
            assert!(message.contains(&url), "{message}");
        }
        other => panic!("a second endpoint in one process: {other:?}"),
    }
}
