//! The executable form of an IR module, produced once at load by [`crate::lower`].
//!
//! Everything the interpreter would otherwise look up by name is resolved here: constants are
//! materialised, locals are slot indices, globals, functions, types, agents and schemas are
//! ids, jump targets are checked and every function's stack discipline is verified. The
//! interpreter trusts a [`Program`] and never re-validates it.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model;

/// Defines an id type: a `u32` index into the [`Program`] table named by `$table`.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $table:literal) => {
        $(#[$doc])*
        ///
        /// A distinct type with the layout of a `u32`, so that it cannot be mixed up with
        /// another kind of id, a register or a constant index.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(transparent)]
        pub struct $name(u32);

        impl $name {
            #[doc = concat!(
                "The id of entry `index` of [`Program::",
                $table,
                "`] (not checked against any program)."
            )]
            #[inline]
            pub const fn new(index: u32) -> Self {
                $name(index)
            }

            #[doc = concat!("The id as an index into [`Program::", $table, "`].")]
            #[inline]
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            /// The id as the `u32` it wraps.
            #[inline]
            pub const fn get(self) -> u32 {
                self.0
            }
        }
    };
}

id_type!(
    /// Index of a function in [`Program::functions`].
    FuncId,
    "functions"
);
id_type!(
    /// Index of an interned name in [`Program::names`].
    NameId,
    "names"
);

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

/// A register of a frame: locals occupy `0..n_slots` (`self` first when present, then the
/// parameters, then stored names), operand temporaries follow.
pub type Reg = u16;

