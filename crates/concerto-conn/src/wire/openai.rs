//! OpenAI Chat Completions, also spoken by OpenAI-compatible servers (Ollama, vLLM,
//! OpenRouter, …).

use std::collections::BTreeMap;

use concerto_vm::host::{ChatMessage, ToolCall, Usage};
use serde_json::{Map, Value, json};

use super::names::sanitize_schema_name;
use super::sse::SseEvent;
use super::{
    Outgoing, Reply, ToolNames, WireError, arguments_text, error_in, parse_arguments, str_field,
    u64_field,
};

/// Whether `model` is a reasoning model, which takes `max_completion_tokens` instead of
/// `max_tokens` (o1, o3, o4 and gpt-5 families; a routing prefix such as `openai/` is
/// ignored).
pub(super) fn is_reasoning_model(model: &str) -> bool {
    let base = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|prefix| base.starts_with(prefix))
}

/// The request body.
pub(super) fn request_body(out: &Outgoing<'_>) -> Value {
    let request = out.request;
    let mut body = Map::new();
    body.insert("model".into(), json!(out.model));
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len());
    // Images of the tool results since the last other message: a tool message carries
    // text only, so they follow the run of results as one user message.
    let mut images: Vec<Value> = Vec::new();
    for message in &request.messages {
        if message.role != "tool" && !images.is_empty() {
            messages.push(images_message(std::mem::take(&mut images)));
        }
        if message.role == "tool" && out.images {
            images.extend(
                message
                    .images
                    .iter()
                    .filter(|image| super::image_type_accepted(&image.mime_type))
                    .map(|image| {
                        json!({"type": "image_url", "image_url": {"url": format!(
                            "data:{};base64,{}", image.mime_type.to_ascii_lowercase(), image.data
                        )}})
                    }),
            );
        }
        messages.push(wire_message(message, out.names));
    }
    if !images.is_empty() {
        messages.push(images_message(images));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(limit) = request.max_tokens {
        let key = if is_reasoning_model(out.model) {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(key.into(), json!(limit));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": out.names.wire_or_sanitized(&tool.name),
                        "description": tool.description,
                        "parameters": super::parameters_schema(&tool.parameters),
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(schema) = &request.response_schema {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": {
                    "name": sanitize_schema_name(&schema.name),
                    "schema": schema.schema,
                    "strict": strict_compatible(&schema.schema, 0),
                }
            }),
        );
    }
    if out.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

/// Whether OpenAI's strict structured outputs accept `schema`: every object closed
/// (`additionalProperties: false`) with all its properties required. A schema with a
/// free-form object (a `Map<K, V>` field) is sent with `strict: false` instead of being
/// rejected.
fn strict_compatible(schema: &Value, depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    match schema {
        Value::Object(obj) => {
            let is_object = match obj.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => obj.contains_key("properties"),
            };
            if is_object {
                if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return false;
                }
                let props = obj.get("properties").and_then(Value::as_object);
                let required: Vec<&str> = obj
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(props) = props
                    && props.keys().any(|k| !required.contains(&k.as_str()))
                {
                    return false;
                }
            }
            obj.iter().all(|(key, value)| match key.as_str() {
                "properties" | "$defs" | "definitions" => value
                    .as_object()
                    .is_none_or(|m| m.values().all(|v| strict_compatible(v, depth + 1))),
                "enum" | "const" | "required" | "description" | "title" => true,
                _ => strict_compatible(value, depth + 1),
            })
        }
        Value::Array(items) => items.iter().all(|v| strict_compatible(v, depth + 1)),
        _ => true,
    }
}

/// The user message that shows the model the images of the tool results before it.
fn images_message(parts: Vec<Value>) -> Value {
    let mut content = vec![
        json!({"type": "text", "text": "The images the tool results above returned, in order."}),
    ];
    content.extend(parts);
    json!({"role": "user", "content": content})
}

fn wire_message(message: &ChatMessage, names: &ToolNames) -> Value {
    match message.role.as_str() {
        "assistant" if !message.tool_calls.is_empty() => {
            let calls: Vec<Value> = message
                .tool_calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": names.wire_or_sanitized(&call.name),
                            "arguments": arguments_text(&call.arguments),
                        }
                    })
                })
                .collect();
            let content = if message.content.is_empty() {
                Value::Null
            } else {
                json!(message.content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        "tool" => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id.as_deref().unwrap_or_default(),
            "content": message.content,
        }),
        role => json!({"role": role, "content": message.content}),
    }
}

/// Token usage from a `usage` object; `None` when it reports no counts.
fn usage(value: Option<&Value>) -> Option<Usage> {
    let value = value.filter(|v| v.is_object())?;
    let input = u64_field(value, "prompt_tokens");
    let output = u64_field(value, "completion_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let cached = value
        .get("prompt_tokens_details")
        .and_then(|d| u64_field(d, "cached_tokens"))
        .unwrap_or(0);
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        cached_tokens: cached,
        output_tokens: output.unwrap_or(0),
        estimated: false,
    })
}

/// Message content as text: a string, `null`, or (some compatible servers) a list of parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| match part {
                Value::String(text) => Some(text.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect(),
        _ => String::new(),
    }
}

fn tool_call(position: usize, call: &Value, names: &ToolNames) -> Result<ToolCall, WireError> {
    let function = call.get("function");
    let wire = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            WireError::Malformed(format!("tool call {position} has no function name"))
        })?;
    let id = str_field(call, "id")
        .filter(|id| !id.is_empty())
        .map_or_else(|| format!("call_{position}"), str::to_string);
    let arguments = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(raw)) => parse_arguments(raw),
        None | Some(Value::Null) => json!({}),
        Some(other) => other.clone(),
    };
    Ok(ToolCall {
        id,
        name: names.program_or_wire(wire),
        arguments,
    })
}

