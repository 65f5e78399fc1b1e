//! Connection settings: what the IR says about a connection (`program.connections[i]`),
//! overlaid by the host's [`ConnectionSettings`], resolved once into a [`Resolved`]
//! connection (URL, headers with the API key, timeout, retry policy, limits).

use std::fmt;
use std::time::Duration;

use concerto_vm::host::{Backoff, HostError, RetryPolicy};
use http::Uri;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value as Json;

use crate::ConnectionSettings;
use crate::limits::LimitSpec;
use crate::retry::MAX_ATTEMPTS;
use crate::wire::{AnthropicStructured, Provider};

/// Time limit of one attempt when neither the request nor the connection sets one.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The value of the `anthropic-version` header.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

pub(crate) use crate::EnvLookup as EnvFn;
pub(crate) use crate::{HostApproval, KeyApproval};

/// The API host of a provider that has its own (`openai`, `anthropic`).
fn provider_host(provider_name: &str) -> Option<&'static str> {
    match provider_name {
        "openai" => Some("api.openai.com"),
        "anthropic" => Some("api.anthropic.com"),
        _ => None,
    }
}

/// Strings that must never appear in any output (API keys, secret header values).
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    fn add(&mut self, secret: &str) {
        // Very short values would redact ordinary words; keys are long.
        if secret.len() >= 4 && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_string());
        }
    }

    /// `text` with every secret replaced by `[REDACTED]`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// Where a connection's calls go.
#[derive(Debug)]
pub(crate) enum Target {
    /// Answered by the built-in mock provider.
    Mock,
    /// A real HTTP endpoint.
    Http(Box<HttpTarget>),
}

/// The HTTP side of a resolved connection.
#[derive(Debug)]
pub(crate) struct HttpTarget {
    /// Wire format.
    pub(crate) provider: Provider,
    /// `<base>/<endpoint>`.
    pub(crate) uri: Uri,
    /// Every request header (authentication included, marked sensitive).
    pub(crate) headers: HeaderMap,
    /// What to redact from any text that leaves the connection layer.
    pub(crate) secrets: Secrets,
}

/// A connection with every setting decided.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Connection name.
    pub(crate) name: String,
    /// Provider name as configured (`openai`, `anthropic`, `ollama`, `mock`, …), lowercase.
    pub(crate) provider_name: String,
    /// Where calls go.
    pub(crate) target: Target,
    /// The IR config (for model aliases and the default model).
    pub(crate) config: Json,
    /// The host's default model, which wins over the config's.
    pub(crate) default_model: Option<String>,
    /// Time limit of each attempt.
    pub(crate) timeout: Duration,
    /// Retry policy.
    pub(crate) retry: RetryPolicy,
    /// Rate and concurrency limits.
    pub(crate) limits: LimitSpec,
    /// Stream replies by default.
    pub(crate) stream: bool,
    /// How structured output is requested from Anthropic.
    pub(crate) anthropic_structured: AnthropicStructured,
}

impl Resolved {
    /// `text` with the connection's secrets redacted.
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.target {
            Target::Http(http) => http.secrets.redact(text),
            Target::Mock => text.to_string(),
        }
    }
}

fn err(name: &str, what: impl fmt::Display) -> HostError {
    HostError::failed(format!("connection '{name}': {what}"))
}

/// A string setting: absent or `null` → `None`; a non-string → error.
fn opt_str<'a>(name: &str, config: &'a Json, key: &str) -> Result<Option<&'a str>, HostError> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(err(
            name,
            format!("`{key}` must be a string, not {}", json_kind(other)),
        )),
    }
}

/// A positive whole-number setting.
fn opt_u32(name: &str, config: &Json, key: &str) -> Result<Option<u32>, HostError> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
            _ => Err(err(
                name,
                format!("`{key}` must be a whole number of at least 1, not {v}"),
            )),
        },
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Seconds (integer or fractional, > 0) as a duration.
fn seconds(name: &str, key: &str, v: &Json) -> Result<Duration, HostError> {
    match v.as_f64() {
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(err(
            name,
            format!("`{key}` must be a number of seconds between 0 and 86400, not {v}"),
        )),
    }
}

