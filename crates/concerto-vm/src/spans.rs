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
//! never recorded, nor are keys.

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
        error.type = Empty,
    );
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
    span
}

/// Records what a reply says on a request's span (made by [`request`]): provider, model,
/// tokens (and whether they are estimates), finish reason, cost (`unknown` without a price).
pub fn record_reply(span: &Span, reply: &ChatResponse) {
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
    )
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
    )
}
