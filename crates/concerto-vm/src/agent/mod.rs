//! Agent calls: `execute`, `execute_with_schema<S>`, `chat`, the builders (`with_memory`,
//! `with_tools`, `without_tools`, `with_context`), the tool-calling loop, schema re-asks,
//! the agent decorators (`@retry`, `@timeout`, `@log`, `@cache`) and usage accounting.
//!
//! One call is a native continuation ([`AgentCall`](call::AgentCall)): it suspends on the
//! connection layer (`Connections::chat`) and on the memory store, and calls back into
//! Concerto code for tool methods and for a schema's custom validator
//! (`impl S { fn validate(self) -> … }`), so none of it nests Rust stacks or blocks a thread.
//!
//! Results: `execute` gives `Ok(Response)` or `Err(AgentError)`; `execute_with_schema<S>`
//! gives `Ok(S)` or `Err(SchemaError | AgentError)`. On a builder, `execute` gives the bare
//! `Response` (as the reference runtime and the shared conformance cases expect) and raises
//! a catchable error carrying the `AgentError` value instead of returning `Err`.
//!
//! # Source layout
//! - `builder`: the agent methods a program calls and the [`AgentBuilder`] they configure.
//! - `request`: building a call's request (decorators, tools, messages, model settings).
//! - `call`: [`AgentCall`](call::AgentCall), the continuation that drives a call from phase
//!   to phase.
//! - `tools`: the tool loop.
//! - `schema`: schema re-asks.
//! - `host_agent`: the exchange with a host agent.
//! - `failure`: failure kinds and the `AgentError` / `TimeoutError` values.
//! - `response`: the `Response` record and schema instances.
//! - `usage`: usage counters ([`LlmCounters`], [`LlmStats`]).

mod builder;
mod call;
mod failure;
mod host_agent;
mod request;
mod response;
mod schema;
mod tools;
mod usage;

pub(crate) use builder::{AgentBuilder, agent_method, builder_method, host_method};
pub(crate) use host_agent::host_input;
pub(crate) use response::schema_value;
pub use usage::{LlmCounters, LlmStats, TimeTotals};

/// What a call gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `execute` / `chat`: a `Response`.
    Text,
    /// `execute_with_schema<S>`: an `S`.
    Schema(u32),
}
