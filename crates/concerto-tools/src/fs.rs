//! Sandboxed `std::fs`: file operations inside the allowed directories only.
//!
//! # How a path is checked
//! 1. A relative program path is resolved against the process's current directory.
//! 2. The absolute path is normalised lexically (`.` dropped, `..` removes the previous
//!    component, repeated and trailing separators collapsed) and must lie inside one of the
//!    allowed roots, compared component by component (so `/data-evil` is not inside `/data`).
//!    A root matches both as it was given and in its canonical form.
//! 3. The operation then runs through a [`cap_std::fs::Dir`] opened on that root when the
//!    sandbox was built, with the remaining relative path. The capability layer resolves
//!    every component itself and refuses anything that would leave the root: symbolic
//!    links pointing outside it (relative or absolute, directly, through a symlinked
//!    directory or along a chain), so a symlink planted inside a root cannot be used to
//!    read, write, list or remove outside it.
//!
//! A refusal is [`OutsideError::Refused`] naming the path and how to allow it; an operation
//! that is permitted but fails (file missing, invalid UTF-8, a directory where a file was
//! expected) is [`OutsideError::Failed`] with the operating system's error kind
//! ([`OutsideFailureKind::Io`]) and text.
//!
//! Consequences of the rules above, on purpose:
//! - `..` is applied lexically: `root/link/../x` means `root/x` even when `link` is a
//!   symbolic link (the operation never leaves the root either way).
//! - A symbolic link whose target is absolute is refused even when the target lies inside
//!   the root, and so is a relative one that climbs out of the root and back in.
//! - `remove_file` on a symbolic link removes the link itself, never its target (as the
//!   operating system does).
//! - Hard links cannot be told apart from ordinary files: a hard link inside a root to a
//!   file outside it must not be created by whoever prepares the directory.
//!
//! # Writes
//! `write_file` writes the whole content to a fresh temporary file next to the target
//! (`.<name>.<pid>.<n>.tmp`, same directory, same capability handle), flushes it to disk,
//! copies the permissions of the file it replaces and renames it over the target, so a
//! reader sees either the old or the new file, never half of one. When the target is a
//! symbolic link (inside the root), the content is written in place through the link
//! instead, because renaming would replace the link. `append_file` opens the file in
//! append mode (creating it) and writes the content with one call.
//!
//! Every blocking file call runs on tokio's blocking pool ([`tokio::task::spawn_blocking`]).

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use concerto_vm::host::{FsReply, FsRequest, HostError, OutsideError, OutsideFailureKind};

use crate::SandboxError;

/// How a refusal tells the user to allow a directory.
const ALLOW_HINT: &str = "allow a directory with --allow-fs DIR";

/// Distinguishes the temporary files of concurrent writes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One allowed directory.
struct Root {
    /// The canonical path (what [`FsSandbox::roots`] reports).
    canonical: PathBuf,
    /// The path as given, made absolute and normalised (may differ from `canonical` when it
    /// goes through a symbolic link).
    given: PathBuf,
    /// The capability handle every operation goes through.
    dir: Arc<Dir>,
}

/// The sandboxed file system behind `std::fs`: operations inside the allowed directories
/// only (see the [module documentation](self)).
pub struct FsSandbox {
    roots: Vec<Root>,
    /// The canonical roots, in order, for [`FsSandbox::roots`].
    canonical: Vec<PathBuf>,
}

impl fmt::Debug for FsSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsSandbox")
            .field("roots", &self.canonical)
            .finish()
    }
}

impl Default for FsSandbox {
    fn default() -> FsSandbox {
        FsSandbox::none()
    }
}

