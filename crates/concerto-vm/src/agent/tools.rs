//! The tool loop: listing the functions of external tool providers, running the tool
//! calls a model asks for (the program's own tool methods as Concerto frames, external
//! ones through the host), and what they return as tool messages.

use super::call::{AgentCall, Phase};
use crate::error::VmError;
use crate::exec::{Continuation, Ctx, Step};
use crate::host::{ChatMessage, ToolCall};
use crate::value::Value;

/// Most model turns one call may take while the model keeps asking for tools.
pub(super) const MAX_TOOL_ROUNDS: u32 = 10;

/// How one tool call runs.
enum ToolRun {
    /// A tool method of the program: function, `self`, arguments.
    Own(concerto_ir::FuncId, Value, Vec<Value>),
    /// An external provider's function: provider, function, JSON arguments.
    External(String, String, serde_json::Value),
}

impl AgentCall {
    /// Lists the functions of the next external tool provider, then loads the conversation
    /// memory, then asks.
    pub(super) fn list_next_provider(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
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
    pub(super) fn next_tool(&mut self, ctx: &mut Ctx) -> Result<Step, VmError> {
        while let Some(call) = self.calls.pop_front() {
            ctx.stats
                .llm
                .both(&self.agent_name, &self.connection_name, |c| {
                    c.tool_calls += 1
                });
            match self.resolve_tool(ctx, &call) {
                Ok(ToolRun::Own(fid, tool, args)) => {
                    self.tool_span =
                        Some(crate::spans::tool_call(&self.span, &call.name, &call.id));
                    self.current = Some(call);
                    self.phase = Phase::Tool;
                    return Ok(Step::CallWithSelf(fid, tool, args.into()));
                }
                Ok(ToolRun::External(provider, method, args)) => {
                    self.tool_span =
                        Some(crate::spans::tool_call(&self.span, &call.name, &call.id));
                    self.current = Some(call);
                    self.phase = Phase::Tool;
                    let fut =
                        ctx.host
                            .tools
                            .call_for_model(ctx.program(), &provider, &method, args);
                    // The span is not entered around the call: an MCP client that (re)starts
                    // its server's session inside it would keep it open as long as the
                    // session lasts.
                    return Ok(Step::Suspend(Box::pin(async move {
                        fut.await.map(Value::carry).map_err(VmError::from)
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
}

/// What a tool returned, as the text of the `tool` message: strings as they are, `Ok(v)` as
/// `v`, `Err(e)` as `error: ` and the error's `message` (a `ToolError`, or any struct with a
/// string `message`; otherwise `e` displayed), anything else as JSON.
pub(super) fn tool_result_text(value: &Value) -> String {
    match value {
        Value::Str(s) => s.as_str().to_string(),
        Value::Ok(p) | Value::Some(p) => tool_result_text(p),
        Value::Err(p) => match &***p {
            Value::Struct(s) => match s.get("message") {
                Some(Value::Str(m)) => format!("error: {}", m.as_str()),
                _ => format!("error: {}", p.to_display()),
            },
            other => format!("error: {}", other.to_display()),
        },
        Value::Nil | Value::None => "null".to_string(),
        other => other.to_json().to_string(),
    }
}
