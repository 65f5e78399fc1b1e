//! [`ConnectionSettings`]: the host's override of a connection.

use std::fmt;
use std::time::Duration;

use crate::wire::AnthropicStructured;

/// The host's override of one connection (by name). Every field left `None` (or empty)
/// keeps what the program's connection entry says.
///
/// `Debug` never shows the API key or the values of extra headers.
#[derive(Clone, Default, PartialEq)]
pub struct ConnectionSettings {
    /// `openai`, `anthropic`, `ollama`, `mock` (answer from [`crate::MockConnections`]), or
    /// any other name for an OpenAI-compatible server.
    pub provider: Option<String>,
    /// The API key itself.
    pub api_key: Option<String>,
    /// The environment variable to read the API key from (when `api_key` is not set). The
    /// host named it, so it needs no approval; the program's `api_key`/`api_key_env` are
    /// then not consulted.
    pub api_key_env: Option<String>,
    /// Base URL (`http://host:port` or `http://host:port/v1`).
    pub base_url: Option<String>,
    /// Model used when an agent names none.
    pub default_model: Option<String>,
    /// Time limit of each attempt (an agent's `@timeout` still wins).
    pub timeout: Option<Duration>,
    /// Retry policy (an agent's `@retry` still wins).
    pub retry: Option<concerto_vm::host::RetryPolicy>,
    /// Requests per minute (every attempt counts).
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (input + output).
    pub tokens_per_minute: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Stream replies (a request's own `stream` still wins).
    pub stream: Option<bool>,
    /// Extra HTTP headers (added after, and replacing, the configured ones).
    pub headers: Vec<(String, String)>,
    /// How structured output is requested from Anthropic.
    pub anthropic_structured: Option<AnthropicStructured>,
    /// What to try, in order, when a call on this connection still fails after its retries
    /// with a failure [`ConnectionSettings::fallback_on`] lists. Only this connection's list
    /// is followed (a fallback's own fallbacks are not).
    pub fallbacks: Vec<Fallback>,
    /// The failures that move a call on to the next fallback; empty means all four
    /// [`FallbackOn`] kinds. A provider's refusal of the request itself (any other 4xx), a
    /// malformed reply and a schema failure never do.
    pub fallback_on: Vec<FallbackOn>,
}

/// One fallback of a connection: another connection (by name: one of the program's, or one
/// the host configured with [`ConnectionSettings`]), another model, or both. At least one of
/// the two must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The connection to call; `None` keeps the failing one.
    pub connection: Option<String>,
    /// The model to ask; `None` means the fallback connection's default model when it is
    /// another connection and has one, else the agent's model.
    pub model: Option<String>,
}

/// A kind of failure that moves a call on to a connection's next [`Fallback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FallbackOn {
    /// The provider answered 429.
    RateLimited,
    /// The provider answered with a 5xx status (529 included) or reported an error inside a
    /// stream.
    ServerError,
    /// No complete reply within the attempt's time limit.
    Timeout,
    /// The connection could not be made, or broke before a reply.
    ConnectionFailed,
}

impl FallbackOn {
    /// Every kind, in the order of their names.
    pub const ALL: [FallbackOn; 4] = [
        FallbackOn::RateLimited,
        FallbackOn::ServerError,
        FallbackOn::Timeout,
        FallbackOn::ConnectionFailed,
    ];

    /// The kind's name: `rate_limited`, `server_error`, `timeout`, `connection_failed`.
    pub fn name(self) -> &'static str {
        match self {
            FallbackOn::RateLimited => "rate_limited",
            FallbackOn::ServerError => "server_error",
            FallbackOn::Timeout => "timeout",
            FallbackOn::ConnectionFailed => "connection_failed",
        }
    }

    /// The kind named `name` (see [`FallbackOn::name`]).
    pub fn from_name(name: &str) -> Option<FallbackOn> {
        FallbackOn::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ConnectionSettings")
            .field("provider", &self.provider)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .field("base_url", &self.base_url)
            .field("default_model", &self.default_model)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .field("max_concurrent", &self.max_concurrent)
            .field("stream", &self.stream)
            .field("headers (values redacted)", &header_names)
            .field("anthropic_structured", &self.anthropic_structured)
            .field("fallbacks", &self.fallbacks)
            .field("fallback_on", &self.fallback_on)
            .finish()
    }
}
