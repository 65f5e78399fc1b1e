//! Host agents: external agent processes spoken to over stdin/stdout, one line each way.
//!
//! Each host of a program (`program.hosts[i]`) is started once, on its first call, as
//! `command args…` (directly, never through a shell) with its `env` added to the runtime's
//! environment and `working_dir` as its current directory, then kept running between calls.
//! One call writes the input (already in the host's input format) followed by `\n` and reads
//! one line of stdout. With output format `json`, the reply is the `text` member when the
//! line is a JSON object with a string `text`, otherwise the raw line; with `text`, the line
//! without its line ending (`\n` or `\r\n`).
//!
//! Calls to the same host run one at a time, in arrival order. Each has the host's
//! `timeout` (seconds, 120 when unset or 0); on timeout the process is killed, the call fails
//! with a [`HostErrorKind::Timeout`] naming the host, and the next call starts a fresh
//! process. A process that has exited, or closed its stdout, fails the call with
//! `Host '<name>' process exited unexpectedly` followed by its exit status and the end of
//! its stderr when known; the next call starts it again.
//!
//! The process's stderr is captured: every line is logged at debug level (tracing target
//! `concerto_tools::hosts`) and its last few kilobytes are kept for the error message when
//! the process dies. It never reaches the runtime's own output.
//!
//! Initialisation (7ad10db `[agents.NAME.params]`): a host with a non-empty `params` table is
//! sent `{"type":"init","params":…}` as the first line after its process starts, and must
//! answer `{"type":"init_ack",…}` within its timeout (10 s when it sets none); an
//! `{"type":"error","message":…}` reply, any other line, an exit or the timeout fail the call
//! with an error naming the host, and the process is stopped. Init is sent once per process.
//!
//! Streaming (`listen`, [`HostAgents::listen`]): the prompt is written as for a call, then the
//! session reads the agent's lines one at a time and writes replies, holding the host's call
//! lock until it ends; the host's timeout bounds the whole session. A session that ends
//! without a terminal message (or is dropped) stops the process.
//!
//! Processes are identified by everything that defines them (host name, command,
//! arguments, environment, working directory, params), so two programs declaring the same
//! host share its process. [`HostAgents::shutdown`] closes every process gracefully: its
//! stdin is closed (end of file), it has [`CLOSE_GRACE`] to exit by itself, and is killed
//! if it has not. Dropping a [`HostAgents`] without it kills the processes (nothing can be
//! awaited in `Drop`).
//!
//! Permission checks are the caller's job.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use concerto_vm::host::{HostError, HostErrorKind, Program};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// A call's time limit when the host sets none, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// How long an initialisation may take when the host sets no timeout, in seconds.
pub const DEFAULT_INIT_TIMEOUT_SECS: u64 = 10;
/// The longest timeout a host may set (one year); larger values are cut to it.
const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// The longest reply line read (32 MiB).
pub const MAX_REPLY_LINE: usize = 32 * 1024 * 1024;
/// How much of a process's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;
/// How long [`HostAgents::shutdown`] lets a process exit by itself after its stdin closed.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long a killed process is waited for.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long the end of a dead process's stderr is waited for.
const STDERR_WAIT: Duration = Duration::from_millis(500);

/// What defines one host process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Spec {
    name: String,
    command: String,
    args: Vec<String>,
    /// What the process inherits from the runtime's environment ([`crate::child_env`]).
    inherited: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The variables the manifest entry declares (set after the inherited ones).
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    /// The init params as JSON text, when the host has a non-empty params table.
    params: Option<String>,
    /// The init handshake's time limit.
    init_secs: u64,
}

/// The pipes of a running process.
struct Pipes {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<String>>,
    stderr_task: Option<JoinHandle<()>>,
}

/// One host's process, if running.
#[derive(Default)]
struct Slot {
    /// Held for the whole of a call: calls to one host run one at a time.
    io: Arc<tokio::sync::Mutex<Option<Pipes>>>,
    /// The process, reachable without the call lock (for [`HostAgents::shutdown`]).
    child: Mutex<Option<Child>>,
}

