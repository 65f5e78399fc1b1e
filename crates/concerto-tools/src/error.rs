//! The errors of this crate's public functions: a sandbox that cannot be set up
//! ([`SandboxError`]) and a tool that reports a failure ([`ToolFailure`]).
//!
//! What a program's `std::fs` and `std::http` operations fail with is
//! [`OutsideError`](concerto_vm::host::OutsideError), defined next to the
//! [`ToolHost`](concerto_vm::host::ToolHost) trait.

use std::io;
use std::path::PathBuf;

/// Why a sandbox cannot be set up ([`FsSandbox::new`](crate::fs::FsSandbox::new),
/// [`HttpSandbox::try_new`](crate::http::HttpSandbox::try_new),
/// [`Tools::new`](crate::Tools::new)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// An allowed directory cannot be resolved or examined (it does not exist, or a
    /// directory on its way cannot be read).
    #[error("allowed directory `{}` cannot be used: {error}", path.display())]
    DirectoryUnusable {
        /// The directory as given.
        path: PathBuf,
        /// What the operating system answered (part of the message, so not a `source`).
        error: io::Error,
    },
    /// An allowed directory names something that is not a directory.
    #[error("allowed directory `{}` is not a directory", path.display())]
    NotADirectory {
        /// The directory as given.
        path: PathBuf,
    },
    /// An allowed directory exists but cannot be opened.
    #[error("allowed directory `{}` cannot be opened: {error}", path.display())]
    DirectoryUnopenable {
        /// The directory as given.
        path: PathBuf,
        /// What the operating system answered (part of the message, so not a `source`).
        error: io::Error,
    },
    /// An allowed-domain entry cannot be parsed (see [`crate::http`] for the forms).
    #[error("invalid allowed domain `{entry}`: {reason}")]
    InvalidDomain {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A failure a tool reported: a host-registered tool's handler returned it, or an MCP server
/// answered a call with `isError`. The program receives it as `Err(ToolError { message })`.
///
/// A handler builds one from its text: `Err("disk full".into())`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolFailure {
    /// The text the program sees as the `ToolError`'s `message`.
    pub message: String,
}

impl ToolFailure {
    /// A failure with the text `message`.
    pub fn new(message: impl Into<String>) -> ToolFailure {
        ToolFailure {
            message: message.into(),
        }
    }
}

impl From<String> for ToolFailure {
    fn from(message: String) -> ToolFailure {
        ToolFailure::new(message)
    }
}

impl From<&str> for ToolFailure {
    fn from(message: &str) -> ToolFailure {
        ToolFailure::new(message)
    }
}
