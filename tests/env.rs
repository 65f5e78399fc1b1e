//! `std::env` shows a program only the variables the host allowed (`Sandbox::allow_env`),
//! in `main` and in spawned tasks alike; API keys and the host's other variables stay hidden.

use std::path::Path;
use std::sync::Arc;

use concerto_runtime::{ProcessSystem, Runtime, Sandbox, TextOut};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// Runs `tests/env/env_sandbox.conc-ir` with an environment of a token, a mode, a region,
/// a secret and HOME (an overlay over the process environment), under `sandbox`.
fn run(sandbox: Sandbox) -> Vec<(String, Json)> {
    let quiet: TextOut = Arc::new(|_: &str| {});
    let system = ProcessSystem::with_output(quiet.clone(), quiet).with_env([
        ("APP_TOKEN".to_string(), "tok-123".to_string()),
        ("APP_MODE".to_string(), "fast".to_string()),
        ("REGION".to_string(), "eu".to_string()),
        ("SECRET_KEY".to_string(), "canary-do-not-leak".to_string()),
        ("HOME".to_string(), "/home/someone".to_string()),
    ]);
    let mut runtime = Runtime::builder()
        .sandbox(sandbox)
        .system(Arc::new(system))
        .build()
        .expect("builds");
    let emits = Arc::new(Mutex::new(Vec::new()));
    let sink = emits.clone();
    runtime.on_prefix("", move |channel, payload| {
        sink.lock().push((channel.to_string(), payload.to_json()))
    });
    runtime
        .load_ir(Path::new(env!("CARGO_MANIFEST_DIR")).join("env/env_sandbox.conc-ir"))
        .expect("loads");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
        .block_on(runtime.execute())
        .expect("runs");
    emits.lock().clone()
}

fn get<'a>(emits: &'a [(String, Json)], channel: &str) -> &'a Json {
    &emits
        .iter()
        .find(|(c, _)| c == channel)
        .unwrap_or_else(|| panic!("no emit on `{channel}` in {emits:?}"))
        .1
}

#[test]
fn the_program_reads_only_the_variables_the_host_allowed() {
    let out = run(Sandbox::default().allow_env("APP_*").allow_env("REGION"));
    assert_eq!(get(&out, "token"), &json!({"Some": "tok-123"}));
    assert_eq!(get(&out, "region"), &json!("eu"));
    assert_eq!(get(&out, "all_token"), &json!("tok-123"));
    assert_eq!(get(&out, "all_mode"), &json!("fast"));
    assert_eq!(get(&out, "task_token"), &json!({"Some": "tok-123"}));
    for hidden in ["secret", "all_secret", "all_home"] {
        assert_eq!(get(&out, hidden), &Json::Null, "{hidden}");
    }
    assert_eq!(get(&out, "secret_has"), &json!(false));
    assert_eq!(get(&out, "home_has"), &json!(false));
    let require = get(&out, "secret_require").to_string();
    assert!(require.contains("SECRET_KEY"), "{require}");
    let everything = serde_json::to_string(&out).expect("json");
    assert!(!everything.contains("canary-do-not-leak"), "{everything}");
    assert!(!everything.contains("/home/someone"), "{everything}");
}

#[test]
fn by_default_the_program_sees_no_variable_at_all() {
    let out = run(Sandbox::default());
    for name in ["token", "region", "secret", "all_token", "task_token"] {
        let value = get(&out, name);
        assert!(
            value.is_null() || value == &json!("unset"),
            "{name}: {value}"
        );
    }
    let everything = serde_json::to_string(&out).expect("json");
    for value in [
        "tok-123",
        "fast",
        "eu",
        "canary-do-not-leak",
        "/home/someone",
    ] {
        assert!(!everything.contains(value), "{value} in {everything}");
    }
}