/// Parses the config's `retry` table over the defaults (1 attempt, exponential, 1 s, 30 s).
pub(crate) fn parse_retry(name: &str, retry: &Json) -> Result<RetryPolicy, HostError> {
    let mut policy = RetryPolicy::default();
    let Some(table) = retry.as_object() else {
        return Err(err(
            name,
            format!("`retry` must be a table, not {}", json_kind(retry)),
        ));
    };
    if let Some(v) = table.get("max_attempts").filter(|v| !v.is_null()) {
        policy.max_attempts = match v.as_u64() {
            Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX).min(MAX_ATTEMPTS),
            _ => {
                return Err(err(
                    name,
                    format!("`retry.max_attempts` must be a whole number of at least 1, not {v}"),
                ));
            }
        };
    }
    if let Some(v) = table.get("backoff").filter(|v| !v.is_null()) {
        policy.backoff = match v.as_str() {
            Some("none") => Backoff::None,
            Some("linear") => Backoff::Linear,
            Some("exponential") => Backoff::Exponential,
            _ => {
                return Err(err(
                    name,
                    format!(
                        "`retry.backoff` must be \"none\", \"linear\" or \"exponential\", not {v}"
                    ),
                ));
            }
        };
    }
    for (key, slot) in [
        ("initial_delay_ms", &mut policy.initial_delay),
        ("max_delay_ms", &mut policy.max_delay),
    ] {
        if let Some(v) = table.get(key).filter(|v| !v.is_null()) {
            *slot = match v.as_u64() {
                Some(ms) => Duration::from_millis(ms),
                None => {
                    return Err(err(
                        name,
                        format!("`retry.{key}` must be a whole number of milliseconds, not {v}"),
                    ));
                }
            };
        }
    }
    Ok(policy)
}

/// `<base>/<endpoint>`, where a base not ending in `/v1` gets `/v1` appended.
pub(crate) fn endpoint_uri(name: &str, base: &str, endpoint: &str) -> Result<Uri, HostError> {
    let trimmed = base.trim().trim_end_matches('/');
    let with_version = if trimmed.ends_with("/v1") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1")
    };
    let text = format!("{with_version}/{endpoint}");
    let uri: Uri = text
        .parse()
        .map_err(|e| err(name, format!("invalid base_url {base:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(err(
                name,
                format!("invalid base_url {base:?}: the URL must start with http:// or https://"),
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err(name, format!("invalid base_url {base:?}: no host")));
    }
    Ok(uri)
}

/// Whether a provider refuses to run without an API key.
fn key_required(provider_name: &str) -> bool {
    matches!(provider_name, "openai" | "anthropic")
}

/// The variable read when nothing names one.
fn default_key_variable(provider_name: &str) -> Option<&'static str> {
    match provider_name {
        "openai" => Some("OPENAI_API_KEY"),
        "anthropic" => Some("ANTHROPIC_API_KEY"),
        _ => None,
    }
}

/// What an API-key variable holds.
enum KeyVar {
    /// A key (trimmed).
    Key(String),
    /// The variable is set but holds nothing (or only blanks).
    Empty,
    /// The variable is not set.
    Unset,
}

fn read_env(env: &EnvFn, variable: &str) -> KeyVar {
    match env(variable) {
        None => KeyVar::Unset,
        Some(v) if v.trim().is_empty() => KeyVar::Empty,
        Some(v) => KeyVar::Key(v.trim().to_string()),
    }
}

