//! Reading an MCP server's settings from the program's `connections` (ir-format.md §10(b)).
//!
//! An `mcp Name { ... }` block becomes `{ "name": "Name", "config": { "type": "mcp", ... } }`;
//! every literal field of the block is copied, so the fields read here are `transport`,
//! `command` (a string with arguments, or an array), `args`, `env`, `cwd`, `url`, `headers`
//! and `timeout` (seconds). Error messages name fields, never their values: `env` and
//! `headers` may hold secrets.

use std::time::Duration;

use concerto_vm::host::{HostError, Program};
use serde_json::Value;

/// Why the settings of an MCP server cannot be read. To a caller it is a
/// [`HostError`] of kind `Failed` with the same text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum McpConfigError {
    /// The program has no connection by that name.
    #[error("the program declares no MCP server `{server}`")]
    Undeclared {
        /// The name asked for.
        server: String,
    },
    /// The connection by that name is an LLM connection.
    #[error("`{server}` is an LLM connection, not an MCP server")]
    NotMcp {
        /// The name asked for.
        server: String,
    },
    /// The block's settings are not an object, or a field is missing or invalid.
    #[error("MCP server `{server}`: {problem}")]
    Invalid {
        /// The server's name.
        server: String,
        /// What is wrong (naming fields, never their values).
        problem: String,
    },
}

impl From<McpConfigError> for HostError {
    fn from(err: McpConfigError) -> HostError {
        HostError::failed(err.to_string())
    }
}

/// Per-request time limit when the block sets no `timeout`.
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach one MCP server.
#[derive(Clone)]
pub(super) struct ServerConfig {
    /// The server's name in the program.
    pub(super) name: String,
    /// The transport and its settings.
    pub(super) transport: Transport,
    /// Time limit of the handshake and of every request.
    pub(super) timeout: Duration,
}

/// The transport of an MCP server.
#[derive(Clone)]
pub(super) enum Transport {
    /// A child process speaking MCP on its stdin/stdout.
    Stdio {
        /// Executable (looked up on `PATH` when it has no slash).
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Environment changes: a value sets the variable, `None` removes it.
        env: Vec<(String, Option<String>)>,
        /// Working directory.
        cwd: Option<String>,
    },
    /// An HTTP endpoint speaking the streamable-HTTP transport.
    Http {
        /// Endpoint URL (`http` or `https`).
        url: String,
        /// Extra request headers.
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

impl ServerConfig {
    /// Values that must not appear in messages (environment values given to the child).
    pub(super) fn secrets(&self) -> Vec<String> {
        match &self.transport {
            Transport::Stdio { env, .. } => env
                .iter()
                .filter_map(|(_, v)| v.clone())
                .filter(|v| v.len() >= 4)
                .collect(),
            Transport::Http { .. } => Vec::new(),
        }
    }

    /// What enabling the server starts or reaches, for a refusal: the whole command line
    /// of a stdio server (quoted as a shell would need it) or the URL without its query.
    pub(super) fn launch(&self) -> String {
        match &self.transport {
            Transport::Stdio { program, args, .. } => {
                let words = std::iter::once(program).chain(args).map(String::as_str);
                format!("would start `{}`", crate::command_line(words))
            }
            Transport::Http { url, .. } => format!("would connect to {}", without_query(url)),
        }
    }

    /// A short description of the endpoint for messages (`` `python3` `` or the URL).
    pub(super) fn endpoint(&self) -> String {
        match &self.transport {
            Transport::Stdio { program, .. } => format!("command `{program}`"),
            Transport::Http { url, .. } => format!("URL {}", without_query(url)),
        }
    }
}

/// The URL without its query and fragment (which may carry tokens).
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The configuration of the `mcp` block `server` of `program`.
pub(super) fn server_config(
    program: &Program,
    server: &str,
) -> Result<ServerConfig, McpConfigError> {
    let config = mcp_block(program, server)?;
    let fail = |problem: String| McpConfigError::Invalid {
        server: server.to_string(),
        problem,
    };

    let timeout = match config.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| {
                fail(format!(
                    "`timeout` must be a positive number of seconds, not {n}"
                ))
            })?,
        Some(other) => {
            return Err(fail(format!(
                "`timeout` must be a number of seconds, not {}",
                kind(other)
            )));
        }
    };

