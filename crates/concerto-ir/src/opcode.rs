//! The IR opcode names, one table for decoding and encoding.
//!
//! The table lists every opcode of the IR specification: the ones `concertoc` 1a8ede9 emits
//! and the ones it never emits but that hand-written IR may use. A name not in the table
//! decodes to [`Opcode::Unknown`] so the loader can report it with its location.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

macro_rules! opcodes {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),* $(,)?) => {
        /// An IR opcode, spelled in the IR as SCREAMING_SNAKE_CASE.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Opcode {
            $( $(#[$doc])* $variant, )*
            /// A name that is not an opcode of the format (a load error).
            Unknown(String),
        }

        impl Opcode {
            /// Every known opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$variant),*];

            /// The opcode's spelling in the IR.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Opcode::$variant => $name, )*
                    Opcode::Unknown(name) => name,
                }
            }

            /// Decodes an opcode name.
            pub fn from_name(name: &str) -> Opcode {
                match name {
                    $( $name => Opcode::$variant, )*
                    other => Opcode::Unknown(other.to_string()),
                }
            }
        }
    };
}

opcodes! {
    /// `[…] → […, constants[arg]]`
    LoadConst = "LOAD_CONST",
    /// `[…] → […, v]`: frame local, then globals, then functions, then paths.
    LoadLocal = "LOAD_LOCAL",
    /// `[…, v] → […]`: bind a frame local.
    StoreLocal = "STORE_LOCAL",
    /// `[…] → […, v]`: a global or a path (`A::B`).
    LoadGlobal = "LOAD_GLOBAL",
    /// `[…, v] → […]`: set a global (const initialisers).
    StoreGlobal = "STORE_GLOBAL",
    /// `[…, a] → […]`
    Pop = "POP",
    /// `[…, a] → […, a, a]`
    Dup = "DUP",
    /// `[…, a, b] → […, b, a]` (never emitted)
    Swap = "SWAP",
    /// `[…] → […, arg]`: immediate scalar (never emitted)
    Push = "PUSH",
    /// `[…, a, b] → […, a + b]`
    Add = "ADD",
    /// `[…, a, b] → […, a - b]`
    Sub = "SUB",
    /// `[…, a, b] → […, a * b]`
    Mul = "MUL",
    /// `[…, a, b] → […, a / b]`
    Div = "DIV",
    /// `[…, a, b] → […, a % b]`
    Mod = "MOD",
    /// `[…, a] → […, -a]`
    Neg = "NEG",
    /// `[…, a, b] → […, a == b]`
    Eq = "EQ",
    /// `[…, a, b] → […, a != b]`
    Neq = "NEQ",
    /// `[…, a, b] → […, a < b]`
    Lt = "LT",
    /// `[…, a, b] → […, a > b]`
    Gt = "GT",
    /// `[…, a, b] → […, a <= b]`
    Lte = "LTE",
    /// `[…, a, b] → […, a >= b]`
    Gte = "GTE",
    /// `[…, a, b] → […, truthy(a) && truthy(b)]` (no short circuit)
    And = "AND",
    /// `[…, a, b] → […, truthy(a) || truthy(b)]` (no short circuit)
    Or = "OR",
    /// `[…, a] → […, !truthy(a)]`
    Not = "NOT",
    /// pc = offset
    Jump = "JUMP",
    /// `[…, c] → […]`; jump when truthy
    JumpIfTrue = "JUMP_IF_TRUE",
    /// `[…, c] → […]`; jump when falsy
    JumpIfFalse = "JUMP_IF_FALSE",
    /// `[…, v] → caller […, v]`
    Return = "RETURN",
    /// `[…, a1 … an, f] → […, r]`
    Call = "CALL",
    /// `[…, recv, a1 … an] → […, r]`
    CallMethod = "CALL_METHOD",
    /// `[…, a1 … an] → […, r]`: built-in by name (never emitted)
    CallNative = "CALL_NATIVE",
    /// agent call by name (never emitted)
    CallAgent = "CALL_AGENT",
    /// agent call with schema (never emitted)
    CallAgentSchema = "CALL_AGENT_SCHEMA",
    /// streaming agent call (never emitted)
    CallAgentStream = "CALL_AGENT_STREAM",
    /// chat agent call (never emitted)
    CallAgentChat = "CALL_AGENT_CHAT",
    /// model call by name (7ad10db's name of `CALL_AGENT`; never emitted)
    CallModel = "CALL_MODEL",
    /// model call with schema (7ad10db's name of `CALL_AGENT_SCHEMA`; never emitted)
    CallModelSchema = "CALL_MODEL_SCHEMA",
    /// streaming model call (7ad10db's name of `CALL_AGENT_STREAM`; never emitted)
    CallModelStream = "CALL_MODEL_STREAM",
    /// chat model call (7ad10db's name of `CALL_AGENT_CHAT`; never emitted)
    CallModelChat = "CALL_MODEL_CHAT",
    /// tool method call by name (never emitted)
    CallTool = "CALL_TOOL",
    /// `[…, ch, v] → […]`
    Emit = "EMIT",
    /// `[…, ch, v] → […, reply]` (never emitted)
    EmitAwait = "EMIT_AWAIT",
    /// register a handler whose first `CATCH` is at `offset`
    TryBegin = "TRY_BEGIN",
    /// drop the innermost handler
    TryEnd = "TRY_END",
    /// a catch clause, optionally typed
    Catch = "CATCH",
    /// `[…, e] → unwind`
    Throw = "THROW",
    /// `?`: `Ok(x) → x`, `Err(e) → propagate`
    Propagate = "PROPAGATE",
    /// `[…, e1 … en] → […, array]`
    BuildArray = "BUILD_ARRAY",
    /// `[…, k1, v1 … kn, vn] → […, map]`
    BuildMap = "BUILD_MAP",
    /// `[…, v1 … vn] → […, struct]`
    BuildStruct = "BUILD_STRUCT",
    /// `[…, obj] → […, obj.name]`
    FieldGet = "FIELD_GET",
    /// `[…, obj, v] → […]`
    FieldSet = "FIELD_SET",
    /// `[…, coll, i] → […, coll[i]]`
    IndexGet = "INDEX_GET",
    /// `[…, coll, i, v] → […]`
    IndexSet = "INDEX_SET",
    /// `[…, v] → […, v as T]`
    Cast = "CAST",
    /// `[…, v] → […, v is T]` (never emitted)
    CheckType = "CHECK_TYPE",
    /// `[…, h] → […, result]`
    Await = "AWAIT",
    /// `[…, h1 … hn] → […, [r1 … rn]]` (never emitted)
    AwaitAll = "AWAIT_ALL",
    /// Extension (`race`): the first of `count` awaited values; the others are cancelled.
    AwaitAny = "AWAIT_ANY",
    /// `[…, f] → […, task]` (never emitted)
    SpawnAsync = "SPAWN_ASYNC",
    /// hashmap get by name (never emitted)
    HashMapGet = "HASH_MAP_GET",
    /// hashmap set by name (never emitted)
    HashMapSet = "HASH_MAP_SET",
    /// hashmap delete by name (never emitted)
    HashMapDelete = "HASH_MAP_DELETE",
    /// hashmap has by name (never emitted)
    HashMapHas = "HASH_MAP_HAS",
    /// hashmap query by predicate (never emitted)
    HashMapQuery = "HASH_MAP_QUERY",
    /// `[…, v] → […, v']`: `None` becomes nil, `Some(x)` becomes `x`, anything else stays
    /// (7ad10db, the left side of `??`)
    NilCoalescePrep = "NIL_COALESCE_PREP",
    /// `[…, start, end, inclusive] → […, range]` (7ad10db; a nil start is 0, a nil end is open)
    BuildRange = "BUILD_RANGE",
    /// `[…, a1 … an] → […, result]`: a `listen` session with external agent `name`, handlers
    /// from `listens[arg]` (7ad10db)
    ListenBegin = "LISTEN_BEGIN",
    /// `[…] → […]`: in a test, model `name` answers with `arg`'s `response` or `error` (7ad10db)
    MockModel = "MOCK_MODEL",
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Opcode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Opcode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OpVisitor;
        impl Visitor<'_> for OpVisitor {
            type Value = Opcode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an opcode name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Opcode, E> {
                Ok(Opcode::from_name(v))
            }
        }
        deserializer.deserialize_str(OpVisitor)
    }
}