/// Finds the API key: the host's, else `config.api_key` (literal or `{"$env": VAR}`), else
/// the variable named by `config.api_key_env` (else `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`).
fn resolve_key(
    name: &str,
    provider_name: &str,
    config: &Json,
    settings: Option<&ConnectionSettings>,
    env: &EnvFn,
    approve: Option<&KeyApproval>,
) -> Result<Option<String>, HostError> {
    if let Some(key) = settings
        .and_then(|s| s.api_key.as_deref())
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        return Ok(Some(key.to_string()));
    }
    // A variable the host named needs no approval, and wins over the program's choice.
    let host_variable = settings
        .and_then(|s| s.api_key_env.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let config_key = if host_variable.is_some() {
        None
    } else {
        config.get("api_key")
    };
    let variable: Option<String> = match config_key {
        None | Some(Json::Null) => None,
        Some(Json::String(key)) if !key.trim().is_empty() => {
            return Ok(Some(key.trim().to_string()));
        }
        Some(Json::String(_)) => None,
        Some(Json::Object(obj)) => match obj.get("$env").and_then(Json::as_str) {
            Some(var) => Some(var.to_string()),
            None => {
                return Err(err(
                    name,
                    "`api_key` must be a string or {\"$env\": \"VARIABLE\"}",
                ));
            }
        },
        Some(_) => {
            return Err(err(
                name,
                "`api_key` must be a string or {\"$env\": \"VARIABLE\"}",
            ));
        }
    };
    let variable = match (host_variable, variable) {
        (Some(v), _) => Some(v.to_string()),
        (None, Some(v)) => Some(v),
        (None, None) => opt_str(name, config, "api_key_env")?
            .map(str::to_string)
            .or_else(|| default_key_variable(provider_name).map(str::to_string)),
    };
    // The provider's own conventional variable needs no approval; any other one does (an
    // openai connection may not read ANTHROPIC_API_KEY by itself).
    if let Some(variable) = &variable
        && host_variable.is_none()
        && let Some(approve) = approve
        && default_key_variable(provider_name) != Some(variable.as_str())
        && !approve(variable)
    {
        return Err(HostError::not_enabled(format!(
            "connection '{name}': its API key variable `{variable}` was not approved by the \
             host; approve it with `--allow-env {variable}` (the program may then read it too) \
             or an `--env FILE` that sets it, or give the key in a connection override"
        )));
    }
    let Some(variable) = variable else {
        if key_required(provider_name) {
            return Err(err(
                name,
                "API key not found: set `api_key_env` to the name of the environment variable that holds it",
            ));
        }
        return Ok(None);
    };
    let state = match read_env(env, &variable) {
        KeyVar::Key(key) => return Ok(Some(key)),
        KeyVar::Empty => "is set but empty",
        KeyVar::Unset => "is not set",
    };
    if key_required(provider_name) {
        return Err(err(
            name,
            format!("API key not found: environment variable {variable} {state}"),
        ));
    }
    tracing::warn!(
        connection = name,
        variable = variable.as_str(),
        "API key variable {state}; sending requests without authentication"
    );
    Ok(None)
}

fn header_name(name: &str, header: &str) -> Result<HeaderName, HostError> {
    HeaderName::from_bytes(header.trim().as_bytes())
        .map_err(|_| err(name, format!("invalid HTTP header name {header:?}")))
}

