//! The exchange with a host agent (an external agent process): what it is sent for one
//! prompt and how its answer becomes a reply.

use super::call::AgentCall;
use crate::error::VmError;
use crate::exec::{Ctx, Step};
use crate::host::ChatResponse;
use crate::value::Value;

impl AgentCall {
    /// One exchange with a host agent: the current prompt (the original, or a schema
    /// re-ask) in the host's input format.
    pub(super) fn send_to_host(&mut self, ctx: &mut Ctx, host: u32, json: bool) -> Step {
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
