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
//! Processes are identified by everything that defines them (host name, command,
//! arguments, environment, working directory), so two programs declaring the same host
//! share its process. [`HostAgents::shutdown`] kills every process; dropping a
//! [`HostAgents`] kills them too.
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
/// The longest reply line read (32 MiB).
pub const MAX_REPLY_LINE: usize = 32 * 1024 * 1024;
/// How much of a process's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;
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
    env: Vec<(String, String)>,
    working_dir: Option<String>,
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
    io: tokio::sync::Mutex<Option<Pipes>>,
    /// The process, reachable without the call lock (for [`HostAgents::shutdown`]).
    child: Mutex<Option<Child>>,
}

impl Slot {
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

    /// One exchange with host `program.hosts[host]`: writes `input` and a newline, reads
    /// one line and returns the reply text (see the module documentation).
    ///
    /// # Errors
    /// [`HostErrorKind::Timeout`] when the host does not answer in time (the process is
    /// killed); [`HostErrorKind::Limit`] when the reply line is too long; otherwise
    /// [`HostErrorKind::Failed`] naming the host: no such host, no command, invalid `env`,
    /// missing working directory, a command that cannot be started, a process that exited.
    pub async fn exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> Result<String, HostError> {
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
                HostError::failed(format!(
                    "Host '{name}' has no command to start; set `command` in \
                     [hosts.{}] of Concerto.toml",
                    decl.connector
                ))
            })?;
        let env = env_pairs(&name, decl.env.as_ref())?;
        let spec = Spec {
            name,
            command,
            args: decl.args.clone(),
            env,
            working_dir: decl.working_dir.clone().filter(|d| !d.is_empty()),
        };
        let secs = decl
            .timeout
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_TIMEOUT_SECS);
        let json = decl.output_format.trim().eq_ignore_ascii_case("json");

        let slot = Arc::clone(self.slots.lock().entry(spec.clone()).or_default());
        let mut io = slot.io.lock().await;
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
                return Err(HostError {
                    kind: HostErrorKind::Timeout,
                    message: format!("Host '{}' timed out after {secs} seconds", spec.name),
                });
            }
        };
        drop(io);
        Ok(if json { json_text(line) } else { line })
    }

    /// Kills every process. A later call starts its host again.
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().drain().map(|(_, s)| s).collect();
        for slot in slots {
            slot.kill().await;
        }
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
    if io.is_some() {
        let exited = match slot.child.lock().as_mut() {
            Some(child) => child.try_wait().ok().flatten().map(Some),
            None => Some(None),
        };
        if let Some(status) = exited {
            return Err(died(slot, io, spec, status).await);
        }
    } else {
        let (child, pipes) = spawn(spec)?;
        *slot.child.lock() = Some(child);
        *io = Some(pipes);
    }
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
    match read_line(&mut pipes.stdout, MAX_REPLY_LINE).await {
        Ok(Some(mut line)) => {
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            Ok(String::from_utf8_lossy(&line).into_owned())
        }
        Ok(None) => Err(died(slot, io, spec, None).await),
        Err(ReadError::Io(e)) => {
            tracing::debug!(target: "concerto_tools::hosts", host = %spec.name, "reading the reply failed: {e}");
            Err(died(slot, io, spec, None).await)
        }
        Err(ReadError::TooLong) => {
            *io = None;
            slot.kill().await;
            Err(HostError::limit(format!(
                "Host '{}' replied with a line longer than {} MiB; the process was stopped",
                spec.name,
                MAX_REPLY_LINE / (1024 * 1024)
            )))
        }
    }
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
    let mut message = format!("Host '{}' process exited unexpectedly", spec.name);
    if !details.is_empty() {
        message.push_str(&format!(" ({})", details.join("; ")));
    }
    HostError::failed(message)
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
