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
//! - `lib.rs`: [`Runtime`], [`RuntimeError`], [`Metrics`].
//! - `config`: [`RuntimeConfig`] and its parts, [`Limits`].
//! - `value`: the host-side [`Value`].
//! - `system`: [`ProcessSystem`].
#![warn(missing_docs)]

mod config;
mod system;
mod value;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use concerto_emit::{EmitHub, FlushSink};
use concerto_ir::{LoadError, Program};
use concerto_vm::host::{Connections, HostError, MemoryStore, SchemaValidator, System, ToolHost};
use concerto_vm::{ErrorKind, ExecConfig, Execution, Host, Vm, VmError};

pub use concerto_emit as emit;
pub use concerto_ir as ir;
pub use concerto_vm as vm;
pub use config::{ConnectionOverride, EmitMode, Limits, RuntimeConfig, ToolPermission};
pub use system::{ProcessSystem, TextOut, stderr_writer, stdout_writer};
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

/// Counters of the last execution.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Wall time of the last `execute`, in milliseconds.
    pub execution_time_ms: u64,
    /// Emits produced.
    pub emit_count: u64,
    /// Errors caught by the program (`try`/`catch`, pipeline stages).
    pub errors: u64,
    /// LLM API calls made.
    pub agent_calls: u64,
    /// Tool invocations.
    pub tool_calls: u64,
    tokens_in: u64,
    tokens_out: u64,
}

impl Metrics {
    /// Tokens used, input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.tokens_in + self.tokens_out
    }

    /// Estimated cost in US dollars of the calls made.
    pub fn estimated_cost(&self) -> f64 {
        0.0
    }
}

/// A Concerto runtime: one loaded program and the components it runs with.
pub struct Runtime {
    config: RuntimeConfig,
    limits: Limits,
    vm: Option<Arc<Vm>>,
    hub: Arc<EmitHub>,
    memory: Option<Arc<dyn MemoryStore>>,
    custom_memory: bool,
    connections: Arc<dyn Connections>,
    schema: Arc<dyn SchemaValidator>,
    tools: Arc<dyn ToolHost>,
    system: Arc<dyn System>,
    metrics: Metrics,
}

/// Host tools: none are registered yet, so every call is refused.
struct NoHostTools;

impl ToolHost for NoHostTools {
    fn call(
        &self,
        tool: &str,
        method: &str,
        _: Vec<concerto_vm::Value>,
    ) -> concerto_vm::host::BoxFuture<Result<concerto_vm::Value, HostError>> {
        let msg = format!("host tool `{tool}.{method}` is not registered with this runtime");
        Box::pin(async move { Err(HostError::not_enabled(msg)) })
    }
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
            custom_memory: false,
            connections: Arc::new(concerto_conn::HttpConnections::new()),
            schema: Arc::new(concerto_schema::JsonSchemaValidator::new()),
            tools: Arc::new(NoHostTools),
            system: Arc::new(ProcessSystem::default()),
            metrics: Metrics::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Sets the resource limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Loads, validates and prepares an IR file.
    ///
    /// # Errors
    /// [`RuntimeError::Load`] with what is wrong and where.
    pub fn load_ir(&mut self, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let program = concerto_ir::load_path(path)?;
        self.load_program(program);
        Ok(())
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
        if !self.custom_memory {
            self.memory = Some(Arc::new(concerto_memory::InMemoryStore::new(
                program.hashmaps.len(),
            )));
        }
        self.vm = Some(Vm::new(program));
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

    /// Uses a different LLM connection layer.
    pub fn with_connections(&mut self, connections: Arc<dyn Connections>) -> &mut Self {
        self.connections = connections;
        self
    }

    /// Uses a different memory store (kept across `load_ir` calls).
    pub fn with_memory_store(&mut self, store: Arc<dyn MemoryStore>) -> &mut Self {
        self.memory = Some(store);
        self.custom_memory = true;
        self
    }

    /// Uses a different schema validator.
    pub fn with_schema_validator(&mut self, validator: Arc<dyn SchemaValidator>) -> &mut Self {
        self.schema = validator;
        self
    }

    /// Uses a different host-tool layer.
    pub fn with_tool_host(&mut self, tools: Arc<dyn ToolHost>) -> &mut Self {
        self.tools = tools;
        self
    }

    /// Uses a different console, environment and clock.
    pub fn with_system(&mut self, system: Arc<dyn System>) -> &mut Self {
        self.system = system;
        self
    }

    /// Runs the loaded program's `main` to completion and returns its value.
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; [`RuntimeError::Execution`] with the
    /// uncaught error (function, span, trace) otherwise. Emits made before the error have
    /// been delivered.
    pub async fn execute(&mut self) -> Result<Value, RuntimeError> {
        let vm = self.vm.clone().ok_or(RuntimeError::NoProgram)?;
        let memory = match &self.memory {
            Some(m) => m.clone(),
            None => Arc::new(concerto_memory::InMemoryStore::new(
                vm.program().hashmaps.len(),
            )),
        };
        let host = Host {
            emit: self.hub.clone(),
            connections: self.connections.clone(),
            memory,
            schema: self.schema.clone(),
            tools: self.tools.clone(),
            system: self.system.clone(),
        };
        let started = Instant::now();
        let timeout = self.config.execution_timeout;
        let config = ExecConfig {
            max_call_depth: self.limits.max_call_depth,
            timeout: Some(timeout),
            ..ExecConfig::default()
        };
        let mut exec = Execution::new(vm, host, config);
        let outcome = tokio::time::timeout(timeout, exec.run_main()).await;
        let stats = exec.stats();
        self.metrics = Metrics {
            execution_time_ms: started.elapsed().as_millis() as u64,
            emit_count: stats.emits,
            errors: stats.errors_caught,
            ..Metrics::default()
        };
        let flushed = self.hub.flush();
        let value = match outcome {
            Ok(Ok(v)) => Value::from(&v),
            Ok(Err(e)) => return Err(RuntimeError::Execution(e)),
            Err(_) => {
                return Err(RuntimeError::Execution(VmError::new(
                    ErrorKind::ExecutionTimeout,
                    format!("execution timed out after {:.3} s", timeout.as_secs_f64()),
                )));
            }
        };
        flushed?;
        Ok(value)
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
