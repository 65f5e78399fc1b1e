//! Adversarial tests of the sandbox: hostile `std::fs` paths, hostile `std::http` URLs and
//! redirects, processes and tools that were not enabled.
//!
//! Every test drives the public API (`Tools::new(Policy { .. })` and its [`ToolHost`]
//! methods) as the VM does, and counts *attempts*: one hostile operation each. An attempt
//! *escaped* when it succeeded or had an effect outside what the policy allows, and effects
//! are observed, not inferred from return values:
//! - files: everything outside the allowed roots (and the exact outside file an attempt
//!   aims at) is snapshotted before and after each attempt: kind, content, size, inode,
//!   modification time, directory entries, symbolic link targets;
//! - network: local HTTP servers on 127.0.0.1 log every connection and request; a server
//!   that is not allowed must see none, an allowed one must not see a request the policy
//!   refuses;
//! - processes: fixtures (`tests/fixtures/sandbox/spawn_marker.py`) create a marker file
//!   when started and log the MCP tools they are asked to run;
//! - host-registered tools: handlers count their runs.
//!
//! Each category prints `sandbox[<category>]: N attempts, M escaped` (see it with
//! `--nocapture`) and fails on any escape, on a refusal whose message does not say what was
//! refused and how to allow it, on a failed positive control, or on fewer attempts than
//! expected.
//!
//! Out of scope: races that swap a path component for a symbolic link between the check and
//! the use (the sandbox resolves every component through a capability handle, but a
//! deterministic test of such a race is not possible here), hard links (documented as the
//! directory preparer's responsibility), DNS rebinding (documented), TLS.
#![cfg(unix)]
// Each category reports its tally on stdout (visible with `--nocapture`).
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concerto_tools::{Permission, Policy, Tools};
use concerto_vm::host::{
    FsReply, FsRequest, HostError, HostErrorKind, HttpReply, HttpRequest, OutsideError,
    OutsideFailureKind, Program, ToolHost,
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------
// Tally
// ---------------------------------------------------------------------------------------

/// The attempts of one category and what went wrong.
struct Tally {
    category: &'static str,
    attempts: usize,
    escaped: Vec<String>,
    bad_messages: Vec<String>,
    controls: usize,
    failed_controls: Vec<String>,
}

impl Tally {
    fn new(category: &'static str) -> Tally {
        Tally {
            category,
            attempts: 0,
            escaped: Vec::new(),
            bad_messages: Vec::new(),
            controls: 0,
            failed_controls: Vec::new(),
        }
    }

    fn control(&mut self, ok: bool, what: String) {
        self.controls += 1;
        if !ok {
            self.failed_controls.push(what);
        }
    }

    /// Prints the tally line and fails on any escape, poor message or failed control.
    fn finish(self, min_attempts: usize) {
        println!(
            "sandbox[{}]: {} attempts, {} escaped ({} positive controls, {} failed; {} refusals \
             with a poor message)",
            self.category,
            self.attempts,
            self.escaped.len(),
            self.controls,
            self.failed_controls.len(),
            self.bad_messages.len()
        );
        for e in &self.escaped {
            println!("  ESCAPED [{}] {e}", self.category);
        }
        for m in &self.bad_messages {
            println!("  MESSAGE [{}] {m}", self.category);
        }
        for c in &self.failed_controls {
            println!("  CONTROL [{}] {c}", self.category);
        }
        assert!(
            self.escaped.is_empty(),
            "sandbox[{}]: {} of {} attempts escaped:\n{}",
            self.category,
            self.escaped.len(),
            self.attempts,
            self.escaped.join("\n")
        );
        assert!(
            self.bad_messages.is_empty(),
            "sandbox[{}]: refusals without a useful message:\n{}",
            self.category,
            self.bad_messages.join("\n")
        );
        assert!(
            self.failed_controls.is_empty(),
            "sandbox[{}]: positive controls failed:\n{}",
            self.category,
            self.failed_controls.join("\n")
        );
        assert!(
            self.attempts >= min_attempts,
            "sandbox[{}]: only {} attempts, expected at least {min_attempts}",
            self.category,
            self.attempts
        );
    }
}

/// A string for messages: escaped, and cut when very long.
fn shown(text: &str) -> String {
    let debug = format!("{text:?}");
    if debug.len() > 160 {
        let mut cut = 120;
        while !debug.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…({} chars)", &debug[..cut], text.len())
    } else {
        debug
    }
}

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// A directory tree to attack, and its snapshots
// ---------------------------------------------------------------------------------------

/// Length of every sentinel file outside the roots (a `file_size` answer of this length
/// is a leak).
const SECRET_LEN: usize = 4243;

fn secret(tag: &str) -> String {
    let mut text = format!("SECRET {tag} ");
    while text.len() < SECRET_LEN {
        text.push('x');
    }
    text
}

/// A temporary tree (removed on drop) holding allowed roots and sentinels around them.
struct World {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    cwd: PathBuf,
    next: AtomicUsize,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("concerto-sandbox-")
            .tempdir()
            .unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        World {
            _tmp: tmp,
            base,
            cwd: std::env::current_dir().unwrap(),
            next: AtomicUsize::new(0),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn file(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn sentinel(&self, rel: &str) {
        self.file(rel, &secret(rel));
    }

    /// (Re)creates the symbolic link `rel` → `target`.
    fn link(&self, rel: &str, target: impl AsRef<Path>) {
        let p = self.path(rel);
        if let Ok(meta) = std::fs::symlink_metadata(&p) {
            if meta.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        symlink(target, p).unwrap();
    }

    /// A name no file has.
    fn unique(&self, what: &str) -> String {
        format!(
            "sbx-escape-{}-{what}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `abs` written relative to the current directory (`../../..` up to `/`, then down).
    fn relative(&self, abs: &Path) -> String {
        let ups = self
            .cwd
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count();
        let down = abs.strip_prefix("/").unwrap().display().to_string();
        format!("{}{down}", "../".repeat(ups))
    }

    /// Where `path` lands lexically (what a naive implementation would open).
    fn lexical(&self, path: &str) -> PathBuf {
        let raw = Path::new(path);
        let abs = if raw.is_absolute() {
            raw.to_path_buf()
        } else {
            self.cwd.join(raw)
        };
        normalize(&abs)
    }

    /// Everything under the base except `skip` (the allowed roots), plus `probes` outside
    /// the base (not under /proc, /sys, /dev).
    fn snapshot(&self, skip: &[PathBuf], probes: &[PathBuf]) -> Snapshot {
        let mut out = BTreeMap::new();
        walk(&self.base, skip, &mut out);
        for p in probes {
            if p.starts_with(&self.base)
                || skip.iter().any(|s| p.starts_with(s))
                || ["/proc", "/sys", "/dev"].iter().any(|d| p.starts_with(d))
            {
                continue;
            }
            out.entry(p.clone()).or_insert_with(|| node(p, false));
        }
        out
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Missing,
    File {
        len: u64,
        ino: u64,
        mtime: (i64, i64),
        mode: u32,
        content: Vec<u8>,
    },
    Dir {
        mtime: Option<(i64, i64)>,
        entries: Option<Vec<String>>,
    },
    Link(PathBuf),
    Other,
}

impl Node {
    fn brief(&self) -> String {
        match self {
            Node::Missing => "missing".into(),
            Node::File {
                len,
                ino,
                mtime,
                content,
                ..
            } => format!(
                "file len={len} ino={ino} mtime={mtime:?} starts {:?}",
                String::from_utf8_lossy(&content[..content.len().min(24)])
            ),
            Node::Dir { mtime, entries } => format!("dir mtime={mtime:?} entries={entries:?}"),
            Node::Link(t) => format!("symlink -> {}", t.display()),
            Node::Other => "other".into(),
        }
    }
}

type Snapshot = BTreeMap<PathBuf, Node>;

fn node(path: &Path, deep: bool) -> Node {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Node::Missing;
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        Node::Link(std::fs::read_link(path).unwrap_or_default())
    } else if ft.is_dir() {
        Node::Dir {
            mtime: deep.then(|| (meta.mtime(), meta.mtime_nsec())),
            entries: deep.then(|| {
                let mut names: Vec<String> = std::fs::read_dir(path)
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                names
            }),
        }
    } else if ft.is_file() {
        Node::File {
            len: meta.len(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            mode: meta.mode(),
            content: if meta.len() <= 1 << 20 {
                std::fs::read(path).unwrap_or_default()
            } else {
                Vec::new()
            },
        }
    } else {
        Node::Other
    }
}

fn walk(path: &Path, skip: &[PathBuf], out: &mut Snapshot) {
    let n = node(path, true);
    let children = match &n {
        Node::Dir {
            entries: Some(e), ..
        } => e.clone(),
        _ => Vec::new(),
    };
    out.insert(path.to_path_buf(), n);
    for name in children {
        let child = path.join(name);
        if skip.contains(&child) {
            continue;
        }
        walk(&child, skip, out);
    }
}

fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (b, a) = (
            before.get(k).unwrap_or(&Node::Missing),
            after.get(k).unwrap_or(&Node::Missing),
        );
        if b != a {
            out.push(format!("{}: {} => {}", k.display(), b.brief(), a.brief()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// std::fs attempts
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Append,
    Exists,
    List,
    Remove,
    Size,
}

const OPS: [Op; 7] = [
    Op::Read,
    Op::Write,
    Op::Append,
    Op::Exists,
    Op::List,
    Op::Remove,
    Op::Size,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read_file",
            Op::Write => "write_file",
            Op::Append => "append_file",
            Op::Exists => "exists",
            Op::List => "list_dir",
            Op::Remove => "remove_file",
            Op::Size => "file_size",
        }
    }

    fn request(self, path: &str) -> FsRequest {
        let p = path.to_string();
        match self {
            Op::Read => FsRequest::Read(p),
            Op::Write => FsRequest::Write(p, "ESCAPED-WRITE".into()),
            Op::Append => FsRequest::Append(p, "ESCAPED-APPEND".into()),
            Op::Exists => FsRequest::Exists(p),
            Op::List => FsRequest::ListDir(p),
            Op::Remove => FsRequest::Remove(p),
            Op::Size => FsRequest::Size(p),
        }
    }

    /// Whether the operation changes files (never aimed at system files).
    fn destructive(self) -> bool {
        matches!(self, Op::Write | Op::Append | Op::Remove)
    }
}

/// What an attempt must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A `NotEnabled` refusal (anything else is an escape: the sandbox let it through).
    Refused,
    /// Anything, as long as nothing outside the roots is read, changed or revealed (paths
    /// that stay inside a root lexically, taken literally).
    Contained,
}

/// What a refusal message must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    /// Names the operation and the path, and `--allow-fs`.
    Path,
    /// As `Path`, and that no directory is allowed.
    NoRoots,
    /// `std::fs` is disabled, and the flag that did it.
    Disabled,
}

fn fs_message_ok(msg: Msg, op: Op, path: &str, message: &str) -> bool {
    let names = message.contains(&format!("std::fs::{}", op.name()))
        && message.contains(path)
        && message.contains("--allow-fs");
    match msg {
        Msg::Path => names,
        Msg::NoRoots => names && message.contains("none are allowed"),
        Msg::Disabled => {
            message.contains("std::fs is disabled") && message.contains("--disable-tool std::fs")
        }
    }
}

/// A reply that shows something from outside the roots.
fn leak(reply: &FsReply) -> Option<String> {
    match reply {
        FsReply::Text(t) if t.contains("SECRET") || t.contains("root:x:0:0") => {
            Some(format!("read {}", shown(t)))
        }
        FsReply::Names(n)
            if n.iter()
                .any(|x| x.starts_with("secret") || x == "passwd" || x == "outside") =>
        {
            Some(format!("listed {n:?}"))
        }
        FsReply::Size(s) if *s == SECRET_LEN as u64 => Some(format!("sized a sentinel ({s})")),
        _ => None,
    }
}

fn brief_fs(result: &Result<FsReply, OutsideError>) -> String {
    match result {
        Ok(FsReply::Text(t)) => format!("Ok(Text({}))", shown(t)),
        other => shown(&format!("{other:?}")),
    }
}

/// One sandbox under test and how to judge it.
struct Fs<'a> {
    tools: &'a Tools,
    world: &'a World,
    /// The allowed roots (not snapshotted: changes there are allowed).
    roots: Vec<PathBuf>,
    msg: Msg,
    /// Called before each attempt (recreates links a previous attempt removed).
    reset: Option<&'a (dyn Fn() + Sync)>,
}

impl Fs<'_> {
    async fn attempt(&self, t: &mut Tally, op: Op, path: &str, expect: Expect, probes: &[&Path]) {
        if let Some(reset) = self.reset {
            reset();
        }
        let mut watched: Vec<PathBuf> = probes.iter().map(|p| p.to_path_buf()).collect();
        let target = self.world.lexical(path);
        watched.push(target.clone());
        let before = self.world.snapshot(&self.roots, &watched);
        let result = self.tools.fs(op.request(path)).await;
        let after = self.world.snapshot(&self.roots, &watched);
        t.attempts += 1;
        let what = format!("{} {}", op.name(), shown(path));
        let mut escaped = Vec::new();
        let effects = diff(&before, &after);
        if !effects.is_empty() {
            escaped.push(format!(
                "changed outside the roots: {} (result {})",
                effects.join("; "),
                brief_fs(&result)
            ));
            // Undo a file the escape created outside the tree (best effort).
            if before.get(&target) == Some(&Node::Missing)
                && !target.starts_with(&self.world.base)
                && std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file())
            {
                let _ = std::fs::remove_file(&target);
            }
        }
        match (expect, &result) {
            (Expect::Refused, Err(OutsideError::Refused(message))) => {
                if !fs_message_ok(self.msg, op, path, message) {
                    t.bad_messages.push(format!("{what}: {}", shown(message)));
                }
            }
            (Expect::Refused, Err(OutsideError::Host(e))) => t.bad_messages.push(format!(
                "{what}: a host error ({:?}), not a refusal: {}",
                e.kind,
                shown(&e.message)
            )),
            (Expect::Refused, Ok(_) | Err(OutsideError::Failed(_))) => {
                escaped.push(format!("not refused, answered {}", brief_fs(&result)))
            }
            (Expect::Contained, Ok(reply)) => {
                if let Some(l) = leak(reply) {
                    escaped.push(l);
                }
            }
            (Expect::Contained, _) => {}
        }
        if !escaped.is_empty() {
            t.escaped.push(format!("{what}: {}", escaped.join("; ")));
        }
    }

    async fn control(&self, t: &mut Tally, request: FsRequest, expected: FsReply) {
        let what = format!("{request:?}");
        let got = self.tools.fs(request).await;
        let ok = matches!(&got, Ok(r) if *r == expected);
        t.control(ok, format!("{what}: expected {expected:?}, got {got:?}"));
    }

    /// `exists` on two refused paths, one naming a file that exists, one a file that does
    /// not: the answers must not differ (beyond the path they name).
    async fn no_oracle(&self, t: &mut Tally, existing: &str, missing: &str) {
        if let Some(reset) = self.reset {
            reset();
        }
        t.attempts += 1;
        let a = self.tools.fs(FsRequest::Exists(existing.into())).await;
        let b = self.tools.fs(FsRequest::Exists(missing.into())).await;
        // Messages name the path (and, for a relative one, where it lands): mask both.
        let shape = |r: &Result<FsReply, OutsideError>, p: &str| match r {
            Err(OutsideError::Refused(message)) => format!(
                "Refused({})",
                message
                    .replace(p, "<PATH>")
                    .replace(&self.world.lexical(p).display().to_string(), "<LEXICAL>")
            ),
            other => format!("{other:?}"),
        };
        let (sa, sb) = (shape(&a, existing), shape(&b, missing));
        if sa != sb || !sa.starts_with("Refused(") {
            t.escaped.push(format!(
                "exists() reveals whether an outside file exists: {} -> {sa} but {} -> {sb}",
                shown(existing),
                shown(missing)
            ));
        }
    }
}

/// The snapshot sees what an escape would do: a sentinel rewritten with the same content.
fn harness_detects_changes(t: &mut Tally, w: &World, roots: &[PathBuf], sentinel: &str) {
    let before = w.snapshot(roots, &[]);
    let content = std::fs::read(w.path(sentinel)).unwrap();
    let temp = w.path(sentinel).with_extension("harness");
    std::fs::write(&temp, &content).unwrap();
    std::fs::rename(&temp, w.path(sentinel)).unwrap();
    let after = w.snapshot(roots, &[]);
    t.control(
        !diff(&before, &after).is_empty(),
        format!("harness: an outside change to {sentinel} is seen"),
    );
}

fn fs_policy(roots: &[PathBuf]) -> Policy {
    Policy {
        fs_roots: roots.to_vec(),
        ..Policy::default()
    }
}

/// `base/root` (allowed) with ordinary files, and sentinels around it.
fn traversal_world() -> (World, PathBuf) {
    let w = World::new();
    let root = w.dir("root");
    w.file("root/inside.txt", "inside");
    w.file("root/scratch.txt", "scratch");
    w.file("root/sub/inner.txt", "inner");
    w.file("root/%2e%2e/decoy.txt", "decoy");
    w.sentinel("secret-top.txt");
    w.sentinel("outside/secret-out.txt");
    w.sentinel("outside/dir/secret-deep.txt");
    w.sentinel("root-evil/secret-evil.txt");
    (w, root)
}

// ---------------------------------------------------------------------------------------
// 1. Path traversal
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fs_traversal_never_leaves_the_root() {
    let (w, root) = traversal_world();
    let tools = Tools::new(fs_policy(std::slice::from_ref(&root))).unwrap();
    let fs = Fs {
        tools: &tools,
        world: &w,
        roots: vec![root.clone()],
        msg: Msg::Path,
        reset: None,
    };
    let mut t = Tally::new("fs-traversal");
    let r = root.display().to_string();
    let rr = w.relative(&root);

    // Positive controls: the root is usable, by absolute and relative paths, and `%2e%2e`
    // is a name like any other.
    for (p, want) in [
        (format!("{r}/inside.txt"), "inside"),
        (format!("{rr}/inside.txt"), "inside"),
        (format!("{r}/sub/../inside.txt"), "inside"),
        (format!("{r}/sub/inner.txt"), "inner"),
        (format!("{r}/%2e%2e/decoy.txt"), "decoy"),
        (format!("{r}/../root/inside.txt"), "inside"),
    ] {
        fs.control(&mut t, FsRequest::Read(p), FsReply::Text(want.into()))
            .await;
    }
    fs.control(
        &mut t,
        FsRequest::Exists(format!("{r}/missing.txt")),
        FsReply::Bool(false),
    )
    .await;
    fs.control(
        &mut t,
        FsRequest::Write(format!("{rr}/written.txt"), "w".into()),
        FsReply::Done,
    )
    .await;
    fs.control(
        &mut t,
        FsRequest::Read(format!("{r}/written.txt")),
        FsReply::Text("w".into()),
    )
    .await;

    for op in OPS {
        // A system file for reading, a fresh file for writing (never a real system file).
        let sys = if op.destructive() {
            format!("tmp/{}", w.unique("sys"))
        } else {
            "etc/passwd".to_string()
        };
        let mut paths: Vec<(String, Expect)> = Vec::new();
        for p in [&r, &rr] {
            let new = w.unique("new");
            for path in [
                format!("{p}/../outside/secret-out.txt"),
                format!("{p}/../secret-top.txt"),
                format!("{p}/sub/../../secret-top.txt"),
                format!("{p}/./../secret-top.txt"),
                format!("{p}/sub/./.././../secret-top.txt"),
                format!("{p}/../outside/{new}"),
                format!("{p}/{}{sys}", "../".repeat(12)),
                format!("{p}/.."),
                format!("{p}/../"),
                format!("{p}/../."),
                format!("{p}//..//secret-top.txt"),
                format!("{p}/..//outside//secret-out.txt/"),
                format!("{p}/../outside/secret-out.txt/"),
                format!("{p}/../outside/"),
                format!("{p}/../outside/dir"),
                format!("{p}/../root-evil/secret-evil.txt"),
                format!("{p}/sub/../../outside/dir/secret-deep.txt"),
                format!("{p}/inside.txt/../../secret-top.txt"),
                format!("{p}/inside.txt\0/../../secret-top.txt"),
                format!("{p}/../outside/secret-out.txt\0"),
                format!("{p}/sub\0/../../secret-top.txt"),
                format!(
                    "{p}/{}{}secret-top.txt",
                    "sub/".repeat(2000),
                    "../".repeat(2001)
                ),
                format!("{p}/{}{sys}", "../".repeat(3000)),
            ] {
                paths.push((path, Expect::Refused));
            }
            for path in [
                // Inside the root lexically: whatever happens stays there.
                format!("{p}/\0../secret-top.txt"),
                format!("{p}/../secret-top.txt\0/../root/scratch.txt"),
                format!("{p}/%2e%2e/secret-top.txt"),
                format!("{p}/%2E%2E/%2e%2e/outside/secret-out.txt"),
                format!("{p}/..%2fsecret-top.txt"),
                format!("{p}/%2e%2e%2fsecret-top.txt"),
                format!("{p}/.%2e/secret-top.txt"),
                format!("{p}/%252e%252e/secret-top.txt"),
                format!("{p}/..\\secret-top.txt"),
                format!("{p}/..\\..\\secret-top.txt"),
                format!("{p}/\u{2025}/secret-top.txt"),
                format!("{p}/\u{ff0e}\u{ff0e}/secret-top.txt"),
                format!("{p}/... /secret-top.txt"),
                format!("{p}/.../secret-top.txt"),
                format!("{p}/{}", "a".repeat(300)),
                format!("{p}/{}", "x/".repeat(20_000)),
            ] {
                paths.push((path, Expect::Contained));
            }
        }
        // Relative to the current directory (which is outside the root).
        let new = w.unique("rel");
        for path in [
            format!("../{new}"),
            format!("a/../../{new}"),
            format!("./../{new}"),
            format!("./{new}/../../{new}"),
            format!("%2e%2e/{new}"),
            new.clone(),
            "..".to_string(),
            ".".to_string(),
            "../".to_string(),
            String::new(),
            "~".to_string(),
            format!("~/{new}"),
            format!("{}{sys}", "../".repeat(12)),
        ] {
            paths.push((path, Expect::Refused));
        }
        for (path, expect) in paths {
            fs.attempt(&mut t, op, &path, expect, &[]).await;
        }
    }

    harness_detects_changes(
        &mut t,
        &w,
        std::slice::from_ref(&root),
        "outside/secret-out.txt",
    );
    // `exists` must not tell an existing outside file from a missing one.
    for p in [&r, &rr] {
        fs.no_oracle(
            &mut t,
            &format!("{p}/../secret-top.txt"),
            &format!("{p}/../missing-top.txt"),
        )
        .await;
        fs.no_oracle(
            &mut t,
            &format!("{p}/../outside/dir"),
            &format!("{p}/../outside/nodir"),
        )
        .await;
    }
    t.finish(7 * 60);
}

// ---------------------------------------------------------------------------------------
// 2. Absolute paths
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fs_absolute_paths_outside_the_root_are_refused() {
    let (w, root) = traversal_world();
    let tools = Tools::new(fs_policy(std::slice::from_ref(&root))).unwrap();
    let fs = Fs {
        tools: &tools,
        world: &w,
        roots: vec![root.clone()],
        msg: Msg::Path,
        reset: None,
    };
    let mut t = Tally::new("fs-absolute");
    let r = root.display().to_string();
    let base = w.base.display().to_string();
    let base_name = w.base.file_name().unwrap().to_string_lossy().into_owned();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    fs.control(
        &mut t,
        FsRequest::Read(format!("{r}/inside.txt")),
        FsReply::Text("inside".into()),
    )
    .await;
    fs.control(
        &mut t,
        FsRequest::Read(format!("{r}//sub///inner.txt")),
        FsReply::Text("inner".into()),
    )
    .await;

    for op in OPS {
        let mut paths: Vec<(String, Expect)> = Vec::new();
        if !op.destructive() {
            for p in [
                "/etc/passwd",
                "/etc/shadow",
                "/etc/",
                "/etc",
                "/",
                "//etc//passwd",
                "/./etc/passwd",
                "/../etc/passwd",
                "/../../../../etc/passwd",
                "/proc/self/environ",
                "/proc/self/cmdline",
                "/proc/self/cwd/Cargo.toml",
                "/proc/self/root/etc/passwd",
                "/dev/null",
                "/root",
            ] {
                paths.push((p.to_string(), Expect::Refused));
            }
            paths.push((format!("{home}/.bashrc"), Expect::Refused));
        }
        let new = w.unique("abs");
        for p in [
            w.s("outside/secret-out.txt"),
            w.s("secret-top.txt"),
            w.s("outside/dir/secret-deep.txt"),
            w.s("outside"),
            w.s("outside/"),
            base.clone(),
            format!("{base}/"),
            w.s(&format!("outside/{new}")),
            w.s(&new),
            format!("{r}/../outside"),
            format!("{r}/../outside/secret-out.txt"),
            format!("{r}/../../{base_name}/outside/secret-out.txt"),
            format!("{r}-evil/secret-evil.txt"),
            format!("{r}-evil"),
            format!("{r}x"),
            format!("{r}./secret"),
            format!("{base}/./outside/secret-out.txt"),
            format!("/proc/self/root{r}/inside.txt"),
            format!("/proc/self/root{base}/outside/secret-out.txt"),
            format!("/tmp/{new}"),
            format!("{home}/{new}"),
            format!("/{}", w.relative(&w.path("outside/secret-out.txt"))),
        ] {
            paths.push((p, Expect::Refused));
        }
        // Not absolute at all: resolved against the current directory, outside the root.
        for p in [
            "~".to_string(),
            format!("~/{new}"),
            format!("~root/{new}"),
            format!("$HOME/{new}"),
            format!("file://{}", w.s("outside/secret-out.txt")),
            format!("\\\\?\\C:\\{new}"),
            format!("C:\\{new}"),
        ] {
            paths.push((p, Expect::Refused));
        }
        for (path, expect) in paths {
            fs.attempt(&mut t, op, &path, expect, &[]).await;
        }
    }
    fs.no_oracle(
        &mut t,
        &w.s("outside/secret-out.txt"),
        &w.s("outside/missing.txt"),
    )
    .await;
    fs.no_oracle(&mut t, "/etc/passwd", "/etc/no-such-file-concerto")
        .await;
    t.finish(7 * 28);
}

// ---------------------------------------------------------------------------------------
// 3. Symbolic links
// ---------------------------------------------------------------------------------------

/// The links planted in the root: (name inside the root, target).
fn planted_links(w: &World) -> Vec<(&'static str, PathBuf)> {
    let p = |rel: &str| w.path(rel);
    vec![
        ("root/l-dir-abs", p("outside")),
        ("root/l-dir-rel", PathBuf::from("../outside")),
        ("root/l-file-abs", p("outside/secret-out.txt")),
        (
            "root/l-file-rel",
            PathBuf::from("../outside/secret-out.txt"),
        ),
        ("root/l-slash", PathBuf::from("/")),
        ("root/l-up2", PathBuf::from("../..")),
        ("root/l-parent", PathBuf::from("..")),
        ("root/l-base", w.base.clone()),
        ("root/l-etc-passwd", PathBuf::from("/etc/passwd")),
        ("root/l-proc-root", PathBuf::from("/proc/self/root")),
        ("root/l-chain1", PathBuf::from("l-chain2")),
        ("root/l-chain2", PathBuf::from("sub/l-chain3")),
        (
            "root/sub/l-chain3",
            PathBuf::from("../../outside/secret-out.txt"),
        ),
        ("root/l-chaindir1", PathBuf::from("l-chaindir2")),
        ("root/l-chaindir2", PathBuf::from("sub/l-chaindir3")),
        ("root/sub/l-chaindir3", PathBuf::from("../../outside")),
        ("root/l-dangling-abs", p("outside/created-abs.txt")),
        (
            "root/l-dangling-rel",
            PathBuf::from("../outside/created-rel.txt"),
        ),
        ("root/l-dangling-dir", p("newdir")),
        ("root/l-missing-abs", p("outside/missing.txt")),
        (
            "root/l-missing-rel",
            PathBuf::from("../outside/missing.txt"),
        ),
        ("root/sub/l-up", PathBuf::from("../../outside")),
        ("root/sub/l-sneaky", PathBuf::from("../sub/../../outside")),
        ("root/l-loop", PathBuf::from("l-loop")),
        ("root/l-in-abs", p("root/inside.txt")),
    ]
}

#[tokio::test]
async fn fs_symlinks_never_lead_outside() {
    let (w, root) = traversal_world();
    let links = planted_links(&w);
    // Recreates the links an attempt removed or replaced (only those: symlink calls are
    // slow on some file systems).
    let reset = || {
        for (name, target) in &links {
            if std::fs::read_link(w.path(name)).ok().as_ref() != Some(target) {
                w.link(name, target);
            }
        }
    };
    reset();
    let tools = Tools::new(fs_policy(std::slice::from_ref(&root))).unwrap();
    let fs = Fs {
        tools: &tools,
        world: &w,
        roots: vec![root.clone()],
        msg: Msg::Path,
        reset: Some(&reset),
    };
    let mut t = Tally::new("fs-symlink");
    let r = root.display().to_string();
    let rr = w.relative(&root);
    let base = w.base.display().to_string();
    let base_name = w.base.file_name().unwrap().to_string_lossy().into_owned();
    let passwd = PathBuf::from("/etc/passwd");

    // Controls: `..` after a link is lexical, so this stays in the root.
    fs.control(
        &mut t,
        FsRequest::Read(format!("{r}/l-dir-abs/../inside.txt")),
        FsReply::Text("inside".into()),
    )
    .await;

    let file_links = [
        "l-file-abs",
        "l-file-rel",
        "l-etc-passwd",
        "l-chain1",
        "l-chain2",
        "sub/l-chain3",
        "l-dangling-abs",
        "l-dangling-rel",
        "l-missing-abs",
        "l-missing-rel",
    ];
    let dir_links = [
        "l-dir-abs",
        "l-dir-rel",
        "l-chaindir1",
        "l-chaindir2",
        "sub/l-chaindir3",
        "sub/l-up",
        "sub/l-sneaky",
    ];
    for op in OPS {
        let sys = if op.destructive() {
            format!("tmp/{}", w.unique("sys"))
        } else {
            "etc/passwd".to_string()
        };
        let mut paths: Vec<(String, Expect)> = Vec::new();
        // `remove_file` on a link removes the link itself, which is inside the root.
        let on_link = if op == Op::Remove {
            Expect::Contained
        } else {
            Expect::Refused
        };
        // Creating `link/` fails in the OS before the link is followed (EISDIR, whatever
        // the target), as the sandbox documents for a trailing separator.
        let on_link_slash = if matches!(op, Op::Remove | Op::Write | Op::Append) {
            Expect::Contained
        } else {
            Expect::Refused
        };
        for prefix in [&r, &rr] {
            for l in file_links {
                paths.push((format!("{prefix}/{l}"), on_link));
                paths.push((format!("{prefix}/{l}/"), on_link_slash));
            }
            for l in dir_links {
                let new = w.unique("via");
                paths.push((format!("{prefix}/{l}"), on_link));
                paths.push((format!("{prefix}/{l}/"), on_link_slash));
                paths.push((format!("{prefix}/{l}/secret-out.txt"), Expect::Refused));
                paths.push((format!("{prefix}/{l}/{new}"), Expect::Refused));
                paths.push((format!("{prefix}/{l}/dir"), Expect::Refused));
                paths.push((format!("{prefix}/{l}/dir/secret-deep.txt"), Expect::Refused));
                paths.push((format!("{prefix}/{l}/./secret-out.txt"), Expect::Refused));
            }
        }
        let new = w.unique("via");
        for (path, expect) in [
            (format!("{r}/l-slash"), on_link),
            (format!("{r}/l-slash/"), on_link_slash),
            (format!("{r}/l-slash/{sys}"), Expect::Refused),
            (
                format!("{r}/l-slash{base}/outside/secret-out.txt"),
                Expect::Refused,
            ),
            (format!("{r}/l-up2"), on_link),
            (
                format!("{r}/l-up2/{base_name}/secret-top.txt"),
                Expect::Refused,
            ),
            (format!("{r}/l-up2/{base_name}/outside"), Expect::Refused),
            (format!("{r}/l-parent"), on_link),
            (format!("{r}/l-parent/secret-top.txt"), Expect::Refused),
            (
                format!("{r}/l-parent/outside/secret-out.txt"),
                Expect::Refused,
            ),
            (format!("{r}/l-parent/{new}"), Expect::Refused),
            // Out of the root and back in: refused by design, and never outside anyway.
            (format!("{r}/l-parent/root/inside.txt"), Expect::Contained),
            (format!("{r}/l-base/secret-top.txt"), Expect::Refused),
            (
                format!("{r}/l-base/outside/secret-out.txt"),
                Expect::Refused,
            ),
            (format!("{r}/l-base"), on_link),
            (format!("{r}/l-proc-root/{sys}"), Expect::Refused),
            (
                format!("{r}/l-proc-root{base}/outside/secret-out.txt"),
                Expect::Refused,
            ),
            (format!("{r}/l-dangling-dir/{new}"), Expect::Refused),
            (format!("{r}/l-dangling-dir"), on_link),
            (format!("{r}/sub/l-chain3/../l-chain3"), on_link),
            // Contained: a loop, and an absolute link to a file inside the root.
            (format!("{r}/l-loop"), Expect::Contained),
            (format!("{r}/l-loop/x"), Expect::Contained),
            (format!("{r}/l-in-abs"), Expect::Contained),
        ] {
            paths.push((path, expect));
        }
        for (path, expect) in paths {
            fs.attempt(&mut t, op, &path, expect, &[&passwd]).await;
        }
    }
    // Links planted where `write_file` puts its temporary file (`.<name>.<pid>.<n>.tmp`,
    // for the next few thousand `n`) and aimed outside: the write must not follow them.
    for n in 0..1000 {
        symlink(
            w.path("outside/secret-out.txt"),
            w.path(&format!("root/.planted.txt.{}.{n}.tmp", std::process::id())),
        )
        .unwrap();
    }
    w.file("root/planted.txt", "planted");
    for path in [format!("{r}/planted.txt"), format!("{rr}/planted.txt")] {
        fs.attempt(&mut t, Op::Write, &path, Expect::Contained, &[])
            .await;
    }
    harness_detects_changes(&mut t, &w, std::slice::from_ref(&root), "secret-top.txt");
    // The two dangling links aim at files that must never come to exist.
    for created in [
        "outside/created-abs.txt",
        "outside/created-rel.txt",
        "newdir",
    ] {
        t.attempts += 1;
        if w.path(created).exists() {
            t.escaped
                .push(format!("{created} was created through a dangling link"));
        }
    }
    // `exists` through a link tells nothing about the outside file.
    for p in [&r, &rr] {
        fs.no_oracle(
            &mut t,
            &format!("{p}/l-file-abs"),
            &format!("{p}/l-missing-abs"),
        )
        .await;
        fs.no_oracle(
            &mut t,
            &format!("{p}/l-file-rel"),
            &format!("{p}/l-missing-rel"),
        )
        .await;
        fs.no_oracle(
            &mut t,
            &format!("{p}/l-dir-rel/secret-out.txt"),
            &format!("{p}/l-dir-rel/missing.txt"),
        )
        .await;
        fs.no_oracle(
            &mut t,
            &format!("{p}/l-dir-abs/dir"),
            &format!("{p}/l-dir-abs/nodir"),
        )
        .await;
    }
    t.finish(7 * 150);
}

// ---------------------------------------------------------------------------------------
// 4. Several roots, no roots, std::fs disabled
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fs_several_roots_no_roots_and_disabled() {
    let w = World::new();
    let a = w.dir("a/rootA");
    let b = w.dir("b/rootB");
    let data = w.dir("data");
    let n = w.dir("n");
    let inner = w.dir("n/inner");
    w.file("a/rootA/a.txt", "a");
    w.file("b/rootB/b.txt", "b");
    w.file("data/d.txt", "d");
    w.file("n/n.txt", "n");
    w.file("n/inner/i.txt", "i");
    w.sentinel("a/secret-a.txt");
    w.sentinel("b/secret-b.txt");
    w.sentinel("data-evil/secret-evil.txt");
    w.sentinel("data2/secret-data2.txt");
    w.sentinel("secret-top.txt");
    w.link("a/rootA/l-to-b-secret", "../../b/secret-b.txt");
    w.link("a/rootA/l-to-b-parent", "../../b");
    w.link("a/rootA/l-to-b-root", w.path("b/rootB/b.txt"));
    let roots = vec![a.clone(), b.clone(), data.clone(), n.clone(), inner.clone()];
    let tools = Tools::new(fs_policy(&roots)).unwrap();
    let fs = Fs {
        tools: &tools,
        world: &w,
        roots: roots.clone(),
        msg: Msg::Path,
        reset: None,
    };
    let mut t = Tally::new("fs-roots");
    let (sa, sb, sd, si, sn) = (
        a.display().to_string(),
        b.display().to_string(),
        data.display().to_string(),
        inner.display().to_string(),
        n.display().to_string(),
    );
    let base = w.base.display().to_string();
    for (p, want) in [
        (format!("{sa}/a.txt"), "a"),
        (format!("{sa}/../../b/rootB/b.txt"), "b"),
        (format!("{si}/i.txt"), "i"),
        (format!("{si}/../n.txt"), "n"),
        (format!("{sd}/d.txt"), "d"),
    ] {
        fs.control(&mut t, FsRequest::Read(p), FsReply::Text(want.into()))
            .await;
    }
    for op in OPS {
        let new = w.unique("roots");
        let mut paths: Vec<(String, Expect)> = [
            format!("{sa}/../secret-a.txt"),
            format!("{sa}/.."),
            format!("{sa}/../../b/secret-b.txt"),
            format!("{sa}/../../b"),
            format!("{sa}/../../b/"),
            format!("{sa}/../../b/{new}"),
            format!("{sa}/../../b/rootB/../secret-b.txt"),
            format!("{sb}/../secret-b.txt"),
            format!("{sb}/../../a/secret-a.txt"),
            format!("{sb}/../../secret-top.txt"),
            format!("{sd}-evil/secret-evil.txt"),
            format!("{sd}-evil"),
            format!("{sd}2/secret-data2.txt"),
            format!("{sd}/../data-evil/secret-evil.txt"),
            format!("{base}/dat/{new}"),
            format!("{base}/{new}"),
            format!("{sn}/../secret-top.txt"),
            format!("{sn}/inner/../../secret-top.txt"),
            format!("{si}/../../secret-top.txt"),
            format!("{si}/../../a/secret-a.txt"),
            format!("{sa}/l-to-b-secret"),
            format!("{sa}/l-to-b-parent/secret-b.txt"),
            format!("{sa}/l-to-b-parent/{new}"),
        ]
        .into_iter()
        .map(|p| (p, Expect::Refused))
        .collect();
        if op == Op::Remove {
            // Removing a link removes the link (inside root A).
            paths.retain(|(p, _)| !p.ends_with("/l-to-b-secret"));
        }
        // Links from root A into root B: refused or not, they stay in the roots.
        paths.push((format!("{sa}/l-to-b-root"), Expect::Contained));
        paths.push((format!("{sa}/l-to-b-parent/rootB/b.txt"), Expect::Contained));
        for (path, expect) in paths {
            fs.attempt(&mut t, op, &path, expect, &[]).await;
        }
    }

    // No root at all: everything is refused, the roots of before included.
    let none = Tools::new(Policy::default()).unwrap();
    let fs_none = Fs {
        tools: &none,
        world: &w,
        roots: Vec::new(),
        msg: Msg::NoRoots,
        reset: None,
    };
    let ra = w.relative(&a);
    for op in OPS {
        let new = w.unique("none");
        for path in [
            format!("{sa}/a.txt"),
            format!("{sa}/{new}"),
            format!("{sa}/"),
            format!("{ra}/a.txt"),
            format!("{ra}/{new}"),
            format!("{sb}/b.txt"),
            format!("{sd}/d.txt"),
            format!("{sa}/l-to-b-root"),
            base.clone(),
            "/".to_string(),
            ".".to_string(),
            String::new(),
            new.clone(),
        ] {
            fs_none
                .attempt(&mut t, op, &path, Expect::Refused, &[])
                .await;
        }
    }

    // std::fs disabled: refused even inside an allowed root.
    let disabled = Tools::new(Policy {
        tools: HashMap::from([("std::fs".to_string(), Permission::Disabled)]),
        fs_roots: roots.clone(),
        net_domains: Vec::new(),
        env: Vec::new(),
        env_values: Vec::new(),
    })
    .unwrap();
    let fs_off = Fs {
        tools: &disabled,
        world: &w,
        roots: Vec::new(),
        msg: Msg::Disabled,
        reset: None,
    };
    for op in OPS {
        let new = w.unique("off");
        for path in [
            format!("{sa}/a.txt"),
            format!("{sa}/{new}"),
            sa.clone(),
            format!("{ra}/a.txt"),
            format!("{sb}/b.txt"),
            format!("{si}/i.txt"),
            format!("{sa}/../secret-a.txt"),
        ] {
            fs_off
                .attempt(&mut t, op, &path, Expect::Refused, &[])
                .await;
        }
    }
    t.finish(7 * 40);
}

// ---------------------------------------------------------------------------------------
// Local HTTP servers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: Vec<(String, String)>,
}

/// An HTTP/1 server on 127.0.0.1 (a free port) that logs connections and requests.
/// Paths with a route answer with that status and `Location`; others answer 200 `ok PATH`.
struct Server {
    port: u16,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Arc<Mutex<HashMap<String, (u16, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let routes: Arc<Mutex<HashMap<String, (u16, String)>>> = Arc::default();
        let (c, s, r) = (connections.clone(), seen.clone(), routes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (s, r) = (s.clone(), r.clone());
                        async move {
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            s.lock().unwrap().push(Seen {
                                target: target.clone(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            });
                            let route = r.lock().unwrap().get(req.uri().path()).cloned();
                            let response = match route {
                                Some((status, location)) => Response::builder()
                                    .status(status)
                                    .header("location", location)
                                    .body(Full::new(Bytes::new())),
                                None => Response::builder()
                                    .status(200)
                                    .body(Full::new(Bytes::from(format!("ok {target}")))),
                            };
                            Ok::<_, Infallible>(response.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            port,
            connections,
            seen,
            routes,
            task,
        }
    }

    fn route(&self, path: &str, status: u16, location: &str) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, location.to_string()));
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// What reached `path` (query ignored).
    fn at(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    fn saw_anything_under(&self, needle: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.target.contains(needle))
    }
}

fn get(url: &str) -> HttpRequest {
    HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: None,
        timeout: Some(Duration::from_secs(5)),
    }
}

fn brief_http(result: &Result<HttpReply, OutsideError>) -> String {
    match result {
        Ok(r) => format!("Ok(status {} body {})", r.status, shown(&r.body)),
        Err(OutsideError::Failed(f)) => format!("Failed({:?}, {})", f.kind, shown(&f.message)),
        Err(OutsideError::Refused(m)) => format!("Refused({})", shown(m)),
        Err(OutsideError::Host(e)) => format!("Host({:?}, {})", e.kind, shown(&e.message)),
    }
}

/// One HTTP attempt.
struct NetAttempt<'a> {
    request: HttpRequest,
    /// `Refused` (must be [`OutsideError::Refused`]) or `Contained` (effects only).
    expect: Expect,
    /// Servers that must see no connection and no request at all.
    quiet: &'a [&'a Server],
    /// A path no server may see (the final target of a redirect).
    never: Option<(&'a [&'a Server], String)>,
    /// Text the refusal must contain.
    needles: Vec<String>,
}

