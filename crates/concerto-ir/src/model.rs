//! Typed serde model of a `.conc-ir` file, section by section, as `concertoc` writes it.
//!
//! Every section except `version`, `module`, `source_file` and `metadata` is optional and
//! defaults to empty, because the compiler leaves out empty sections. Unknown keys are ignored
//! for forward compatibility. Free-form JSON (connection configs, JSON schemas, decorator
//! arguments) stays as [`serde_json::Value`].

use serde::{Deserialize, Serialize};

use crate::opcode::Opcode;

/// Which compiler's shape a file has. Both are IR version `0.1.0`; they differ in the names
/// of two sections and in what a model builder's `execute` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// concertoc 1a8ede9: LLM agents in `agents`, external agents in `hosts`.
    Seed,
    /// concertoc 7ad10db: LLM agents in `models` (`config.base`), external agents in `agents`
    /// (entries with a `connector`), plus `listens` and `tests`.
    Head,
    /// Neither models nor external agents: the file means the same under both compilers.
    #[default]
    Either,
}

impl Dialect {
    /// A short description for `concerto check`.
    pub fn describe(self) -> &'static str {
        match self {
            Dialect::Seed => {
                "concertoc 1a8ede9 (LLM agents in `agents`, external agents in `hosts`)"
            }
            Dialect::Head => {
                "concertoc 7ad10db (LLM agents in `models`, external agents in `agents`)"
            }
            Dialect::Either => "either compiler (no models and no external agents)",
        }
    }
}

/// A whole IR module: the root object of a `.conc-ir` file, with both compilers' section
/// names mapped to one model (see [`Dialect`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IrModule {
    /// IR format version, `MAJOR.MINOR.PATCH` (`"0.1.0"` at both supported compilers).
    pub version: String,
    /// File stem of the compiled source.
    pub module: String,
    /// Source file name (no directory).
    pub source_file: String,
    /// Which compiler's shape the file has.
    pub dialect: Dialect,
    /// The constant pool.
    pub constants: Vec<Constant>,
    /// Struct and enum declarations.
    pub types: Vec<TypeDecl>,
    /// Free functions, methods, closures and const initialisers.
    pub functions: Vec<Function>,
    /// LLM agents: 1a8ede9's `agents`, 7ad10db's `models`.
    pub agents: Vec<Agent>,
    /// Tool declarations.
    pub tools: Vec<Tool>,
    /// Output schemas.
    pub schemas: Vec<Schema>,
    /// LLM connections from `Concerto.toml` and `mcp` blocks (`config.type == "mcp"`).
    pub connections: Vec<Connection>,
    /// Hashmap declarations.
    pub hashmaps: Vec<HashmapDecl>,
    /// Pipeline declarations.
    pub pipelines: Vec<Pipeline>,
    /// Ledger declarations.
    pub ledgers: Vec<LedgerDecl>,
    /// Conversation memory declarations.
    pub memories: Vec<MemoryDecl>,
    /// External agents: 1a8ede9's `hosts`, 7ad10db's `agents`.
    pub hosts: Vec<Host>,
    /// `listen` blocks (7ad10db).
    pub listens: Vec<Listen>,
    /// `@test` functions (7ad10db).
    pub tests: Vec<TestDecl>,
    /// Optional source map (never written by either compiler).
    pub source_map: Option<SourceMap>,
    /// Compiler metadata, including the entry point.
    pub metadata: Metadata,
}