/// Parses a complete (non-streamed) response body.
pub(super) fn parse(value: &Value, names: &ToolNames) -> Result<Reply, WireError> {
    if let Some(message) = error_in(value) {
        return Err(WireError::Provider(message));
    }
    let choices = value
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| WireError::Malformed("response has no `choices` array".into()))?;
    let choice = choices
        .first()
        .ok_or_else(|| WireError::Malformed("response has an empty `choices` array".into()))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| WireError::Malformed("`choices[0]` has no `message` object".into()))?;
    let mut text = content_text(message.get("content"));
    if text.is_empty() {
        // A refusal replaces the content; keep it visible rather than return nothing.
        if let Some(refusal) = str_field(message, "refusal") {
            text = refusal.to_string();
        }
    }
    let tool_calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(position, call)| tool_call(position, call, names))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(Reply {
        text,
        model: str_field(value, "model").map(str::to_string),
        usage: usage(value.get("usage")),
        tool_calls,
        finish_reason: str_field(choice, "finish_reason").map(str::to_string),
    })
}

/// A tool call being assembled from stream deltas.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The state of a streamed response.
#[derive(Debug, Default)]
pub(super) struct OpenAiStream {
    text: String,
    refusal: String,
    model: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    /// Tool calls by their `index` in the deltas.
    calls: BTreeMap<u64, PartialCall>,
    /// `data: [DONE]` arrived.
    done: bool,
}

impl OpenAiStream {
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    pub(super) fn has_output(&self) -> bool {
        !self.text.is_empty() || !self.refusal.is_empty() || !self.calls.is_empty()
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn on_event(&mut self, event: &SseEvent) -> Result<(), WireError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|err| {
            WireError::Malformed(format!("stream chunk is not valid JSON: {err}"))
        })?;
        if let Some(message) = error_in(&value) {
            return Err(WireError::Provider(message));
        }
        if event.event == "error" {
            return Err(WireError::Provider(super::short_text(data.as_bytes())));
        }
        if self.model.is_none() {
            self.model = str_field(&value, "model").map(str::to_string);
        }
        if let Some(usage) = usage(value.get("usage")) {
            self.usage = Some(usage);
        }
        let Some(choices) = value.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        for choice in choices {
            if u64_field(choice, "index").unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.get("delta") {
                self.on_delta(delta);
            }
            if let Some(reason) = str_field(choice, "finish_reason") {
                self.finish_reason = Some(reason.to_string());
            }
        }
        Ok(())
    }

    fn on_delta(&mut self, delta: &Value) {
        if let Some(text) = str_field(delta, "content") {
            self.text.push_str(text);
        }
        if let Some(refusal) = str_field(delta, "refusal") {
            self.refusal.push_str(refusal);
        }
        let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) else {
            return;
        };
        for (position, call) in calls.iter().enumerate() {
            let index = u64_field(call, "index").unwrap_or(position as u64);
            let entry = self.calls.entry(index).or_default();
            if let Some(id) = str_field(call, "id").filter(|id| !id.is_empty())
                && entry.id.is_empty()
            {
                entry.id = id.to_string();
            }
            let function = call.get("function");
            if let Some(name) = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
            {
                // The name arrives whole in the call's first delta; later copies repeat it.
                if entry.name.is_empty() {
                    entry.name = name.to_string();
                }
            }
            if let Some(fragment) = function
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
            {
                entry.arguments.push_str(fragment);
            }
        }
    }

    pub(super) fn finish(self, names: &ToolNames) -> Result<Reply, WireError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (index, call) in self.calls {
            if call.name.is_empty() {
                return Err(WireError::Malformed(format!(
                    "streamed tool call {index} has no function name"
                )));
            }
            tool_calls.push(ToolCall {
                id: if call.id.is_empty() {
                    format!("call_{index}")
                } else {
                    call.id
                },
                name: names.program_or_wire(&call.name),
                arguments: parse_arguments(&call.arguments),
            });
        }
        let text = if self.text.is_empty() {
            self.refusal
        } else {
            self.text
        };
        Ok(Reply {
            text,
            model: self.model,
            usage: self.usage,
            tool_calls,
            finish_reason: self.finish_reason,
        })
    }
}

#[cfg(test)]
mod strict_tests {
    use super::strict_compatible;
    use serde_json::json;

    #[test]
    fn closed_objects_are_strict_and_free_form_maps_are_not() {
        let closed = json!({"type": "object", "additionalProperties": false,
            "properties": {"a": {"type": ["string", "null"]},
                           "b": {"type": "array", "items": {"type": "object",
                                 "additionalProperties": false, "properties": {"x": {"type": "integer"}},
                                 "required": ["x"]}}},
            "required": ["a", "b"]});
        assert!(strict_compatible(&closed, 0));
        let map_field = json!({"type": "object", "additionalProperties": false,
            "properties": {"m": {"type": "object", "additionalProperties": {"type": "integer"}}},
            "required": ["m"]});
        assert!(!strict_compatible(&map_field, 0));
        let optional_left_out = json!({"type": "object", "additionalProperties": false,
            "properties": {"a": {"type": "string"}}, "required": []});
        assert!(!strict_compatible(&optional_left_out, 0));
    }
}
