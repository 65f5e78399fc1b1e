//! One agent call in progress ([`AgentCall`]): its state, the native continuation that
//! drives it from phase to phase, sending a request (or answering from the cache or a
//! mock), handling a reply, and success with its memory writes.

use std::collections::VecDeque;

use super::Kind;
use super::request::Decorators;
use super::response::{response_value, schema_value};
use super::tools::{MAX_TOOL_ROUNDS, tool_result_text};
use crate::error::{ErrorKind, VmError};
use crate::exec::{Continuation, Ctx, Step};
use crate::host::{
    BoxFuture, ChatMessage, ChatRequest, ChatResponse, ConnectionId, SchemaCheck, SchemaId,
    ToolCall, ToolSpec,
};
use crate::value::Value;

/// Where a call stands: what the next input to `resume` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Start,
    Specs,
    LoadHistory,
    History,
    Chat,
    Tool,
    Validator,
    Remember,
    Done,
}

/// How a call reaches its answerer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// An LLM over connection `connections[i]`.
    Llm(u32),
    /// Host agent `hosts[i]`; `json` input format.
    Host(u32, bool),
}

/// One agent call in progress.
pub(crate) struct AgentCall {
    pub(super) agent_name: String,
    pub(super) via: Via,
    pub(super) connection_name: String,
    /// A host agent's context (`with_context`), sent with every input.
    pub(super) host_context: Option<Value>,
    /// External tool providers whose functions are still to be listed.
    pub(super) pending_specs: VecDeque<String>,
    /// External tool providers offered, by name.
    pub(super) external: Vec<String>,
    pub(super) kind: Kind,
    /// Builder `execute`: return the bare `Response` and raise errors.
    pub(super) bare: bool,
    /// The user prompt (`execute`), or empty for `chat`.
    pub(super) prompt: String,
    /// Index of the message a schema re-ask replaces.
    pub(super) user_index: usize,
    pub(super) request: ChatRequest,
    pub(super) memory: Option<(String, Option<u64>, bool)>,
    pub(super) decorators: Decorators,
    /// Tools offered, by program name.
    pub(super) offered: Vec<String>,
    pub(super) rounds: u32,
    pub(super) schema_attempts: u32,
    pub(super) calls: VecDeque<ToolCall>,
    pub(super) current: Option<ToolCall>,
    pub(super) reply: Option<ChatResponse>,
    /// A reply that passed the schema, waiting for the custom validator's verdict.
    pub(super) validated: Option<Value>,
    /// What a call to `<Schema>::validate` decided (`None`: no validator).
    pub(super) cache_key: Option<String>,
    pub(super) remember: VecDeque<ChatMessage>,
    pub(super) result: Option<Value>,
    pub(super) phase: Phase,
    pub(super) frame_name: String,
    /// What a `MOCK_MODEL` made this model answer (tests).
    pub(super) mock: Option<concerto_ir::MockReply>,
    /// The call's span (closed when the call is dropped, after its result is handed back).
    pub(super) span: tracing::Span,
    /// Whether the request spans carry the messages sent and the reply's text (the host's
    /// opt-in, [`crate::ExecConfig::trace_content`]).
    pub(super) trace_content: bool,
    /// The span of the request in flight, closed when its reply or failure arrives.
    pub(super) request_span: Option<tracing::Span>,
    /// The span of the tool call in progress.
    pub(super) tool_span: Option<tracing::Span>,
    /// Usage summed over the call's requests, for its span.
    pub(super) totals: Totals,
}

/// Usage and cost summed over the requests of one agent call (recorded on its span).
#[derive(Default)]
pub(super) struct Totals {
    requests: u32,
    input_tokens: u64,
    output_tokens: u64,
    estimated: bool,
    /// `None` once a reply's cost is unknown.
    cost_usd: Option<f64>,
}

