//! Spans of what a run does, through the `tracing` facade: agent calls, the requests each
//! makes (the first, tool rounds, schema re-asks), tool calls and spawned tasks. The
//! connection layer adds one span per HTTP attempt under a request. Nothing here exports
//! anything: a host that installs a `tracing` subscriber interested in [`TARGET`] sees them
//! (the CLI's `--trace` writes them as a Chrome trace); without one, a span costs the
//! callsite's interest check.
//!
//! Names and attributes follow the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.usage.input_tokens`/`output_tokens`,
//! `gen_ai.response.finish_reasons`, `gen_ai.tool.name`, `gen_ai.tool.call.id`,
//! `error.type`), `otel.name` carries the conventional span name (`chat <model>`,
//! `execute_tool <tool>`), and `concerto.*` fields add ours. Prompt and completion text are
//! recorded only when the host opts in ([`crate::ExecConfig::trace_content`]); keys never
//! are.

use tracing::Span;
use tracing::field::Empty;

use crate::host::ChatResponse;

/// The `tracing` target of every span of a run (the connection layer's attempts included).
pub const TARGET: &str = "concerto::span";

/// A count as a span field: a signed 64-bit integer, the integer type OpenTelemetry
/// attributes have (an unsigned field would be exported as text).
pub fn int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// The span of one agent call (`Agent.execute`, `execute_with_schema`, `chat`), from the
/// call until its result is handed back; its requests and tool calls are its children.
/// (Public, with [`request`], so that benchmarks can make the spans an agent call makes.)
pub fn agent_call(agent: &str, connection: &str, model: Option<&str>, method: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "agent_call",
        otel.name = %format_args!("invoke_agent {agent}"),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = agent,
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        concerto.agent = agent,
        concerto.method = method,
        concerto.connection = connection,
        concerto.usage.estimated = Empty,
        concerto.cost_usd = Empty,
        concerto.requests = Empty,
        error.type = Empty,
        otel.status_code = Empty,
        code.function.name = Empty,
        code.file.path = Empty,
        code.line.number = Empty,
        code.column.number = Empty,
    );
    // The model the agent names; without one the connection's default answers, and the
    // reply's `gen_ai.response.model` says which.
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
    span
}

/// The span of one request of an agent call to its connection (the first, each tool round,
/// each schema re-ask): a child of the call's span; the attempts are its children.
pub fn request(parent: &Span, model: Option<&str>, round: u32, schema_attempt: u32) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: parent,
        "llm_request",
        otel.kind = "client",
        otel.name = %format_args!("chat{}{}", if model.is_some() { " " } else { "" }, model.unwrap_or("")),
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        concerto.round = int(round),
        concerto.schema_attempt = int(schema_attempt),
        concerto.usage.estimated = Empty,
        concerto.cost_usd = Empty,
        concerto.attempts = Empty,
        concerto.connection = Empty,
        concerto.total_us = Empty,
        concerto.queue_us = Empty,
        concerto.connect_us = Empty,
        concerto.ttfb_us = Empty,
        concerto.first_token_us = Empty,
        concerto.overhead_us = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
    span
}

/// Records what a reply says on a request's span (made by [`request`]): provider, model,
/// tokens (and whether they are estimates), finish reason, cost (`unknown` without a price),
/// and where its time went when the connection layer measured it (`concerto.total_us`,
/// `queue_us`, `connect_us`, `ttfb_us`, `first_token_us`, `overhead_us`).
pub fn record_reply(span: &Span, reply: &ChatResponse) {
    if let Some(t) = &reply.timing {
        span.record("concerto.total_us", int(t.total_us));
        span.record("concerto.queue_us", int(t.queue_us));
        span.record("concerto.overhead_us", int(t.overhead_us));
        for (field, value) in [
            ("concerto.connect_us", t.connect_us),
            ("concerto.ttfb_us", t.ttfb_us),
            ("concerto.first_token_us", t.first_token_us),
        ] {
            if let Some(us) = value {
                span.record(field, int(us));
            }
        }
    }
    span.record("gen_ai.provider.name", reply.provider.as_str());
    span.record("gen_ai.response.model", reply.model.as_str());
    span.record("gen_ai.usage.input_tokens", int(reply.usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(reply.usage.output_tokens));
    span.record("concerto.usage.estimated", reply.usage.estimated);
    if let Some(reason) = &reply.finish_reason {
        span.record("gen_ai.response.finish_reasons", reason.as_str());
    }
    match reply.cost_usd {
        Some(cost) => span.record("concerto.cost_usd", cost),
        None => span.record("concerto.cost_usd", "unknown"),
    };
}

/// Records the messages a request sends on its span as `gen_ai.input.messages` (the GenAI
/// conventions' JSON form: role, then parts of type `text`, `tool_call` or
/// `tool_call_response`). Only when the host opted in
/// ([`crate::ExecConfig::trace_content`]).
pub(crate) fn record_input(span: &Span, messages: &[crate::host::ChatMessage]) {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| {
            let mut parts = Vec::new();
            match &m.tool_call_id {
                Some(id) => parts.push(serde_json::json!(
                    {"type": "tool_call_response", "id": id, "response": m.content})),
                None if !m.content.is_empty() => {
                    parts.push(serde_json::json!({"type": "text", "content": m.content}));
                }
                None => {}
            }
            parts.extend(m.tool_calls.iter().map(tool_call_part));
            serde_json::json!({"role": m.role, "parts": parts})
        })
        .collect();
    span.record(
        "gen_ai.input.messages",
        serde_json::Value::Array(messages).to_string(),
    );
}

