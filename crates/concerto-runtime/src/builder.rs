//! [`RuntimeBuilder`]: every component and setting of a [`Runtime`], fixed before it is built.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concerto_emit::{EmitHub, FlushSink};
use concerto_vm::host::{Connections, MemoryStore, SchemaValidator, System, ToolHost};

use crate::config::{Limits, RuntimeConfig, Sandbox, StateStore};
use crate::error::{RuntimeError, SetupError};
use crate::{ProcessSystem, Runtime, Value};

/// Sets up a [`Runtime`]: its components (connection layer, memory store, schema validator,
/// tool layer, system) and its settings, each in one place, before any program loads.
/// Made by [`Runtime::builder`]; every method takes and returns the builder.
///
/// ```
/// use concerto_runtime::{Limits, Runtime, RuntimeConfig, Sandbox};
/// let runtime = Runtime::builder()
///     .config(RuntimeConfig::default())
///     .limits(Limits::default().with_max_steps(Some(1_000_000)))
///     .sandbox(Sandbox::default().allow_net("api.example.com"))
///     .mock_provider()
///     .build()?;
/// assert!(runtime.program().is_none());
/// # Ok::<(), concerto_runtime::RuntimeError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct RuntimeBuilder {
    pub(crate) config: RuntimeConfig,
    pub(crate) limits: Limits,
    pub(crate) sandbox: Option<Sandbox>,
    replies: Option<(&'static str, Replies)>,
    record: Option<PathBuf>,
    prices: concerto_conn::PriceTable,
    retry_budget: Option<u32>,
    replay_emits: bool,
    memory: Option<Arc<dyn MemoryStore>>,
    state: Option<StateStore>,
    schema: Option<Arc<dyn SchemaValidator>>,
    tools: Option<Arc<dyn ToolHost>>,
    host_tools: Vec<HostToolRegistration>,
    system: Option<Arc<dyn System>>,
    program_dir: Option<PathBuf>,
    sinks: Vec<Arc<dyn FlushSink>>,
    persisted: Vec<Persisted>,
    /// The first pair of settings found to exclude each other.
    conflict: Option<(&'static str, &'static str)>,
}

/// Where agent calls get their replies, when not from the network.
enum Replies {
    Mock(Option<Duration>),
    Replay(PathBuf),
    Custom(Arc<dyn Connections>),
}

/// A host-registered tool method, kept until the tool layer is built.
pub(crate) struct HostToolRegistration {
    pub(crate) tool: String,
    pub(crate) method: String,
    pub(crate) description: String,
    pub(crate) parameters: serde_json::Value,
    pub(crate) handler: concerto_tools::ToolHandler,
}

/// A hashmap kept in a JSON file.
pub(crate) struct Persisted {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) mode: concerto_memory::PersistMode,
}

impl Runtime {
    /// A builder for a runtime with components or settings other than the defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            config: RuntimeConfig::default(),
            limits: Limits::default(),
            sandbox: None,
            replies: None,
            record: None,
            prices: concerto_conn::PriceTable::builtin(),
            retry_budget: None,
            replay_emits: false,
            memory: None,
            state: None,
            schema: None,
            tools: None,
            host_tools: Vec::new(),
            system: None,
            program_dir: None,
            sinks: Vec::new(),
            persisted: Vec::new(),
            conflict: None,
        }
    }

    /// A runtime with the default components and `config` (the runtime specification's
    /// host API): the same as `Runtime::builder().config(config).build()`, which cannot fail
    /// with nothing else chosen.
    pub fn new(config: RuntimeConfig) -> Runtime {
        let builder = Runtime::builder().config(config);
        let system: Arc<dyn System> = Arc::new(ProcessSystem::default());
        // No recording, no replay, no concurrency bound: the plain HTTP layer.
        let connections = builder.http_layer(&system);
        builder.assemble(system, connections)
    }
}

