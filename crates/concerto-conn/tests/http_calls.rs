//! Calls through `HttpConnections` against the in-process mock provider: request shapes,
//! URLs, keys, models, streaming, tools and structured output.

use std::sync::Arc;

use crate::support::server::{
    MockServer, Step, anthropic_stream, openai_stream, openai_tool_stream,
};
use crate::support::{env, one, program, request};
use concerto_conn::{ConnectionSettings, HttpConnections, Price, PriceTable};
use concerto_vm::host::{
    ChatMessage, ConnectionId, Connections, HostErrorKind, ResponseSchema, ToolCall, ToolSpec,
};
use serde_json::json;

const KEY: &str = "sk-test-0123456789";

fn openai_config(base: &str) -> serde_json::Value {
    json!({"provider": "openai", "api_key_env": "OPENAI_API_KEY", "base_url": base,
           "default_model": "gpt-4o-mini"})
}

fn anthropic_config(base: &str) -> serde_json::Value {
    json!({"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY", "base_url": base,
           "default_model": "claude-sonnet-4-20250514"})
}

fn conns() -> HttpConnections {
    HttpConnections::new().with_env(env(&[("OPENAI_API_KEY", KEY), ("ANTHROPIC_API_KEY", KEY)]))
}

fn tally_add() -> ToolSpec {
    ToolSpec {
        name: "Tally::add".into(),
        description: "Add two numbers".into(),
        parameters: json!({"type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"]}),
    }
}

#[tokio::test]
async fn openai_plain_call_sends_the_documented_request() {
    let server = MockServer::start().await;
    server.script([Step::openai_text("Hello there")]);
    let program = one("openai", openai_config(&server.base_v1()));
    let mut prices = PriceTable::empty();
    prices.set(
        "gpt-4o-mini",
        Price {
            input: 1.0,
            cached_input: 0.5,
            output: 2.0,
        },
    );
    let conns = conns().with_prices(prices);
    let mut req = request(Some("gpt-4o"), "Say hi");
    req.temperature = Some(0.25);
    req.max_tokens = Some(50);
    let resp = conns.chat(&program, ConnectionId(0), req).await.unwrap();

    assert_eq!(resp.text, "Hello there");
    assert_eq!(resp.model, "gpt-4o-mini", "the model the reply names");
    assert_eq!(resp.provider, "openai");
    assert_eq!(resp.usage.input_tokens, 11);
    assert_eq!(resp.usage.output_tokens, 7);
    assert!(!resp.usage.estimated);
    assert_eq!(resp.attempts, 1);
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    let cost = resp.cost_usd.unwrap();
    assert!((cost - 25.0e-6).abs() < 1e-9, "{cost}");

    let got = server.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.header("authorization"), Some(&*format!("Bearer {KEY}")));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("concerto/"));
    assert_eq!(r.header("x-api-key"), None);
    assert_eq!(r.body["model"], "gpt-4o");
    assert_eq!(
        r.body["messages"],
        json!([{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "Say hi"}])
    );
    assert_eq!(r.body["temperature"], 0.25);
    assert_eq!(r.body["max_tokens"], 50);
    assert!(r.body.get("stream").is_none());
    assert!(r.body.get("tools").is_none());
}

#[tokio::test]
async fn anthropic_plain_call_sends_the_documented_request() {
    let server = MockServer::start().await;
    server.script([Step::anthropic_text("Bonjour")]);
    // Base URL without `/v1`: the layer adds it.
    let program = one("claude", anthropic_config(&server.base()));
    let mut req = request(None, "Greet me");
    req.temperature = Some(0.5);
    req.max_tokens = Some(300);
    let resp = conns().chat(&program, ConnectionId(0), req).await.unwrap();
    assert_eq!(resp.text, "Bonjour");
    assert_eq!(resp.provider, "anthropic");
    assert_eq!(resp.model, "claude-sonnet-4-20250514");
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (13, 5));
    assert_eq!(resp.finish_reason.as_deref(), Some("end_turn"));

    let r = &server.requests()[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.body["model"], "claude-sonnet-4-20250514");
    assert_eq!(r.body["system"], "Be brief.");
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": "Greet me"}])
    );
    assert_eq!(r.body["max_tokens"], 300);
    assert_eq!(r.body["temperature"], 0.5);
}