/// Records a reply's text and tool calls on its request's span as
/// `gen_ai.output.messages` (only when the host opted in).
pub(crate) fn record_output(span: &Span, reply: &ChatResponse) {
    let mut parts = Vec::new();
    if !reply.text.is_empty() {
        parts.push(serde_json::json!({"type": "text", "content": reply.text}));
    }
    parts.extend(reply.tool_calls.iter().map(tool_call_part));
    let message = serde_json::json!([{"role": "assistant", "parts": parts,
                                      "finish_reason": reply.finish_reason}]);
    span.record("gen_ai.output.messages", message.to_string());
}

fn tool_call_part(call: &crate::host::ToolCall) -> serde_json::Value {
    serde_json::json!({"type": "tool_call", "id": call.id, "name": call.name,
                       "arguments": call.arguments})
}

/// The span of one tool call the model asked for: a child of the agent call's span.
pub(crate) fn tool_call(parent: &Span, tool: &str, call_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "tool_call",
        otel.name = %format_args!("execute_tool {tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of a call the program's code makes to an MCP server's tool (`Server.tool(..)`):
/// a child of the span current where it is made (the run's, a task's, a stage's).
pub(crate) fn mcp_call(server: &str, tool: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "mcp_call",
        otel.kind = "client",
        otel.name = %format_args!("execute_tool {server}.{tool}"),
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %format_args!("{server}.{tool}"),
        concerto.tool.kind = "mcp",
        concerto.mcp.server = server,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of an HTTP request the program's code makes (`std::http::*`): method, the
/// server's host and port (never the path or query, which may carry tokens), the status,
/// and `error.type` when no response came.
pub(crate) fn http_call(method: &str, url: &str) -> Span {
    let (host, port) = server_of(url);
    let span = tracing::info_span!(
        target: TARGET,
        "http_call",
        otel.kind = "client",
        otel.name = method,
        http.request.method = method,
        server.address = host,
        server.port = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if let Some(port) = port {
        span.record("server.port", port);
    }
    span
}

/// The host and port of a URL's authority, without any user information (which may hold a
/// password); an IPv6 host without its brackets.
fn server_of(url: &str) -> (&str, Option<i64>) {
    let Some((_, rest)) = url.split_once("://") else {
        return ("", None);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => (bracketed, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    (host, port.and_then(|p| p.parse().ok()))
}

/// Marks a span as failed: `error.type` says how, and its OpenTelemetry status becomes
/// `ERROR` (`otel.status_code`), which tracing backends show and filter on.
pub fn record_error(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

/// A host error's kind as an `error.type` value.
pub(crate) fn host_error_type(kind: crate::host::HostErrorKind) -> &'static str {
    use crate::host::HostErrorKind as K;
    match kind {
        K::Unsupported => "unsupported",
        K::NotEnabled => "not_enabled",
        K::Timeout => "timeout",
        K::Limit => "limit",
        K::Failed => "failed",
        K::Type => "type",
        K::Fenced => "fenced",
    }
}

/// The span of a spawned task, a child of the span current where it was spawned.
pub(crate) fn task(label: &str) -> Span {
    tracing::info_span!(target: TARGET, "task", concerto.task = label)
}

/// Records where in the Concerto source a span's call was made: the calling function, the
/// program's source file, and the line and column when the IR carries them.
pub(crate) fn record_call_site(span: &Span, function: &str, file: &str, at: concerto_ir::Span) {
    span.record("code.function.name", function);
    if !file.is_empty() {
        span.record("code.file.path", file);
    }
    if at.is_known() {
        span.record("code.line.number", int(at.line));
        span.record("code.column.number", int(at.column));
    }
}

/// The span of one `Pipeline.run`: its stages are its children.
pub(crate) fn pipeline(name: &str, stages: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "pipeline",
        otel.name = %format_args!("pipeline {name}"),
        concerto.pipeline = name,
        concerto.stages = int(stages),
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of one attempt of a pipeline stage (a child of the pipeline's span); the agent
/// calls its code makes are its children.
pub(crate) fn stage(parent: &Span, pipeline: &str, stage: &str, attempt: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "stage",
        otel.name = %format_args!("stage {stage}"),
        concerto.pipeline = pipeline,
        concerto.stage = stage,
        concerto.attempt = int(attempt),
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of one emit-await, from the emit to the host's answer: under `parent` (the
/// innermost `child_parent` span, e.g. a stage's), else under the span current here.
pub(crate) fn emit_await(parent: Option<&Span>, channel: &str) -> Span {
    let parent = parent.and_then(Span::id).or_else(|| Span::current().id());
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "emit_await",
        otel.name = %format_args!("emit_await {channel}"),
        concerto.channel = channel,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::server_of;

    #[test]
    fn the_server_of_a_url_is_its_host_and_port_and_nothing_else() {
        assert_eq!(
            server_of("http://127.0.0.1:8080/orders?token=x"),
            ("127.0.0.1", Some(8080))
        );
        assert_eq!(
            server_of("https://api.example.com/v1"),
            ("api.example.com", None)
        );
        assert_eq!(
            server_of("https://user:secret@example.com:8443/"),
            ("example.com", Some(8443))
        );
        assert_eq!(server_of("http://[::1]:9000/x"), ("::1", Some(9000)));
        assert_eq!(server_of("http://[::1]/x"), ("::1", None));
        assert_eq!(server_of("http://example.com#frag"), ("example.com", None));
        assert_eq!(server_of("not a url"), ("", None));
    }
}
