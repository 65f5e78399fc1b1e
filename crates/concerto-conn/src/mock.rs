//! The built-in mock provider: deterministic replies without a network.
//!
//! A host or the CLI chooses it explicitly (it is never a fallback for a missing key). It
//! reproduces the reference runtime's mock, so fixtures recorded with it stay valid:
//! the reply is `[mock response to: <first 50 bytes of the last message>]`, with
//! `input_tokens` = that message's length in bytes and `output_tokens` = 42; with a
//! response schema the reply is a JSON object with a placeholder per property. The mock
//! never asks for tools.

use std::sync::Arc;

use concerto_vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program, Usage,
};
use serde_json::{Map, Value, json};

use crate::model::resolve_model;

/// Output tokens every mock reply reports.
pub const MOCK_OUTPUT_TOKENS: u64 = 42;

/// How many bytes of the last message the reply quotes.
const QUOTED_BYTES: usize = 50;

/// How deep nested schemas are followed (through `anyOf` alternatives).
const MAX_DEPTH: usize = 8;

/// The mock connection layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct MockConnections {
    latency: Option<std::time::Duration>,
}

impl MockConnections {
    /// The mock provider.
    pub fn new() -> MockConnections {
        MockConnections::default()
    }

    /// Answers each request after `latency` (a timer, no thread blocked), as a provider
    /// would: for benchmarks and tests of concurrency.
    pub fn with_latency(mut self, latency: std::time::Duration) -> MockConnections {
        self.latency = Some(latency);
        self
    }
}

impl Connections for MockConnections {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let config = program
            .connections
            .get(connection.index())
            .map_or(&Value::Null, |c| &c.config);
        let response = respond(config, &request);
        let latency = self.latency;
        Box::pin(async move {
            if let Some(latency) = latency {
                tokio::time::sleep(latency).await;
            }
            Ok(response)
        })
    }
}

/// The mock's reply to `request` on a connection whose IR `config` is `connection_config`
/// (used for the model: the request's model or its alias, else the connection's
/// `default_model`, else `mock`).
pub fn respond(connection_config: &Value, request: &ChatRequest) -> ChatResponse {
    let last = request
        .messages
        .last()
        .map_or("", |message| message.content.as_str());
    let text = match &request.response_schema {
        Some(schema) => mock_json(&schema.schema).to_string(),
        None => format!("[mock response to: {}]", prefix_bytes(last, QUOTED_BYTES)),
    };
    let model = resolve_model(connection_config, request.model.as_deref(), None)
        .unwrap_or_else(|| "mock".to_string());
    let usage = Usage {
        input_tokens: last.len() as u64,
        cached_tokens: 0,
        output_tokens: MOCK_OUTPUT_TOKENS,
        estimated: false,
    };
    let mut response = ChatResponse::text(text, model, usage);
    response.provider = "mock".to_string();
    response
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn prefix_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// A JSON object with one placeholder value per property of `schema`.
fn mock_json(schema: &Value) -> Value {
    let mut object = Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (field, property) in properties {
            object.insert(field.clone(), mock_value(field, property, 0));
        }
    }
    Value::Object(object)
}

