//! Reading IR: bytes → [`IrModule`] (parse) → [`Program`] (validate and lower).

use std::path::Path;

use crate::error::LoadError;
use crate::model::{IrModule, RawModule};
use crate::program::Program;

/// The IR major version this runtime executes.
pub const SUPPORTED_MAJOR: u64 = 0;
/// The IR minor version this runtime was written against.
pub const SUPPORTED_MINOR: u64 = 1;

const REQUIRED_SECTIONS: [&str; 4] = ["version", "module", "source_file", "metadata"];

/// Parses IR bytes into the serde model, without validating it.
///
/// # Errors
/// [`LoadError::ParseError`] for malformed JSON or a value of the wrong shape,
/// [`LoadError::MissingSection`] when a required top-level key is absent, and
/// [`LoadError::Invalid`] for a file that mixes the sections of the two compilers (see
/// [`Dialect`](crate::model::Dialect)).
pub fn parse_bytes(bytes: &[u8]) -> Result<IrModule, LoadError> {
    let raw = serde_json::from_slice::<RawModule>(bytes)
        .map_err(|err| classify_parse_error(bytes, err))?;
    raw.into_module()
        .map_err(|reason| LoadError::invalid("sections", None, reason))
}

/// Loads, validates and lowers IR bytes.
///
/// # Errors
/// Any [`LoadError`] except `Io`.
pub fn load_bytes(bytes: &[u8]) -> Result<Program, LoadError> {
    let module = parse_bytes(bytes)?;
    crate::lower::lower(module)
}

/// Loads, validates and lowers IR text.
///
/// # Errors
/// Any [`LoadError`] except `Io`.
pub fn load_str(text: &str) -> Result<Program, LoadError> {
    load_bytes(text.as_bytes())
}

/// Reads, validates and lowers an IR file.
///
/// # Errors
/// [`LoadError::Io`] when the file cannot be read, otherwise as [`load_bytes`].
pub fn load_path(path: impl AsRef<Path>) -> Result<Program, LoadError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_bytes(&bytes)
}

/// Checks the IR version against what this runtime executes.
///
/// The rule: the version must be `MAJOR.MINOR.PATCH`; a different MAJOR is refused; a
/// different MINOR loads with a warning (returned); PATCH is ignored.
///
/// # Errors
/// [`LoadError::VersionMismatch`] for another major version or a malformed version string.
pub fn check_version(version: &str) -> Result<Option<String>, LoadError> {
    let mismatch = || LoadError::VersionMismatch {
        found: version.to_string(),
        supported: format!("{SUPPORTED_MAJOR}.x.y"),
    };
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() != 3 {
        return Err(mismatch());
    }
    let mut nums = [0u64; 3];
    for (slot, part) in nums.iter_mut().zip(&parts) {
        let core = part.split(['-', '+']).next().unwrap_or("");
        if core.is_empty() || !core.bytes().all(|b| b.is_ascii_digit()) {
            return Err(mismatch());
        }
        *slot = core.parse().map_err(|_| mismatch())?;
    }
    if nums[0] != SUPPORTED_MAJOR {
        return Err(mismatch());
    }
    if nums[1] != SUPPORTED_MINOR {
        return Ok(Some(format!(
            "IR version {version} differs in its minor version from {SUPPORTED_MAJOR}.{SUPPORTED_MINOR}.x; loading anyway"
        )));
    }
    Ok(None)
}

/// Turns a serde error into a typed load error. A `missing field` error reported at the
/// closing brace of the top-level object is a missing section.
fn classify_parse_error(bytes: &[u8], err: serde_json::Error) -> LoadError {
    let message = err.to_string();
    if err.is_data() {
        for section in REQUIRED_SECTIONS {
            let needle = format!("missing field `{section}`");
            if message.starts_with(&needle) && at_top_level_close(bytes, err.line(), err.column()) {
                return LoadError::MissingSection {
                    section: section.to_string(),
                };
            }
        }
    }
    // serde_json appends " at line L column C"; the location has its own fields.
    let text = match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message,
    };
    LoadError::ParseError {
        line: err.line(),
        column: err.column(),
        message: text,
    }
}

/// Whether (line, column) is the position of the last `}` in the input.
fn at_top_level_close(bytes: &[u8], line: usize, column: usize) -> bool {
    let Some(last) = bytes.iter().rposition(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    if bytes[last] != b'}' {
        return false;
    }
    let before = &bytes[..last];
    let close_line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let close_column = last - line_start + 1;
    close_line == line && close_column == column
}
