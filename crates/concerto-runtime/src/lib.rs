//! The Concerto runtime: loads IR compiled by `concertoc`, wires the interpreter to its
//! components (emit channel, memory, LLM connections, schema validation, tools, system) and
//! executes programs.
//!
//! The runtime specification's host API works as written:
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
//! Anything beyond the specification's [`RuntimeConfig`] is chosen on a [`RuntimeBuilder`]
//! ([`Runtime::builder`]) before the runtime exists, each setting in one place: the source of
//! model replies (the network, [`RuntimeBuilder::mock_provider`], a recording, your own
//! [`concerto_vm::host::Connections`]), [`Limits`], the [`Sandbox`], host tools, the
//! [`StateStore`] or your own [`concerto_vm::host::MemoryStore`], a
//! [`concerto_vm::host::SchemaValidator`], [`concerto_vm::host::ToolHost`] or
//! [`concerto_vm::host::System`]. Settings that exclude each other are an error of
//! [`RuntimeBuilder::build`], not a silent choice. A built runtime then loads programs,
//! takes emit listeners (before or after loading) and executes:
//!
//! ```
//! use concerto_runtime::{Limits, Runtime, RuntimeConfig, Value};
//! // `emit("answer", 6 * 7)` (IR as concertoc writes it).
//! let ir = r#"{"version":"0.1.0","module":"m","source_file":"m.conc",
//!   "constants":[{"index":0,"type":"string","value":"answer"},
//!     {"index":1,"type":"int","value":6},{"index":2,"type":"int","value":7},
//!     {"index":3,"type":"nil","value":null}],
//!   "functions":[{"name":"main","module":"m","visibility":"private","params":[],
//!     "return_type":"nil","locals":[],"instructions":[
//!       {"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"LOAD_CONST","arg":2},
//!       {"op":"MUL"},{"op":"EMIT"},{"op":"LOAD_CONST","arg":3},{"op":"RETURN"}]}],
//!   "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
//!     "debug_info":true,"entry_point":"main"}}"#;
//! let mut runtime = Runtime::builder()
//!     .config(RuntimeConfig::default())
//!     .limits(Limits::default().with_max_steps(Some(10_000)))
//!     .mock_provider()
//!     .build()?;
//! let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let seen = answers.clone();
//! runtime.on("answer", move |payload: Value| seen.lock().unwrap().push(payload));
//! runtime.load_ir_bytes(ir.as_bytes())?;
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(runtime.execute())?;
//! assert_eq!(*answers.lock().unwrap(), vec![Value::Int(42)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Source layout
//! - `lib.rs`: [`Runtime`]: loading, listeners, execution.
//! - `builder`: [`RuntimeBuilder`]: components and settings.
//! - `error`: [`RuntimeError`], [`SetupError`].
//! - `config`: [`RuntimeConfig`] and its parts, [`Limits`], [`Sandbox`], [`StateStore`].
//! - `concurrency`: [`Executor`], the runtime-wide bound on agent calls.
//! - `resume`: the journal of a run ([`Runtime::execute_run`]).
//! - [`queue`] (feature `redis`): workers that take queued runs ([`queue::Worker`]), and
//!   the client that submits and watches them ([`queue::Queue`]).
//! - [`progress`] (feature `progress`): [`progress::StatusLine`], the live status line of a
//!   run.
//! - `metrics`: [`Metrics`] and [`Cost`].
//! - `debugger`: [`Debugger`] (`Runtime::new_debugger`): breakpoints, stepping, inspection.
//! - `value`: the host-side [`Value`].
//! - `system`: [`ProcessSystem`].
//! - `testing`: [`Runtime::run_tests`], [`TestReport`].
#![warn(missing_docs)]

mod builder;
pub mod chrome_trace;
mod concurrency;
mod config;
mod debugger;
mod error;
mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "progress")]
pub mod progress;
#[cfg(feature = "redis")]
pub mod queue;
mod resume;
mod system;
mod testing;
mod value;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concerto_emit::EmitHub;
use concerto_ir::Program;
use concerto_vm::host::{Connections, HostError, MemoryStore, SchemaValidator, System, ToolHost};
use concerto_vm::{ExecConfig, Host, Vm};

