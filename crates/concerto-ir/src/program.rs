//! The executable form of an IR module, produced once at load by [`crate::lower`].
//!
//! Everything the interpreter would otherwise look up by name is resolved here: constants are
//! materialised, locals are slot indices, globals, functions, types, agents and schemas are
//! ids, jump targets are checked and every function's stack discipline is verified. The
//! interpreter trusts a [`Program`] and never re-validates it.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model;

/// Index of a function in [`Program::functions`].
pub type FuncId = u32;
/// Index of an interned name in [`Program::names`].
pub type NameId = u32;

/// A constant of the pool, materialised.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    /// `nil`
    Nil,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(Arc<str>),
}

/// A source position `(line, column)`, both 1-based; `(0, 0)` when the instruction has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
}

impl Span {
    /// Whether the span carries a position.
    pub fn is_known(&self) -> bool {
        self.line != 0
    }
}

/// The target of a `CAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastTarget {
    /// `as Int`
    Int,
    /// `as Float`
    Float,
    /// `as String`
    String,
    /// `as Bool`
    Bool,
    /// Any other type: the value is left unchanged.
    Other,
}

/// One lowered instruction. Indices are the same as in the IR, so spans, breakpoints and
/// jump targets keep their meaning. Operand meaning is given per variant; the stack effect
/// is the one of the IR opcode of the same name (see [`crate::Opcode`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// Push `constants[0]`.
    LoadConst(u32),
    /// Push local `slot`; when the slot is unset, push global `global` instead.
    LoadLocal {
        /// Frame slot.
        slot: u16,
        /// Global of the same name, used while the slot is unset.
        global: u32,
    },
    /// Pop into local slot.
    StoreLocal(u16),
    /// Push a global (also `LOAD_LOCAL` of a name that is never a local here).
    LoadGlobal(u32),
    /// Pop into a global.
    StoreGlobal(u32),
    /// Push an immediate constant (the IR's `PUSH`), by constant index.
    Push(u32),
    /// Discard the top.
    Pop,
    /// Duplicate the top.
    Dup,
    /// Swap the two top values.
    Swap,
    /// Add / concatenate.
    Add,
    /// Subtract.
    Sub,
    /// Multiply.
    Mul,
    /// Divide.
    Div,
    /// Remainder.
    Mod,
    /// Negate.
    Neg,
    /// Structural equality.
    Eq,
    /// Structural inequality.
    Neq,
    /// Less than.
    Lt,
    /// Greater than.
    Gt,
    /// Less or equal.
    Lte,
    /// Greater or equal.
    Gte,
    /// Truthiness and.
    And,
    /// Truthiness or.
    Or,
    /// Truthiness not.
    Not,
    /// Jump to the target.
    Jump(u32),
    /// Pop; jump when truthy.
    JumpIfTrue(u32),
    /// Pop; jump when falsy.
    JumpIfFalse(u32),
    /// Return the top (or nil).
    Return,
    /// Call the callee on top with `argc` arguments below it.
    Call(u32),
    /// Call method `name` on the receiver below `argc` arguments.
    CallMethod {
        /// Argument count.
        argc: u16,
        /// Method name.
        name: NameId,
    },
    /// A call described by [`Program::call_sites`] (schema calls, `CALL_NATIVE`,
    /// `CALL_AGENT*`, `CALL_TOOL`, `HASH_MAP_*`).
    CallSite(u32),
    /// Emit `payload` on `channel`.
    Emit,
    /// Emit and wait for the host's reply.
    EmitAwait,
    /// Register the handler chain `Function::chains[0]`.
    TryBegin(u32),
    /// Drop the innermost handler.
    TryEnd,
    /// A catch clause reached by falling through: the previous clause finished, so jump to
    /// the end of the chain.
    Catch(u32),
    /// Throw the top.
    Throw,
    /// `?` on the top.
    Propagate,
    /// Build an array of the top `n` values.
    BuildArray(u32),
    /// Build a map of the top `n` key/value pairs.
    BuildMap(u32),
    /// Build a struct of shape [`Program::shapes`]`[0]`.
    BuildStruct(u32),
    /// Read a field.
    FieldGet(NameId),
    /// Write a field (pushes nothing).
    FieldSet(NameId),
    /// Read an element.
    IndexGet,
    /// Write an element (pushes nothing).
    IndexSet,
    /// Convert to a type.
    Cast(CastTarget),
    /// Test the runtime type name against `names[0]`.
    CheckType(NameId),
    /// Await a task (a finished value passes through).
    Await,
    /// Await `n` tasks, pushing an array of their results in order.
    AwaitAll(u32),
    /// Start a task running the callee on top.
    SpawnAsync,

    // Superinstructions. Each stands for the `len` (or fixed number of) IR instructions that
    // start at its index and leaves those instructions' effects; the instructions after it
    // keep their own ops, so a jump into the middle of a fused sequence still works. They are
    // only formed over local slots that are definitely assigned at that point.
    /// `LOAD_LOCAL slot; LOAD_CONST konst; <op>` (3 instructions).
    BinLocalConst {
        /// The operation.
        op: BinOp,
        /// Left operand slot.
        slot: u16,
        /// Right operand constant.
        konst: u32,
    },
    /// `LOAD_LOCAL a; LOAD_LOCAL b; <op>` (3 instructions).
    BinLocalLocal {
        /// The operation.
        op: BinOp,
        /// Left operand slot.
        a: u16,
        /// Right operand slot.
        b: u16,
    },
    /// `LOAD_LOCAL slot; LOAD_CONST konst; <op>; STORE_LOCAL dest` and, when `len` is 6,
    /// `LOAD_LOCAL dest; POP`.
    BinLocalConstStore {
        /// The operation.
        op: BinOp,
        /// Left operand slot.
        slot: u16,
        /// Destination slot.
        dest: u16,
        /// Right operand constant.
        konst: u32,
        /// Instructions covered (4 or 6).
        len: u8,
    },
    /// `LOAD_LOCAL a; LOAD_LOCAL b; <op>; STORE_LOCAL dest` and, when `len` is 6,
    /// `LOAD_LOCAL dest; POP`. With `ADD` and `dest == a` a string is appended in place.
    BinLocalLocalStore {
        /// The operation.
        op: BinOp,
        /// Left operand slot.
        a: u16,
        /// Right operand slot.
        b: u16,
        /// Destination slot.
        dest: u16,
        /// Instructions covered (4 or 6).
        len: u8,
    },
    /// `LOAD_CONST konst; <op>` (2 instructions).
    BinConst {
        /// The operation.
        op: BinOp,
        /// Right operand constant.
        konst: u32,
    },
    /// `<cmp>; JUMP_IF_FALSE target` (or `JUMP_IF_TRUE` when `jump_if`) (2 instructions).
    Branch {
        /// The comparison.
        op: BinOp,
        /// Jump when the comparison equals this.
        jump_if: bool,
        /// Jump target.
        target: u32,
    },
    /// `LOAD_LOCAL slot; LOAD_CONST konst; <cmp>; JUMP_IF_FALSE target` (4 instructions).
    BranchLocalConst {
        /// The comparison.
        op: BinOp,
        /// Left operand slot.
        slot: u16,
        /// Right operand constant.
        konst: u32,
        /// Jump target (taken when the comparison is false).
        target: u32,
    },
    /// `LOAD_LOCAL a; LOAD_LOCAL b; <cmp>; JUMP_IF_FALSE target` (4 instructions).
    BranchLocalLocal {
        /// The comparison.
        op: BinOp,
        /// Left operand slot.
        a: u16,
        /// Right operand slot.
        b: u16,
        /// Jump target (taken when the comparison is false).
        target: u32,
    },
    /// `STORE_LOCAL slot; LOAD_LOCAL slot; POP` (3 instructions).
    StoreLocalDiscard(u16),
    /// A value pushed and popped at once (`LOAD_CONST c; POP`, `LOAD_LOCAL x; POP`): does
    /// nothing (2 instructions).
    Nop2,
    /// `LOAD_GLOBAL global; CALL argc` (2 instructions).
    CallGlobal {
        /// The callee global.
        global: u32,
        /// Argument count.
        argc: u32,
    },
    /// `LOAD_LOCAL slot; RETURN` (2 instructions).
    ReturnLocal(u16),
    /// `LOAD_LOCAL slot; FIELD_GET name` (2 instructions).
    FieldGetLocal {
        /// The struct's slot.
        slot: u16,
        /// Field name.
        name: NameId,
    },
}