impl Serialize for IrModule {
    /// Writes the file in its own dialect's section names (a 7ad10db module gets `models`
    /// and external agents in `agents`; the others LLM agents in `agents` and `hosts`), so
    /// that parsing the output gives the same module.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("version", &self.version)?;
        map.serialize_entry("module", &self.module)?;
        map.serialize_entry("source_file", &self.source_file)?;
        macro_rules! section {
            ($key:literal, $value:expr) => {
                if !$value.is_empty() {
                    map.serialize_entry($key, &$value)?;
                }
            };
        }
        section!("constants", self.constants);
        section!("types", self.types);
        section!("functions", self.functions);
        match self.dialect {
            Dialect::Head => {
                section!("models", self.agents);
                section!("agents", self.hosts);
            }
            Dialect::Seed | Dialect::Either => {
                section!("agents", self.agents);
                section!("hosts", self.hosts);
            }
        }
        section!("tools", self.tools);
        section!("schemas", self.schemas);
        section!("connections", self.connections);
        section!("hashmaps", self.hashmaps);
        section!("pipelines", self.pipelines);
        section!("ledgers", self.ledgers);
        section!("memories", self.memories);
        section!("listens", self.listens);
        section!("tests", self.tests);
        if let Some(source_map) = &self.source_map {
            map.serialize_entry("source_map", source_map)?;
        }
        map.serialize_entry("metadata", &self.metadata)?;
        map.end()
    }
}

/// The root object as written, before the two compilers' section names are told apart.
#[derive(Debug, Deserialize)]
pub(crate) struct RawModule {
    pub(crate) version: String,
    pub(crate) module: String,
    pub(crate) source_file: String,
    #[serde(default)]
    pub(crate) constants: Vec<Constant>,
    #[serde(default)]
    pub(crate) types: Vec<TypeDecl>,
    #[serde(default)]
    pub(crate) functions: Vec<Function>,
    #[serde(default)]
    pub(crate) agents: Vec<AgentEntry>,
    #[serde(default)]
    pub(crate) models: Option<Vec<Agent>>,
    #[serde(default)]
    pub(crate) tools: Vec<Tool>,
    #[serde(default)]
    pub(crate) schemas: Vec<Schema>,
    #[serde(default)]
    pub(crate) connections: Vec<Connection>,
    #[serde(default)]
    pub(crate) hashmaps: Vec<HashmapDecl>,
    #[serde(default)]
    pub(crate) pipelines: Vec<Pipeline>,
    #[serde(default)]
    pub(crate) ledgers: Vec<LedgerDecl>,
    #[serde(default)]
    pub(crate) memories: Vec<MemoryDecl>,
    #[serde(default)]
    pub(crate) hosts: Option<Vec<Host>>,
    #[serde(default)]
    pub(crate) listens: Option<Vec<Listen>>,
    #[serde(default)]
    pub(crate) tests: Option<Vec<TestDecl>>,
    #[serde(default)]
    pub(crate) source_map: Option<SourceMap>,
    pub(crate) metadata: Metadata,
}

/// An entry of the `agents` section: an LLM agent (1a8ede9) or, when it carries a
/// `connector`, an external agent (7ad10db).
#[derive(Debug)]
pub(crate) enum AgentEntry {
    Llm(Agent),
    External(Host),
}

impl<'de> Deserialize<'de> for AgentEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string();
        if value.get("connector").is_some() {
            serde_json::from_value(value)
                .map(AgentEntry::External)
                .map_err(|e| D::Error::custom(format!("external agent `{name}`: {e}")))
        } else {
            serde_json::from_value(value)
                .map(AgentEntry::Llm)
                .map_err(|e| D::Error::custom(format!("agent `{name}`: {e}")))
        }
    }
}

