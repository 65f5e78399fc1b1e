//! The Concerto interpreter: values, the dispatch loop, the built-in library, and the traits
//! through which it reaches everything outside the process.
//!
//! A [`Vm`] is built once per loaded [`concerto_ir::Program`] and shared; each run is an
//! [`Execution`] with its own stack, frames and globals. The crate does no I/O: emits,
//! LLM calls, memory stores, schema validation, host tools, the console and the clock are
//! reached through the traits in [`host`], implemented by sibling crates and wired by
//! `concerto-runtime`.
//!
//! ```
//! use std::sync::Arc;
//! let ir = r#"{"version":"0.1.0","module":"m","source_file":"m.conc",
//!   "constants":[{"index":0,"type":"int","value":2},{"index":1,"type":"int","value":40}],
//!   "functions":[{"name":"main","module":"m","visibility":"private","params":[],
//!     "return_type":"nil","is_async":false,"locals":[],
//!     "instructions":[{"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},
//!                     {"op":"ADD"},{"op":"RETURN"}]}],
//!   "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
//!     "debug_info":true,"entry_point":"main"}}"#;
//! let program = Arc::new(concerto_ir::load_str(ir).unwrap());
//! let vm = concerto_vm::Vm::new(program);
//! let mut exec = concerto_vm::Execution::new(vm, concerto_vm::testing::host(), Default::default());
//! let result = concerto_vm::testing::block_on(exec.run_main()).unwrap();
//! assert_eq!(result, concerto_vm::Value::Int(42));
//! ```
//!
//! # Source layout
//! - `value`: [`Value`] and its display/JSON/equality rules.
//! - `vm`: [`Vm`], the prepared program.
//! - `exec/`: [`Execution`], the dispatch loop, calls, handlers and suspension, a file per
//!   part (its module doc lists them); `exec/debug`: its debug mode (stepping, breakpoints,
//!   tracing, inspection).
//! - `ops`: operators off the fast path.
//! - `builtins`, `stdlib`: native functions; `methods`: built-in methods.
//! - `agent/`: agent calls (LLM requests, tool loop, schema re-asks, builders), a file per
//!   part (its module doc lists them).
//! - `hashmaps`: hashmap methods (scoped views, queries, batches, change callbacks).
//! - `listen`: 7ad10db's `listen` blocks, streaming sessions with an external agent.
//! - `task`: asynchronous tasks (`SPAWN_ASYNC`, `AWAIT`, `AWAIT_ALL`, `AWAIT_ANY`).
//! - `host`: the traits for the outside world.
//! - `error`: [`VmError`].
//! - `testing`: in-memory fakes of the host traits for tests and examples.
#![warn(missing_docs)]

mod agent;
mod builtins;
mod error;
mod exec;
mod hashmaps;
pub mod host;
mod json_io;
mod listen;
mod methods;
mod ops;
pub mod spans;
mod stdlib;
mod task;
pub mod testing;
mod value;
mod vm;

pub use agent::{LlmCounters, LlmStats, TimeTotals};
pub use error::{ErrorKind, Location, VmError};
pub use exec::debug::{
    Breakpoint, BreakpointError, FrameInfo, StepState, StopReason, TraceEvent, Tracer, op_name,
};
pub use exec::{ExecConfig, ExecStats, Execution, Host, TaskScope};
pub use value::{
    Array, ArrayCell, EnumObj, FuncRef, Map, MapCell, MapInner, NativeObject, Object, Payload,
    Range, RefKind, RefValue, Str, StructObj, StructType, Value, drop_deep,
};
pub use vm::Vm;
