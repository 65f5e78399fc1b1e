//! Typed serde model of a `.conc-ir` file, section by section, as `concertoc` writes it.
//!
//! Every section except `version`, `module`, `source_file` and `metadata` is optional and
//! defaults to empty, because the compiler leaves out empty sections. Unknown keys are ignored
//! for forward compatibility. Free-form JSON (connection configs, JSON schemas, decorator
//! arguments) stays as [`serde_json::Value`].

use serde::{Deserialize, Serialize};

use crate::opcode::Opcode;

/// A whole IR module: the root object of a `.conc-ir` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IrModule {
    /// IR format version, `MAJOR.MINOR.PATCH` (`"0.1.0"` at concertoc 1a8ede9).
    pub version: String,
    /// File stem of the compiled source.
    pub module: String,
    /// Source file name (no directory).
    pub source_file: String,
    /// The constant pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constants: Vec<Constant>,
    /// Struct and enum declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<TypeDecl>,
    /// Free functions, methods, closures and const initialisers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<Function>,
    /// Agent declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<Agent>,
    /// Tool declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Output schemas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<Schema>,
    /// LLM connections from `Concerto.toml` and `mcp` blocks (`config.type == "mcp"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<Connection>,
    /// Hashmap declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashmaps: Vec<HashmapDecl>,
    /// Pipeline declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<Pipeline>,
    /// Ledger declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledgers: Vec<LedgerDecl>,
    /// Conversation memory declarations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memories: Vec<MemoryDecl>,
    /// External host agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host>,
    /// Optional source map (never written by concertoc 1a8ede9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_map: Option<SourceMap>,
    /// Compiler metadata, including the entry point.
    pub metadata: Metadata,
}

/// One entry of the constant pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constant {
    /// Position in the pool; must equal the array index.
    pub index: usize,
    /// `int`, `float`, `string`, `bool` or `nil`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The value, as JSON of the matching kind.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// A struct or enum declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeDecl {
    /// Declared name.
    pub name: String,
    /// `struct` or `enum`.
    pub kind: String,
    /// Struct fields (absent when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// Enum variants (absent when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

/// A struct field or a variant payload field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Field {
    /// Field name (`_0`, `_1`, … for tuple variants).
    pub name: String,
    /// Concerto type string.
    #[serde(rename = "type", default)]
    pub ty: String,
    /// `!optional`.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_true() -> bool {
    true
}

/// An enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// Payload fields; absent for a unit variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Field>>,
}

/// A parameter of a function, tool method or stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Param {
    /// Parameter name.
    pub name: String,
    /// Concerto type string (`any` when unannotated).
    #[serde(rename = "type", default)]
    pub ty: String,
}

/// A compiled function body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    /// `main`, `Type::method`, `Trait::method`, `$closure_N`, `$const_NAME`, …
    pub name: String,
    /// Module the function came from.
    #[serde(default)]
    pub module: String,
    /// `public` or `private`; no runtime meaning.
    #[serde(default)]
    pub visibility: String,
    /// Declared parameters, without `self`.
    #[serde(default)]
    pub params: Vec<Param>,
    /// Declared return type string.
    #[serde(default)]
    pub return_type: String,
    /// Declared `async fn`.
    #[serde(default)]
    pub is_async: bool,
    /// Informational list of stored names.
    #[serde(default)]
    pub locals: Vec<String>,
    /// The body.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
}

/// One instruction object. Which fields are present depends on the opcode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instruction {
    /// The opcode.
    pub op: Opcode,
    /// `LOAD_CONST` index, `BUILD_STRUCT` field names, `PUSH` immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<serde_json::Value>,
    /// Variable, field or method name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Argument count of calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argc: Option<u64>,
    /// Explicit schema type argument of `CALL_METHOD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Struct path, cast target or catch filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Element count of `BUILD_*`, `AWAIT_ALL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Absolute jump target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// `[line, column]`, 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<(u32, u32)>,
    /// Agent name of `CALL_AGENT*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Method name of `CALL_AGENT*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Tool name of `CALL_TOOL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Hashmap name of `HASH_MAP_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashmap_name: Option<String>,
}

impl Instruction {
    /// An instruction with only its opcode set.
    pub fn new(op: Opcode) -> Self {
        Instruction {
            op,
            arg: None,
            name: None,
            argc: None,
            schema: None,
            type_name: None,
            count: None,
            offset: None,
            span: None,
            agent: None,
            method: None,
            tool: None,
            hashmap_name: None,
        }
    }
}

/// A decorator on an agent, stage or host: `{ "name", "args": [...] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decorator {
    /// `retry`, `timeout`, `log`, `cache`, …
    pub name: String,
    /// Positional values or single-key objects for named arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<serde_json::Value>,
}

