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
    /// Include traces and extra detail in errors.
    pub debug: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            connection_overrides: HashMap::new(),
            tool_permissions: HashMap::new(),
            emit_mode: EmitMode::Immediate,
            execution_timeout: Duration::from_secs(300),
            debug: false,
        }
    }
}

/// Replaces parts of a connection from the IR. Build it with `..Default::default()` so new
/// fields do not break your code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionOverride {
    /// The API key to use instead of reading `api_key_env`.
    pub api_key: Option<String>,
    /// The endpoint to use instead of the IR's `base_url`.
    pub base_url: Option<String>,
    /// The model to use when an agent names none.
    pub default_model: Option<String>,
    /// Request timeout.
    pub timeout: Option<Duration>,
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
}

/// Resource limits of an execution (kept apart from [`RuntimeConfig`], whose fields are
/// exactly those of the runtime specification).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Maximum nesting of calls (the reference runtime's limit is 1000).
    pub max_call_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_call_depth: 1000,
        }
    }
}

impl Limits {
    /// Sets the call-depth limit.
    pub fn with_max_call_depth(mut self, depth: usize) -> Limits {
        self.max_call_depth = depth.max(1);
        self
    }
}
