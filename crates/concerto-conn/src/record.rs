//! Record and replay: wrappers around any [`Connections`].
//!
//! [`Recorder`] passes every call through to the connection layer it wraps and appends one
//! JSON line per call to a file:
//!
//! ```text
//! {"seq": 1, "connection": "openai", "request": {…ChatRequest…}, "response": {…ChatResponse…}, "error": null}
//! {"seq": 2, "connection": "openai", "request": {…}, "response": null, "error": {"kind": "timeout", "message": "…"}}
//! ```
//!
//! [`Replayer`] answers from such a file without any network: each request gets the first
//! unused entry recorded on the same connection for an equal request. Requests carry no
//! API keys, so recordings contain none.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use concerto_vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, HostErrorKind,
    Program,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// One line of a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecordLine {
    /// Call number, in the order calls started (lines are written as calls finish).
    seq: u64,
    /// The connection's name.
    connection: String,
    /// The request as the VM made it.
    request: ChatRequest,
    /// The reply, or `null` when the call failed.
    response: Option<ChatResponse>,
    /// The failure, or `null` when the call succeeded.
    error: Option<RecordedError>,
}

/// A recorded [`HostError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RecordedError {
    /// `failed`, `timeout`, `limit`, `unsupported` or `not_enabled`.
    kind: String,
    /// The error text.
    message: String,
}

fn kind_name(kind: HostErrorKind) -> &'static str {
    match kind {
        HostErrorKind::Unsupported => "unsupported",
        HostErrorKind::NotEnabled => "not_enabled",
        HostErrorKind::Timeout => "timeout",
        HostErrorKind::Limit => "limit",
        HostErrorKind::Failed => "failed",
        _ => "failed",
    }
}

fn kind_from_name(name: &str) -> Option<HostErrorKind> {
    Some(match name {
        "unsupported" => HostErrorKind::Unsupported,
        "not_enabled" => HostErrorKind::NotEnabled,
        "timeout" => HostErrorKind::Timeout,
        "limit" => HostErrorKind::Limit,
        "failed" => HostErrorKind::Failed,
        _ => return None,
    })
}

/// The name of connection `connection` of `program` (`#<index>` for an index it lacks).
fn connection_name(program: &Program, connection: ConnectionId) -> String {
    program
        .connections
        .get(connection.index())
        .map_or_else(|| format!("#{}", connection.0), |c| c.name.clone())
}

/// The recording file, shared by all calls of one [`Recorder`].
struct RecordLog {
    path: PathBuf,
    /// Held while one line is written, so concurrent calls never interleave.
    file: Mutex<File>,
    /// The last call number handed out.
    seq: AtomicU64,
}

impl RecordLog {
    /// Writes one whole line, flushes it and syncs it to disk.
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock();
        file.write_all(line)?;
        file.flush()?;
        file.sync_data()
    }

    /// Appends one line without blocking an async worker thread (on a Tokio runtime the
    /// write runs on the blocking pool; elsewhere it runs in place).
    async fn append(self: Arc<Self>, line: Vec<u8>) -> io::Result<()> {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(move || self.write_line(&line))
                .await
                .map_err(|err| io::Error::other(format!("the writing task failed: {err}")))?,
            Err(_) => self.write_line(&line),
        }
    }
}

/// Records every call made through the connection layer it wraps.
pub struct Recorder {
    inner: Arc<dyn Connections>,
    log: Arc<RecordLog>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.log.path)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts a new recording at `path` (an existing file is replaced) of the calls made
    /// through `inner`.
    ///
    /// # Errors
    /// The file cannot be created.
    pub fn new(inner: Arc<dyn Connections>, path: impl AsRef<Path>) -> io::Result<Recorder> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot create the recording {}: {err}", path.display()),
            )
        })?;
        Ok(Recorder {
            inner,
            log: Arc::new(RecordLog {
                path,
                file: Mutex::new(file),
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.log.path
    }

    /// Awaits `call` (a call of `request` on connection `connection`) and records its
    /// outcome before returning it.
    fn record(
        &self,
        connection: String,
        request: ChatRequest,
        call: BoxFuture<Result<ChatResponse, HostError>>,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let seq = self.log.seq.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(record_call(
            Arc::clone(&self.log),
            seq,
            connection,
            request,
            call,
        ))
    }
}

async fn record_call(
    log: Arc<RecordLog>,
    seq: u64,
    connection: String,
    request: ChatRequest,
    call: BoxFuture<Result<ChatResponse, HostError>>,
) -> Result<ChatResponse, HostError> {
    let result = call.await;
    let agent = request.agent.clone();
    let path = log.path.display().to_string();
    let line = RecordLine {
        seq,
        connection,
        request,
        response: result.as_ref().ok().cloned(),
        error: result.as_ref().err().map(|err| RecordedError {
            kind: kind_name(err.kind).to_string(),
            message: err.message.clone(),
        }),
    };
    let written = match serde_json::to_vec(&line) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            log.append(bytes).await
        }
        Err(err) => Err(io::Error::other(err)),
    };
    if let Err(err) = written {
        // The caller asked for a recording; losing a call silently would make it useless.
        return Err(HostError::failed(format!(
            "could not append call {seq} (agent `{agent}`, connection `{}`) to the recording \
             {path}: {err}",
            line.connection
        )));
    }
    result
}

