//! What a successful call gives: the `Response` record of a model reply, and a validated
//! schema instance as a struct named after the schema.

use crate::host::ChatResponse;
use crate::value::Value;

/// The `Response` of a model call. Its fields are settled (later work fills values in, it
/// does not rename them):
/// - `text`, `model` (the model that answered), `provider`, `connection` (the connection that
///   answered);
/// - `usage { input_tokens, output_tokens, cached_tokens, estimated }` (`estimated`: the
///   provider reported no counts and these are the runtime's estimate);
/// - `finish_reason` (`stop`, `length`, `tool_calls`, `end_turn`, …; nil when unknown),
///   `attempts` (HTTP attempts, 1 when the first succeeded);
/// - `timing { total_ms, queue_ms, connect_ms, ttfb_ms, first_token_ms, overhead_us }`:
///   `total_ms` is measured; the parts are nil until the connection layer measures them;
/// - `tokens_in`, `tokens_out`, `latency_ms`: the 1a8ede9 names of `usage.input_tokens`,
///   `usage.output_tokens` and `timing.total_ms`.
pub(super) fn response_value(reply: &ChatResponse, connection: &str) -> Value {
    let int = |n: u64| Value::Int(n.min(i64::MAX as u64) as i64);
    let usage = Value::record(
        "Usage",
        vec![
            ("input_tokens", int(reply.usage.input_tokens)),
            ("output_tokens", int(reply.usage.output_tokens)),
            ("cached_tokens", int(reply.usage.cached_tokens)),
            ("estimated", Value::Bool(reply.usage.estimated)),
        ],
    );
    let timing = Value::record(
        "Timing",
        vec![
            ("total_ms", int(reply.latency_ms)),
            ("queue_ms", Value::Nil),
            ("connect_ms", Value::Nil),
            ("ttfb_ms", Value::Nil),
            ("first_token_ms", Value::Nil),
            ("overhead_us", Value::Nil),
        ],
    );
    Value::record(
        "Response",
        vec![
            ("text", Value::str(reply.text.as_str())),
            ("model", Value::str(reply.model.as_str())),
            ("provider", Value::str(reply.provider.as_str())),
            ("connection", Value::str(connection)),
            ("usage", usage),
            (
                "finish_reason",
                reply
                    .finish_reason
                    .as_deref()
                    .map_or(Value::Nil, Value::str),
            ),
            ("attempts", int(u64::from(reply.attempts))),
            ("timing", timing),
            ("tokens_in", int(reply.usage.input_tokens)),
            ("tokens_out", int(reply.usage.output_tokens)),
            ("latency_ms", int(reply.latency_ms)),
        ],
    )
}

/// A validated instance as a struct named after the schema: declared fields first (in
/// declaration order), then any extra members; nested objects become maps.
pub(crate) fn schema_value(
    program: &concerto_ir::Program,
    schema: u32,
    json: &serde_json::Value,
) -> Value {
    let decl = &program.schemas[schema as usize];
    let declared: Vec<&str> = decl
        .json_schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let empty = serde_json::Map::new();
    let obj = json.as_object().unwrap_or(&empty);
    let mut fields: Vec<(&str, Value)> = declared
        .iter()
        .map(|name| (*name, obj.get(*name).map_or(Value::Nil, Value::from_json)))
        .collect();
    for (k, v) in obj {
        if !declared.contains(&k.as_str()) {
            fields.push((k.as_str(), Value::from_json(v)));
        }
    }
    Value::record(&decl.name, fields)
}
