//! [`Execution`]: one run of a program — value stack, call frames, handlers, globals — and
//! the dispatch loop.
//!
//! The loop is synchronous and allocation-free for ordinary instructions. When an
//! instruction needs the outside world (an agent call, a slow store, emit-await, a sleep) it
//! returns [`Exit::Suspend`] with a future; the async driver ([`Execution::call`]) awaits it
//! without blocking a thread and resumes the loop with the result.
//!
//! Frames share one register file: a frame's registers are `stack[base..base + frame_size]`
//! (locals, then operand temporaries). A call's arguments sit in consecutive registers of
//! the caller starting at the call's base, which becomes the callee's register 0, so a call
//! moves no values; the callee's result is written back to that base register. The register
//! file only grows during an execution, so a frame's window, once made to exist, stays valid
//! while the frame lives (registers of finished frames are reused by later calls).
//!
//! # Source layout
//! - `execution`: [`Execution`], its entry points and the async driver.
//! - `config`: [`ExecConfig`]; `stats`: [`ExecStats`].
//! - `context`: `Ctx`, the state built-ins may use.
//! - `frame`: call frames, handler records and the register file.
//! - `dispatch`: the dispatch loop.
//! - `call`: calls and returns off the loop's inline paths.
//! - `continuation`: the protocol with native code (`Flow`, `Continuation`, `Step`).
//! - `unwind`: errors: location, handlers, unwinding.
//! - `cold`: ops kept out of the loop.
//! - `hashmap_fast`: hashmap `get`/`has`/`set` straight to the store.
//! - `debug`: debug mode (stepping, breakpoints, tracing, inspection).

use std::sync::Arc;

use crate::error::VmError;
use crate::host::{
    BoxFuture, Connections, EmitSink, MemoryStore, SchemaValidator, System, ToolHost,
};
use crate::value::Value;

mod call;
mod cold;
mod config;
mod context;
mod continuation;
pub(crate) mod debug;
mod dispatch;
mod execution;
mod frame;
mod hashmap_fast;
mod stats;
mod unwind;

pub use config::ExecConfig;
pub(crate) use context::Ctx;
pub(crate) use continuation::{Continuation, Flow, Step};
pub use execution::Execution;
pub use stats::ExecStats;

/// The host components an execution talks to.
#[derive(Clone)]
pub struct Host {
    /// Where emits go.
    pub emit: Arc<dyn EmitSink>,
    /// LLM connections.
    pub connections: Arc<dyn Connections>,
    /// Hashmaps, ledgers, memories.
    pub memory: Arc<dyn MemoryStore>,
    /// Schema validation.
    pub schema: Arc<dyn SchemaValidator>,
    /// Host tools.
    pub tools: Arc<dyn ToolHost>,
    /// Console, environment, clock.
    pub system: Arc<dyn System>,
    /// Gives each spawned task its own components (`None`: tasks share these). A run
    /// journal uses it to key every effect by the task that made it.
    pub tasks: Option<Arc<dyn TaskScope>>,
}

/// Derives the host components of a spawned task from its parent's. Spawns are counted per
/// task, in the order the task makes them, so a task's path (`main`, `main/0`,
/// `main/0/2`, …) is the same in every execution that takes the same path through the
/// program.
pub trait TaskScope: Send + Sync {
    /// The components of the `index`-th task (from 0) spawned by the task whose components
    /// are `parent`.
    fn child(&self, parent: &Host, index: u32) -> Host;
}

/// How the dispatch loop stopped.
pub(crate) enum Exit {
    /// The outermost frame returned.
    Done(Value),
    /// Waiting for the outside world.
    Suspend(BoxFuture<Result<Value, VmError>>),
    /// Fuel ran out: give other tasks a turn, then continue.
    Yield,
    /// A native frame was started: process the pending input and continue (internal to
    /// [`Execution::run`]).
    Resume,
    /// Debug mode only: stopped before an op (a step ended or a breakpoint was reached).
    /// The frames hold the complete state; running again continues with that op.
    Paused,
}
