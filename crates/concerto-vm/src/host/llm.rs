//! The LLM connection layer ([`Connections`]) and its provider-neutral wire types: chat
//! messages, requests, replies, tool specs and calls, usage, retry policies.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BoxFuture, ConnectionId, HostError, Program};

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text content.
    pub content: String,
    /// On an assistant turn: the tools the model asked for (answered by the `tool`
    /// messages that follow it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// On a `tool` message: the tool's program name (`Tool::method`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// On a `tool` message: images the tool returned (its `content` names each one with a
    /// short placeholder). The connection layer passes them on where the provider accepts
    /// images; it never puts their data into text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImagePart>,
}

/// An image a tool returned: its media type and its bytes in base64 (as MCP carries them).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePart {
    /// `image/png`, `image/jpeg`, …
    pub mime_type: String,
    /// The bytes, base64-encoded.
    pub data: String,
}

impl std::fmt::Debug for ImagePart {
    // The data is long and says nothing to a reader: its length stands for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagePart")
            .field("mime_type", &self.mime_type)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl ChatMessage {
    /// A plain text message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            ..ChatMessage::default()
        }
    }

    /// An assistant turn that asks for tools (with whatever text came with it).
    pub fn assistant_tool_calls(text: impl Into<String>, calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: text.into(),
            tool_calls: calls,
            ..ChatMessage::default()
        }
    }

    /// The result of tool call `call_id` of tool `name`.
    pub fn tool_result(
        call_id: impl Into<String>,
        name: impl Into<String>,
        content: impl Into<String>,
    ) -> ChatMessage {
        ChatMessage {
            role: "tool".into(),
            content: content.into(),
            tool_call_id: Some(call_id.into()),
            name: Some(name.into()),
            ..ChatMessage::default()
        }
    }
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name as the program knows it (`Tool::method`). The connection layer maps it to a name
    /// the provider accepts and maps calls back.
    pub name: String,
    /// Description.
    pub description: String,
    /// JSON Schema of the parameters.
    pub parameters: serde_json::Value,
}

/// Structured output the reply must follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSchema {
    /// The schema's name in the program.
    pub name: String,
    /// A JSON Schema providers accept (see [`SchemaValidator::provider_schema`](super::SchemaValidator::provider_schema)).
    pub schema: serde_json::Value,
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Retry at once (a provider's `Retry-After` is still honoured).
    None,
    /// `initial_delay × attempt`.
    Linear,
    /// `initial_delay × 2^(attempt-1)`, with jitter.
    Exponential,
}

/// How often, and how patiently, one call is retried on transient failures (429, 5xx,
/// timeouts, dropped connections). There is one retry loop per call, in the connection
/// layer; it never multiplies with another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay growth.
    pub backoff: Backoff,
    /// Delay before the first retry.
    #[serde(with = "duration_ms")]
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    #[serde(with = "duration_ms")]
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Exponential,
            initial_delay: Duration::from_millis(1000),
            max_delay: Duration::from_secs(30),
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// One chat-completion request, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// Agent making the call (for accounting and messages).
    pub agent: String,
    /// The agent's model (or a `models` alias of the connection); `None` uses the
    /// connection's default model.
    #[serde(default)]
    pub model: Option<String>,
    /// Conversation, system prompt first when set.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Tools offered to the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Structured output (provider-native where the provider has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<ResponseSchema>,
    /// Time limit of each attempt (an agent's `@timeout`); `None` uses the connection's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_ms"
    )]
    pub timeout: Option<Duration>,
    /// Retry policy (an agent's `@retry`); `None` uses the connection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Stream the reply (assembled before it is returned); `None` uses the connection's
    /// setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl ChatRequest {
    /// A request with only a model and messages.
    pub fn new(
        agent: impl Into<String>,
        model: Option<String>,
        messages: Vec<ChatMessage>,
    ) -> Self {
        ChatRequest {
            agent: agent.into(),
            model,
            messages,
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            response_schema: None,
            timeout: None,
            retry: None,
            stream: None,
        }
    }
}

/// Token usage of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input (prompt) tokens, cached ones included.
    pub input_tokens: u64,
    /// Of the input tokens, those served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Whether the counts are estimates (the provider reported none).
    #[serde(default)]
    pub estimated: bool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider call id.
    pub id: String,
    /// The tool's program name (`Tool::method`), mapped back from the wire name.
    pub name: String,
    /// JSON arguments.
    pub arguments: serde_json::Value,
}

/// The reply to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatResponse {
    /// Text content.
    pub text: String,
    /// Model that answered.
    pub model: String,
    /// Provider (`openai`, `anthropic`, `mock`, …).
    #[serde(default)]
    pub provider: String,
    /// Token usage.
    pub usage: Usage,
    /// Tool calls requested by the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped (`stop`, `length`, `tool_calls`, `end_turn`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Estimated cost in US dollars; `None` when the model's price is unknown.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// HTTP attempts made (1 when the first succeeded).
    #[serde(default = "one")]
    pub attempts: u32,
    /// Time from the first attempt to the reply, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// The connection that answered when it is not the one the call named (a fallback
    /// answered); `None` when the named connection answered. The program's `Response`, its
    /// usage and the metrics name this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Where the call's time went, when the connection layer measured it (`None` from
    /// layers that do not, and for replies read back from a recording).
    #[serde(skip)]
    pub timing: Option<CallTiming>,
}

/// Where the time of one call went, as the HTTP connection layer measures it (every part
/// in microseconds).
///
/// `total_us` runs from the moment the connection layer takes the call to the reply,
/// retries, their delays and fallbacks included. The parts never add up to more than it:
/// `queue_us` plus the attempts' exchanges plus the retry delays plus `overhead_us` is the
/// total, and `connect_us` ≤ `ttfb_us` ≤ `first_token_us` lie inside the answering
/// attempt's exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTiming {
    /// The whole call.
    pub total_us: u64,
    /// Waiting for a rate or concurrency limit, over all attempts (0 without limits).
    pub queue_us: u64,
    /// Making the new connection the answering attempt was sent on; `None` when it went
    /// over a pooled connection.
    pub connect_us: Option<u64>,
    /// From sending the answering attempt to its response head.
    pub ttfb_us: Option<u64>,
    /// From sending the answering attempt to the first text or tool-call content of its
    /// stream; `None` for a reply that was not streamed or had no content.
    pub first_token_us: Option<u64>,
    /// The connection layer's own time: the total less the limit waits, the retry delays
    /// and the HTTP exchanges (sending, waiting, reading and decoding).
    pub overhead_us: u64,
}

fn one() -> u32 {
    1
}

impl ChatResponse {
    /// A text reply.
    pub fn text(text: impl Into<String>, model: impl Into<String>, usage: Usage) -> Self {
        ChatResponse {
            text: text.into(),
            model: model.into(),
            provider: String::new(),
            usage,
            tool_calls: Vec::new(),
            finish_reason: None,
            cost_usd: None,
            attempts: 1,
            latency_ms: 0,
            connection: None,
            timing: None,
        }
    }
}

/// The LLM connection layer.
pub trait Connections: Send + Sync {
    /// Sends one chat request over connection `connection` (an index into the program's
    /// `connections`), retrying transient failures by the request's or the connection's
    /// policy and within the connection's limits.
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>>;
}