/// The operation of a fused arithmetic or comparison superinstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `ADD`
    Add,
    /// `SUB`
    Sub,
    /// `MUL`
    Mul,
    /// `DIV`
    Div,
    /// `MOD`
    Mod,
    /// `EQ`
    Eq,
    /// `NEQ`
    Neq,
    /// `LT`
    Lt,
    /// `GT`
    Gt,
    /// `LTE`
    Lte,
    /// `GTE`
    Gte,
}

impl BinOp {
    /// The operation of a plain op, when it has one.
    pub fn of(op: Op) -> Option<BinOp> {
        Some(match op {
            Op::Add => BinOp::Add,
            Op::Sub => BinOp::Sub,
            Op::Mul => BinOp::Mul,
            Op::Div => BinOp::Div,
            Op::Mod => BinOp::Mod,
            Op::Eq => BinOp::Eq,
            Op::Neq => BinOp::Neq,
            Op::Lt => BinOp::Lt,
            Op::Gt => BinOp::Gt,
            Op::Lte => BinOp::Lte,
            Op::Gte => BinOp::Gte,
            _ => return None,
        })
    }

    /// Whether the operation yields a Bool.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Neq | BinOp::Lt | BinOp::Gt | BinOp::Lte | BinOp::Gte)
    }

    /// The plain op.
    pub fn op(self) -> Op {
        match self {
            BinOp::Add => Op::Add,
            BinOp::Sub => Op::Sub,
            BinOp::Mul => Op::Mul,
            BinOp::Div => Op::Div,
            BinOp::Mod => Op::Mod,
            BinOp::Eq => Op::Eq,
            BinOp::Neq => Op::Neq,
            BinOp::Lt => Op::Lt,
            BinOp::Gt => Op::Gt,
            BinOp::Lte => Op::Lte,
            BinOp::Gte => Op::Gte,
        }
    }
}

