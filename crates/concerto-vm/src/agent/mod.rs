//! Agent calls: `execute`, `execute_with_schema<S>`, `chat`, the builders (`with_memory`,
//! `with_tools`, `without_tools`, `with_context`), the tool-calling loop, schema re-asks,
//! the agent decorators (`@retry`, `@timeout`, `@log`, `@cache`) and usage accounting.
//!
//! One call is a native continuation ([`AgentCall`]): it suspends on the connection layer
//! (`Connections::chat`) and on the memory store, and calls back into Concerto code for tool
//! methods and for a schema's custom validator (`impl S { fn validate(self) -> … }`), so none
//! of it nests Rust stacks or blocks a thread.
//!
//! Results: `execute` gives `Ok(Response)` or `Err(AgentError)`; `execute_with_schema<S>`
//! gives `Ok(S)` or `Err(SchemaError | AgentError)`. On a builder, `execute` gives the bare
//! `Response` (as the reference runtime and the shared conformance cases expect) and raises
//! a catchable error carrying the `AgentError` value instead of returning `Err`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use concerto_ir::model::Decorator;

use crate::error::{ErrorKind, VmError};
use crate::exec::{Continuation, Ctx, Flow, Step};
use crate::host::{
    Backoff, BoxFuture, ChatMessage, ChatRequest, ChatResponse, ResponseSchema, RetryPolicy,
    SchemaCheck, ToolCall, ToolSpec,
};
use crate::methods::Method;
use crate::value::{NativeObject, Object, RefKind, Value};

/// Most model turns one call may take while the model keeps asking for tools.
const MAX_TOOL_ROUNDS: u32 = 10;
/// Requests per `execute_with_schema` call: the first and the re-asks after invalid replies.
const SCHEMA_ATTEMPTS: u32 = 3;
/// The longest wait a program may set (timeouts, cache lifetimes, retry delays): one year.
/// Larger values from the IR are cut to it (a clock cannot add them).
const MAX_WAIT_SECS: u64 = 365 * 24 * 3600;

/// `secs` seconds, at most [`MAX_WAIT_SECS`]; `None` for a value that is not a positive
/// finite number.
fn wait_secs(secs: f64) -> Option<Duration> {
    (secs > 0.0 && secs.is_finite())
        .then(|| Duration::from_secs_f64(secs.min(MAX_WAIT_SECS as f64)))
}

/// LLM usage counters of one agent or one connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmCounters {
    /// Model replies received.
    pub requests: u64,
    /// Calls that failed (after the connection layer's retries).
    pub failures: u64,
    /// Extra HTTP attempts the connection layer made (retries).
    pub retries: u64,
    /// Re-asks after a reply that did not match the schema.
    pub schema_retries: u64,
    /// Tool calls the model asked for and the runtime ran.
    pub tool_calls: u64,
    /// Replies served from an agent's `@cache`.
    pub cache_hits: u64,
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Replies whose token counts are estimates.
    pub estimated_usage: u64,
    /// Cost in US dollars of the replies whose model has a known price.
    pub cost_usd: f64,
    /// Replies whose cost is unknown (model not in the price table).
    pub unpriced: u64,
}

impl LlmCounters {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LlmCounters) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.retries += other.retries;
        self.schema_retries += other.schema_retries;
        self.tool_calls += other.tool_calls;
        self.cache_hits += other.cache_hits;
        self.input_tokens += other.input_tokens;
        self.cached_tokens += other.cached_tokens;
        self.output_tokens += other.output_tokens;
        self.estimated_usage += other.estimated_usage;
        self.cost_usd += other.cost_usd;
        self.unpriced += other.unpriced;
    }

    fn add_response(&mut self, response: &ChatResponse) {
        self.requests += 1;
        self.retries += u64::from(response.attempts.saturating_sub(1));
        self.input_tokens += response.usage.input_tokens;
        self.cached_tokens += response.usage.cached_tokens;
        self.output_tokens += response.usage.output_tokens;
        if response.usage.estimated {
            self.estimated_usage += 1;
        }
        match response.cost_usd {
            Some(cost) => self.cost_usd += cost,
            None => self.unpriced += 1,
        }
    }
}

/// LLM usage of one execution, by agent and by connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmStats {
    /// By agent name.
    pub by_agent: BTreeMap<String, LlmCounters>,
    /// By connection name.
    pub by_connection: BTreeMap<String, LlmCounters>,
}