impl AgentCall {
    /// Asks the model (or the agent's cache).
    pub(super) fn send(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        self.phase = Phase::Chat;
        if let Some(ttl) = self.decorators.cache_ttl {
            let key = format!(
                "{:?}\u{0}{}",
                self.via,
                serde_json::to_string(&self.request).unwrap_or_default()
            );
            let now = ctx.now();
            if let Some((reply, at)) = ctx.agent_cache.get(&key)
                && now.saturating_duration_since(*at) <= ttl
            {
                let reply = reply.clone();
                ctx.stats
                    .llm
                    .both(&self.agent_name, &self.connection_name, |c| {
                        c.cache_hits += 1
                    });
                return self.on_reply(ctx, reply, true);
            }
            self.cache_key = Some(key);
        }
        let connection = match self.via {
            Via::Llm(connection) => connection,
            Via::Host(host, json) => return Ok(self.send_to_host(ctx, host, json)),
        };
        match self.mock.clone() {
            Some(concerto_ir::MockReply::Response(text)) => {
                self.start_request();
                let model = self.request.model.clone().unwrap_or_default();
                let mut reply = ChatResponse::text(text, model, crate::host::Usage::default());
                reply.provider = "mock".into();
                reply.cost_usd = Some(0.0);
                return self.on_reply(ctx, reply, true);
            }
            Some(concerto_ir::MockReply::Error(message)) => {
                return self.fail_other(ctx, message);
            }
            None => {}
        }
        let span = self.start_request();
        let fut = ctx.host.connections.chat(
            ctx.program(),
            ConnectionId(connection),
            self.request.clone(),
        );
        Ok(Step::Suspend(Box::pin(tracing::Instrument::instrument(
            async move {
                match fut.await {
                    Ok(reply) => Ok(Value::carry(reply)),
                    Err(e) => Ok(Value::carry(e)),
                }
            },
            span,
        ))))
    }

    /// Opens the span of the request about to be sent (a child of the call's span) and
    /// returns it for the request's future.
    fn start_request(&mut self) -> tracing::Span {
        let span = crate::spans::request(
            &self.span,
            self.request.model.as_deref(),
            self.rounds,
            self.schema_attempts,
        );
        if self.trace_content {
            crate::spans::record_input(&span, &self.request.messages);
        }
        self.request_span = Some(span.clone());
        span
    }

    /// Records a reply on the request's span (closing it) and the running totals on the
    /// call's span.
    fn record_reply(&mut self, reply: &ChatResponse) {
        if let Some(span) = self.request_span.take() {
            crate::spans::record_reply(&span, reply);
            if self.trace_content {
                crate::spans::record_output(&span, reply);
            }
            span.record("concerto.attempts", crate::spans::int(reply.attempts));
            span.record(
                "concerto.connection",
                reply.connection.as_deref().unwrap_or(&self.connection_name),
            );
        }
        let first = self.totals.requests == 0;
        let t = &mut self.totals;
        t.requests += 1;
        t.input_tokens += reply.usage.input_tokens;
        t.output_tokens += reply.usage.output_tokens;
        t.estimated |= reply.usage.estimated;
        t.cost_usd = match (first, t.cost_usd, reply.cost_usd) {
            (true, _, cost) => cost,
            (false, Some(sum), Some(cost)) => Some(sum + cost),
            _ => None,
        };
        let span = &self.span;
        span.record("gen_ai.provider.name", reply.provider.as_str());
        span.record("gen_ai.response.model", reply.model.as_str());
        span.record(
            "gen_ai.usage.input_tokens",
            crate::spans::int(t.input_tokens),
        );
        span.record(
            "gen_ai.usage.output_tokens",
            crate::spans::int(t.output_tokens),
        );
        span.record("concerto.usage.estimated", t.estimated);
        if let Some(reason) = &reply.finish_reason {
            span.record("gen_ai.response.finish_reasons", reason.as_str());
        }
        match t.cost_usd {
            Some(cost) => span.record("concerto.cost_usd", cost),
            None => span.record("concerto.cost_usd", "unknown"),
        };
        span.record("concerto.requests", crate::spans::int(t.requests));
    }

