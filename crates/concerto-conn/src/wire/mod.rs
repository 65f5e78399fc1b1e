//! Provider wire formats: request bodies, response parsing and stream decoding.
//!
//! Pure code without I/O: the transport hands this module bytes and gets JSON bodies,
//! [`Reply`]s and [`WireError`]s back. Two formats cover every supported server:
//! [`Provider::OpenAi`] (OpenAI Chat Completions, also spoken by Ollama, vLLM, OpenRouter
//! and other compatible servers) and [`Provider::Anthropic`] (Anthropic Messages).
//!
//! Source layout:
//! - `names`: [`ToolNames`], program tool names ↔ names the providers accept.
//! - `sse`: the incremental Server-Sent Events parser.
//! - `openai`, `anthropic`: each provider's request body, response parser and stream state.
//! - this file: the provider-neutral entry points and [`StreamDecoder`].

mod anthropic;
mod names;
mod openai;
mod sse;
#[cfg(test)]
mod tests;

use concerto_vm::host::{ChatRequest, ToolCall, Usage};
use serde_json::Value;

pub use names::ToolNames;

use anthropic::AnthropicStream;
use openai::OpenAiStream;
use sse::{SseEvent, SseParser};

/// The wire format a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// OpenAI Chat Completions; also OpenAI-compatible servers (Ollama, vLLM, OpenRouter).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Provider {
    /// The provider's name as reported in responses (`openai`, `anthropic`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }

    /// The endpoint path below the API base URL (`chat/completions`, `messages`).
    pub fn endpoint(self) -> &'static str {
        match self {
            Provider::OpenAi => "chat/completions",
            Provider::Anthropic => "messages",
        }
    }
}

/// How a response schema reaches Anthropic, which has several mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnthropicStructured {
    /// Native structured output: `output_config: {format: {type: "json_schema", schema}}`.
    #[default]
    OutputConfig,
    /// A tool shaped like the schema that the model is made to call; its input becomes the
    /// reply text. Build the request's names with [`ToolNames::for_request`] so the reply
    /// is recognised.
    Tool,
    /// The schema described in the system prompt (for servers without either mechanism).
    Prompt,
}

impl AnthropicStructured {
    /// The mode named `output_config`, `tool` or `prompt` (as written in configuration).
    pub fn from_name(name: &str) -> Option<AnthropicStructured> {
        match name {
            "output_config" => Some(AnthropicStructured::OutputConfig),
            "tool" => Some(AnthropicStructured::Tool),
            "prompt" => Some(AnthropicStructured::Prompt),
            _ => None,
        }
    }
}

/// Everything a request body is built from.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The resolved model name.
    pub model: &'a str,
    /// The provider-neutral request.
    pub request: &'a ChatRequest,
    /// Ask for a streamed reply.
    pub stream: bool,
    /// Tool names for this request.
    pub names: &'a ToolNames,
    /// How Anthropic receives a response schema (ignored for OpenAI).
    pub anthropic_structured: AnthropicStructured,
    /// Send the images tool results carry (`openai` and `anthropic` connections: their
    /// APIs accept them); otherwise the model sees only their placeholders in the text.
    pub images: bool,
}

/// The media types both providers accept in an image part.
pub(crate) fn image_type_accepted(mime_type: &str) -> bool {
    matches!(
        mime_type.to_ascii_lowercase().as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

/// A parsed reply, before the transport adds attempts, latency, provider and cost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// Text content (for Anthropic's [`AnthropicStructured::Tool`], the output tool's input
    /// as JSON text).
    pub text: String,
    /// The model that answered, when the provider said.
    pub model: Option<String>,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Tool calls, with program tool names (a name the request never offered is kept as
    /// the model sent it).
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped, in the provider's words (`stop`, `tool_calls`, `end_turn`, …).
    pub finish_reason: Option<String>,
}

/// Why a response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body or a stream event is not what the provider's format allows.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The stream ended before the provider marked it complete.
    #[error("truncated response: {0}")]
    Truncated(String),
    /// The provider answered with an error object.
    #[error("provider error: {0}")]
    Provider(String),
}

/// The JSON body of a request for `provider`.
pub fn request_body(provider: Provider, out: &Outgoing<'_>) -> Value {
    match provider {
        Provider::OpenAi => openai::request_body(out),
        Provider::Anthropic => anthropic::request_body(out),
    }
}

/// Parses a complete (non-streamed) response body.
///
/// # Errors
/// [`WireError::Malformed`] when the body is not JSON or lacks the provider's reply
/// structure, [`WireError::Provider`] when it holds an error object.
pub fn parse_body(provider: Provider, body: &[u8], names: &ToolNames) -> Result<Reply, WireError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        WireError::Malformed(format!(
            "the response body is not valid JSON ({err}): {}",
            short_text(body)
        ))
    })?;
    if !value.is_object() {
        return Err(WireError::Malformed(format!(
            "the response body is not a JSON object: {}",
            short_text(body)
        )));
    }
    match provider {
        Provider::OpenAi => openai::parse(&value, names),
        Provider::Anthropic => anthropic::parse(&value, names),
    }
}