impl LlmStats {
    /// Adds `other`'s counters to these, agent by agent and connection by connection.
    pub fn merge(&mut self, other: &LlmStats) {
        for (name, c) in &other.by_agent {
            self.by_agent.entry(name.clone()).or_default().merge(c);
        }
        for (name, c) in &other.by_connection {
            self.by_connection.entry(name.clone()).or_default().merge(c);
        }
    }

    fn both(&mut self, agent: &str, connection: &str, f: impl Fn(&mut LlmCounters)) {
        f(self.by_agent.entry(agent.to_string()).or_default());
        f(self
            .by_connection
            .entry(connection.to_string())
            .or_default());
    }
}

/// A tool selected for a call: one of the program's own, or an external provider (an MCP
/// server or a host-registered tool) whose functions the host lists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ToolSel {
    Tool(u32),
    External(String),
}

/// Who answers: an LLM agent or a host agent (an external agent process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Agent(u32),
    Host(u32),
}

/// The value of `Agent.with_memory(m)` and friends: a call being configured.
#[derive(Debug, Clone)]
pub(crate) struct AgentBuilder {
    target: Target,
    agent_name: String,
    /// Memory index and whether to append the exchange after a successful call.
    memory: Option<(u32, bool)>,
    tools: Vec<ToolSel>,
    without_tools: bool,
    context: Option<Value>,
}

impl NativeObject for AgentBuilder {
    fn type_name(&self) -> &str {
        "AgentBuilder"
    }

    fn display(&self) -> String {
        format!("AgentBuilder({})", self.agent_name)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// What kind of failure an `AgentError` (or `TimeoutError`) reports, in its `kind` field.
/// These names are stable: programs match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    /// The provider refused for rate limiting (429) after the retries.
    RateLimited,
    /// No reply within the time limit.
    Timeout,
    /// The provider answered with an error (`status` says which, when it was HTTP).
    Provider,
    /// No usable reply: the connection failed or the reply was malformed or cut short.
    Connection,
    /// The host has not enabled what the call needs.
    NotEnabled,
    /// The reply never matched the schema (a `SchemaError`).
    Schema,
    /// An external agent failed (it exited, or could not start or initialise).
    Agent,
    /// A mocked failure (`mock M { error: … }`) or a failure of the model's own tool loop.
    Other,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Timeout => "timeout",
            FailureKind::Provider => "provider_error",
            FailureKind::Connection => "connection_failed",
            FailureKind::NotEnabled => "not_enabled",
            FailureKind::Schema => "schema",
            FailureKind::Agent => "agent_failed",
            FailureKind::Other => "other",
        }
    }
}

/// The failure's kind, HTTP status and retry-after, from what the host reported.
struct Failure {
    kind: FailureKind,
    status: Option<u16>,
    retry_after_ms: Option<u64>,
}

impl Failure {
    fn plain(kind: FailureKind) -> Failure {
        Failure {
            kind,
            status: None,
            retry_after_ms: None,
        }
    }
}

/// `Agent.<method>(…)` on an agent reference.
pub(crate) fn agent_method(
    ctx: &mut Ctx,
    agent: u32,
    method: Method,
    name: &str,
    schema: Option<u32>,
    args: &[Value],
) -> Result<Flow, VmError> {
    let builder = AgentBuilder {
        target: Target::Agent(agent),
        agent_name: ctx.program().agents[agent as usize].decl.name.clone(),
        memory: None,
        tools: Vec::new(),
        without_tools: false,
        context: None,
    };
    dispatch(ctx, builder, false, method, name, schema, args)
}

/// `Host.<method>(…)` on a host agent reference.
pub(crate) fn host_method(
    ctx: &mut Ctx,
    host: u32,
    method: Method,
    name: &str,
    schema: Option<u32>,
    args: &[Value],
) -> Result<Flow, VmError> {
    let host_name = ctx.program().hosts[host as usize].name.clone();
    if matches!(method, Method::Chat | Method::Stream) {
        return Err(VmError::type_error(format!(
            "no method '{name}' on host {host_name}"
        )));
    }
    let builder = AgentBuilder {
        target: Target::Host(host),
        agent_name: host_name,
        memory: None,
        tools: Vec::new(),
        without_tools: false,
        context: None,
    };
    dispatch(ctx, builder, false, method, name, schema, args)
}

/// `builder.<method>(…)` on an agent builder.
pub(crate) fn builder_method(
    ctx: &mut Ctx,
    builder: &AgentBuilder,
    method: Method,
    name: &str,
    schema: Option<u32>,
    args: &[Value],
) -> Result<Flow, VmError> {
    dispatch(ctx, builder.clone(), true, method, name, schema, args)
}

