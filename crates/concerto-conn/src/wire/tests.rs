//! Tests of the wire formats.
//!
//! The `testdata/*.sse` and `*.json` bodies were captured from the shared test server
//! (`/work/shared/tools/mockllm.py`); the `_utf8_crlf` variants re-encode the same events
//! with raw UTF-8, CRLF line ends and comment lines, as real servers may send them.

use concerto_vm::host::{ChatMessage, ChatRequest, ResponseSchema, ToolCall, ToolSpec, Usage};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::sse::{SseEvent, SseParser};
use super::*;

const OPENAI_TEXT: &str = include_str!("testdata/openai_text.sse");
const OPENAI_TEXT_CRLF: &str = include_str!("testdata/openai_text_utf8_crlf.sse");
const OPENAI_TOOLS: &str = include_str!("testdata/openai_tools.sse");
const OPENAI_TOOLS_BODY: &str = include_str!("testdata/openai_tools.json");
const ANTHROPIC_TEXT: &str = include_str!("testdata/anthropic_text.sse");
const ANTHROPIC_TEXT_CRLF: &str = include_str!("testdata/anthropic_text_utf8_crlf.sse");
const ANTHROPIC_TOOLS: &str = include_str!("testdata/anthropic_tools.sse");
const ANTHROPIC_TOOLS_BODY: &str = include_str!("testdata/anthropic_tools.json");

const MOCK_TEXT: &str = "Héllo wörld ☕ 日本語 — fine.";

fn tool(name: &str) -> ToolSpec {
    ToolSpec {
        name: name.to_string(),
        description: format!("the {name} tool"),
        parameters: json!({"type": "object", "properties": {"a": {"type": "integer"}}}),
    }
}

fn tally_names() -> ToolNames {
    ToolNames::new(&[tool("Tally::add"), tool("Tally::total")])
}

fn body(provider: Provider, request: &ChatRequest, model: &str, stream: bool) -> Value {
    let names = ToolNames::for_request(request, provider, AnthropicStructured::default());
    request_body(
        provider,
        &Outgoing {
            model,
            request,
            stream,
            names: &names,
            anthropic_structured: AnthropicStructured::default(),
            images: true,
        },
    )
}

fn body_with(
    provider: Provider,
    request: &ChatRequest,
    structured: AnthropicStructured,
) -> (Value, ToolNames) {
    let names = ToolNames::for_request(request, provider, structured);
    let value = request_body(
        provider,
        &Outgoing {
            model: "claude-sonnet-4-20250514",
            request,
            stream: false,
            names: &names,
            anthropic_structured: structured,
            images: true,
        },
    );
    (value, names)
}

/// A conversation with a system prompt, a tool round (two calls, two results) and a
/// follow-up question.
fn tool_conversation() -> ChatRequest {
    let mut request = ChatRequest::new(
        "Clerk",
        Some("gpt-4o".into()),
        vec![
            ChatMessage::new("system", "You keep the tally."),
            ChatMessage::new("user", "Add 1 and 2, then give the total."),
            ChatMessage::assistant_tool_calls(
                "Working on it.",
                vec![
                    ToolCall {
                        id: "call_1".into(),
                        name: "Tally::add".into(),
                        arguments: json!({"a": 1, "b": 2}),
                    },
                    ToolCall {
                        id: "call_2".into(),
                        name: "Tally::total".into(),
                        arguments: json!({}),
                    },
                ],
            ),
            ChatMessage::tool_result("call_1", "Tally::add", "3"),
            ChatMessage::tool_result("call_2", "Tally::total", "3"),
            ChatMessage::new("user", "And now?"),
        ],
    );
    request.tools = vec![tool("Tally::add"), tool("Tally::total")];
    request.temperature = Some(0.25);
    request.max_tokens = Some(300);
    request
}

fn ship_schema() -> ResponseSchema {
    ResponseSchema {
        name: "Ship Report".into(),
        schema: json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "crew": {"type": "integer"}},
            "required": ["name", "crew"],
            "additionalProperties": false
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Providers and request bodies
// ---------------------------------------------------------------------------------------

#[test]
fn provider_names_and_endpoints() {
    assert_eq!(Provider::OpenAi.name(), "openai");
    assert_eq!(Provider::Anthropic.name(), "anthropic");
    assert_eq!(Provider::OpenAi.endpoint(), "chat/completions");
    assert_eq!(Provider::Anthropic.endpoint(), "messages");
    assert_eq!(
        AnthropicStructured::default(),
        AnthropicStructured::OutputConfig
    );
    assert_eq!(
        AnthropicStructured::from_name("tool"),
        Some(AnthropicStructured::Tool)
    );
    assert_eq!(
        AnthropicStructured::from_name("prompt"),
        Some(AnthropicStructured::Prompt)
    );
    assert_eq!(
        AnthropicStructured::from_name("output_config"),
        Some(AnthropicStructured::OutputConfig)
    );
    assert_eq!(AnthropicStructured::from_name("json"), None);
}

#[test]
fn openai_plain_request() {
    let mut request = ChatRequest::new(
        "Poet",
        None,
        vec![
            ChatMessage::new("system", "You write haiku."),
            ChatMessage::new("user", "Fog"),
        ],
    );
    request.temperature = Some(0.3);
    request.max_tokens = Some(128);
    let value = body(Provider::OpenAi, &request, "gpt-4o", false);
    assert_eq!(
        value,
        json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You write haiku."},
                {"role": "user", "content": "Fog"}
            ],
            "temperature": 0.3,
            "max_tokens": 128
        })
    );
}

