//! The program's emits: [`EmitSink`].

use super::{BoxFuture, HostError};
use crate::value::Value;

/// Receives the program's emits.
pub trait EmitSink: Send + Sync {
    /// Delivers a fire-and-forget emit. An error ends the execution (nothing is lost
    /// silently); a sink that wants back-pressure may block briefly or return
    /// [`HostErrorKind::Limit`](super::HostErrorKind::Limit).
    fn emit(&self, channel: &str, payload: &Value) -> Result<(), HostError>;

    /// [`EmitSink::emit`] of an emit that has a key unique within its run (a journaled
    /// run's position of the emit, such as `main/0#3`): the same key again is the same
    /// emit delivered again (a resumed run repeating the emit it made when it stopped), so
    /// a sink that keeps emits durably can deliver it once. The default ignores the key.
    fn emit_keyed(&self, key: &str, channel: &str, payload: &Value) -> Result<(), HostError> {
        let _ = key;
        self.emit(channel, payload)
    }

    /// Whether the program should wait after each `EMIT` for [`EmitSink::settle`] (asked
    /// once per execution; the default is `false`, and `settle` is then never called).
    fn settles(&self) -> bool {
        false
    }

    /// Called after an `EMIT` instruction delivered its emit when [`EmitSink::settles`]: a
    /// future the program waits for before its next instruction (a run journal commits
    /// the emit's record), or `None` when there is nothing to wait for.
    fn settle(&self) -> Option<BoxFuture<Result<(), HostError>>> {
        None
    }

    /// Delivers an emit that waits for the host's reply (`EMIT_AWAIT`).
    fn emit_await(&self, channel: &str, payload: Value) -> BoxFuture<Result<Value, HostError>> {
        let _ = payload;
        let message = format!("no handler answers emit-await on channel `{channel}`");
        Box::pin(async move { Err(HostError::unsupported(message)) })
    }
}