pub use builder::RuntimeBuilder;
pub use chrome_trace::ChromeTrace;
/// The interpreter's types a host meets: runtime values and errors, the debugger's trace,
/// and ([`vm::host`]) the traits a replacement component implements.
pub mod vm {
    /// The `tracing` target of a run's spans (run, agent calls, requests, attempts, tool
    /// calls, tasks): a subscriber that enables it sees them.
    pub use concerto_vm::spans::TARGET as SPAN_TARGET;
    pub use concerto_vm::{
        BreakpointError, ErrorKind, FrameInfo, Location, StepState, StopReason, Str, TraceEvent,
        Value, VmError, op_name,
    };

    /// The traits the interpreter needs from the outside world (connections, memory,
    /// schema validation, tools, emits, the system) and the types they exchange: implement
    /// one and hand it to [`crate::RuntimeBuilder`].
    pub mod host {
        pub use concerto_vm::host::{
            Backoff, BoxFuture, CallTiming, ChatMessage, ChatRequest, ChatResponse, ConnectionId,
            Connections, ConversationStore, Dialect, EmitSink, FsReply, FsRequest, HashmapStore,
            HostError, HostErrorKind, HostSession, HttpReply, HttpRequest, ImagePart,
            JournalRecord, JournalStore, LedgerEntry, LedgerQuery, LedgerStore, LogLevel, MapId,
            MemoryStore, OutsideError, OutsideFailure, OutsideFailureKind, Program,
            ProviderFailure, ProviderFailureKind, Reply, ResponseSchema, RetryPolicy, SchemaCheck,
            SchemaId, SchemaValidator, Spawned, System, ToolCall, ToolHost, ToolOutput, ToolSpec,
            TypeDefKind, Usage, Write,
        };
    }

    /// Stand-ins for the host traits, for tests of a host's own code.
    pub mod testing {
        pub use concerto_vm::testing::{FakeMemory, FakeSystem, RecordingEmits, Unsupported};
    }
}

/// Connection-layer parts a host may use directly: the mock provider, record/replay,
/// prices, a connection's settings (and, with the `http` feature, the HTTP layer itself).
pub mod conn {
    #[cfg(feature = "http")]
    pub use concerto_conn::HttpConnections;
    pub use concerto_conn::{
        ConnectionSettings, Fallback, FallbackOn, MockConnections, Price, PriceTable, Recorder,
        Replayer,
    };
}

/// Emit sinks: where emits go besides the listeners.
pub mod emit {
    pub use concerto_emit::{FlushSink, JsonLinesSink, TextSink};
}

/// Loading IR without a runtime (to check or inspect a file).
pub mod ir {
    pub use concerto_ir::{LoadError, Program, load_bytes, load_path, load_str};
}
pub use concerto_vm::{LlmCounters, LlmStats, TimeTotals};
pub use concurrency::Executor;
pub use config::{
    ConnectionOverride, EmitMode, Limits, RuntimeConfig, Sandbox, StateStore, ToolPermission,
};
pub use debugger::{AgentInfo, DebugFrame, DebugState, Debugger};
pub use error::{RuntimeError, SetupError};
pub use metrics::{Cost, Metrics};
pub use system::{ProcessSystem, TextOut, stderr_writer, stdout_writer};
pub use testing::{TestOutcome, TestReport};
pub use value::{Value, ValueError};

