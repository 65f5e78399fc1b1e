//! Agent calls end to end through the facade, with a scripted connection layer in place of
//! HTTP: what the program sees (emits) and what reaches the connection (requests).
//!
//! The programs are in `tests/agents/*.conc` (compiled by `tests/agents/compile.sh`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use concerto_runtime::vm::host::{Backoff, Connections, HostError};
use concerto_tests::scripted::{Scripted, emits, payload, text, tools};
use concerto_tests::{RunResult, run_ir_with};
use serde_json::{Value as Json, json};

fn run(program: &str, connections: &Arc<Scripted>) -> RunResult {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("agents")
        .join(format!("{program}.conc-ir"));
    let bytes = std::fs::read(&path).expect("agent test program");
    let conn: Arc<dyn Connections> = connections.clone();
    run_ir_with(&bytes, move |b| b.connections(conn))
}

#[test]
fn execute_returns_a_response_and_sends_the_agent_settings() {
    let conn = Scripted::new(vec![text("Teal")]);
    let out = emits(&run("execute_basic", &conn));
    assert_eq!(payload(&out, "is_ok"), json!(true));
    assert_eq!(
        payload(&out, "response"),
        json!({"text": "Teal", "in": 11, "out": 5, "model": "gpt-4o", "provider": "openai"})
    );
    assert_eq!(payload(&out, "type"), json!("Response"));
    let reqs = conn.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.agent, "Writer");
    assert_eq!(r.model.as_deref(), Some("gpt-4o"));
    assert_eq!(r.temperature, Some(0.25));
    assert_eq!(r.max_tokens, Some(64));
    assert_eq!(r.messages.len(), 2);
    assert_eq!(
        (r.messages[0].role.as_str(), r.messages[0].content.as_str()),
        ("system", "You write short answers.")
    );
    assert_eq!(
        (r.messages[1].role.as_str(), r.messages[1].content.as_str()),
        ("user", "Name a colour")
    );
    assert!(r.tools.is_empty() && r.response_schema.is_none());
}

#[test]
fn a_failed_call_is_an_agent_error_value() {
    let conn = Scripted::new(vec![
        Err(HostError::failed(
            "connection 'llm': HTTP 500 after 1 attempt",
        )),
        text("fine"),
    ]);
    let out = emits(&run("execute_error", &conn));
    assert_eq!(payload(&out, "is_err"), json!(true));
    assert_eq!(payload(&out, "type"), json!("AgentError"));
    let message = payload(&out, "message");
    let message = message.as_str().unwrap_or_default();
    assert!(message.contains("agent 'Writer' failed"), "{message}");
    assert!(message.contains("HTTP 500"), "{message}");
    assert_eq!(payload(&out, "agent"), json!("Writer"));
    assert_eq!(payload(&out, "second"), json!("fine"));
}

#[test]
fn memory_builder_carries_history_and_appends_the_exchange() {
    let conn = Scripted::new(vec![text("A1"), text("A2"), text("A3")]);
    let out = emits(&run("builder_memory", &conn));
    assert_eq!(payload(&out, "first"), json!("A1"));
    assert_eq!(payload(&out, "second"), json!("A2"));
    assert_eq!(payload(&out, "len"), json!(4));
    assert_eq!(payload(&out, "quiet"), json!("A3"));
    assert_eq!(payload(&out, "len_after_quiet"), json!(4));
    assert_eq!(
        payload(&out, "roles"),
        json!(["user", "assistant", "user", "assistant"])
    );
    let reqs = conn.requests();
    let second: Vec<(&str, &str)> = reqs[1]
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        second,
        vec![
            ("system", "Keep the log."),
            ("user", "one"),
            ("assistant", "A1"),
            ("user", "two")
        ]
    );
}

#[test]
fn builder_execute_raises_a_catchable_agent_error() {
    let conn = Scripted::new(vec![Err(HostError::failed("boom"))]);
    let out = emits(&run("builder_error", &conn));
    let caught = payload(&out, "caught");
    assert!(
        caught.as_str().unwrap_or_default().contains("boom"),
        "{caught}"
    );
    assert_eq!(payload(&out, "after"), json!(true));
    assert!(out.iter().all(|(c, _)| c != "never"));
    // with_tools offered the tool for this call.
    let reqs = conn.requests();
    assert_eq!(reqs[0].tools.len(), 1);
    assert_eq!(reqs[0].tools[0].name, "Noop::nothing");
}