    let command = config.get("command").filter(|v| !v.is_null());
    let url = config.get("url").filter(|v| !v.is_null());
    let transport = match config.get("transport") {
        None | Some(Value::Null) => {
            if command.is_some() {
                "stdio"
            } else if url.is_some() {
                "http"
            } else {
                return Err(fail(
                    "the block sets neither `command` (stdio) nor `url` (HTTP)".into(),
                ));
            }
        }
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(fail(format!(
                "`transport` must be a string, not {}",
                kind(other)
            )));
        }
    };

    let transport = match transport.to_ascii_lowercase().as_str() {
        "stdio" => {
            let Some(command) = command else {
                return Err(fail("transport `stdio` needs a `command`".into()));
            };
            stdio(config, command).map_err(fail)?
        }
        // Refused when the program loads (concerto-ir); a `Program` built by other means gets
        // the same answer here.
        "sse" => {
            return Err(fail(
                "transport `sse` (the HTTP+SSE transport of MCP 2024-11-05) is not supported: \
                 the runtime has no client for it; use `transport: \"http\"` (streamable HTTP) \
                 or `transport: \"stdio\"`"
                    .into(),
            ));
        }
        "http" | "https" | "streamable-http" | "streamable_http" | "streamablehttp" => {
            let Some(url) = url else {
                return Err(fail(format!("transport `{transport}` needs a `url`")));
            };
            http_transport(config, url).map_err(fail)?
        }
        _ => {
            return Err(fail(format!(
                "unknown transport `{transport}` (expected `stdio`, or `http`/`streamable-http` with a `url`)"
            )));
        }
    };

    Ok(ServerConfig {
        name: server.to_string(),
        transport,
        timeout,
    })
}

/// The `config` object of MCP server `server`.
fn mcp_block<'p>(
    program: &'p Program,
    server: &str,
) -> Result<&'p serde_json::Map<String, Value>, McpConfigError> {
    let Some(connection) = program.connections.iter().find(|c| c.name == server) else {
        return Err(McpConfigError::Undeclared {
            server: server.to_string(),
        });
    };
    if !connection.is_mcp() {
        return Err(McpConfigError::NotMcp {
            server: server.to_string(),
        });
    }
    connection
        .config
        .as_object()
        .ok_or_else(|| McpConfigError::Invalid {
            server: server.to_string(),
            problem: "its configuration is not an object".into(),
        })
}

fn stdio(config: &serde_json::Map<String, Value>, command: &Value) -> Result<Transport, String> {
    let mut words = match command {
        Value::String(line) => shlex::split(line).ok_or_else(|| {
            "cannot split `command` into words (unbalanced quotes or a trailing backslash)"
                .to_string()
        })?,
        Value::Array(items) => items
            .iter()
            .map(|v| scalar_string(v).ok_or_else(|| "`command` array must hold strings".into()))
            .collect::<Result<Vec<String>, String>>()?,
        other => {
            return Err(format!(
                "`command` must be a string or an array of strings, not {}",
                kind(other)
            ));
        }
    };
    if words.is_empty() {
        return Err("`command` is empty".into());
    }
    let program = words.remove(0);
    if program.is_empty() {
        return Err("`command` names an empty program".into());
    }
    let mut args = words;
    match config.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                args.push(
                    scalar_string(item)
                        .ok_or_else(|| "`args` must be an array of strings".to_string())?,
                );
            }
        }
        Some(other) => {
            return Err(format!(
                "`args` must be an array of strings, not {}",
                kind(other)
            ));
        }
    }
    let mut env = Vec::new();
    match config.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (name, value) in vars {
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(format!("`env` has an invalid variable name `{name}`"));
                }
                let value = match value {
                    Value::Null => None,
                    other => Some(scalar_string(other).ok_or_else(|| {
                        format!("`env.{name}` must be a string, a number or a boolean")
                    })?),
                };
                if value.as_deref().is_some_and(|v| v.contains('\0')) {
                    return Err(format!("`env.{name}` contains a NUL character"));
                }
                env.push((name.clone(), value));
            }
        }
        Some(other) => {
            return Err(format!(
                "`env` must be an object of variable names to strings, not {}",
                kind(other)
            ));
        }
    }
    let cwd = match config.get("cwd") {
        None | Some(Value::Null) => None,
        Some(Value::String(dir)) if !dir.is_empty() => Some(dir.clone()),
        Some(other) => {
            return Err(format!(
                "`cwd` must be a non-empty string, not {}",
                kind(other)
            ));
        }
    };
    Ok(Transport::Stdio {
        program,
        args,
        env,
        cwd,
    })
}