impl Slot {
    /// Closes the process (if any) gracefully: its pipes are dropped, so it reads end of
    /// file on stdin, and it has [`CLOSE_GRACE`] to exit; then it is killed. A call or
    /// `listen` session still in flight keeps the pipes: that process is killed after the
    /// grace period like one that does not exit.
    async fn close(&self) -> Option<ExitStatus> {
        if let Ok(mut io) = self.io.try_lock() {
            *io = None;
        }
        let mut child = self.child.lock().take()?;
        if let Ok(Ok(status)) = tokio::time::timeout(CLOSE_GRACE, child.wait()).await {
            return Some(status);
        }
        let _ = child.start_kill();
        tokio::time::timeout(KILL_WAIT, child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Kills the process (if any) and waits for it.
    async fn kill(&self) -> Option<ExitStatus> {
        let child = self.child.lock().take();
        let mut child = child?;
        // An error means the process has already exited; `wait` reports it either way.
        let _ = child.start_kill();
        tokio::time::timeout(KILL_WAIT, child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// The host agent processes of a runtime (see the [module documentation](self)).
#[derive(Default)]
pub struct HostAgents {
    slots: Mutex<HashMap<Spec, Arc<Slot>>>,
    base_dir: Option<std::path::PathBuf>,
    /// Variables of the runtime's environment a process may inherit besides the base ones.
    env_allowed: Vec<String>,
    /// The host's values of variables (an env file), over the process's own.
    env_values: Vec<(String, String)>,
}

impl fmt::Debug for HostAgents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.slots.lock().keys().map(|s| s.name.clone()).collect();
        f.debug_struct("HostAgents").field("hosts", &names).finish()
    }
}

impl HostAgents {
    /// No process running yet.
    pub fn new() -> HostAgents {
        HostAgents::default()
    }

    /// Resolves relative paths of hosts against `dir` (the folder of the program the user
    /// named): a relative `working_dir` joins `dir`; a `command` with a slash and arguments
    /// that name an existing file or folder relative to `dir` become absolute paths there (so
    /// `python3 agent.py` finds `agent.py` next to the program wherever the runtime was
    /// started); other relative paths stay relative to the working directory.
    pub fn with_base_dir(mut self, dir: impl Into<std::path::PathBuf>) -> HostAgents {
        self.base_dir = Some(dir.into());
        self
    }

    /// Lets host processes inherit the runtime's variables matching `patterns` (`NAME` or
    /// `PREFIX*`) besides the base ones (see [`crate::child_env`]).
    pub fn with_env_allowed(mut self, patterns: Vec<String>) -> HostAgents {
        self.env_allowed = patterns;
        self
    }

    /// The host's view of variables that differs from this process's environment (an env
    /// file): an allowed one is inherited with this value (see [`crate::child_env`]).
    pub fn with_env_values(mut self, values: Vec<(String, String)>) -> HostAgents {
        self.env_values = values;
        self
    }

    /// The process spec of host `program.hosts[host]`, its timeout and whether it answers
    /// JSON (see [`spec_of`]).
    fn spec(&self, program: &Program, host: u32) -> Result<(Spec, u64, bool), HostError> {
        spec_of(
            program,
            host,
            self.base_dir.as_deref(),
            &self.env_allowed,
            &self.env_values,
        )
    }

    /// One exchange with host `program.hosts[host]`: writes `input` and a newline, reads
    /// one line and returns the reply text (see the module documentation).
    ///
    /// # Errors
    /// [`HostErrorKind::Timeout`] when the host does not answer in time (the process is
    /// killed, or it did not get its turn in that time); otherwise
    /// [`HostErrorKind::Failed`] naming the host: no such host, no command, invalid `env`,
    /// missing working directory, a command that cannot be started, a process that exited.
    pub async fn exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> Result<String, HostError> {
        let (spec, secs, json) = self.spec(program, host)?;
        let slot = Arc::clone(self.slots.lock().entry(spec.clone()).or_default());
        let Ok(mut io) = tokio::time::timeout(Duration::from_secs(secs), slot.io.lock()).await
        else {
            return Err(busy(&spec.name, secs));
        };
        // Starting (with its own init timeout) is not part of the call's time.
        start(&slot, &mut io, &spec).await?;
        let outcome = tokio::time::timeout(
            Duration::from_secs(secs),
            call(&slot, &mut io, &spec, &input),
        )
        .await;
        let line = match outcome {
            Ok(result) => result?,
            Err(_) => {
                *io = None;
                slot.kill().await;
                return Err(timed_out(&spec.name, secs));
            }
        };
        drop(io);
        Ok(if json { json_text(line) } else { line })
    }

    /// Opens a streaming session with host `program.hosts[host]`: starts the process if
    /// needed (with its init handshake), writes `input` and a newline, and returns the
    /// session, which holds the host's call lock until it ends. The host's timeout bounds the
    /// whole session, from this call on.
    ///
    /// # Errors
    /// As [`HostAgents::exchange`] for starting the process and writing the prompt.
    pub async fn listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> Result<ListenSession, HostError> {
        let (spec, secs, _) = self.spec(program, host)?;
        let slot = Arc::clone(self.slots.lock().entry(spec.clone()).or_default());
        let turn = Arc::clone(&slot.io).lock_owned();
        let Ok(mut io) = tokio::time::timeout(Duration::from_secs(secs), turn).await else {
            return Err(busy(&spec.name, secs));
        };
        start(&slot, &mut io, &spec).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let opened = tokio::time::timeout_at(deadline, open(&slot, &mut io, &spec, &input)).await;
        match opened {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                *io = None;
                slot.kill().await;
                return Err(timed_out(&spec.name, secs));
            }
        }
        Ok(ListenSession {
            inner: Arc::new(tokio::sync::Mutex::new(io)),
            slot,
            name: spec.name,
            deadline,
            secs,
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Closes every process gracefully, all at once: stdin closed, [`CLOSE_GRACE`] to exit,
    /// then killed. Returns when every process has exited. A later call starts its host
    /// again.
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().drain().map(|(_, s)| s).collect();
        let mut closing = tokio::task::JoinSet::new();
        for slot in slots {
            closing.spawn(async move { slot.close().await });
        }
        while closing.join_next().await.is_some() {}
    }
}

/// What defines host `program.hosts[host]`'s process, its timeout in seconds, and whether its
/// output format is `json`.
fn spec_of(
    program: &Program,
    host: u32,
    base: Option<&Path>,
    env_allowed: &[String],
    env_values: &[(String, String)],
) -> Result<(Spec, u64, bool), HostError> {
    let Some(decl) = program.hosts.get(host as usize) else {
        return Err(HostError::failed(format!(
            "host #{host} does not exist (the program declares {})",
            program.hosts.len()
        )));
    };
    let name = decl.name.clone();
    let command = decl
        .command
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            let table = match program.dialect {
                concerto_vm::host::Dialect::Head => "agents",
                _ => "hosts",
            };
            HostError::failed(format!(
                "Host '{name}' has no command to start; set `command` in \
                 [{table}.{}] of Concerto.toml",
                decl.connector
            ))
        })?;
    let env = env_pairs(&name, decl.env.as_ref())?;
    let params = match &decl.params {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) if map.is_empty() => None,
        Some(other) => Some(other.to_string()),
    };
    let configured = decl
        .timeout
        .filter(|t| *t > 0)
        .map(|t| t.min(MAX_TIMEOUT_SECS));
    let (command, args, working_dir) = crate::resolve_paths(
        base,
        &command,
        &decl.args,
        decl.working_dir.as_deref().filter(|d| !d.is_empty()),
    );
    let spec = Spec {
        name,
        command,
        args,
        inherited: crate::child_env(env_allowed, env_values),
        env,
        working_dir,
        params,
        init_secs: configured.unwrap_or(DEFAULT_INIT_TIMEOUT_SECS),
    };
    let secs = configured.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let json = decl.output_format.trim().eq_ignore_ascii_case("json");
    Ok((spec, secs, json))
}

/// A call that did not get its turn: calls to one agent run one at a time, and a `listen`
/// session holds the agent until it ends.
fn busy(name: &str, secs: u64) -> HostError {
    HostError {
        kind: HostErrorKind::Timeout,
        message: format!(
            "agent '{name}' is busy: no turn within {secs} seconds (a listen session with it \
             is open, or another call is running; a listen handler cannot call its own agent)"
        ),
        provider: None,
    }
}

fn timed_out(name: &str, secs: u64) -> HostError {
    HostError {
        kind: HostErrorKind::Timeout,
        message: format!("Host '{name}' timed out after {secs} seconds"),
        provider: None,
    }
}

/// A streaming session with a host agent (see [`HostAgents::listen`]).
pub struct ListenSession {
    inner: Arc<tokio::sync::Mutex<tokio::sync::OwnedMutexGuard<Option<Pipes>>>>,
    slot: Arc<Slot>,
    name: String,
    deadline: tokio::time::Instant,
    secs: u64,
    done: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for ListenSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenSession")
            .field("host", &self.name)
            .finish()
    }
}