fn dispatch(
    ctx: &mut Ctx,
    mut builder: AgentBuilder,
    on_builder: bool,
    method: Method,
    name: &str,
    schema: Option<u32>,
    args: &[Value],
) -> Result<Flow, VmError> {
    let agent_name = builder.agent_name.clone();
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Nil);
    // A 1a8ede9 builder's `execute` gives the bare Response; a 7ad10db one a Result.
    let on_builder = on_builder
        && matches!(builder.target, Target::Agent(_))
        && ctx.program().dialect != concerto_ir::model::Dialect::Head;
    let arity = match method {
        Method::Execute | Method::ExecuteWithSchema | Method::Chat => Some((1, 1)),
        Method::WithMemory => Some((1, 2)),
        Method::WithTools | Method::WithContext => Some((1, 1)),
        Method::WithoutTools => Some((0, 0)),
        _ => None,
    };
    if let Some((min, max)) = arity
        && !(min..=max).contains(&args.len())
    {
        let wanted = if min == max {
            format!("{min} argument{}", if min == 1 { "" } else { "s" })
        } else {
            format!("{min} or {max} arguments")
        };
        return Err(VmError::new(
            ErrorKind::Arity,
            format!("{agent_name}.{name} expects {wanted}, got {}", args.len()),
        ));
    }
    match method {
        Method::Execute => {
            let prompt = arg(0).to_display();
            let call = AgentCall::new(ctx, builder, Kind::Text, Input::Prompt(prompt), on_builder)?;
            Ok(Flow::Start(Box::new(call)))
        }
        Method::ExecuteWithSchema => {
            let Some(schema) = schema else {
                return Err(VmError::type_error(format!(
                    "{agent_name}.execute_with_schema needs a schema type: \
                     {agent_name}.execute_with_schema<Schema>(prompt)"
                )));
            };
            let prompt = arg(0).to_display();
            let call = AgentCall::new(
                ctx,
                builder,
                Kind::Schema(schema),
                Input::Prompt(prompt),
                false,
            )?;
            Ok(Flow::Start(Box::new(call)))
        }
        Method::Chat => {
            let messages = chat_messages(&arg(0))?;
            let call = AgentCall::new(ctx, builder, Kind::Text, Input::Messages(messages), false)?;
            Ok(Flow::Start(Box::new(call)))
        }
        Method::WithMemory => {
            let memory = match args.first() {
                Some(Value::Ref(r)) if r.kind == RefKind::Memory => r.index,
                other => {
                    return Err(VmError::type_error(format!(
                        "with_memory expects a memory, got {}",
                        other.map_or("nothing", |v| v.type_name())
                    )));
                }
            };
            let auto = !matches!(args.get(1), Some(Value::Bool(false)));
            builder.memory = Some((memory, auto));
            Ok(Flow::Value(Value::Object(Object::new(builder))))
        }
        Method::WithTools => {
            let Some(Value::Array(items)) = args.first() else {
                return Err(VmError::type_error(
                    "with_tools expects an array of tools, e.g. with_tools([Calculator])",
                ));
            };
            for item in items.to_vec() {
                let sel = tool_selection(ctx, &item).ok_or_else(|| {
                    VmError::type_error(format!(
                        "with_tools expects tools or MCP servers, got {}",
                        item.type_name()
                    ))
                })?;
                if !builder.tools.contains(&sel) {
                    builder.tools.push(sel);
                }
            }
            Ok(Flow::Value(Value::Object(Object::new(builder))))
        }
        Method::WithoutTools => {
            builder.without_tools = true;
            Ok(Flow::Value(Value::Object(Object::new(builder))))
        }
        Method::WithContext => {
            builder.context = Some(arg(0));
            Ok(Flow::Value(Value::Object(Object::new(builder))))
        }
        Method::Stream => Err(VmError::unsupported(format!(
            "{agent_name}.stream: streaming replies into a Concerto program is not supported \
             yet; use execute (the connection layer may still stream on the wire)"
        ))),
        _ => Err(VmError::type_error(format!(
            "unknown agent method: {agent_name}.{name}"
        ))),
    }
}

