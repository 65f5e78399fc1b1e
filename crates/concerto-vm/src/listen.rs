//! `listen A.execute(prompt) { "type" => |msg| { … }, … }` (7ad10db, `LISTEN_BEGIN`): a
//! streaming session with an external agent.
//!
//! The session is a native continuation ([`Listen`]): it opens the session through
//! [`ToolHost::host_listen`](crate::host::ToolHost::host_listen) (permission, process start,
//! init handshake, prompt), then reads the agent's NDJSON lines one at a time. Each message
//! goes to the handler for its `type`, called as an ordinary Concerto frame with the message
//! minus `type` (a map, or a schema value when the handler's parameter names a schema); a
//! handler value other than nil is written back as
//! `{"type":"response","in_reply_to":<type>,"value":<value>}`. A message without a handler is
//! emitted on `listen:unhandled` (whole, `type` included) and answered with nothing.
//!
//! The session ends with `result` — the listen is `Ok(<the message minus type>)` — or with
//! `error` — `Err(<its message>)`. A line that is not a JSON object with a string `type`
//! counts as `{"type":"result","text":<the line>}`. An agent that closes its output first, a
//! session that runs out of time (the agent's timeout bounds the whole session) or a broken
//! pipe make the listen `Err(<why>)`. Lifecycle emits: `listen:start {agent, listen}` once the
//! prompt is written, `listen:complete {agent}` after a result, `listen:error {agent, error}`
//! when the listen ends in `Err` or with a handler's error. An error raised by a handler ends
//! the listen with that error, which goes on to the caller's `try` (the agent's process is
//! stopped).

use std::sync::Arc;

use crate::error::VmError;
use crate::exec::{Continuation, Ctx, Flow, Step};
use crate::host::HostSession;
use crate::value::{FuncRef, Value};

/// `LISTEN_BEGIN` of listen block `listen` with the prompt in `args[0]`.
pub(crate) fn begin(ctx: &mut Ctx, listen: u32, args: &[Value]) -> Result<Flow, VmError> {
    let program = ctx.program().clone();
    let def = &program.listens[listen as usize];
    let host = &program.hosts[def.host as usize];
    ctx.host
        .tools
        .check(&program, &host.name, "execute")
        .map_err(VmError::from)?;
    let prompt = args.first().map(Value::to_display).unwrap_or_default();
    let json = host.input_format.trim().eq_ignore_ascii_case("json");
    let input = crate::agent::host_input(prompt, None, json);
    Ok(Flow::Start(Box::new(Listen {
        listen,
        agent: host.name.clone(),
        frame_name: format!("listen {}", host.name),
        session: None,
        input: Some(input),
        phase: Phase::Open,
        replying_to: None,
    })))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the session to open.
    Open,
    /// Waiting for the next line.
    Read,
    /// A handler is running.
    Handler,
    /// A response is being written.
    Reply,
    Done,
}

struct Listen {
    listen: u32,
    agent: String,
    frame_name: String,
    session: Option<Arc<dyn HostSession>>,
    input: Option<String>,
    phase: Phase,
    /// The message type whose handler is running.
    replying_to: Option<String>,
}

impl Drop for Listen {
    fn drop(&mut self) {
        // Unwound by a handler's error (or cancelled): the agent is mid-session.
        if let Some(session) = self.session.take() {
            session.finish(false);
        }
    }
}

impl Listen {
    fn read(&mut self) -> Result<Step, VmError> {
        let Some(session) = &self.session else {
            return Err(VmError::new(
                crate::error::ErrorKind::Internal,
                "listen read without a session",
            ));
        };
        self.phase = Phase::Read;
        let fut = session.next_line();
        Ok(Step::Suspend(Box::pin(async move {
            match fut.await {
                Ok(line) => Ok(Value::carry(line)),
                Err(e) => Err(VmError::from(e)),
            }
        })))
    }

    /// Ends the session (stopping the agent unless `clean`) and emits `listen:error`.
    fn end_in_error(&mut self, ctx: &mut Ctx, why: &str, clean: bool) -> Result<(), VmError> {
        self.phase = Phase::Done;
        if let Some(session) = self.session.take() {
            session.finish(clean);
        }
        ctx.emit(
            "listen:error",
            &Value::map([
                ("agent", Value::str(self.agent.as_str())),
                ("error", Value::str(why)),
            ]),
        )
    }

    /// Ends the listen with `Err(why)`.
    fn fail(&mut self, ctx: &mut Ctx, why: String, clean: bool) -> Result<Step, VmError> {
        self.end_in_error(ctx, &why, clean)?;
        Ok(Step::Return(Value::err(Value::str(why))))
    }