impl ListenSession {
    /// The next line the agent wrote, without its line ending; `None` when the session has
    /// no process any more.
    ///
    /// # Errors
    /// [`HostErrorKind::Timeout`] once the session's time is up (the process is stopped);
    /// [`HostErrorKind::Failed`] when the agent closed its output or exited (`agent exited
    /// without result`, with its exit code and the end of its stderr), for a line over 32 MiB
    /// (the process is stopped) or when reading fails.
    pub async fn next_line(&self) -> Result<Option<String>, HostError> {
        let mut io = self.inner.lock().await;
        let Some(pipes) = io.as_mut() else {
            return Ok(None);
        };
        match tokio::time::timeout_at(self.deadline, read_line(&mut pipes.stdout, MAX_REPLY_LINE))
            .await
        {
            Ok(Ok(Some(line))) => Ok(Some(strip_newline(line))),
            Ok(Ok(None)) | Ok(Err(ReadError::Io(_))) => {
                // The agent ended (or its output broke) without a terminal message: say how.
                let details = ended(&self.slot, &mut io, None).await;
                Err(HostError::failed(format!(
                    "agent exited without result{details}"
                )))
            }
            Ok(Err(ReadError::TooLong)) => {
                **io = None;
                self.slot.kill().await;
                Err(HostError::failed(format!(
                    "Host '{}' wrote a line longer than {} MiB; the process was stopped",
                    self.name,
                    MAX_REPLY_LINE / (1024 * 1024)
                )))
            }
            Err(_) => {
                **io = None;
                self.slot.kill().await;
                Err(timed_out(&self.name, self.secs))
            }
        }
    }