#[test]
fn openai_reasoning_models_take_max_completion_tokens() {
    let mut request = ChatRequest::new("A", None, vec![ChatMessage::new("user", "hi")]);
    request.max_tokens = Some(50);
    for model in [
        "o1",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "openai/o3",
    ] {
        let value = body(Provider::OpenAi, &request, model, false);
        assert_eq!(value["max_completion_tokens"], json!(50), "{model}");
        assert!(value.get("max_tokens").is_none(), "{model}");
    }
    for model in ["gpt-4o", "gpt-4.1-mini", "llama3.1", "qwen2.5"] {
        let value = body(Provider::OpenAi, &request, model, false);
        assert_eq!(value["max_tokens"], json!(50), "{model}");
        assert!(value.get("max_completion_tokens").is_none(), "{model}");
    }
    request.max_tokens = None;
    let value = body(Provider::OpenAi, &request, "o3", false);
    assert!(value.get("max_tokens").is_none() && value.get("max_completion_tokens").is_none());
}

#[test]
fn openai_tool_turns_tools_schema_and_stream() {
    let mut request = tool_conversation();
    request.response_schema = Some(ship_schema());
    let value = body(Provider::OpenAi, &request, "gpt-4o", true);
    assert_eq!(
        value["messages"],
        json!([
            {"role": "system", "content": "You keep the tally."},
            {"role": "user", "content": "Add 1 and 2, then give the total."},
            {"role": "assistant", "content": "Working on it.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "Tally__add", "arguments": "{\"a\":1,\"b\":2}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "Tally__total", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "3"},
            {"role": "tool", "tool_call_id": "call_2", "content": "3"},
            {"role": "user", "content": "And now?"}
        ])
    );
    assert_eq!(
        value["tools"][0],
        json!({"type": "function", "function": {
            "name": "Tally__add",
            "description": "the Tally::add tool",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}
        }})
    );
    assert_eq!(value["tools"][1]["function"]["name"], json!("Tally__total"));
    assert_eq!(
        value["response_format"],
        json!({"type": "json_schema", "json_schema": {
            "name": "Ship_Report", "schema": ship_schema().schema, "strict": true
        }})
    );
    assert_eq!(value["stream"], json!(true));
    assert_eq!(value["stream_options"], json!({"include_usage": true}));
    assert_eq!(value["temperature"], json!(0.25));
    assert_eq!(value["max_tokens"], json!(300));

    let value = body(Provider::OpenAi, &request, "gpt-4o", false);
    assert!(value.get("stream").is_none() && value.get("stream_options").is_none());
}

#[test]
fn openai_assistant_tool_turn_without_text_has_null_content() {
    let request = ChatRequest::new(
        "A",
        None,
        vec![ChatMessage::assistant_tool_calls(
            "",
            vec![ToolCall {
                id: "c".into(),
                name: "Gone::tool".into(),
                arguments: Value::String("{not json".into()),
            }],
        )],
    );
    let value = body(Provider::OpenAi, &request, "gpt-4o", false);
    let turn = &value["messages"][0];
    assert_eq!(turn["content"], Value::Null);
    // A tool no longer offered still gets a legal name; raw arguments go back unchanged.
    assert_eq!(
        turn["tool_calls"][0]["function"]["name"],
        json!("Gone__tool")
    );
    assert_eq!(
        turn["tool_calls"][0]["function"]["arguments"],
        json!("{not json")
    );
}

#[test]
fn tool_without_parameters_gets_an_object_schema() {
    let mut request = ChatRequest::new("A", None, vec![ChatMessage::new("user", "x")]);
    request.tools = vec![ToolSpec {
        name: "Clock::now".into(),
        description: String::new(),
        parameters: Value::Null,
    }];
    let value = body(Provider::OpenAi, &request, "gpt-4o", false);
    assert_eq!(
        value["tools"][0]["function"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    let value = body(Provider::Anthropic, &request, "claude-sonnet-4", false);
    assert_eq!(
        value["tools"][0]["input_schema"],
        json!({"type": "object", "properties": {}})
    );
}

#[test]
fn anthropic_plain_request() {
    let request = ChatRequest::new(
        "Cartographer",
        None,
        vec![
            ChatMessage::new("system", "You catalogue old maps."),
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Describe the 1820 chart"),
        ],
    );
    let value = body(
        Provider::Anthropic,
        &request,
        "claude-sonnet-4-20250514",
        false,
    );
    assert_eq!(
        value,
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 4096,
            "system": "You catalogue old maps.\n\nBe brief.",
            "messages": [{"role": "user", "content": "Describe the 1820 chart"}]
        })
    );
    let mut request = request;
    request.max_tokens = Some(256);
    request.temperature = Some(0.5);
    let value = body(
        Provider::Anthropic,
        &request,
        "claude-sonnet-4-20250514",
        true,
    );
    assert_eq!(value["max_tokens"], json!(256));
    assert_eq!(value["temperature"], json!(0.5));
    assert_eq!(value["stream"], json!(true));
    assert!(value.get("stream_options").is_none());
}

#[test]
fn anthropic_tool_turns_group_results_into_one_user_turn() {
    let request = tool_conversation();
    let value = body(
        Provider::Anthropic,
        &request,
        "claude-sonnet-4-20250514",
        false,
    );
    assert_eq!(value["system"], json!("You keep the tally."));
    assert_eq!(
        value["messages"],
        json!([
            {"role": "user", "content": "Add 1 and 2, then give the total."},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Working on it."},
                {"type": "tool_use", "id": "call_1", "name": "Tally__add", "input": {"a": 1, "b": 2}},
                {"type": "tool_use", "id": "call_2", "name": "Tally__total", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "3"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "3"}
            ]},
            {"role": "user", "content": "And now?"}
        ])
    );
    assert_eq!(
        value["tools"],
        json!([
            {"name": "Tally__add", "description": "the Tally::add tool",
             "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
            {"name": "Tally__total", "description": "the Tally::total tool",
             "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
        ])
    );
    assert_eq!(value["max_tokens"], json!(300));
    assert!(value.get("tool_choice").is_none());
}

#[test]
fn anthropic_tool_use_without_text_and_non_object_arguments() {
    let request = ChatRequest::new(
        "A",
        None,
        vec![
            ChatMessage::assistant_tool_calls(
                "",
                vec![ToolCall {
                    id: "t1".into(),
                    name: "Tally::add".into(),
                    arguments: Value::String("oops".into()),
                }],
            ),
            ChatMessage::tool_result("t1", "Tally::add", "error"),
        ],
    );
    let value = body(Provider::Anthropic, &request, "claude-haiku-4-5", false);
    assert_eq!(
        value["messages"][0]["content"],
        json!([{"type": "tool_use", "id": "t1", "name": "Tally__add", "input": {"value": "oops"}}])
    );
    assert_eq!(
        value["messages"][1]["content"][0]["tool_use_id"],
        json!("t1")
    );
}

#[test]
fn anthropic_structured_output_modes() {
    let mut request = ChatRequest::new(
        "Clerk",
        None,
        vec![
            ChatMessage::new("system", "Report ships."),
            ChatMessage::new("user", "The Albatross"),
        ],
    );
    request.response_schema = Some(ship_schema());

    let (value, _) = body_with(
        Provider::Anthropic,
        &request,
        AnthropicStructured::OutputConfig,
    );
    assert_eq!(
        value["output_config"],
        json!({"format": {"type": "json_schema", "schema": ship_schema().schema}})
    );
    assert!(value.get("tools").is_none() && value.get("tool_choice").is_none());
    assert_eq!(value["system"], json!("Report ships."));

    let (value, names) = body_with(Provider::Anthropic, &request, AnthropicStructured::Tool);
    assert_eq!(names.output_tool(), Some("Ship_Report"));
    assert_eq!(value["tools"][0]["name"], json!("Ship_Report"));
    assert_eq!(value["tools"][0]["input_schema"], ship_schema().schema);
    assert_eq!(
        value["tool_choice"],
        json!({"type": "tool", "name": "Ship_Report"})
    );
    assert!(value.get("output_config").is_none());

    let (value, _) = body_with(Provider::Anthropic, &request, AnthropicStructured::Prompt);
    let system = value["system"].as_str().unwrap();
    assert!(system.starts_with("Report ships.\n\n"), "{system}");
    assert!(
        system.contains("Ship Report") && system.contains("\"crew\""),
        "{system}"
    );
    assert!(value.get("output_config").is_none() && value.get("tools").is_none());

    // Tool mode with the agent's own tools: any tool may be called, the output tool last.
    request.tools = vec![tool("Tally::add")];
    let (value, names) = body_with(Provider::Anthropic, &request, AnthropicStructured::Tool);
    assert_eq!(value["tool_choice"], json!({"type": "any"}));
    assert_eq!(value["tools"][0]["name"], json!("Tally__add"));
    assert_eq!(
        value["tools"][1]["name"],
        json!(names.output_tool().unwrap())
    );
}

// ---------------------------------------------------------------------------------------
// Complete bodies
// ---------------------------------------------------------------------------------------

#[test]
fn openai_parse_text_with_cached_usage() {
    let raw = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello.", "refusal": null},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                  "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}}
    });
    let reply = parse_body(
        Provider::OpenAi,
        raw.to_string().as_bytes(),
        &ToolNames::default(),
    )
    .unwrap();
    assert_eq!(
        reply,
        Reply {
            text: "Hello.".into(),
            model: Some("gpt-4o-2024-08-06".into()),
            usage: Some(Usage {
                input_tokens: 2006,
                cached_tokens: 1920,
                output_tokens: 300,
                estimated: false
            }),
            tool_calls: vec![],
            finish_reason: Some("stop".into()),
        }
    );
}

