//! [`RuntimeConfig`] and the settings it carries.

use std::collections::HashMap;
use std::time::Duration;

/// How the host configures a [`crate::Runtime`], as in the runtime specification.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use concerto_runtime::{ConnectionOverride, EmitMode, RuntimeConfig, ToolPermission};
/// let config = RuntimeConfig {
///     connection_overrides: HashMap::from([(
///         "openai".to_string(),
///         ConnectionOverride {
///             api_key: Some("sk-test-key".to_string()),
///             base_url: Some("http://localhost:8080/mock".to_string()),
///             ..Default::default()
///         },
///     )]),
///     tool_permissions: HashMap::from([
///         ("ShellTool".to_string(), ToolPermission::Disabled),
///         ("FileConnector".to_string(), ToolPermission::Methods(vec!["read_file".to_string()])),
///     ]),
///     emit_mode: EmitMode::Immediate,
///     execution_timeout: Duration::from_secs(300),
///     debug: false,
///     trace_content: false,
///     otlp_endpoint: None,
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-connection replacements (API key, base URL, …), by connection name.
    pub connection_overrides: HashMap<String, ConnectionOverride>,
    /// Per-tool permissions, by tool name.
    pub tool_permissions: HashMap<String, ToolPermission>,
    /// When emits reach listeners.
    pub emit_mode: EmitMode,
    /// The whole execution stops with a timeout error after this long.
    pub execution_timeout: Duration,
    /// Include traces and extra detail in errors: an uncaught error's text (its `Display`)
    /// also lists the call trace, one `called from` line per frame.
    pub debug: bool,
    /// Record the text of prompts and replies on the spans of model requests
    /// (`gen_ai.input.messages`, `gen_ai.output.messages`); off by default, so traces carry
    /// no prompt or completion text unless the host opts in.
    pub trace_content: bool,
    /// Export the spans of every run to the OTLP/HTTP collector at this base URL (as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; spans go to its `/v1/traces`), flushed when each run
    /// ends. Set on a runtime's first run through [`crate::otel::install`], which makes
    /// the process's global `tracing` subscriber: a host with a subscriber of its own adds
    /// [`crate::otel::OtlpExport::layer`] to it instead. Needs the `otel` feature; the
    /// first run fails with a setup error when the export cannot be set up. Spans the
    /// collector does not take are dropped: a run never fails for them.
    pub otlp_endpoint: Option<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            connection_overrides: HashMap::new(),
            tool_permissions: HashMap::new(),
            emit_mode: EmitMode::Immediate,
            execution_timeout: Duration::from_secs(300),
            debug: false,
            trace_content: false,
            otlp_endpoint: None,
        }
    }
}

impl RuntimeConfig {
    /// This configuration with `tool` (a tool, MCP server, host agent or host-registered
    /// tool) given `permission`, replacing what it had.
    ///
    /// ```
    /// use concerto_runtime::{RuntimeConfig, ToolPermission};
    /// let config = RuntimeConfig::default()
    ///     .with_tool_permission("Calc", ToolPermission::AllMethods)
    ///     .with_tool_permission("Shell", ToolPermission::Disabled);
    /// assert_eq!(config.tool_permissions["Calc"], ToolPermission::AllMethods);
    /// ```
    pub fn with_tool_permission(mut self, tool: &str, permission: ToolPermission) -> Self {
        self.tool_permissions.insert(tool.to_string(), permission);
        self
    }

    /// This configuration with connection `name`'s settings replaced by `settings` where
    /// they are set.
    pub fn with_connection_override(mut self, name: &str, settings: ConnectionOverride) -> Self {
        self.connection_overrides.insert(name.to_string(), settings);
        self
    }
}

/// Replaces parts of a connection from the IR: the connection layer's own settings type,
/// so every setting it has (provider, key, endpoint, model, timeout, retry, rate limits,
/// concurrency, streaming, headers, Anthropic's structured-output mode) can be overridden.
/// Build it with `..Default::default()` so new fields do not break your code.
///
/// `provider: Some("mock".into())` answers that connection from the built-in deterministic
/// mock provider instead of the network (an explicit choice; a missing API key never falls
/// back to it). `Debug` never shows the API key or header values.
pub use concerto_conn::ConnectionSettings as ConnectionOverride;

/// What `std::fs`, `std::http` and `std::env` may reach. Empty by default: a program can
/// touch no file, no network address and no environment variable until the host allows
/// directories, domains and variables.
///
/// ```
/// use concerto_runtime::Sandbox;
/// let sandbox = Sandbox::default()
///     .allow_fs("/tmp/work")
///     .allow_net("api.example.com")
///     .allow_env("APP_*");
/// # let _ = sandbox;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sandbox {
    /// Directories `std::fs` may read and write (recursively; symlinks and `..` that leave
    /// them are refused).
    pub fs_roots: Vec<std::path::PathBuf>,
    /// Hosts `std::http` may reach: `example.com` (that name only), `*.example.com` (its
    /// subdomains), `localhost`, IP literals, each optionally with `:port`; redirects are
    /// checked hop by hop.
    pub net_domains: Vec<String>,
    /// Environment variables `std::env` and `env()` may read: `NAME`, or `PREFIX*` for every
    /// variable whose name starts with `PREFIX`. Any other variable reads as unset, and
    /// `std::env::all()` lists only these.
    pub env: Vec<String>,
    /// Further variables connections may read API keys from (the program may not read
    /// them): `concerto run --env FILE` puts the file's variables here. A connection's own
    /// provider's conventional variable (`OPENAI_API_KEY` for `openai`, `ANTHROPIC_API_KEY`
    /// for `anthropic`) and the variables of [`Sandbox::env`] need no entry.
    pub key_env: Vec<String>,
}