impl FsSandbox {
    /// A sandbox allowing the directories `roots` (and everything below them). Each root
    /// must exist and be a directory; relative roots are taken from the current directory.
    /// The capability handles are opened now.
    ///
    /// # Errors
    /// The [`SandboxError`] of the first root that does not exist or cannot be examined
    /// ([`SandboxError::DirectoryUnusable`]), is not a directory
    /// ([`SandboxError::NotADirectory`]) or cannot be opened
    /// ([`SandboxError::DirectoryUnopenable`]).
    pub fn new(roots: &[PathBuf]) -> Result<FsSandbox, SandboxError> {
        let mut out = Vec::with_capacity(roots.len());
        for root in roots {
            let unusable = |error| SandboxError::DirectoryUnusable {
                path: root.clone(),
                error,
            };
            let canonical = std::fs::canonicalize(root).map_err(unusable)?;
            let meta = std::fs::metadata(&canonical).map_err(unusable)?;
            if !meta.is_dir() {
                return Err(SandboxError::NotADirectory { path: root.clone() });
            }
            let dir = Dir::open_ambient_dir(&canonical, ambient_authority()).map_err(|error| {
                SandboxError::DirectoryUnopenable {
                    path: root.clone(),
                    error,
                }
            })?;
            let given = if root.is_absolute() {
                normalize(root)
            } else {
                match std::env::current_dir() {
                    Ok(cwd) => normalize(&cwd.join(root)),
                    Err(_) => canonical.clone(),
                }
            };
            out.push(Root {
                canonical,
                given,
                dir: Arc::new(dir),
            });
        }
        let canonical = out.iter().map(|r| r.canonical.clone()).collect();
        Ok(FsSandbox {
            roots: out,
            canonical,
        })
    }

    /// A sandbox with no allowed directory: every operation is refused.
    pub fn none() -> FsSandbox {
        FsSandbox {
            roots: Vec::new(),
            canonical: Vec::new(),
        }
    }

    /// The allowed directories, canonical.
    pub fn roots(&self) -> &[PathBuf] {
        &self.canonical
    }

    /// Runs one `std::fs` operation.
    ///
    /// # Errors
    /// [`OutsideError::Refused`] when the path is outside the allowed directories
    /// (lexically or through a symbolic link); [`OutsideError::Host`] (a `Failed`
    /// [`HostError`]) when the current directory is unknown or the blocking pool is gone;
    /// [`OutsideError::Failed`] when the operation is permitted but fails.
    pub async fn run(&self, request: FsRequest) -> Result<FsReply, OutsideError> {
        let (op, path) = op_and_path(&request);
        let (dir, relative) = self.locate(op, path)?;
        let shown = path.to_string();
        let roots = self.roots_text();
        let outcome = tokio::task::spawn_blocking(move || perform(&dir, &relative, request))
            .await
            .map_err(|e| HostError::failed(format!("std::fs::{op}: `{shown}`: {e}")))?;
        match outcome {
            Ok(reply) => Ok(reply),
            Err(e) if is_escape(&e) => Err(OutsideError::refused(format!(
                "std::fs::{op}: `{shown}` leads outside the allowed directories ({roots}) \
                 through a symbolic link; {ALLOW_HINT}"
            ))),
            Err(e) => Err(OutsideError::failed(
                OutsideFailureKind::Io(e.kind()),
                e.to_string(),
            )),
        }
    }