#[tokio::test]
async fn base_url_with_or_without_v1_and_trailing_slash() {
    let server = MockServer::start().await;
    let bases = [
        server.base(),
        server.base_v1(),
        format!("{}/", server.base()),
        format!("{}/", server.base_v1()),
    ];
    for base in &bases {
        server.script([Step::openai_text("ok")]);
        let program = one("openai", openai_config(base));
        conns()
            .chat(&program, ConnectionId(0), request(None, "x"))
            .await
            .unwrap();
    }
    // A host override of the base URL wins over the program's.
    server.script([Step::openai_text("ok")]);
    let program = one("openai", openai_config("https://api.example.invalid/v1"));
    let conns = conns().with_settings(
        "openai",
        ConnectionSettings {
            base_url: Some(server.base()),
            ..ConnectionSettings::default()
        },
    );
    conns
        .chat(&program, ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/v1/chat/completions"; 5]);
}

#[tokio::test]
async fn extra_headers_organization_and_project() {
    let server = MockServer::start().await;
    server.script([Step::openai_text("ok")]);
    let mut config = openai_config(&server.base());
    config["organization"] = json!("org-1");
    config["project"] = json!("proj-2");
    config["headers"] = json!({"X-Team": "research"});
    let conns = conns().with_settings(
        "openai",
        ConnectionSettings {
            headers: vec![("X-Trace".into(), "t-9".into())],
            ..ConnectionSettings::default()
        },
    );
    conns
        .chat(&one("openai", config), ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("openai-organization"), Some("org-1"));
    assert_eq!(r.header("openai-project"), Some("proj-2"));
    assert_eq!(r.header("x-team"), Some("research"));
    assert_eq!(r.header("x-trace"), Some("t-9"));
}

#[tokio::test]
async fn openai_stream_assembles_text_and_usage() {
    let server = MockServer::start().await;
    server.script([Step::sse(openai_stream(&["Hel", "lo, ", "world"], 9, 3))]);
    let program = one("openai", openai_config(&server.base()));
    let mut req = request(None, "stream please");
    req.stream = Some(true);
    let resp = conns().chat(&program, ConnectionId(0), req).await.unwrap();
    assert_eq!(resp.text, "Hello, world");
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (9, 3));
    assert!(!resp.usage.estimated);
    assert_eq!(resp.finish_reason.as_deref(), Some("stop"));
    let r = &server.requests()[0];
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stream_options"]["include_usage"], true);
    assert_eq!(r.header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn a_stream_held_open_after_its_end_marker_still_returns() {
    let server = MockServer::start().await;
    // The whole stream in one chunk, then the server keeps the response open for 3 s.
    let mut step = Step::sse(vec![
        openai_stream(&["done"], 2, 1).concat(),
        ": keep-alive\n\n".to_string(),
    ]);
    if let crate::support::server::Body::Sse { gap, .. } = &mut step.body {
        *gap = std::time::Duration::from_secs(3);
    }
    server.script([step]);
    let program = one("openai", openai_config(&server.base()));
    let mut req = request(None, "x");
    req.stream = Some(true);
    let started = std::time::Instant::now();
    let resp = conns().chat(&program, ConnectionId(0), req).await.unwrap();
    assert_eq!(resp.text, "done");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
}

#[tokio::test]
async fn openai_stream_tool_call_from_connection_setting() {
    let server = MockServer::start().await;
    server.script([Step::sse(openai_tool_stream(
        "Tally__add",
        "call_7",
        ("{\"a\": 2,", " \"b\": 5}"),
    ))]);
    let program = one("openai", openai_config(&server.base()));
    // The connection streams; the request does not say.
    let conns = conns().with_settings(
        "openai",
        ConnectionSettings {
            stream: Some(true),
            ..ConnectionSettings::default()
        },
    );
    let mut req = request(None, "add 2 and 5");
    req.tools = vec![tally_add()];
    let resp = conns.chat(&program, ConnectionId(0), req).await.unwrap();
    assert_eq!(
        resp.tool_calls,
        vec![ToolCall {
            id: "call_7".into(),
            name: "Tally::add".into(),
            arguments: json!({"a": 2, "b": 5})
        }]
    );
    assert_eq!(resp.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (20, 9));
    assert_eq!(server.requests()[0].body["stream"], true);
}

#[tokio::test]
async fn anthropic_stream_text_tool_call_and_usage() {
    let server = MockServer::start().await;
    server.script([Step::sse(anthropic_stream(
        &["Let me ", "add."],
        Some(("Tally__add", "toolu_1", ("{\"a\": 1,", " \"b\": 2}"))),
        30,
        12,
    ))]);
    let program = one("claude", anthropic_config(&server.base_v1()));
    let mut req = request(None, "add");
    req.tools = vec![tally_add()];
    req.stream = Some(true);
    let resp = conns().chat(&program, ConnectionId(0), req).await.unwrap();
    assert_eq!(resp.text, "Let me add.");
    assert_eq!(resp.tool_calls.len(), 1);
    assert_eq!(resp.tool_calls[0].name, "Tally::add");
    assert_eq!(resp.tool_calls[0].id, "toolu_1");
    assert_eq!(resp.tool_calls[0].arguments, json!({"a": 1, "b": 2}));
    assert_eq!(
        (resp.usage.input_tokens, resp.usage.output_tokens),
        (30, 12)
    );
    let r = &server.requests()[0];
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["tools"][0]["name"], "Tally__add");
    assert!(r.body["tools"][0]["input_schema"].is_object());
}

#[tokio::test]
async fn tool_call_round_trip_maps_names_both_ways() {
    let server = MockServer::start().await;
    server.script([
        Step::json(
            200,
            json!({"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "content": null,
                        "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "Tally__add",
                                         "arguments": "{\"a\": 1, \"b\": 2}"}}]}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}),
        ),
        Step::openai_text("The sum is 3."),
    ]);
    let program = one("openai", openai_config(&server.base()));
    let conns = conns();
    let mut first = request(None, "What is 1 + 2?");
    first.tools = vec![tally_add()];
    let resp = conns
        .chat(&program, ConnectionId(0), first.clone())
        .await
        .unwrap();
    assert_eq!(resp.tool_calls.len(), 1);
    assert_eq!(resp.tool_calls[0].name, "Tally::add");
    assert_eq!(resp.tool_calls[0].arguments, json!({"a": 1, "b": 2}));

    let mut second = first;
    second.messages.push(ChatMessage::assistant_tool_calls(
        "",
        resp.tool_calls.clone(),
    ));
    second
        .messages
        .push(ChatMessage::tool_result("call_1", "Tally::add", "3"));
    let resp = conns.chat(&program, ConnectionId(0), second).await.unwrap();
    assert_eq!(resp.text, "The sum is 3.");

    let got = server.requests();
    assert_eq!(got[0].body["tools"][0]["function"]["name"], "Tally__add");
    let messages = got[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["name"],
        "Tally__add"
    );
    assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], "call_1");
    assert_eq!(messages[3]["content"], "3");
}