    /// A reply arrived: run its tool calls, check it against the schema, or finish.
    fn on_reply(
        &mut self,
        ctx: &mut Ctx,
        reply: ChatResponse,
        from_cache: bool,
    ) -> Result<Step, VmError> {
        self.record_reply(&reply);
        if !from_cache {
            // Usage and cost belong to the connection that answered (a fallback's, when one
            // did).
            let answered = reply.connection.as_deref().unwrap_or(&self.connection_name);
            ctx.stats
                .llm
                .both(&self.agent_name, answered, |c| c.add_response(&reply));
            if let Some(key) = self.cache_key.take() {
                let now = ctx.now();
                ctx.agent_cache.insert(key, (reply.clone(), now));
            }
        }
        if !reply.tool_calls.is_empty() {
            self.rounds += 1;
            if self.rounds > MAX_TOOL_ROUNDS {
                let message = format!(
                    "agent '{}': the model kept asking for tools after {MAX_TOOL_ROUNDS} rounds",
                    self.agent_name
                );
                return self.fail_other(ctx, message);
            }
            self.request
                .messages
                .push(ChatMessage::assistant_tool_calls(
                    reply.text.clone(),
                    reply.tool_calls.clone(),
                ));
            self.calls = reply.tool_calls.iter().cloned().collect();
            self.reply = Some(reply);
            return self.next_tool(ctx);
        }
        match self.kind {
            Kind::Text => {
                // A host agent answers with its raw output; an LLM with a `Response`.
                let response = match self.via {
                    Via::Host(..) => Value::str(reply.text.as_str()),
                    Via::Llm(_) => response_value(
                        &reply,
                        reply.connection.as_deref().unwrap_or(&self.connection_name),
                    ),
                };
                self.reply = Some(reply);
                self.succeed(ctx, response)
            }
            Kind::Schema(schema) => {
                self.schema_attempts += 1;
                let program = ctx.program().clone();
                let check = ctx
                    .host
                    .schema
                    .check(&program, SchemaId(schema), &reply.text)
                    .map_err(VmError::from)?;
                match check {
                    SchemaCheck::Valid(json) => {
                        let value = schema_value(&program, schema, &json);
                        self.reply = Some(reply);
                        let validator =
                            format!("{}::validate", program.schemas[schema as usize].name);
                        match program.function_id(&validator) {
                            Some(fid) => {
                                self.phase = Phase::Validator;
                                self.validated = Some(value.clone());
                                Ok(Step::CallWithSelf(fid, value, Default::default()))
                            }
                            None => self.succeed(ctx, value),
                        }
                    }
                    SchemaCheck::Invalid(errors) => {
                        self.reply = Some(reply);
                        self.invalid(ctx, errors)
                    }
                }
            }
        }
    }

    /// Success: remember the exchange, log, and hand back the value.
    fn succeed(&mut self, ctx: &mut Ctx, value: Value) -> Result<Step, VmError> {
        let reply_text = self
            .reply
            .as_ref()
            .map(|r| r.text.clone())
            .unwrap_or_default();
        if self.decorators.log {
            let tokens = self.reply.as_ref().map(|r| r.usage).unwrap_or_default();
            let mut fields = vec![
                ("agent", Value::str(self.agent_name.as_str())),
                (
                    "method",
                    Value::str(match self.kind {
                        Kind::Text => "execute",
                        Kind::Schema(_) => "execute_with_schema",
                    }),
                ),
                (
                    "attempt",
                    Value::Int(i64::from(self.reply.as_ref().map_or(1, |r| r.attempts))),
                ),
            ];
            if let Kind::Schema(_) = self.kind {
                fields.push((
                    "schema_attempt",
                    Value::Int(i64::from(self.schema_attempts)),
                ));
            }
            fields.push(("tokens_in", Value::Int(tokens.input_tokens as i64)));
            fields.push(("tokens_out", Value::Int(tokens.output_tokens as i64)));
            ctx.emit("agent:log", &Value::map(fields))?;
        }
        self.result = Some(match (self.kind, self.bare) {
            (Kind::Text, true) => value,
            _ => Value::ok(value),
        });
        if let Some((_, _, true)) = &self.memory
            && !self.prompt.is_empty()
        {
            self.remember = VecDeque::from([
                ChatMessage::new("user", self.prompt.as_str()),
                ChatMessage::new("assistant", reply_text),
            ]);
        }
        self.next_memory_write(ctx)
    }

    fn next_memory_write(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        match (self.remember.pop_front(), &self.memory) {
            (Some(message), Some((name, max, _))) => {
                self.phase = Phase::Remember;
                let reply = ctx.host.memory.memory_append(name, *max, message);
                Ok(Step::Suspend(reply_future(reply, |()| Value::Nil)))
            }
            _ => {
                self.phase = Phase::Done;
                Ok(Step::Return(self.result.take().unwrap_or(Value::Nil)))
            }
        }
    }
}