impl Sandbox {
    /// Allows directory `dir`.
    pub fn allow_fs(mut self, dir: impl Into<std::path::PathBuf>) -> Sandbox {
        self.fs_roots.push(dir.into());
        self
    }

    /// Allows domain `domain`.
    pub fn allow_net(mut self, domain: impl Into<String>) -> Sandbox {
        self.net_domains.push(domain.into());
        self
    }

    /// Lets connections read an API key from variable `name` (not the program).
    pub fn allow_key_env(mut self, name: impl Into<String>) -> Sandbox {
        self.key_env.push(name.into());
        self
    }

    /// Lets the program read environment variable `name` (`PREFIX*`: every variable whose
    /// name starts with `PREFIX`).
    pub fn allow_env(mut self, name: impl Into<String>) -> Sandbox {
        self.env.push(name.into());
        self
    }
}

/// What a tool may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPermission {
    /// The tool cannot be called.
    Disabled,
    /// Every method may be called.
    AllMethods,
    /// Only these methods may be called.
    Methods(Vec<String>),
}

/// When emits are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EmitMode {
    /// Each emit reaches listeners before the program continues.
    #[default]
    Immediate,
    /// Emits are buffered and delivered in order, in batches of `max_batch` (0: only when
    /// flushed), and always at the end of an execution and before an emit-await.
    Batch {
        /// Emits per automatic delivery (0: deliver only on flush).
        max_batch: usize,
    },
}

/// Resource limits of an execution (kept apart from [`RuntimeConfig`], whose fields are
/// exactly those of the runtime specification).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum nesting of calls (the reference runtime's limit is 1000).
    pub max_call_depth: usize,
    /// Maximum emits waiting in the batch queue. When it is full the emitting call delivers
    /// the queue first (back-pressure: nothing is lost, memory stays bounded). `None`: no bound.
    pub max_emit_queue: Option<usize>,
    /// How long an emit-await waits for the host's handler (`None`: for ever).
    pub emit_await_timeout: Option<Duration>,
    /// Maximum bytes held by all hashmaps of a runtime (estimated); a write past it fails
    /// with an error naming the hashmap and the limit. `None`: no bound. Enforced by the built-in
    /// in-memory store only: with another store (SQLite, Redis, the host's own) a set limit
    /// is an error of `RuntimeBuilder::build`, never ignored.
    pub max_hashmap_bytes: Option<usize>,
    /// Agent calls in flight at once across the whole runtime (all connections, all
    /// concurrent executions and tasks); further calls wait their turn. `None`: no bound
    /// beyond each connection's own limits.
    pub max_concurrent_agent_calls: Option<usize>,
    /// Steps an execution may take — loop iterations and calls, counted deterministically —
    /// before it stops with a `step_limit` error (each spawned task has a budget of its own).
    /// `None`: no bound (the execution timeout still applies).
    pub max_steps: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_call_depth: 1000,
            max_emit_queue: Some(10_000),
            emit_await_timeout: Some(Duration::from_secs(30)),
            max_hashmap_bytes: None,
            max_concurrent_agent_calls: None,
            max_steps: None,
        }
    }
}

impl Limits {
    /// Sets the step budget of each execution.
    pub fn with_max_steps(mut self, max: Option<u64>) -> Limits {
        self.max_steps = max;
        self
    }

    /// Sets the emit queue bound.
    pub fn with_max_emit_queue(mut self, max: Option<usize>) -> Limits {
        self.max_emit_queue = max;
        self
    }

    /// Sets how long an emit-await waits.
    pub fn with_emit_await_timeout(mut self, timeout: Option<Duration>) -> Limits {
        self.emit_await_timeout = timeout;
        self
    }

    /// Sets how many agent calls may be in flight at once.
    pub fn with_max_concurrent_agent_calls(mut self, max: Option<usize>) -> Limits {
        self.max_concurrent_agent_calls = max.map(|n| n.max(1));
        self
    }

    /// Sets the hashmap memory bound.
    pub fn with_max_hashmap_bytes(mut self, bytes: Option<usize>) -> Limits {
        self.max_hashmap_bytes = bytes;
        self
    }

    /// Sets the call-depth limit.
    pub fn with_max_call_depth(mut self, depth: usize) -> Limits {
        self.max_call_depth = depth.max(1);
        self
    }
}

/// Where a runtime keeps hashmaps, ledgers, conversation memories and run journals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StateStore {
    /// Process memory (the default; optional per-hashmap JSON files with
    /// `RuntimeBuilder::persist_hashmap`).
    #[default]
    Memory,
    /// An SQLite database file: every write is committed before the program goes on, so a
    /// crash loses nothing acknowledged and a restarted program sees the state; enables
    /// resumable runs.
    Sqlite(std::path::PathBuf),
    /// A Redis server (`redis://HOST:PORT/DB`): state shared by every runtime pointing at it,
    /// atomic operations, change events across processes; enables resumable runs.
    Redis(String),
}

impl StateStore {
    /// `redis://…` / `rediss://…` is Redis; anything else is an SQLite file path.
    pub fn parse(text: &str) -> StateStore {
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            StateStore::Redis(text.to_string())
        } else {
            StateStore::Sqlite(std::path::PathBuf::from(text))
        }
    }
}