    /// The root holding `path` and the path relative to it, or the refusal.
    fn locate(&self, op: &str, path: &str) -> Result<(Arc<Dir>, PathBuf), OutsideError> {
        let raw = Path::new(path);
        let absolute = if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            let cwd = std::env::current_dir().map_err(|e| {
                HostError::failed(format!(
                    "std::fs::{op}: `{path}`: the current directory is unknown ({e})"
                ))
            })?;
            cwd.join(raw)
        };
        let normal = normalize(&absolute);
        // The most specific root wins (a root may lie inside another).
        let mut best: Option<(usize, &Root, PathBuf)> = None;
        for root in &self.roots {
            for base in [&root.given, &root.canonical] {
                if let Ok(rest) = normal.strip_prefix(base) {
                    let depth = base.components().count();
                    if best.as_ref().is_none_or(|(d, _, _)| depth > *d) {
                        best = Some((depth, root, rest.to_path_buf()));
                    }
                }
            }
        }
        let Some((_, root, mut rest)) = best else {
            let shown = if raw.is_absolute() {
                format!("`{path}`")
            } else {
                format!("`{path}` (`{}`)", normal.display())
            };
            return Err(OutsideError::refused(format!(
                "std::fs::{op}: {shown} is outside the allowed directories ({}); {ALLOW_HINT}",
                self.roots_text()
            )));
        };
        // Keep a trailing separator: `file/` must fail as the OS makes it fail.
        if !rest.as_os_str().is_empty() && ends_with_separator(path) {
            rest.push("");
        }
        Ok((Arc::clone(&root.dir), rest))
    }

    fn roots_text(&self) -> String {
        if self.canonical.is_empty() {
            "none are allowed".to_string()
        } else {
            self.canonical
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// The operation's program name and its path.
fn op_and_path(request: &FsRequest) -> (&'static str, &str) {
    match request {
        FsRequest::Read(p) => ("read_file", p),
        FsRequest::Write(p, _) => ("write_file", p),
        FsRequest::Append(p, _) => ("append_file", p),
        FsRequest::Exists(p) => ("exists", p),
        FsRequest::ListDir(p) => ("list_dir", p),
        FsRequest::Remove(p) => ("remove_file", p),
        FsRequest::Size(p) => ("file_size", p),
    }
}

/// Lexical normalisation of an absolute path: `.` dropped, `..` pops (never above the
/// root), separators collapsed.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(p) => out.push(p.as_os_str()),
            Component::RootDir => out.push(Component::RootDir.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                // `pop` refuses to remove the root (or a prefix), which is what we want.
                if out.file_name().is_some() {
                    out.pop();
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    out
}

fn ends_with_separator(path: &str) -> bool {
    path.ends_with('/') || (cfg!(windows) && path.ends_with('\\'))
}

/// Whether an error is the capability layer refusing to leave the root.
fn is_escape(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::PermissionDenied
        && error
            .get_ref()
            .is_some_and(|inner| inner.to_string() == "a path led outside of the filesystem")
}

/// The path cap-std is given for the root itself.
fn target(relative: &Path) -> &Path {
    if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    }
}

/// Runs `request` on `dir` at `relative` (blocking).
fn perform(dir: &Dir, relative: &Path, request: FsRequest) -> io::Result<FsReply> {
    let path = target(relative);
    match request {
        FsRequest::Read(_) => dir.read_to_string(path).map(FsReply::Text),
        FsRequest::Write(_, content) => write_file(dir, relative, content.as_bytes()),
        FsRequest::Append(_, content) => {
            let mut options = OpenOptions::new();
            options.append(true).create(true);
            let mut file = dir.open_with(path, &options)?;
            file.write_all(content.as_bytes())?;
            file.flush()?;
            Ok(FsReply::Done)
        }
        FsRequest::Exists(_) => match dir.metadata(path) {
            Ok(_) => Ok(FsReply::Bool(true)),
            Err(e) if is_escape(&e) => Err(e),
            Err(_) => Ok(FsReply::Bool(false)),
        },
        FsRequest::ListDir(_) => {
            let mut names = Vec::new();
            for entry in dir.read_dir(path)? {
                let name: OsString = entry?.file_name();
                names.push(name.to_string_lossy().into_owned());
            }
            names.sort();
            Ok(FsReply::Names(names))
        }
        FsRequest::Remove(_) => dir.remove_file(path).map(|()| FsReply::Done),
        FsRequest::Size(_) => dir.metadata(path).map(|m| FsReply::Size(m.len())),
    }
}

/// `write_file`: temporary file + rename in the same directory (see the module docs).
fn write_file(dir: &Dir, relative: &Path, content: &[u8]) -> io::Result<FsReply> {
    let through_link = dir
        .symlink_metadata(relative)
        .is_ok_and(|m| m.file_type().is_symlink());
    let name = match relative.file_name() {
        Some(name) if !through_link && !relative.as_os_str().as_encoded_bytes().ends_with(b"/") => {
            name.to_os_string()
        }
        // The root itself, a trailing separator or a symbolic link: write in place and let
        // the capability layer and the OS decide (a link leaving the root is refused).
        _ => {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            let mut file = dir.open_with(target(relative), &options)?;
            file.write_all(content)?;
            file.flush()?;
            file.sync_data()?;
            return Ok(FsReply::Done);
        }
    };
    let parent = relative.parent().unwrap_or(Path::new(""));
    let mut temp_name = OsString::from(".");
    temp_name.push(&name);
    temp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = parent.join(&temp_name);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    let mut file = dir.open_with(&temp, &options)?;
    let written = (|| {
        file.write_all(content)?;
        file.flush()?;
        if let Ok(existing) = dir.metadata(relative)
            && existing.is_file()
        {
            file.set_permissions(existing.permissions())?;
        }
        file.sync_data()?;
        drop(file);
        dir.rename(&temp, dir, relative)
    })();
    if let Err(e) = written {
        // Best effort: the temporary file must not stay behind; the write's error is what
        // the program needs to see.
        let _ = dir.remove_file(&temp);
        return Err(e);
    }
    Ok(FsReply::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_lexical_and_never_climbs_above_the_root() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d/")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            normalize(Path::new("/a/../../../etc")),
            PathBuf::from("/etc")
        );
        assert_eq!(normalize(Path::new("//a//b")), PathBuf::from("/a/b"));
        assert_eq!(normalize(Path::new("/..")), PathBuf::from("/"));
    }

    #[test]
    fn the_escape_error_of_the_capability_layer_is_recognised() {
        let escape = io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a path led outside of the filesystem",
        );
        assert!(is_escape(&escape));
        assert!(!is_escape(&io::Error::from(
            io::ErrorKind::PermissionDenied
        )));
        assert!(!is_escape(&io::Error::from(io::ErrorKind::NotFound)));
    }

    #[tokio::test]
    async fn with_no_root_everything_is_refused() {
        let sandbox = FsSandbox::none();
        let err = sandbox
            .run(FsRequest::Exists("/tmp".into()))
            .await
            .unwrap_err();
        let OutsideError::Refused(message) = err else {
            panic!("not a refusal: {err:?}");
        };
        assert!(message.contains("none are allowed"), "{message}");
        assert!(message.contains("--allow-fs DIR"), "{message}");
    }

    #[tokio::test]
    async fn a_permitted_operation_that_fails_is_a_failure_of_its_io_kind() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = FsSandbox::new(&[root.path().to_path_buf()]).unwrap();
        let missing = root.path().join("missing.txt").display().to_string();
        let err = sandbox.run(FsRequest::Read(missing)).await.unwrap_err();
        let OutsideError::Failed(failure) = err else {
            panic!("not a failure: {err:?}");
        };
        assert_eq!(
            failure.kind,
            OutsideFailureKind::Io(io::ErrorKind::NotFound)
        );
        // The program's text is the operating system's, as before.
        assert_eq!(
            failure.message,
            io::Error::from_raw_os_error(2).to_string(),
            "ENOENT"
        );
        // Outside the root: a refusal naming the path, not a failure.
        let err = sandbox
            .run(FsRequest::Read("/etc/hostname".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OutsideError::Refused(m) if m.contains("`/etc/hostname` is outside")),
            "{err:?}"
        );
    }

    #[test]
    fn a_root_that_cannot_be_used_is_named_by_its_variant() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("missing");
        let err = FsSandbox::new(std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            matches!(&err, SandboxError::DirectoryUnusable { path, error }
                if *path == missing && error.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "allowed directory `{}` cannot be used: ",
                missing.display()
            )),
            "{err}"
        );
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = FsSandbox::new(std::slice::from_ref(&file)).unwrap_err();
        assert!(
            matches!(&err, SandboxError::NotADirectory { path } if *path == file),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("allowed directory `{}` is not a directory", file.display())
        );
    }
}