    fn on_line(&mut self, ctx: &mut Ctx, line: Option<String>) -> Result<Step, VmError> {
        let Some(line) = line else {
            return self.fail(ctx, "agent exited without result".to_string(), false);
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return self.read();
        }
        let mut message = match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(serde_json::Value::Object(map))
                if map.get("type").is_some_and(serde_json::Value::is_string) =>
            {
                map
            }
            _ => {
                let mut map = serde_json::Map::new();
                map.insert("type".into(), "result".into());
                map.insert("text".into(), serde_json::Value::String(line.clone()));
                map
            }
        };
        let kind = message
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let program = ctx.program().clone();
        let def = &program.listens[self.listen as usize];
        let handler = def.handlers.iter().find(|h| *h.message_type == *kind);
        match (kind.as_str(), handler) {
            ("result", _) => {
                message.remove("type");
                self.phase = Phase::Done;
                if let Some(session) = self.session.take() {
                    session.finish(true);
                }
                ctx.emit(
                    "listen:complete",
                    &Value::map([("agent", Value::str(self.agent.as_str()))]),
                )?;
                Ok(Step::Return(Value::ok(Value::from_json(
                    &serde_json::Value::Object(message),
                ))))
            }
            ("error", _) => {
                let why = match message.get("message") {
                    Some(serde_json::Value::String(m)) => m.clone(),
                    Some(other) => other.to_string(),
                    None => "the agent reported an error".to_string(),
                };
                self.fail(ctx, why, true)
            }
            (_, Some(handler)) => {
                message.remove("type");
                let json = serde_json::Value::Object(message);
                let param = match handler.schema {
                    Some(schema) => crate::agent::schema_value(&program, schema, &json),
                    None => Value::from_json(&json),
                };
                self.phase = Phase::Handler;
                self.replying_to = Some(kind);
                let callee = Value::Func(FuncRef {
                    program: ctx.vm.registry_id,
                    id: handler.function,
                });
                Ok(Step::Call(callee, smallvec::smallvec![param]))
            }
            (_, None) => {
                ctx.emit(
                    "listen:unhandled",
                    &Value::from_json(&serde_json::Value::Object(message)),
                )?;
                self.read()
            }
        }
    }
}

impl Continuation for Listen {
    fn resume(&mut self, ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        match self.phase {
            Phase::Open => {
                if let Some(text) = self.input.take() {
                    // First resume: open the session.
                    input?;
                    let program = ctx.program().clone();
                    let host = program.listens[self.listen as usize].host;
                    let fut = ctx.host.tools.host_listen(&program, host, text);
                    return Ok(Step::Suspend(Box::pin(async move {
                        match fut.await {
                            Ok(session) => Ok(Value::carry(session)),
                            Err(e) => Err(VmError::from(e)),
                        }
                    })));
                }
                match input {
                    Ok(value) if value.carried::<Arc<dyn HostSession>>().is_some() => {
                        self.session = value.carried::<Arc<dyn HostSession>>().cloned();
                        let listen_name = ctx.program().listens[self.listen as usize].name.clone();
                        ctx.emit(
                            "listen:start",
                            &Value::map([
                                ("agent", Value::str(self.agent.as_str())),
                                ("listen", Value::str(&*listen_name)),
                            ]),
                        )?;
                        self.read()
                    }
                    Ok(_) => Err(VmError::new(
                        crate::error::ErrorKind::Internal,
                        "listen resumed without a session",
                    )),
                    // Not enabled and the like end the program's call as for `execute`;
                    // a process that cannot start or answer makes the listen `Err`.
                    Err(e) if e.kind() == crate::error::ErrorKind::NotEnabled => Err(e),
                    Err(e) if !e.is_catchable() => Err(e),
                    Err(e) => self.fail(ctx, e.message().to_string(), false),
                }
            }
            Phase::Read => match input {
                Ok(value) => match value.carried::<Option<String>>() {
                    Some(line) => {
                        let line = line.clone();
                        self.on_line(ctx, line)
                    }
                    None => Err(VmError::new(
                        crate::error::ErrorKind::Internal,
                        "listen resumed without a line",
                    )),
                },
                Err(e) if !e.is_catchable() => Err(e),
                Err(e) => self.fail(ctx, e.message().to_string(), false),
            },
            Phase::Handler => {
                let value = match input {
                    Ok(value) => value,
                    Err(err) => {
                        // The handler failed: the listen ends with its error, which goes on
                        // unwinding; the agent, mid-session, is stopped.
                        self.end_in_error(ctx, err.message(), false)?;
                        return Err(err);
                    }
                };
                let kind = self.replying_to.take().unwrap_or_default();
                if matches!(value, Value::Nil | Value::Unset) {
                    return self.read();
                }
                let line = serde_json::json!({
                    "type": "response",
                    "in_reply_to": kind,
                    "value": value.to_json(),
                })
                .to_string();
                let Some(session) = &self.session else {
                    return Err(VmError::new(
                        crate::error::ErrorKind::Internal,
                        "listen reply without a session",
                    ));
                };
                self.phase = Phase::Reply;
                let fut = session.send_line(line);
                Ok(Step::Suspend(Box::pin(async move {
                    fut.await.map(|()| Value::Nil).map_err(VmError::from)
                })))
            }
            Phase::Reply => match input {
                Ok(_) => self.read(),
                Err(e) if !e.is_catchable() => Err(e),
                Err(e) => self.fail(ctx, e.message().to_string(), false),
            },
            Phase::Done => Err(VmError::new(
                crate::error::ErrorKind::Internal,
                "listen resumed after it finished",
            )),
        }
    }

    fn intercepts_errors(&self) -> bool {
        // A handler's error passes through here (to emit `listen:error`) and goes on.
        self.phase == Phase::Handler
    }

    fn frame_name(&self) -> &str {
        &self.frame_name
    }
}
