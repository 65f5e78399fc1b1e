//! The agent methods a program calls (`Agent.<method>`, `Host.<method>`,
//! `builder.<method>`): their argument checks, the builder methods that configure a call
//! (`with_memory`, `with_tools`, `without_tools`, `with_context`) on an [`AgentBuilder`],
//! and the start of a call (`execute`, `execute_with_schema`, `chat`).

use super::Kind;
use super::call::AgentCall;
use super::request::Input;
use crate::error::{ErrorKind, VmError};
use crate::exec::{Ctx, Flow};
use crate::host::ChatMessage;
use crate::methods::Method;
use crate::value::{NativeObject, Object, RefKind, Value};

/// A tool selected for a call: one of the program's own, or an external provider (an MCP
/// server or a host-registered tool) whose functions the host lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ToolSel {
    Tool(u32),
    External(String),
}

/// Who answers: an LLM agent or a host agent (an external agent process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Agent(u32),
    Host(u32),
}

/// The value of `Agent.with_memory(m)` and friends: a call being configured.
#[derive(Debug, Clone)]
pub(crate) struct AgentBuilder {
    pub(super) target: Target,
    pub(super) agent_name: String,
    /// Memory index and whether to append the exchange after a successful call.
    pub(super) memory: Option<(u32, bool)>,
    pub(super) tools: Vec<ToolSel>,
    pub(super) without_tools: bool,
    pub(super) context: Option<Value>,
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
pub(super) fn tool_by_name(ctx: &Ctx, name: &str) -> Option<ToolSel> {
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