#[test]
fn openai_parse_tool_calls_with_null_content() {
    let reply = parse_body(
        Provider::OpenAi,
        OPENAI_TOOLS_BODY.as_bytes(),
        &tally_names(),
    )
    .unwrap();
    assert_eq!(reply.text, "");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(reply.model.as_deref(), Some("gpt-4o"));
    assert_eq!(
        reply.tool_calls,
        vec![
            ToolCall {
                id: "call_mock5_0".into(),
                name: "Tally::add".into(),
                arguments: json!({"a": 1, "b": 2})
            },
            ToolCall {
                id: "call_mock5_1".into(),
                name: "Tally::total".into(),
                arguments: json!({})
            },
        ]
    );
    assert_eq!(
        reply.usage,
        Some(Usage {
            input_tokens: 3,
            cached_tokens: 0,
            output_tokens: 5,
            estimated: false
        })
    );
}

#[test]
fn openai_parse_keeps_unparsable_arguments_and_unknown_names() {
    let raw = json!({
        "choices": [{"message": {"content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "Tally__add", "arguments": "{\"a\": 1"}},
            {"type": "function", "function": {"name": "launch_missiles", "arguments": ""}},
            {"id": "c3", "type": "function", "function": {"name": "Tally__total", "arguments": {"x": 1}}}
        ]}, "finish_reason": "tool_calls"}]
    });
    let reply = parse_body(Provider::OpenAi, raw.to_string().as_bytes(), &tally_names()).unwrap();
    assert_eq!(reply.tool_calls[0].arguments, json!("{\"a\": 1"));
    assert_eq!(reply.tool_calls[0].name, "Tally::add");
    assert_eq!(reply.tool_calls[1].name, "launch_missiles");
    assert_eq!(reply.tool_calls[1].id, "call_1");
    assert_eq!(reply.tool_calls[1].arguments, json!({}));
    assert_eq!(reply.tool_calls[2].arguments, json!({"x": 1}));
    assert_eq!(reply.usage, None);
    assert_eq!(reply.model, None);
}