/// A Concerto runtime: the components a program runs with (fixed when it is built, see
/// [`RuntimeBuilder`]), the loaded program, and the listeners of its emits.
pub struct Runtime {
    config: RuntimeConfig,
    limits: Limits,
    vm: Option<Arc<Vm>>,
    hub: Arc<EmitHub>,
    /// The loaded program's store (opened on first need for a state store).
    memory: Option<Arc<dyn MemoryStore>>,
    /// The built-in store, when it is the one in use (persistence, listeners, byte limit).
    builtin_memory: Option<Arc<concerto_memory::InMemoryStore>>,
    /// The host's own store, for every program.
    custom_memory: Option<Arc<dyn MemoryStore>>,
    /// Where hashmaps, ledgers, memories and journals live, without a host store.
    state: StateStore,
    /// Hashmaps kept in files, attached when a program declaring them loads.
    persisted: Vec<builder::Persisted>,
    /// Change listeners by hashmap name, attached to every program's store.
    hashmap_listeners: Vec<(String, concerto_memory::ChangeListener)>,
    /// The connection layer (its HTTP pool outlives executions).
    connections: Arc<dyn Connections>,
    /// The HTTP layer inside it, when it is the built-in one (its retry budget is per run).
    #[cfg(feature = "http")]
    http: Option<Arc<concerto_conn::HttpConnections>>,
    schema: Arc<dyn SchemaValidator>,
    /// The host's own tool layer.
    custom_tools: Option<Arc<dyn ToolHost>>,
    /// The tool layer in use, built on first need and kept (host agent processes and MCP
    /// sessions outlive single executions, until [`Runtime::shutdown`]).
    active_tools: Option<Arc<dyn ToolHost>>,
    /// The built-in tool layer, when it is the one in use (closed by [`Runtime::shutdown`]).
    builtin_tools: Option<Arc<concerto_tools::Tools>>,
    /// The span exporter [`RuntimeConfig::otlp_endpoint`] asked for, once installed.
    #[cfg(feature = "otel")]
    otlp: Option<Arc<otel::OtlpExport>>,
    sandbox: Sandbox,
    host_tools: Vec<builder::HostToolRegistration>,
    system: Arc<dyn System>,
    metrics: Metrics,
    /// Operations of the last execution answered from the journal.
    replayed: u64,
    /// A resumed run delivers again the emits its journal records as delivered.
    replay_emits: bool,
    /// The folder relative paths of host agents and MCP servers resolve against.
    program_dir: Option<PathBuf>,
}

/// A host emit-await handler's answer as the VM takes it: the value, or a failure naming
/// the channel.
fn await_answer<Fut>(
    channel: String,
    answer: Fut,
) -> concerto_vm::host::BoxFuture<Result<concerto_vm::Value, HostError>>
where
    Fut: Future<Output = Result<Value, Box<dyn std::error::Error + Send + Sync>>> + Send + 'static,
{
    Box::pin(async move {
        match answer.await {
            Ok(v) => Ok(concerto_vm::Value::from(&v)),
            Err(e) => Err(HostError::failed(format!(
                "emit-await handler for `{channel}` failed: {e}"
            ))),
        }
    })
}

/// The built-in tool layer's policy from the tool permissions and the sandbox.
pub(crate) fn tool_policy(
    config: &RuntimeConfig,
    sandbox: &Sandbox,
    system: &dyn System,
) -> Result<concerto_tools::Tools, concerto_tools::SandboxError> {
    let policy = concerto_tools::Policy {
        tools: config
            .tool_permissions
            .iter()
            .map(|(name, p)| {
                let p = match p {
                    ToolPermission::Disabled => concerto_tools::Permission::Disabled,
                    ToolPermission::AllMethods => concerto_tools::Permission::AllMethods,
                    ToolPermission::Methods(m) => concerto_tools::Permission::Methods(m.clone()),
                };
                (name.clone(), p)
            })
            .collect(),
        fs_roots: sandbox.fs_roots.clone(),
        net_domains: sandbox.net_domains.clone(),
        env: sandbox.env.clone(),
        // Children inherit an allowed variable as the program reads it (an --env FILE
        // value over the process's own).
        env_values: system
            .env_vars()
            .into_iter()
            .filter(|(name, _)| concerto_tools::env_allowed(&sandbox.env, name))
            .collect(),
    };
    concerto_tools::Tools::new(policy)
}

