//! The Concerto IR: its serde model, the loader and the lowering to an executable form.
//!
//! `concertoc` compiles Concerto source to a JSON file (`.conc-ir`). This crate reads that
//! file ([`parse_bytes`]), checks it ([`LoadError`] says what is wrong and where) and lowers
//! it once into a [`Program`]: constants materialised, locals resolved to slots, globals,
//! functions, types, agents and schemas resolved to ids, jump targets and the stack
//! discipline verified. The interpreter (`concerto-vm`) executes a `Program` without looking
//! up any name on its hot path.
//!
//! ```
//! let ir = r#"{"version":"0.1.0","module":"m","source_file":"m.conc",
//!   "constants":[{"index":0,"type":"int","value":1}],
//!   "functions":[{"name":"main","module":"m","visibility":"private","params":[],
//!     "return_type":"nil","is_async":false,"locals":[],
//!     "instructions":[{"op":"LOAD_CONST","arg":0},{"op":"RETURN"}]}],
//!   "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
//!     "debug_info":true,"entry_point":"main"}}"#;
//! let program = concerto_ir::load_str(ir).unwrap();
//! assert_eq!(program.function(program.entry.unwrap()).name.as_ref(), "main");
//! ```
//!
//! # Source layout
//! - `model`: the serde types of every section.
//! - `opcode`: the opcode table.
//! - `loader`: parsing, the version rule, typed parse errors.
//! - `lower`: validation and lowering.
//! - `program`: the executable form.
//! - `error`: [`LoadError`].
//!
//! # Version compatibility
//! The IR `version` is `MAJOR.MINOR.PATCH`. A different major version is refused
//! ([`LoadError::VersionMismatch`]); a different minor version loads with a warning in
//! [`Program::warnings`]; the patch number is ignored. `concertoc` 1a8ede9 writes `0.1.0`.
#![warn(missing_docs)]

mod error;
mod liveness;
mod loader;
mod lower;
pub mod model;
mod opcode;
mod program;
mod registers;
mod stack;

pub use error::{Invalid, LoadError};
pub use loader::{
    SUPPORTED_MAJOR, SUPPORTED_MINOR, check_version, load_bytes, load_path, load_str, parse_bytes,
};
pub use lower::{BUILTIN_STRUCTS, lower};
pub use opcode::Opcode;
pub use program::{
    AgentCallFlavour, AgentDef, BinOp, CallSite, CastTarget, CatchChain, Const, FuncId, Function,
    FunctionKind, Global, GlobalKind, HashmapOp, ListenDef, ListenHandlerDef, MockDef, MockReply,
    NameId, Op, PipelineDef, Program, Reg, Shape, ShapeTarget, Span, StageDef, TestDef, ToolDef,
    TypeDef, TypeDefKind, VariantDef,
};
