//! Anthropic Messages.

use std::collections::BTreeMap;

use concerto_vm::host::{ChatMessage, ToolCall, Usage};
use serde_json::{Map, Value, json};

use super::names::sanitize_schema_name;
use super::sse::SseEvent;
use super::{
    AnthropicStructured, Outgoing, Reply, ToolNames, WireError, error_in, parse_arguments,
    str_field, u64_field,
};

/// `max_tokens` when the request sets none (the API requires one).
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Description of the tool that carries structured output in [`AnthropicStructured::Tool`].
const OUTPUT_TOOL_DESCRIPTION: &str =
    "Give your final answer by calling this tool; its input is the answer.";

/// The system-prompt text that asks for JSON in [`AnthropicStructured::Prompt`].
fn schema_instruction(name: &str, schema: &Value) -> String {
    format!(
        "Answer with a single JSON value that conforms to the JSON Schema `{name}` below, \
         and nothing else: no prose, no code fence.\n{schema}"
    )
}

/// The wire name of the structured-output tool for `schema_name`.
fn output_tool_name(names: &ToolNames, schema_name: &str) -> String {
    names
        .output_tool()
        .map_or_else(|| sanitize_schema_name(schema_name), str::to_string)
}

/// A tool call's arguments as the `input` object Anthropic requires.
fn tool_input(arguments: &Value) -> Value {
    match arguments {
        Value::Object(_) => arguments.clone(),
        // Arguments another provider sent as unparsable text: parse them if possible,
        // otherwise wrap them so nothing is lost.
        Value::String(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(parsed @ Value::Object(_)) => parsed,
            _ => json!({"value": raw}),
        },
        Value::Null => json!({}),
        other => json!({"value": other}),
    }
}

/// The request body.
pub(super) fn request_body(out: &Outgoing<'_>) -> Value {
    let request = out.request;
    let schema = request.response_schema.as_ref();
    let mut system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| m.role == "system" && !m.content.is_empty())
        .map(|m| m.content.clone())
        .collect();
    if let (Some(schema), AnthropicStructured::Prompt) = (schema, out.anthropic_structured) {
        system.push(schema_instruction(&schema.name, &schema.schema));
    }

    let mut messages: Vec<Value> = Vec::new();
    // Whether the last turn in `messages` is a user turn of tool results that the next
    // `tool` message joins.
    let mut open_results = false;
    for message in request.messages.iter().filter(|m| m.role != "system") {
        if message.role == "tool" {
            let images: Vec<Value> = message
                .images
                .iter()
                .filter(|image| out.images && super::image_type_accepted(&image.mime_type))
                .map(|image| {
                    json!({"type": "image", "source": {"type": "base64",
                        "media_type": image.mime_type.to_ascii_lowercase(), "data": image.data}})
                })
                .collect();
            let content = if images.is_empty() {
                json!(message.content)
            } else {
                let mut blocks = vec![json!({"type": "text", "text": message.content})];
                blocks.extend(images);
                Value::Array(blocks)
            };
            let block = json!({
                "type": "tool_result",
                "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
                "content": content,
            });
            if open_results
                && let Some(content) = messages
                    .last_mut()
                    .and_then(|turn| turn.get_mut("content"))
                    .and_then(Value::as_array_mut)
            {
                content.push(block);
                continue;
            }
            messages.push(json!({"role": "user", "content": [block]}));
            open_results = true;
            continue;
        }
        open_results = false;
        messages.push(wire_message(message, out.names));
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(out.model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|tool| {
            json!({
                "name": out.names.wire_or_sanitized(&tool.name),
                "description": tool.description,
                "input_schema": super::parameters_schema(&tool.parameters),
            })
        })
        .collect();
    if let Some(schema) = schema {
        match out.anthropic_structured {
            AnthropicStructured::OutputConfig => {
                body.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": schema.schema}}),
                );
            }
            AnthropicStructured::Tool => {
                let name = output_tool_name(out.names, &schema.name);
                // With other tools on offer the model may still call them first; `any`
                // keeps that possible while forcing a tool (so the answer comes through
                // the output tool).
                let choice = if tools.is_empty() {
                    json!({"type": "tool", "name": name})
                } else {
                    json!({"type": "any"})
                };
                tools.push(json!({
                    "name": name,
                    "description": OUTPUT_TOOL_DESCRIPTION,
                    "input_schema": super::parameters_schema(&schema.schema),
                }));
                body.insert("tool_choice".into(), choice);
            }
            AnthropicStructured::Prompt => {}
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
    }
    if out.stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

fn wire_message(message: &ChatMessage, names: &ToolNames) -> Value {
    if message.role == "assistant" {
        if message.tool_calls.is_empty() {
            return json!({"role": "assistant", "content": message.content});
        }
        let mut blocks = Vec::with_capacity(message.tool_calls.len() + 1);
        if !message.content.is_empty() {
            blocks.push(json!({"type": "text", "text": message.content}));
        }
        for call in &message.tool_calls {
            blocks.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": names.wire_or_sanitized(&call.name),
                "input": tool_input(&call.arguments),
            }));
        }
        return json!({"role": "assistant", "content": blocks});
    }
    // Anthropic knows only `user` and `assistant` turns.
    json!({"role": "user", "content": message.content})
}