async fn net_attempt(t: &mut Tally, tools: &Tools, a: NetAttempt<'_>) {
    let before: Vec<(usize, usize)> = a
        .quiet
        .iter()
        .map(|s| (s.connections(), s.requests()))
        .collect();
    let what = format!("{} {}", a.request.method, shown(&a.request.url));
    let result = tools.http(a.request).await;
    t.attempts += 1;
    let mut escaped = Vec::new();
    for (s, (c, r)) in a.quiet.iter().zip(before) {
        let (c2, r2) = (s.connections(), s.requests());
        if c2 != c || r2 != r {
            escaped.push(format!(
                "server on port {} saw {} connection(s) and {} request(s) (result {})",
                s.port,
                c2 - c,
                r2 - r,
                brief_http(&result)
            ));
        }
    }
    if let Some((servers, path)) = &a.never {
        for s in servers.iter() {
            if s.saw_anything_under(path) {
                escaped.push(format!("`{path}` reached the server on port {}", s.port));
            }
        }
    }
    match (a.expect, &result) {
        (Expect::Refused, Err(OutsideError::Refused(refusal))) => {
            let message = refusal.to_ascii_lowercase();
            if let Some(missing) = a
                .needles
                .iter()
                .find(|n| !message.contains(&n.to_ascii_lowercase()))
            {
                t.bad_messages.push(format!(
                    "{what}: message lacks {missing:?}: {}",
                    shown(refusal)
                ));
            }
        }
        (Expect::Refused, Err(OutsideError::Host(e))) => t.bad_messages.push(format!(
            "{what}: a host error ({:?}), not a refusal: {}",
            e.kind,
            shown(&e.message)
        )),
        (Expect::Refused, Ok(_) | Err(OutsideError::Failed(_))) => escaped.push(format!(
            "not refused (the request was let through): {}",
            brief_http(&result)
        )),
        (Expect::Contained, _) => {}
    }
    if !escaped.is_empty() {
        t.escaped.push(format!("{what}: {}", escaped.join("; ")));
    }
}

