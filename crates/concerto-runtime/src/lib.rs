//! The Concerto runtime: loads IR compiled by `concertoc`, wires the interpreter to its
//! components (emit channel, memory, LLM connections, schema validation, tools, system) and
//! executes programs.
//!
//! ```no_run
//! use concerto_runtime::{Runtime, RuntimeConfig, Value};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut runtime = Runtime::new(RuntimeConfig::default());
//!     runtime.load_ir("program.conc-ir")?;
//!     runtime.on("result", |payload: Value| {
//!         println!("Result: {:?}", payload);
//!     });
//!     runtime.execute().await?;
//!     Ok(())
//! }
//! ```
//!
//! Every component is replaceable: pass your own [`concerto_vm::host::Connections`],
//! [`concerto_vm::host::MemoryStore`], [`concerto_vm::host::SchemaValidator`],
//! [`concerto_vm::host::ToolHost`] or [`concerto_vm::host::System`] through the `with_*`
//! methods before executing.
//!
//! # Source layout
//! - `lib.rs`: [`Runtime`], [`RuntimeError`].
//! - `metrics`: [`Metrics`] and [`Cost`].
//! - `config`: [`RuntimeConfig`] and its parts, [`Limits`].
//! - `debugger`: [`Debugger`] (`Runtime::new_debugger`): breakpoints, stepping, inspection.
//! - `value`: the host-side [`Value`].
//! - `system`: [`ProcessSystem`].
//! - `testing`: [`Runtime::run_tests`], [`TestReport`].
#![warn(missing_docs)]

mod concurrency;
mod config;
mod debugger;
mod metrics;
mod resume;
mod system;
mod testing;
mod value;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concerto_emit::{EmitHub, FlushSink};
use concerto_ir::{LoadError, Program};
use concerto_vm::host::{Connections, HostError, MemoryStore, SchemaValidator, System, ToolHost};
use concerto_vm::{ExecConfig, Host, Vm, VmError};

pub use concerto_conn as conn;
pub use concerto_emit as emit;
pub use concerto_ir as ir;
pub use concerto_vm as vm;
pub use concerto_vm::{LlmCounters, LlmStats};
pub use concurrency::Executor;
pub use config::{
    ConnectionOverride, EmitMode, Limits, RuntimeConfig, Sandbox, StateStore, ToolPermission,
};
pub use debugger::{AgentInfo, DebugFrame, DebugState, Debugger};
pub use metrics::{Cost, Metrics};
pub use system::{ProcessSystem, TextOut, stderr_writer, stdout_writer};
pub use testing::{TestOutcome, TestReport};
pub use value::{Value, ValueError};