impl Op {
    /// How many IR instructions this op stands for (1 for plain ops).
    pub fn len(self) -> u32 {
        match self {
            Op::BinLocalConst { .. } | Op::BinLocalLocal { .. } | Op::StoreLocalDiscard(_) => 3,
            Op::BinLocalConstStore { len, .. } | Op::BinLocalLocalStore { len, .. } => len as u32,
            Op::BinConst { .. }
            | Op::Branch { .. }
            | Op::Nop2
            | Op::CallGlobal { .. }
            | Op::ReturnLocal(_)
            | Op::FieldGetLocal { .. } => 2,
            Op::BranchLocalConst { .. } | Op::BranchLocalLocal { .. } => 4,
            _ => 1,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Op>() <= 12);

/// A catch-handler chain: the clauses a `TRY_BEGIN` dispatches to and where the chain ends.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchChain {
    /// The clauses in order: the pc of each `CATCH` and its type filter (`None` = bare).
    pub clauses: Vec<(u32, Option<NameId>)>,
    /// The instruction after the last clause (target of the `JUMP` before the first `CATCH`).
    pub end: u32,
}

/// What kind of code a function is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionKind {
    /// A free function, or an impl/trait method reached by its path.
    Plain,
    /// A `$closure_N`.
    Closure,
    /// A `$const_NAME` initialiser.
    ConstInit,
    /// A method of tool `tools[0]`.
    ToolMethod(u32),
    /// Stage `1` of pipeline `0`.
    Stage(u32, u32),
}

/// A lowered function.
#[derive(Debug, Clone)]
pub struct Function {
    /// Full name (`main`, `Point::sum`, `Calc::add` for tool methods, `Flow::one` for stages).
    pub name: Arc<str>,
    /// What kind of code this is.
    pub kind: FunctionKind,
    /// Declared parameters (no `self`).
    pub params: Vec<model::Param>,
    /// Declared return type string.
    pub return_type: String,
    /// `async fn`.
    pub is_async: bool,
    /// Number of declared parameters; they occupy the slots right after `self` (from 1 when
    /// the function has a `self` slot, else from 0).
    pub n_params: u16,
    /// Total local slots (parameters, `self`, stored names).
    pub n_slots: u16,
    /// The slot of `self` (always 0), when the body mentions it.
    pub self_slot: Option<u16>,
    /// The name of each slot.
    pub slot_names: Vec<Arc<str>>,
    /// Deepest operand stack (above the slots) the body can reach.
    pub max_stack: u32,
    /// The lowered body, with superinstructions.
    pub code: Vec<Op>,
    /// The lowered body without superinstructions (one op per IR instruction), for
    /// single-stepping.
    pub plain: Vec<Op>,
    /// Source position of each instruction.
    pub spans: Vec<Span>,
    /// Handler chains, indexed by [`Op::TryBegin`].
    pub chains: Vec<CatchChain>,
}