/// Token usage counters as Anthropic reports them (cache reads and writes are input not
/// counted in `input_tokens`).
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    output: Option<u64>,
}

impl Counters {
    /// Overwrites the counters `usage` reports.
    fn update(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage.filter(|u| u.is_object()) else {
            return;
        };
        if let Some(n) = u64_field(usage, "input_tokens") {
            self.input = Some(n);
        }
        if let Some(n) = u64_field(usage, "cache_read_input_tokens") {
            self.cache_read = Some(n);
        }
        if let Some(n) = u64_field(usage, "cache_creation_input_tokens") {
            self.cache_creation = Some(n);
        }
        if let Some(n) = u64_field(usage, "output_tokens") {
            self.output = Some(n);
        }
    }

    fn usage(self) -> Option<Usage> {
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        let cached = self.cache_read.unwrap_or(0);
        Some(Usage {
            input_tokens: self
                .input
                .unwrap_or(0)
                .saturating_add(cached)
                .saturating_add(self.cache_creation.unwrap_or(0)),
            cached_tokens: cached,
            output_tokens: self.output.unwrap_or(0),
            estimated: false,
        })
    }
}

/// The reply parts shared by the complete and the streamed parse.
struct Assembled {
    text: String,
    tool_calls: Vec<ToolCall>,
    /// The input of the structured-output tool, when the model called it.
    output: Option<Value>,
}

impl Assembled {
    fn into_reply(
        self,
        model: Option<String>,
        usage: Option<Usage>,
        stop_reason: Option<String>,
    ) -> Reply {
        let (text, finish_reason) = match self.output {
            Some(output) => {
                let text = match output {
                    Value::String(raw) => raw,
                    other => other.to_string(),
                };
                // The forced output tool is the answer, not a request for tools.
                let finish = if self.tool_calls.is_empty() {
                    Some("end_turn".to_string())
                } else {
                    stop_reason
                };
                (text, finish)
            }
            None => (self.text, stop_reason),
        };
        Reply {
            text,
            model,
            usage,
            tool_calls: self.tool_calls,
            finish_reason,
        }
    }

    fn push_tool_use(&mut self, id: String, wire: &str, input: Value, names: &ToolNames) {
        if names.output_tool() == Some(wire) {
            self.output = Some(input);
            return;
        }
        self.tool_calls.push(ToolCall {
            id,
            name: names.program_or_wire(wire),
            arguments: input,
        });
    }
}

/// Parses a complete (non-streamed) response body.
pub(super) fn parse(value: &Value, names: &ToolNames) -> Result<Reply, WireError> {
    if let Some(message) = error_in(value) {
        return Err(WireError::Provider(message));
    }
    if str_field(value, "type") == Some("error") {
        return Err(WireError::Provider("the provider reported an error".into()));
    }
    let content = value
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| WireError::Malformed("response has no `content` array".into()))?;
    let mut assembled = Assembled {
        text: String::new(),
        tool_calls: Vec::new(),
        output: None,
    };
    for (position, block) in content.iter().enumerate() {
        match str_field(block, "type") {
            Some("text") => {
                if let Some(text) = str_field(block, "text") {
                    assembled.text.push_str(text);
                }
            }
            Some("tool_use") => {
                let wire = str_field(block, "name")
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| {
                        WireError::Malformed(format!("tool_use block {position} has no name"))
                    })?;
                let id = str_field(block, "id")
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| format!("toolu_{position}"), str::to_string);
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                assembled.push_tool_use(id, wire, input, names);
            }
            // Thinking and other block kinds carry nothing the caller uses.
            _ => {}
        }
    }
    let mut counters = Counters::default();
    counters.update(value.get("usage"));
    Ok(assembled.into_reply(
        str_field(value, "model").map(str::to_string),
        counters.usage(),
        str_field(value, "stop_reason").map(str::to_string),
    ))
}

/// A content block being assembled from stream events.
#[derive(Debug)]
enum Block {
    Text,
    ToolUse {
        id: String,
        name: String,
        /// Concatenated `input_json_delta` fragments.
        json: String,
        /// The `input` of `content_block_start` (used when no fragments follow).
        initial: Value,
    },
    Other,
}

