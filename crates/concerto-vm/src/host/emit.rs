//! The program's emits: [`EmitSink`].

use super::{BoxFuture, HostError};
use crate::value::Value;

/// Receives the program's emits.
pub trait EmitSink: Send + Sync {
    /// Delivers a fire-and-forget emit. An error ends the execution (nothing is lost
    /// silently); a sink that wants back-pressure may block briefly or return
    /// [`HostErrorKind::Limit`](super::HostErrorKind::Limit).
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError>;

    /// Delivers an emit that waits for the host's reply (`EMIT_AWAIT`).
    fn emit_await(&self, channel: &str, payload: Value) -> BoxFuture<Result<Value, HostError>> {
        let _ = payload;
        let message = format!("no handler answers emit-await on channel `{channel}`");
        Box::pin(async move { Err(HostError::unsupported(message)) })
    }
}
