//! How a call fails: the kind of failure, and the `AgentError` / `TimeoutError` value the
//! program sees (or the error raised for a 1a8ede9 builder's `execute`).

use std::time::Duration;

use super::Kind;
use super::call::{AgentCall, Phase, Via};
use crate::error::{ErrorKind, VmError};
use crate::exec::{Ctx, Step};
use crate::value::Value;

/// What kind of failure an `AgentError` (or `TimeoutError`) reports, in its `kind` field.
/// These names are stable: programs match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
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
    pub(super) fn as_str(self) -> &'static str {
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

impl AgentCall {
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
        if let Some(span) = self.request_span.take() {
            crate::spans::record_error(&span, failure.kind.as_str());
        }
        crate::spans::record_error(&self.span, failure.kind.as_str());
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

    pub(super) fn finish_err(
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
    pub(super) fn fail_other(&mut self, ctx: &mut Ctx, message: String) -> Result<Step, VmError> {
        self.fail(
            ctx,
            "AgentError",
            message,
            None,
            Failure::plain(FailureKind::Other),
        )
    }

    /// The connection layer (or the external agent) failed.
    pub(super) fn chat_failed(&mut self, ctx: &mut Ctx, err: VmError) -> Result<Step, VmError> {
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
    pub(super) fn host_failed(
        &mut self,
        ctx: &mut Ctx,
        err: crate::host::HostError,
    ) -> Result<Step, VmError> {
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