/// One executable instruction: a register operation.
///
/// Lowering turns the IR's stack code into these once: every stack position has a fixed
/// height (the loader verifies it), so it is a fixed register; copies into temporaries are
/// propagated away and no-ops removed. Each op records the IR instruction it came from in
/// [`Function::ir_pc`]. Calls use a register window: a call's arguments sit in consecutive
/// registers starting at `base`, which becomes the callee's register 0; the result is
/// written to `base`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// `dst = constants[k]`
    LoadConst {
        /// Destination.
        dst: Reg,
        /// Constant index.
        k: u32,
    },
    /// `dst = src`
    Move {
        /// Destination.
        dst: Reg,
        /// Source.
        src: Reg,
    },
    /// `dst = src`, moving the value out of `src`, a local no path reads again before
    /// writing it (found by `liveness`): no reference count changes. `src` is left `nil`.
    Take {
        /// Destination.
        dst: Reg,
        /// Source (a local slot).
        src: Reg,
    },
    /// `dst = slot`, or global `global` while the slot is unset.
    LoadLocal {
        /// Destination.
        dst: Reg,
        /// Local slot.
        slot: Reg,
        /// Global of the same name.
        global: u32,
    },
    /// `dst = globals[global]` (also a `LOAD_LOCAL` of a name never stored here).
    LoadGlobal {
        /// Destination.
        dst: Reg,
        /// Global id.
        global: u32,
    },
    /// `globals[global] = src`
    StoreGlobal {
        /// Source.
        src: Reg,
        /// Global id.
        global: u32,
    },
    /// `dst = a <op> b`
    Bin {
        /// Operation.
        op: BinOp,
        /// Destination.
        dst: Reg,
        /// Left operand.
        a: Reg,
        /// Right operand.
        b: Reg,
    },
    /// `dst = a <op> constants[k]`
    BinK {
        /// Operation.
        op: BinOp,
        /// Destination.
        dst: Reg,
        /// Left operand.
        a: Reg,
        /// Right operand constant.
        k: u32,
    },
    /// `dst = -src`
    Neg {
        /// Destination.
        dst: Reg,
        /// Operand.
        src: Reg,
    },
    /// `dst = !truthy(src)`
    Not {
        /// Destination.
        dst: Reg,
        /// Operand.
        src: Reg,
    },
    /// `dst = truthy(a) && truthy(b)`
    And {
        /// Destination.
        dst: Reg,
        /// Left operand.
        a: Reg,
        /// Right operand.
        b: Reg,
    },
    /// `dst = truthy(a) || truthy(b)`
    Or {
        /// Destination.
        dst: Reg,
        /// Left operand.
        a: Reg,
        /// Right operand.
        b: Reg,
    },
    /// Jump to `target`.
    Jump {
        /// Target op index.
        target: u32,
    },
    /// Jump to `target` when `truthy(cond) == when`.
    JumpIf {
        /// Condition register.
        cond: Reg,
        /// The truthiness that jumps.
        when: bool,
        /// Target op index.
        target: u32,
    },
    /// Jump to `target` when `(a <op> b) == when`.
    CmpJump {
        /// Comparison.
        op: BinOp,
        /// The outcome that jumps.
        when: bool,
        /// Left operand.
        a: Reg,
        /// Right operand.
        b: Reg,
        /// Target op index.
        target: u32,
    },
    /// Jump to `target` when `(a <op> constants[k]) == when`.
    CmpJumpK {
        /// Comparison.
        op: BinOp,
        /// The outcome that jumps.
        when: bool,
        /// Left operand.
        a: Reg,
        /// Target op index.
        target: u32,
        /// Right operand constant.
        k: u32,
    },
    /// `dst = a <op> imm`: [`Op::BinK`] with a small integer constant carried in the op.
    BinI {
        /// Operation.
        op: BinOp,
        /// Destination.
        dst: Reg,
        /// Left operand.
        a: Reg,
        /// Right operand.
        imm: i32,
    },
    /// Jump to `target` when `(a <op> imm) == when`: [`Op::CmpJumpK`] with a small integer
    /// constant carried in the op.
    CmpJumpI {
        /// Comparison.
        op: BinOp,
        /// The outcome that jumps.
        when: bool,
        /// Left operand.
        a: Reg,
        /// Target op index.
        target: u32,
        /// Right operand.
        imm: i32,
    },
    /// Return `src`.
    Return {
        /// The returned register.
        src: Reg,
    },
    /// Return `nil`.
    ReturnNil,
    /// Call the callee in register `base + argc` with the arguments in `base..base + argc`.
    Call {
        /// First argument (and result) register.
        base: Reg,
        /// Argument count.
        argc: u16,
    },
    /// Call the value of global `global` with the arguments in `base..base + argc`.
    CallGlobal {
        /// First argument (and result) register.
        base: Reg,
        /// Argument count.
        argc: u16,
        /// Callee global.
        global: u32,
    },
    /// Call method `name` on the receiver in `base` with the arguments after it.
    CallMethod {
        /// Receiver (and result) register.
        base: Reg,
        /// Argument count (without the receiver).
        argc: u16,
        /// Method name.
        name: NameId,
    },
    /// A call described by [`Program::call_sites`]; its operands start at `base` (the
    /// receiver first for method calls).
    CallSite {
        /// First operand (and result) register.
        base: Reg,
        /// Call-site index.
        site: u32,
    },
    /// Emit `payload` on channel `chan`.
    Emit {
        /// Channel register.
        chan: Reg,
        /// Payload register.
        payload: Reg,
    },
    /// Emit and wait for the host's reply into `chan`'s register.
    EmitAwait {
        /// Channel register (and destination).
        chan: Reg,
        /// Payload register.
        payload: Reg,
    },
    /// Register handler chain `chain`; a caught error lands in `err`.
    TryBegin {
        /// Chain index in [`Function::chains`].
        chain: u32,
        /// Register of the operand-stack height at `TRY_BEGIN` (where a catch gets the error).
        err: Reg,
    },
    /// Drop the innermost handler.
    TryEnd,
    /// A catch clause reached by falling through: jump to the end of the chain.
    Catch {
        /// The op after the chain.
        end: u32,
    },
    /// Throw `src`.
    Throw {
        /// Thrown register.
        src: Reg,
    },
    /// `?` on `reg`, in place.
    Propagate {
        /// Operand and destination.
        reg: Reg,
    },
    /// `dst = [start .. start + n]` (`dst == start`).
    BuildArray {
        /// First element (and destination).
        start: Reg,
        /// Element count.
        n: u32,
    },
    /// `dst = {k1: v1, …}` from pairs in `start ..`.
    BuildMap {
        /// First key (and destination).
        start: Reg,
        /// Pair count.
        n: u32,
    },
    /// A struct of shape [`Program::shapes`]`[shape]` from fields in `start ..`.
    BuildStruct {
        /// First field value (and destination).
        start: Reg,
        /// Shape index.
        shape: u32,
    },
    /// `dst = obj.name`
    FieldGet {
        /// Destination.
        dst: Reg,
        /// Object.
        obj: Reg,
        /// Field name.
        name: NameId,
    },
    /// `obj.name = src`
    FieldSet {
        /// Object.
        obj: Reg,
        /// Value.
        src: Reg,
        /// Field name.
        name: NameId,
    },
    /// `dst = coll[idx]`
    IndexGet {
        /// Destination.
        dst: Reg,
        /// Collection.
        coll: Reg,
        /// Index.
        idx: Reg,
    },
    /// `coll[idx] = src`
    IndexSet {
        /// Collection.
        coll: Reg,
        /// Index.
        idx: Reg,
        /// Value.
        src: Reg,
    },
    /// `reg = reg as target`
    Cast {
        /// Operand and destination.
        reg: Reg,
        /// Target type.
        target: CastTarget,
    },
    /// `reg = (reg is names[name])`
    CheckType {
        /// Operand and destination.
        reg: Reg,
        /// Type name.
        name: NameId,
    },
    /// `reg = await reg`
    Await {
        /// Operand and destination.
        reg: Reg,
        /// Timeout in milliseconds (0: none).
        timeout_ms: u32,
    },
    /// `start = [await start, …]` over `n` registers (or, with `any`, the first result).
    AwaitAll {
        /// First task (and destination).
        start: Reg,
        /// Count.
        n: u32,
        /// Timeout in milliseconds (0: none).
        timeout_ms: u32,
        /// `AWAIT_ANY`: the first result wins and the others are cancelled.
        any: bool,
    },
    /// `reg = spawn reg`
    SpawnAsync {
        /// Callee and destination.
        reg: Reg,
    },
}