/// The placeholder for property `field` with schema `schema`: the first `enum` value, else
/// a value of the schema's (non-null) type.
fn mock_value(field: &str, schema: &Value, depth: usize) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|values| values.first())
    {
        return first.clone();
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => Some(kind.as_str()),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|kind| *kind != "null"),
        _ => None,
    };
    let Some(kind) = kind else {
        // `anyOf: [{…}, {"type": "null"}]` is how optional fields are often written.
        if depth < MAX_DEPTH
            && let Some(alternative) = ["anyOf", "oneOf"]
                .iter()
                .filter_map(|key| schema.get(*key).and_then(Value::as_array))
                .flatten()
                .find(|alt| alt.get("type").and_then(Value::as_str) != Some("null"))
        {
            return mock_value(field, alternative, depth + 1);
        }
        return json!(format!("[mock {field}]"));
    };
    match kind {
        "integer" | "int" | "Int" => json!(0),
        "number" | "float" | "Float" => json!(0.0),
        "boolean" | "bool" | "Bool" => json!(false),
        "object" => json!({}),
        kind if kind == "array" || kind.starts_with("Array<") => {
            json!([format!("[mock {field} item]")])
        }
        _ => json!(format!("[mock {field}]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concerto_vm::host::{ChatMessage, ResponseSchema};

    fn request(model: Option<&str>, last: &str) -> ChatRequest {
        ChatRequest::new(
            "Agent",
            model.map(str::to_string),
            vec![
                ChatMessage::new("system", "You are terse."),
                ChatMessage::new("user", last),
            ],
        )
    }

    #[test]
    fn plain_reply_quotes_the_last_message() {
        let response = respond(&Value::Null, &request(Some("gpt-4o"), "Say hello"));
        assert_eq!(response.text, "[mock response to: Say hello]");
        assert_eq!(response.model, "gpt-4o");
        assert_eq!(response.provider, "mock");
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 9,
                cached_tokens: 0,
                output_tokens: 42,
                estimated: false
            }
        );
        assert_eq!(response.cost_usd, None);
        assert!(response.tool_calls.is_empty());
        assert_eq!(response.attempts, 1);
    }

    #[test]
    fn long_messages_are_cut_at_50_bytes_on_a_char_boundary() {
        let ascii = "a".repeat(80);
        let response = respond(&Value::Null, &request(None, &ascii));
        assert_eq!(
            response.text,
            format!("[mock response to: {}]", "a".repeat(50))
        );
        assert_eq!(response.usage.input_tokens, 80);
        // 49 ASCII bytes, then a 3-byte character straddling byte 50.
        let text = format!("{}☕ and more", "b".repeat(49));
        let response = respond(&Value::Null, &request(None, &text));
        assert_eq!(
            response.text,
            format!("[mock response to: {}]", "b".repeat(49))
        );
        assert_eq!(response.usage.input_tokens, text.len() as u64);
        let text = "é".repeat(30);
        let response = respond(&Value::Null, &request(None, &text));
        assert_eq!(
            response.text,
            format!("[mock response to: {}]", "é".repeat(25))
        );
    }

    #[test]
    fn empty_conversation() {
        let response = respond(&Value::Null, &ChatRequest::new("A", None, vec![]));
        assert_eq!(response.text, "[mock response to: ]");
        assert_eq!(response.usage.input_tokens, 0);
        assert_eq!(response.model, "mock");
    }

    #[test]
    fn model_follows_aliases_and_the_connection_default() {
        let config = json!({"default_model": "fast", "models": {"fast": "gpt-4o-mini"}});
        assert_eq!(respond(&config, &request(None, "x")).model, "gpt-4o-mini");
        assert_eq!(
            respond(&config, &request(Some("fast"), "x")).model,
            "gpt-4o-mini"
        );
        assert_eq!(respond(&config, &request(Some("o3"), "x")).model, "o3");
    }

    #[test]
    fn schema_reply_has_a_placeholder_per_property() {
        let mut req = request(Some("gpt-4o"), "Extract ships");
        req.response_schema = Some(ResponseSchema {
            name: "Report".into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "crew": {"type": "integer"},
                    "tonnage": {"type": "number"},
                    "docked": {"type": "boolean"},
                    "ports": {"type": "array", "items": {"type": "string"}},
                    "captain": {"type": "object", "properties": {"n": {"type": "string"}}},
                    "status": {"type": "string", "enum": ["afloat", "sunk"]},
                    "rating": {"enum": [3, 4]},
                    "note": {"type": ["string", "null"]},
                    "count": {"type": ["null", "integer"]},
                    "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                    "legacy": {"type": "Array<String>"},
                    "legacy_int": {"type": "Int"},
                    "untyped": {}
                }
            }),
        });
        let response = respond(&Value::Null, &req);
        let value: Value = serde_json::from_str(&response.text).unwrap();
        assert_eq!(
            value,
            json!({
                "name": "[mock name]",
                "crew": 0,
                "tonnage": 0.0,
                "docked": false,
                "ports": ["[mock ports item]"],
                "captain": {},
                "status": "afloat",
                "rating": 3,
                "note": "[mock note]",
                "count": 0,
                "maybe": false,
                "legacy": ["[mock legacy item]"],
                "legacy_int": 0,
                "untyped": "[mock untyped]"
            })
        );
        // Property order is the schema's, and floats keep their decimal point.
        assert!(
            response
                .text
                .starts_with(r#"{"name":"[mock name]","crew":0,"tonnage":0.0,"#)
        );
        assert_eq!(response.usage.output_tokens, 42);
    }

    #[test]
    fn schema_without_properties_gives_an_empty_object() {
        let mut req = request(None, "x");
        req.response_schema = Some(ResponseSchema {
            name: "S".into(),
            schema: json!({"type": "string"}),
        });
        assert_eq!(respond(&Value::Null, &req).text, "{}");
    }

    #[test]
    fn deeply_nested_alternatives_stop() {
        let nested = |levels: usize| {
            let mut schema = json!({"type": "integer"});
            for _ in 0..levels {
                schema = json!({"anyOf": [{"type": "null"}, schema]});
            }
            schema
        };
        assert_eq!(mock_value("f", &nested(3), 0), json!(0));
        assert_eq!(mock_value("f", &nested(20), 0), json!("[mock f]"));
    }
}