    /// Writes `line` and a newline to the agent.
    ///
    /// # Errors
    /// [`HostErrorKind::Failed`] when the agent no longer reads its input.
    pub async fn send_line(&self, line: String) -> Result<(), HostError> {
        let mut io = self.inner.lock().await;
        let Some(pipes) = io.as_mut() else {
            return Err(HostError::failed(format!(
                "Host '{}' process is not running",
                self.name
            )));
        };
        let mut message = line.into_bytes();
        message.push(b'\n');
        let written = tokio::time::timeout_at(self.deadline, async {
            pipes.stdin.write_all(&message).await?;
            pipes.stdin.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                **io = None;
                self.slot.kill().await;
                Err(HostError::failed(format!(
                    "Host '{}' stopped reading its input",
                    self.name
                )))
            }
            Err(_) => {
                **io = None;
                self.slot.kill().await;
                Err(timed_out(&self.name, self.secs))
            }
        }
    }

    /// Ends the session; unless `clean`, the process is stopped (the next call starts it
    /// again).
    pub fn finish(&self, clean: bool) {
        if self.done.swap(true, std::sync::atomic::Ordering::SeqCst) || clean {
            return;
        }
        if let Ok(mut io) = self.inner.try_lock() {
            **io = None;
        }
        if let Some(mut child) = self.slot.child.lock().take() {
            let _ = child.start_kill();
            // Reap it in the background so no zombie is left.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
                });
            }
        }
    }
}