/// A tool reference (`Calculator`), an MCP server reference, or a name.
fn tool_selection(ctx: &Ctx, value: &Value) -> Option<ToolSel> {
    match value {
        Value::Ref(r) if r.kind == RefKind::Tool => Some(ToolSel::Tool(r.index)),
        Value::Ref(r) if r.kind == RefKind::Mcp => Some(ToolSel::External(
            ctx.program().connections[r.index as usize].name.clone(),
        )),
        Value::Str(name) => tool_by_name(ctx, name.as_str()),
        _ => None,
    }
}

/// A tool by name: the program's own, an MCP server, or a host-registered tool.
fn tool_by_name(ctx: &Ctx, name: &str) -> Option<ToolSel> {
    let program = ctx.program();
    if let Some(i) = program.tools.iter().position(|t| t.decl.name == name) {
        return Some(ToolSel::Tool(i as u32));
    }
    let external = program
        .connections
        .iter()
        .any(|c| c.name == name && c.is_mcp())
        || ctx.host.tools.is_registered(name);
    external.then(|| ToolSel::External(name.to_string()))
}

/// `Agent.chat(messages)`: an array of `Message` structs or `{role, content}` maps.
fn chat_messages(value: &Value) -> Result<Vec<ChatMessage>, VmError> {
    let Value::Array(items) = value else {
        return Err(VmError::type_error(format!(
            "chat expects an array of messages, got {}",
            value.type_name()
        )));
    };
    let field = |v: &Value, name: &str| -> Option<String> {
        match v {
            Value::Struct(s) => s.get(name).map(|f| f.to_display()),
            Value::Map(m) => m.get(name).map(|f| f.to_display()),
            _ => None,
        }
    };
    items
        .to_vec()
        .iter()
        .map(|m| match (field(m, "role"), field(m, "content")) {
            (Some(role), Some(content)) => Ok(ChatMessage::new(role, content)),
            _ => Err(VmError::type_error(format!(
                "chat messages need `role` and `content`, got {}",
                m.to_display()
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `execute` / `chat`: a `Response`.
    Text,
    /// `execute_with_schema<S>`: an `S`.
    Schema(u32),
}

enum Input {
    Prompt(String),
    Messages(Vec<ChatMessage>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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

/// The agent decorators that matter at run time.
#[derive(Debug, Default)]
struct Decorators {
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    log: bool,
    cache_ttl: Option<Duration>,
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

/// How one tool call runs.
enum ToolRun {
    /// A tool method of the program: function, `self`, arguments.
    Own(concerto_ir::FuncId, Value, Vec<Value>),
    /// An external provider's function: provider, function, JSON arguments.
    External(String, String, serde_json::Value),
}

/// How a call reaches its answerer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// An LLM over connection `connections[i]`.
    Llm(u32),
    /// Host agent `hosts[i]`; `json` input format.
    Host(u32, bool),
}

/// One agent call in progress.
pub(crate) struct AgentCall {
    agent_name: String,
    via: Via,
    connection_name: String,
    /// A host agent's context (`with_context`), sent with every input.
    host_context: Option<Value>,
    /// External tool providers whose functions are still to be listed.
    pending_specs: VecDeque<String>,
    /// External tool providers offered, by name.
    external: Vec<String>,
    kind: Kind,
    /// Builder `execute`: return the bare `Response` and raise errors.
    bare: bool,
    /// The user prompt (`execute`), or empty for `chat`.
    prompt: String,
    /// Index of the message a schema re-ask replaces.
    user_index: usize,
    request: ChatRequest,
    memory: Option<(String, Option<u64>, bool)>,
    decorators: Decorators,
    /// Tools offered, by program name.
    offered: Vec<String>,
    rounds: u32,
    schema_attempts: u32,
    calls: VecDeque<ToolCall>,
    current: Option<ToolCall>,
    reply: Option<ChatResponse>,
    /// A reply that passed the schema, waiting for the custom validator's verdict.
    validated: Option<Value>,
    /// What a call to `<Schema>::validate` decided (`None`: no validator).
    cache_key: Option<String>,
    remember: VecDeque<ChatMessage>,
    result: Option<Value>,
    phase: Phase,
    frame_name: String,
    /// What a `MOCK_MODEL` made this model answer (tests).
    mock: Option<concerto_ir::MockReply>,
}

impl AgentCall {
    fn new(
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
                .provider_schema(&program, schema)
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
        Ok(AgentCall {
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

    /// Asks the model (or the agent's cache).
    fn send(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
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
        let fut = ctx
            .host
            .connections
            .chat(ctx.program(), connection, self.request.clone());
        Ok(Step::Suspend(Box::pin(async move {
            match fut.await {
                Ok(reply) => Ok(Value::carry(reply)),
                Err(e) => Ok(Value::carry(e)),
            }
        })))
    }

    /// One exchange with a host agent: the current prompt (the original, or a schema
    /// re-ask) in the host's input format.
    fn send_to_host(&mut self, ctx: &mut Ctx, host: u32, json: bool) -> Step {
        let prompt = self
            .request
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let input = host_input(prompt, self.host_context.as_ref(), json);
        let started = ctx.now();
        let host_name = self.agent_name.clone();
        let fut = ctx.host.tools.host_exchange(ctx.program(), host, input);
        let system = ctx.host.system.clone();
        Step::Suspend(Box::pin(async move {
            match fut.await {
                Err(e) if e.kind != crate::host::HostErrorKind::NotEnabled => Ok(Value::carry(e)),
                Ok(text) => {
                    let mut reply =
                        ChatResponse::text(text, host_name, crate::host::Usage::default());
                    reply.provider = "host".into();
                    reply.cost_usd = Some(0.0);
                    reply.latency_ms = system
                        .monotonic()
                        .saturating_duration_since(started)
                        .as_millis() as u64;
                    Ok(Value::carry(reply))
                }
                Err(e) => Err(VmError::from(e)),
            }
        }))
    }

    /// A reply arrived: run its tool calls, check it against the schema, or finish.
    fn on_reply(
        &mut self,
        ctx: &mut Ctx,
        reply: ChatResponse,
        from_cache: bool,
    ) -> Result<Step, VmError> {
        if !from_cache {
            ctx.stats
                .llm
                .both(&self.agent_name, &self.connection_name, |c| {
                    c.add_response(&reply)
                });
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
                    Via::Llm(_) => response_value(&reply, &self.connection_name),
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
                    .check(&program, schema, &reply.text)
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
                                Ok(Step::CallWithSelf(fid, value, Vec::new()))
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

    /// The reply did not match the schema: ask again with the errors, or give up.
    fn invalid(&mut self, ctx: &mut Ctx, errors: Vec<String>) -> Result<Step, VmError> {
        let Kind::Schema(schema) = self.kind else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "schema retry without a schema",
            ));
        };
        let joined = errors.join("; ");
        if self.schema_attempts < SCHEMA_ATTEMPTS {
            ctx.stats
                .llm
                .both(&self.agent_name, &self.connection_name, |c| {
                    c.schema_retries += 1
                });
            let schema_text = self
                .request
                .response_schema
                .as_ref()
                .and_then(|s| serde_json::to_string_pretty(&s.schema).ok())
                .unwrap_or_default();
            let original = if self.prompt.is_empty() {
                self.request
                    .messages
                    .get(self.user_index)
                    .map(|m| m.content.clone())
                    .unwrap_or_default()
            } else {
                self.prompt.clone()
            };
            let corrective = format!(
                "Your previous response did not match the required JSON schema.\n\
                 Error: {joined}\n\
                 Schema: {schema_text}\n\
                 Original request: {original}\n\
                 Reply with valid JSON only, matching the schema exactly."
            );
            // The re-ask replaces the user turn (and drops any tool turns after it), so the
            // failed answer is not carried along and memory is not touched.
            self.request.messages.truncate(self.user_index);
            self.request
                .messages
                .push(ChatMessage::new("user", corrective));
            self.rounds = 0;
            return self.send(ctx);
        }
        let schema_name = ctx.program().schemas[schema as usize].name.clone();
        let message = format!(
            "schema validation failed after {} attempts: {joined}",
            self.schema_attempts
        );
        let raw = self
            .reply
            .as_ref()
            .map(|r| r.text.clone())
            .unwrap_or_default();
        let value = Value::record(
            "SchemaError",
            vec![
                ("message", Value::str(message.as_str())),
                ("kind", Value::str(FailureKind::Schema.as_str())),
                ("agent_name", Value::str(self.agent_name.as_str())),
                ("connection", Value::str(self.connection_name.as_str())),
                ("schema_name", Value::str(schema_name.as_str())),
                ("raw_response", Value::str(raw.as_str())),
                (
                    "errors",
                    Value::array(errors.iter().map(|e| Value::str(e.as_str())).collect()),
                ),
            ],
        );
        self.finish_err(ctx, value, message, ErrorKind::Schema)
    }

    /// Lists the functions of the next external tool provider, then loads the conversation
    /// memory, then asks.
    fn list_next_provider(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        while let Some(provider) = self.pending_specs.pop_front() {
            // A provider the host switched off is not offered: the agent goes without it.
            if ctx.host.tools.is_switched_off(&provider) {
                continue;
            }
            let program = ctx.program().clone();
            // An external provider is only offered when the host enabled it.
            ctx.host
                .tools
                .check(&program, &provider, "")
                .map_err(VmError::from)?;
            self.phase = Phase::Specs;
            let fut = ctx.host.tools.specs(&program, &provider);
            return Ok(Step::Suspend(Box::pin(async move {
                match fut.await {
                    Ok(specs) => Ok(Value::carry(specs)),
                    Err(e) => Err(VmError::from(e)),
                }
            })));
        }
        self.phase = Phase::LoadHistory;
        self.resume(ctx, Ok(Value::Nil))
    }

    /// Runs the next tool call the model asked for, or asks the model again.
    fn next_tool(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        while let Some(call) = self.calls.pop_front() {
            ctx.stats
                .llm
                .both(&self.agent_name, &self.connection_name, |c| {
                    c.tool_calls += 1
                });
            match self.resolve_tool(ctx, &call) {
                Ok(ToolRun::Own(fid, tool, args)) => {
                    self.current = Some(call);
                    self.phase = Phase::Tool;
                    return Ok(Step::CallWithSelf(fid, tool, args));
                }
                Ok(ToolRun::External(provider, method, args)) => {
                    self.current = Some(call);
                    self.phase = Phase::Tool;
                    let fut = ctx.host.tools.call(ctx.program(), &provider, &method, args);
                    return Ok(Step::Suspend(Box::pin(async move {
                        fut.await.map_err(VmError::from)
                    })));
                }
                Err(message) => {
                    self.request.messages.push(ChatMessage::tool_result(
                        call.id.as_str(),
                        call.name.as_str(),
                        format!("error: {message}"),
                    ));
                }
            }
        }
        self.send(ctx)
    }

    /// How to run a tool call, or why it cannot run (told to the model).
    fn resolve_tool(&self, ctx: &Ctx, call: &ToolCall) -> Result<ToolRun, String> {
        if !self.offered.contains(&call.name) {
            return Err(format!("unknown tool '{}'", call.name));
        }
        let program = ctx.program();
        let Some((tool_name, method)) = call.name.split_once("::") else {
            return Err(format!("unknown tool '{}'", call.name));
        };
        ctx.host
            .tools
            .check(program, tool_name, method)
            .map_err(|e| e.message)?;
        if self.external.iter().any(|p| p == tool_name) {
            let args = match &call.arguments {
                serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
                other => other.clone(),
            };
            return Ok(ToolRun::External(
                tool_name.to_string(),
                method.to_string(),
                args,
            ));
        }
        let Some(t) = program.tools.iter().position(|t| t.decl.name == tool_name) else {
            return Err(format!("unknown tool '{}'", call.name));
        };
        let Some(&(_, fid)) = program.tools[t]
            .methods
            .iter()
            .find(|(m, _)| &**m == method)
        else {
            return Err(format!("tool '{tool_name}' has no method '{method}'"));
        };
        let params = &program.function(fid).params;
        let args = match &call.arguments {
            serde_json::Value::Object(obj) => params
                .iter()
                .map(|p| obj.get(&p.name).map_or(Value::Nil, Value::from_json))
                .collect(),
            serde_json::Value::Null if params.is_empty() => Vec::new(),
            other => {
                return Err(format!(
                    "arguments of '{}' must be a JSON object, got {other}",
                    call.name
                ));
            }
        };
        let instance = ctx.vm.tool_instances[t].clone();
        Ok(ToolRun::Own(fid, instance, args))
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

    /// A failure the program sees: `Err(value)`, or a raised error for a 1a8ede9 builder's
    /// `execute`. The value is an `AgentError` (a `TimeoutError` for timeouts) with the
    /// fields `message`, `kind` (see [`FailureKind`]), `agent_name`, `connection`, `status`
    /// (the HTTP status, or nil) and `retry_after_ms` (the provider's, or nil); a
    /// `TimeoutError` adds `timeout_seconds` (the call's limit when it set one, else nil).
    fn fail(
        &mut self,
        ctx: &mut Ctx,
        type_name: &str,
        message: String,
        timeout: Option<Duration>,
        failure: Failure,
    ) -> Result<Step, VmError> {
        ctx.stats
            .llm
            .both(&self.agent_name, &self.connection_name, |c| c.failures += 1);
        let opt_int =
            |v: Option<u64>| v.map_or(Value::Nil, |n| Value::Int(n.min(i64::MAX as u64) as i64));
        let mut fields = vec![
            ("message", Value::str(message.as_str())),
            ("kind", Value::str(failure.kind.as_str())),
            ("agent_name", Value::str(self.agent_name.as_str())),
            ("connection", Value::str(self.connection_name.as_str())),
            ("status", opt_int(failure.status.map(u64::from))),
            ("retry_after_ms", opt_int(failure.retry_after_ms)),
        ];
        if type_name == "TimeoutError" {
            fields.push((
                "timeout_seconds",
                timeout.map_or(Value::Nil, |t| Value::Float(t.as_secs_f64())),
            ));
        }
        let value = Value::record(type_name, fields);
        let kind = if type_name == "TimeoutError" {
            ErrorKind::Timeout
        } else {
            ErrorKind::Host
        };
        self.finish_err(ctx, value, message, kind)
    }

    fn finish_err(
        &mut self,
        _ctx: &mut Ctx,
        value: Value,
        message: String,
        kind: ErrorKind,
    ) -> Result<Step, VmError> {
        self.phase = Phase::Done;
        if self.bare && self.kind == Kind::Text {
            return Err(VmError::new(kind, message).with_value(value));
        }
        Ok(Step::Return(Value::err(value)))
    }

    /// A failure of kind `other` (a mocked error, a tool loop that never ends).
    fn fail_other(&mut self, ctx: &mut Ctx, message: String) -> Result<Step, VmError> {
        self.fail(
            ctx,
            "AgentError",
            message,
            None,
            Failure::plain(FailureKind::Other),
        )
    }

    /// The connection layer (or the external agent) failed.
    fn chat_failed(&mut self, ctx: &mut Ctx, err: VmError) -> Result<Step, VmError> {
        if !err.is_catchable() {
            return Err(err);
        }
        let kind = match err.kind() {
            ErrorKind::Timeout => FailureKind::Timeout,
            ErrorKind::NotEnabled => FailureKind::NotEnabled,
            _ if matches!(self.via, Via::Host(..)) => FailureKind::Agent,
            _ => FailureKind::Provider,
        };
        let message = format!("agent '{}' failed: {}", self.agent_name, err.message());
        if err.kind() == ErrorKind::Timeout {
            let timeout = self.request.timeout;
            return self.fail(ctx, "TimeoutError", message, timeout, Failure::plain(kind));
        }
        self.fail(ctx, "AgentError", message, None, Failure::plain(kind))
    }

    /// A failure the host reported, with the provider's details when it has them.
    fn host_failed(&mut self, ctx: &mut Ctx, err: crate::host::HostError) -> Result<Step, VmError> {
        let provider = err.provider.as_deref().copied();
        let vm_err = VmError::from(err);
        let Some(provider) = provider else {
            return self.chat_failed(ctx, vm_err);
        };
        if !vm_err.is_catchable() {
            return Err(vm_err);
        }
        use crate::host::ProviderFailureKind as P;
        let kind = match provider.kind {
            P::RateLimited => FailureKind::RateLimited,
            P::Timeout => FailureKind::Timeout,
            P::Connection => FailureKind::Connection,
            _ => FailureKind::Provider,
        };
        let failure = Failure {
            kind,
            status: provider.status,
            retry_after_ms: provider.retry_after_ms,
        };
        let message = format!("agent '{}' failed: {}", self.agent_name, vm_err.message());
        if kind == FailureKind::Timeout {
            let timeout = self.request.timeout;
            return self.fail(ctx, "TimeoutError", message, timeout, failure);
        }
        self.fail(ctx, "AgentError", message, None, failure)
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
                let content = match input {
                    Ok(v) => tool_result_text(&v),
                    Err(err) if err.is_catchable() => format!("error: {}", err.message()),
                    Err(err) => return Err(err),
                };
                if let Some(call) = call {
                    self.request.messages.push(ChatMessage::tool_result(
                        call.id.as_str(),
                        call.name.as_str(),
                        content,
                    ));
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

    fn frame_name(&self) -> &str {
        &self.frame_name
    }
}

/// What a host agent is sent for one prompt: with input format `json`,
/// `{"prompt": …, "context": …}`; with `text`, one line: the prompt and, when there is one,
/// `Context: <context as JSON>` after a line break, with every line break written as the two
/// characters `\n` (the agent reads one line per prompt; a raw line break would put every
/// later answer out of step).
pub(crate) fn host_input(prompt: String, context: Option<&Value>, json: bool) -> String {
    if json {
        let mut obj = serde_json::Map::new();
        obj.insert("prompt".into(), serde_json::Value::String(prompt));
        if let Some(context) = context {
            obj.insert("context".into(), context.to_json());
        }
        return serde_json::Value::Object(obj).to_string();
    }
    let text = match context {
        Some(context) => format!("{prompt}\nContext: {}", context.to_json()),
        None => prompt,
    };
    if !text.contains(['\n', '\r']) {
        return text;
    }
    text.replace("\r\n", "\\n").replace(['\n', '\r'], "\\n")
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

/// The `Response` of a model call. Its fields are settled (later work fills values in, it
/// does not rename them):
/// - `text`, `model` (the model that answered), `provider`, `connection` (the connection that
///   answered);
/// - `usage { input_tokens, output_tokens, cached_tokens, estimated }` (`estimated`: the
///   provider reported no counts and these are the runtime's estimate);
/// - `finish_reason` (`stop`, `length`, `tool_calls`, `end_turn`, …; nil when unknown),
///   `attempts` (HTTP attempts, 1 when the first succeeded);
/// - `timing { total_ms, queue_ms, connect_ms, ttfb_ms, first_token_ms, overhead_us }`:
///   `total_ms` is measured; the parts are nil until the connection layer measures them;
/// - `tokens_in`, `tokens_out`, `latency_ms`: the 1a8ede9 names of `usage.input_tokens`,
///   `usage.output_tokens` and `timing.total_ms`.
fn response_value(reply: &ChatResponse, connection: &str) -> Value {
    let int = |n: u64| Value::Int(n.min(i64::MAX as u64) as i64);
    let usage = Value::record(
        "Usage",
        vec![
            ("input_tokens", int(reply.usage.input_tokens)),
            ("output_tokens", int(reply.usage.output_tokens)),
            ("cached_tokens", int(reply.usage.cached_tokens)),
            ("estimated", Value::Bool(reply.usage.estimated)),
        ],
    );
    let timing = Value::record(
        "Timing",
        vec![
            ("total_ms", int(reply.latency_ms)),
            ("queue_ms", Value::Nil),
            ("connect_ms", Value::Nil),
            ("ttfb_ms", Value::Nil),
            ("first_token_ms", Value::Nil),
            ("overhead_us", Value::Nil),
        ],
    );
    Value::record(
        "Response",
        vec![
            ("text", Value::str(reply.text.as_str())),
            ("model", Value::str(reply.model.as_str())),
            ("provider", Value::str(reply.provider.as_str())),
            ("connection", Value::str(connection)),
            ("usage", usage),
            (
                "finish_reason",
                reply
                    .finish_reason
                    .as_deref()
                    .map_or(Value::Nil, Value::str),
            ),
            ("attempts", int(u64::from(reply.attempts))),
            ("timing", timing),
            ("tokens_in", int(reply.usage.input_tokens)),
            ("tokens_out", int(reply.usage.output_tokens)),
            ("latency_ms", int(reply.latency_ms)),
        ],
    )
}

/// A validated instance as a struct named after the schema: declared fields first (in
/// declaration order), then any extra members; nested objects become maps.
pub(crate) fn schema_value(
    program: &concerto_ir::Program,
    schema: u32,
    json: &serde_json::Value,
) -> Value {
    let decl = &program.schemas[schema as usize];
    let declared: Vec<&str> = decl
        .json_schema
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let empty = serde_json::Map::new();
    let obj = json.as_object().unwrap_or(&empty);
    let mut fields: Vec<(&str, Value)> = declared
        .iter()
        .map(|name| (*name, obj.get(*name).map_or(Value::Nil, Value::from_json)))
        .collect();
    for (k, v) in obj {
        if !declared.contains(&k.as_str()) {
            fields.push((k.as_str(), Value::from_json(v)));
        }
    }
    Value::record(&decl.name, fields)
}

/// What a tool returned, as the text of the `tool` message: strings as they are, `Ok(v)` as
/// `v`, `Err(e)` as `error: e`, anything else as JSON.
fn tool_result_text(value: &Value) -> String {
    match value {
        Value::Str(s) => s.as_str().to_string(),
        Value::Ok(p) | Value::Some(p) => tool_result_text(p),
        Value::Err(p) => format!("error: {}", p.to_display()),
        Value::Nil | Value::None => "null".to_string(),
        other => other.to_json().to_string(),
    }
}