#[test]
fn tool_calls_run_tool_methods_and_send_the_results_back() {
    let conn = Scripted::new(vec![
        tools(&[
            ("c1", "Calc::add", json!({"a": 19, "b": 23})),
            ("c2", "Calc::broken", json!({})),
            ("c3", "Calc::nope", json!({})),
        ]),
        text("There are 42."),
    ]);
    let out = emits(&run("tool_loop", &conn));
    assert_eq!(payload(&out, "answer"), json!("There are 42."));
    assert_eq!(payload(&out, "direct"), json!(3));
    let reqs = conn.requests();
    assert_eq!(reqs.len(), 2);
    let offered: Vec<&str> = reqs[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, vec!["Calc::add", "Calc::broken"]);
    let follow = &reqs[1].messages;
    let assistant = follow
        .iter()
        .find(|m| m.role == "assistant")
        .expect("assistant turn echoed");
    assert_eq!(assistant.tool_calls.len(), 3);
    let results: Vec<(Option<&str>, &str)> = follow
        .iter()
        .filter(|m| m.role == "tool")
        .map(|m| (m.tool_call_id.as_deref(), m.content.as_str()))
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], (Some("c1"), "42"));
    assert!(results[1].1.contains("the gauge is broken"), "{results:?}");
    assert!(results[2].1.contains("unknown tool"), "{results:?}");
}

#[test]
fn the_tool_loop_is_bounded() {
    let mut replies = Vec::new();
    for i in 0..12 {
        replies.push(tools(&[(
            &*format!("c{i}"),
            "Calc::add",
            json!({"a": 1, "b": 1}),
        )]));
    }
    let conn = Scripted::new(replies);
    let result = run("tool_loop", &conn);
    // `unwrap()` on the Err ends the program: the loop stopped with an error.
    let err = result.error.expect("the call fails").to_string();
    assert!(err.contains("kept asking for tools"), "{err}");
    assert_eq!(conn.requests().len(), 11);
}

#[test]
fn decorators_reach_the_request_and_cache_and_log() {
    let conn = Scripted::new(vec![text("cached answer"), text("other answer")]);
    let out = emits(&run("decorators", &conn));
    assert_eq!(payload(&out, "same"), json!(true));
    assert_eq!(payload(&out, "other"), json!("other answer"));
    let reqs = conn.requests();
    assert_eq!(
        reqs.len(),
        2,
        "the identical request was served from @cache"
    );
    let r = &reqs[0];
    assert_eq!(r.model.as_deref(), Some("fast"));
    assert_eq!(r.timeout, Some(Duration::from_secs(7)));
    let retry = r.retry.expect("@retry policy");
    assert_eq!(retry.max_attempts, 4);
    assert_eq!(retry.backoff, Backoff::Linear);
    let logs: Vec<&Json> = out
        .iter()
        .filter(|(c, _)| c == "agent:log")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[0]["agent"], json!("Careful"));
    assert_eq!(logs[0]["method"], json!("execute"));
    assert_eq!(logs[0]["tokens_in"], json!(11));
}

#[test]
fn chat_sends_the_conversation_and_context_reaches_the_prompt() {
    let conn = Scripted::new(vec![text("bye!"), text("Sunny")]);
    let out = emits(&run("chat_and_context", &conn));
    assert_eq!(payload(&out, "chat"), json!("bye!"));
    assert_eq!(payload(&out, "context"), json!("Sunny"));
    let reqs = conn.requests();
    let chat: Vec<(&str, &str)> = reqs[0]
        .messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        chat,
        vec![
            ("system", "Be brief."),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "bye")
        ]
    );
    let last = reqs[1].messages.last().expect("prompt");
    assert!(last.content.starts_with("Weather?"), "{}", last.content);
    assert!(last.content.contains("Oslo"), "{}", last.content);
}