impl Connections for Recorder {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let name = connection_name(program, connection);
        let call = self.inner.chat(program, connection, request.clone());
        self.record(name, request, call)
    }
}

/// One recorded call, ready to answer.
#[derive(Debug)]
struct Entry {
    connection: String,
    /// The request serialised, for comparison.
    request: String,
    outcome: Result<ChatResponse, HostError>,
}

/// Answers calls from a recording made by [`Recorder`], without any network.
#[derive(Debug)]
pub struct Replayer {
    path: PathBuf,
    entries: Vec<Entry>,
    /// Which entries have answered a call.
    used: Mutex<Vec<bool>>,
}

impl Replayer {
    /// Loads the recording at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or a line is not a recorded call (the message names the
    /// line).
    pub fn load(path: impl AsRef<Path>) -> Result<Replayer, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read the recording {}: {err}", path.display()))?;
        Replayer::parse(&text, path)
    }

    /// Reads a recording from its text; `path` names it in messages.
    ///
    /// # Errors
    /// A line is not a recorded call (the message names the line).
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Replayer, String> {
        let path = path.as_ref().to_path_buf();
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("recording {}, line {}", path.display(), index + 1);
            let record: RecordLine = serde_json::from_str(line)
                .map_err(|err| format!("{}: not a recorded call: {err}", at()))?;
            let request =
                serde_json::to_string(&record.request).map_err(|err| format!("{}: {err}", at()))?;
            let outcome = match (record.response, record.error) {
                (Some(response), None) => Ok(response),
                (None, Some(error)) => {
                    let kind = kind_from_name(&error.kind)
                        .ok_or_else(|| format!("{}: unknown error kind `{}`", at(), error.kind))?;
                    Err(HostError {
                        kind,
                        message: error.message,
                        provider: None,
                    })
                }
                (Some(_), Some(_)) => {
                    return Err(format!("{}: has both a response and an error", at()));
                }
                (None, None) => {
                    return Err(format!("{}: has neither a response nor an error", at()));
                }
            };
            entries.push(Entry {
                connection: record.connection,
                request,
                outcome,
            });
        }
        let used = Mutex::new(vec![false; entries.len()]);
        Ok(Replayer {
            path,
            entries,
            used,
        })
    }

    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many calls the recording holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the recording holds no calls.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many recorded calls have not answered a request yet.
    pub fn unused(&self) -> usize {
        self.used.lock().iter().filter(|used| !**used).count()
    }

    /// The recorded outcome of `request` on connection `connection`: the first unused
    /// entry with that connection and an equal request.
    ///
    /// # Errors
    /// The recorded error of the matching call, or a failure naming the agent and the
    /// connection when nothing matches.
    pub fn answer(
        &self,
        connection: &str,
        request: &ChatRequest,
    ) -> Result<ChatResponse, HostError> {
        let wanted = serde_json::to_string(request).map_err(|err| {
            HostError::failed(format!(
                "replay: cannot compare the request of agent `{}`: {err}",
                request.agent
            ))
        })?;
        let mut used = self.used.lock();
        let found = self.entries.iter().enumerate().find(|(index, entry)| {
            !used.get(*index).copied().unwrap_or(true)
                && entry.connection == connection
                && entry.request == wanted
        });
        match found {
            Some((index, entry)) => {
                if let Some(slot) = used.get_mut(index) {
                    *slot = true;
                }
                entry.outcome.clone()
            }
            None => {
                let left = self
                    .entries
                    .iter()
                    .enumerate()
                    .filter(|(index, entry)| {
                        entry.connection == connection && !used.get(*index).copied().unwrap_or(true)
                    })
                    .count();
                Err(HostError::failed(format!(
                    "replay: the recording {} has no reply for this request of agent `{}` on \
                     connection `{connection}` ({left} unused recorded call(s) on that \
                     connection); the program or its input changed since it was recorded — \
                     record it again",
                    self.path.display(),
                    request.agent
                )))
            }
        }
    }
}