impl Op {
    /// The registers this op may read, as `(first, count)` ranges: a call's whole window,
    /// a struct's fields by its shape, a call site's operands by its kind (`call_sites` and
    /// `shapes` are the program's). Every op is listed, so a new op cannot be forgotten by
    /// the debugger or the liveness analysis that use it.
    pub fn reads(&self, call_sites: &[CallSite], shapes: &[Shape]) -> Vec<(Reg, u32)> {
        let one = |r: Reg| vec![(r, 1)];
        match *self {
            Op::LoadConst { .. }
            | Op::LoadGlobal { .. }
            | Op::Jump { .. }
            | Op::ReturnNil
            | Op::TryBegin { .. }
            | Op::TryEnd
            | Op::Catch { .. } => Vec::new(),
            Op::Move { src, .. }
            | Op::Take { src, .. }
            | Op::StoreGlobal { src, .. }
            | Op::Neg { src, .. }
            | Op::Not { src, .. }
            | Op::Return { src }
            | Op::Throw { src } => one(src),
            Op::LoadLocal { slot, .. } => one(slot),
            Op::Bin { a, b, .. }
            | Op::And { a, b, .. }
            | Op::Or { a, b, .. }
            | Op::CmpJump { a, b, .. } => vec![(a, 1), (b, 1)],
            Op::BinK { a, .. } | Op::BinI { a, .. } | Op::CmpJumpK { a, .. } => one(a),
            Op::CmpJumpI { a, .. } => one(a),
            Op::JumpIf { cond, .. } => one(cond),
            Op::Call { base, argc } | Op::CallMethod { base, argc, .. } => {
                vec![(base, u32::from(argc) + 1)]
            }
            Op::CallGlobal { base, argc, .. } => vec![(base, u32::from(argc))],
            Op::CallSite { base, site } => {
                let count = match call_sites.get(site as usize) {
                    Some(CallSite::MethodWithSchema { argc, .. }) => u32::from(*argc) + 1,
                    Some(
                        CallSite::Native { argc, .. }
                        | CallSite::Agent { argc, .. }
                        | CallSite::Tool { argc, .. },
                    ) => u32::from(*argc),
                    Some(CallSite::Hashmap {
                        op: HashmapOp::Set, ..
                    }) => 2,
                    Some(CallSite::Hashmap { .. } | CallSite::NilCoalescePrep) | None => 1,
                    Some(CallSite::BuildRange) => 3,
                    Some(CallSite::Listen { argc, .. }) => u32::from(*argc),
                    Some(CallSite::MockModel { .. }) => 0,
                };
                vec![(base, count)]
            }
            Op::Emit { chan, payload } | Op::EmitAwait { chan, payload } => {
                vec![(chan, 1), (payload, 1)]
            }
            Op::Propagate { reg }
            | Op::Cast { reg, .. }
            | Op::CheckType { reg, .. }
            | Op::Await { reg, .. }
            | Op::SpawnAsync { reg } => one(reg),
            Op::BuildArray { start, n } | Op::AwaitAll { start, n, .. } => vec![(start, n)],
            Op::BuildMap { start, n } => vec![(start, n.saturating_mul(2))],
            Op::BuildStruct { start, shape } => {
                let n = shapes
                    .get(shape as usize)
                    .map_or(1, |s| s.fields.len() as u32);
                vec![(start, n)]
            }
            Op::FieldGet { obj, .. } => one(obj),
            Op::FieldSet { obj, src, .. } => vec![(obj, 1), (src, 1)],
            Op::IndexGet { coll, idx, .. } => vec![(coll, 1), (idx, 1)],
            Op::IndexSet { coll, idx, src } => vec![(coll, 1), (idx, 1), (src, 1)],
        }
    }