/// A request the policy allows: not refused; when `server` is given, it answered and saw it.
async fn net_control(t: &mut Tally, tools: &Tools, url: &str, server: Option<(&Server, &str)>) {
    let result = tools.http(get(url)).await;
    let ok = match (&result, server) {
        (Ok(reply), Some((s, path))) => reply.status == 200 && !s.at(path).is_empty(),
        (Ok(_) | Err(OutsideError::Failed(_)), None) => true,
        _ => false,
    };
    t.control(ok, format!("GET {url}: {}", brief_http(&result)));
}

// ---------------------------------------------------------------------------------------
// 5. Network: hosts, names, addresses, ports, schemes
// ---------------------------------------------------------------------------------------

fn domains(list: &[String]) -> Policy {
    Policy {
        net_domains: list.to_vec(),
        ..Policy::default()
    }
}

#[tokio::test]
async fn net_only_allowed_hosts_are_reached() {
    let allowed = Server::start().await;
    let forbidden = Server::start().await;
    let (p1, p2) = (allowed.port, forbidden.port);
    let both: [&Server; 2] = [&allowed, &forbidden];
    let mut t = Tally::new("net-hosts");
    let host_needles = |host: &str| {
        let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let bare = bare.trim_start_matches('[').trim_end_matches(']');
        vec![
            format!("host `{host}` is not allowed"),
            format!("`--allow-net {bare}`"),
        ]
    };

    let refuse = |url: String, needles: Vec<String>| NetAttempt {
        request: get(&url),
        expect: Expect::Refused,
        quiet: &both,
        never: None,
        needles,
    };

    // No domain allowed: nothing goes out.
    let none = Tools::new(Policy::default()).unwrap();
    for url in [
        format!("http://127.0.0.1:{p1}/none"),
        format!("http://localhost:{p1}/none"),
        format!("http://127.0.0.1:{p2}/none"),
        format!("http://[::1]:{p1}/none"),
        "http://localhost/none".to_string(),
        "https://localhost/none".to_string(),
    ] {
        let needles = vec![
            "no domain is allowed".to_string(),
            "--allow-net".to_string(),
        ];
        net_attempt(&mut t, &none, refuse(url, needles)).await;
    }

    // std::http disabled, even for an allowed host.
    let off = Tools::new(Policy {
        tools: HashMap::from([("std::http".to_string(), Permission::Disabled)]),
        fs_roots: Vec::new(),
        net_domains: vec![format!("127.0.0.1:{p1}")],
        env: Vec::new(),
        env_values: Vec::new(),
    })
    .unwrap();
    for url in [
        format!("http://127.0.0.1:{p1}/off"),
        format!("http://127.0.0.1:{p2}/off"),
    ] {
        let needles = vec![
            "std::http is disabled".to_string(),
            "--disable-tool std::http".to_string(),
        ];
        net_attempt(&mut t, &off, refuse(url, needles)).await;
    }

    // An IP literal with a port is allowed: nothing else is.
    let by_ip = Tools::new(domains(&[format!("127.0.0.1:{p1}")])).unwrap();
    net_control(
        &mut t,
        &by_ip,
        &format!("http://127.0.0.1:{p1}/ctl-ip"),
        Some((&allowed, "/ctl-ip")),
    )
    .await;
    net_control(
        &mut t,
        &by_ip,
        &format!("HTTP://127.0.0.1:{p1}/ctl-ip-upper"),
        Some((&allowed, "/ctl-ip-upper")),
    )
    .await;
    let numeric = [
        "localhost",
        "LOCALHOST",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "0.0.0.0",
        "0",
        "127.0.0.2",
        "2130706433",
        "0x7f000001",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "017700000001",
        "127.1",
        "127.0.1",
        "0x7f.1",
    ];
    for host in numeric {
        let url = format!("http://{host}:{p1}/ip");
        net_attempt(
            &mut t,
            &by_ip,
            refuse(url, host_needles(&format!("{host}:{p1}"))),
        )
        .await;
    }
    for (url, host) in [
        (
            format!("http://127.0.0.1:{p2}/port"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:0{p2}/port"),
            format!("127.0.0.1:{p2}"),
        ),
        ("http://127.0.0.1/port".to_string(), "127.0.0.1".to_string()),
        (
            "https://127.0.0.1/port".to_string(),
            "127.0.0.1".to_string(),
        ),
        (
            format!("http://localhost:{p2}/port"),
            format!("localhost:{p2}"),
        ),
        // Look-alikes whose real host is the forbidden server.
        (
            format!("http://127.0.0.1:{p1}@127.0.0.1:{p2}/ui"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1@127.0.0.1:{p2}/ui"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}/127.0.0.1:{p1}"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}/?127.0.0.1:{p1}"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}?@127.0.0.1:{p1}/"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!(" http://127.0.0.1:{p2}/ws"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}/ws "),
            format!("127.0.0.1:{p2}"),
        ),
    ] {
        net_attempt(&mut t, &by_ip, refuse(url, host_needles(&host))).await;
    }

    // A name with a port is allowed: case and a trailing dot do not matter (positive
    // controls), addresses and other names are refused.
    let by_name = Tools::new(domains(&[format!("localhost:{p1}")])).unwrap();
    net_control(
        &mut t,
        &by_name,
        &format!("http://localhost:{p1}/ctl-name"),
        Some((&allowed, "/ctl-name")),
    )
    .await;
    net_control(
        &mut t,
        &by_name,
        &format!("http://LOCALHOST:{p1}/ctl-upper"),
        Some((&allowed, "/ctl-upper")),
    )
    .await;
    net_control(
        &mut t,
        &by_name,
        &format!("http://LocalHost:{p1}/ctl-mixed"),
        Some((&allowed, "/ctl-mixed")),
    )
    .await;
    // `localhost.` does not resolve here: the control is that the sandbox lets it through.
    net_control(
        &mut t,
        &by_name,
        &format!("http://localhost.:{p1}/ctl-dot"),
        None,
    )
    .await;
    for host in numeric
        .iter()
        .filter(|h| !h.eq_ignore_ascii_case("localhost"))
    {
        let url = format!("http://{host}:{p1}/name");
        net_attempt(
            &mut t,
            &by_name,
            refuse(url, host_needles(&format!("{host}:{p1}"))),
        )
        .await;
    }
    net_attempt(
        &mut t,
        &by_name,
        refuse(
            format!("http://127.0.0.1:{p1}/name"),
            host_needles(&format!("127.0.0.1:{p1}")),
        ),
    )
    .await;
    for (url, host) in [
        (
            format!("http://localhost:{p2}/port"),
            format!("localhost:{p2}"),
        ),
        ("http://localhost/port".to_string(), "localhost".to_string()),
        (
            "http://localhost:80/port".to_string(),
            "localhost:80".to_string(),
        ),
        (
            format!("http://a.localhost:{p1}/sub"),
            format!("a.localhost:{p1}"),
        ),
        (
            format!("http://localhost.localhost:{p1}/sub"),
            format!("localhost.localhost:{p1}"),
        ),
        (
            format!("http://xlocalhost:{p1}/la"),
            format!("xlocalhost:{p1}"),
        ),
        (
            format!("http://localhostx:{p1}/la"),
            format!("localhostx:{p1}"),
        ),
        (
            format!("http://local-host:{p1}/la"),
            format!("local-host:{p1}"),
        ),
        (
            format!("http://localhost.evil.test:{p1}/la"),
            format!("localhost.evil.test:{p1}"),
        ),
        (
            format!("http://evil.test/localhost:{p1}"),
            "evil.test".to_string(),
        ),
        (
            format!("http://evil.test:{p1}/localhost"),
            format!("evil.test:{p1}"),
        ),
        (
            format!("http://localhost:{p1}@127.0.0.1:{p2}/ui"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://localhost@127.0.0.1:{p2}/ui"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}/localhost:{p1}"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}?localhost:{p1}"),
            format!("127.0.0.1:{p2}"),
        ),
        (
            format!("http://127.0.0.1:{p2}?@localhost:{p1}/"),
            format!("127.0.0.1:{p2}"),
        ),
    ] {
        net_attempt(&mut t, &by_name, refuse(url, host_needles(&host))).await;
    }
    // Spellings that the URL parser may reject: whatever happens, nothing is reached.
    let quiet_forbidden: [&Server; 1] = [&forbidden];
    for url in [
        format!("http://127.0.0.1:{p2}#@localhost:{p1}/"),
        format!("http://127.0.0.1:{p2}\\@localhost:{p1}/"),
        format!("http://%6cocalhost:{p1}/pct"),
        format!("http://localhost%2e:{p1}/pct"),
        format!("http://127.0.0.%31:{p2}/pct"),
        format!("http://localhost:{p1}.evil.test/"),
        format!("http://localhost:{}/", u32::from(p1) + 65536),
        format!("http://localhost:{p1}:{p2}/"),
        format!("http://[localhost]:{p1}/"),
        format!("http:/localhost:{p1}/"),
        format!("http:localhost:{p1}/"),
        format!("//localhost:{p1}/"),
        format!("127.0.0.1:{p2}/"),
        format!("http://127.0.0.1:{p2}\t/"),
        String::new(),
    ] {
        let attempt = NetAttempt {
            request: get(&url),
            expect: Expect::Contained,
            quiet: &quiet_forbidden,
            never: None,
            needles: Vec::new(),
        };
        net_attempt(&mut t, &by_name, attempt).await;
    }

    // `*.name` is every subdomain, never the name itself or an address.
    let wild = Tools::new(domains(&[format!("*.localhost:{p1}")])).unwrap();
    for (url, host) in [
        (
            format!("http://localhost:{p1}/wild"),
            format!("localhost:{p1}"),
        ),
        (
            format!("http://LOCALHOST.:{p1}/wild"),
            format!("LOCALHOST.:{p1}"),
        ),
        (
            format!("http://127.0.0.1:{p1}/wild"),
            format!("127.0.0.1:{p1}"),
        ),
        (
            format!("http://xlocalhost:{p1}/wild"),
            format!("xlocalhost:{p1}"),
        ),
        (
            format!("http://a.localhost:{p2}/wild"),
            format!("a.localhost:{p2}"),
        ),
        (
            format!("http://a.localhost.evil.test:{p1}/wild"),
            format!("a.localhost.evil.test:{p1}"),
        ),
    ] {
        net_attempt(&mut t, &wild, refuse(url, host_needles(&host))).await;
    }
    // Policy control: a subdomain passes the check (it does not resolve here).
    net_control(
        &mut t,
        &wild,
        &format!("http://a.localhost:{p1}/wild-ok"),
        None,
    )
    .await;

    // Schemes other than http and https.
    let any = Tools::new(domains(&[
        format!("127.0.0.1:{p1}"),
        format!("localhost:{p1}"),
        "localhost".to_string(),
    ]))
    .unwrap();
    for url in [
        "file:///etc/passwd".to_string(),
        "file://localhost/etc/passwd".to_string(),
        "FILE:///etc/passwd".to_string(),
        format!("ftp://127.0.0.1:{p1}/"),
        format!("gopher://127.0.0.1:{p1}/_GET%20/"),
        "data:text/plain,hello".to_string(),
        "data:text/html;base64,PHNjcmlwdD4=".to_string(),
        format!("ws://127.0.0.1:{p1}/"),
        format!("wss://127.0.0.1:{p1}/"),
        "javascript:alert(1)".to_string(),
        "unix:///var/run/docker.sock".to_string(),
        format!("jar:http://127.0.0.1:{p1}/x!/"),
        format!("view-source:http://127.0.0.1:{p1}/"),
        format!("h2c://127.0.0.1:{p1}/"),
        format!("httpx://127.0.0.1:{p1}/"),
        format!("localhost:{p1}/"),
        format!("dict://127.0.0.1:{p1}/"),
        format!("ldap://127.0.0.1:{p1}/"),
    ] {
        let needles = vec!["only http and https".to_string()];
        net_attempt(&mut t, &any, refuse(url, needles)).await;
    }
    // Harness: the forbidden server does count what reaches it.
    let before = (forbidden.connections(), forbidden.requests());
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", p2))
        .await
        .unwrap();
    stream
        .write_all(b"GET /harness HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    t.control(
        forbidden.connections() == before.0 + 1 && forbidden.requests() == before.1 + 1,
        "harness: the forbidden server counts connections and requests".into(),
    );
    t.finish(100);
}

// ---------------------------------------------------------------------------------------
// 6. Redirects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn net_redirects_are_checked_at_every_hop() {
    let a1 = Server::start().await;
    let a2 = Server::start().await;
    let forbidden = Server::start().await;
    let (p1, p3, p2) = (a1.port, a2.port, forbidden.port);
    let all: [&Server; 3] = [&a1, &a2, &forbidden];
    let only_forbidden: [&Server; 1] = [&forbidden];
    let tools = Tools::new(domains(&[
        format!("127.0.0.1:{p1}"),
        format!("127.0.0.1:{p3}"),
    ]))
    .unwrap();
    let mut t = Tally::new("net-redirect");
    let codes = [301u16, 302, 303, 307, 308];
    let redirected = vec!["redirected from".to_string(), "--allow-net".to_string()];

    // (location with `{X}` for the final path, expectation, needles)
    let forms: Vec<(String, Expect, Vec<String>)> = vec![
        (
            format!("http://127.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://localhost:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("//127.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("//localhost:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("HTTP://127.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://127.0.0.1:{p1}@127.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://127.0.0.1:{p2}{{X}}#@127.0.0.1:{p1}/"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://2130706433:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://0x7f.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("http://127.0.0.1.:{p2}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            "http://127.0.0.1{X}".to_string(),
            Expect::Refused,
            redirected.clone(),
        ),
        // The allowed server under a name that is not allowed.
        (
            format!("http://localhost:{p1}{{X}}"),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            format!("  http://127.0.0.1:{p2}{{X}}  "),
            Expect::Refused,
            redirected.clone(),
        ),
        (
            "file:///etc/passwd".to_string(),
            Expect::Refused,
            vec!["only http and https".to_string()],
        ),
        (
            format!("gopher://127.0.0.1:{p2}{{X}}"),
            Expect::Refused,
            vec!["only http and https".to_string()],
        ),
        // Spellings a parser may reject: nothing may reach the forbidden server.
        (
            format!("http:\\\\127.0.0.1:{p2}\\x{{X}}"),
            Expect::Contained,
            Vec::new(),
        ),
        (
            format!("/\\127.0.0.1:{p2}{{X}}"),
            Expect::Contained,
            Vec::new(),
        ),
        (
            format!("http:127.0.0.1:{p2}{{X}}"),
            Expect::Contained,
            Vec::new(),
        ),
        (
            format!("http://127.0.0.1:{p2}\\@127.0.0.1:{p1}{{X}}"),
            Expect::Contained,
            Vec::new(),
        ),
    ];
    let mut n = 0usize;
    for code in codes {
        for (location, expect, needles) in &forms {
            n += 1;
            let start = format!("/r{n}");
            let end = format!("/final-{n}");
            a1.route(&start, code, &location.replace("{X}", &end));
            let mut methods = vec!["GET"];
            if matches!(code, 307 | 308) {
                methods.push("POST");
            }
            for method in methods {
                let request = HttpRequest {
                    method: method.into(),
                    url: format!("http://127.0.0.1:{p1}{start}"),
                    headers: vec![("content-type".into(), "text/plain".into())],
                    body: (method == "POST").then(|| "payload".to_string()),
                    timeout: Some(Duration::from_secs(5)),
                };
                // A refused hop reaches no server; a spelling the parser may read as a
                // relative path may land on the allowed server itself.
                let never: &[&Server] = if *expect == Expect::Refused {
                    &all
                } else {
                    &only_forbidden
                };
                let attempt = NetAttempt {
                    request,
                    expect: *expect,
                    quiet: &only_forbidden,
                    never: Some((never, end.clone())),
                    needles: needles.clone(),
                };
                net_attempt(&mut t, &tools, attempt).await;
            }
        }
        // A chain: allowed (relative) → allowed → another allowed server → forbidden.
        n += 1;
        let end = format!("/final-{n}");
        a1.route(&format!("/c{n}a"), code, &format!("/c{n}b"));
        a1.route(
            &format!("/c{n}b"),
            code,
            &format!("http://127.0.0.1:{p3}/c{n}c"),
        );
        a2.route(&format!("/c{n}c"), code, &format!("//127.0.0.1:{p2}{end}"));
        let attempt = NetAttempt {
            request: get(&format!("http://127.0.0.1:{p1}/c{n}a")),
            expect: Expect::Refused,
            quiet: &only_forbidden,
            never: Some((&all[..], end.clone())),
            needles: redirected.clone(),
        };
        net_attempt(&mut t, &tools, attempt).await;
        t.control(
            !a2.at(&format!("/c{n}c")).is_empty(),
            format!("chain {code}: the second allowed server was reached"),
        );
    }

    // Loops end with an error, quickly, after a bounded number of hops.
    a1.route("/loop", 302, "/loop");
    a1.route("/ping", 307, &format!("http://127.0.0.1:{p3}/pong"));
    a2.route("/pong", 307, &format!("http://127.0.0.1:{p1}/ping"));
    a1.route("/empty", 302, "");
    a1.route("/query", 303, "?again");
    a1.route("/dot", 308, "./dot");
    for path in ["/loop", "/ping", "/empty", "/query", "/dot"] {
        let before = a1.requests() + a2.requests();
        let started = Instant::now();
        let result = tools
            .http(get(&format!("http://127.0.0.1:{p1}{path}")))
            .await;
        let hops = a1.requests() + a2.requests() - before;
        t.attempts += 1;
        match &result {
            Err(OutsideError::Failed(f))
                if f.kind == OutsideFailureKind::Redirect
                    && f.message.contains("redirected more than") => {}
            Err(OutsideError::Failed(f)) => t
                .bad_messages
                .push(format!("loop {path}: unclear error: {}", shown(&f.message))),
            other => t.escaped.push(format!(
                "loop {path}: did not end with an error: {}",
                brief_http(other)
            )),
        }
        if started.elapsed() > Duration::from_secs(4) || hops > 11 {
            t.escaped.push(format!(
                "loop {path}: {hops} requests in {:?}",
                started.elapsed()
            ));
        }
    }

    // Credentials never follow a redirect to another origin (another allowed server);
    // they do follow one on the same origin (positive control).
    for code in codes {
        let (cross, same) = (format!("/auth-x{code}"), format!("/auth-s{code}"));
        let (landed_x, landed_s) = (format!("/landed-x{code}"), format!("/landed-s{code}"));
        a1.route(&cross, code, &format!("http://127.0.0.1:{p3}{landed_x}"));
        a1.route(&same, code, &landed_s);
        let with_secrets = |url: String| HttpRequest {
            method: "GET".into(),
            url,
            headers: vec![
                ("Authorization".into(), "Bearer sk-sandbox-secret".into()),
                ("Cookie".into(), "session=sandbox-secret".into()),
                ("Proxy-Authorization".into(), "Basic c2VjcmV0".into()),
                ("X-Trace".into(), "kept".into()),
            ],
            body: None,
            timeout: Some(Duration::from_secs(5)),
        };
        let result = tools
            .http(with_secrets(format!("http://127.0.0.1:{p1}{cross}")))
            .await;
        t.attempts += 1;
        let seen = a2.at(&landed_x);
        match seen.first() {
            None => t.failed_controls.push(format!(
                "{code} to another allowed origin did not arrive: {}",
                brief_http(&result)
            )),
            Some(s) => {
                let leaked: Vec<&(String, String)> = s
                    .headers
                    .iter()
                    .filter(|(k, v)| {
                        ["authorization", "cookie", "proxy-authorization"].contains(&k.as_str())
                            || v.contains("secret")
                    })
                    .collect();
                if !leaked.is_empty() {
                    t.escaped.push(format!(
                        "{code} to another origin forwarded credentials: {leaked:?}"
                    ));
                }
                t.control(
                    s.headers.iter().any(|(k, v)| k == "x-trace" && v == "kept"),
                    format!("{code} cross-origin: other headers are kept"),
                );
            }
        }
        let _ = tools
            .http(with_secrets(format!("http://127.0.0.1:{p1}{same}")))
            .await;
        let kept = a1.at(&landed_s).first().is_some_and(|s| {
            s.headers
                .iter()
                .any(|(k, v)| k == "authorization" && v == "Bearer sk-sandbox-secret")
        });
        t.control(
            kept,
            format!("{code} same-origin redirect keeps the authorization header"),
        );
    }
    t.attempts += 1;
    if forbidden.connections() != 0 {
        t.escaped.push(format!(
            "the forbidden server saw {} connection(s) in all",
            forbidden.connections()
        ));
    }
    t.finish(5 * 20 + 5);
}

// ---------------------------------------------------------------------------------------
// Programs with hosts, MCP servers and own tools
// ---------------------------------------------------------------------------------------

/// A program with `parts` (`hosts`, `connections`, `tools`) around a trivial `main`.
fn program(parts: Value) -> Arc<Program> {
    let mut ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": [{"index": 0, "type": "nil", "value": null}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
            "return_type": "nil", "is_async": false, "locals": [],
            "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
            "debug_info": false, "entry_point": "main"}
    });
    for (k, v) in parts.as_object().unwrap() {
        ir[k] = v.clone();
    }
    Arc::new(concerto_ir::load_str(&ir.to_string()).unwrap())
}