impl Decorator {
    /// The value of named argument `key` (`{"key": v}` in `args`), if present.
    pub fn named_arg(&self, key: &str) -> Option<&serde_json::Value> {
        self.args
            .iter()
            .find_map(|arg| arg.as_object().and_then(|obj| obj.get(key)))
    }
}

/// An agent declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Agent name.
    pub name: String,
    /// Module of the declaration.
    #[serde(default)]
    pub module: String,
    /// Name of an entry in `connections` (empty when unset).
    #[serde(default)]
    pub connection: String,
    /// Literal configuration: model, temperature, max_tokens, system_prompt, timeout.
    #[serde(default)]
    pub config: AgentConfig,
    /// Tools and MCP servers attached by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Memory binding (never written by concertoc 1a8ede9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Decorators (`retry`, `timeout`, `log`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decorators: Vec<Decorator>,
}

/// The literal configuration of an agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Model name or alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Maximum output tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// System prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// A tool declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Tool name.
    pub name: String,
    /// Module of the declaration.
    #[serde(default)]
    pub module: String,
    /// Methods (unqualified names, `self` not listed).
    #[serde(default)]
    pub methods: Vec<Function>,
    /// JSON function schemas for methods with `@describe`.
    #[serde(default)]
    pub tool_schemas: Vec<ToolSchema>,
}

/// A generated JSON function schema of a tool method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    /// `Tool::method`.
    pub method_name: String,
    /// `@describe` text.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the parameters.
    #[serde(default)]
    pub parameters: serde_json::Value,
}

/// An output schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// Schema name.
    pub name: String,
    /// JSON-Schema-like object whose property types are Concerto type names.
    #[serde(default)]
    pub json_schema: serde_json::Value,
    /// Always `strict` at 1a8ede9.
    #[serde(default)]
    pub validation_mode: String,
}

/// A connection: an LLM provider or an MCP server (`config.type == "mcp"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// Connection name.
    pub name: String,
    /// Free-form configuration.
    #[serde(default)]
    pub config: serde_json::Value,
}

impl Connection {
    /// Whether this entry declares an MCP server rather than an LLM provider.
    pub fn is_mcp(&self) -> bool {
        self.config.get("type").and_then(|t| t.as_str()) == Some("mcp")
    }
}

/// A hashmap declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashmapDecl {
    /// Hashmap name.
    pub name: String,
    /// Declared key type (`any` when unknown).
    #[serde(default)]
    pub key_type: String,
    /// Declared value type (`any` when unknown).
    #[serde(default)]
    pub value_type: String,
    /// Persistence settings (never written at 1a8ede9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<serde_json::Value>,
}

/// A pipeline declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Pipeline name.
    pub name: String,
    /// Stages, in execution order.
    #[serde(default)]
    pub stages: Vec<Stage>,
}

/// One pipeline stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Stage name.
    pub name: String,
    /// Parameters; the stage input binds to the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Param>,
    /// Type of the first parameter.
    #[serde(default)]
    pub input_type: String,
    /// Declared return type.
    #[serde(default)]
    pub output_type: String,
    /// Stage decorators (`retry`, `timeout`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decorators: Vec<Decorator>,
    /// The body.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
}

/// A ledger declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerDecl {
    /// Ledger name.
    pub name: String,
}

/// A conversation memory declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryDecl {
    /// Memory name.
    pub name: String,
    /// Sliding-window bound; absent means unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
}

/// An external host agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Host name.
    pub name: String,
    /// Connector name.
    #[serde(default)]
    pub connector: String,
    /// `text` or `json`.
    #[serde(default)]
    pub input_format: String,
    /// `text` or `json`.
    #[serde(default)]
    pub output_format: String,
    /// Timeout in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Command to spawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Command arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<serde_json::Value>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Decorators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decorators: Vec<Decorator>,
}

/// Optional instruction → source position map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMap {
    /// Source file.
    #[serde(default)]
    pub file: String,
    /// Mappings.
    #[serde(default)]
    pub mappings: Vec<SourceMapping>,
}

/// One source-map entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMapping {
    /// Instruction index.
    pub instruction: u64,
    /// Line (1-based).
    pub line: u64,
    /// Column (1-based).
    pub column: u64,
}

/// Compiler metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Compiler version.
    #[serde(default)]
    pub compiler_version: String,
    /// Compile timestamp (empty at 1a8ede9).
    #[serde(default)]
    pub compiled_at: String,
    /// Optimisation level.
    #[serde(default)]
    pub optimization_level: u64,
    /// Whether debug info was requested.
    #[serde(default)]
    pub debug_info: bool,
    /// Name of the function where execution starts.
    #[serde(default = "default_entry")]
    pub entry_point: String,
}

fn default_entry() -> String {
    "main".to_string()
}