fn http_transport(
    config: &serde_json::Map<String, Value>,
    url: &Value,
) -> Result<Transport, String> {
    let Value::String(url) = url else {
        return Err(format!("`url` must be a string, not {}", kind(url)));
    };
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        Ok(parsed) => {
            return Err(format!(
                "`url` must be an http or https URL, not a `{}` URL",
                parsed.scheme()
            ));
        }
        Err(e) => return Err(format!("`url` is not a valid URL ({e})")),
    }
    let mut headers = Vec::new();
    match config.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`headers` has an invalid header name `{name}`"))?;
                let value = scalar_string(value)
                    .and_then(|v| http::HeaderValue::from_str(&v).ok())
                    .ok_or_else(|| format!("`headers.{name}` is not a valid header value"))?;
                headers.push((header, value));
            }
        }
        Some(other) => {
            return Err(format!(
                "`headers` must be an object of header names to strings, not {}",
                kind(other)
            ));
        }
    }
    Ok(Transport::Http {
        url: url.clone(),
        headers,
    })
}

/// A string, number or boolean as text.
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The JSON kind of a value, for messages.
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The parameter names the block declares for `tool`, in order.
pub(super) fn declared_params(program: &Program, server: &str, tool: &str) -> Option<Vec<String>> {
    let config = mcp_block(program, server).ok()?;
    let decl = config
        .get("tools")?
        .as_array()?
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(tool))?;
    let params = match decl.get("params") {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(params) => params.as_array()?,
    };
    params
        .iter()
        .map(|p| p.get("name").and_then(Value::as_str).map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(connections: Value) -> Program {
        crate::test_program(serde_json::json!({ "connections": connections }))
    }

    fn error(program: &Program, server: &str) -> McpConfigError {
        match server_config(program, server) {
            Ok(_) => panic!("`{server}` was read"),
            Err(e) => e,
        }
    }

    #[test]
    fn each_reason_has_its_variant_and_the_host_error_keeps_the_text() {
        let program = program(serde_json::json!([
            {"name": "openai", "config": {"provider": "openai"}},
            {"name": "Slow", "config": {"type": "mcp", "command": "x", "timeout": "soon"}},
            {"name": "Fine", "config": {"type": "mcp", "command": "python3 server.py"}}
        ]));
        let undeclared = error(&program, "Git");
        assert_eq!(
            undeclared,
            McpConfigError::Undeclared {
                server: "Git".into()
            }
        );
        let host = HostError::from(undeclared);
        assert_eq!(host.kind, concerto_vm::host::HostErrorKind::Failed);
        assert_eq!(host.message, "the program declares no MCP server `Git`");
        assert_eq!(
            error(&program, "openai"),
            McpConfigError::NotMcp {
                server: "openai".into()
            }
        );
        let invalid = error(&program, "Slow");
        assert_eq!(
            invalid.to_string(),
            "MCP server `Slow`: `timeout` must be a number of seconds, not a string"
        );
        assert!(
            matches!(invalid, McpConfigError::Invalid { .. }),
            "{invalid:?}"
        );
        let fine = server_config(&program, "Fine").unwrap();
        assert!(
            matches!(fine.transport, Transport::Stdio { ref program, .. } if program == "python3")
        );
    }
}