/// A host agent that creates `marker` when started, then answers as the host fixture.
fn host_decl(name: &str, marker: &Path) -> Value {
    json!({
        "name": name, "connector": "sandbox_agent",
        "input_format": "text", "output_format": "text", "timeout": 10,
        "command": "python3",
        "args": [fixture("sandbox/spawn_marker.py"), marker, "host", fixture("host_agent.py")],
    })
}

/// An MCP stdio server that creates `marker` when started and logs its tool calls to `log`.
fn mcp_decl(name: &str, marker: &Path, log: &Path, as_array: bool) -> Value {
    let spawn = fixture("sandbox/spawn_marker.py");
    let server = fixture("mcp/server.py");
    let command = if as_array {
        json!(["python3", spawn, marker, "mcp", server, log])
    } else {
        json!(format!(
            "python3 '{spawn}' '{}' mcp '{server}' '{}'",
            marker.display(),
            log.display()
        ))
    };
    json!({"name": name, "config": {"type": "mcp", "transport": "stdio",
        "command": command, "timeout": 10}})
}

fn mcp_http_decl(name: &str, url: &str) -> Value {
    json!({"name": name, "config": {"type": "mcp", "transport": "http", "url": url,
        "timeout": 5}})
}

fn own_tool(name: &str) -> Value {
    json!({"name": name, "module": "m", "methods": [], "tool_schemas": []})
}