/// The state of a streamed response.
#[derive(Debug, Default)]
pub(super) struct AnthropicStream {
    text: String,
    blocks: BTreeMap<u64, Block>,
    model: Option<String>,
    stop_reason: Option<String>,
    counters: Counters,
    /// `message_stop` arrived.
    done: bool,
}

impl AnthropicStream {
    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    pub(super) fn has_output(&self) -> bool {
        !self.text.is_empty()
            || self
                .blocks
                .values()
                .any(|block| matches!(block, Block::ToolUse { .. }))
    }

    pub(super) fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn on_event(&mut self, event: &SseEvent) -> Result<(), WireError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|err| {
            WireError::Malformed(format!("stream event is not valid JSON: {err}"))
        })?;
        let kind = str_field(&value, "type").unwrap_or(event.event.as_str());
        match kind {
            "message_start" => {
                let message = value.get("message");
                if let Some(model) = message.and_then(|m| str_field(m, "model")) {
                    self.model = Some(model.to_string());
                }
                self.counters.update(message.and_then(|m| m.get("usage")));
            }
            "content_block_start" => {
                let index = self.block_index(&value, true);
                let block = value.get("content_block");
                let started = match block.and_then(|b| str_field(b, "type")) {
                    Some("text") => {
                        if let Some(text) = block.and_then(|b| str_field(b, "text")) {
                            self.text.push_str(text);
                        }
                        Block::Text
                    }
                    Some("tool_use") => Block::ToolUse {
                        id: block
                            .and_then(|b| str_field(b, "id"))
                            .unwrap_or_default()
                            .to_string(),
                        name: block
                            .and_then(|b| str_field(b, "name"))
                            .unwrap_or_default()
                            .to_string(),
                        json: String::new(),
                        initial: block
                            .and_then(|b| b.get("input"))
                            .cloned()
                            .unwrap_or_else(|| json!({})),
                    },
                    _ => Block::Other,
                };
                self.blocks.insert(index, started);
            }
            "content_block_delta" => {
                let index = self.block_index(&value, false);
                let delta = value.get("delta");
                match delta.and_then(|d| str_field(d, "type")) {
                    Some("text_delta") => {
                        if let Some(text) = delta.and_then(|d| str_field(d, "text")) {
                            self.text.push_str(text);
                        }
                    }
                    Some("input_json_delta") => {
                        let fragment = delta
                            .and_then(|d| str_field(d, "partial_json"))
                            .unwrap_or_default();
                        match self.blocks.get_mut(&index) {
                            Some(Block::ToolUse { json, .. }) => json.push_str(fragment),
                            _ => {
                                return Err(WireError::Malformed(format!(
                                    "input_json_delta for content block {index}, which is not a \
                                     tool_use block"
                                )));
                            }
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = value.get("delta").and_then(|d| str_field(d, "stop_reason")) {
                    self.stop_reason = Some(reason.to_string());
                }
                self.counters.update(value.get("usage"));
            }
            "message_stop" => self.done = true,
            "error" => {
                let message =
                    error_in(&value).unwrap_or_else(|| super::short_text(data.as_bytes()));
                return Err(WireError::Provider(message));
            }
            // `ping`, `content_block_stop` and event kinds added later carry nothing needed.
            _ => {}
        }
        Ok(())
    }

    /// The `index` of a block event. Without one, a starting block follows the last block
    /// and a delta belongs to the last block.
    fn block_index(&self, value: &Value, starting: bool) -> u64 {
        u64_field(value, "index").unwrap_or_else(|| match self.blocks.keys().next_back() {
            Some(&last) if starting => last.saturating_add(1),
            Some(&last) => last,
            None => 0,
        })
    }

    pub(super) fn finish(self, names: &ToolNames) -> Result<Reply, WireError> {
        let mut assembled = Assembled {
            text: self.text,
            tool_calls: Vec::new(),
            output: None,
        };
        for (index, block) in self.blocks {
            if let Block::ToolUse {
                id,
                name,
                json,
                initial,
            } = block
            {
                if name.is_empty() {
                    return Err(WireError::Malformed(format!(
                        "streamed tool_use block {index} has no name"
                    )));
                }
                let id = if id.is_empty() {
                    format!("toolu_{index}")
                } else {
                    id
                };
                let input = if json.trim().is_empty() {
                    initial
                } else {
                    parse_arguments(&json)
                };
                assembled.push_tool_use(id, &name, input, names);
            }
        }
        Ok(assembled.into_reply(self.model, self.counters.usage(), self.stop_reason))
    }
}