/// The text of an error response with HTTP status `status`: the provider's
/// `error.message`, or else a short, truncated excerpt of the body, after `HTTP <status>`
/// (`HTTP 429: Rate limit reached`). Anything shaped like an API key is redacted.
pub fn error_message(provider: Provider, status: u16, body: &[u8]) -> String {
    // Both providers (and the compatible servers) put the text in `error.message`.
    let _ = provider;
    let detail = match serde_json::from_slice::<Value>(body) {
        Ok(value) => error_in(&value)
            .or_else(|| str_field(&value, "message").map(clean_message))
            .or_else(|| str_field(&value, "detail").map(clean_message))
            .unwrap_or_else(|| short_text(body)),
        Err(_) => short_text(body),
    };
    // A connection follows no redirect (the host a redirect names was never allowed).
    let redirect = if (300..400).contains(&status) {
        " (a connection follows no redirect: set its base_url to the API's own address)"
    } else {
        ""
    };
    if detail.is_empty() {
        format!("HTTP {status}{redirect}")
    } else {
        format!("HTTP {status}: {detail}{redirect}")
    }
}

/// A rough token count for `text`: a quarter of its characters, rounded up (at least 1
/// for non-empty text, 0 for empty text).
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

/// Usage estimated from the request's messages and the reply text, for providers that
/// report none (`estimated` is set).
pub fn estimate_usage(request: &ChatRequest, reply_text: &str) -> Usage {
    let input = request
        .messages
        .iter()
        .map(|message| {
            let calls: u64 = message
                .tool_calls
                .iter()
                .map(|call| {
                    estimate_tokens(&call.name) + estimate_tokens(&arguments_text(&call.arguments))
                })
                .sum();
            estimate_tokens(&message.content) + calls
        })
        .sum();
    Usage {
        input_tokens: input,
        cached_tokens: 0,
        output_tokens: estimate_tokens(reply_text),
        estimated: true,
    }
}

/// Decodes a streamed (SSE) response incrementally; [`StreamDecoder::finish`] returns
/// the assembled [`Reply`]. A stream that ends before the provider's end marker
/// (`data: [DONE]`, `message_stop`) is an error, never a partial reply.
#[derive(Debug)]
pub struct StreamDecoder {
    provider: Provider,
    names: ToolNames,
    sse: SseParser,
    state: StreamState,
    /// Scratch space for the events one chunk completes.
    events: Vec<SseEvent>,
    /// The first error; every later call reports it again.
    failed: Option<WireError>,
}

#[derive(Debug)]
enum StreamState {
    OpenAi(OpenAiStream),
    Anthropic(AnthropicStream),
}

impl StreamState {
    fn is_done(&self) -> bool {
        match self {
            StreamState::OpenAi(state) => state.is_done(),
            StreamState::Anthropic(state) => state.is_done(),
        }
    }

    fn has_output(&self) -> bool {
        match self {
            StreamState::OpenAi(state) => state.has_output(),
            StreamState::Anthropic(state) => state.has_output(),
        }
    }

    fn on_event(&mut self, event: &SseEvent) -> Result<(), WireError> {
        match self {
            StreamState::OpenAi(state) => state.on_event(event),
            StreamState::Anthropic(state) => state.on_event(event),
        }
    }
}

impl StreamDecoder {
    /// A decoder for a stream from `provider` answering a request with tool names `names`.
    pub fn new(provider: Provider, names: ToolNames) -> StreamDecoder {
        let state = match provider {
            Provider::OpenAi => StreamState::OpenAi(OpenAiStream::default()),
            Provider::Anthropic => StreamState::Anthropic(AnthropicStream::default()),
        };
        StreamDecoder {
            provider,
            names,
            sse: SseParser::new(),
            state,
            events: Vec::new(),
            failed: None,
        }
    }

    /// The provider this decoder reads.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Whether any text or tool-call content has arrived yet.
    pub fn has_output(&self) -> bool {
        self.state.has_output()
    }

    /// Whether the provider's end marker has arrived (bytes after it are ignored).
    pub fn is_complete(&self) -> bool {
        self.state.is_done()
    }

