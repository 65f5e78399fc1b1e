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
/// - `timing { total_ms, queue_ms, connect_ms, ttfb_ms, first_token_ms, overhead_us }` of
///   the request that produced this reply, in whole milliseconds (`overhead_us` in
///   microseconds), as the connection layer measured them ([`crate::host::CallTiming`]):
///   `connect_ms` is nil when the request went over a pooled connection, `first_token_ms`
///   when the reply was not streamed; every part is nil, and `total_ms` the reply's own
///   latency, when the layer measured none (mock models, replayed recordings, host agents);
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
    let ms = |us: u64| int(us / 1000);
    let part = |us: Option<u64>| us.map_or(Value::Nil, ms);
    let measured = reply.timing.as_ref();
    let total_ms = measured.map_or(int(reply.latency_ms), |t| ms(t.total_us));
    let timing = Value::record(
        "Timing",
        vec![
            ("total_ms", total_ms.clone()),
            ("queue_ms", part(measured.map(|t| t.queue_us))),
            ("connect_ms", part(measured.and_then(|t| t.connect_us))),
            ("ttfb_ms", part(measured.and_then(|t| t.ttfb_us))),
            (
                "first_token_ms",
                part(measured.and_then(|t| t.first_token_us)),
            ),
            (
                "overhead_us",
                measured.map_or(Value::Nil, |t| int(t.overhead_us)),
            ),
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
            ("latency_ms", total_ms),
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