impl RuntimeBuilder {
    /// The runtime specification's settings: connection overrides, tool permissions, emit
    /// mode, execution timeout, debug.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Resource limits of every execution (call depth, steps, emit queue, emit-await wait,
    /// hashmap bytes, concurrent agent calls).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What `std::fs`, `std::http` and `std::env` may reach (nothing by default). Its
    /// directories and domains are not for [`RuntimeBuilder::tool_host`]: a host's own tool
    /// layer applies its own rules (its variables still govern `std::env`).
    pub fn sandbox(mut self, sandbox: Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    fn replies(mut self, setting: &'static str, replies: Replies) -> Self {
        if let Some((first, _)) = &self.replies
            && *first != setting
        {
            self.conflict.get_or_insert((first, setting));
        }
        self.replies = Some((setting, replies));
        self
    }

    /// Answers every agent call from the built-in deterministic mock provider instead of
    /// the network: an explicit choice for offline runs and demos (a missing API key never
    /// falls back to it). To mock one connection only, override it in
    /// [`RuntimeConfig::connection_overrides`] with
    /// `ConnectionOverride { provider: Some("mock".into()), ..Default::default() }`.
    /// One source of replies only: not with `connections`, `replay_llm` or the latency
    /// variant.
    pub fn mock_provider(self) -> Self {
        self.replies("mock_provider", Replies::Mock(None))
    }

    /// [`RuntimeBuilder::mock_provider`], answering each call after `latency` (a timer), as
    /// a provider would: for demonstrations, benchmarks and tests of concurrency and resume.
    pub fn mock_provider_with_latency(self, latency: Duration) -> Self {
        self.replies("mock_provider_with_latency", Replies::Mock(Some(latency)))
    }

    /// Answers agent calls from a recording made with [`RuntimeBuilder::record_llm`] (or
    /// `concerto run --record`), without any network; a request that was not recorded is an
    /// error. The recording is read when the runtime is built.
    pub fn replay_llm(self, path: impl Into<PathBuf>) -> Self {
        self.replies("replay_llm", Replies::Replay(path.into()))
    }

    /// Uses the host's own LLM connection layer instead of the built-in HTTP one (a
    /// recording set up with [`RuntimeBuilder::record_llm`] still wraps it). The connection
    /// overrides of [`RuntimeConfig`] configure the built-in layer only: setting both is an
    /// error.
    pub fn connections(self, connections: Arc<dyn Connections>) -> Self {
        self.replies("connections", Replies::Custom(connections))
    }

    /// Writes every LLM request and its response (or error) to `path` as JSON lines, one
    /// per call, each written and flushed as it happens, whatever answers them (network,
    /// mock, replay, the host's layer). The recording starts empty: an existing file at
    /// `path` is replaced when the runtime is built. Requests carry no API keys.
    pub fn record_llm(mut self, path: impl Into<PathBuf>) -> Self {
        self.record = Some(path.into());
        self
    }

    /// Sets or overrides the price of a model (USD per million tokens) the built-in HTTP
    /// layer uses for cost estimates; the built-in table covers common OpenAI and Anthropic
    /// models.
    pub fn model_price(mut self, model: &str, price: concerto_conn::Price) -> Self {
        self.prices.set(model, price);
        self
    }

    /// The retries the built-in HTTP layer may make in one execution, across all its calls
    /// (default 100): every retry and every move to a
    /// connection's fallback takes one. When none is left a call makes no more attempts
    /// and ends with its last failure, which the program can handle (an `AgentError`).
    /// Without the `http` feature `build()` refuses it.
    pub fn retry_budget(mut self, retries: u32) -> Self {
        self.retry_budget = Some(retries);
        self
    }

    /// A resumed run ([`Runtime::execute_run`] with the id of an earlier run) delivers
    /// again the emits the earlier run delivered (for a consumer that starts fresh). By
    /// default it delivers only the emits the journal does not record as delivered, so a
    /// consumer that read the earlier run's output sees each emit once.
    pub fn replay_emits(mut self, again: bool) -> Self {
        self.replay_emits = again;
        self
    }

    /// Uses the host's own memory store (hashmaps, ledgers, memories, journals) for every
    /// program this runtime loads. Not with [`RuntimeBuilder::state_store`].
    pub fn memory_store(mut self, store: Arc<dyn MemoryStore>) -> Self {
        if self.state.is_some() {
            self.conflict.get_or_insert(("state_store", "memory_store"));
        }
        self.memory = Some(store);
        self
    }

    /// Keeps hashmaps, ledgers, memories and run journals in `state` instead of process
    /// memory (the default); a durable store is opened when a program first runs. Not with
    /// [`RuntimeBuilder::memory_store`].
    pub fn state_store(mut self, state: StateStore) -> Self {
        if self.memory.is_some() {
            self.conflict.get_or_insert(("memory_store", "state_store"));
        }
        self.state = Some(state);
        self
    }

    /// Uses a different schema validator.
    pub fn schema_validator(mut self, validator: Arc<dyn SchemaValidator>) -> Self {
        self.schema = Some(validator);
        self
    }

    /// Uses the host's own tool layer (permissions, host tools, MCP, host agents, `std::fs`,
    /// `std::http`) instead of the built-in one. The built-in layer's settings
    /// ([`RuntimeBuilder::sandbox`], [`RuntimeBuilder::tool`], the tool permissions of
    /// [`RuntimeConfig`]) cannot be set with it.
    pub fn tool_host(mut self, tools: Arc<dyn ToolHost>) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Registers method `method` of a host tool `tool`, offered to agents that list `tool`
    /// (or get it through `with_tools(["tool"])`) as `tool::method` with `description` and
    /// the JSON Schema `parameters`. The handler receives the named arguments as a map; its
    /// `Err` text is the failure the agent (or the program) sees.
    /// Like everything outside the program it runs only once enabled: give `tool`
    /// [`crate::ToolPermission::AllMethods`] in [`RuntimeConfig::tool_permissions`].
    pub fn tool<F, Fut>(
        mut self,
        tool: &str,
        method: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) -> Self
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
        self
    }