impl Continuation for AgentCall {
    fn resume(&mut self, ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        match self.phase {
            Phase::Start => {
                input?;
                self.list_next_provider(ctx)
            }
            Phase::Specs => {
                let value = input?;
                if let Some(specs) = value.carried::<Vec<ToolSpec>>() {
                    for spec in specs {
                        if !self.offered.contains(&spec.name) {
                            self.offered.push(spec.name.clone());
                            self.request.tools.push(spec.clone());
                        }
                    }
                }
                self.list_next_provider(ctx)
            }
            Phase::History => {
                let value = input?;
                if let Some(messages) = value.carried::<Vec<ChatMessage>>() {
                    // Stored turns go between the system prompt and the new input.
                    let at = usize::from(
                        self.request
                            .messages
                            .first()
                            .is_some_and(|m| m.role == "system"),
                    );
                    let n = messages.len();
                    if !matches!(self.via, Via::Host(..)) {
                        self.request
                            .messages
                            .splice(at..at, messages.iter().cloned());
                        self.user_index += n;
                    }
                }
                self.send(ctx)
            }
            Phase::LoadHistory => {
                input?;
                match &self.memory {
                    Some((name, _, _)) => {
                        self.phase = Phase::History;
                        let reply = ctx.host.memory.memory_messages(name);
                        Ok(Step::Suspend(reply_future(reply, |messages| {
                            Value::carry(messages)
                        })))
                    }
                    None => self.send(ctx),
                }
            }
            Phase::Chat => match input {
                Ok(value) => {
                    if let Some(failed) = value.carried::<crate::host::HostError>() {
                        let failed = failed.clone();
                        return self.host_failed(ctx, failed);
                    }
                    match value.carried::<ChatResponse>() {
                        Some(reply) => {
                            let reply = reply.clone();
                            self.on_reply(ctx, reply, false)
                        }
                        None => Err(VmError::new(
                            ErrorKind::Internal,
                            "agent call resumed without a model reply",
                        )),
                    }
                }
                Err(err) => self.chat_failed(ctx, err),
            },
            Phase::Tool => {
                let call = self.current.take();
                if let (Some(span), Err(err)) = (self.tool_span.take(), &input) {
                    crate::spans::record_error(&span, err.kind().as_str());
                }
                // An external tool's output carries its images beside its value.
                let (content, images) = match input {
                    Ok(v) => match v.carried::<crate::host::ToolOutput>() {
                        Some(out) => (tool_result_text(&out.value), out.images.clone()),
                        None => (tool_result_text(&v), Vec::new()),
                    },
                    Err(err) if err.is_catchable() => {
                        (format!("error: {}", err.message()), Vec::new())
                    }
                    Err(err) => return Err(err),
                };
                if let Some(call) = call {
                    let mut message =
                        ChatMessage::tool_result(call.id.as_str(), call.name.as_str(), content);
                    message.images = images;
                    self.request.messages.push(message);
                }
                self.next_tool(ctx)
            }
            Phase::Validator => {
                let value = self.validated.take().unwrap_or(Value::Nil);
                let verdict = match input {
                    Ok(Value::Err(e)) => Err(e.to_display()),
                    Ok(Value::Bool(false)) => Err("returned false".to_string()),
                    Ok(Value::Ok(p)) if matches!(**p, Value::Bool(false)) => {
                        Err("returned false".to_string())
                    }
                    Ok(_) => Ok(()),
                    Err(err) if err.is_catchable() => Err(err.message().to_string()),
                    Err(err) => return Err(err),
                };
                match verdict {
                    Ok(()) => self.succeed(ctx, value),
                    Err(why) => {
                        let schema = match self.kind {
                            Kind::Schema(s) => ctx.program().schemas[s as usize].name.clone(),
                            Kind::Text => String::new(),
                        };
                        self.invalid(
                            ctx,
                            vec![format!("custom validator {schema}::validate: {why}")],
                        )
                    }
                }
            }
            Phase::Remember => {
                input?;
                self.next_memory_write(ctx)
            }
            Phase::Done => Err(VmError::new(
                ErrorKind::Internal,
                "agent call resumed after it finished",
            )),
        }
    }

    fn intercepts_errors(&self) -> bool {
        // Errors raised by a tool method or a validator come back to the call: the model
        // (or the re-ask) sees them instead of the program unwinding.
        matches!(self.phase, Phase::Tool | Phase::Validator)
    }

    fn span(&self) -> Option<&tracing::Span> {
        Some(&self.span)
    }

    fn child_parent(&self) -> Option<&tracing::Span> {
        self.tool_span.as_ref()
    }

    fn frame_name(&self) -> &str {
        &self.frame_name
    }
}

/// A memory-store reply as a future of a value.
fn reply_future<T: Send + 'static>(
    reply: crate::host::Reply<Result<T, crate::host::HostError>>,
    to_value: fn(T) -> Value,
) -> BoxFuture<Result<Value, VmError>> {
    match reply {
        crate::host::Reply::Ready(r) => {
            let r = r.map(to_value).map_err(VmError::from);
            Box::pin(async move { r })
        }
        crate::host::Reply::Pending(fut) => {
            Box::pin(async move { fut.await.map(to_value).map_err(VmError::from) })
        }
    }
}
