//! [`RuntimeError`] and [`SetupError`]: why the runtime could not do what the host asked.

use std::path::PathBuf;

use concerto_ir::LoadError;
use concerto_vm::VmError;
use concerto_vm::host::HostError;

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
    /// The runtime could not be set up as asked.
    #[error("{0}")]
    Setup(#[from] SetupError),
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

/// Why the runtime could not be set up as asked (by [`crate::RuntimeBuilder::build`], or
/// when a program loads or first runs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// Two settings that exclude each other were both chosen.
    #[error("{first} and {second} cannot be used together: choose one")]
    Conflict {
        /// The setting chosen first.
        first: &'static str,
        /// The one that conflicts with it.
        second: &'static str,
    },
    /// A connection override's fallbacks cannot work as given.
    #[error("connection override `{connection}`: {reason}")]
    Fallback {
        /// The connection whose override it is.
        connection: String,
        /// What is wrong.
        reason: String,
    },
    /// A recording to replay could not be read.
    #[error("cannot replay `{}`: {reason}", path.display())]
    Replay {
        /// The recording.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file to record to could not be created.
    #[error("cannot record to `{}`: {source}", path.display())]
    Record {
        /// The recording.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The durable or shared state store could not be opened.
    #[error("state store {store}: {source}")]
    StateStore {
        /// Which store (an SQLite path; a Redis location is not shown: it may hold a password).
        store: String,
        /// What failed.
        #[source]
        source: HostError,
    },
    /// The sandbox (`std::fs` roots, `std::http` domains) is not valid.
    #[error("the sandbox cannot be set up: {0}")]
    Sandbox(#[from] concerto_tools::SandboxError),
    /// `Limits::max_hashmap_bytes` was set with a store that does not enforce it.
    #[error(
        "Limits::max_hashmap_bytes (--max-hashmap-bytes) bounds the built-in in-memory store \
         only; the store in use (SQLite, Redis or the host's own) does not enforce it. Remove \
         the limit, or use the database's own limits (e.g. Redis maxmemory)"
    )]
    HashmapLimitNotEnforced,
    /// Hashmap persistence or change listeners were asked of a store that is not the
    /// built-in one.
    #[error("{what} needs the built-in memory store (not a state store or the host's own store)")]
    NeedsBuiltinStore {
        /// What was asked.
        what: &'static str,
    },
    /// Persistence or a listener names a hashmap the program does not declare.
    #[error("the program declares no hashmap `{0}`")]
    UnknownHashmap(String),
    /// A persisted hashmap's file could not be read.
    #[error("hashmap `{name}`: {source}")]
    Persist {
        /// The hashmap.
        name: String,
        /// What failed.
        #[source]
        source: HostError,
    },
    /// `run_tests` with a durable or shared state store.
    #[error(
        "tests run with a fresh in-memory store each; a state store (--state) cannot be used \
         with `concerto test`"
    )]
    TestsNeedMemoryStore,
    /// A setting needs a Cargo feature of `concerto-runtime` this build does not have.
    #[error("{what} needs the `{feature}` feature of concerto-runtime, which this build lacks")]
    FeatureOff {
        /// The feature (`sqlite`, `redis`, `http`, `mcp`, `otel`).
        feature: &'static str,
        /// What needed it.
        what: &'static str,
    },
    /// The export of spans asked for by `RuntimeConfig::otlp_endpoint` could not be set up.
    #[error("RuntimeConfig::otlp_endpoint: {0}")]
    Otlp(String),
    /// A breakpoint does not fit the program.
    #[error(transparent)]
    Breakpoint(#[from] concerto_vm::BreakpointError),
}