    /// The register holding the op's result, if it has one: `dst`, a call's `base` (its
    /// result; the rest of the window is the callee's), `EmitAwait`'s `chan`, the start of a
    /// built collection or awaited batch, or the register rewritten in place (`Cast`,
    /// `CheckType`, `Await`, `Propagate`, `SpawnAsync`).
    pub fn result_reg(&self) -> Option<Reg> {
        match *self {
            Op::LoadConst { dst, .. }
            | Op::Move { dst, .. }
            | Op::Take { dst, .. }
            | Op::LoadLocal { dst, .. }
            | Op::LoadGlobal { dst, .. }
            | Op::Bin { dst, .. }
            | Op::BinK { dst, .. }
            | Op::BinI { dst, .. }
            | Op::Neg { dst, .. }
            | Op::Not { dst, .. }
            | Op::And { dst, .. }
            | Op::Or { dst, .. }
            | Op::FieldGet { dst, .. }
            | Op::IndexGet { dst, .. } => Some(dst),
            Op::Call { base, .. }
            | Op::CallGlobal { base, .. }
            | Op::CallMethod { base, .. }
            | Op::CallSite { base, .. } => Some(base),
            Op::EmitAwait { chan, .. } => Some(chan),
            Op::BuildArray { start, .. }
            | Op::BuildMap { start, .. }
            | Op::BuildStruct { start, .. }
            | Op::AwaitAll { start, .. } => Some(start),
            Op::Cast { reg, .. }
            | Op::CheckType { reg, .. }
            | Op::Await { reg, .. }
            | Op::Propagate { reg }
            | Op::SpawnAsync { reg } => Some(reg),
            _ => None,
        }
    }
}

const _: () = assert!(std::mem::size_of::<Op>() <= 16);

/// An arithmetic or comparison operation of [`Op::Bin`] and friends.
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
    /// Whether the operation yields a Bool.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Neq | BinOp::Lt | BinOp::Gt | BinOp::Lte | BinOp::Gte
        )
    }

    /// The IR opcode spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "ADD",
            BinOp::Sub => "SUB",
            BinOp::Mul => "MUL",
            BinOp::Div => "DIV",
            BinOp::Mod => "MOD",
            BinOp::Eq => "EQ",
            BinOp::Neq => "NEQ",
            BinOp::Lt => "LT",
            BinOp::Gt => "GT",
            BinOp::Lte => "LTE",
            BinOp::Gte => "GTE",
        }
    }
}