fn verdict_schema() -> ResponseSchema {
    ResponseSchema {
        name: "Verdict".into(),
        schema: json!({"type": "object", "properties": {"label": {"type": "string"}},
                       "required": ["label"], "additionalProperties": false}),
    }
}

#[tokio::test]
async fn structured_output_request_shapes() {
    let server = MockServer::start().await;
    // OpenAI: response_format json_schema.
    server.script([Step::openai_text("{\"label\": \"yes\"}")]);
    let mut req = request(None, "judge");
    req.response_schema = Some(verdict_schema());
    let resp = conns()
        .chat(
            &one("openai", openai_config(&server.base())),
            ConnectionId(0),
            req.clone(),
        )
        .await
        .unwrap();
    assert_eq!(resp.text, "{\"label\": \"yes\"}");
    let body = &server.requests()[0].body;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(
        body["response_format"]["json_schema"]["schema"],
        verdict_schema().schema
    );

    // Anthropic, default: native output_config.
    server.script([Step::anthropic_text("{\"label\": \"no\"}")]);
    let claude = one("claude", anthropic_config(&server.base()));
    conns()
        .chat(&claude, ConnectionId(0), req.clone())
        .await
        .unwrap();
    let body = &server.requests()[1].body;
    assert_eq!(body["output_config"]["format"]["type"], "json_schema");
    assert_eq!(
        body["output_config"]["format"]["schema"],
        verdict_schema().schema
    );

    // Anthropic through a forced tool: the tool's input comes back as the text.
    server.script([Step::json(
        200,
        json!({"id": "m", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-20250514", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_9", "name": "Verdict",
                         "input": {"label": "maybe"}}],
            "usage": {"input_tokens": 3, "output_tokens": 4}}),
    )]);
    let conns = conns().with_settings(
        "claude",
        ConnectionSettings {
            anthropic_structured: Some(concerto_conn::wire::AnthropicStructured::Tool),
            ..ConnectionSettings::default()
        },
    );
    let resp = conns.chat(&claude, ConnectionId(0), req).await.unwrap();
    let text: serde_json::Value = serde_json::from_str(&resp.text).unwrap();
    assert_eq!(text, json!({"label": "maybe"}));
    assert!(resp.tool_calls.is_empty());
    let body = &server.requests()[2].body;
    assert_eq!(body["tool_choice"]["type"], "tool");
    assert_eq!(body["tools"][0]["name"], body["tool_choice"]["name"]);
}