impl Connections for Replayer {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let name = connection_name(program, connection);
        let outcome = self.answer(&name, &request);
        Box::pin(async move { outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concerto_vm::host::{ChatMessage, Usage};
    use serde_json::Value;

    /// A fresh path in the system temporary directory.
    fn temp_path(tag: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!(
            "concerto-conn-{tag}-{}-{n}-{nanos}.jsonl",
            std::process::id()
        ))
    }

    /// Connections that must never be called (the tests drive `Recorder::record`).
    struct Never;

    impl Connections for Never {
        fn chat(
            &self,
            _: &Arc<Program>,
            _: ConnectionId,
            _: ChatRequest,
        ) -> BoxFuture<Result<ChatResponse, HostError>> {
            Box::pin(async { Err(HostError::failed("not expected")) })
        }
    }

    fn request(agent: &str, prompt: &str) -> ChatRequest {
        let mut request = ChatRequest::new(
            agent,
            Some("gpt-4o".into()),
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", prompt),
            ],
        );
        request.temperature = Some(0.3);
        request
    }

    fn response(text: &str) -> ChatResponse {
        let mut response = ChatResponse::text(
            text,
            "gpt-4o-2024-08-06",
            Usage {
                input_tokens: 12,
                cached_tokens: 4,
                output_tokens: 3,
                estimated: false,
            },
        );
        response.provider = "openai".into();
        response.cost_usd = Some(0.000_05);
        response.attempts = 2;
        response.latency_ms = 321;
        response.finish_reason = Some("stop".into());
        response
    }

    fn ready(
        outcome: Result<ChatResponse, HostError>,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        Box::pin(async move { outcome })
    }

    fn recorder(path: &Path) -> Recorder {
        Recorder::new(Arc::new(Never), path).unwrap()
    }

    #[tokio::test]
    async fn record_then_replay_round_trip() {
        let path = temp_path("roundtrip");
        let rec = recorder(&path);
        assert_eq!(rec.path(), path.as_path());
        let timeout = HostError {
            kind: HostErrorKind::Timeout,
            message: "agent `Pilot`: request timed out after 5s".into(),
            provider: None,
        };
        let calls = vec![
            ("openai", request("Pilot", "first"), Ok(response("one"))),
            (
                "openai",
                request("Pilot", "first"),
                Ok(response("one again")),
            ),
            ("openai", request("Pilot", "second"), Err(timeout.clone())),
            (
                "anthropic",
                request("Pilot", "first"),
                Ok(response("other connection")),
            ),
            (
                "openai",
                request("Scribe", "x"),
                Err(HostError::limit("tokens per minute reached")),
            ),
        ];
        for (connection, req, outcome) in &calls {
            let got = rec
                .record(connection.to_string(), req.clone(), ready(outcome.clone()))
                .await;
            assert_eq!(&got, outcome);
        }

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[0]["connection"], "openai");
        assert_eq!(lines[0]["request"]["agent"], "Pilot");
        assert_eq!(lines[0]["response"]["text"], "one");
        assert_eq!(lines[0]["error"], Value::Null);
        assert_eq!(lines[2]["response"], Value::Null);
        assert_eq!(
            lines[2]["error"],
            serde_json::json!({"kind": "timeout", "message": "agent `Pilot`: request timed out after 5s"})
        );
        assert_eq!(lines[4]["error"]["kind"], "limit");