    /// Consumes the next chunk of the body, which may end anywhere (even inside a UTF-8
    /// character).
    ///
    /// # Errors
    /// [`WireError::Malformed`] for an event that is not valid JSON (or a stream that is
    /// not valid UTF-8), [`WireError::Provider`] for an error event. After an error the
    /// decoder keeps returning it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.state.is_done() {
            return Ok(());
        }
        let result = self.feed_inner(bytes);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn feed_inner(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        let parsed = self.sse.feed(bytes, &mut events);
        // Events completed before a framing error still count: bytes after the end
        // marker are ignored even when they are not valid SSE.
        let mut result = Ok(());
        for event in &events {
            if self.state.is_done() {
                break;
            }
            result = self.state.on_event(event);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() && !self.state.is_done() {
            result = parsed;
        }
        events.clear();
        self.events = events;
        result
    }

    /// The reply text received so far.
    pub fn text_so_far(&self) -> &str {
        match &self.state {
            StreamState::OpenAi(state) => state.text(),
            StreamState::Anthropic(state) => state.text(),
        }
    }

    /// Ends the stream and assembles the reply.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when the end marker never arrived (including a last event
    /// cut off half-way), any error [`StreamDecoder::feed`] reported, and
    /// [`WireError::Malformed`] for a tool call without a name.
    pub fn finish(mut self) -> Result<Reply, WireError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if !self.state.is_done() {
            // A last event without its closing blank line still counts; a cut-off one
            // means the stream was truncated.
            let mut events = Vec::new();
            self.sse.finish(&mut events).map_err(|err| {
                WireError::Truncated(format!("the stream ended inside an event ({err})"))
            })?;
            for event in &events {
                if self.state.is_done() {
                    break;
                }
                self.state.on_event(event).map_err(|err| match err {
                    WireError::Malformed(detail) => {
                        WireError::Truncated(format!("the stream ended inside an event ({detail})"))
                    }
                    other => other,
                })?;
            }
        }
        if !self.state.is_done() {
            let marker = match self.provider {
                Provider::OpenAi => "`data: [DONE]`",
                Provider::Anthropic => "`message_stop`",
            };
            return Err(WireError::Truncated(format!(
                "the stream ended before {marker}"
            )));
        }
        match self.state {
            StreamState::OpenAi(state) => state.finish(&self.names),
            StreamState::Anthropic(state) => state.finish(&self.names),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the provider modules.
// ---------------------------------------------------------------------------------------

/// Longest provider message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// A string field of a JSON object.
pub(crate) fn str_field<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

/// A non-negative integer field (compatible servers sometimes send `12.0`).
pub(crate) fn u64_field(value: &Value, key: &str) -> Option<u64> {
    let field = value.get(key)?;
    field.as_u64().or_else(|| {
        field
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n as u64)
    })
}

/// The message of an `error` member (`{"error": {"message": …}}` or `{"error": "…"}`).
pub(crate) fn error_in(value: &Value) -> Option<String> {
    match value.get("error")? {
        Value::Object(error) => {
            let text = error
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .or_else(|| error.get("type").and_then(Value::as_str))
                .or_else(|| error.get("code").and_then(Value::as_str))
                .map_or_else(|| Value::Object(error.clone()).to_string(), str::to_string);
            Some(clean_message(&text))
        }
        Value::String(text) => Some(clean_message(text)),
        _ => None,
    }
}

/// Tool-call arguments as sent over the wire: JSON text, or the raw text kept when the
/// model's arguments did not parse.
pub(crate) fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// Streamed or stringified tool arguments as JSON; text that is not JSON is kept as a
/// JSON string so nothing is lost (the tool layer reports it).
pub(crate) fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// A tool's parameter schema as providers require it (an object schema).
pub(crate) fn parameters_schema(parameters: &Value) -> Value {
    if parameters.is_object() {
        parameters.clone()
    } else {
        serde_json::json!({"type": "object", "properties": {}})
    }
}

/// A short, single-line excerpt of a body for error messages.
pub(crate) fn short_text(body: &[u8]) -> String {
    clean_message(&String::from_utf8_lossy(body))
}

/// Collapses whitespace, truncates to a few hundred characters and redacts key-like words.
fn clean_message(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let redacted = redact_secrets(&collapsed);
    if redacted.chars().count() > MAX_MESSAGE_CHARS {
        let mut cut: String = redacted.chars().take(MAX_MESSAGE_CHARS).collect();
        cut.push('…');
        cut
    } else {
        redacted
    }
}

/// Replaces words that look like API keys (`sk-…`, `sk-ant-…`, long `Bearer` tokens) with
/// a marker; providers sometimes echo part of a key in their error text.
pub(crate) fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let mut after_bearer = false;
    let flush = |word: &mut String, out: &mut String, after_bearer: &mut bool| {
        if !word.is_empty() {
            let key_like = (word.starts_with("sk-") && word.len() >= 12)
                || (*after_bearer && word.len() >= 16);
            *after_bearer = word.eq_ignore_ascii_case("bearer");
            if key_like {
                out.push_str("[redacted]");
            } else {
                out.push_str(word);
            }
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut after_bearer);
            if !c.is_whitespace() {
                after_bearer = false;
            }
            out.push(c);
        }
    }
    flush(&mut word, &mut out, &mut after_bearer);
    out
}