#[tokio::test]
async fn models_aliases_defaults_and_the_missing_model_error() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok"));
    let mut config = openai_config(&server.base());
    config["models"] = json!({"fast": "gpt-4o-mini", "smart": "gpt-4o"});
    config["default_model"] = json!("smart");
    let program = one("openai", config.clone());
    let conns = conns();
    for (asked, sent) in [
        (Some("fast"), "gpt-4o-mini"),
        (Some("o3"), "o3"),
        (None, "gpt-4o"),
    ] {
        conns
            .chat(&program, ConnectionId(0), request(asked, "x"))
            .await
            .unwrap();
        assert_eq!(server.requests().last().unwrap().body["model"], sent);
    }
    // The host's default model wins over the program's.
    let conns = conns.with_settings(
        "openai",
        ConnectionSettings {
            default_model: Some("fast".into()),
            ..ConnectionSettings::default()
        },
    );
    conns
        .chat(&program, ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    assert_eq!(
        server.requests().last().unwrap().body["model"],
        "gpt-4o-mini"
    );

    // No model anywhere: an error naming the agent and the connection, and no request.
    let before = server.count();
    let mut bare = config;
    bare.as_object_mut().unwrap().remove("default_model");
    let err = self::conns()
        .chat(&one("openai", bare), ConnectionId(0), request(None, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("agent 'Agent'"), "{}", err.message);
    assert!(
        err.message.contains("connection 'openai'"),
        "{}",
        err.message
    );
    assert!(err.message.contains("default_model"), "{}", err.message);
    assert_eq!(server.count(), before);
}

#[tokio::test]
async fn missing_api_key_fails_before_any_request_and_names_the_variable() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("should not be asked"));
    let no_env = HttpConnections::new().with_env(env(&[]));
    let err = no_env
        .chat(
            &one("openai", openai_config(&server.base())),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.message,
        "connection 'openai': API key not found: environment variable OPENAI_API_KEY is not set"
    );
    // `{"$env": VAR}` and the provider's default variable are named the same way.
    let mut config = anthropic_config(&server.base());
    config["api_key"] = json!({"$env": "MY_CLAUDE_KEY"});
    let err = no_env
        .chat(&one("claude", config), ConnectionId(0), request(None, "x"))
        .await
        .unwrap_err();
    assert!(err.message.contains("MY_CLAUDE_KEY"), "{}", err.message);
    let err = no_env
        .chat(
            &one(
                "anthropic",
                json!({"provider": "anthropic", "base_url": server.base(), "default_model": "m"}),
            ),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("ANTHROPIC_API_KEY"), "{}", err.message);
    assert_eq!(server.count(), 0, "no request may be made without a key");

    // The same connections work once a key is given (literal in the config).
    let mut config = openai_config(&server.base());
    config["api_key"] = json!("sk-literal-key");
    no_env
        .chat(&one("openai", config), ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer sk-literal-key")
    );
}

