//! How host components report failure: [`HostError`] and its [`HostErrorKind`], and the
//! details of a failed model-provider call ([`ProviderFailure`]).

/// What a host component reports when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// Category.
    pub kind: HostErrorKind,
    /// Human-readable text (must never contain secrets such as API keys).
    pub message: String,
    /// What a model provider answered, when the failure came from one (the connection layer
    /// fills it in; it becomes the fields of the program's `AgentError`).
    pub provider: Option<Box<ProviderFailure>>,
}

/// The details of a failed call to a model provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProviderFailure {
    /// What kind of failure it was.
    pub kind: ProviderFailureKind,
    /// The HTTP status of the last attempt, when the provider answered with one.
    pub status: Option<u16>,
    /// The provider's `Retry-After`, in milliseconds, when it sent one.
    pub retry_after_ms: Option<u64>,
}

/// The kind of a [`ProviderFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProviderFailureKind {
    /// 429, or a provider's own rate-limit or overload error.
    RateLimited,
    /// The provider answered with an error status (or an error inside a reply).
    #[default]
    Provider,
    /// No usable reply arrived: the connection could not be made or broke, or the reply
    /// was malformed or cut short.
    Connection,
    /// No reply within the time limit.
    Timeout,
}

impl HostError {
    /// This error with the provider's details.
    pub fn with_provider(mut self, failure: ProviderFailure) -> HostError {
        self.provider = Some(Box::new(failure));
        self
    }
}

/// The category of a [`HostError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostErrorKind {
    /// The component does not implement the operation.
    Unsupported,
    /// The operation needs a permission that was not granted.
    NotEnabled,
    /// The operation ran out of time.
    Timeout,
    /// A configured limit was reached.
    Limit,
    /// The operation failed.
    Failed,
    /// A declaration or a value does not have the type the program declares (an MCP tool
    /// whose declared signature disagrees with the server's schemas, or whose result does
    /// not convert to the declared return type).
    Type,
    /// The run was taken over by another process (a newer lease epoch fences this one's
    /// writes out); the run stops here and writes nothing more. Not catchable.
    Fenced,
}

impl HostError {
    /// A failure.
    pub fn failed(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Failed,
            message: message.into(),
            provider: None,
        }
    }

    /// An unimplemented operation, naming the feature.
    pub fn unsupported(feature: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Unsupported,
            message: feature.into(),
            provider: None,
        }
    }

    /// A denied operation, naming what was denied and how to allow it.
    pub fn not_enabled(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::NotEnabled,
            message: message.into(),
            provider: None,
        }
    }

    /// A write refused because a newer lease epoch holds the run.
    pub fn fenced(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Fenced,
            message: message.into(),
            provider: None,
        }
    }

    /// A limit breach.
    pub fn limit(message: impl Into<String>) -> HostError {
        HostError {
            kind: HostErrorKind::Limit,
            message: message.into(),
            provider: None,
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HostError {}

impl From<HostError> for crate::VmError {
    fn from(err: HostError) -> crate::VmError {
        use crate::ErrorKind;
        let kind = match err.kind {
            HostErrorKind::Unsupported => ErrorKind::Unsupported,
            HostErrorKind::NotEnabled => ErrorKind::NotEnabled,
            HostErrorKind::Timeout => ErrorKind::Timeout,
            HostErrorKind::Limit => ErrorKind::Limit,
            HostErrorKind::Failed => ErrorKind::Host,
            HostErrorKind::Type => ErrorKind::Type,
            HostErrorKind::Fenced => ErrorKind::Cancelled,
        };
        let message = match err.kind {
            HostErrorKind::Unsupported => format!("unsupported: {}", err.message),
            HostErrorKind::NotEnabled => format!("not enabled: {}", err.message),
            _ => err.message,
        };
        crate::VmError::new(kind, message)
    }
}
