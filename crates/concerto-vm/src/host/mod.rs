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

pub use concerto_ir::model::Dialect;
pub use concerto_ir::{Program, TypeDefKind};

use serde::{Deserialize, Serialize};

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
    /// What a model provider answered, when the failure came from one (the connection layer
    /// fills it in; it becomes the fields of the program's `AgentError`).
    pub provider: Option<Box<ProviderFailure>>,
}

/// The details of a failed call to a model provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProviderFailure {
    /// What kind of failure it was.
    pub kind: ProviderFailureKind,
    /// The HTTP status of the last attempt, when the provider answered with one.
    pub status: Option<u16>,
    /// The provider's `Retry-After`, in milliseconds, when it sent one.
    pub retry_after_ms: Option<u64>,
}

/// The kind of a [`ProviderFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProviderFailureKind {
    /// 429, or a provider's own rate-limit or overload error.
    RateLimited,
    /// The provider answered with an error status (or an error inside a reply).
    #[default]
    Provider,
    /// No usable reply arrived: the connection could not be made or broke, or the reply
    /// was malformed or cut short.
    Connection,
    /// No reply within the time limit.
    Timeout,
}

impl HostError {
    /// This error with the provider's details.
    pub fn with_provider(mut self, failure: ProviderFailure) -> HostError {
        self.provider = Some(Box::new(failure));
        self
    }
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
            provider: None,
        }
    }

    /// An unimplemented operation, naming the feature.
    pub fn unsupported(feature: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Unsupported,
            message: feature.into(),
            provider: None,
        }
    }

    /// A denied operation, naming what was denied and how to allow it.
    pub fn not_enabled(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::NotEnabled,
            message: message.into(),
            provider: None,
        }
    }

    /// A limit breach.
    pub fn limit(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Limit,
            message: message.into(),
            provider: None,
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

/// A task started by [`System::spawn`].
pub struct Spawned {
    /// Completes when the task has finished (or was cancelled).
    pub done: BoxFuture<()>,
    /// Cancels the task.
    pub abort: Box<dyn Fn() + Send + Sync>,
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
    /// A JSON Schema providers accept (see [`SchemaValidator::provider_schema`]).
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
        connection: u32,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>>;
}

/// Tools beyond the program's own code, the outside world (`std::fs`, `std::http`), and the
/// permission model every tool call goes through: host-registered tools, MCP servers, host
/// agents (external agent processes), files and the network.
///
/// A program's own `tool` declarations run as Concerto code, but [`ToolHost::check`] may
/// still switch them off. Everything that reaches outside the process is denied until the
/// host enables it.
pub trait ToolHost: Send + Sync {
    /// Whether `tool.method` may run (an empty `method`: whether any of its methods may).
    /// `tool` is a Concerto tool, an MCP server, a host agent or a host-registered tool of
    /// `program`. A refusal is [`HostErrorKind::NotEnabled`] naming what was denied and how
    /// to allow it.
    fn check(&self, program: &Program, tool: &str, method: &str) -> Result<(), HostError>;

    /// Whether the host registered a tool called `name`.
    fn is_registered(&self, name: &str) -> bool;

    /// Whether the host switched the tool (MCP server, host tool, …) `name` off as a whole
    /// (`--disable-tool NAME`): an agent then goes without it instead of failing.
    fn is_switched_off(&self, name: &str) -> bool;

    /// The functions an external tool provider offers a model: an MCP server of `program`
    /// (by its connection name) or a host-registered tool. Names are `Provider::function`.
    fn specs(
        &self,
        program: &Arc<Program>,
        tool: &str,
    ) -> BoxFuture<Result<Vec<ToolSpec>, HostError>>;

    /// Calls `tool.method(args)` of an MCP server or a host-registered tool, `args` being the
    /// JSON object of named arguments.
    fn call(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: serde_json::Value,
    ) -> BoxFuture<Result<Value, HostError>>;

    /// One exchange with host agent `program.hosts[host]`: writes `input` (already in the
    /// host's input format) and returns the reply text (already taken from the host's
    /// output format).
    fn host_exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<String, HostError>>;

    /// Opens a streaming session (`listen`) with host agent `program.hosts[host]`: starts the
    /// process if needed (with its init handshake), writes `input` (already in the host's
    /// input format) and hands back the session, from which the agent's messages are read.
    /// The host's timeout bounds the whole session.
    fn host_listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<Arc<dyn HostSession>, HostError>>;

    /// A `std::fs` operation, inside the allowed directories only.
    ///
    /// The error's variant is what the program sees (see [`OutsideError`]): a permitted
    /// operation that fails (file not found) is [`OutsideError::Failed`], an `Err` value; a
    /// refused one is [`OutsideError::Refused`], naming what was denied and how to allow it,
    /// a catchable error; a host failure is [`OutsideError::Host`].
    fn fs(&self, request: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>>;

    /// A `std::http` exchange, to allowed domains only (redirects included); failures as
    /// for [`ToolHost::fs`].
    fn http(&self, request: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>>;
}

/// A streaming session with a host agent, opened by [`ToolHost::host_listen`].
pub trait HostSession: Send + Sync {
    /// The next line the agent wrote, without its line ending; `None` once the agent closed
    /// its output. Fails with [`HostErrorKind::Timeout`] once the session's time is up.
    fn next_line(&self) -> BoxFuture<Result<Option<String>, HostError>>;
    /// Writes one line (a newline is added) to the agent.
    fn send_line(&self, line: String) -> BoxFuture<Result<(), HostError>>;
    /// Ends the session. `clean`: the agent ended it with a terminal message and its process
    /// stays for later calls; otherwise the process is stopped. A session dropped without
    /// `finish` stops the process too.
    fn finish(&self, clean: bool);
}

/// A `std::fs` operation. Paths are as the program wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsRequest {
    /// `read_file(path)`: the text.
    Read(String),
    /// `write_file(path, content)`: create or truncate.
    Write(String, String),
    /// `append_file(path, content)`: create if missing.
    Append(String, String),
    /// `exists(path)`.
    Exists(String),
    /// `list_dir(path)`: entry names.
    ListDir(String),
    /// `remove_file(path)`.
    Remove(String),
    /// `file_size(path)`: bytes.
    Size(String),
}

/// The outcome of a permitted [`FsRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsReply {
    /// Text read.
    Text(String),
    /// Done.
    Done,
    /// A yes/no answer.
    Bool(bool),
    /// Directory entry names.
    Names(Vec<String>),
    /// A size in bytes.
    Size(u64),
}

/// A `std::http` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, `PUT`, `DELETE`, `PATCH` or `HEAD`.
    pub method: String,
    /// Absolute `http`/`https` URL.
    pub url: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<String>,
    /// Time limit of the whole exchange.
    pub timeout: Option<Duration>,
}