fn policy(perms: &[(&str, Permission)]) -> Policy {
    Policy {
        tools: perms
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..Policy::default()
    }
}

fn methods(list: &[&str]) -> Permission {
    Permission::Methods(list.iter().map(|m| m.to_string()).collect())
}

/// A registered tool method whose handler counts its runs.
fn register_counted(tools: &mut Tools, tool: &str, method: &str) -> Arc<AtomicUsize> {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    tools.register(
        tool,
        method,
        "counts its calls",
        json!({"type": "object", "properties": {}}),
        move |_args| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(json!("ran"))
            }
        },
    );
    counter
}

/// A `check` refusal with a message naming `name` and containing `needles`.
fn judge_check(
    t: &mut Tally,
    what: &str,
    result: &Result<(), HostError>,
    name: &str,
    needles: &[&str],
) {
    match result {
        Err(e) if e.kind == HostErrorKind::NotEnabled => {
            if !e.message.contains(&format!("'{name}'"))
                || needles.iter().any(|n| !e.message.contains(n))
            {
                t.bad_messages
                    .push(format!("{what}: message {}", shown(&e.message)));
            }
        }
        Err(e) => t.bad_messages.push(format!(
            "{what}: refused as {:?}: {}",
            e.kind,
            shown(&e.message)
        )),
        Ok(()) => t.escaped.push(format!("{what}: check allowed it")),
    }
}