        let replay = Replayer::load(&path).unwrap();
        assert_eq!((replay.len(), replay.unused()), (5, 5));
        // Same connection and request: recorded order.
        assert_eq!(
            replay.answer("openai", &request("Pilot", "first")),
            Ok(response("one"))
        );
        assert_eq!(
            replay.answer("anthropic", &request("Pilot", "first")),
            Ok(response("other connection"))
        );
        assert_eq!(
            replay.answer("openai", &request("Pilot", "first")),
            Ok(response("one again"))
        );
        assert_eq!(
            replay.answer("openai", &request("Pilot", "second")),
            Err(timeout)
        );
        assert_eq!(
            replay.answer("openai", &request("Scribe", "x")),
            Err(HostError::limit("tokens per minute reached"))
        );
        assert_eq!(replay.unused(), 0);
        // Every entry is used once.
        let err = replay
            .answer("openai", &request("Pilot", "first"))
            .unwrap_err();
        assert!(err.message.contains("0 unused"), "{}", err.message);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn replay_mismatch_names_agent_connection_and_re_recording() {
        let path = temp_path("mismatch");
        let rec = recorder(&path);
        let outcome = concerto_vm::testing::block_on(rec.record(
            "openai".into(),
            request("Pilot", "first"),
            ready(Ok(response("one"))),
        ));
        assert!(outcome.is_ok());
        let replay = Replayer::load(&path).unwrap();
        let mut changed = request("Pilot", "first");
        changed.temperature = Some(0.4);
        let err = replay.answer("openai", &changed).unwrap_err();
        assert_eq!(err.kind, HostErrorKind::Failed);
        for needle in [
            "`Pilot`",
            "`openai`",
            "record it again",
            "1 unused",
            "replay",
        ] {
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let err = replay
            .answer("anthropic", &request("Pilot", "first"))
            .unwrap_err();
        assert!(err.message.contains("`anthropic`") && err.message.contains("0 unused"));
        assert_eq!(replay.unused(), 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_write_whole_lines() {
        let path = temp_path("concurrent");
        let rec = Arc::new(recorder(&path));
        let big = "x".repeat(64 * 1024);
        let mut tasks = Vec::new();
        for i in 0..64 {
            let rec = Arc::clone(&rec);
            let big = big.clone();
            tasks.push(tokio::spawn(async move {
                let call: BoxFuture<Result<ChatResponse, HostError>> = Box::pin(async move {
                    tokio::task::yield_now().await;
                    Ok(response(&format!("{i}:{big}")))
                });
                rec.record("openai".into(), request("A", &format!("call {i}")), call)
                    .await
            }));
        }
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seqs: Vec<u64> = text
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).unwrap();
                let text = value["response"]["text"].as_str().unwrap();
                assert!(text.ends_with(&big));
                value["seq"].as_u64().unwrap()
            })
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=64).collect::<Vec<u64>>());
        let replay = Replayer::load(&path).unwrap();
        assert_eq!(replay.len(), 64);
        let reply = replay.answer("openai", &request("A", "call 17")).unwrap();
        assert!(reply.text.starts_with("17:"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn recording_outside_a_runtime_writes_in_place() {
        let path = temp_path("no-runtime");
        let rec = recorder(&path);
        let got = concerto_vm::testing::block_on(rec.record(
            "c".into(),
            request("A", "p"),
            ready(Err(HostError::unsupported("streaming"))),
        ));
        assert_eq!(got, Err(HostError::unsupported("streaming")));
        let replay = Replayer::load(&path).unwrap();
        assert_eq!(
            replay.answer("c", &request("A", "p")),
            Err(HostError::unsupported("streaming"))
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_new_recording_replaces_the_old_file() {
        let path = temp_path("replace");
        std::fs::write(&path, "old content\n").unwrap();
        let _rec = recorder(&path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn record_failure_is_an_error_naming_the_file() {
        let dir = temp_path("dir");
        std::fs::create_dir(&dir).unwrap();
        let err = Recorder::new(Arc::new(Never), &dir).unwrap_err();
        assert!(
            err.to_string().contains("cannot create the recording"),
            "{err}"
        );
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn malformed_recordings_name_the_line() {
        let good = serde_json::to_string(&RecordLine {
            seq: 1,
            connection: "openai".into(),
            request: request("A", "p"),
            response: Some(response("r")),
            error: None,
        })
        .unwrap();
        let cases = [
            (
                format!("{good}\n\n{{not json\n"),
                "line 3",
                "not a recorded call",
            ),
            (
                format!(
                    "{good}\n{}\n",
                    good.replace(
                        "\"error\":null",
                        "\"error\":{\"kind\":\"failed\",\"message\":\"m\"}"
                    )
                ),
                "line 2",
                "both a response and an error",
            ),
            (
                serde_json::json!({"seq": 1, "connection": "c", "request": request("A", "p"),
                                   "response": null, "error": {"kind": "weird", "message": "m"}})
                .to_string(),
                "line 1",
                "unknown error kind `weird`",
            ),
            (
                serde_json::json!({"seq": 1, "connection": "c", "request": request("A", "p"),
                                   "response": null, "error": null})
                .to_string(),
                "line 1",
                "neither a response nor an error",
            ),
            ("[1, 2]".to_string(), "line 1", "not a recorded call"),
        ];
        for (text, line, what) in cases {
            let err = Replayer::parse(&text, "calls.jsonl").unwrap_err();
            assert!(
                err.contains("calls.jsonl") && err.contains(line) && err.contains(what),
                "{err}"
            );
        }
        let err = Replayer::load(temp_path("missing")).unwrap_err();
        assert!(err.contains("cannot read the recording"), "{err}");
        let empty = Replayer::parse("\n\n", "empty.jsonl").unwrap();
        assert!(empty.is_empty() && empty.unused() == 0);
        assert_eq!(empty.path(), Path::new("empty.jsonl"));
    }

    #[test]
    fn error_kinds_round_trip() {
        for kind in [
            HostErrorKind::Unsupported,
            HostErrorKind::NotEnabled,
            HostErrorKind::Timeout,
            HostErrorKind::Limit,
            HostErrorKind::Failed,
        ] {
            assert_eq!(kind_from_name(kind_name(kind)), Some(kind));
        }
        assert_eq!(kind_from_name("other"), None);
    }

    #[test]
    fn debug_output_shows_the_path_only() {
        let path = temp_path("debug");
        let rec = recorder(&path);
        let text = format!("{rec:?}");
        assert!(text.contains("Recorder") && text.contains("concerto-conn-debug"));
        std::fs::remove_file(&path).unwrap();
    }
}