impl Drop for ListenSession {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The host's `env` as pairs of strings (numbers and booleans as their text).
fn env_pairs(
    name: &str,
    env: Option<&serde_json::Value>,
) -> Result<Vec<(String, String)>, HostError> {
    let Some(env) = env else {
        return Ok(Vec::new());
    };
    let serde_json::Value::Object(map) = env else {
        return Err(HostError::failed(format!(
            "Host '{name}': `env` must be a table of strings"
        )));
    };
    let mut pairs = Vec::with_capacity(map.len());
    for (key, value) in map {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(HostError::failed(format!(
                    "Host '{name}': environment variable `{key}` must be a string"
                )));
            }
        };
        pairs.push((key.clone(), text));
    }
    Ok(pairs)
}

/// With output format `json`: the string `text` member of a JSON object, else the line.
fn json_text(line: String) -> String {
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(serde_json::Value::Object(mut map)) => match map.remove("text") {
            Some(serde_json::Value::String(text)) => text,
            _ => line,
        },
        _ => line,
    }
}

/// One call with the slot's call lock held: start the process if needed, write, read.
async fn call(
    slot: &Slot,
    io: &mut Option<Pipes>,
    spec: &Spec,
    input: &str,
) -> Result<String, HostError> {
    open(slot, io, spec, input).await?;
    let Some(pipes) = io.as_mut() else {
        return Err(HostError::failed(format!(
            "Host '{}' process is not running",
            spec.name
        )));
    };
    match read_line(&mut pipes.stdout, MAX_REPLY_LINE).await {
        Ok(Some(line)) => Ok(strip_newline(line)),
        Ok(None) => Err(died(slot, io, spec, None).await),
        Err(ReadError::Io(e)) => {
            tracing::debug!(target: "concerto_tools::hosts", host = %spec.name, "reading the reply failed: {e}");
            Err(died(slot, io, spec, None).await)
        }
        Err(ReadError::TooLong) => {
            *io = None;
            slot.kill().await;
            Err(HostError::failed(format!(
                "Host '{}' replied with a line longer than {} MiB; the process was stopped",
                spec.name,
                MAX_REPLY_LINE / (1024 * 1024)
            )))
        }
    }
}

/// A line without its `\n` or `\r\n`, as text.
fn strip_newline(mut line: Vec<u8>) -> String {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// With the call lock held: start the process if it is not running, and initialise it
/// (within the init timeout) when the host has params.
async fn start(slot: &Slot, io: &mut Option<Pipes>, spec: &Spec) -> Result<(), HostError> {
    if io.is_some() {
        let exited = match slot.child.lock().as_mut() {
            Some(child) => child.try_wait().ok().flatten().map(Some),
            None => Some(None),
        };
        if let Some(status) = exited {
            return Err(died(slot, io, spec, status).await);
        }
        return Ok(());
    }
    let (child, pipes) = spawn(spec)?;
    *slot.child.lock() = Some(child);
    *io = Some(pipes);
    let Some(params) = &spec.params else {
        return Ok(());
    };
    let limit = Duration::from_secs(spec.init_secs);
    match tokio::time::timeout(limit, initialise(slot, io, spec, params)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            *io = None;
            slot.kill().await;
            Err(e)
        }
        Err(_) => {
            *io = None;
            slot.kill().await;
            Err(HostError {
                kind: HostErrorKind::Timeout,
                message: format!(
                    "agent '{}' did not acknowledge initialization within {} seconds",
                    spec.name, spec.init_secs
                ),
                provider: None,
            })
        }
    }
}

/// With the call lock held and the process started: write `input` and a newline.
async fn open(
    slot: &Slot,
    io: &mut Option<Pipes>,
    spec: &Spec,
    input: &str,
) -> Result<(), HostError> {
    start(slot, io, spec).await?;
    let Some(pipes) = io.as_mut() else {
        return Err(HostError::failed(format!(
            "Host '{}' process is not running",
            spec.name
        )));
    };
    let mut message = Vec::with_capacity(input.len() + 1);
    message.extend_from_slice(input.as_bytes());
    message.push(b'\n');
    let written = async {
        pipes.stdin.write_all(&message).await?;
        pipes.stdin.flush().await
    }
    .await;
    if written.is_err() {
        return Err(died(slot, io, spec, None).await);
    }
    Ok(())
}