#[test]
fn openai_parse_refusal_and_content_parts() {
    let raw = json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that."},
                                  "finish_reason": "stop"}]});
    let reply = parse_body(
        Provider::OpenAi,
        raw.to_string().as_bytes(),
        &ToolNames::default(),
    )
    .unwrap();
    assert_eq!(reply.text, "I can't help with that.");
    let raw = json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]});
    let reply = parse_body(
        Provider::OpenAi,
        raw.to_string().as_bytes(),
        &ToolNames::default(),
    )
    .unwrap();
    assert_eq!(reply.text, "ab");
    assert_eq!(reply.finish_reason, None);
}

#[test]
fn openai_parse_errors() {
    let names = ToolNames::default();
    let malformed = br#"{"id": "broken", "choices": [{"message": {"content": "unterminated"#;
    assert!(matches!(
        parse_body(Provider::OpenAi, malformed, &names),
        Err(WireError::Malformed(m)) if m.contains("not valid JSON")
    ));
    assert!(matches!(
        parse_body(Provider::OpenAi, b"<html>Bad gateway</html>", &names),
        Err(WireError::Malformed(m)) if m.contains("Bad gateway")
    ));
    assert!(matches!(
        parse_body(Provider::OpenAi, b"[1, 2]", &names),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        parse_body(Provider::OpenAi, br#"{"id": "x", "object": "chat.completion"}"#, &names),
        Err(WireError::Malformed(m)) if m.contains("choices")
    ));
    assert!(matches!(
        parse_body(Provider::OpenAi, br#"{"choices": []}"#, &names),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        parse_body(Provider::OpenAi, br#"{"choices": [{"index": 0}]}"#, &names),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        parse_body(
            Provider::OpenAi,
            br#"{"choices": [{"message": {"tool_calls": [{"id": "a", "function": {}}]}}]}"#,
            &names
        ),
        Err(WireError::Malformed(m)) if m.contains("no function name")
    ));
    assert_eq!(
        parse_body(
            Provider::OpenAi,
            br#"{"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error"}}"#,
            &names
        ),
        Err(WireError::Provider("The model `gpt-9` does not exist".into()))
    );
    assert_eq!(
        parse_body(Provider::OpenAi, br#"{"error": "model not found"}"#, &names),
        Err(WireError::Provider("model not found".into()))
    );
}

#[test]
fn anthropic_parse_text_tools_and_cache_usage() {
    let reply = parse_body(
        Provider::Anthropic,
        ANTHROPIC_TOOLS_BODY.as_bytes(),
        &tally_names(),
    )
    .unwrap();
    assert_eq!(reply.text, "Let me add.");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(reply.model.as_deref(), Some("claude-sonnet-4-20250514"));
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "toolu_mock6_0".into(),
            name: "Tally::add".into(),
            arguments: json!({"a": 1, "b": 2})
        }]
    );

    let raw = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "Three "}, {"type": "text", "text": "seals."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 15, "cache_creation_input_tokens": 100,
                  "cache_read_input_tokens": 2000, "output_tokens": 3}
    });
    let reply = parse_body(
        Provider::Anthropic,
        raw.to_string().as_bytes(),
        &ToolNames::default(),
    )
    .unwrap();
    assert_eq!(reply.text, "Three seals.");
    assert_eq!(reply.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        reply.usage,
        Some(Usage {
            input_tokens: 2115,
            cached_tokens: 2000,
            output_tokens: 3,
            estimated: false
        })
    );
}

#[test]
fn anthropic_parse_output_tool_becomes_the_text() {
    let mut request = ChatRequest::new("A", None, vec![ChatMessage::new("user", "x")]);
    request.response_schema = Some(ship_schema());
    let names = ToolNames::for_request(&request, Provider::Anthropic, AnthropicStructured::Tool);
    let raw = json!({
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Here it is."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Ship_Report",
                     "input": {"name": "Albatross", "crew": 12}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 20}
    });
    let reply = parse_body(Provider::Anthropic, raw.to_string().as_bytes(), &names).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&reply.text).unwrap(),
        json!({"name": "Albatross", "crew": 12})
    );
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("end_turn"));
}

