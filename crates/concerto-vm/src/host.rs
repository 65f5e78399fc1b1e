//! The traits the interpreter needs from the world outside it.
//!
//! The VM does no I/O of its own: it emits through an [`EmitSink`], calls LLMs through
//! [`Connections`], keeps hashmaps, ledgers and memories in a [`MemoryStore`], validates
//! output with a [`SchemaValidator`], reaches host tools through a [`ToolHost`], and reads
//! the clock, the environment and the console through [`System`]. Implementations live in
//! sibling crates (`concerto-conn`, `concerto-memory`, `concerto-schema`, `concerto-emit`)
//! and are wired together by `concerto-runtime`; a host can swap any of them.
//!
//! Operations that may take time return a [`BoxFuture`] (or a [`Reply`] that is usually
//! ready at once); the interpreter suspends at them without blocking a thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use concerto_ir::Program;

use crate::value::{Str, Value};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of an operation that is usually immediate but may need to wait
/// (for example a remote store). `Ready` costs nothing extra on the hot path.
pub enum Reply<T> {
    /// The result is available now.
    Ready(T),
    /// The result arrives later.
    Pending(BoxFuture<T>),
}

impl<T> From<T> for Reply<T> {
    fn from(value: T) -> Reply<T> {
        Reply::Ready(value)
    }
}

/// What a host component reports when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// Category.
    pub kind: HostErrorKind,
    /// Human-readable text (must never contain secrets such as API keys).
    pub message: String,
}

/// The category of a [`HostError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostErrorKind {
    /// The component does not implement the operation.
    Unsupported,
    /// The operation needs a permission that was not granted.
    NotEnabled,
    /// The operation ran out of time.
    Timeout,
    /// A configured limit was reached.
    Limit,
    /// The operation failed.
    Failed,
}

impl HostError {
    /// A failure.
    pub fn failed(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Failed,
            message: message.into(),
        }
    }

    /// An unimplemented operation, naming the feature.
    pub fn unsupported(feature: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Unsupported,
            message: feature.into(),
        }
    }

    /// A denied operation, naming what was denied and how to allow it.
    pub fn not_enabled(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::NotEnabled,
            message: message.into(),
        }
    }

    /// A limit breach.
    pub fn limit(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Limit,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HostError {}

impl From<HostError> for crate::VmError {
    fn from(err: HostError) -> crate::VmError {
        use crate::ErrorKind;
        let kind = match err.kind {
            HostErrorKind::Unsupported => ErrorKind::Unsupported,
            HostErrorKind::NotEnabled => ErrorKind::NotEnabled,
            HostErrorKind::Timeout => ErrorKind::Timeout,
            HostErrorKind::Limit => ErrorKind::Limit,
            HostErrorKind::Failed => ErrorKind::Host,
        };
        let message = match err.kind {
            HostErrorKind::Unsupported => format!("unsupported: {}", err.message),
            HostErrorKind::NotEnabled => format!("not enabled: {}", err.message),
            _ => err.message,
        };
        crate::VmError::new(kind, message)
    }
}

/// Receives the program's emits.
pub trait EmitSink: Send + Sync {
    /// Delivers a fire-and-forget emit. An error ends the execution (nothing is lost
    /// silently); a sink that wants back-pressure may block briefly or return
    /// [`HostErrorKind::Limit`].
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError>;

    /// Delivers an emit that waits for the host's reply (`EMIT_AWAIT`).
    fn emit_await(&self, channel: &str, payload: Value) -> BoxFuture<Result<Value, HostError>> {
        let _ = payload;
        let message = format!("no handler answers emit-await on channel `{channel}`");
        Box::pin(async move { Err(HostError::unsupported(message)) })
    }
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text content.
    pub content: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Name as the program knows it (`Tool::method`).
    pub name: String,
    /// Description.
    pub description: String,
    /// JSON Schema of the parameters.
    pub parameters: serde_json::Value,
}

/// One chat-completion request, provider-neutral.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChatRequest {
    /// Agent making the call (for accounting).
    pub agent: String,
    /// Model name.
    pub model: String,
    /// Conversation, system prompt first when set.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Output token limit.
    pub max_tokens: Option<u64>,
    /// Tools offered to the model.
    pub tools: Vec<ToolSpec>,
    /// JSON Schema the reply must follow (provider-native structured output).
    pub response_schema: Option<serde_json::Value>,
}

impl ChatRequest {
    /// A request with only a model and messages.
    pub fn new(
        agent: impl Into<String>,
        model: impl Into<String>,
        messages: Vec<ChatMessage>,
    ) -> Self {
        ChatRequest {
            agent: agent.into(),
            model: model.into(),
            messages,
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            response_schema: None,
        }
    }
}

/// Token usage of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Whether the counts are estimates.
    pub estimated: bool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Provider call id.
    pub id: String,
    /// Tool name as sent.
    pub name: String,
    /// JSON arguments.
    pub arguments: serde_json::Value,
}