/// The init handshake: `{"type":"init","params":…}`, then one line that must be `init_ack`.
async fn initialise(
    slot: &Slot,
    io: &mut Option<Pipes>,
    spec: &Spec,
    params: &str,
) -> Result<(), HostError> {
    let name = &spec.name;
    let Some(pipes) = io.as_mut() else {
        return Err(HostError::failed(format!(
            "agent '{name}' process is not running"
        )));
    };
    let init = format!("{{\"type\":\"init\",\"params\":{params}}}\n");
    let written = async {
        pipes.stdin.write_all(init.as_bytes()).await?;
        pipes.stdin.flush().await
    }
    .await;
    if written.is_err() {
        return Err(died(slot, io, spec, None).await);
    }
    let line = match read_line(&mut pipes.stdout, MAX_REPLY_LINE).await {
        Ok(Some(line)) => strip_newline(line),
        Ok(None) | Err(ReadError::Io(_)) => {
            let err = died(slot, io, spec, None).await;
            return Err(HostError::failed(format!(
                "agent '{name}' did not acknowledge initialization: {}",
                err.message
            )));
        }
        Err(ReadError::TooLong) => {
            return Err(HostError::failed(format!(
                "agent '{name}' answered its initialization with an over-long line"
            )));
        }
    };
    let reply: Option<serde_json::Value> = serde_json::from_str(line.trim()).ok();
    match reply
        .as_ref()
        .and_then(|r| r.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("init_ack") => Ok(()),
        Some("error") => {
            let message = reply
                .as_ref()
                .and_then(|r| r.get("message"))
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                .unwrap_or_else(|| "no message".to_string());
            Err(HostError::failed(format!(
                "agent '{name}' failed to initialize: {message}"
            )))
        }
        _ => Err(HostError::failed(format!(
            "agent '{name}' did not acknowledge initialization (it answered `{}`)",
            truncate(&line, 200)
        ))),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// Starts the process of `spec`.
fn spawn(spec: &Spec) -> Result<(Child, Pipes), HostError> {
    let name = &spec.name;
    if let Some(dir) = &spec.working_dir
        && !Path::new(dir).is_dir()
    {
        return Err(HostError::failed(format!(
            "Host '{name}': working directory `{dir}` does not exist or is not a directory"
        )));
    }
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.inherited.iter().map(|(k, v)| (k, v)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|e| {
        let what = &spec.command;
        HostError::failed(match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("Host '{name}': command `{what}` not found ({e})")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("Host '{name}': command `{what}` cannot be run ({e})")
            }
            _ => format!("Host '{name}': command `{what}` cannot be started ({e})"),
        })
    })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.start_kill();
        return Err(HostError::failed(format!(
            "Host '{name}': the process's stdin and stdout could not be connected"
        )));
    };
    let stderr_tail = Arc::new(Mutex::new(String::new()));
    let stderr_task = child.stderr.take().map(|stderr| {
        let tail = Arc::clone(&stderr_tail);
        let host = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "concerto_tools::hosts", host = %host, "{line}");
                let mut tail = tail.lock();
                if !tail.is_empty() {
                    tail.push('\n');
                }
                tail.push_str(&line);
                if tail.len() > STDERR_TAIL {
                    let mut cut = tail.len() - STDERR_TAIL;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
        })
    });
    tracing::debug!(target: "concerto_tools::hosts", host = %name, command = %spec.command, "host process started");
    Ok((
        child,
        Pipes {
            stdin,
            stdout: BufReader::new(stdout),
            stderr_tail,
            stderr_task,
        },
    ))
}