#[test]
fn anthropic_parse_errors() {
    let names = ToolNames::default();
    assert_eq!(
        parse_body(
            Provider::Anthropic,
            br#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
            &names
        ),
        Err(WireError::Provider("Overloaded".into()))
    );
    assert!(matches!(
        parse_body(Provider::Anthropic, br#"{"type": "message", "role": "assistant"}"#, &names),
        Err(WireError::Malformed(m)) if m.contains("content")
    ));
    assert!(matches!(
        parse_body(Provider::Anthropic, b"not json", &names),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        parse_body(
            Provider::Anthropic,
            br#"{"content": [{"type": "tool_use", "id": "t", "input": {}}]}"#,
            &names
        ),
        Err(WireError::Malformed(m)) if m.contains("no name")
    ));
}

// ---------------------------------------------------------------------------------------
// Error bodies and estimates
// ---------------------------------------------------------------------------------------

#[test]
fn error_messages_from_provider_bodies() {
    let openai = br#"{"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}"#;
    assert_eq!(
        error_message(Provider::OpenAi, 429, openai),
        "HTTP 429: Rate limit reached"
    );
    let anthropic =
        br#"{"type": "error", "error": {"type": "overloaded_error", "message": "The service is overloaded."}}"#;
    assert_eq!(
        error_message(Provider::Anthropic, 529, anthropic),
        "HTTP 529: The service is overloaded."
    );
    assert_eq!(
        error_message(
            Provider::OpenAi,
            404,
            br#"{"error": "model 'llama9' not found"}"#
        ),
        "HTTP 404: model 'llama9' not found"
    );
    assert_eq!(
        error_message(
            Provider::OpenAi,
            502,
            b"<html>\n  <body>Bad   gateway</body>\n</html>"
        ),
        "HTTP 502: <html> <body>Bad gateway</body> </html>"
    );
    assert_eq!(error_message(Provider::OpenAi, 503, b""), "HTTP 503");
    assert_eq!(
        error_message(
            Provider::OpenAi,
            400,
            br#"{"error": {"type": "invalid_request_error"}}"#
        ),
        "HTTP 400: invalid_request_error"
    );
    let long = "x".repeat(5000);
    let message = error_message(Provider::OpenAi, 500, long.as_bytes());
    assert!(message.chars().count() < 320, "{}", message.len());
    assert!(message.ends_with('…'));
    // Cut at a character boundary even inside multi-byte text.
    let message = error_message(Provider::OpenAi, 500, "é".repeat(1000).as_bytes());
    assert!(message.ends_with("é…"));
}

#[test]
fn error_messages_redact_key_like_words() {
    let body = br#"{"error": {"message": "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. You can find your key at https://platform.openai.com."}}"#;
    let message = error_message(Provider::OpenAi, 401, body);
    assert!(!message.contains("abcdefghijklmnop"), "{message}");
    assert!(message.contains("[redacted]"), "{message}");
    assert!(message.contains("platform.openai.com"), "{message}");
    let message = error_message(
        Provider::OpenAi,
        401,
        b"rejected header Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
    );
    assert!(!message.contains("abcdefghijklmnopqrstuvwxyz"), "{message}");
    assert!(redact_secrets("short sk-1 words stay").contains("sk-1"));
}

#[test]
fn token_estimates() {
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("a"), 1);
    assert_eq!(estimate_tokens("abcd"), 1);
    assert_eq!(estimate_tokens("abcde"), 2);
    assert_eq!(estimate_tokens("日本語"), 1);
    let request = ChatRequest::new(
        "A",
        None,
        vec![
            ChatMessage::new("system", "12345678"),
            ChatMessage::new("user", "1234"),
        ],
    );
    assert_eq!(
        estimate_usage(&request, "123456789"),
        Usage {
            input_tokens: 3,
            cached_tokens: 0,
            output_tokens: 3,
            estimated: true
        }
    );
    let usage = estimate_usage(&tool_conversation(), "");
    assert!(usage.input_tokens > 20 && usage.output_tokens == 0 && usage.estimated);
}

// ---------------------------------------------------------------------------------------
// SSE framing
// ---------------------------------------------------------------------------------------

fn sse_all(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, WireError> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out)?;
    }
    parser.finish(&mut out)?;
    Ok(out)
}

fn ev(event: &str, data: &str) -> SseEvent {
    SseEvent {
        event: event.into(),
        data: data.into(),
    }
}

#[test]
fn sse_fields_comments_and_line_ends() {
    let text = "\u{feff}: comment\nevent: a\ndata: one\ndata:two\ndata\n\n\
                id: 7\nretry: 100\ndata:  spaced\r\n\r\n\
                data: cr only\r\revent: b\rdata: x\r\r\
                event: empty\n\n\
                data: last";
    let events = sse_all(&[text.as_bytes()]).unwrap();
    assert_eq!(
        events,
        vec![
            ev("a", "one\ntwo\n"),
            ev("", " spaced"),
            ev("", "cr only"),
            ev("b", "x"),
            ev("", "last"),
        ]
    );
}