#[test]
fn schema_replies_become_structs_and_invalid_ones_are_asked_again() {
    let conn = Scripted::new(vec![
        text(r#"{"label": "good", "score": 0.5}"#),
        text("Sure, here you go: not json"),
        text("```json\n{\"label\": \"fixed\", \"score\": 1}\n```"),
        text(r#"{"label": "x"}"#),
        text(r#"{"label": "x"}"#),
        text(r#"{"label": "x"}"#),
    ]);
    let out = emits(&run("schema_flow", &conn));
    assert_eq!(
        payload(&out, "first"),
        json!({"label": "good", "score": 0.5, "note": null, "type": "Verdict"})
    );
    assert_eq!(payload(&out, "retried"), json!("fixed"));
    assert_eq!(
        payload(&out, "failed"),
        json!({"type": "SchemaError", "schema": "Verdict", "raw": "{\"label\": \"x\"}"})
    );
    assert_eq!(payload(&out, "message_has_count"), json!(true));
    let reqs = conn.requests();
    assert_eq!(reqs.len(), 6);
    for r in &reqs {
        let schema = &r.response_schema.as_ref().expect("schema sent").schema;
        assert!(schema["properties"]["label"].is_object(), "{schema}");
    }
    // The re-ask replaces the prompt with one that states the errors and repeats it.
    let reask = reqs[2].messages.last().expect("re-ask");
    assert!(reask.content.contains("invalid JSON"), "{}", reask.content);
    assert!(reask.content.contains("Grade two"), "{}", reask.content);
    assert_eq!(
        reqs[2].messages.len(),
        1,
        "the failed answer is not sent back"
    );
}

#[test]
fn a_schema_validate_method_is_a_custom_validator() {
    let conn = Scripted::new(vec![text(r#"{"value": -3}"#), text(r#"{"value": 4}"#)]);
    let out = emits(&run("schema_validator", &conn));
    assert_eq!(payload(&out, "value"), json!(4));
    let reqs = conn.requests();
    assert_eq!(reqs.len(), 2);
    let reask = reqs[1].messages.last().expect("re-ask");
    assert!(
        reask.content.contains("value must not be negative"),
        "{}",
        reask.content
    );
}

#[test]
fn usage_is_counted_per_agent_and_connection() {
    let conn = Scripted::new(vec![text("Teal")]);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/execute_basic.conc-ir");
    let bytes = std::fs::read(path).expect("program");
    let c: Arc<dyn Connections> = conn.clone();
    let mut rt = concerto_runtime::Runtime::builder()
        .connections(c)
        .build()
        .expect("builds");
    rt.load_ir_bytes(&bytes).expect("loads");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(rt.execute()).expect("runs");
    let m = rt.metrics();
    assert_eq!(m.total_tokens(), 16);
    let agent = &m.llm.by_agent["Writer"];
    assert_eq!(
        (agent.requests, agent.input_tokens, agent.output_tokens),
        (1, 11, 5)
    );
    assert_eq!(
        agent.unpriced, 1,
        "no price given: the cost is unknown, not zero"
    );
    assert!(m.estimated_cost().usd().is_none());
    assert!(m.estimated_cost().to_string().contains("unknown"));
    assert_eq!(m.llm.by_connection["llm"].requests, 1);
}

/// The settled shapes of what a call returns, the same in both dialects: the `Response`
/// fields, and the `AgentError` / `TimeoutError` fields with the provider's details.
#[test]
fn responses_and_errors_have_the_settled_fields_in_both_dialects() {
    use concerto_runtime::vm::host::{
        ChatResponse, HostErrorKind, ProviderFailure, ProviderFailureKind, Usage,
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents");
    for ir in [
        dir.join("shapes.conc-ir"),
        dir.join("head/shapes.head.conc-ir"),
    ] {
        let mut reply = ChatResponse::text(
            "Teal",
            "gpt-4o-2024-08-06",
            Usage {
                input_tokens: 12,
                cached_tokens: 4,
                output_tokens: 3,
                estimated: true,
            },
        );
        reply.provider = "openai".into();
        reply.finish_reason = Some("stop".into());
        reply.attempts = 2;
        reply.latency_ms = 840;
        let conn = Scripted::new(vec![
            Ok(reply),
            Err(
                HostError::failed("connection 'llm': HTTP 429 after 3 attempts: Slow down")
                    .with_provider(ProviderFailure {
                        kind: ProviderFailureKind::RateLimited,
                        status: Some(429),
                        retry_after_ms: Some(1500),
                    }),
            ),
            Err(HostError {
                kind: HostErrorKind::Timeout,
                message: "connection 'llm': timed out after 1 attempt".into(),
                provider: Some(Box::new(ProviderFailure {
                    kind: ProviderFailureKind::Timeout,
                    status: None,
                    retry_after_ms: None,
                })),
            }),
            Err(
                HostError::failed("connection 'llm': HTTP 400 after 1 attempt: bad input")
                    .with_provider(ProviderFailure {
                        kind: ProviderFailureKind::Provider,
                        status: Some(400),
                        retry_after_ms: None,
                    }),
            ),
        ]);
        let bytes = std::fs::read(&ir).unwrap();
        let c: Arc<dyn Connections> = conn.clone();
        let result = run_ir_with(&bytes, move |b| b.connections(c));
        assert!(
            result.error.is_none(),
            "{}: {:?}",
            ir.display(),
            result.error
        );
        let out = emits(&result);
        assert_eq!(
            payload(&out, "response"),
            json!({
                "text": "Teal", "model": "gpt-4o-2024-08-06", "provider": "openai",
                "connection": "llm",
                "usage": {"input_tokens": 12, "output_tokens": 3, "cached_tokens": 4,
                          "estimated": true},
                "finish_reason": "stop", "attempts": 2,
                "timing": {"total_ms": 840, "queue_ms": null, "connect_ms": null,
                           "ttfb_ms": null, "first_token_ms": null, "overhead_us": null},
                "tokens_in": 12, "tokens_out": 3, "latency_ms": 840
            }),
            "{}",
            ir.display()
        );
        if ir.to_string_lossy().ends_with(".head.conc-ir") {
            assert_eq!(payload(&out, "model_by_index"), json!("gpt-4o-2024-08-06"));
        }
        assert_eq!(
            payload(&out, "rate_limited"),
            json!({
                "message": "agent 'Writer' failed: connection 'llm': HTTP 429 after 3 attempts: Slow down",
                "kind": "rate_limited", "agent_name": "Writer", "connection": "llm",
                "status": 429, "retry_after_ms": 1500
            }),
            "{}",
            ir.display()
        );
        let timeout = payload(&out, "timeout");
        assert_eq!(timeout["kind"], json!("timeout"), "{timeout}");
        assert_eq!(timeout["status"], json!(null), "{timeout}");
        assert!(timeout.get("timeout_seconds").is_some(), "{timeout}");
        let bad = payload(&out, "bad_request");
        assert_eq!(
            (&bad["kind"], &bad["status"], &bad["retry_after_ms"]),
            (&json!("provider_error"), &json!(400), &json!(null)),
            "{bad}"
        );
    }
}

/// A hand-written 7ad10db module: `models` with `config.base`, a connection `llm`, and
/// `main`'s instructions.
fn head_module(instructions: Json, constants: Json) -> Vec<u8> {
    json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": constants,
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
                       "return_type": "nil", "is_async": false, "locals": [],
                       "instructions": instructions}],
        "models": [{"name": "Writer", "module": "m", "connection": "llm",
                    "config": {"base": "gpt-4o-mini", "temperature": 0.5}}],
        "connections": [{"name": "llm", "config": {"provider": "openai"}}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
                     "debug_info": true, "entry_point": "main"}
    })
    .to_string()
    .into_bytes()
}

#[test]
fn call_model_and_the_model_field_are_the_agent_call_forms() {
    let constants = json!([
        {"index": 0, "type": "string", "value": "reply"},
        {"index": 1, "type": "string", "value": "Name a tide"},
        {"index": 2, "type": "nil", "value": null}
    ]);
    for (op, field) in [
        ("CALL_MODEL", "model"),
        ("CALL_AGENT", "model"),
        ("CALL_MODEL", "agent"),
    ] {
        let mut call = json!({"op": op, "method": "execute", "argc": 1});
        call[field] = json!("Writer");
        let ir = head_module(
            json!([
                {"op": "LOAD_CONST", "arg": 0},
                {"op": "LOAD_CONST", "arg": 1},
                call,
                {"op": "EMIT"},
                {"op": "LOAD_CONST", "arg": 2},
                {"op": "RETURN"}
            ]),
            constants.clone(),
        );
        let conn = Scripted::new(vec![text("Spring")]);
        let c: Arc<dyn Connections> = conn.clone();
        let result = run_ir_with(&ir, move |b| b.connections(c));
        assert!(result.error.is_none(), "{op}/{field}: {:?}", result.error);
        let reply = payload(&emits(&result), "reply");
        assert_eq!(
            reply["Ok"]["text"],
            json!("Spring"),
            "{op}/{field}: {reply}"
        );
        let reqs = conn.requests();
        assert_eq!(reqs.len(), 1);
        // `config.base` is the model asked for.
        assert_eq!(reqs[0].model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(reqs[0].temperature, Some(0.5));
    }
}

#[test]
fn a_builder_method_with_the_wrong_number_of_arguments_names_the_method() {
    let constants = json!([{"index": 0, "type": "nil", "value": null}]);
    for (method, argc, wanted) in [
        (
            "with_tools",
            0,
            "Writer.with_tools expects 1 argument, got 0",
        ),
        (
            "without_tools",
            1,
            "Writer.without_tools expects 0 arguments, got 1",
        ),
        ("execute", 2, "Writer.execute expects 1 argument, got 2"),
        (
            "with_memory",
            3,
            "Writer.with_memory expects 1 or 2 arguments, got 3",
        ),
    ] {
        let mut instructions = vec![json!({"op": "LOAD_LOCAL", "name": "Writer"})];
        for _ in 0..argc {
            instructions.push(json!({"op": "LOAD_CONST", "arg": 0}));
        }
        instructions.push(json!({"op": "CALL_METHOD", "name": method, "argc": argc}));
        instructions.push(json!({"op": "RETURN"}));
        let ir = head_module(Json::Array(instructions), constants.clone());
        let conn = Scripted::new(vec![]);
        let c: Arc<dyn Connections> = conn.clone();
        let result = run_ir_with(&ir, move |b| b.connections(c));
        let err = result.error.expect("a wrong arity must fail").to_string();
        assert!(err.contains(wanted), "{method}: {err}");
        assert!(conn.requests().is_empty());
    }
}

/// A reply a fallback connection gave (`ChatResponse::connection`) is the program's
/// `Response.connection`, and its usage and cost are counted for that connection, not for
/// the one the agent names.
#[test]
fn a_fallbacks_reply_names_its_connection_and_is_counted_for_it() {
    use concerto_runtime::vm::host::ChatResponse;
    let mut reply: ChatResponse = text("Teal").expect("a reply");
    reply.connection = Some("backup".into());
    reply.cost_usd = Some(0.25);
    let refused = || {
        Err(HostError::failed(
            "connection 'llm': HTTP 400 after 1 attempt",
        ))
    };
    let conn = Scripted::new(vec![Ok(reply), refused(), refused(), refused()]);
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/shapes.conc-ir"))
        .expect("program");
    let c: Arc<dyn Connections> = conn.clone();
    let mut rt = concerto_runtime::Runtime::builder()
        .connections(c)
        .build()
        .expect("builds");
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let kept = seen.clone();
    rt.on("response", move |payload: concerto_runtime::Value| {
        kept.lock().push(payload.to_json());
    });
    rt.load_ir_bytes(&bytes).expect("loads");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(rt.execute()).expect("runs");
    assert_eq!(seen.lock()[0]["connection"], json!("backup"));
    let m = rt.metrics();
    let backup = &m.llm.by_connection["backup"];
    assert_eq!((backup.requests, backup.cost_usd), (1, 0.25));
    assert_eq!(m.tokens_by_connection("backup"), 16);
    assert_eq!(
        m.llm.by_connection.get("llm").map_or(0, |c| c.requests),
        0,
        "the named connection did not answer"
    );
    assert_eq!(m.llm.by_agent["Writer"].requests, 1);
}
