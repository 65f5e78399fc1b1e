//! Building a call: the agent decorators that matter at run time, the tools offered, the
//! messages (system prompt, the input, a builder's context), the model settings and the
//! schema's provider form, for an LLM agent or a host agent.

use std::collections::VecDeque;
use std::time::Duration;

use concerto_ir::model::Decorator;

use super::Kind;
use super::builder::{AgentBuilder, Target, ToolSel, tool_by_name};
use super::call::{AgentCall, Phase, Via};
use crate::error::{ErrorKind, VmError};
use crate::exec::Ctx;
use crate::host::{
    Backoff, ChatMessage, ChatRequest, ResponseSchema, RetryPolicy, SchemaId, ToolSpec,
};

/// The longest wait a program may set (timeouts, cache lifetimes, retry delays): one year.
/// Larger values from the IR are cut to it (a clock cannot add them).
const MAX_WAIT_SECS: u64 = 365 * 24 * 3600;

/// `secs` seconds, at most [`MAX_WAIT_SECS`]; `None` for a value that is not a positive
/// finite number.
fn wait_secs(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs.is_finite())
        .then(|| Duration::from_secs_f64(secs.min(MAX_WAIT_SECS as f64)))
}

/// What the model is asked: a prompt (`execute`, `execute_with_schema`) or a conversation
/// (`chat`).
pub(super) enum Input {
    Prompt(String),
    Messages(Vec<ChatMessage>),
}

/// The agent decorators that matter at run time.
#[derive(Debug, Default)]
pub(super) struct Decorators {
    pub(super) retry: Option<RetryPolicy>,
    pub(super) timeout: Option<Duration>,
    pub(super) log: bool,
    pub(super) cache_ttl: Option<Duration>,
}

fn decorators(list: &[Decorator]) -> Decorators {
    let mut d = Decorators::default();
    let number = |dec: &Decorator, key: &str| -> Option<f64> {
        dec.named_arg(key)
            .or_else(|| dec.args.iter().find(|a| a.is_number()))
            .and_then(|v| v.as_f64())
    };
    for dec in list {
        match dec.name.as_str() {
            "retry" => {
                let max = number(dec, "max").unwrap_or(3.0).clamp(1.0, 100.0) as u32;
                let backoff = match dec.named_arg("backoff").and_then(|v| v.as_str()) {
                    Some("none") => Backoff::None,
                    Some("linear") => Backoff::Linear,
                    _ => Backoff::Exponential,
                };
                let delay = dec
                    .named_arg("delay_ms")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(1000)
                    .min(MAX_WAIT_SECS * 1000);
                d.retry = Some(RetryPolicy {
                    max_attempts: max,
                    backoff,
                    initial_delay: Duration::from_millis(delay),
                    max_delay: Duration::from_secs(30).max(Duration::from_millis(delay)),
                });
            }
            "timeout" => {
                d.timeout = number(dec, "seconds").and_then(wait_secs);
            }
            "log" => d.log = true,
            "cache" => {
                d.cache_ttl = wait_secs(number(dec, "ttl_seconds").unwrap_or(300.0));
            }
            _ => {}
        }
    }
    d
}

/// The parts of a new call, gathered by the agent and host constructors.
struct NewCall {
    agent_name: String,
    via: Via,
    connection_name: String,
    builder: AgentBuilder,
    kind: Kind,
    bare: bool,
    prompt: String,
    user_index: usize,
    request: ChatRequest,
    decorators: Decorators,
    offered: Vec<String>,
    external: Vec<String>,
}

impl AgentCall {
    pub(super) fn new(
        ctx: &mut Ctx,
        builder: AgentBuilder,
        kind: Kind,
        input: Input,
        bare: bool,
    ) -> Result<AgentCall, VmError> {
        match builder.target {
            Target::Agent(agent) => Self::for_agent(ctx, agent, builder, kind, input, bare),
            Target::Host(host) => Self::for_host(ctx, host, builder, kind, input),
        }
    }

