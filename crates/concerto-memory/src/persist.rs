//! Hashmap files: loading, and atomic replacement.
//!
//! A save writes the whole file anew: a temporary file in the same directory
//! (`.<file name>.concerto-tmp-<pid>-<n>`, created exclusively), the JSON, `sync_all`, a
//! rename over the target, then an fsync of the directory (on Unix). A reader therefore sees
//! either the old file or the new one, never a mix, even if the process is killed at any
//! point. On an error before the rename the temporary file is removed and the old file is
//! untouched. A process killed mid-save leaves its temporary file behind; loading never reads
//! it, and [`crate::InMemoryStore::persist`] removes such leftovers of the file it binds.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use concerto_vm::{Str, Value};

use crate::codec;

/// Part of every temporary file's name, after `.<file name>`.
const TEMP_MARKER: &str = ".concerto-tmp-";

/// Distinguishes temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The directory of `path` (`.` for a bare file name) and its file name.
fn split(path: &Path) -> Result<(PathBuf, OsString), String> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} does not name a file", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_os_string()))
}

/// The prefix every temporary file of `name` starts with.
fn temp_prefix(name: &OsString) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(TEMP_MARKER);
    prefix
}

/// The temporary files that interrupted saves left beside `path` (saves in progress
/// included), sorted by name.
pub fn temp_files(path: &Path) -> Vec<PathBuf> {
    let Ok((dir, name)) = split(path) else {
        return Vec::new();
    };
    let prefix = temp_prefix(&name);
    let Ok(read) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(prefix.as_encoded_bytes())
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Removes the temporary files interrupted saves left beside `path`; how many were removed.
pub(crate) fn remove_temp_files(path: &Path) -> usize {
    temp_files(path)
        .into_iter()
        .filter(|p| fs::remove_file(p).is_ok())
        .count()
}

/// Reads a hashmap file: `Ok(None)` when it does not exist; an error (naming the path) when
/// it cannot be read or is not a valid hashmap file.
pub(crate) fn load(path: &Path) -> Result<Option<Vec<(Str, Value)>>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not valid JSON ({e}); fix or remove the file",
            path.display()
        )
    })?;
    codec::decode_entries(&json)
        .map(Some)
        .map_err(|e| format!("{} is not a valid hashmap file: {e}", path.display()))
}

/// Replaces `path` with `json` atomically (see the module documentation).
pub(crate) fn write_atomic(path: &Path, json: &serde_json::Value) -> Result<(), String> {
    let (dir, name) = split(path)?;
    let (tmp, file) = create_temp(&dir, &name)
        .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
    let written = write_and_sync(file, json, path);
    let renamed = written.and_then(|()| {
        fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
    });
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir).map_err(|e| {
        format!(
            "{} was replaced, but syncing its directory {} failed: {e}",
            path.display(),
            dir.display()
        )
    })
}

/// Creates a new, uniquely named temporary file beside the target.
fn create_temp(dir: &Path, name: &OsString) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = temp_prefix(name);
        tmp_name.push(format!("{pid}-{n}"));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
}

/// Writes the JSON and a final newline, gives the file the target's permissions (when the
/// target exists), and syncs it to disk.
fn write_and_sync(file: File, json: &serde_json::Value, target: &Path) -> Result<(), String> {
    let mut out = BufWriter::with_capacity(1 << 16, file);
    serde_json::to_writer_pretty(&mut out, json)
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    out.write_all(b"\n")
        .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| format!("cannot write {}: {}", target.display(), e.error()))?;
    if let Ok(meta) = fs::metadata(target) {
        // Best effort: a file the user made private stays private.
        let _ = file.set_permissions(meta.permissions());
    }
    file.sync_all()
        .map_err(|e| format!("cannot sync {} to disk: {e}", target.display()))
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for syncing here; the rename is still atomic.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_file_names_live_in_the_current_directory() {
        let (dir, name) = split(Path::new("store.json")).unwrap();
        assert_eq!(dir, PathBuf::from("."));
        assert_eq!(name, OsString::from("store.json"));
        assert!(split(Path::new("/")).is_err());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails after the temporary file was written.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), "keep").unwrap();
        let err = write_atomic(&target, &serde_json::json!({"a": 1})).unwrap_err();
        assert!(err.contains("cannot rename"), "{err}");
        assert!(temp_files(&target).is_empty());
        assert_eq!(fs::read_to_string(target.join("inside")).unwrap(), "keep");
    }

    #[test]
    fn temp_files_of_other_targets_are_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        fs::write(dir.path().join(".a.json.concerto-tmp-1-1"), "x").unwrap();
        fs::write(dir.path().join(".ab.json.concerto-tmp-1-1"), "x").unwrap();
        fs::write(dir.path().join(".a.json.backup"), "x").unwrap();
        assert_eq!(temp_files(&target).len(), 1);
        assert_eq!(remove_temp_files(&target), 1);
        assert!(dir.path().join(".ab.json.concerto-tmp-1-1").exists());
        assert!(dir.path().join(".a.json.backup").exists());
    }
}