impl Runtime {
    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The resource limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Loads, validates and prepares an IR file, replacing the program loaded before.
    /// Unless [`RuntimeBuilder::program_dir`] chose another folder, the file's folder
    /// becomes the one relative paths of the program's external agents and MCP servers
    /// resolve against.
    ///
    /// The bundled harbour example, its agents answered offline by the mock provider:
    ///
    /// ```
    /// use concerto_runtime::Runtime;
    /// let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/harbour/harbour.conc-ir");
    /// let mut runtime = Runtime::builder().mock_provider().build()?;
    /// runtime.load_ir(example)?;
    /// let agents = runtime.program().map_or(0, |p| p.agents.len());
    /// assert!(agents > 0);
    /// tokio::runtime::Builder::new_current_thread()
    ///     .enable_all()
    ///     .build()?
    ///     .block_on(runtime.execute())?;
    /// assert!(runtime.metrics().agent_calls > 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`RuntimeError::Load`] with what is wrong and where; [`RuntimeError::Setup`] when a
    /// persisted hashmap's file cannot be read or a persisted or listened-to hashmap is not
    /// declared by the program.
    pub fn load_ir(&mut self, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let path = path.as_ref();
        let program = concerto_ir::load_path(path)?;
        if self.program_dir.is_none() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            self.program_dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.into()));
            self.active_tools = None;
            self.builtin_tools = None;
        }
        self.load_program(program)
    }

    /// Loads IR from memory (as [`Runtime::load_ir`]; relative paths resolve against the
    /// [`RuntimeBuilder::program_dir`], else the current folder).
    ///
    /// ```
    /// # use concerto_runtime::Runtime;
    /// let mut runtime = Runtime::builder().build()?;
    /// let err = runtime.load_ir_bytes(b"{ not IR").unwrap_err();
    /// assert!(err.to_string().starts_with("failed to load IR"));
    /// # Ok::<(), concerto_runtime::RuntimeError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Runtime::load_ir`].
    pub fn load_ir_bytes(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        let program = concerto_ir::load_bytes(bytes)?;
        self.load_program(program)
    }

    /// Uses an already loaded program (as [`Runtime::load_ir`]).
    ///
    /// # Errors
    /// [`RuntimeError::Setup`] as for [`Runtime::load_ir`].
    pub fn load_program(&mut self, program: Program) -> Result<(), RuntimeError> {
        let program = Arc::new(program);
        let index = |name: &str| {
            program
                .hashmaps
                .iter()
                .position(|h| h.name == name)
                .map(|i| i as u32)
                .ok_or_else(|| SetupError::UnknownHashmap(name.to_string()))
        };
        if let Some(custom) = &self.custom_memory {
            self.memory = Some(custom.clone());
            self.builtin_memory = None;
        } else if self.state != StateStore::Memory {
            // Opened (and its errors reported) when the program first runs.
            self.memory = None;
            self.builtin_memory = None;
        } else {
            let store = Arc::new(
                concerto_memory::InMemoryStore::with_names(
                    program.hashmaps.iter().map(|h| h.name.clone()),
                )
                .with_max_bytes(self.limits.max_hashmap_bytes),
            );
            for persisted in &self.persisted {
                let map = index(&persisted.name)?;
                store
                    .persist_with(map, persisted.path.clone(), persisted.mode)
                    .map_err(|source| SetupError::Persist {
                        name: persisted.name.clone(),
                        source,
                    })?;
            }
            for (name, listener) in &self.hashmap_listeners {
                store.on_change(index(name)?, listener.clone())?;
            }
            self.builtin_memory = Some(store.clone());
            self.memory = Some(store);
        }
        self.announce_program_mocks(&program);
        self.vm = Some(Vm::new(program));
        Ok(())
    }

    /// A connection whose entry in the program says `provider = "mock"` answers offline:
    /// the program's own choice, which a run must not make silently. Logged (warning) through
    /// the system, once per load, unless the host overrides that connection's provider.
    fn announce_program_mocks(&self, program: &Program) {
        for conn in &program.connections {
            // Spelt as the connection layer reads it: trimmed, any case.
            let mocked = conn
                .config
                .get("provider")
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("mock"));
            let overridden = self
                .config
                .connection_overrides
                .get(&conn.name)
                .is_some_and(|o| o.provider.is_some());
            if mocked && !overridden {
                self.system.log(
                    concerto_vm::host::LogLevel::Warn,
                    &format!(
                        "connection `{}` answers from the built-in mock provider, offline: the \
                         program sets provider = \"mock\" for it",
                        conn.name
                    ),
                );
            }
        }
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
    /// absent or deleted value), from any execution, of this program and of programs loaded
    /// later (each must declare `name`).
    ///
    /// # Errors
    /// [`SetupError::NeedsBuiltinStore`] with a state store or the host's own store;
    /// [`SetupError::UnknownHashmap`] when the loaded program does not declare `name`.
    pub fn on_hashmap_change(
        &mut self,
        name: &str,
        listener: impl Fn(&str, Option<Value>, Option<Value>) + Send + Sync + 'static,
    ) -> Result<&mut Self, RuntimeError> {
        if self.custom_memory.is_some() || self.state != StateStore::Memory {
            return Err(SetupError::NeedsBuiltinStore {
                what: "a hashmap change listener",
            }
            .into());
        }
        let listener: concerto_memory::ChangeListener =
            Arc::new(move |change: &concerto_memory::HashMapChange| {
                listener(
                    change.key.as_str(),
                    change.old.as_ref().map(Value::from),
                    change.new.as_ref().map(Value::from),
                )
            });
        if let (Some(store), Some(program)) = (&self.builtin_memory, self.program()) {
            let index = program
                .hashmaps
                .iter()
                .position(|h| h.name == name)
                .ok_or_else(|| SetupError::UnknownHashmap(name.to_string()))?;
            store.on_change(index as u32, listener.clone())?;
        }
        self.hashmap_listeners.push((name.to_string(), listener));
        Ok(self)
    }

    /// Bytes held by the built-in store's hashmaps (the estimate the limit uses).
    pub fn hashmap_bytes_used(&self) -> usize {
        self.builtin_memory.as_ref().map_or(0, |s| s.bytes_used())
    }

    /// The loaded program.
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.vm.as_ref().map(|vm| vm.program())
    }

    /// Calls `handler` with the payload of every emit on `channel` (before or after a
    /// program loads; for every later execution).
    pub fn on(
        &mut self,
        channel: &str,
        handler: impl Fn(Value) + Send + Sync + 'static,
    ) -> &mut Self {
        self.hub.on(
            channel,
            Arc::new(move |_: &str, payload: &concerto_vm::Value| handler(Value::from(payload))),
        );
        self
    }

    /// Calls `handler` with the channel and payload of every emit whose channel starts with
    /// `prefix` (`""` for all).
    pub fn on_prefix(
        &mut self,
        prefix: &str,
        handler: impl Fn(&str, Value) + Send + Sync + 'static,
    ) -> &mut Self {
        self.hub.on_prefix(
            prefix,
            Arc::new(move |channel: &str, payload: &concerto_vm::Value| {
                handler(channel, Value::from(payload))
            }),
        );
        self
    }

    /// Answers emit-await on `channel`: the program waits for the handler's reply.
    pub fn on_emit<F, Fut>(&mut self, channel: &str, handler: F) -> &mut Self
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
                await_answer(channel_name.clone(), handler(Value::from(&payload)))
            }),
        );
        self
    }

    /// Answers emit-await on every channel that has no handler of its own
    /// ([`Runtime::on_emit`]), given the channel's name: the program waits for the reply.
    pub fn on_emit_any<F, Fut>(&mut self, handler: F) -> &mut Self
    where
        F: Fn(&str, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, Box<dyn std::error::Error + Send + Sync>>>
            + Send
            + 'static,
    {
        self.hub.on_emit_any(Arc::new(
            move |channel: &str, payload: concerto_vm::Value| {
                await_answer(channel.to_string(), handler(channel, Value::from(&payload)))
            },
        ));
        self
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
                let mut tools = tool_policy(&self.config, &self.sandbox, self.system.as_ref())
                    .map_err(SetupError::Sandbox)?;
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
                let tools = Arc::new(tools);
                self.builtin_tools = Some(tools.clone());
                tools
            }
        };
        self.active_tools = Some(layer.clone());
        Ok(layer)
    }

    /// Closes what the built-in tool layer keeps open between executions: each MCP session
    /// (a stdio server gets the end of its input and a few seconds to exit before it is
    /// terminated, then killed; an HTTP session is ended with its `DELETE`) and each host
    /// agent process (end of input, three seconds to exit, then killed), all at once.
    /// Returns when they are closed.
    ///
    /// Sessions and processes live across executions of one runtime, so that a program run
    /// many times does not start its servers each time; call this when the runtime is done
    /// (the `concerto` command does at the end of `run` and `test`). The runtime stays
    /// usable: a later execution starts them again. Dropping the runtime without it still
    /// kills the child processes (best effort: nothing is awaited in `Drop`), but no server
    /// sees the end of its input and no HTTP session gets its `DELETE`. A tool layer of the
    /// host's own ([`RuntimeBuilder::tool_host`]) is the host's to close.
    pub async fn shutdown(&self) {
        if let Some(tools) = self.builtin_tools.clone() {
            tools.shutdown().await;
        }
    }

    /// Runs the loaded program's `main` to completion and returns its value.
    ///
    /// ```
    /// # use concerto_runtime::{Runtime, Value};
    /// # use std::sync::{Arc, Mutex};
    /// // `emit("greeting", "hello")` (IR as concertoc writes it).
    /// let ir = r#"{"version":"0.1.0","module":"m","source_file":"m.conc",
    ///   "constants":[{"index":0,"type":"string","value":"greeting"},
    ///     {"index":1,"type":"string","value":"hello"},{"index":2,"type":"nil","value":null}],
    ///   "functions":[{"name":"main","module":"m","visibility":"private","params":[],
    ///     "return_type":"nil","locals":[],"instructions":[
    ///       {"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":1},{"op":"EMIT"},
    ///       {"op":"LOAD_CONST","arg":2},{"op":"RETURN"}]}],
    ///   "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
    ///     "debug_info":true,"entry_point":"main"}}"#;
    /// let mut runtime = Runtime::builder().mock_provider().build()?;
    /// runtime.load_ir_bytes(ir.as_bytes())?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = seen.clone();
    /// runtime.on("greeting", move |payload: Value| sink.lock().unwrap().push(payload));
    /// tokio::runtime::Builder::new_current_thread()
    ///     .enable_all()
    ///     .build()?
    ///     .block_on(runtime.execute())?;
    /// assert_eq!(*seen.lock().unwrap(), vec![Value::from("hello")]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; [`RuntimeError::Execution`] with the
    /// uncaught error (function, span, trace) otherwise. Emits made before the error have
    /// been delivered.
    pub async fn execute(&mut self) -> Result<Value, RuntimeError> {
        self.run(None, None).await
    }

    /// [`Runtime::execute`], journaled as run `run_id` in the durable state store
    /// ([`RuntimeBuilder::state_store`]): every effect the run has on the world (agent and
    /// tool calls, emit-await answers, `std::fs` and `std::http` operations, hashmap,
    /// ledger and memory writes, emits) and every value it reads from it (store reads, the
    /// clock, randomness) is recorded, keyed by the task that made it and its position in
    /// that task. The id of an earlier run resumes it: recorded effects are replayed
    /// instead of performed again (a write is not applied again, an emit is not delivered
    /// again unless [`RuntimeBuilder::replay_emits`]) and the program runs live from the
    /// first effect that was not recorded; that one, in flight when the run stopped, is
    /// performed again (at least once for it, exactly once for the others). A program that
    /// now makes a different effect where the journal has another stops with an error
    /// naming both. [`Runtime::new_run_id`] makes a fresh id.
    ///
    /// A run of the harbour example journaled in an SQLite file, then executed again under
    /// the same id: it is answered from its journal (at least one replayed effect for each
    /// agent call).
    ///
    /// ```
    /// use concerto_runtime::{Runtime, StateStore};
    /// let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/harbour/harbour.conc-ir");
    /// let db = std::env::temp_dir().join(format!("concerto-doc-{}.db", std::process::id()));
    /// let mut runtime = Runtime::builder()
    ///     .mock_provider()
    ///     .state_store(StateStore::Sqlite(db.clone()))
    ///     .build()?;
    /// runtime.load_ir(example)?;
    /// let run = runtime.new_run_id();
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    /// rt.block_on(runtime.execute_run(&run))?;
    /// let calls = runtime.metrics().agent_calls;
    /// assert_eq!(runtime.replayed_operations(), 0);
    /// rt.block_on(runtime.execute_run(&run))?; // the same run again
    /// let replayed = runtime.replayed_operations();
    /// assert!(calls >= 1 && replayed >= calls, "{replayed} replayed, {calls} calls");
    /// # drop(runtime);
    /// # let _ = std::fs::remove_file(&db);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Runtime::execute`], and a store that cannot keep the journal.
    pub async fn execute_run(&mut self, run_id: &str) -> Result<Value, RuntimeError> {
        self.run(Some(run_id), None).await
    }

    /// [`Runtime::execute_run`] of a run held under a lease of epoch `epoch` (a fencing
    /// token: a queue worker's run, see [`queue`]): first the run's fence in the state store
    /// is raised to `epoch` ([`JournalStore::journal_fence`](vm::host::JournalStore::journal_fence)),
    /// then every journal row and store write of the run commits only while the fence still
    /// stands at `epoch`. Once another process has taken the run over at a newer epoch, this
    /// one's next write is refused and the run stops with an error of kind `cancelled`
    /// whose host error kind is [`Fenced`](vm::host::HostErrorKind::Fenced), having written
    /// nothing more.
    ///
    /// # Errors
    /// As [`Runtime::execute_run`]; the fence stands at a newer epoch already.
    pub async fn execute_leased_run(
        &mut self,
        run_id: &str,
        epoch: u64,
    ) -> Result<Value, RuntimeError> {
        self.run(Some(run_id), Some(epoch)).await
    }

    /// The journal of run `run_id` in the durable state store (`None` without a run id).
    pub(crate) async fn open_journal(
        &mut self,
        run_id: Option<&str>,
        epoch: Option<u64>,
    ) -> Result<Option<Arc<resume::Journal>>, RuntimeError> {
        Ok(match (run_id, self.vm.clone()) {
            (Some(run), Some(vm)) => {
                let store = self.memory_store(&vm)?;
                let program = vm.program().clone();
                Some(resume::Journal::open(store, program, run, self.replay_emits, epoch).await?)
            }
            _ => None,
        })
    }

    async fn run(
        &mut self,
        run_id: Option<&str>,
        epoch: Option<u64>,
    ) -> Result<Value, RuntimeError> {
        #[cfg(feature = "otel")]
        let export = self.otlp_export().await?;
        #[cfg(not(feature = "otel"))]
        if self.config.otlp_endpoint.is_some() {
            return Err(SetupError::FeatureOff {
                feature: "otel",
                what: "RuntimeConfig::otlp_endpoint",
            }
            .into());
        }
        let journal = self.open_journal(run_id, epoch).await?;
        let (vm, mut host, config, timeout) = self.prepare()?;
        if let Some(journal) = &journal {
            host = resume::journaled(host, journal);
        }
        let (outcome, metrics) =
            concurrency::traced(run_id, concurrency::run_once(vm, host, config, timeout)).await;
        #[cfg(feature = "otel")]
        otel::flush_after_run(export).await;
        // What the run buffered (reads, emits) is committed whatever the outcome; a failure
        // that ended it is not (resuming tries that effect again).
        let finished = match &journal {
            Some(journal) => journal.finish(outcome.is_err()).await,
            None => Ok(()),
        };
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
        finished?;
        flushed?;
        saved?;
        Ok(value)
    }

    /// The exporter of [`RuntimeConfig::otlp_endpoint`], installed on first need (off the
    /// async workers: it makes a blocking HTTP client).
    #[cfg(feature = "otel")]
    async fn otlp_export(&mut self) -> Result<Option<Arc<otel::OtlpExport>>, RuntimeError> {
        let Some(endpoint) = self.config.otlp_endpoint.clone() else {
            return Ok(None);
        };
        if let Some(export) = &self.otlp {
            return Ok(Some(export.clone()));
        }
        let export = otel::install_off_workers(endpoint).await?;
        self.otlp = Some(export.clone());
        Ok(Some(export))
    }

    /// A fresh run id (random, 16 hex digits) for [`Runtime::execute_run`].
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
    /// ```
    /// use concerto_runtime::Runtime;
    /// let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/harbour/harbour.conc-ir");
    /// let mut runtime = Runtime::builder().mock_provider().build()?;
    /// runtime.load_ir(example)?;
    /// let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    /// rt.block_on(runtime.execute())?;
    /// let calls_of_one_run = runtime.metrics().agent_calls;
    /// let executor = runtime.executor()?;
    /// let runs: Vec<_> = (0..3)
    ///     .map(|_| {
    ///         let executor = executor.clone();
    ///         rt.spawn(async move { executor.execute().await })
    ///     })
    ///     .collect();
    /// for run in runs {
    ///     rt.block_on(run)??;
    /// }
    /// assert_eq!(executor.metrics().agent_calls, 3 * calls_of_one_run);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; a store or tool layer that cannot be
    /// set up.
    pub fn executor(&mut self) -> Result<Executor, RuntimeError> {
        let (vm, host, config, timeout) = self.prepare()?;
        Ok(Executor::new(
            vm,
            host,
            config,
            timeout,
            self.config.otlp_endpoint.clone(),
        ))
    }

    /// The memory store of the loaded program: the host's, the built-in one, or the durable
    /// or shared store chosen with [`RuntimeBuilder::state_store`] (opened on first use).
    fn memory_store(&mut self, vm: &Arc<Vm>) -> Result<Arc<dyn MemoryStore>, RuntimeError> {
        if let Some(m) = &self.memory {
            return Ok(m.clone());
        }
        let store = open_state_store(&self.state, vm.program(), &self.limits)?;
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
        #[cfg(feature = "http")]
        if let Some(http) = &self.http {
            http.begin_run();
        }
        let tools = self.tool_layer()?;
        let host = Host {
            emit: self.hub.clone(),
            connections: self.connections.clone(),
            memory,
            schema: self.schema.clone(),
            tools,
            system: Arc::new(system::EnvGuard::new(
                self.system.clone(),
                &self.sandbox.env,
            )),
            tasks: None,
        };
        let timeout = self.config.execution_timeout;
        let config = ExecConfig {
            max_call_depth: self.limits.max_call_depth,
            max_steps: self.limits.max_steps,
            timeout: Some(timeout),
            trace_content: self.config.trace_content,
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

/// Opens the state store `state` for `program` (its hashmaps by name; Redis keys under its
/// module name).
pub(crate) fn open_state_store(
    state: &StateStore,
    program: &Program,
    limits: &Limits,
) -> Result<Arc<dyn MemoryStore>, RuntimeError> {
    let names: Vec<String> = program.hashmaps.iter().map(|h| h.name.clone()).collect();
    Ok(match state {
        #[cfg(feature = "sqlite")]
        StateStore::Sqlite(path) => Arc::new(
            concerto_store_sqlite::SqliteStore::open(path, names).map_err(|source| {
                SetupError::StateStore {
                    store: format!("`{}`", path.display()),
                    source,
                }
            })?,
        ),
        #[cfg(feature = "redis")]
        StateStore::Redis(url) => Arc::new(
            concerto_store_redis::RedisStore::connect(url, &program.module, names).map_err(
                |source| SetupError::StateStore {
                    store: "(redis)".into(),
                    source,
                },
            )?,
        ),
        StateStore::Memory => Arc::new(
            concerto_memory::InMemoryStore::with_names(names)
                .with_max_bytes(limits.max_hashmap_bytes),
        ),
        // Refused by `RuntimeBuilder::build` (this build lacks the store's feature).
        #[allow(
            unreachable_patterns,
            reason = "reachable in builds without a store feature"
        )]
        other => {
            return Err(SetupError::FeatureOff {
                feature: builder::missing_feature(other).unwrap_or("sqlite"),
                what: "this state store",
            }
            .into());
        }
    })
}