fn call_log(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// 7. Spawning without opt-in (as the VM does: `check`, then the operation)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn processes_start_only_when_enabled() {
    let w = World::new();
    let forbidden = Server::start().await;
    let m = |name: &str| w.path(&format!("markers/{name}"));
    w.dir("markers");
    let mcp_url = format!("http://127.0.0.1:{}/mcp", forbidden.port);
    let p = program(json!({
        "hosts": [host_decl("Agent", &m("agent"))],
        "connections": [
            mcp_decl("Stdio", &m("stdio"), &m("stdio.log"), false),
            mcp_decl("StdioArr", &m("stdio-arr"), &m("stdio-arr.log"), true),
            mcp_http_decl("Web", &mcp_url),
        ],
    }));
    let markers = ["agent", "stdio", "stdio-arr"];
    let mut t = Tally::new("spawn");
    let all = || Permission::AllMethods;
    let policies: Vec<(&str, Policy, &[&str])> = vec![
        ("no permission", Policy::default(), &["--allow-tool"]),
        (
            "disabled",
            policy(&[
                ("Agent", Permission::Disabled),
                ("Stdio", Permission::Disabled),
                ("StdioArr", Permission::Disabled),
                ("Web", Permission::Disabled),
            ]),
            &["disabled by the host"],
        ),
        (
            "other names enabled",
            policy(&[
                ("agent", all()),
                ("AGENT", all()),
                ("Agent ", all()),
                ("Agent::execute", all()),
                ("stdio", all()),
                ("Stdio::add", all()),
                ("Stdio.add", all()),
                ("*", all()),
                ("", all()),
                ("std::fs", all()),
                ("std::http", all()),
                ("Web/", all()),
            ]),
            &["--allow-tool"],
        ),
    ];
    for (label, pol, needles) in &policies {
        let tools = Tools::new(pol.clone()).unwrap();
        // A host agent is checked with method `execute`, as the VM does.
        for method in ["execute", ""] {
            let what = format!("[{label}] host Agent ({method:?})");
            let checked = tools.check(&p, "Agent", method);
            judge_check(&mut t, &what, &checked, "Agent", needles);
            if checked.is_ok() {
                let _ = tools.host_exchange(&p, 0, "hello".into()).await;
            }
            t.attempts += 1;
        }
        for server in ["Stdio", "StdioArr", "Web"] {
            for method in ["", "add", "echo"] {
                let what = format!("[{label}] MCP {server} ({method:?})");
                let checked = tools.check(&p, server, method);
                judge_check(&mut t, &what, &checked, server, needles);
                if checked.is_ok() {
                    if method.is_empty() {
                        let _ = tools.specs(&p, server).await;
                    } else {
                        let _ = tools
                            .call(&p, server, method, json!({"a": 1, "b": 2, "text": "x"}))
                            .await;
                    }
                }
                t.attempts += 1;
            }
        }
        tools.shutdown().await;
        for marker in markers {
            if m(marker).exists() {
                t.escaped
                    .push(format!("[{label}] process `{marker}` was started"));
                let _ = std::fs::remove_file(m(marker));
            }
        }
        if forbidden.connections() > 0 {
            t.escaped.push(format!(
                "[{label}] the MCP HTTP server was contacted ({} connections)",
                forbidden.connections()
            ));
        }
    }

    // Positive control: enabled by name, the host agent does start.
    let tools = Tools::new(policy(&[("Agent", Permission::AllMethods)])).unwrap();
    let control = program(json!({"hosts": [host_decl("Agent", &m("control"))]}));
    let ok = tools.check(&control, "Agent", "execute").is_ok();
    let reply = tools.host_exchange(&control, 0, "hello".into()).await;
    t.control(
        ok && matches!(&reply, Ok(r) if r == "echo: hello") && m("control").exists(),
        format!("enabled host agent: check ok={ok}, reply {reply:?}"),
    );
    tools.shutdown().await;
    t.finish(3 * (2 + 9));
}

