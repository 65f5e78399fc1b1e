//! `Runtime::builder()…build()`: settings that exclude each other are refused, files are
//! read and created when the runtime is built, and the components chosen are the ones used.

use std::sync::Arc;

use concerto_runtime::vm::host::Connections;
use concerto_runtime::{
    ConnectionOverride, Runtime, RuntimeConfig, RuntimeError, Sandbox, SetupError, StateStore,
    ToolPermission,
};

fn harbour() -> String {
    format!(
        "{}/../../examples/harbour/harbour.conc-ir",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("concerto-builder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn conflict(result: Result<Runtime, RuntimeError>) -> (&'static str, &'static str) {
    match result {
        Err(RuntimeError::Setup(SetupError::Conflict { first, second })) => (first, second),
        Err(other) => panic!("expected a conflict, got {other}"),
        Ok(_) => panic!("expected a conflict, the runtime was built"),
    }
}

fn mock() -> Arc<dyn Connections> {
    Arc::new(concerto_runtime::conn::MockConnections::new())
}

#[test]
fn two_sources_of_replies_are_refused_naming_both() {
    assert_eq!(
        conflict(
            Runtime::builder()
                .mock_provider()
                .connections(mock())
                .build()
        ),
        ("mock_provider", "connections")
    );
    assert_eq!(
        conflict(
            Runtime::builder()
                .replay_llm("calls.jsonl")
                .mock_provider()
                .build()
        ),
        ("replay_llm", "mock_provider")
    );
    // The same choice twice is not a conflict: the last one counts.
    assert!(
        Runtime::builder()
            .mock_provider()
            .mock_provider()
            .build()
            .is_ok()
    );
}

#[test]
fn settings_a_chosen_component_would_ignore_are_refused() {
    let overrides =
        RuntimeConfig::default().with_connection_override("default", ConnectionOverride::default());
    assert_eq!(
        conflict(
            Runtime::builder()
                .config(overrides)
                .connections(mock())
                .build()
        ),
        ("connections", "RuntimeConfig::connection_overrides")
    );
    let tools = concerto_runtime::vm::testing::Unsupported;
    assert_eq!(
        conflict(
            Runtime::builder()
                .sandbox(Sandbox::default().allow_net("example.com"))
                .tool_host(Arc::new(tools))
                .build()
        ),
        ("tool_host", "sandbox")
    );
    let permissions =
        RuntimeConfig::default().with_tool_permission("Calc", ToolPermission::AllMethods);
    assert_eq!(
        conflict(
            Runtime::builder()
                .config(permissions)
                .tool_host(Arc::new(concerto_runtime::vm::testing::Unsupported))
                .build()
        ),
        ("tool_host", "RuntimeConfig::tool_permissions")
    );
    let store = Arc::new(concerto_memory::InMemoryStore::with_names(["m"]));
    assert_eq!(
        conflict(
            Runtime::builder()
                .memory_store(store)
                .state_store(StateStore::Sqlite("state.db".into()))
                .build()
        ),
        ("memory_store", "state_store")
    );
}

#[test]
fn a_recording_to_replay_is_read_when_the_runtime_is_built() {
    let dir = scratch("replay");
    let missing = dir.join("never-recorded.jsonl");
    match Runtime::builder().replay_llm(&missing).build() {
        Err(RuntimeError::Setup(SetupError::Replay { path, .. })) => assert_eq!(path, missing),
        Err(other) => panic!("expected a replay error, got {other}"),
        Ok(_) => panic!("a missing recording must be refused at build"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The recording starts empty when the runtime is built, and gets one line per agent call of
/// each execution (the bundled harbour example, answered by the mock provider).
#[tokio::test]
async fn a_recording_starts_empty_at_build_and_grows_by_one_line_per_call() {
    let dir = scratch("record");
    let file = dir.join("calls.jsonl");
    std::fs::write(&file, "an older recording\n").expect("write");
    let mut runtime = Runtime::builder()
        .mock_provider()
        .record_llm(&file)
        .build()
        .expect("builds");
    assert_eq!(std::fs::read_to_string(&file).expect("file"), "");
    runtime.load_ir(harbour()).expect("loads");
    runtime.execute().await.expect("runs");
    let calls = runtime.metrics().agent_calls;
    assert!(calls > 0, "the example calls agents");
    let lines = std::fs::read_to_string(&file)
        .expect("file")
        .lines()
        .count() as u64;
    assert_eq!(lines, calls);
    // A second execution appends to the same recording.
    runtime.execute().await.expect("runs again");
    let lines = std::fs::read_to_string(&file)
        .expect("file")
        .lines()
        .count() as u64;
    assert_eq!(lines, 2 * calls);
    let _ = std::fs::remove_dir_all(dir);
}

/// Listeners can be registered before a program loads and stay for programs loaded later;
/// the seed's `Runtime::new(config)` shape keeps working alongside the builder.
#[tokio::test]
async fn listeners_registered_before_loading_hear_every_program_loaded_later() {
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = heard.clone();
    let mut runtime = Runtime::builder().mock_provider().build().expect("builds");
    runtime.on_prefix("", move |channel, _| {
        sink.lock().expect("lock").push(channel.to_string())
    });
    runtime.load_ir(harbour()).expect("loads");
    runtime.execute().await.expect("first program");
    let first = heard.lock().expect("lock").len();
    assert!(first > 0);
    runtime.load_ir(harbour()).expect("loads again");
    runtime.execute().await.expect("second program");
    assert_eq!(heard.lock().expect("lock").len(), 2 * first);
}

#[test]
fn the_seed_constructor_is_the_builder_with_the_config_only() {
    let config = RuntimeConfig {
        debug: true,
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(config);
    assert!(runtime.config().debug);
    assert_eq!(runtime.limits(), &concerto_runtime::Limits::default());
}

/// Built without the `sqlite` feature (CI's step "minimal build" runs these tests so), an
/// SQLite store is refused by
/// `build()`, naming the feature.
#[cfg(not(feature = "sqlite"))]
#[test]
fn without_the_sqlite_feature_an_sqlite_store_is_refused_naming_it() {
    match Runtime::builder()
        .state_store(StateStore::Sqlite("state.db".into()))
        .build()
    {
        Err(RuntimeError::Setup(SetupError::FeatureOff { feature, .. })) => {
            assert_eq!(feature, "sqlite")
        }
        Err(other) => panic!("expected FeatureOff, got {other}"),
        Ok(_) => panic!("an SQLite store without the feature must be refused"),
    }
}

/// Built without the `http` feature, a runtime with no other source of replies fails an
/// agent call, naming the feature; the mock provider still answers.
#[cfg(not(feature = "http"))]
#[tokio::test]
async fn without_the_http_feature_agent_calls_fail_naming_it_unless_mocked() {
    let mut offline = Runtime::builder().build().expect("builds");
    offline.load_ir(harbour()).expect("loads");
    let error = offline
        .execute()
        .await
        .expect_err("no network layer")
        .to_string();
    assert!(error.contains("`http` feature"), "{error}");
    let mut mocked = Runtime::builder().mock_provider().build().expect("builds");
    mocked.load_ir(harbour()).expect("loads");
    mocked.execute().await.expect("the mock answers");
}

#[cfg(feature = "http")]
/// A loopback server that counts the bytes it receives and answers 401; its address.
fn counting_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(300)));
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                if String::from_utf8_lossy(&buf[..n]).contains("\r\n\r\n") {
                    break;
                }
            }
            let body = r#"{"error": {"message": "no", "type": "invalid_request_error"}}"#;
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (format!("http://{addr}"), count)
}

#[cfg(feature = "http")]
/// The harbour example with its connections' base_url (chosen by the program) at `url`.
fn harbour_at(url: &str) -> Vec<u8> {
    let mut ir: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(harbour()).expect("example")).expect("json");
    for conn in ir["connections"].as_array_mut().expect("connections") {
        conn["config"]["base_url"] = serde_json::json!(url);
        conn["config"]["retry"] = serde_json::json!({"max_attempts": 1, "backoff": "none"});
    }
    serde_json::to_vec(&ir).expect("json")
}

#[cfg(feature = "http")]
/// A base_url the program chose is refused unless the host allowed its host; a base_url the
/// host set in a connection override is the host's choice and needs nothing else.
#[tokio::test]
async fn a_connection_reaches_a_program_chosen_host_only_when_the_host_allowed_it() {
    let (url, received) = counting_server();
    let program = harbour_at(&url);
    let names: Vec<String> = {
        let ir: serde_json::Value = serde_json::from_slice(&program).expect("json");
        ir["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect()
    };
    let keyed = || {
        let quiet: concerto_runtime::TextOut = Arc::new(|_: &str| {});
        Arc::new(
            concerto_runtime::ProcessSystem::with_output(quiet.clone(), quiet)
                .with_env([("OPENAI_API_KEY".to_string(), "sk-test".to_string())]),
        )
    };
    let mut refused = Runtime::builder().system(keyed()).build().expect("builds");
    refused.load_ir_bytes(&program).expect("loads");
    let error = refused.execute().await.expect_err("refused").to_string();
    assert!(error.contains("--allow-net 127.0.0.1"), "{error}");
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 0);

    let config = names.iter().fold(RuntimeConfig::default(), |config, name| {
        config.with_connection_override(
            name,
            ConnectionOverride {
                base_url: Some(url.clone()),
                ..Default::default()
            },
        )
    });
    let mut overridden = Runtime::builder()
        .config(config)
        .system(keyed())
        .build()
        .expect("builds");
    overridden.load_ir_bytes(&program).expect("loads");
    let error = overridden.execute().await.expect_err("401").to_string();
    assert!(error.contains("401"), "{error}");
    assert!(received.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// A loopback HTTP server answering each request (its number from 0, its body) with
/// `respond`'s status, extra headers and JSON body; its base URL and request count.
#[cfg(feature = "http")]
fn scripted_server(
    respond: impl Fn(usize, &str) -> (u16, &'static str, String) + Send + 'static,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            // The head, then the body its content-length announces.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&got).to_string();
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let (status, headers, reply) = respond(n, body);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}\
                     content-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                )
                .as_bytes(),
            );
        }
    });
    (format!("http://{addr}"), count)
}

