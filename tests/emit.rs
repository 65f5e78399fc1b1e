//! The emit channel end to end: emit-await through the facade with IR that carries
//! `EMIT_AWAIT` (`tests/emit/await_emit.conc`, rewritten as its header explains).

use std::path::Path;
use std::time::Duration;

use concerto_runtime::Value;
use concerto_tests::run_ir_listening;
use concerto_tests::scripted::{emits, payload};
use serde_json::{Value as Json, json};

/// `await_emit.conc-ir` with every `EMIT; LOAD_CONST nil; AWAIT` turned into
/// `EMIT_AWAIT; AWAIT; AWAIT` (same length, so jump targets stay valid).
fn await_emit_ir() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("emit/await_emit.conc-ir");
    let mut ir: Json = serde_json::from_slice(&std::fs::read(path).expect("program")).expect("IR");
    let nil_constants: Vec<u64> = ir["constants"]
        .as_array()
        .expect("constants")
        .iter()
        .filter(|c| c["type"] == "nil")
        .filter_map(|c| c["index"].as_u64())
        .collect();
    let mut rewritten = 0;
    for func in ir["functions"].as_array_mut().expect("functions") {
        let code = func["instructions"].as_array_mut().expect("instructions");
        for i in 0..code.len().saturating_sub(2) {
            let is_nil = code[i + 1]["op"] == "LOAD_CONST"
                && code[i + 1]["arg"]
                    .as_u64()
                    .is_some_and(|a| nil_constants.contains(&a));
            if code[i]["op"] == "EMIT" && is_nil && code[i + 2]["op"] == "AWAIT" {
                code[i]["op"] = json!("EMIT_AWAIT");
                code[i + 1] = json!({"op": "AWAIT", "span": code[i + 1]["span"].clone()});
                rewritten += 1;
            }
        }
    }
    assert_eq!(rewritten, 3, "the program has three `await emit`");
    serde_json::to_vec(&ir).expect("json")
}

#[test]
fn emit_await_answers_with_the_hosts_reply_and_errors_are_catchable() {
    let result = run_ir_listening(
        &await_emit_ir(),
        |b| b,
        |rt| {
            rt.on_emit("ask", |payload: Value| async move {
                let question = payload.to_json()["question"].clone();
                Ok(Value::from(format!(
                    "yes to {}",
                    question.as_str().unwrap_or("?")
                )))
            });
            rt.on_emit("fails", |_| async move {
                Err::<Value, _>("the operator is away".into())
            });
        },
    );
    let out = emits(&result);
    assert_eq!(payload(&out, "answer"), json!("yes to proceed?"));
    let missing = payload(&out, "missing_handler");
    let missing = missing.as_str().unwrap_or_default();
    assert!(missing.contains("nobody_listens"), "{missing}");
    let failed = payload(&out, "handler_error");
    let failed = failed.as_str().unwrap_or_default();
    assert!(failed.contains("the operator is away"), "{failed}");
    assert!(failed.contains("fails"), "{failed}");
    // The awaiting emits reach ordinary listeners too, in program order.
    let channels: Vec<&str> = out.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        channels,
        [
            "before",
            "answer",
            "missing_handler",
            "handler_error",
            "after"
        ]
    );
}

#[test]
fn a_slow_reply_waits_without_blocking_the_executor() {
    let result = run_ir_listening(
        &await_emit_ir(),
        |b| b,
        |rt| {
            rt.on_emit("ask", |_| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Value::from("late but here"))
            });
            rt.on_emit("fails", |_| async move { Ok(Value::from("fine")) });
        },
    );
    let out = emits(&result);
    assert_eq!(payload(&out, "answer"), json!("late but here"));
    assert_eq!(payload(&out, "handler_error"), json!("fine"));
}

#[test]
fn a_handler_slower_than_the_timeout_fails_the_await_naming_the_channel() {
    let limits = concerto_runtime::Limits::default()
        .with_emit_await_timeout(Some(Duration::from_millis(50)));
    let result = run_ir_listening(
        &await_emit_ir(),
        |b| b.limits(limits),
        |rt| {
            rt.on_emit("ask", |_| async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(Value::from("too late"))
            });
        },
    );
    // `ask` is awaited outside any try: the run ends with the timeout, emits so far kept.
    let error = result.error.expect("the await times out").to_string();
    assert!(error.contains("ask"), "{error}");
    assert!(
        error.contains("timed out") || error.contains("time"),
        "{error}"
    );
    assert_eq!(result.emits.len(), 1, "{:?}", result.emits);
}

#[test]
fn batch_mode_delivers_in_order_and_before_an_await() {
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let at_await = std::sync::Arc::new(parking_lot::Mutex::new(None::<usize>));
    let (log, mark) = (seen.clone(), at_await.clone());
    let batch = concerto_runtime::RuntimeConfig {
        emit_mode: concerto_runtime::EmitMode::Batch { max_batch: 0 },
        ..Default::default()
    };
    let result = run_ir_listening(
        &await_emit_ir(),
        |b| b.config(batch),
        move |rt| {
            let log2 = log.clone();
            rt.on_prefix("", move |channel, _| log2.lock().push(channel.to_string()));
            let (log3, mark2) = (log.clone(), mark.clone());
            rt.on_emit("ask", move |_| {
                // Everything emitted before the await has been delivered by now.
                *mark2.lock() = Some(log3.lock().len());
                async move { Ok(Value::from("ok")) }
            });
            rt.on_emit("fails", |_| async move { Ok(Value::from("fine")) });
        },
    );
    assert!(result.error.is_none(), "{:?}", result.error);
    assert_eq!(
        *at_await.lock(),
        Some(1),
        "`before` was delivered before the await"
    );
    let channels = seen.lock().clone();
    assert_eq!(
        channels,
        [
            "before",
            "answer",
            "missing_handler",
            "handler_error",
            "after"
        ]
    );
}
