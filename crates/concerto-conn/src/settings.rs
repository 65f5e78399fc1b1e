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
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ConnectionSettings")
            .field("provider", &self.provider)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
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
            .finish()
    }
}