#[tokio::test]
async fn ollama_and_compatible_servers_run_without_a_key() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("local"));
    let no_env = HttpConnections::new().with_env(env(&[]));
    let ollama = one(
        "local",
        json!({"provider": "ollama", "base_url": server.base(), "default_model": "llama3.1"}),
    );
    let resp = no_env
        .chat(&ollama, ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    assert_eq!(resp.text, "local");
    assert_eq!(resp.provider, "ollama");
    let custom = one(
        "vllm",
        json!({"provider": "vllm", "base_url": server.base_v1(), "default_model": "qwen",
               "api_key_env": "VLLM_KEY"}),
    );
    no_env
        .chat(&custom, ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    for r in server.requests() {
        assert_eq!(r.path, "/v1/chat/completions");
        assert_eq!(r.header("authorization"), None);
    }
    // A compatible server without a base URL cannot be guessed.
    let err = no_env
        .chat(
            &one("x", json!({"provider": "together", "default_model": "m"})),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("base_url"), "{}", err.message);
}

#[tokio::test]
async fn mock_provider_setting_and_non_llm_connections() {
    let server = MockServer::start().await;
    let program = program(json!([
        {"name": "openai", "config": openai_config(&server.base())},
        {"name": "Git", "config": {"type": "mcp", "transport": "stdio", "command": "git-mcp"}}
    ]));
    let conns = HttpConnections::new().with_env(env(&[])).with_settings(
        "openai",
        ConnectionSettings {
            provider: Some("mock".into()),
            ..ConnectionSettings::default()
        },
    );
    let resp = conns
        .chat(
            &program,
            ConnectionId(0),
            request(Some("gpt-4o"), "hello mock"),
        )
        .await
        .unwrap();
    assert_eq!(resp.provider, "mock");
    assert!(resp.text.contains("hello mock"), "{}", resp.text);
    assert_eq!(server.count(), 0);

    let err = conns
        .chat(&program, ConnectionId(1), request(None, "x"))
        .await
        .unwrap_err();
    assert!(err.message.contains("connection 'Git'"), "{}", err.message);
    assert!(err.message.contains("MCP"), "{}", err.message);
    let err = conns
        .chat(&program, ConnectionId(7), request(None, "x"))
        .await
        .unwrap_err();
    assert!(err.message.contains("#7"), "{}", err.message);
}

#[tokio::test]
async fn invalid_configuration_is_reported_clearly() {
    let conns = HttpConnections::new().with_env(env(&[("K", "v-secret-value")]));
    let cases = [
        (
            json!({"provider": "openai", "api_key_env": "K", "base_url": "ftp://x", "default_model": "m"}),
            "http://",
        ),
        (
            json!({"provider": "openai", "api_key_env": "K", "timeout": -3, "default_model": "m"}),
            "timeout",
        ),
        (
            json!({"provider": "openai", "api_key_env": "K", "retry": {"backoff": "sometimes"}, "default_model": "m"}),
            "retry.backoff",
        ),
        (
            json!({"provider": "openai", "api_key_env": "K", "rate_limit": {"requests_per_minute": 0}, "default_model": "m"}),
            "requests_per_minute",
        ),
        (
            json!({"provider": "openai", "api_key_env": "K", "headers": {"X": 3}, "default_model": "m"}),
            "header `X`",
        ),
    ];
    for (config, needle) in cases {
        let err = conns
            .chat(
                &one("bad", config.clone()),
                ConnectionId(0),
                request(None, "x"),
            )
            .await
            .unwrap_err();
        assert!(
            err.message.starts_with("connection 'bad': ") && err.message.contains(needle),
            "{config}: {}",
            err.message
        );
    }
}

#[test]
fn one_instance_serves_many_runtimes_as_a_shared_trait_object() {
    // Built outside any runtime, used from two.
    let shared: Arc<dyn Connections> = Arc::new(conns());
    for _ in 0..2 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::clone(&shared);
        rt.block_on(async move {
            let server = MockServer::start().await;
            server.script([Step::openai_text("hi")]);
            let program = one("openai", openai_config(&server.base()));
            let resp = shared
                .chat(&program, ConnectionId(0), request(None, "x"))
                .await
                .unwrap();
            assert_eq!(resp.text, "hi");
        });
    }
}

