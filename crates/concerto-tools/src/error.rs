//! The errors of this crate's public functions: a sandbox that cannot be set up
//! ([`SandboxError`]).
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