/// What a global name denotes.
#[derive(Debug, Clone, PartialEq)]
pub enum GlobalKind {
    /// Agent `agents[0]`.
    Agent(u32),
    /// Schema `schemas[0]`.
    Schema(u32),
    /// Tool `tools[0]`.
    Tool(u32),
    /// MCP server, connection `connections[0]`.
    Mcp(u32),
    /// Hashmap `hashmaps[0]`.
    Hashmap(u32),
    /// Ledger `ledgers[0]`.
    Ledger(u32),
    /// Memory `memories[0]`.
    Memory(u32),
    /// Pipeline `pipelines[0]`.
    Pipeline(u32),
    /// Host `hosts[0]`.
    Host(u32),
    /// A variable set by `STORE_GLOBAL`. While unset, reads fall back to `fallback`
    /// (a function of the same name) or fail.
    Constant {
        /// A function of the same name.
        fallback: Option<FuncId>,
    },
    /// Enum variant `variant` of `types[ty]`: the constructor, or the value for a unit
    /// variant.
    EnumVariant {
        /// Type index.
        ty: u32,
        /// Variant index.
        variant: u32,
    },
    /// Not declared by the program: the interpreter resolves it among its built-ins, then
    /// `function`, then as a path (names with `::`) or an undefined name.
    External {
        /// A user function of that name.
        function: Option<FuncId>,
    },
}

/// A global name and what it denotes.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// The name as written in the IR.
    pub name: Arc<str>,
    /// What it denotes.
    pub kind: GlobalKind,
}

/// The field layout of one `BUILD_STRUCT` site.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The type path as written (`Point`, `Shape::Rect`).
    pub type_name: Arc<str>,
    /// What the path names.
    pub target: ShapeTarget,
    /// Field names, in the order of the values on the stack.
    pub fields: Vec<NameId>,
}

/// What a `BUILD_STRUCT` type path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeTarget {
    /// A struct declared in `types`.
    Struct(u32),
    /// A struct-like enum variant.
    EnumVariant {
        /// Type index.
        ty: u32,
        /// Variant index.
        variant: u32,
    },
    /// A schema.
    Schema(u32),
    /// A struct type the runtime provides (`ToolError`, `Message`, …).
    Builtin,
}

/// A call that carries more than a name and an argument count.
#[derive(Debug, Clone, PartialEq)]
pub enum CallSite {
    /// `CALL_METHOD` with an explicit schema type argument.
    MethodWithSchema {
        /// Method name.
        name: NameId,
        /// Argument count.
        argc: u16,
        /// Schema index.
        schema: u32,
    },
    /// `CALL_NATIVE`: a built-in by name.
    Native {
        /// Built-in name.
        name: NameId,
        /// Argument count.
        argc: u16,
    },
    /// `CALL_AGENT*`.
    Agent {
        /// Which opcode.
        flavour: AgentCallFlavour,
        /// Agent index.
        agent: u32,
        /// Method name (defaults to `execute`).
        method: NameId,
        /// Argument count.
        argc: u16,
        /// Schema index for schema calls.
        schema: Option<u32>,
    },
    /// `CALL_TOOL`: function `Tool::method`.
    Tool {
        /// Tool index.
        tool: u32,
        /// Function implementing the method.
        function: FuncId,
        /// Argument count.
        argc: u16,
    },
    /// `HASH_MAP_*` on a named hashmap.
    Hashmap {
        /// Which operation.
        op: HashmapOp,
        /// Hashmap index.
        hashmap: u32,
    },
}

/// The `CALL_AGENT*` opcode a call site came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCallFlavour {
    /// `CALL_AGENT`
    Plain,
    /// `CALL_AGENT_SCHEMA`
    Schema,
    /// `CALL_AGENT_STREAM`
    Stream,
    /// `CALL_AGENT_CHAT`
    Chat,
}

/// A `HASH_MAP_*` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashmapOp {
    /// `[…, k] → […, Option]`
    Get,
    /// `[…, k, v] → […, nil]`
    Set,
    /// `[…, k] → […, nil]`
    Delete,
    /// `[…, k] → […, Bool]`
    Has,
    /// `[…, pred] → […, Map]`
    Query,
}

/// A struct or enum type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeDef {
    /// Declared name.
    pub name: Arc<str>,
    /// Struct fields or enum variants.
    pub kind: TypeDefKind,
}

/// The body of a [`TypeDef`].
#[derive(Debug, Clone, PartialEq)]
pub enum TypeDefKind {
    /// A struct with these field names in declaration order.
    Struct {
        /// Field names.
        fields: Vec<NameId>,
    },
    /// An enum.
    Enum {
        /// Variants in declaration order.
        variants: Vec<VariantDef>,
    },
}

/// One enum variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantDef {
    /// Variant name.
    pub name: Arc<str>,
    /// Payload field names (`_0`, … for tuple variants); `None` for a unit variant.
    pub fields: Option<Vec<NameId>>,
}