/// An OpenAI chat completion answering `text` as `model`.
#[cfg(feature = "http")]
fn openai_reply(text: &str, model: &str) -> String {
    serde_json::json!({
        "id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
    })
    .to_string()
}

/// The CLI tests' one-call program (`fallback.conc`): it emits the answering connection and
/// model, or the error's kind, status and retry-after.
#[cfg(feature = "http")]
fn fallback_program() -> String {
    format!(
        "{}/../concerto-cli/tests/programs/fallback.conc-ir",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `runtime` on `fallback_program()` and returns its emits by channel.
#[cfg(feature = "http")]
async fn run_fallback_program(
    runtime: &mut Runtime,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let kept = seen.clone();
    runtime.on_prefix("", move |channel: &str, payload| {
        kept.lock()
            .expect("emits")
            .insert(channel.to_string(), payload.to_json());
    });
    runtime.load_ir(fallback_program()).expect("loads");
    runtime
        .execute()
        .await
        .expect("the program handles every outcome");
    seen.lock().expect("emits").clone()
}

/// Fallbacks and the retry budget set on the builder govern the built-in HTTP layer: a
/// rate-limited connection falls back to a connection only the host configured, whose name
/// the program's `Response` and the metrics carry; with no retry left the program gets the
/// rate-limited `AgentError` with the provider's retry-after, and the fallback is not tried.
#[cfg(feature = "http")]
#[tokio::test]
async fn fallbacks_and_the_retry_budget_set_on_the_builder_govern_agent_calls() {
    use concerto_runtime::conn::Fallback;
    let (limited, limited_count) = scripted_server(|_, _| {
        (
            429,
            "retry-after-ms: 7\r\n",
            r#"{"error": {"message": "Slow down", "type": "rate_limit"}}"#.to_string(),
        )
    });
    let (backup, backup_count) =
        scripted_server(|_, _| (200, "", openai_reply("Teal", "backup-model")));
    let config = RuntimeConfig::default()
        .with_connection_override(
            "openai",
            ConnectionOverride {
                base_url: Some(limited),
                api_key: Some("sk-test-primary".into()),
                retry: Some(concerto_runtime::vm::host::RetryPolicy {
                    max_attempts: 2,
                    backoff: concerto_runtime::vm::host::Backoff::None,
                    ..Default::default()
                }),
                fallbacks: vec![Fallback {
                    connection: Some("backup".into()),
                    model: None,
                }],
                ..Default::default()
            },
        )
        .with_connection_override(
            "backup",
            ConnectionOverride {
                base_url: Some(backup),
                api_key: Some("sk-test-backup".into()),
                default_model: Some("backup-model".into()),
                ..Default::default()
            },
        );
    let mut runtime = Runtime::builder()
        .config(config.clone())
        .build()
        .expect("builds");
    let emits = run_fallback_program(&mut runtime).await;
    assert_eq!(emits["text"], "Teal", "{emits:?}");
    assert_eq!(emits["connection"], "backup");
    assert_eq!(emits["model"], "backup-model");
    let metrics = runtime.metrics();
    assert_eq!(metrics.llm.by_connection["backup"].requests, 1);
    assert_eq!(metrics.tokens_by_connection("backup"), 11);
    assert!(!metrics.llm.by_connection.contains_key("openai"));
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        (limited_count.load(SeqCst), backup_count.load(SeqCst)),
        (2, 1)
    );

    let mut budgeted = Runtime::builder()
        .config(config)
        .retry_budget(1)
        .build()
        .expect("builds");
    let emits = run_fallback_program(&mut budgeted).await;
    assert_eq!(emits["error_kind"], "rate_limited", "{emits:?}");
    assert_eq!(emits["status"], 429);
    assert_eq!(emits["retry_after_ms"], 7);
    assert_eq!(
        (limited_count.load(SeqCst), backup_count.load(SeqCst)),
        (4, 1)
    );
}

/// Built without the `http` feature, a retry budget (which only the HTTP layer has) is
/// refused by `build()`, naming the feature.
#[cfg(not(feature = "http"))]
#[test]
fn without_the_http_feature_a_retry_budget_is_refused_naming_it() {
    match Runtime::builder().retry_budget(3).build() {
        Err(RuntimeError::Setup(SetupError::FeatureOff { feature, .. })) => {
            assert_eq!(feature, "http")
        }
        Err(other) => panic!("expected FeatureOff, got {other}"),
        Ok(_) => panic!("a retry budget without the HTTP layer must be refused"),
    }
}

/// A fallback that could never be called is refused by `build()`, naming the connection.
/// (Without the `http` feature every connection override is refused first.)
#[cfg(feature = "http")]
#[test]
fn a_fallback_naming_nothing_is_refused_when_the_runtime_is_built() {
    use concerto_runtime::conn::{Fallback, FallbackOn};
    let refused = |settings: ConnectionOverride| match Runtime::builder()
        .config(RuntimeConfig::default().with_connection_override("llm", settings))
        .build()
    {
        Err(RuntimeError::Setup(SetupError::Fallback { connection, reason })) => {
            assert_eq!(connection, "llm");
            reason
        }
        Err(other) => panic!("expected a fallback error, got {other}"),
        Ok(_) => panic!("the runtime was built"),
    };
    let empty = refused(ConnectionOverride {
        fallbacks: vec![Fallback::default()],
        ..Default::default()
    });
    assert_eq!(empty, "fallback 1 names neither a connection nor a model");
    let itself = refused(ConnectionOverride {
        fallbacks: vec![Fallback {
            connection: Some("llm".into()),
            model: None,
        }],
        ..Default::default()
    });
    assert!(itself.contains("the connection itself"), "{itself}");
    let policy_only = refused(ConnectionOverride {
        fallback_on: vec![FallbackOn::Timeout],
        ..Default::default()
    });
    assert!(policy_only.contains("no fallbacks"), "{policy_only}");
}