// ---------------------------------------------------------------------------------------
// 8. Method-level denial (as the VM does: `check`, then the call)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn denied_methods_never_run() {
    let w = World::new();
    w.dir("markers");
    let (marker, log) = (w.path("markers/srv"), w.path("markers/srv.log"));
    let (marker_off, log_off) = (w.path("markers/off"), w.path("markers/off.log"));
    let p = program(json!({
        "tools": [own_tool("Calc"), own_tool("Shut")],
        "connections": [
            mcp_decl("Srv", &marker, &log, false),
            mcp_decl("SrvOff", &marker_off, &log_off, true),
        ],
    }));
    let mut tools = Tools::new(policy(&[
        ("Calc", methods(&["add"])),
        ("Shut", Permission::Disabled),
        ("Srv", methods(&["add"])),
        ("SrvOff", Permission::Disabled),
        ("HostTool", methods(&["a"])),
        ("HostOff", Permission::Disabled),
    ]))
    .unwrap();
    let ran_a = register_counted(&mut tools, "HostTool", "a");
    let ran_b = register_counted(&mut tools, "HostTool", "b");
    let ran_c = register_counted(&mut tools, "HostTool", "c");
    let ran_quiet = register_counted(&mut tools, "Quiet", "x");
    let ran_off = register_counted(&mut tools, "HostOff", "x");
    let mut t = Tally::new("methods");
    let hostile = [
        "sub", "ADD", "Add", "add ", " add", "add\n", "add\0", "add::x", "add,echo", "*", "a",
        "echo", "pid", "exit", "fail", "argv", "env", "cwd", "sleep", "pair", "b", "c", "A", "a ",
        "x",
    ];

    // Own tool with a method list: only `add`.
    t.control(
        tools.check(&p, "Calc", "add").is_ok(),
        "Calc.add allowed".into(),
    );
    for m in hostile.iter().filter(|m| **m != "add") {
        let r = tools.check(&p, "Calc", m);
        judge_check(
            &mut t,
            &format!("own Calc.{m:?}"),
            &r,
            "Calc",
            &["may not call", "--allow-tool Calc."],
        );
        t.attempts += 1;
    }
    // Own tool disabled: nothing, not even the whole tool.
    for m in ["add", "", "run", "execute"] {
        let r = tools.check(&p, "Shut", m);
        judge_check(
            &mut t,
            &format!("own Shut.{m:?}"),
            &r,
            "Shut",
            &["disabled by the host"],
        );
        t.attempts += 1;
    }

    // MCP server with a method list: the allowed tool runs (control), no other reaches it.
    let checked = tools.check(&p, "Srv", "add");
    let sum = tools.call(&p, "Srv", "add", json!({"a": 1, "b": 2})).await;
    t.control(
        checked.is_ok() && sum.is_ok() && call_log(&log) == ["add"] && marker.exists(),
        format!(
            "Srv.add: check {checked:?}, result {sum:?}, log {:?}, started {}",
            call_log(&log),
            marker.exists()
        ),
    );
    for m in hostile.iter().filter(|m| **m != "add") {
        let r = tools.check(&p, "Srv", m);
        judge_check(
            &mut t,
            &format!("MCP Srv.{m:?}"),
            &r,
            "Srv",
            &["may not call", "--allow-tool Srv."],
        );
        if r.is_ok() {
            let _ = tools.call(&p, "Srv", m, json!({})).await;
        }
        t.attempts += 1;
    }
    let seen = call_log(&log);
    t.attempts += 1;
    if seen != ["add"] {
        t.escaped
            .push(format!("the MCP server ran denied tools: {seen:?}"));
    }
    // MCP server disabled: never started.
    for m in ["", "add", "echo"] {
        let r = tools.check(&p, "SrvOff", m);
        judge_check(
            &mut t,
            &format!("MCP SrvOff.{m:?}"),
            &r,
            "SrvOff",
            &["disabled by the host"],
        );
        if r.is_ok() {
            let _ = tools.call(&p, "SrvOff", m, json!({"a": 1, "b": 2})).await;
        }
        t.attempts += 1;
    }
    t.attempts += 1;
    if marker_off.exists() {
        t.escaped.push("the disabled MCP server was started".into());
    }

    // Host-registered tools.
    let r = tools.check(&p, "HostTool", "a");
    let ran = r.is_ok() && tools.call(&p, "HostTool", "a", json!({})).await.is_ok();
    t.control(
        r.is_ok() && ran && ran_a.load(Ordering::SeqCst) == 1,
        "HostTool.a allowed and run once".into(),
    );
    for m in hostile.iter().filter(|m| **m != "a") {
        let r = tools.check(&p, "HostTool", m);
        judge_check(
            &mut t,
            &format!("host tool HostTool.{m:?}"),
            &r,
            "HostTool",
            &["may not call", "--allow-tool HostTool."],
        );
        if r.is_ok() {
            let _ = tools.call(&p, "HostTool", m, json!({})).await;
        }
        t.attempts += 1;
    }
    for (tool, needle) in [
        ("Quiet", "--allow-tool Quiet"),
        ("HostOff", "disabled by the host"),
    ] {
        for m in ["x", "", "y"] {
            let r = tools.check(&p, tool, m);
            judge_check(
                &mut t,
                &format!("host tool {tool}.{m:?}"),
                &r,
                tool,
                &[needle],
            );
            if r.is_ok() {
                let _ = tools.call(&p, tool, m, json!({})).await;
            }
            t.attempts += 1;
        }
    }
    for (name, counter) in [
        ("HostTool.b", &ran_b),
        ("HostTool.c", &ran_c),
        ("Quiet.x", &ran_quiet),
        ("HostOff.x", &ran_off),
    ] {
        t.attempts += 1;
        let n = counter.load(Ordering::SeqCst);
        if n != 0 {
            t.escaped.push(format!("handler {name} ran {n} time(s)"));
        }
    }
    tools.shutdown().await;
    t.finish(90);
}