/// The reply to a [`ChatRequest`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChatResponse {
    /// Text content.
    pub text: String,
    /// Model that answered.
    pub model: String,
    /// Token usage.
    pub usage: Usage,
    /// Tool calls requested by the model.
    pub tool_calls: Vec<ToolCall>,
}

impl ChatResponse {
    /// A text reply.
    pub fn text(text: impl Into<String>, model: impl Into<String>, usage: Usage) -> Self {
        ChatResponse {
            text: text.into(),
            model: model.into(),
            usage,
            tool_calls: Vec::new(),
        }
    }
}

/// The LLM connection layer.
pub trait Connections: Send + Sync {
    /// Sends one chat request over connection `connection` (an index into the program's
    /// `connections`).
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: u32,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>>;
}

/// Host-provided tools (closures registered through the facade, MCP servers, host agents).
pub trait ToolHost: Send + Sync {
    /// Calls `tool.method(args)`.
    fn call(
        &self,
        tool: &str,
        method: &str,
        args: Vec<Value>,
    ) -> BoxFuture<Result<Value, HostError>>;
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    /// Identifier text.
    pub identifier: String,
    /// Keys.
    pub keys: Vec<String>,
    /// Stored value.
    pub value: Value,
}

/// A ledger query.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerQuery {
    /// Word-containment search on identifiers.
    Identifier(String),
    /// Entries having the key (case-insensitive).
    Key(String),
    /// Entries having any of the keys.
    AnyKeys(Vec<String>),
    /// Entries having all of the keys.
    ExactKeys(Vec<String>),
}

/// The memory layer: hashmaps, ledgers and conversation memories, addressed by their index
/// in the program. Keys are the display strings of the program's keys.
pub trait MemoryStore: Send + Sync {
    /// `map.set(k, v)`
    fn hashmap_set(&self, map: u32, key: Str, value: Value) -> Reply<Result<(), HostError>>;
    /// `map.get(k)`
    fn hashmap_get(&self, map: u32, key: &str) -> Reply<Result<Option<Value>, HostError>>;
    /// `map.has(k)`
    fn hashmap_has(&self, map: u32, key: &str) -> Reply<Result<bool, HostError>>;
    /// `map.delete(k)`, whether the key was present.
    fn hashmap_delete(&self, map: u32, key: &str) -> Reply<Result<bool, HostError>>;
    /// Every entry, in insertion order.
    fn hashmap_entries(&self, map: u32) -> Reply<Result<Vec<(Str, Value)>, HostError>>;
    /// Number of entries.
    fn hashmap_len(&self, map: u32) -> Reply<Result<usize, HostError>>;
    /// Removes every entry.
    fn hashmap_clear(&self, map: u32) -> Reply<Result<(), HostError>>;

    /// Upserts an entry by identifier.
    fn ledger_insert(&self, ledger: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>>;
    /// Replaces the value of an entry; whether it existed.
    fn ledger_update(
        &self,
        ledger: &str,
        identifier: &str,
        value: Value,
    ) -> Reply<Result<bool, HostError>>;
    /// Replaces the keys of an entry; whether it existed.
    fn ledger_update_keys(
        &self,
        ledger: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>>;
    /// Removes an entry; whether it existed.
    fn ledger_delete(&self, ledger: &str, identifier: &str) -> Reply<Result<bool, HostError>>;
    /// Entries matching a query, in insertion order.
    fn ledger_query(
        &self,
        ledger: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>>;
    /// Every entry, in insertion order.
    fn ledger_entries(&self, ledger: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>>;
    /// Removes every entry.
    fn ledger_clear(&self, ledger: &str) -> Reply<Result<(), HostError>>;

    /// Appends a message; the store keeps at most `max_messages` (newest).
    fn memory_append(
        &self,
        memory: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>>;
    /// Every stored message, oldest first.
    fn memory_messages(&self, memory: &str) -> Reply<Result<Vec<ChatMessage>, HostError>>;
    /// Removes every message.
    fn memory_clear(&self, memory: &str) -> Reply<Result<(), HostError>>;
}

/// Validates JSON against a program schema.
pub trait SchemaValidator: Send + Sync {
    /// Checks `instance` against schema `schema` of `program`. `Err` lists the problems.
    fn validate(
        &self,
        program: &Program,
        schema: u32,
        instance: &serde_json::Value,
    ) -> Result<Result<(), Vec<String>>, HostError>;
}

/// Severity of a `std::log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

/// The process-level services: console, environment, clock, randomness, logging.
pub trait System: Send + Sync {
    /// Writes `print`/`println` output.
    fn print(&self, text: &str);
    /// Writes a `std::log` message.
    fn log(&self, level: LogLevel, message: &str);
    /// Reads an environment variable.
    fn env_var(&self, name: &str) -> Option<String>;
    /// Every environment variable.
    fn env_vars(&self) -> Vec<(String, String)>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic instant for measuring durations.
    fn monotonic(&self) -> std::time::Instant {
        std::time::Instant::now()
    }
    /// Waits without blocking a thread.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;
    /// Fills `buf` with random bytes.
    fn random_bytes(&self, buf: &mut [u8]);
}