/// Ends a process that stopped answering (exited or closed its stdout) and builds the
/// error; the next call starts it again.
async fn died(
    slot: &Slot,
    io: &mut Option<Pipes>,
    spec: &Spec,
    status: Option<ExitStatus>,
) -> HostError {
    let details = ended(slot, io, status).await;
    HostError::failed(format!(
        "Host '{}' process exited unexpectedly{details}",
        spec.name
    ))
}

/// Stops a process that ended or stopped answering, and says how it ended: ` (exit code 3;
/// stderr: …)`, or nothing when nothing is known.
async fn ended(slot: &Slot, io: &mut Option<Pipes>, status: Option<ExitStatus>) -> String {
    let killed = slot.kill().await;
    let status = status.or(killed);
    let mut details = Vec::new();
    if let Some(status) = status {
        details.push(match status.code() {
            Some(code) => format!("exit code {code}"),
            None => status.to_string(),
        });
    }
    if let Some(mut pipes) = io.take() {
        if let Some(task) = pipes.stderr_task.take() {
            let _ = tokio::time::timeout(STDERR_WAIT, task).await;
        }
        let tail = pipes.stderr_tail.lock().trim().to_string();
        if !tail.is_empty() {
            details.push(format!("stderr: {tail}"));
        }
    }
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({})", details.join("; "))
    }
}

enum ReadError {
    Io(std::io::Error),
    TooLong,
}

/// One line, newline included; `None` at end of stream. Text after the last newline is
/// returned as a line when the stream ends.
async fn read_line(
    reader: &mut BufReader<ChildStdout>,
    max: usize,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(ReadError::Io)?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then_some(line));
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(buf.get(..take).unwrap_or(buf));
        reader.consume(take);
        if line.len() > max + 1 {
            return Err(ReadError::TooLong);
        }
        if done {
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program with one host agent declared as `host` (IR JSON).
    fn program_with(host: serde_json::Value) -> Program {
        crate::test_program(serde_json::json!({ "agents": [host] }))
    }

    #[test]
    fn init_waits_ten_seconds_without_a_timeout_and_the_agents_own_with_one() {
        let base = serde_json::json!({"name": "A", "connector": "a", "command": "true",
            "params": {"k": 1}});
        let (spec, secs, _) = spec_of(&program_with(base.clone()), 0, None, &[], &[]).unwrap();
        assert_eq!((spec.init_secs, secs), (10, DEFAULT_TIMEOUT_SECS));
        assert_eq!(spec.params.as_deref(), Some(r#"{"k":1}"#));
        let mut timed = base;
        timed["timeout"] = serde_json::json!(3);
        let (spec, secs, _) = spec_of(&program_with(timed), 0, None, &[], &[]).unwrap();
        assert_eq!((spec.init_secs, secs), (3, 3));
        // Empty params mean no handshake at all.
        let empty = serde_json::json!({"name": "A", "connector": "a", "command": "true",
            "params": {}});
        assert_eq!(
            spec_of(&program_with(empty), 0, None, &[], &[])
                .unwrap()
                .0
                .params,
            None
        );
    }

    #[test]
    fn json_output_takes_a_string_text_member_only() {
        assert_eq!(json_text(r#"{"text":"hi","n":1}"#.into()), "hi");
        assert_eq!(json_text(r#"{"text":5}"#.into()), r#"{"text":5}"#);
        assert_eq!(json_text(r#"["text"]"#.into()), r#"["text"]"#);
        assert_eq!(json_text("plain".into()), "plain");
    }

    #[test]
    fn env_accepts_strings_numbers_and_booleans() {
        let env = serde_json::json!({"A": "x", "B": 2, "C": true});
        let pairs = env_pairs("H", Some(&env)).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A".to_string(), "x".to_string()),
                ("B".to_string(), "2".to_string()),
                ("C".to_string(), "true".to_string())
            ]
        );
        let bad = serde_json::json!({"A": {"nested": 1}});
        assert!(
            env_pairs("H", Some(&bad))
                .unwrap_err()
                .message
                .contains("`A`")
        );
        assert!(env_pairs("H", Some(&serde_json::json!([1]))).is_err());
    }
}