/// The reply to an [`HttpRequest`] (any status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body text (lossy UTF-8).
    pub body: String,
}

/// Why a [`ToolHost::fs`] or [`ToolHost::http`] operation gave no reply. Each variant is one
/// way the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideError {
    /// The operation was permitted and attempted, and failed (a file that does not exist, a
    /// connection refused, a time limit): the program receives `Err(message)` as a value.
    Failed(OutsideFailure),
    /// The host's sandbox or permissions refused the operation (a path outside the allowed
    /// directories, a host that is not an allowed domain, `std::fs` switched off). The text
    /// names what was denied and how to allow it; the program sees what a
    /// [`HostError::not_enabled`] with this text becomes: a catchable error of kind
    /// `not_enabled` reading `not enabled: ` and the text.
    Refused(String),
    /// The host could not carry the operation out: the program sees this [`HostError`] as it
    /// sees any other, with the error kind its [`HostErrorKind`] maps to.
    Host(HostError),
}

/// A permitted outside operation that failed ([`OutsideError::Failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideFailure {
    /// What kind of failure it was (for the host; the program sees only `message`).
    pub kind: OutsideFailureKind,
    /// The text of the program's `Err` value.
    pub message: String,
}

/// The kind of an [`OutsideFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutsideFailureKind {
    /// A file operation failed with this operating-system error kind (`NotFound`,
    /// `IsADirectory`, `InvalidData` for a file that is not UTF-8 text, …).
    Io(std::io::ErrorKind),
    /// The HTTP request cannot be sent as given: the URL is not an absolute `http`/`https`
    /// URL, does not parse, has no host or carries credentials, a header name or value is
    /// invalid, or the method is not supported.
    InvalidRequest,
    /// No reply arrived: the HTTP client could not be set up, the connection could not be
    /// made or broke, or reading the body failed.
    Connection,
    /// A redirect could not be followed: its `Location` was invalid, or there were too many.
    Redirect,
    /// The reply's body was larger than the limit.
    TooLarge,
    /// The request's time limit ran out.
    Timeout,
}