    /// [`RuntimeBuilder::tool`] for a plain function: `handler` runs on the executor's
    /// thread, so it must be quick and must not block (do I/O in an async handler).
    pub fn tool_fn<F>(
        self,
        tool: &str,
        method: &str,
        description: &str,
        parameters: serde_json::Value,
        handler: F,
    ) -> Self
    where
        F: Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.tool(tool, method, description, parameters, move |args| {
            std::future::ready(handler(args))
        })
    }

    /// Uses a different console, environment, clock and randomness (API keys named by
    /// `api_key_env` are read from its environment).
    pub fn system(mut self, system: Arc<dyn System>) -> Self {
        self.system = Some(system);
        self
    }

    /// The folder relative paths in programs resolve against (then the project folder
    /// above it, the nearest with a `Concerto.toml`): external agents' and stdio MCP servers'
    /// working directories, and their commands (with a slash) and arguments that name a file
    /// or folder there. Without it, the folder of the file [`Runtime::load_ir`] loads
    /// (`concerto run app.conc` sets the source file's folder: the IR it compiles lives in a
    /// temporary one).
    pub fn program_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.program_dir = Some(std::path::absolute(&dir).unwrap_or(dir));
        self
    }

    /// Sends every emit to `sink` as well (for example a JSON-lines writer).
    pub fn emit_sink(mut self, sink: Arc<dyn FlushSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Keeps hashmap `name` in the JSON file `path`: loaded when a program declaring it
    /// loads (a missing file starts empty; an unreadable or corrupt one is a load error,
    /// never a silent empty start) and saved atomically at the end of every execution and
    /// on [`Runtime::save_hashmaps`]. Needs the built-in memory store.
    pub fn persist_hashmap(self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.persist(name, path.into(), concerto_memory::PersistMode::OnDemand)
    }

    /// As [`RuntimeBuilder::persist_hashmap`], but saves after every write (before the
    /// write returns to the program).
    pub fn persist_hashmap_on_change(self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.persist(name, path.into(), concerto_memory::PersistMode::OnChange)
    }

    fn persist(mut self, name: &str, path: PathBuf, mode: concerto_memory::PersistMode) -> Self {
        self.persisted.retain(|p| p.name != name);
        self.persisted.push(Persisted {
            name: name.to_string(),
            path,
            mode,
        });
        self
    }

    /// The runtime. Settings are checked now, and the connection layer made: a recording to
    /// replay is read and one to record is created here.
    ///
    /// # Errors
    /// [`SetupError::Conflict`] for settings that exclude each other,
    /// [`SetupError::HashmapLimitNotEnforced`] and [`SetupError::NeedsBuiltinStore`] for a
    /// hashmap limit or persistence with a store that is not the built-in one,
    /// [`SetupError::Sandbox`], [`SetupError::Replay`], [`SetupError::Record`],
    /// [`SetupError::Fallback`] for a fallback that names neither a connection nor a model.
    pub fn build(self) -> Result<Runtime, RuntimeError> {
        if let Some((first, second)) = self.conflict {
            return Err(SetupError::Conflict { first, second }.into());
        }
        if matches!(self.replies, Some((_, Replies::Custom(_))))
            && !self.config.connection_overrides.is_empty()
        {
            return Err(SetupError::Conflict {
                first: "connections",
                second: "RuntimeConfig::connection_overrides",
            }
            .into());
        }
        if self.tools.is_some() {
            let reaches_out = |s: &Sandbox| !s.fs_roots.is_empty() || !s.net_domains.is_empty();
            let second = if self.sandbox.as_ref().is_some_and(reaches_out) {
                Some("sandbox")
            } else if !self.host_tools.is_empty() {
                Some("tool")
            } else if !self.config.tool_permissions.is_empty() {
                Some("RuntimeConfig::tool_permissions")
            } else {
                None
            };
            if let Some(second) = second {
                return Err(SetupError::Conflict {
                    first: "tool_host",
                    second,
                }
                .into());
            }
        }
        if let Some(feature) = self.state.as_ref().and_then(missing_feature) {
            return Err(SetupError::FeatureOff {
                feature,
                what: "this state store",
            }
            .into());
        }
        if !cfg!(feature = "http")
            && self.replies.is_none()
            && !self.config.connection_overrides.is_empty()
        {
            return Err(SetupError::FeatureOff {
                feature: "http",
                what: "RuntimeConfig::connection_overrides (they configure the HTTP layer)",
            }
            .into());
        }
        for (name, o) in &self.config.connection_overrides {
            let reason = o
                .fallbacks
                .iter()
                .enumerate()
                .find_map(|(i, f)| match (&f.connection, &f.model) {
                    (None, None) => Some(format!(
                        "fallback {} names neither a connection nor a model",
                        i + 1
                    )),
                    (Some(c), None) if c == name => Some(format!(
                        "fallback {} names the connection itself without another model",
                        i + 1
                    )),
                    _ => None,
                })
                .or_else(|| {
                    (o.fallbacks.is_empty() && !o.fallback_on.is_empty())
                        .then(|| "fallback_on is set but there are no fallbacks".to_string())
                });
            if let Some(reason) = reason {
                return Err(SetupError::Fallback {
                    connection: name.clone(),
                    reason,
                }
                .into());
            }
        }
        if !cfg!(feature = "otel") && self.config.otlp_endpoint.is_some() {
            return Err(SetupError::FeatureOff {
                feature: "otel",
                what: "RuntimeConfig::otlp_endpoint",
            }
            .into());
        }
        if !cfg!(feature = "http") && self.retry_budget.is_some() {
            return Err(SetupError::FeatureOff {
                feature: "http",
                what: "retry_budget (it bounds the HTTP layer's retries)",
            }
            .into());
        }
        let builtin =
            self.memory.is_none() && matches!(self.state, None | Some(StateStore::Memory));
        if !builtin && self.limits.max_hashmap_bytes.is_some() {
            return Err(SetupError::HashmapLimitNotEnforced.into());
        }
        if !builtin && !self.persisted.is_empty() {
            return Err(SetupError::NeedsBuiltinStore {
                what: "hashmap persistence",
            }
            .into());
        }
        if let Some(sandbox) = &self.sandbox
            && !cfg!(feature = "http")
            && !sandbox.net_domains.is_empty()
        {
            return Err(SetupError::FeatureOff {
                feature: "http",
                what: "Sandbox::allow_net (std::http)",
            }
            .into());
        }
        let system = self
            .system
            .clone()
            .unwrap_or_else(|| Arc::new(ProcessSystem::default()));
        if let Some(sandbox) = &self.sandbox {
            // A host entry that cannot be parsed would allow nothing: refused here, so that a
            // typo is not mistaken for a permission.
            #[cfg(feature = "http")]
            concerto_tools::http::HttpSandbox::try_new(&sandbox.net_domains)
                .map_err(SetupError::Sandbox)?;
            // Checked here; made again (with the program's folder) when a program first runs.
            crate::tool_policy(&self.config, sandbox, system.as_ref())
                .map_err(SetupError::Sandbox)?;
        }
        let connections = self.connection_layer(&system)?;
        Ok(self.assemble(system, connections))
    }

    /// The connection layer: the host's, the mock, a replay, or the HTTP layer configured
    /// from the overrides — wrapped in a recorder when asked, and bounded when a limit asks.
    fn connection_layer(&self, system: &Arc<dyn System>) -> Result<Connection, RuntimeError> {
        #[cfg(feature = "http")]
        let mut http = None;
        let base: Arc<dyn Connections> = match &self.replies {
            Some((_, Replies::Replay(path))) => {
                Arc::new(concerto_conn::Replayer::load(path).map_err(|reason| {
                    SetupError::Replay {
                        path: path.clone(),
                        reason,
                    }
                })?)
            }
            Some((_, Replies::Custom(custom))) => custom.clone(),
            Some((_, Replies::Mock(latency))) => {
                let mock = concerto_conn::MockConnections::new();
                Arc::new(match latency {
                    Some(latency) => mock.with_latency(*latency),
                    None => mock,
                })
            }
            None => {
                let built = self.http_layer(system);
                #[cfg(feature = "http")]
                {
                    http = built.http;
                }
                built.layer
            }
        };
        let layer: Arc<dyn Connections> = match &self.record {
            Some(path) => Arc::new(concerto_conn::Recorder::new(base, path).map_err(|source| {
                SetupError::Record {
                    path: path.clone(),
                    source,
                }
            })?),
            None => base,
        };
        let layer: Arc<dyn Connections> = match self.limits.max_concurrent_agent_calls {
            Some(max) => Arc::new(crate::concurrency::Bounded::new(layer, max)),
            None => layer,
        };
        Ok(Connection {
            layer,
            #[cfg(feature = "http")]
            http,
        })
    }

    /// The built-in HTTP layer, configured from the connection overrides and prices.
    #[cfg(feature = "http")]
    fn http_layer(&self, system: &Arc<dyn System>) -> Connection {
        let system = system.clone();
        let sandbox = self.sandbox.clone().unwrap_or_default();
        // The provider's conventional variable is approved by the connection layer itself.
        let approve = move |name: &str| {
            concerto_tools::env_allowed(&sandbox.env, name)
                || sandbox.key_env.iter().any(|k| k == name)
        };
        let net = concerto_tools::http::HttpSandbox::new(
            self.sandbox
                .as_ref()
                .map_or(&[][..], |s| &s.net_domains[..]),
        );
        let mut layer = concerto_conn::HttpConnections::new()
            .with_env(Arc::new(move |name: &str| system.env_var(name)))
            .with_key_approval(Arc::new(approve))
            .with_host_approval(Arc::new(move |host: &str, port: u16| {
                net.allows(host, port)
            }))
            .with_prices(self.prices.clone());
        if let Some(retries) = self.retry_budget {
            layer = layer.with_retry_budget(retries);
        }
        for (name, o) in &self.config.connection_overrides {
            layer = layer.with_settings(name, o.clone());
        }
        let layer = Arc::new(layer);
        Connection {
            layer: layer.clone(),
            http: Some(layer),
        }
    }

    /// Without the `http` feature there is no built-in network layer: agent calls fail,
    /// naming the feature and the builder's other sources of replies.
    #[cfg(not(feature = "http"))]
    fn http_layer(&self, _system: &Arc<dyn System>) -> Connection {
        Connection {
            layer: Arc::new(Offline),
        }
    }

    /// The runtime from settings already checked and the connection layer made from them.
    fn assemble(self, system: Arc<dyn System>, connections: Connection) -> Runtime {
        let hub = Arc::new(EmitHub::new());
        for sink in self.sinks {
            hub.add_sink(sink);
        }
        Runtime {
            config: self.config,
            limits: self.limits,
            vm: None,
            hub,
            memory: None,
            builtin_memory: None,
            custom_memory: self.memory,
            state: self.state.unwrap_or_default(),
            persisted: self.persisted,
            hashmap_listeners: Vec::new(),
            connections: connections.layer,
            #[cfg(feature = "http")]
            http: connections.http,
            schema: self
                .schema
                .unwrap_or_else(|| Arc::new(concerto_schema::JsonSchemaValidator::new())),
            custom_tools: self.tools,
            active_tools: None,
            builtin_tools: None,
            #[cfg(feature = "otel")]
            otlp: None,
            sandbox: self.sandbox.unwrap_or_default(),
            host_tools: self.host_tools,
            system,
            metrics: Default::default(),
            replayed: 0,
            replay_emits: self.replay_emits,
            program_dir: self.program_dir,
        }
    }
}