impl RawModule {
    /// Tells the dialect from the sections present and maps both to one [`IrModule`].
    /// A file that mixes them is refused, naming the sections.
    pub(crate) fn into_module(self) -> Result<IrModule, String> {
        let llm_entries = self
            .agents
            .iter()
            .filter(|a| matches!(a, AgentEntry::Llm(_)))
            .count();
        let external_entries = self.agents.len() - llm_entries;
        let seed_marks: Vec<&str> = [
            (
                llm_entries > 0,
                "`agents` entries without a `connector` (1a8ede9 LLM agents)",
            ),
            (self.hosts.is_some(), "`hosts` (1a8ede9 external agents)"),
        ]
        .into_iter()
        .filter_map(|(present, what)| present.then_some(what))
        .collect();
        let head_marks: Vec<&str> = [
            (self.models.is_some(), "`models` (7ad10db LLM agents)"),
            (
                external_entries > 0,
                "`agents` entries with a `connector` (7ad10db external agents)",
            ),
            (self.listens.is_some(), "`listens` (7ad10db)"),
            (self.tests.is_some(), "`tests` (7ad10db)"),
        ]
        .into_iter()
        .filter_map(|(present, what)| present.then_some(what))
        .collect();
        if !seed_marks.is_empty() && !head_marks.is_empty() {
            return Err(format!(
                "the file mixes the two compilers' shapes: {} belong to concertoc 1a8ede9, {} to \
                 concertoc 7ad10db",
                seed_marks.join(" and "),
                head_marks.join(" and ")
            ));
        }
        let dialect = if !seed_marks.is_empty() {
            Dialect::Seed
        } else if !head_marks.is_empty() {
            Dialect::Head
        } else {
            Dialect::Either
        };
        let (agents, hosts) = match dialect {
            Dialect::Head => (
                self.models.unwrap_or_default(),
                self.agents
                    .into_iter()
                    .filter_map(|a| match a {
                        AgentEntry::External(h) => Some(h),
                        AgentEntry::Llm(_) => None,
                    })
                    .collect(),
            ),
            _ => (
                self.agents
                    .into_iter()
                    .filter_map(|a| match a {
                        AgentEntry::Llm(a) => Some(a),
                        AgentEntry::External(_) => None,
                    })
                    .collect(),
                self.hosts.unwrap_or_default(),
            ),
        };
        Ok(IrModule {
            version: self.version,
            module: self.module,
            source_file: self.source_file,
            dialect,
            constants: self.constants,
            types: self.types,
            functions: self.functions,
            agents,
            tools: self.tools,
            schemas: self.schemas,
            connections: self.connections,
            hashmaps: self.hashmaps,
            pipelines: self.pipelines,
            ledgers: self.ledgers,
            memories: self.memories,
            hosts,
            listens: self.listens.unwrap_or_default(),
            tests: self.tests.unwrap_or_default(),
            source_map: self.source_map,
            metadata: self.metadata,
        })
    }
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
    /// Model name of `CALL_MODEL*` (7ad10db's name of `agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
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
            model: None,
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
    /// Model name or alias (`model` at 1a8ede9, `base` at 7ad10db).
    #[serde(default, alias = "base", skip_serializing_if = "Option::is_none")]
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
    /// The declared input type of `pipeline P(input: T) -> U` (7ad10db).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_type: Option<String>,
    /// The declared result type of `pipeline P(input: T) -> U` (7ad10db).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_type: Option<String>,
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
    /// Initialisation parameters (`[agents.NAME.params]`, 7ad10db): sent as
    /// `{"type":"init","params":…}` when the process starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Decorators.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decorators: Vec<Decorator>,
}

/// A `listen` block (7ad10db): the handlers of one streaming session with an external agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listen {
    /// The name `LISTEN_BEGIN` refers to (`$listen_N`).
    pub name: String,
    /// The external agent.
    #[serde(default)]
    pub agent: String,
    /// One handler per message type.
    #[serde(default)]
    pub handlers: Vec<ListenHandler>,
}

/// A handler of a `listen` block: a body run with the message as its one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenHandler {
    /// The message `type` it handles.
    pub message_type: String,
    /// The parameter the message binds to.
    pub param: Param,
    /// The body.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
}

/// A `@test` function (7ad10db).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestDecl {
    /// The test's description (its name unless `@test("…")` gave one).
    pub description: String,
    /// The body.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
    /// `@expect_fail`: the test passes only when its body fails.
    #[serde(default)]
    pub expect_fail: bool,
    /// `@expect_fail("text")`: the failure must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_fail_message: Option<String>,
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