impl OutsideError {
    /// An [`OutsideError::Failed`] of kind `kind`; `message` is the text the program receives.
    pub fn failed(kind: OutsideFailureKind, message: impl Into<String>) -> OutsideError {
        OutsideError::Failed(OutsideFailure {
            kind,
            message: message.into(),
        })
    }

    /// An [`OutsideError::Refused`] naming what was denied and how to allow it.
    pub fn refused(message: impl Into<String>) -> OutsideError {
        OutsideError::Refused(message.into())
    }
}

impl From<HostError> for OutsideError {
    fn from(err: HostError) -> OutsideError {
        OutsideError::Host(err)
    }
}

impl std::fmt::Display for OutsideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutsideError::Failed(failure) => failure.fmt(f),
            OutsideError::Refused(message) => f.write_str(message),
            OutsideError::Host(err) => err.fmt(f),
        }
    }
}

// The text is the inner error's own, so it is not repeated as a source.
impl std::error::Error for OutsideError {}

impl std::fmt::Display for OutsideFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for OutsideFailure {}

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
    /// A number that changes whenever hashmap `map` changes, answered at once; `None` when
    /// the store cannot tell (the default). With it, the VM keeps the entries it read for
    /// `map[i]` (how `for (k, v) in map` walks a hashmap) until the hashmap changes,
    /// instead of reading them all again for every index.
    fn hashmap_version(&self, map: u32) -> Option<u64> {
        let _ = map;
        None
    }
    /// Number of entries.
    fn hashmap_len(&self, map: u32) -> Reply<Result<usize, HostError>>;
    /// Removes every entry.
    fn hashmap_clear(&self, map: u32) -> Reply<Result<(), HostError>>;

    /// Appends `record` to the journal of run `run` (resumable runs). Only durable stores
    /// keep journals; the default refuses.
    fn journal_append(&self, run: &str, record: String) -> Reply<Result<(), HostError>> {
        let _ = (run, record);
        Reply::Ready(Err(HostError::unsupported(
            "run journals (resumable runs) need a durable state store (--state FILE.db or redis://…)",
        )))
    }

    /// The records of run `run`'s journal, oldest first (empty for an unknown run).
    fn journal_records(&self, run: &str) -> Reply<Result<Vec<String>, HostError>> {
        let _ = run;
        Reply::Ready(Err(HostError::unsupported(
            "run journals (resumable runs) need a durable state store (--state FILE.db or redis://…)",
        )))
    }

    /// `map.set_many({..})`: writes every entry, all or none. The default writes them one
    /// by one and is **not** atomic; stores shared between executions should override it.
    fn hashmap_set_many(
        &self,
        map: u32,
        entries: Vec<(Str, Value)>,
    ) -> Reply<Result<(), HostError>> {
        let mut pending = Vec::new();
        for (key, value) in entries {
            match self.hashmap_set(map, key, value) {
                Reply::Ready(Ok(())) => {}
                Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
                Reply::Pending(fut) => pending.push(fut),
            }
        }
        if pending.is_empty() {
            return Reply::Ready(Ok(()));
        }
        Reply::Pending(Box::pin(async move {
            for fut in pending {
                fut.await?;
            }
            Ok(())
        }))
    }

    /// `map.get_many([..])`: the value of each key, read together. The default reads them
    /// one by one (not a consistent snapshot); shared stores should override it.
    fn hashmap_get_many(
        &self,
        map: u32,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<Value>>, HostError>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.hashmap_get(map, key.as_str()) {
                Reply::Ready(Ok(v)) => out.push(v),
                Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
                Reply::Pending(_) => {
                    return Reply::Ready(Err(HostError::unsupported(
                        "get_many on a store that answers later without its own get_many",
                    )));
                }
            }
        }
        Reply::Ready(Ok(out))
    }

    /// `map.set(k, v)` returning the previous value (for change callbacks). The default
    /// reads, then writes (not atomic); shared stores should override it.
    fn hashmap_replace(
        &self,
        map: u32,
        key: Str,
        value: Value,
    ) -> Reply<Result<Option<Value>, HostError>> {
        let old = match self.hashmap_get(map, key.as_str()) {
            Reply::Ready(Ok(v)) => v,
            Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
            Reply::Pending(_) => {
                return Reply::Ready(Err(HostError::unsupported(
                    "change callbacks on a store that answers later without its own replace",
                )));
            }
        };
        match self.hashmap_set(map, key, value) {
            Reply::Ready(r) => Reply::Ready(r.map(|()| old)),
            Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(|()| old) })),
        }
    }

    /// `map.delete(k)` returning the removed value (for change callbacks). The default reads,
    /// then deletes (not atomic); shared stores should override it.
    fn hashmap_remove(&self, map: u32, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let old = match self.hashmap_get(map, key) {
            Reply::Ready(Ok(v)) => v,
            Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
            Reply::Pending(_) => {
                return Reply::Ready(Err(HostError::unsupported(
                    "change callbacks on a store that answers later without its own remove",
                )));
            }
        };
        match self.hashmap_delete(map, key) {
            Reply::Ready(r) => Reply::Ready(r.map(|_| old)),
            Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(|_| old) })),
        }
    }

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