/// A catch-handler chain: the clauses a `TRY_BEGIN` dispatches to and where the chain ends.
#[derive(Debug, Clone, PartialEq)]
pub struct CatchChain {
    /// The clauses in order: the op index of each `CATCH` and its type filter (`None` =
    /// bare). A caught error enters the clause at the op after its `CATCH`.
    pub clauses: Vec<(u32, Option<NameId>)>,
    /// The op after the last clause.
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
    /// Handler `1` of listen block `0`.
    ListenHandler(u32, u32),
    /// Test `0` of the `tests` section.
    Test(u32),
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
    /// Registers a frame of this function needs (locals and operand temporaries).
    pub frame_size: u32,
    /// The register code.
    pub code: Vec<Op>,
    /// Source position of each op.
    pub spans: Vec<Span>,
    /// The IR instruction index each op came from (for breakpoints and traces).
    pub ir_pc: Vec<u32>,
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
    /// `NIL_COALESCE_PREP`: `None` → nil, `Some(x)` → `x`, anything else unchanged.
    NilCoalescePrep,
    /// `BUILD_RANGE`: start, end, inclusive → a range.
    BuildRange,
    /// `LISTEN_BEGIN`: a streaming session with an external agent.
    Listen {
        /// Index in [`Program::listens`].
        listen: u32,
        /// Argument count (the prompt).
        argc: u16,
    },
    /// `MOCK_MODEL`: takes and leaves nothing.
    MockModel {
        /// Index in [`Program::mocks`].
        mock: u32,
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
    /// The declared input type (`pipeline P(input: T) -> U`), checked before the first stage.
    pub input_type: Option<Arc<str>>,
    /// The declared result type, checked after the last stage.
    pub output_type: Option<Arc<str>>,
}

/// A `listen` block with its agent and handlers resolved.
#[derive(Debug, Clone)]
pub struct ListenDef {
    /// The IR name (`$listen_N`).
    pub name: Arc<str>,
    /// Index of the external agent in [`Program::hosts`].
    pub host: u32,
    /// Handlers in declaration order.
    pub handlers: Vec<ListenHandlerDef>,
}

/// One handler of a `listen` block.
#[derive(Debug, Clone)]
pub struct ListenHandlerDef {
    /// The message `type` it handles.
    pub message_type: Arc<str>,
    /// Its body: a function of one parameter, the message.
    pub function: FuncId,
    /// The schema its parameter is typed with (`|q: Question|`), when it names one.
    pub schema: Option<u32>,
}

/// A `@test` function.
#[derive(Debug, Clone)]
pub struct TestDef {
    /// The description printed for it.
    pub description: Arc<str>,
    /// Its body.
    pub function: FuncId,
    /// `@expect_fail`.
    pub expect_fail: bool,
    /// `@expect_fail("text")`.
    pub expect_fail_message: Option<String>,
}

/// A `MOCK_MODEL` instruction: later calls of the model answer with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockDef {
    /// Index of the model in [`Program::agents`].
    pub agent: u32,
    /// What the model answers.
    pub reply: MockReply,
}

/// What a mocked model answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockReply {
    /// A reply with this text.
    Response(String),
    /// A failed call with this message.
    Error(String),
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
    /// `listen` blocks.
    pub listens: Vec<ListenDef>,
    /// `@test` functions (never run by `run_main`).
    pub tests: Vec<TestDef>,
    /// `MOCK_MODEL` sites.
    pub mocks: Vec<MockDef>,
    /// Which compiler's shape the file had.
    pub dialect: model::Dialect,
    /// The entry function; `None` only in a file that has tests and no entry function.
    pub entry: Option<FuncId>,
    /// `$const_*` initialisers, in IR order.
    pub const_inits: Vec<FuncId>,
    pub(crate) function_index: FxHashMap<Arc<str>, FuncId>,
    pub(crate) global_index: FxHashMap<Arc<str>, u32>,
    pub(crate) type_index: FxHashMap<Arc<str>, u32>,
    pub(crate) name_index: FxHashMap<Arc<str>, NameId>,
}

impl Function {
    /// A readable listing of the register code (`pc [ir] op`), for debugging.
    pub fn disassemble(&self) -> String {
        use std::fmt::Write;
        let mut out = format!(
            "fn {} (params {}, slots {}, frame {})\n",
            self.name, self.n_params, self.n_slots, self.frame_size
        );
        for (pc, op) in self.code.iter().enumerate() {
            let _ = writeln!(
                out,
                "{pc:4} [{:4}] {op:?}",
                self.ir_pc.get(pc).copied().unwrap_or(0)
            );
        }
        out
    }
}

impl Program {
    /// The function of that full name.
    pub fn function_id(&self, name: &str) -> Option<FuncId> {
        self.function_index.get(name).copied()
    }

    /// The function with that id.
    pub fn function(&self, id: FuncId) -> &Function {
        &self.functions[id.index()]
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
        &self.names[id.index()]
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