fn secret_header_value(name: &str, what: &str, value: &str) -> Result<HeaderValue, HostError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        err(
            name,
            format!("{what} contains characters that are not allowed in an HTTP header"),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Whether a header's value should be treated as a secret (redacted everywhere).
fn looks_secret(header: &str) -> bool {
    let h = header.to_ascii_lowercase();
    h == "authorization"
        || h == "cookie"
        || h.contains("key")
        || h.contains("token")
        || h.contains("secret")
        || h.contains("auth")
}

/// Resolves the connection `name` whose IR configuration is `config`, overlaid by the
/// host's `settings` for it.
pub(crate) fn resolve(
    name: &str,
    config: &Json,
    settings: Option<&ConnectionSettings>,
    env: &EnvFn,
    approve: Option<&KeyApproval>,
    hosts: Option<&HostApproval>,
) -> Result<Resolved, HostError> {
    if config.get("type").and_then(Json::as_str) == Some("mcp") {
        return Err(err(
            name,
            "this is an MCP server, not an LLM connection; agents cannot use it as their provider",
        ));
    }
    if !(config.is_object() || config.is_null()) {
        return Err(err(
            name,
            format!(
                "the configuration must be a table, not {}",
                json_kind(config)
            ),
        ));
    }
    let provider_name = settings
        .and_then(|s| s.provider.as_deref())
        .map(str::to_string)
        .or(opt_str(name, config, "provider")?.map(str::to_string))
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "openai".to_string());

    let timeout = match settings.and_then(|s| s.timeout) {
        Some(t) if t.is_zero() => return Err(err(name, "the timeout must be longer than zero")),
        Some(t) => t,
        None => match config.get("timeout").filter(|v| !v.is_null()) {
            Some(v) => seconds(name, "timeout", v)?,
            None => DEFAULT_TIMEOUT,
        },
    };
    let retry = match settings.and_then(|s| s.retry) {
        Some(mut policy) => {
            policy.max_attempts = policy.max_attempts.clamp(1, MAX_ATTEMPTS);
            policy
        }
        None => match config.get("retry").filter(|v| !v.is_null()) {
            Some(table) => parse_retry(name, table)?,
            None => RetryPolicy::default(),
        },
    };
    let rate = config.get("rate_limit").cloned().unwrap_or(Json::Null);
    if !(rate.is_object() || rate.is_null()) {
        return Err(err(
            name,
            format!("`rate_limit` must be a table, not {}", json_kind(&rate)),
        ));
    }
    let pick = |host: Option<u32>, key: &str| -> Result<Option<u32>, HostError> {
        match host {
            Some(0) => Err(err(name, format!("`{key}` must be at least 1"))),
            Some(n) => Ok(Some(n)),
            None => opt_u32(name, &rate, key),
        }
    };
    let limits = LimitSpec {
        requests_per_minute: pick(
            settings.and_then(|s| s.requests_per_minute),
            "requests_per_minute",
        )?,
        tokens_per_minute: pick(
            settings.and_then(|s| s.tokens_per_minute),
            "tokens_per_minute",
        )?,
        max_concurrent: pick(
            settings.and_then(|s| s.max_concurrent),
            "concurrent_requests",
        )?,
    };
    let stream = match settings.and_then(|s| s.stream) {
        Some(s) => s,
        None => match config.get("stream") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(other) => {
                return Err(err(
                    name,
                    format!("`stream` must be true or false, not {other}"),
                ));
            }
        },
    };
    let default_model = settings
        .and_then(|s| s.default_model.clone())
        .filter(|m| !m.trim().is_empty());
    let anthropic_structured = match settings.and_then(|s| s.anthropic_structured) {
        Some(mode) => mode,
        None => match opt_str(name, config, "anthropic_structured")? {
            None => AnthropicStructured::default(),
            Some(text) => AnthropicStructured::from_name(text.trim()).ok_or_else(|| {
                err(
                    name,
                    format!(
                        "`anthropic_structured` must be \"output_config\", \"tool\" or \"prompt\", not {text:?}"
                    ),
                )
            })?,
        },
    };

    let target = if provider_name == "mock" {
        Target::Mock
    } else {
        Target::Http(Box::new(http_target(
            name,
            &provider_name,
            config,
            settings,
            env,
            approve,
            hosts,
        )?))
    };
    Ok(Resolved {
        name: name.to_string(),
        provider_name,
        target,
        config: config.clone(),
        default_model,
        timeout,
        retry,
        limits,
        stream,
        anthropic_structured,
    })
}