/// The outcome of checking a reply against a schema.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaCheck {
    /// The reply holds a valid instance (after the schema's mode applied, e.g. coercion).
    Valid(serde_json::Value),
    /// What is wrong, one message per problem (`<error> at <path>`, `invalid JSON: …`).
    Invalid(Vec<String>),
}

/// Structured output: schemas compiled to JSON Schema, replies parsed and validated.
pub trait SchemaValidator: Send + Sync {
    /// The JSON Schema of schema `schema` in the form providers accept for structured
    /// output (JSON Schema type names, nested schemas resolved).
    fn provider_schema(
        &self,
        program: &Program,
        schema: u32,
    ) -> Result<serde_json::Value, HostError>;

    /// Extracts the JSON instance from a model reply (which may wrap it in prose or a code
    /// fence) and validates it against schema `schema` in the schema's mode.
    fn check(&self, program: &Program, schema: u32, reply: &str) -> Result<SchemaCheck, HostError>;
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

    /// Starts `task` now on the host's executor (a spawned async task of the program) and
    /// returns its completion and a way to cancel it. The default has no executor and gives
    /// the task back: it then runs when it is first awaited.
    fn spawn(&self, task: BoxFuture<()>) -> Result<Spawned, BoxFuture<()>> {
        Err(task)
    }
    /// Fills `buf` with random bytes.
    fn random_bytes(&self, buf: &mut [u8]);
}