/// Why a runtime operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The IR could not be loaded.
    #[error("failed to load IR: {0}")]
    Load(#[from] LoadError),
    /// `execute` was called before `load_ir`.
    #[error("no program is loaded")]
    NoProgram,
    /// The program failed with an uncaught runtime error.
    #[error("{0}")]
    Execution(#[from] VmError),
    /// A component (emit sink, store) failed outside the program.
    #[error("{0}")]
    Host(#[from] HostError),
    /// The runtime could not be set up as asked (a recording that cannot be read, …).
    #[error("{0}")]
    Setup(String),
}

impl RuntimeError {
    /// The runtime error of a failed execution.
    pub fn as_execution(&self) -> Option<&VmError> {
        match self {
            RuntimeError::Execution(e) => Some(e),
            _ => None,
        }
    }
}

/// A Concerto runtime: one loaded program and the components it runs with.
pub struct Runtime {
    config: RuntimeConfig,
    limits: Limits,
    vm: Option<Arc<Vm>>,
    hub: Arc<EmitHub>,
    memory: Option<Arc<dyn MemoryStore>>,
    /// The built-in store, when it is the one in use (persistence, listeners, byte limit).
    builtin_memory: Option<Arc<concerto_memory::InMemoryStore>>,
    custom_memory: bool,
    /// A connection layer the host supplied (`with_connections`).
    custom_connections: Option<Arc<dyn Connections>>,
    /// The layer in use, built on first need and kept (its HTTP pool outlives executions).
    active_connections: Option<Arc<dyn Connections>>,
    /// The HTTP layer inside it, when the runtime built one (its retry budget is per run).
    http: Option<Arc<concerto_conn::HttpConnections>>,
    llm: LlmSetup,
    schema: Arc<dyn SchemaValidator>,
    /// A tool layer the host supplied (`with_tool_host`).
    custom_tools: Option<Arc<dyn ToolHost>>,
    /// The tool layer in use, built on first need and kept (host agent processes and MCP
    /// sessions outlive single executions).
    active_tools: Option<Arc<dyn ToolHost>>,
    sandbox: Sandbox,
    host_tools: Vec<HostToolRegistration>,
    system: Arc<dyn System>,
    metrics: Metrics,
    /// The run journaled (and resumed) by `execute`, when set.
    run_id: Option<String>,
    /// Where hashmaps, ledgers, memories and journals live.
    state: StateStore,
    /// Operations of the last execution answered from the journal.
    replayed: u64,
    /// The folder relative paths of host agents and MCP servers resolve against.
    program_dir: Option<PathBuf>,
}

/// How agent calls reach models, besides the connection overrides.
struct LlmSetup {
    mock: bool,
    mock_latency: Option<Duration>,
    record: Option<PathBuf>,
    replay: Option<PathBuf>,
    prices: concerto_conn::PriceTable,
}

impl Default for LlmSetup {
    fn default() -> LlmSetup {
        LlmSetup {
            mock: false,
            mock_latency: None,
            record: None,
            replay: None,
            prices: concerto_conn::PriceTable::builtin(),
        }
    }
}

/// A host-registered tool method, kept until the tool layer is built.
struct HostToolRegistration {
    tool: String,
    method: String,
    description: String,
    parameters: serde_json::Value,
    handler: concerto_tools::ToolHandler,
}

impl Runtime {
    /// A runtime with the default components.
    pub fn new(config: RuntimeConfig) -> Runtime {
        Runtime {
            config,
            limits: Limits::default(),
            vm: None,
            hub: Arc::new(EmitHub::new()),
            memory: None,
            builtin_memory: None,
            custom_memory: false,
            custom_connections: None,
            active_connections: None,
            http: None,
            llm: LlmSetup::default(),
            schema: Arc::new(concerto_schema::JsonSchemaValidator::new()),
            custom_tools: None,
            active_tools: None,
            sandbox: Sandbox::default(),
            host_tools: Vec::new(),
            system: Arc::new(ProcessSystem::default()),
            metrics: Metrics::default(),
            run_id: None,
            state: StateStore::Memory,
            replayed: 0,
            program_dir: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Sets when emits are delivered (as `RuntimeConfig::emit_mode`).
    pub fn set_emit_mode(&mut self, mode: EmitMode) {
        self.config.emit_mode = mode;
    }

    /// Sets the resource limits. They apply to the next execution; a changed hashmap byte
    /// limit applies to the built-in store at once, from its next write on (what it holds
    /// stays).
    pub fn set_limits(&mut self, limits: Limits) {
        if limits.max_concurrent_agent_calls != self.limits.max_concurrent_agent_calls {
            self.active_connections = None;
        }
        if limits.max_hashmap_bytes != self.limits.max_hashmap_bytes
            && let Some(store) = &self.builtin_memory
        {
            store.set_max_bytes(limits.max_hashmap_bytes);
        }
        self.limits = limits;
    }

    /// Loads, validates and prepares an IR file. Unless [`Runtime::set_program_dir`] chose
    /// another folder, the file's folder becomes the one relative paths of the program's
    /// external agents and MCP servers resolve against.
    ///
    /// # Errors
    /// [`RuntimeError::Load`] with what is wrong and where.
    pub fn load_ir(&mut self, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let path = path.as_ref();
        let program = concerto_ir::load_path(path)?;
        if self.program_dir.is_none() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            self.program_dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.into()));
            self.active_tools = None;
        }
        self.load_program(program);
        Ok(())
    }

    /// The folder relative paths in the program resolve against (then the project folder
    /// above it, the nearest with a `Concerto.toml`): external agents' and stdio MCP servers'
    /// working directories, and their commands (with a slash) and arguments that name a file
    /// or folder there. `concerto run app.conc` sets the source file's
    /// folder (the IR it compiles lives in a temporary one).
    pub fn set_program_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        let dir = dir.into();
        self.program_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        self.active_tools = None;
        self
    }

    /// Loads IR from memory.
    ///
    /// # Errors
    /// [`RuntimeError::Load`].
    pub fn load_ir_bytes(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        let program = concerto_ir::load_bytes(bytes)?;
        self.load_program(program);
        Ok(())
    }

    /// Uses an already loaded program.
    pub fn load_program(&mut self, program: Program) {
        let program = Arc::new(program);
        if !self.custom_memory && self.state != StateStore::Memory {
            // Opened (and its errors reported) when the program first runs.
            self.memory = None;
            self.builtin_memory = None;
        } else if !self.custom_memory {
            let store = Arc::new(
                concerto_memory::InMemoryStore::with_names(
                    program.hashmaps.iter().map(|h| h.name.clone()),
                )
                .with_max_bytes(self.limits.max_hashmap_bytes),
            );
            self.builtin_memory = Some(store.clone());
            self.memory = Some(store);
        }
        self.vm = Some(Vm::new(program));
    }

    /// The built-in memory store and the index of hashmap `name`.
    fn hashmap(
        &self,
        name: &str,
    ) -> Result<(Arc<concerto_memory::InMemoryStore>, u32), RuntimeError> {
        let store = self.builtin_memory.clone().ok_or_else(|| {
            RuntimeError::Setup(
                "hashmap persistence and listeners need a loaded program and the built-in \
                 memory store"
                    .into(),
            )
        })?;
        let index = self
            .program()
            .and_then(|p| p.hashmaps.iter().position(|h| h.name == name))
            .ok_or_else(|| {
                RuntimeError::Setup(format!("the program declares no hashmap `{name}`"))
            })?;
        Ok((store, index as u32))
    }

    /// Keeps hashmap `name` in the JSON file `path`: loads it now (a missing file starts
    /// empty; an unreadable or corrupt one is an error, never a silent empty start) and
    /// saves it atomically at the end of every execution and on [`Runtime::save_hashmaps`].
    /// Call after `load_ir`.
    ///
    /// # Errors
    /// An unknown hashmap, or a file that cannot be read.
    pub fn persist_hashmap(
        &mut self,
        name: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<(), RuntimeError> {
        let (store, index) = self.hashmap(name)?;
        Ok(store.persist(index, path)?)
    }

    /// As [`Runtime::persist_hashmap`], but saves after every write (before the write
    /// returns to the program).
    ///
    /// # Errors
    /// An unknown hashmap, or a file that cannot be read.
    pub fn persist_hashmap_on_change(
        &mut self,
        name: &str,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<(), RuntimeError> {
        let (store, index) = self.hashmap(name)?;
        Ok(store.persist_with(index, path, concerto_memory::PersistMode::OnChange)?)
    }

    /// Saves every persisted hashmap now (atomically: a crash leaves the old or the new
    /// file, never a mix).
    ///
    /// # Errors
    /// Each hashmap that could not be saved.
    pub fn save_hashmaps(&self) -> Result<(), RuntimeError> {
        match &self.builtin_memory {
            Some(store) => Ok(store.save_all()?),
            None => Ok(()),
        }
    }

    /// Calls `listener(key, old, new)` after every change of hashmap `name` (`None` for an
    /// absent or deleted value), from any execution.
    ///
    /// # Errors
    /// An unknown hashmap.
    pub fn on_hashmap_change(
        &mut self,
        name: &str,
        listener: impl Fn(&str, Option<Value>, Option<Value>) + Send + Sync + 'static,
    ) -> Result<(), RuntimeError> {
        let (store, index) = self.hashmap(name)?;
        store.on_change(
            index,
            Arc::new(move |change: &concerto_memory::HashMapChange| {
                listener(
                    change.key.as_str(),
                    change.old.as_ref().map(Value::from),
                    change.new.as_ref().map(Value::from),
                )
            }),
        )?;
        Ok(())
    }

    /// Bytes held by the built-in store's hashmaps (the estimate the limit uses).
    pub fn hashmap_bytes_used(&self) -> usize {
        self.builtin_memory.as_ref().map_or(0, |s| s.bytes_used())
    }

    /// The loaded program.
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.vm.as_ref().map(|vm| vm.program())
    }

    /// Calls `handler` with the payload of every emit on `channel`.
    pub fn on(&mut self, channel: &str, handler: impl Fn(Value) + Send + Sync + 'static) {
        self.hub.on(
            channel,
            Arc::new(move |_: &str, payload: &concerto_vm::Value| handler(Value::from(payload))),
        );
    }

    /// Calls `handler` with the channel and payload of every emit whose channel starts with
    /// `prefix` (`""` for all).
    pub fn on_prefix(
        &mut self,
        prefix: &str,
        handler: impl Fn(&str, Value) + Send + Sync + 'static,
    ) {
        self.hub.on_prefix(
            prefix,
            Arc::new(move |channel: &str, payload: &concerto_vm::Value| {
                handler(channel, Value::from(payload))
            }),
        );
    }

    /// Answers emit-await on `channel`: the program waits for the handler's reply.
    pub fn on_emit<F, Fut>(&mut self, channel: &str, handler: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'static,
    {
        let channel_name = channel.to_string();
        self.hub.on_emit(
            channel,
            Arc::new(move |payload: concerto_vm::Value| {
                let fut = handler(Value::from(&payload));
                let channel = channel_name.clone();
                Box::pin(async move {
                    match fut.await {
                        Ok(v) => Ok(concerto_vm::Value::from(&v)),
                        Err(e) => Err(HostError::failed(format!(
                            "emit-await handler for `{channel}` failed: {e}"
                        ))),
                    }
                })
            }),
        );
    }

    /// Sends every emit to `sink` as well (for example a JSON-lines writer).
    pub fn add_emit_sink(&mut self, sink: Arc<dyn FlushSink>) {
        self.hub.add_sink(sink);
    }

    /// Uses a different LLM connection layer (a recording or replay set up with
    /// [`Runtime::record_llm`] / [`Runtime::replay_llm`] still wraps or replaces it).
    pub fn with_connections(&mut self, connections: Arc<dyn Connections>) -> &mut Self {
        self.custom_connections = Some(connections);
        self.active_connections = None;
        self
    }

    /// Answers every agent call from the built-in deterministic mock provider instead of
    /// the network: an explicit choice for offline runs and demos (a missing API key never
    /// falls back to it). To mock one connection only, override it with
    /// `ConnectionOverride { provider: Some("mock".into()), ..Default::default() }`.
    pub fn use_mock_provider(&mut self) -> &mut Self {
        self.llm.mock = true;
        self.active_connections = None;
        self
    }

    /// [`Runtime::use_mock_provider`], answering each call after `latency` (a timer), as a
    /// provider would: for demonstrations, benchmarks and tests of concurrency and resume.
    pub fn use_mock_provider_with_latency(&mut self, latency: Duration) -> &mut Self {
        self.llm.mock_latency = Some(latency);
        self.use_mock_provider()
    }

    /// Keeps hashmaps, ledgers, memories and run journals in `state` instead of process
    /// memory (the default). Takes effect for programs loaded afterwards.
    pub fn use_state_store(&mut self, state: StateStore) -> &mut Self {
        self.state = state;
        self
    }

    /// Replaces parts of connection `name` (API key, base URL, limits, …), as
    /// `RuntimeConfig::connection_overrides` does.
    pub fn override_connection(&mut self, name: &str, settings: ConnectionOverride) -> &mut Self {
        self.config
            .connection_overrides
            .insert(name.to_string(), settings);
        self.active_connections = None;
        self
    }

    /// Writes every LLM request and its response (or error) to `path` as JSON lines, one
    /// per call, each written and flushed as it happens. The recording starts empty: an
    /// existing file at `path` is replaced when the connection layer is built (before the
    /// first execution). Requests carry no API keys.
    pub fn record_llm(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.llm.record = Some(path.into());
        self.active_connections = None;
        self
    }

    /// Answers LLM requests from a recording made with [`Runtime::record_llm`] (or
    /// `concerto run --record`), without any network; a request that was not recorded is an
    /// error.
    pub fn replay_llm(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.llm.replay = Some(path.into());
        self.active_connections = None;
        self
    }

    /// Sets or overrides the price of a model (USD per million tokens) used for cost
    /// estimates; the built-in table covers common OpenAI and Anthropic models.
    pub fn set_model_price(&mut self, model: &str, price: concerto_conn::Price) -> &mut Self {
        self.llm.prices.set(model, price);
        self.active_connections = None;
        self
    }

    /// The connection layer for the next execution: the host's, the mock, a replay, or
    /// the HTTP layer configured from the overrides — wrapped in a recorder when asked.
    fn connection_layer(&mut self) -> Result<Arc<dyn Connections>, RuntimeError> {
        if let Some(layer) = &self.active_connections {
            if let Some(http) = &self.http {
                http.begin_run();
            }
            return Ok(layer.clone());
        }
        self.http = None;
        let base: Arc<dyn Connections> = if let Some(path) = &self.llm.replay {
            Arc::new(concerto_conn::Replayer::load(path).map_err(|e| {
                RuntimeError::Setup(format!("cannot replay `{}`: {e}", path.display()))
            })?)
        } else if let Some(custom) = &self.custom_connections {
            custom.clone()
        } else if self.llm.mock {
            let mock = concerto_conn::MockConnections::new();
            Arc::new(match self.llm.mock_latency {
                Some(latency) => mock.with_latency(latency),
                None => mock,
            })
        } else {
            let system = self.system.clone();
            let mut http = concerto_conn::HttpConnections::new()
                .with_env(Arc::new(move |name: &str| system.env_var(name)))
                .with_prices(self.llm.prices.clone());
            for (name, o) in &self.config.connection_overrides {
                http = http.with_settings(name, o.clone());
            }
            let http = Arc::new(http);
            self.http = Some(http.clone());
            http
        };
        let layer: Arc<dyn Connections> = match &self.llm.record {
            Some(path) => Arc::new(concerto_conn::Recorder::new(base, path).map_err(|e| {
                RuntimeError::Setup(format!("cannot record to `{}`: {e}", path.display()))
            })?),
            None => base,
        };
        let layer: Arc<dyn Connections> = match self.limits.max_concurrent_agent_calls {
            Some(max) => Arc::new(concurrency::Bounded::new(layer, max)),
            None => layer,
        };
        self.active_connections = Some(layer.clone());
        Ok(layer)
    }

    /// Uses a different memory store (kept across `load_ir` calls).
    pub fn with_memory_store(&mut self, store: Arc<dyn MemoryStore>) -> &mut Self {
        self.memory = Some(store);
        self.builtin_memory = None;
        self.custom_memory = true;
        self
    }

    /// Uses a different schema validator.
    pub fn with_schema_validator(&mut self, validator: Arc<dyn SchemaValidator>) -> &mut Self {
        self.schema = validator;
        self
    }

    /// Uses a different tool layer (permissions, host tools, MCP, host agents, `std::fs`,
    /// `std::http`) instead of the built-in one.
    pub fn with_tool_host(&mut self, tools: Arc<dyn ToolHost>) -> &mut Self {
        self.custom_tools = Some(tools);
        self.active_tools = None;
        self
    }

    /// Sets what `std::fs` and `std::http` may reach (nothing by default).
    pub fn set_sandbox(&mut self, sandbox: Sandbox) -> &mut Self {
        self.sandbox = sandbox;
        self.active_tools = None;
        self
    }

    /// Sets the permission of a tool, MCP server, host agent or host-registered tool, as
    /// `RuntimeConfig::tool_permissions` does.
    pub fn set_tool_permission(&mut self, tool: &str, permission: ToolPermission) -> &mut Self {
        self.config
            .tool_permissions
            .insert(tool.to_string(), permission);
        self.active_tools = None;
        self
    }

    /// Registers method `method` of a host tool `tool`, offered to agents that list `tool`
    /// (or get it through `with_tools(["tool"])`) as `tool::method` with `description` and
    /// the JSON Schema `parameters`. The handler receives the named arguments as a map.
    /// Like everything outside the program it runs only once enabled:
    /// `set_tool_permission(tool, ToolPermission::AllMethods)`.
    pub fn register_tool<F, Fut>(
        &mut self,
        tool: &str,
        method: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.host_tools.push(HostToolRegistration {
            tool: tool.to_string(),
            method: method.to_string(),
            description: description.to_string(),
            parameters,
            handler: Arc::new(move |args: serde_json::Value| {
                let handler = handler.clone();
                Box::pin(async move {
                    let args = Value::from(&concerto_vm::Value::from_json(&args));
                    handler(args).await.map(|v| v.to_json()).map_err(Into::into)
                })
            }),
        });
        self.active_tools = None;
        self
    }

    /// [`Runtime::register_tool`] for a plain function: `handler` runs on the executor's
    /// thread, so it must be quick and must not block (do I/O in an async handler).
    pub fn register_tool_fn<F>(
        &mut self,
        tool: &str,
        method: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.register_tool(tool, method, description, parameters, move |args| {
            std::future::ready(handler(args))
        })
    }

    /// The tool layer for the next execution: the host's, or the built-in one under the
    /// configured permissions and sandbox.
    fn tool_layer(&mut self) -> Result<Arc<dyn ToolHost>, RuntimeError> {
        if let Some(layer) = &self.active_tools {
            return Ok(layer.clone());
        }
        let layer: Arc<dyn ToolHost> = match &self.custom_tools {
            Some(custom) => custom.clone(),
            None => {
                let policy = concerto_tools::Policy {
                    tools: self
                        .config
                        .tool_permissions
                        .iter()
                        .map(|(name, p)| {
                            let p = match p {
                                ToolPermission::Disabled => concerto_tools::Permission::Disabled,
                                ToolPermission::AllMethods => {
                                    concerto_tools::Permission::AllMethods
                                }
                                ToolPermission::Methods(m) => {
                                    concerto_tools::Permission::Methods(m.clone())
                                }
                            };
                            (name.clone(), p)
                        })
                        .collect(),
                    fs_roots: self.sandbox.fs_roots.clone(),
                    net_domains: self.sandbox.net_domains.clone(),
                };
                let mut tools = concerto_tools::Tools::new(policy).map_err(|e| {
                    RuntimeError::Setup(format!("the sandbox cannot be set up: {e}"))
                })?;
                if let Some(dir) = &self.program_dir {
                    tools = tools.with_base_dir(dir.clone());
                }
                for reg in &self.host_tools {
                    let handler = reg.handler.clone();
                    tools.register(
                        &reg.tool,
                        &reg.method,
                        &reg.description,
                        reg.parameters.clone(),
                        move |args| handler(args),
                    );
                }
                Arc::new(tools)
            }
        };
        self.active_tools = Some(layer.clone());
        Ok(layer)
    }

    /// Uses a different console, environment and clock (API keys named by `api_key_env`
    /// are read from its environment).
    pub fn with_system(&mut self, system: Arc<dyn System>) -> &mut Self {
        self.system = system;
        self.active_connections = None;
        self
    }

    /// Runs the loaded program's `main` to completion and returns its value.
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; [`RuntimeError::Execution`] with the
    /// uncaught error (function, span, trace) otherwise. Emits made before the error have
    /// been delivered.
    pub async fn execute(&mut self) -> Result<Value, RuntimeError> {
        let journal = match (&self.run_id, self.vm.clone()) {
            (Some(run), Some(vm)) => {
                let run = run.clone();
                let store = self.memory_store(&vm)?;
                Some(resume::Journal::open(store, &run).await?)
            }
            _ => None,
        };
        let (vm, mut host, config, timeout) = self.prepare()?;
        if let Some(journal) = &journal {
            host.connections = Arc::new(resume::JournaledConnections {
                inner: host.connections,
                journal: journal.clone(),
            });
            host.emit = Arc::new(resume::JournaledEmits {
                inner: host.emit,
                journal: journal.clone(),
            });
            host.tools = Arc::new(resume::JournaledTools {
                inner: host.tools,
                journal: journal.clone(),
            });
        }
        let (outcome, metrics) = concurrency::run_once(vm, host, config, timeout).await;
        let outcome = match outcome {
            Err(RuntimeError::Execution(err)) if self.config.debug => {
                Err(RuntimeError::Execution(err.with_trace_shown()))
            }
            other => other,
        };
        self.metrics = metrics;
        self.replayed = journal.map_or(0, |j| j.replayed());
        let flushed = self.hub.flush();
        // Persisted hashmaps are saved whatever the outcome: what the program wrote before
        // an error is kept.
        let saved = self.save_hashmaps();
        let value = outcome?;
        flushed?;
        saved?;
        Ok(value)
    }

    /// Journals this runtime's executions as run `run_id` in the durable state store:
    /// every completed agent call, external tool call and emit-await answer is recorded
    /// before the program goes on. Setting the id of an earlier run resumes it: its recorded
    /// results are replayed instead of being asked again, and the program continues from the
    /// first operation that had not completed (that one is performed again: at least once
    /// for the call in flight, exactly once for the others). Needs a durable store.
    pub fn set_run_id(&mut self, run_id: impl Into<String>) -> &mut Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// A fresh run id (random, 16 hex digits) for [`Runtime::set_run_id`].
    pub fn new_run_id(&self) -> String {
        let mut bytes = [0u8; 8];
        self.system.random_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Operations of the last execution answered from the run's journal.
    pub fn replayed_operations(&self) -> u64 {
        self.replayed
    }

    /// A handle that runs executions of the loaded program concurrently, sharing this
    /// runtime's components (see [`Executor`]).
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; a connection or tool layer that cannot
    /// be set up.
    pub fn executor(&mut self) -> Result<Executor, RuntimeError> {
        let (vm, host, config, timeout) = self.prepare()?;
        Ok(Executor::new(vm, host, config, timeout))
    }

    /// The memory store of the loaded program: the host's, the built-in one, or the durable
    /// or shared store chosen with [`Runtime::use_state_store`] (opened on first use).
    fn memory_store(&mut self, vm: &Arc<Vm>) -> Result<Arc<dyn MemoryStore>, RuntimeError> {
        // A limit that would not be enforced is refused, not ignored.
        if self.limits.max_hashmap_bytes.is_some()
            && (self.custom_memory || self.state != StateStore::Memory)
        {
            return Err(RuntimeError::Setup(
                "Limits::max_hashmap_bytes (--max-hashmap-bytes) bounds the built-in in-memory \
                 store only; the store in use (SQLite, Redis or the host's own) does not \
                 enforce it. Remove the limit, or use the database's own limits (e.g. Redis \
                 maxmemory)"
                    .into(),
            ));
        }
        if let Some(m) = &self.memory {
            return Ok(m.clone());
        }
        let program = vm.program();
        let names: Vec<String> = program.hashmaps.iter().map(|h| h.name.clone()).collect();
        let store: Arc<dyn MemoryStore> = match &self.state {
            StateStore::Sqlite(path) => Arc::new(
                concerto_store_sqlite::SqliteStore::open(path, names).map_err(|e| {
                    RuntimeError::Setup(format!("state store `{}`: {e}", path.display()))
                })?,
            ),
            StateStore::Redis(url) => Arc::new(
                concerto_store_redis::RedisStore::connect(url, &program.module, names)
                    .map_err(|e| RuntimeError::Setup(format!("state store: {e}")))?,
            ),
            StateStore::Memory => Arc::new(
                concerto_memory::InMemoryStore::with_names(names)
                    .with_max_bytes(self.limits.max_hashmap_bytes),
            ),
        };
        self.memory = Some(store.clone());
        Ok(store)
    }

    /// The program, the host components and the limits of the next execution.
    fn prepare(&mut self) -> Result<(Arc<Vm>, Host, ExecConfig, Duration), RuntimeError> {
        let vm = self.vm.clone().ok_or(RuntimeError::NoProgram)?;
        self.hub.set_delivery(match self.config.emit_mode {
            EmitMode::Batch { max_batch } => concerto_emit::Delivery::Batch { max_batch },
            _ => concerto_emit::Delivery::Immediate,
        });
        self.hub.set_max_queue(self.limits.max_emit_queue);
        self.hub.set_await_timeout(self.limits.emit_await_timeout);
        let memory = self.memory_store(&vm)?;
        let connections = self.connection_layer()?;
        let tools = self.tool_layer()?;
        let host = Host {
            emit: self.hub.clone(),
            connections,
            memory,
            schema: self.schema.clone(),
            tools,
            system: self.system.clone(),
        };
        let timeout = self.config.execution_timeout;
        let config = ExecConfig {
            max_call_depth: self.limits.max_call_depth,
            max_steps: self.limits.max_steps,
            timeout: Some(timeout),
            ..ExecConfig::default()
        };
        Ok((vm, host, config, timeout))
    }

    /// Writes out emits buffered by sinks.
    ///
    /// # Errors
    /// The first sink error.
    pub fn flush_emits(&self) -> Result<(), RuntimeError> {
        Ok(self.hub.flush()?)
    }

    /// Counters of the last execution.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Messages of emit listeners that panicked (the runtime caught them and went on).
    pub fn listener_panics(&self) -> Vec<String> {
        self.hub.listener_panics()
    }
}

/// Compile-time checks: a `Runtime` can move to and be shared between threads, and the future
/// of [`Runtime::execute`] can run on a multi-threaded executor (`tokio::spawn`).
#[allow(dead_code, reason = "only compiled, never called")]
fn _thread_safety(runtime: &mut Runtime) {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Runtime>();
    send_sync::<Executor>();
    let execution = runtime.execute();
    send(&execution);
}