/// A tool with its methods resolved to functions.
#[derive(Debug, Clone)]
pub struct ToolDef {
    /// The declaration.
    pub decl: model::Tool,
    /// Method name → function.
    pub methods: Vec<(Arc<str>, FuncId)>,
}

/// A pipeline with its stages resolved to functions.
#[derive(Debug, Clone)]
pub struct PipelineDef {
    /// Pipeline name.
    pub name: Arc<str>,
    /// Stages in order.
    pub stages: Vec<StageDef>,
}

/// One pipeline stage.
#[derive(Debug, Clone)]
pub struct StageDef {
    /// Stage name.
    pub name: Arc<str>,
    /// The stage body.
    pub function: FuncId,
    /// Stage decorators.
    pub decorators: Vec<model::Decorator>,
}

/// An agent with its connection resolved.
#[derive(Debug, Clone)]
pub struct AgentDef {
    /// The declaration.
    pub decl: model::Agent,
    /// Index of its connection, when it names one.
    pub connection: Option<u32>,
}

/// A loaded, validated and lowered program. Immutable; share it with `Arc`.
#[derive(Debug, Clone)]
pub struct Program {
    /// The IR `version` string.
    pub version: String,
    /// Module name.
    pub module: String,
    /// Source file name.
    pub source_file: String,
    /// Compiler metadata.
    pub metadata: model::Metadata,
    /// Non-fatal load warnings (for example a newer minor IR version).
    pub warnings: Vec<String>,
    /// Materialised constants.
    pub constants: Vec<Const>,
    /// Interned names (fields, methods, catch filters).
    pub names: Vec<Arc<str>>,
    /// All code: functions, tool methods and pipeline stages.
    pub functions: Vec<Function>,
    /// Globals referenced by the code or declared by the program.
    pub globals: Vec<Global>,
    /// `BUILD_STRUCT` layouts.
    pub shapes: Vec<Shape>,
    /// Complex call sites.
    pub call_sites: Vec<CallSite>,
    /// Struct and enum types.
    pub types: Vec<TypeDef>,
    /// Agents.
    pub agents: Vec<AgentDef>,
    /// Tools.
    pub tools: Vec<ToolDef>,
    /// Schemas.
    pub schemas: Vec<model::Schema>,
    /// Connections (LLM and MCP).
    pub connections: Vec<model::Connection>,
    /// Hashmaps.
    pub hashmaps: Vec<model::HashmapDecl>,
    /// Ledgers.
    pub ledgers: Vec<model::LedgerDecl>,
    /// Memories.
    pub memories: Vec<model::MemoryDecl>,
    /// Hosts.
    pub hosts: Vec<model::Host>,
    /// Pipelines.
    pub pipelines: Vec<PipelineDef>,
    /// The entry function.
    pub entry: FuncId,
    /// `$const_*` initialisers, in IR order.
    pub const_inits: Vec<FuncId>,
    pub(crate) function_index: FxHashMap<Arc<str>, FuncId>,
    pub(crate) global_index: FxHashMap<Arc<str>, u32>,
    pub(crate) type_index: FxHashMap<Arc<str>, u32>,
    pub(crate) name_index: FxHashMap<Arc<str>, NameId>,
}

impl Program {
    /// The function of that full name.
    pub fn function_id(&self, name: &str) -> Option<FuncId> {
        self.function_index.get(name).copied()
    }

    /// The function with that id.
    pub fn function(&self, id: FuncId) -> &Function {
        &self.functions[id as usize]
    }

    /// The global of that name.
    pub fn global_id(&self, name: &str) -> Option<u32> {
        self.global_index.get(name).copied()
    }

    /// The type of that name.
    pub fn type_id(&self, name: &str) -> Option<u32> {
        self.type_index.get(name).copied()
    }

    /// The interned id of a name, when the program uses it.
    pub fn name_id(&self, name: &str) -> Option<NameId> {
        self.name_index.get(name).copied()
    }

    /// The text of an interned name.
    pub fn name(&self, id: NameId) -> &Arc<str> {
        &self.names[id as usize]
    }

    /// The function `Type::method`, if the program defines it.
    pub fn method_function(&self, type_name: &str, method: &str) -> Option<FuncId> {
        let mut key = String::with_capacity(type_name.len() + method.len() + 2);
        key.push_str(type_name);
        key.push_str("::");
        key.push_str(method);
        self.function_id(&key)
    }

    /// Total number of instructions over all functions.
    pub fn instruction_count(&self) -> usize {
        self.functions.iter().map(|f| f.code.len()).sum()
    }
}