// ---------------------------------------------------------------------------------------
// 9. The operations themselves, called without `check` (defence in depth)
// ---------------------------------------------------------------------------------------

/// `host_exchange`, `specs` and `call` are the doors to processes and handlers; the crate
/// documentation says processes are only spawned for a server or host enabled by name. This
/// calls them directly, without the `check` the VM makes first.
#[tokio::test]
async fn operations_refuse_what_check_refuses() {
    let w = World::new();
    w.dir("markers");
    let forbidden = Server::start().await;
    let m = |name: &str| w.path(&format!("markers/{name}"));
    let mut t = Tally::new("direct-calls");
    let mcp_url = format!("http://127.0.0.1:{}/mcp", forbidden.port);
    for (label, perm) in [
        ("no permission", None),
        ("disabled", Some(Permission::Disabled)),
        ("other method only", Some(methods(&["only_this"]))),
    ] {
        let tag = label.replace(' ', "-");
        let p = program(json!({
            "hosts": [host_decl("Agent", &m(&format!("{tag}-agent")))],
            "connections": [
                mcp_decl("Srv", &m(&format!("{tag}-srv")), &m(&format!("{tag}-srv.log")), false),
                mcp_http_decl("Web", &mcp_url),
            ],
        }));
        let mut perms = Vec::new();
        if let Some(perm) = &perm {
            for name in ["Agent", "Srv", "Web", "HostTool"] {
                perms.push((name, perm.clone()));
            }
        }
        let mut tools = Tools::new(policy(&perms)).unwrap();
        let ran = register_counted(&mut tools, "HostTool", "x");
        // One attempt: escaped when it had an effect or was not refused; a refusal names
        // the tool.
        let judge = |t: &mut Tally,
                     what: String,
                     refused: Result<(), HostError>,
                     effect: Option<String>| {
            t.attempts += 1;
            let mut reasons: Vec<String> = effect.into_iter().collect();
            match refused {
                Ok(()) => reasons.push("not refused".into()),
                Err(e) if e.kind == HostErrorKind::NotEnabled => {
                    let name = what.split(['(', '.', ')']).nth(1).unwrap_or_default();
                    if !e.message.contains(&format!("'{name}'")) {
                        t.bad_messages
                            .push(format!("[{label}] {what}: {}", shown(&e.message)));
                    }
                }
                Err(e) if reasons.is_empty() => t.bad_messages.push(format!(
                    "[{label}] {what}: failed as {:?} instead of a refusal: {}",
                    e.kind,
                    shown(&e.message)
                )),
                Err(e) => reasons.push(format!("then failed ({:?})", e.kind)),
            }
            if !reasons.is_empty() {
                t.escaped
                    .push(format!("[{label}] {what}: {}", reasons.join("; ")));
            }
        };
        // Host agents use method `execute`; MCP and host tools a method name.
        let r = tools.host_exchange(&p, 0, "hello".into()).await.map(|_| ());
        let marker = m(&format!("{tag}-agent"));
        judge(
            &mut t,
            "host_exchange(Agent)".into(),
            r,
            marker
                .exists()
                .then(|| "the host process was started".into()),
        );
        // With a method list the server is enabled (for those methods): listing its tools
        // may start it, so `specs` is an attempt only without a permission or when disabled.
        let listing_allowed = matches!(perm, Some(Permission::Methods(_)));
        if !listing_allowed {
            let r = tools.specs(&p, "Srv").await.map(|_| ());
            let marker = m(&format!("{tag}-srv"));
            judge(
                &mut t,
                "specs(Srv)".into(),
                r,
                marker.exists().then(|| "the MCP server was started".into()),
            );
        }
        let r = tools
            .call(&p, "Srv", "echo", json!({"text": "x"}))
            .await
            .map(|_| ());
        let log = call_log(&m(&format!("{tag}-srv.log")));
        judge(
            &mut t,
            "call(Srv.echo)".into(),
            r,
            (!log.is_empty()).then(|| format!("the MCP server ran {log:?}")),
        );
        if !listing_allowed {
            let before = forbidden.connections();
            let r = tools.specs(&p, "Web").await.map(|_| ());
            let contacted = forbidden.connections() - before;
            judge(
                &mut t,
                "specs(Web)".into(),
                r,
                (contacted > 0).then(|| {
                    format!("the MCP HTTP server was contacted ({contacted} connections)")
                }),
            );
        }
        let r = tools.call(&p, "HostTool", "x", json!({})).await.map(|_| ());
        let n = ran.load(Ordering::SeqCst);
        judge(
            &mut t,
            "call(HostTool.x)".into(),
            r,
            (n > 0).then(|| format!("the handler ran {n} time(s)")),
        );
        tools.shutdown().await;
    }
    t.finish(13);
}

// ---------------------------------------------------------------------------------------
// 10. Numeric host spellings against name rules
// ---------------------------------------------------------------------------------------

/// http.rs documents that an IP literal in a URL is allowed only when listed itself and
/// that no domain entry ever matches an address. The system resolver reads `0x7f.0.0.1`,
/// `0177.0.0.1`, `127.1` and `127.0.1` as 127.0.0.1, so a name rule that happens to match
/// them must not let them through.
#[tokio::test]
async fn net_numeric_hosts_never_match_name_rules() {
    let forbidden = Server::start().await;
    let p2 = forbidden.port;
    let quiet: [&Server; 1] = [&forbidden];
    let tools = Tools::new(domains(&[
        format!("*.0.0.1:{p2}"),
        format!("*.0.1:{p2}"),
        format!("*.1:{p2}"),
    ]))
    .unwrap();
    let mut t = Tally::new("net-numeric");
    for host in [
        "0x7f.0.0.1",
        "0177.0.0.1",
        "00177.0.0.1",
        "127.1",
        "127.0.1",
        "0x7f.1",
        "0x7f.0.1",
        "127.000.000.001",
        "127.0.0.1",
    ] {
        let attempt = NetAttempt {
            request: get(&format!("http://{host}:{p2}/numeric")),
            expect: Expect::Refused,
            quiet: &quiet,
            never: None,
            needles: vec!["--allow-net".into()],
        };
        net_attempt(&mut t, &tools, attempt).await;
    }
    t.finish(9);
}

// ---------------------------------------------------------------------------------------
// 11. A refusal is not a failure
// ---------------------------------------------------------------------------------------

/// The kind of a failure; `None` for anything else.
fn failure_kind(result: &Result<HttpReply, OutsideError>) -> Option<OutsideFailureKind> {
    match result {
        Err(OutsideError::Failed(failure)) => Some(failure.kind),
        _ => None,
    }
}

/// What the policy refuses is [`OutsideError::Refused`] (a catchable error in the program);
/// an allowed request that goes wrong is [`OutsideError::Failed`] of its kind (an `Err`
/// value in the program).
#[tokio::test]
async fn net_refusals_and_failures_of_each_kind_are_told_apart() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let tools = Tools::new(domains(&["127.0.0.1".to_string()])).unwrap();
    let refused = tools.http(get("http://example.com/")).await;
    assert!(
        matches!(&refused, Err(OutsideError::Refused(m))
            if m.starts_with("std::http: host `example.com` is not allowed")),
        "{refused:?}"
    );
    let relative = tools.http(get("/relative")).await;
    assert_eq!(
        failure_kind(&relative),
        Some(OutsideFailureKind::InvalidRequest),
        "{relative:?}"
    );
    let brew = HttpRequest {
        method: "BREW".into(),
        ..get("http://127.0.0.1/")
    };
    let brewed = tools.http(brew).await;
    assert_eq!(
        failure_kind(&brewed),
        Some(OutsideFailureKind::InvalidRequest),
        "{brewed:?}"
    );
    let unreachable = tools
        .http(get(&format!("http://127.0.0.1:{closed}/")))
        .await;
    assert_eq!(
        failure_kind(&unreachable),
        Some(OutsideFailureKind::Connection),
        "{unreachable:?}"
    );
    let start = format!("std::http: GET http://127.0.0.1:{closed}/ failed: ");
    assert!(
        unreachable.unwrap_err().to_string().starts_with(&start),
        "the program's text names the request"
    );
}