/// The connection layer a runtime uses, and the HTTP layer inside it when it is the
/// built-in one (its retry budget is per run).
pub(crate) struct Connection {
    pub(crate) layer: Arc<dyn Connections>,
    #[cfg(feature = "http")]
    pub(crate) http: Option<Arc<concerto_conn::HttpConnections>>,
}

/// The connection layer of a runtime built without the `http` feature and given no other
/// source of replies.
#[cfg(not(feature = "http"))]
struct Offline;

#[cfg(not(feature = "http"))]
impl Connections for Offline {
    fn chat(
        &self,
        program: &Arc<concerto_vm::host::Program>,
        connection: concerto_vm::host::ConnectionId,
        _request: concerto_vm::host::ChatRequest,
    ) -> concerto_vm::host::BoxFuture<
        Result<concerto_vm::host::ChatResponse, concerto_vm::host::HostError>,
    > {
        let name = program
            .connections
            .get(connection.index())
            .map_or("?", |c| c.name.as_str());
        let message = format!(
            "agent call over connection `{name}`: this runtime was built without the `http` \
             feature (no network layer); build it with that feature, or choose a source of \
             replies on the builder (mock_provider, replay_llm, connections)"
        );
        Box::pin(std::future::ready(Err(
            concerto_vm::host::HostError::unsupported(message),
        )))
    }
}

/// The Cargo feature a state store needs, when this build lacks it.
pub(crate) fn missing_feature(state: &StateStore) -> Option<&'static str> {
    match state {
        StateStore::Sqlite(_) if !cfg!(feature = "sqlite") => Some("sqlite"),
        StateStore::Redis(_) if !cfg!(feature = "redis") => Some("redis"),
        _ => None,
    }
}