    fn for_agent(
        ctx: &mut Ctx,
        agent: u32,
        builder: AgentBuilder,
        kind: Kind,
        input: Input,
        bare: bool,
    ) -> Result<AgentCall, VmError> {
        let program = ctx.program().clone();
        let def = &program.agents[agent as usize];
        let agent_name = def.decl.name.clone();
        let Some(connection) = def.connection else {
            let wanted = &def.decl.connection;
            let hint = if wanted.is_empty() {
                format!("agent '{agent_name}' names no connection (provider: …)")
            } else {
                format!(
                    "agent '{agent_name}' uses connection '{wanted}', which is not declared \
                     (add [connections.{wanted}] to Concerto.toml)"
                )
            };
            return Err(VmError::new(ErrorKind::Host, hint));
        };
        let connection_name = program.connections[connection as usize].name.clone();
        if program.connections[connection as usize].is_mcp() {
            return Err(VmError::type_error(format!(
                "agent '{agent_name}' uses '{connection_name}', which is an MCP server, not an \
                 LLM connection"
            )));
        }
        let decorators = decorators(&def.decl.decorators);
        let config = &def.decl.config;

        // Tools: the agent's own (unless `without_tools`), then the builder's.
        let mut selected: Vec<ToolSel> = Vec::new();
        if !builder.without_tools {
            for name in &def.decl.tools {
                match tool_by_name(ctx, name) {
                    Some(sel) => selected.push(sel),
                    None => {
                        return Err(VmError::new(
                            ErrorKind::Name,
                            format!(
                                "agent '{agent_name}' lists tool '{name}', which is neither a \
                                 tool, an MCP server of this program nor a host-registered tool"
                            ),
                        ));
                    }
                }
            }
        }
        for sel in &builder.tools {
            if !selected.contains(sel) {
                selected.push(sel.clone());
            }
        }
        let mut tools: Vec<ToolSpec> = Vec::new();
        let mut external = Vec::new();
        for sel in selected {
            match sel {
                ToolSel::Tool(t) => {
                    let decl = &program.tools[t as usize].decl;
                    for schema in &decl.tool_schemas {
                        // A model is offered only the methods the host lets it call.
                        let method = schema.method_name.rsplit("::").next().unwrap_or_default();
                        if ctx.host.tools.check(&program, &decl.name, method).is_err() {
                            continue;
                        }
                        if tools.iter().all(|s| s.name != schema.method_name) {
                            tools.push(ToolSpec {
                                name: schema.method_name.clone(),
                                description: schema.description.clone(),
                                parameters: schema.parameters.clone(),
                            });
                        }
                    }
                }
                ToolSel::External(name) => external.push(name),
            }
        }
        let offered = tools.iter().map(|t| t.name.clone()).collect();

        // Messages: system prompt, stored conversation (added later), the input.
        let mut messages = Vec::new();
        if let Some(system) = config.system_prompt.as_ref().filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new("system", system.as_str()));
        }
        let (prompt, user_index) = match input {
            Input::Prompt(mut prompt) => {
                if let Some(context) = &builder.context {
                    prompt = format!("{prompt}\nContext: {}", context.to_display());
                }
                messages.push(ChatMessage::new("user", prompt.as_str()));
                (prompt, messages.len() - 1)
            }
            Input::Messages(list) => {
                messages.extend(list);
                (String::new(), messages.len().saturating_sub(1))
            }
        };
        let mut request = ChatRequest::new(agent_name.clone(), config.model.clone(), messages);
        request.temperature = config.temperature;
        request.max_tokens = config.max_tokens;
        request.tools = tools;
        request.timeout = decorators.timeout.or_else(|| {
            config
                .timeout
                .map(|t| Duration::from_secs(t.min(MAX_WAIT_SECS)))
        });
        request.retry = decorators.retry;
        let mock = ctx.mocks.lock().get(&agent).cloned();
        let mut call = Self::finish_new(
            ctx,
            NewCall {
                agent_name,
                via: Via::Llm(connection),
                connection_name,
                builder,
                kind,
                bare,
                prompt,
                user_index,
                request,
                decorators,
                offered,
                external,
            },
        )?;
        call.mock = mock;
        Ok(call)
    }

    fn for_host(
        ctx: &mut Ctx,
        host: u32,
        builder: AgentBuilder,
        kind: Kind,
        input: Input,
    ) -> Result<AgentCall, VmError> {
        let program = ctx.program().clone();
        let def = &program.hosts[host as usize];
        let name = def.name.clone();
        ctx.host
            .tools
            .check(&program, &name, "execute")
            .map_err(VmError::from)?;
        let prompt = match input {
            Input::Prompt(p) => p,
            Input::Messages(_) => {
                return Err(VmError::type_error(format!(
                    "no method 'chat' on host {name}"
                )));
            }
        };
        let json = def.input_format.eq_ignore_ascii_case("json");
        let request = ChatRequest::new(
            name.clone(),
            None,
            vec![ChatMessage::new("user", prompt.as_str())],
        );
        let decorators = decorators(&def.decorators);
        let host_context = builder.context.clone();
        // For the record of a timeout: the agent's own limit (its process is timed by the
        // tool layer).
        let mut request = request;
        request.timeout = decorators.timeout.or_else(|| {
            def.timeout
                .filter(|t| *t > 0)
                .map(|t| Duration::from_secs(t.min(MAX_WAIT_SECS)))
        });
        let mut call = Self::finish_new(
            ctx,
            NewCall {
                agent_name: name.clone(),
                via: Via::Host(host, json),
                connection_name: format!("host {name}"),
                builder,
                kind,
                bare: false,
                prompt,
                user_index: 0,
                request,
                decorators,
                offered: Vec::new(),
                external: Vec::new(),
            },
        )?;
        call.host_context = host_context;
        Ok(call)
    }

    fn finish_new(ctx: &mut Ctx, new: NewCall) -> Result<AgentCall, VmError> {
        let NewCall {
            agent_name,
            via,
            connection_name,
            builder,
            kind,
            bare,
            prompt,
            user_index,
            mut request,
            decorators,
            offered,
            external,
        } = new;
        let program = ctx.program().clone();
        if let Kind::Schema(schema) = kind {
            let name = program
                .schemas
                .get(schema as usize)
                .map(|s| s.name.clone())
                .ok_or_else(|| VmError::type_error(format!("unknown schema #{schema}")))?;
            let json = ctx
                .host
                .schema
                .provider_schema(&program, SchemaId(schema))
                .map_err(VmError::from)?;
            request.response_schema = Some(ResponseSchema { name, schema: json });
        }
        let memory = builder.memory.map(|(m, auto)| {
            let decl = &program.memories[m as usize];
            (decl.name.clone(), decl.max_messages, auto)
        });
        let method = match kind {
            Kind::Text => "execute",
            Kind::Schema(_) => "execute_with_schema",
        };
        let span = crate::spans::agent_call(
            &agent_name,
            &connection_name,
            request.model.as_deref(),
            method,
        );
        Ok(AgentCall {
            span,
            trace_content: ctx.config.trace_content,
            request_span: None,
            tool_span: None,
            totals: Default::default(),
            frame_name: format!("{agent_name}.{method}"),
            agent_name,
            via,
            connection_name,
            host_context: None,
            pending_specs: external.iter().cloned().collect(),
            external,
            kind,
            bare,
            prompt,
            user_index,
            request,
            memory,
            decorators,
            offered,
            rounds: 0,
            schema_attempts: 0,
            calls: VecDeque::new(),
            current: None,
            reply: None,
            validated: None,
            cache_key: None,
            remember: VecDeque::new(),
            result: None,
            phase: Phase::Start,
            mock: None,
        })
    }
}
