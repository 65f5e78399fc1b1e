//! The typed load error.

use std::fmt;
use std::path::PathBuf;

/// Why an IR file could not be loaded.
///
/// Message texts are for people and may change; match on the variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that was read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The bytes are not well-formed JSON, or a value has the wrong JSON type.
    #[error("invalid IR JSON at line {line}, column {column}: {message}")]
    ParseError {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The IR's major version is not the one this runtime executes.
    #[error("IR version `{found}` is not supported (this runtime supports {supported})")]
    VersionMismatch {
        /// The `version` field of the file.
        found: String,
        /// The supported version range, e.g. `0.x.y`.
        supported: String,
    },
    /// A required top-level section is absent.
    #[error("IR is missing the required `{section}` section")]
    MissingSection {
        /// The absent key.
        section: String,
    },
    /// The IR parsed but fails validation.
    #[error("{0}")]
    Invalid(Box<Invalid>),
}

/// A validation failure: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The function (or section entry) that holds the fault, e.g. `main` or `agent Judge`.
    pub function: String,
    /// Index of the faulty instruction, when the fault is in an instruction.
    pub instruction: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.instruction {
            Some(idx) => {
                write!(
                    f,
                    "invalid IR in `{}` at instruction {idx}: {}",
                    self.function, self.reason
                )
            }
            None => write!(f, "invalid IR in `{}`: {}", self.function, self.reason),
        }
    }
}

impl LoadError {
    #[cold]
    pub(crate) fn invalid(
        function: impl Into<String>,
        instruction: Option<usize>,
        reason: impl Into<String>,
    ) -> LoadError {
        LoadError::Invalid(Box::new(Invalid {
            function: function.into(),
            instruction,
            reason: reason.into(),
        }))
    }

    /// The validation details, when this is [`LoadError::Invalid`].
    pub fn as_invalid(&self) -> Option<&Invalid> {
        match self {
            LoadError::Invalid(inv) => Some(inv),
            _ => None,
        }
    }
}