#[test]
fn sse_any_split_gives_the_same_events() {
    let text = "event: é\r\ndata: ☕ 日本\r\n\r\n: c\n\ndata: a\rdata: b\r\r\ndata: end\n\n";
    let bytes = text.as_bytes();
    let whole = sse_all(&[bytes]).unwrap();
    assert_eq!(whole.len(), 3);
    assert_eq!(whole[0], ev("é", "☕ 日本"));
    // In "\r\r\n" the CR ends a line and the CRLF ends the empty line after it.
    assert_eq!(whole[1], ev("", "a\nb"));
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            let split = sse_all(&[&bytes[..i], &bytes[i..j], &bytes[j..]]).unwrap();
            assert_eq!(split, whole, "split at {i}/{j}");
        }
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(sse_all(&bytewise).unwrap(), whole);
}

#[test]
fn sse_rejects_invalid_utf8_and_huge_lines() {
    assert!(matches!(
        sse_all(&[b"data: \xff\xfe\n\n"]),
        Err(WireError::Malformed(_))
    ));
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let big = vec![b'a'; sse::MAX_EVENT_BYTES / 2 + 1];
    parser.feed(b"data: ", &mut out).unwrap();
    parser.feed(&big, &mut out).unwrap();
    assert!(matches!(
        parser.feed(&big, &mut out),
        Err(WireError::Malformed(m)) if m.contains("longer than")
    ));
}

// ---------------------------------------------------------------------------------------
// Stream decoding
// ---------------------------------------------------------------------------------------

fn decode(provider: Provider, names: &ToolNames, chunks: &[&[u8]]) -> Result<Reply, WireError> {
    let mut decoder = StreamDecoder::new(provider, names.clone());
    for chunk in chunks {
        decoder.feed(chunk)?;
    }
    decoder.finish()
}

/// Decodes `text` whole, then split at every byte position, and byte by byte; all must
/// agree.
fn decode_every_split(provider: Provider, names: &ToolNames, text: &str) -> Reply {
    let bytes = text.as_bytes();
    let whole = decode(provider, names, &[bytes]).unwrap();
    for i in 0..=bytes.len() {
        let split = decode(provider, names, &[&bytes[..i], &bytes[i..]]);
        assert_eq!(split.as_ref(), Ok(&whole), "split at byte {i}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(decode(provider, names, &bytewise), Ok(whole.clone()));
    whole
}

#[test]
fn openai_stream_text_and_usage() {
    for fixture in [OPENAI_TEXT, OPENAI_TEXT_CRLF] {
        let reply = decode_every_split(Provider::OpenAi, &ToolNames::default(), fixture);
        assert_eq!(
            reply,
            Reply {
                text: MOCK_TEXT.into(),
                model: Some("gpt-4o".into()),
                usage: Some(Usage {
                    input_tokens: 15,
                    cached_tokens: 0,
                    output_tokens: 7,
                    estimated: false
                }),
                tool_calls: vec![],
                finish_reason: Some("stop".into()),
            }
        );
    }
}

#[test]
fn openai_stream_tool_calls() {
    let reply = decode_every_split(Provider::OpenAi, &tally_names(), OPENAI_TOOLS);
    assert_eq!(reply.text, "");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        reply.tool_calls,
        vec![
            ToolCall {
                id: "call_mock2_0".into(),
                name: "Tally::add".into(),
                arguments: json!({"a": 1, "b": 2})
            },
            ToolCall {
                id: "call_mock2_1".into(),
                name: "Tally::total".into(),
                arguments: json!({})
            },
        ]
    );
    assert_eq!(reply.usage.map(|u| u.output_tokens), Some(5));
}

#[test]
fn anthropic_stream_text_and_usage() {
    for fixture in [ANTHROPIC_TEXT, ANTHROPIC_TEXT_CRLF] {
        let reply = decode_every_split(Provider::Anthropic, &ToolNames::default(), fixture);
        assert_eq!(
            reply,
            Reply {
                text: MOCK_TEXT.into(),
                model: Some("claude-sonnet-4-20250514".into()),
                usage: Some(Usage {
                    input_tokens: 15,
                    cached_tokens: 0,
                    output_tokens: 7,
                    estimated: false
                }),
                tool_calls: vec![],
                finish_reason: Some("end_turn".into()),
            }
        );
    }
}

#[test]
fn anthropic_stream_tool_use() {
    let reply = decode_every_split(Provider::Anthropic, &tally_names(), ANTHROPIC_TOOLS);
    assert_eq!(reply.text, "Let me add.");
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_use"));
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "toolu_mock4_0".into(),
            name: "Tally::add".into(),
            arguments: json!({"a": 1, "b": 2})
        }]
    );
}

#[test]
fn anthropic_stream_cache_usage_and_output_tool() {
    let mut request = ChatRequest::new("A", None, vec![ChatMessage::new("user", "x")]);
    request.response_schema = Some(ship_schema());
    let names = ToolNames::for_request(&request, Provider::Anthropic, AnthropicStructured::Tool);
    let stream = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-20250514\",",
        "\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":1000,\"cache_creation_input_tokens\":20,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"Ship_Report\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"name\\\": \\\"Kestrel\\\", \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"crew\\\": 4}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":12}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let reply = decode_every_split(Provider::Anthropic, &names, stream);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.text).unwrap(),
        json!({"name": "Kestrel", "crew": 4})
    );
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        reply.usage,
        Some(Usage {
            input_tokens: 1025,
            cached_tokens: 1000,
            output_tokens: 12,
            estimated: false
        })
    );
}