fn http_target(
    name: &str,
    provider_name: &str,
    config: &Json,
    settings: Option<&ConnectionSettings>,
    env: &EnvFn,
    approve: Option<&KeyApproval>,
    hosts: Option<&HostApproval>,
) -> Result<HttpTarget, HostError> {
    let provider = if provider_name == "anthropic" {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    };
    // Who chose the endpoint: the host (an override), the provider's own API, or the program.
    let mut chosen_by_program = true;
    let base = match settings
        .and_then(|s| s.base_url.as_deref())
        .filter(|b| !b.trim().is_empty())
    {
        Some(b) => {
            chosen_by_program = false;
            b.to_string()
        }
        None => match opt_str(name, config, "base_url")?.filter(|b| !b.trim().is_empty()) {
            Some(b) => b.to_string(),
            None => match provider_name {
                "openai" | "anthropic" => {
                    chosen_by_program = false;
                    format!(
                        "https://{}/v1",
                        provider_host(provider_name).unwrap_or_default()
                    )
                }
                "ollama" => "http://localhost:11434/v1".to_string(),
                other => {
                    return Err(err(
                        name,
                        format!(
                            "provider '{other}' has no default endpoint: set `base_url` to the URL of its OpenAI-compatible API"
                        ),
                    ));
                }
            },
        },
    };
    let uri = endpoint_uri(name, &base, provider.endpoint())?;
    if chosen_by_program && let Some(allow) = hosts {
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let is_providers_own = provider_host(provider_name)
            .is_some_and(|own| host.eq_ignore_ascii_case(own))
            && uri.scheme_str() == Some("https")
            && port == 443;
        if !is_providers_own && !allow(host, port) {
            let shown = host.trim_start_matches('[').trim_end_matches(']');
            return Err(HostError::not_enabled(format!(
                "connection '{name}': its base_url goes to `{host}:{port}`, which the host did \
                 not allow (a program may reach only its provider's own API by itself); allow \
                 it with `--allow-net {shown}` or set the connection's base_url in an override"
            )));
        }
    }
    let key = resolve_key(name, provider_name, config, settings, env, approve)?;

    let mut secrets = Secrets::default();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("concerto/", env!("CARGO_PKG_VERSION"))),
    );
    match provider {
        Provider::OpenAi => {
            if let Some(key) = &key {
                secrets.add(key);
                headers.insert(
                    http::header::AUTHORIZATION,
                    secret_header_value(name, "the API key", &format!("Bearer {key}"))?,
                );
            }
            for (field, header) in [
                ("organization", "openai-organization"),
                ("project", "openai-project"),
            ] {
                if let Some(value) = opt_str(name, config, field)?.filter(|v| !v.is_empty()) {
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        err(name, format!("`{field}` is not a valid HTTP header value"))
                    })?;
                    headers.insert(HeaderName::from_static(header), value);
                }
            }
        }
        Provider::Anthropic => {
            if let Some(key) = &key {
                secrets.add(key);
                headers.insert(
                    HeaderName::from_static("x-api-key"),
                    secret_header_value(name, "the API key", key)?,
                );
            }
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
        }
    }
    let mut extra: Vec<(String, String)> = Vec::new();
    match config.get("headers") {
        None | Some(Json::Null) => {}
        Some(Json::Object(map)) => {
            for (header, value) in map {
                let Some(value) = value.as_str() else {
                    return Err(err(
                        name,
                        format!("the value of header `{header}` must be a string"),
                    ));
                };
                extra.push((header.clone(), value.to_string()));
            }
        }
        Some(other) => {
            return Err(err(
                name,
                format!("`headers` must be a table, not {}", json_kind(other)),
            ));
        }
    }
    if let Some(s) = settings {
        extra.extend(s.headers.iter().cloned());
    }
    for (header, value) in extra {
        let header_name = header_name(name, &header)?;
        let secret = looks_secret(&header);
        if secret {
            secrets.add(value.trim());
        }
        let value = secret_header_value(name, &format!("the value of header `{header}`"), &value)?;
        headers.insert(header_name, value);
    }
    Ok(HttpTarget {
        provider,
        uri,
        headers,
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_vars(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-default-var".into()),
            "MY_VAR" => Some("  sk-my-var \n".into()),
            "EMPTY" => Some("   ".into()),
            "ZERO_LENGTH" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn endpoint_urls() {
        let ok =
            |base: &str, endpoint: &str| endpoint_uri("c", base, endpoint).unwrap().to_string();
        assert_eq!(
            ok("http://h:1", "chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            ok("http://h:1/v1/", "chat/completions"),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            ok(" https://x.io/api ", "messages"),
            "https://x.io/api/v1/messages"
        );
        for bad in ["localhost:8080", "", "ftp://h/v1", "http://"] {
            let err = endpoint_uri("c", bad, "messages").unwrap_err();
            assert!(
                err.message.starts_with("connection 'c': invalid base_url"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn retry_tables() {
        let p = parse_retry("c", &json!({"max_attempts": 3, "backoff": "none"})).unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.backoff, Backoff::None);
        assert_eq!(p.initial_delay, Duration::from_millis(1000));
        assert_eq!(p.max_delay, Duration::from_secs(30));
        let p = parse_retry(
            "c",
            &json!({"max_attempts": 500, "backoff": "linear", "initial_delay_ms": 10, "max_delay_ms": 100}),
        )
        .unwrap();
        assert_eq!(p.max_attempts, MAX_ATTEMPTS);
        assert_eq!(p.backoff, Backoff::Linear);
        assert_eq!(p.initial_delay, Duration::from_millis(10));
        assert_eq!(p.max_delay, Duration::from_millis(100));
        for bad in [
            json!({"max_attempts": 0}),
            json!({"max_attempts": "3"}),
            json!({"backoff": "fibonacci"}),
            json!({"initial_delay_ms": -1}),
            json!([1]),
        ] {
            assert!(parse_retry("c", &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_variable_the_host_names_needs_no_approval_and_wins() {
        let host = ConnectionSettings {
            api_key_env: Some("MY_VAR".into()),
            ..ConnectionSettings::default()
        };
        let refuse_all = |_: &str| false;
        let config = json!({"api_key": "sk-literal", "api_key_env": "OPENAI_API_KEY"});
        let key = resolve_key(
            "c",
            "openai",
            &config,
            Some(&host),
            &with_vars,
            Some(&refuse_all),
        );
        assert_eq!(key.unwrap().as_deref(), Some("sk-my-var"));
        // Without the host's variable the program's unapproved one is refused.
        let program_only = json!({"api_key_env": "MY_VAR"});
        let refused = resolve_key(
            "c",
            "openai",
            &program_only,
            None,
            &with_vars,
            Some(&refuse_all),
        );
        assert!(refused.unwrap_err().message.contains("was not approved"));
        let empty = ConnectionSettings {
            api_key_env: Some("EMPTY".into()),
            ..ConnectionSettings::default()
        };
        let err =
            resolve_key("c", "openai", &json!({}), Some(&empty), &with_vars, None).unwrap_err();
        assert_eq!(
            err.message,
            "connection 'c': API key not found: environment variable EMPTY is set but empty"
        );
    }

    #[test]
    fn key_sources_in_order() {
        let host = ConnectionSettings {
            api_key: Some("sk-host".into()),
            ..ConnectionSettings::default()
        };
        let config = json!({"api_key": "sk-literal", "api_key_env": "MY_VAR"});
        let key = |config: &Json, settings: Option<&ConnectionSettings>, provider: &str| {
            resolve_key("c", provider, config, settings, &with_vars, None)
        };
        assert_eq!(
            key(&config, Some(&host), "openai").unwrap().as_deref(),
            Some("sk-host")
        );
        assert_eq!(
            key(&config, None, "openai").unwrap().as_deref(),
            Some("sk-literal")
        );
        let env_ref = json!({"api_key": {"$env": "MY_VAR"}});
        assert_eq!(
            key(&env_ref, None, "openai").unwrap().as_deref(),
            Some("sk-my-var")
        );
        let named = json!({"api_key_env": "MY_VAR"});
        assert_eq!(
            key(&named, None, "anthropic").unwrap().as_deref(),
            Some("sk-my-var")
        );
        assert_eq!(
            key(&json!({}), None, "openai").unwrap().as_deref(),
            Some("sk-default-var")
        );
        // Missing or blank: an error for the hosted providers, no key for the others. A
        // variable that is set but holds only blanks is reported as such, not as unset.
        let blank = json!({"api_key_env": "EMPTY"});
        let err = key(&blank, None, "openai").unwrap_err();
        assert_eq!(
            err.message,
            "connection 'c': API key not found: environment variable EMPTY is set but empty"
        );
        let err = key(&json!({"api_key_env": "ZERO_LENGTH"}), None, "anthropic").unwrap_err();
        assert_eq!(
            err.message,
            "connection 'c': API key not found: environment variable ZERO_LENGTH is set but empty"
        );
        let unset = json!({"api_key_env": "NOT_THERE"});
        let err = key(&unset, None, "openai").unwrap_err();
        assert_eq!(
            err.message,
            "connection 'c': API key not found: environment variable NOT_THERE is not set"
        );
        assert_eq!(key(&blank, None, "ollama").unwrap(), None);
        assert_eq!(key(&json!({}), None, "vllm").unwrap(), None);
        let err = key(&json!({}), None, "anthropic").unwrap_err();
        assert!(err.message.contains("ANTHROPIC_API_KEY"));
        assert!(key(&json!({"api_key": 42}), None, "openai").is_err());
        assert!(key(&json!({"api_key": {"env": "X"}}), None, "openai").is_err());
    }

    #[test]
    fn host_settings_overlay_the_program() {
        let config = json!({"provider": "openai", "api_key": "sk-x", "timeout": 12.5,
            "stream": true, "retry": {"max_attempts": 2},
            "rate_limit": {"requests_per_minute": 5, "tokens_per_minute": 900,
                           "concurrent_requests": 2},
            "anthropic_structured": "prompt"});
        let r = resolve("c", &config, None, &no_env, None, None).unwrap();
        assert_eq!(r.timeout, Duration::from_millis(12_500));
        assert!(r.stream);
        assert_eq!(r.retry.max_attempts, 2);
        assert_eq!(
            r.limits,
            LimitSpec {
                requests_per_minute: Some(5),
                tokens_per_minute: Some(900),
                max_concurrent: Some(2)
            }
        );
        assert_eq!(r.anthropic_structured, AnthropicStructured::Prompt);
        let host = ConnectionSettings {
            provider: Some("Anthropic".into()),
            timeout: Some(Duration::from_secs(3)),
            stream: Some(false),
            max_concurrent: Some(9),
            retry: Some(RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            }),
            anthropic_structured: Some(AnthropicStructured::Tool),
            ..ConnectionSettings::default()
        };
        let r = resolve("c", &config, Some(&host), &no_env, None, None).unwrap();
        assert_eq!(r.provider_name, "anthropic");
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert!(!r.stream);
        assert_eq!(r.retry.max_attempts, 1);
        assert_eq!(r.limits.max_concurrent, Some(9));
        assert_eq!(r.limits.requests_per_minute, Some(5));
        assert_eq!(r.anthropic_structured, AnthropicStructured::Tool);
        let Target::Http(http) = &r.target else {
            panic!("not HTTP")
        };
        assert_eq!(http.provider, Provider::Anthropic);
        assert_eq!(
            http.uri.to_string(),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(http.headers.get("x-api-key").unwrap(), "sk-x");
        assert!(http.headers.get("x-api-key").unwrap().is_sensitive());
        // Defaults.
        let r = resolve(
            "c",
            &json!({"provider": "ollama"}),
            None,
            &no_env,
            None,
            None,
        )
        .unwrap();
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);
        assert_eq!(r.retry, RetryPolicy::default());
        assert!(r.limits.is_unlimited());
        let Target::Http(http) = &r.target else {
            panic!("not HTTP")
        };
        assert_eq!(
            http.uri.to_string(),
            "http://localhost:11434/v1/chat/completions"
        );
        assert!(http.headers.get("authorization").is_none());
        // The mock provider needs neither key nor URL.
        let mock = ConnectionSettings {
            provider: Some("mock".into()),
            ..ConnectionSettings::default()
        };
        let r = resolve(
            "c",
            &json!({"provider": "openai"}),
            Some(&mock),
            &no_env,
            None,
            None,
        )
        .unwrap();
        assert!(matches!(r.target, Target::Mock));
    }

    #[test]
    fn secrets_are_redacted_and_never_debugged() {
        let settings = ConnectionSettings {
            api_key: Some("sk-very-secret".into()),
            headers: vec![("X-Token".into(), "tok-very-secret".into())],
            ..ConnectionSettings::default()
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("X-Token"));
        let config = json!({"provider": "openai", "base_url": "http://h"});
        let r = resolve("c", &config, Some(&settings), &no_env, None, None).unwrap();
        assert_eq!(
            r.redact("echo sk-very-secret and tok-very-secret"),
            "echo [REDACTED] and [REDACTED]"
        );
        let debug = format!("{r:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
    }
}