/// A key variable the host's approval refuses is never read (the lookup is not even asked)
/// and nothing is sent; an approved one is read and sent.
#[tokio::test]
async fn a_key_variable_outside_the_hosts_approval_is_refused_before_it_is_read() {
    let server = MockServer::start().await;
    server.respond_with(|_| Step::openai_text("ok"));
    let asked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    let lookup: Arc<concerto_conn::EnvLookup> = Arc::new(move |name: &str| {
        log.lock().push(name.to_string());
        Some(format!("value-of-{name}"))
    });
    let conns = HttpConnections::new()
        .with_env(lookup)
        .with_key_approval(Arc::new(|name: &str| name == "APPROVED_KEY"));
    let config = |variable: &str| {
        one(
            "c",
            json!({"provider": "openai", "base_url": server.base(), "default_model": "m",
                   "api_key": {"$env": variable}}),
        )
    };
    let err = conns
        .chat(
            &config("MY_AWS_SECRET"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotEnabled, "{}", err.message);
    assert!(err.message.contains("MY_AWS_SECRET"), "{}", err.message);
    assert!(err.message.contains("--allow-env"), "{}", err.message);
    assert!(asked.lock().is_empty(), "the refused variable was read");
    assert!(server.requests().is_empty());
    conns
        .chat(&config("APPROVED_KEY"), ConnectionId(0), request(None, "x"))
        .await
        .unwrap();
    assert_eq!(*asked.lock(), ["APPROVED_KEY"]);
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer value-of-APPROVED_KEY")
    );
    // The provider's own conventional variable needs no approval; another provider's does.
    let conventional = |provider: &str, variable: &str| {
        one(
            "c",
            json!({"provider": provider, "base_url": server.base(), "default_model": "m",
                   "api_key_env": variable}),
        )
    };
    conns
        .chat(
            &conventional("openai", "OPENAI_API_KEY"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap();
    assert_eq!(
        server.requests()[1].header("authorization"),
        Some("Bearer value-of-OPENAI_API_KEY")
    );
    let err = conns
        .chat(
            &conventional("openai", "ANTHROPIC_API_KEY"),
            ConnectionId(0),
            request(None, "x"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, HostErrorKind::NotEnabled, "{}", err.message);
    assert!(err.message.contains("ANTHROPIC_API_KEY"), "{}", err.message);
    assert_eq!(*asked.lock(), ["APPROVED_KEY", "OPENAI_API_KEY"]);
    assert_eq!(server.requests().len(), 2);
}

/// A request whose tool result carries a PNG.
fn with_tool_image() -> concerto_vm::host::ChatRequest {
    let mut req = request(None, "What is in the picture?");
    req.tools = vec![tally_add()];
    req.messages.push(ChatMessage::assistant_tool_calls(
        "",
        vec![ToolCall {
            id: "call_1".into(),
            name: "Tally::add".into(),
            arguments: json!({"a": 1, "b": 2}),
        }],
    ));
    let mut result = ChatMessage::tool_result("call_1", "Tally::add", "3 [image (image/png)]");
    result.images = vec![concerto_vm::host::ImagePart {
        mime_type: "image/png".into(),
        data: "iVBORw0KGgoIMAGEBYTES".into(),
    }];
    req.messages.push(result);
    req
}

/// The image of a tool result reaches each provider's API in its own form, and an
/// OpenAI-compatible server of another provider gets the placeholder only.
#[tokio::test]
async fn a_tool_results_image_reaches_the_provider_in_its_form() {
    let server = MockServer::start().await;
    server.script([
        Step::openai_text("a dot"),
        Step::anthropic_text("a dot"),
        Step::openai_text("a dot"),
    ]);
    let c = conns();
    for config in [
        openai_config(&server.base()),
        anthropic_config(&server.base()),
        json!({"provider": "ollama", "base_url": server.base(), "default_model": "llava"}),
    ] {
        c.chat(&one("c", config), ConnectionId(0), with_tool_image())
            .await
            .unwrap();
    }
    let requests = server.requests();
    let openai = &requests[0].body["messages"];
    let last = openai.as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "user");
    assert_eq!(
        last["content"][1]["image_url"]["url"],
        "data:image/png;base64,iVBORw0KGgoIMAGEBYTES"
    );
    let anthropic = &requests[1].body["messages"];
    let result = &anthropic.as_array().unwrap().last().unwrap()["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(
        result["content"][1]["source"]["data"],
        "iVBORw0KGgoIMAGEBYTES"
    );
    let other = requests[2].body.to_string();
    assert!(!other.contains("iVBORw0KGgoIMAGEBYTES"), "{other}");
    assert!(other.contains("[image (image/png)]"), "{other}");
}