#[test]
fn text_so_far_grows_while_streaming() {
    let mut decoder = StreamDecoder::new(Provider::Anthropic, ToolNames::default());
    assert_eq!(decoder.provider(), Provider::Anthropic);
    let bytes = ANTHROPIC_TEXT_CRLF.as_bytes();
    let mut seen = Vec::new();
    for chunk in bytes.chunks(97) {
        decoder.feed(chunk).unwrap();
        seen.push(decoder.text_so_far().to_string());
    }
    assert!(decoder.is_complete());
    assert_eq!(seen.last().map(String::as_str), Some(MOCK_TEXT));
    assert!(seen.windows(2).all(|w| w[1].starts_with(w[0].as_str())));
    assert!(seen.iter().any(|t| !t.is_empty() && t != MOCK_TEXT));
}

#[test]
fn truncated_streams_are_errors_at_every_cut() {
    for (provider, fixture, names) in [
        (Provider::OpenAi, OPENAI_TOOLS, tally_names()),
        (Provider::Anthropic, ANTHROPIC_TOOLS, tally_names()),
        (Provider::OpenAi, OPENAI_TEXT_CRLF, ToolNames::default()),
    ] {
        let bytes = fixture.as_bytes();
        let marker = match provider {
            Provider::OpenAi => "data: [DONE]",
            Provider::Anthropic => "data: {\"type\": \"message_stop\"}",
        };
        let marker_end = fixture.find(marker).unwrap() + marker.len();
        for cut in 0..marker_end {
            let result = decode(provider, &names, &[&bytes[..cut]]);
            assert!(
                matches!(result, Err(WireError::Truncated(_))),
                "{provider:?} cut at {cut}: {result:?}"
            );
        }
        // Once the end marker line is complete the stream is whole, closing blank line or not.
        for cut in marker_end..=bytes.len() {
            assert!(
                decode(provider, &names, &[&bytes[..cut]]).is_ok(),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn truncation_messages_name_the_missing_marker() {
    assert_eq!(
        decode(
            Provider::OpenAi,
            &ToolNames::default(),
            &[b"data: {\"choices\": []}\n\n"]
        ),
        Err(WireError::Truncated(
            "the stream ended before `data: [DONE]`".into()
        ))
    );
    assert_eq!(
        decode(Provider::Anthropic, &ToolNames::default(), &[b""]),
        Err(WireError::Truncated(
            "the stream ended before `message_stop`".into()
        ))
    );
}

#[test]
fn malformed_stream_events_are_errors_that_stick() {
    let mut decoder = StreamDecoder::new(Provider::OpenAi, ToolNames::default());
    decoder
        .feed(b"data: {\"choices\": [{\"delta\": {\"content\": \"a\"}}]}\n\n")
        .unwrap();
    let err = decoder.feed(b"data: {not json}\n\n").unwrap_err();
    assert!(matches!(&err, WireError::Malformed(m) if m.contains("not valid JSON")));
    assert_eq!(decoder.feed(b"data: [DONE]\n\n"), Err(err.clone()));
    assert_eq!(decoder.finish(), Err(err));

    let result = decode(
        Provider::Anthropic,
        &ToolNames::default(),
        &[b"event: message_start\ndata: {\"type\": \"message_start\"\n\n"],
    );
    assert!(matches!(result, Err(WireError::Malformed(_))), "{result:?}");
    let result = decode(
        Provider::Anthropic,
        &ToolNames::default(),
        &[b"data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n"],
    );
    assert!(matches!(result, Err(WireError::Malformed(_))), "{result:?}");
}

#[test]
fn stream_error_events_are_provider_errors() {
    let result = decode(
        Provider::OpenAi,
        &ToolNames::default(),
        &[b"data: {\"error\": {\"message\": \"Internal error\", \"type\": \"server_error\"}}\n\n"],
    );
    assert_eq!(result, Err(WireError::Provider("Internal error".into())));
    let result = decode(
        Provider::Anthropic,
        &ToolNames::default(),
        &[b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\"}}\n\n\
            event: ping\ndata: {\"type\": \"ping\"}\n\n\
            event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"],
    );
    assert_eq!(result, Err(WireError::Provider("Overloaded".into())));
    // A Provider error in an unterminated last event stays a Provider error.
    let result = decode(
        Provider::OpenAi,
        &ToolNames::default(),
        &[b"data: {\"error\": {\"message\": \"quota\"}}"],
    );
    assert_eq!(result, Err(WireError::Provider("quota".into())));
}

#[test]
fn bytes_after_the_end_marker_are_ignored() {
    let mut text = OPENAI_TEXT.as_bytes().to_vec();
    text.extend_from_slice(b"data: {not json}\n\ngarbage \xff\xfe\n\n");
    let reply = decode(Provider::OpenAi, &ToolNames::default(), &[&text]).unwrap();
    assert_eq!(reply.text, MOCK_TEXT);
    let (head, tail) = text.split_at(OPENAI_TEXT.len());
    let reply = decode(Provider::OpenAi, &ToolNames::default(), &[head, tail]).unwrap();
    assert_eq!(reply.text, MOCK_TEXT);
}

#[test]
fn openai_stream_tool_call_without_name_is_malformed() {
    let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\ndata: [DONE]\n\n";
    let result = decode(Provider::OpenAi, &ToolNames::default(), &[stream]);
    assert!(matches!(result, Err(WireError::Malformed(m)) if m.contains("no function name")));
}

#[test]
fn openai_stream_without_usage_chunk_has_no_usage() {
    let stream = "data: {\"model\":\"llama3\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
                  data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                  data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"other choice\"}}]}\n\n\
                  data: [DONE]\n\n";
    let reply = decode(
        Provider::OpenAi,
        &ToolNames::default(),
        &[stream.as_bytes()],
    )
    .unwrap();
    assert_eq!(reply.text, "hi");
    assert_eq!(reply.usage, None);
    assert_eq!(reply.finish_reason.as_deref(), Some("length"));
    assert_eq!(reply.model.as_deref(), Some("llama3"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_chunking_decodes_identically(
        cuts in proptest::collection::vec(0usize..4000, 0..12),
        fixture in 0usize..6,
    ) {
        let (provider, text, names) = match fixture {
            0 => (Provider::OpenAi, OPENAI_TEXT, ToolNames::default()),
            1 => (Provider::OpenAi, OPENAI_TEXT_CRLF, ToolNames::default()),
            2 => (Provider::OpenAi, OPENAI_TOOLS, tally_names()),
            3 => (Provider::Anthropic, ANTHROPIC_TEXT, ToolNames::default()),
            4 => (Provider::Anthropic, ANTHROPIC_TEXT_CRLF, ToolNames::default()),
            _ => (Provider::Anthropic, ANTHROPIC_TOOLS, tally_names()),
        };
        let bytes = text.as_bytes();
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&bytes[start..point]);
            start = point;
        }
        chunks.push(&bytes[start..]);
        let whole = decode(provider, &names, &[bytes]).unwrap();
        prop_assert_eq!(decode(provider, &names, &chunks), Ok(whole));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for provider in [Provider::OpenAi, Provider::Anthropic] {
            let _ = decode(provider, &ToolNames::default(), &[&bytes]);
            let _ = parse_body(provider, &bytes, &ToolNames::default());
            let _ = error_message(provider, 500, &bytes);
        }
    }
}

/// The tool conversation with a PNG on the first result and a TIFF (which neither provider
/// accepts) on the second.
fn image_conversation() -> ChatRequest {
    let mut request = tool_conversation();
    request.messages[3].content = "3 [image (image/png)]".into();
    request.messages[3].images = vec![concerto_vm::host::ImagePart {
        mime_type: "image/png".into(),
        data: "iVBORw0KGgoPNGDATA".into(),
    }];
    request.messages[4].images = vec![concerto_vm::host::ImagePart {
        mime_type: "image/tiff".into(),
        data: "SUkqAFRJRkZEQVRB".into(),
    }];
    request
}

fn body_images(provider: Provider, request: &ChatRequest, images: bool) -> Value {
    let names = ToolNames::for_request(request, provider, AnthropicStructured::default());
    request_body(
        provider,
        &Outgoing {
            model: "m",
            request,
            stream: false,
            names: &names,
            anthropic_structured: AnthropicStructured::default(),
            images,
        },
    )
}

#[test]
fn openai_gets_tool_images_as_a_user_message_after_the_results() {
    let body = body_images(Provider::OpenAi, &image_conversation(), true);
    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    // The tool messages stay right after the assistant turn that asked for them.
    assert_eq!(
        roles,
        [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "user",
            "user"
        ]
    );
    assert_eq!(messages[3]["content"], "3 [image (image/png)]");
    let parts = messages[5]["content"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["type"], "text");
    assert_eq!(
        parts[1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoPNGDATA"}})
    );
    // The TIFF is not sent; the model has its placeholder only.
    assert!(!body.to_string().contains("SUkqAFRJRkZEQVRB"));
    assert_eq!(messages[6]["content"], "And now?");
}

#[test]
fn anthropic_gets_tool_images_inside_the_tool_result() {
    let body = body_images(Provider::Anthropic, &image_conversation(), true);
    let results = body["messages"][2]["content"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0]["content"],
        json!([{"type": "text", "text": "3 [image (image/png)]"},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": "iVBORw0KGgoPNGDATA"}}])
    );
    assert_eq!(results[1]["content"], "3");
    assert!(!body.to_string().contains("SUkqAFRJRkZEQVRB"));
}

#[test]
fn a_provider_without_images_gets_placeholders_and_never_the_data() {
    for provider in [Provider::OpenAi, Provider::Anthropic] {
        let body = body_images(provider, &image_conversation(), false);
        let text = body.to_string();
        assert!(!text.contains("iVBORw0KGgoPNGDATA"), "{text}");
        assert!(!text.contains("SUkqAFRJRkZEQVRB"), "{text}");
        assert!(text.contains("[image (image/png)]"), "{text}");
        assert_eq!(
            body,
            body_images(provider, &tool_conversation_with_placeholder(), true)
        );
    }
}

fn tool_conversation_with_placeholder() -> ChatRequest {
    let mut request = tool_conversation();
    request.messages[3].content = "3 [image (image/png)]".into();
    request
}
