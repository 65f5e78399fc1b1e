//! Resumable runs: a journal of completed agent calls, external tool calls, emit-await
//! answers, `std::http` requests and `std::fs` operations, kept in the durable state store,
//! and the layers that write and replay it.
//!
//! Each completed operation is appended as one record `{kind, fp, n, result}`: `fp` is a
//! fingerprint of the operation (its kind, target and full request), `n` how many earlier
//! records have the same fingerprint. A resumed run replays, for each operation it makes, the
//! next unused record with the same fingerprint and otherwise performs it (and journals it).
//! Fingerprints rather than positions keep replay correct when spawned tasks complete in a
//! different order, or a loop repeats the same request. A program whose control flow depends
//! only on its inputs and these results takes the same path again, so a resumed run does not
//! repeat completed calls. The operation in flight when the run stopped was not journaled and
//! is performed again: delivery is at least once for it, exactly once for the others.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use concerto_vm::Value as VmValue;
use concerto_vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, EmitSink, FsReply, FsRequest,
    HostError, HttpReply, HttpRequest, ImagePart, MemoryStore, OutsideError, Program, Reply,
    ToolHost, ToolOutput, ToolSpec,
};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// A run's journal: records to replay, and where new ones go.
pub(crate) struct Journal {
    store: Arc<dyn MemoryStore>,
    run: String,
    replay: Mutex<HashMap<String, VecDeque<Json>>>,
    seen: Mutex<HashMap<String, u64>>,
    /// Operations answered from the journal in this run.
    replayed: std::sync::atomic::AtomicU64,
}

async fn reply<T: Send + 'static>(r: Reply<Result<T, HostError>>) -> Result<T, HostError> {
    match r {
        Reply::Ready(r) => r,
        Reply::Pending(fut) => fut.await,
    }
}

impl Journal {
    /// The journal of run `run` in `store`, with its existing records loaded for replay.
    pub(crate) async fn open(
        store: Arc<dyn MemoryStore>,
        run: &str,
    ) -> Result<Arc<Journal>, HostError> {
        let records = reply(store.journal_records(run)).await?;
        let mut replay: HashMap<String, VecDeque<Json>> = HashMap::new();
        let mut seen: HashMap<String, u64> = HashMap::new();
        for (index, text) in records.iter().enumerate() {
            let record: Json = serde_json::from_str(text).map_err(|e| {
                HostError::failed(format!(
                    "run `{run}`: journal entry {} is unreadable: {e}",
                    index + 1
                ))
            })?;
            let Some(fp) = record["fp"].as_str().map(str::to_string) else {
                return Err(HostError::failed(format!(
                    "run `{run}`: journal entry {} has no fingerprint",
                    index + 1
                )));
            };
            *seen.entry(fp.clone()).or_default() += 1;
            let mut record = record;
            record["index"] = json!(index + 1);
            replay.entry(fp).or_default().push_back(record);
        }
        Ok(Arc::new(Journal {
            store,
            run: run.to_string(),
            replay: Mutex::new(replay),
            seen: Mutex::new(seen),
            replayed: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// How many operations were answered from the journal.
    pub(crate) fn replayed(&self) -> u64 {
        self.replayed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next recorded operation with fingerprint `fp`, if any: an [`Entry`] whose result
    /// is read with [`Entry::read`] (which counts it as replayed).
    fn take(&self, fp: &str) -> Option<Entry<'_>> {
        let record = self
            .replay
            .lock()
            .get_mut(fp)
            .and_then(VecDeque::pop_front)?;
        Some(Entry {
            run: self.run.clone(),
            record,
            journal: self,
        })
    }

    /// Encodes `value`, the result of a `kind` operation, for the journal.
    fn encode(&self, kind: &str, value: &VmValue) -> Result<Json, HostError> {
        concerto_memory::codec::encode_value(value).map_err(|e| {
            HostError::failed(format!(
                "run `{}`: the result of this {kind} cannot be journaled: {}",
                self.run, e.message
            ))
        })
    }

    /// Journals a completed operation (committed before the program goes on).
    async fn record(&self, kind: &str, fp: String, result: Json) -> Result<(), HostError> {
        let n = {
            let mut seen = self.seen.lock();
            let n = seen.entry(fp.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let record = json!({"kind": kind, "fp": fp, "n": n, "result": result}).to_string();
        reply(self.store.journal_append(&self.run, record)).await
    }
}

/// A recorded operation found for replay.
struct Entry<'a> {
    run: String,
    record: Json,
    journal: &'a Journal,
}

impl Entry<'_> {
    /// The recorded result, read with `read`; an unreadable one is an error naming the run
    /// and the entry, never a silent call made again.
    fn read<T>(self, read: impl FnOnce(&Json) -> Result<T, String>) -> Result<T, HostError> {
        match read(&self.record["result"]) {
            Ok(value) => {
                self.journal
                    .replayed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(value)
            }
            Err(why) => Err(HostError::failed(format!(
                "run `{}`: journal entry {} ({}) cannot be replayed: {why}",
                self.run,
                self.record["index"],
                self.record["kind"].as_str().unwrap_or("?")
            ))),
        }
    }
}

/// A journaled `std::fs` / `std::http` outcome: `{"ok": …}` read by `ok`, or
/// `{"failed": message}` (the program sees only the message of a failure).
fn outside_result<T>(
    recorded: &Json,
    ok: impl FnOnce(&Json) -> Result<T, &'static str>,
) -> Result<Result<T, OutsideError>, String> {
    if let Some(message) = recorded.get("failed").and_then(Json::as_str) {
        return Ok(Err(OutsideError::failed(
            concerto_vm::host::OutsideFailureKind::Connection,
            message,
        )));
    }
    match recorded.get("ok") {
        Some(value) => ok(value).map(Ok).map_err(|what| format!("expected {what}")),
        None => Err("neither a reply nor a failure".to_string()),
    }
}

/// A stable 64-bit FNV-1a fingerprint of `parts`, as hex.
fn fingerprint(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn decode(json: &Json) -> Result<VmValue, String> {
    concerto_memory::codec::decode_value(json).map_err(|e| e.message)
}

/// `host` with its connections, emits and tools going through `journal`.
pub(crate) fn journaled(mut host: concerto_vm::Host, journal: &Arc<Journal>) -> concerto_vm::Host {
    host.connections = Arc::new(JournaledConnections {
        inner: host.connections,
        journal: journal.clone(),
    });
    host.emit = Arc::new(JournaledEmits {
        inner: host.emit,
        journal: journal.clone(),
    });
    host.tools = Arc::new(JournaledTools {
        inner: host.tools,
        journal: journal.clone(),
    });
    host
}

/// Agent calls through the journal.
pub(crate) struct JournaledConnections {
    pub(crate) inner: Arc<dyn Connections>,
    pub(crate) journal: Arc<Journal>,
}

impl Connections for JournaledConnections {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let body = serde_json::to_string(&request).unwrap_or_default();
        let fp = fingerprint(&["agent", &connection.0.to_string(), &body]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(|r| {
                serde_json::from_value::<ChatResponse>(r.clone()).map_err(|e| e.to_string())
            });
            return Box::pin(async move { replayed });
        }
        let journal = self.journal.clone();
        let call = self.inner.chat(program, connection, request);
        Box::pin(async move {
            let response = call.await?;
            let recorded = serde_json::to_value(&response).map_err(|e| {
                HostError::failed(format!(
                    "run `{}`: the reply of this agent call cannot be journaled: {e}",
                    journal.run
                ))
            })?;
            journal.record("agent", fp, recorded).await?;
            Ok(response)
        })
    }
}

/// Emit-await answers through the journal (plain emits pass through: replaying a run
/// delivers its emits again, which is how a resumed run completes the program's output).
pub(crate) struct JournaledEmits {
    pub(crate) inner: Arc<dyn EmitSink>,
    pub(crate) journal: Arc<Journal>,
}

impl EmitSink for JournaledEmits {
    fn emit(&self, channel: &str, payload: &VmValue) -> Result<(), HostError> {
        self.inner.emit(channel, payload)
    }

    fn emit_await(&self, channel: &str, payload: VmValue) -> BoxFuture<Result<VmValue, HostError>> {
        let encoded = match self.journal.encode("emit_await", &payload) {
            Ok(encoded) => encoded,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let fp = fingerprint(&["emit_await", channel, &encoded.to_string()]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(decode);
            return Box::pin(async move { replayed });
        }
        let journal = self.journal.clone();
        let call = self.inner.emit_await(channel, payload);
        Box::pin(async move {
            let answer = call.await?;
            let recorded = journal.encode("emit_await", &answer)?;
            journal.record("emit_await", fp, recorded).await?;
            Ok(answer)
        })
    }
}

/// External tool calls (MCP servers, host agents, host tools) through the journal; the
/// program's own tools are its own code and are simply run again.
pub(crate) struct JournaledTools {
    pub(crate) inner: Arc<dyn ToolHost>,
    pub(crate) journal: Arc<Journal>,
}

impl ToolHost for JournaledTools {
    fn check(&self, program: &Program, tool: &str, method: &str) -> Result<(), HostError> {
        self.inner.check(program, tool, method)
    }

    fn is_registered(&self, name: &str) -> bool {
        self.inner.is_registered(name)
    }

    fn is_switched_off(&self, name: &str) -> bool {
        self.inner.is_switched_off(name)
    }

    fn specs(
        &self,
        program: &Arc<Program>,
        tool: &str,
    ) -> BoxFuture<Result<Vec<ToolSpec>, HostError>> {
        self.inner.specs(program, tool)
    }

    fn call(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: Json,
    ) -> BoxFuture<Result<VmValue, HostError>> {
        let fp = fingerprint(&["tool", tool, method, &args.to_string()]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(decode);
            return Box::pin(async move { replayed });
        }
        let journal = self.journal.clone();
        let call = self.inner.call(program, tool, method, args);
        Box::pin(async move {
            let result = call.await?;
            let recorded = journal.encode("tool call", &result)?;
            journal.record("tool", fp, recorded).await?;
            Ok(result)
        })
    }

    /// A model's tool call: the value and the images, journaled together (a resumed run
    /// shows the model the same images).
    fn call_for_model(
        &self,
        program: &Arc<Program>,
        tool: &str,
        method: &str,
        args: Json,
    ) -> BoxFuture<Result<ToolOutput, HostError>> {
        let fp = fingerprint(&["tool_for_model", tool, method, &args.to_string()]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(|recorded| {
                let images: Vec<ImagePart> = serde_json::from_value(recorded["images"].clone())
                    .map_err(|e| e.to_string())?;
                Ok(ToolOutput {
                    value: decode(&recorded["value"])?,
                    images,
                })
            });
            return Box::pin(async move { replayed });
        }
        let journal = self.journal.clone();
        let call = self.inner.call_for_model(program, tool, method, args);
        Box::pin(async move {
            let output = call.await?;
            let value = journal.encode("tool call", &output.value)?;
            let recorded = json!({"value": value, "images": output.images});
            journal.record("tool", fp, recorded).await?;
            Ok(output)
        })
    }

    fn host_exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<String, HostError>> {
        let fp = fingerprint(&["host", &host.to_string(), &input]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(|r| match r {
                Json::String(text) => Ok(text.clone()),
                other => Err(format!("an agent's answer is text, not {other}")),
            });
            return Box::pin(async move { replayed });
        }
        let journal = self.journal.clone();
        let call = self.inner.host_exchange(program, host, input);
        Box::pin(async move {
            let answer = call.await?;
            journal
                .record("host", fp, Json::String(answer.clone()))
                .await?;
            Ok(answer)
        })
    }

    /// Streaming sessions are not journaled (issue 17 journals every effect): a resumed run
    /// opens them again.
    fn host_listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<Arc<dyn concerto_vm::host::HostSession>, HostError>> {
        self.inner.host_listen(program, host, input)
    }

    /// `std::fs` through the journal: a resumed run gets what the first run read and does
    /// not write again what it wrote. A refusal is not journaled (the same flags refuse it
    /// again).
    fn fs(&self, request: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>> {
        let (op, path, content) = match &request {
            FsRequest::Read(p) => ("read", p, None),
            FsRequest::Write(p, c) => ("write", p, Some(c)),
            FsRequest::Append(p, c) => ("append", p, Some(c)),
            FsRequest::Exists(p) => ("exists", p, None),
            FsRequest::ListDir(p) => ("list_dir", p, None),
            FsRequest::Remove(p) => ("remove", p, None),
            FsRequest::Size(p) => ("size", p, None),
        };
        let fp = fingerprint(&["fs", op, path, content.map_or("", String::as_str)]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(|r| {
                outside_result(r, |ok| {
                    Ok(match ok {
                        Json::String(text) => FsReply::Text(text.clone()),
                        Json::Bool(b) => FsReply::Bool(*b),
                        Json::Number(n) => FsReply::Size(n.as_u64().ok_or("a size")?),
                        Json::Array(names) => FsReply::Names(
                            names
                                .iter()
                                .map(|n| n.as_str().map(str::to_string).ok_or("a name"))
                                .collect::<Result<_, _>>()?,
                        ),
                        Json::Null => FsReply::Done,
                        _ => return Err("not an fs reply"),
                    })
                })
            });
            return Box::pin(async move { replayed.map_err(OutsideError::Host)? });
        }
        let journal = self.journal.clone();
        let call = self.inner.fs(request);
        Box::pin(async move {
            let result = call.await;
            let recorded = match &result {
                Ok(reply) => json!({"ok": match reply {
                    FsReply::Text(text) => json!(text),
                    FsReply::Done => Json::Null,
                    FsReply::Bool(b) => json!(b),
                    FsReply::Names(names) => json!(names),
                    FsReply::Size(n) => json!(n),
                }}),
                Err(OutsideError::Failed(failure)) => json!({"failed": failure.message}),
                Err(_) => return result,
            };
            journal
                .record("fs", fp, recorded)
                .await
                .map_err(OutsideError::Host)?;
            result
        })
    }

    /// `std::http` through the journal: a resumed run gets the reply the first run got and
    /// does not send the request again. A refusal is not journaled.
    fn http(&self, request: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>> {
        let headers = serde_json::to_string(&request.headers).unwrap_or_default();
        let fp = fingerprint(&[
            "http",
            &request.method,
            &request.url,
            &headers,
            request.body.as_deref().unwrap_or(""),
        ]);
        if let Some(entry) = self.journal.take(&fp) {
            let replayed = entry.read(|r| {
                outside_result(r, |ok| {
                    Ok(HttpReply {
                        status: ok["status"]
                            .as_u64()
                            .and_then(|s| u16::try_from(s).ok())
                            .ok_or("a status")?,
                        headers: serde_json::from_value(ok["headers"].clone())
                            .map_err(|_| "headers")?,
                        body: ok["body"].as_str().ok_or("a body")?.to_string(),
                    })
                })
            });
            return Box::pin(async move { replayed.map_err(OutsideError::Host)? });
        }
        let journal = self.journal.clone();
        let call = self.inner.http(request);
        Box::pin(async move {
            let result = call.await;
            let recorded = match &result {
                Ok(reply) => json!({"ok": {"status": reply.status, "headers": reply.headers,
                                           "body": reply.body}}),
                Err(OutsideError::Failed(failure)) => json!({"failed": failure.message}),
                Err(_) => return result,
            };
            journal
                .record("http", fp, recorded)
                .await
                .map_err(OutsideError::Host)?;
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    /// A recorded reply that does not read as a reply is an error naming the run and the
    /// entry; the call is not made again behind the program's back, nor counted replayed.
    #[cfg(feature = "sqlite")]
    #[test]
    fn an_unreadable_entry_is_an_error_naming_the_run_and_the_entry() {
        use super::{Journal, JournaledConnections, reply};
        use concerto_vm::host::{
            BoxFuture, ChatMessage, ChatRequest, ChatResponse, ConnectionId, Connections,
            HostError, MemoryStore, Program,
        };
        use serde_json::json;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        struct Counting(AtomicUsize);
        impl Connections for Counting {
            fn chat(
                &self,
                _: &Arc<Program>,
                _: ConnectionId,
                _: ChatRequest,
            ) -> BoxFuture<Result<ChatResponse, HostError>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Err(HostError::failed("not expected")) })
            }
        }

        let dir = std::env::temp_dir().join(format!("concerto-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn MemoryStore> =
            Arc::new(concerto_store_sqlite::SqliteStore::open(&dir.join("j.db"), vec![]).unwrap());
        let request = ChatRequest::new("Agent", None, vec![ChatMessage::new("user", "hi")]);
        let body = serde_json::to_string(&request).unwrap();
        let fp = fingerprint(&["agent", "0", &body]);
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let record = json!({"kind": "agent", "fp": fp, "n": 0, "result": {"text": 5}});
        tokio
            .block_on(reply(store.journal_append("r1", record.to_string())))
            .unwrap();
        let journal = tokio.block_on(Journal::open(store, "r1")).unwrap();
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let conns = JournaledConnections {
            inner: inner.clone(),
            journal: journal.clone(),
        };
        let program = Arc::new(
            concerto_ir::load_str(
                &json!({"version": "0.1.0", "module": "m", "source_file": "m.conc",
                    "constants": [], "functions": [{"name": "main", "module": "m",
                    "visibility": "private", "params": [], "return_type": "nil",
                    "is_async": false, "locals": [], "instructions": [{"op": "RETURN"}]}],
                    "metadata": {"compiler_version": "0.1.0", "compiled_at": "",
                    "optimization_level": 0, "debug_info": true, "entry_point": "main"}})
                .to_string(),
            )
            .unwrap(),
        );
        let err = tokio
            .block_on(conns.chat(&program, ConnectionId(0), request))
            .unwrap_err();
        assert!(
            err.message
                .contains("run `r1`: journal entry 1 (agent) cannot be replayed"),
            "{}",
            err.message
        );
        assert_eq!(inner.0.load(Ordering::SeqCst), 0, "the call was made again");
        assert_eq!(journal.replayed(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprints_are_stable_and_separate_their_parts() {
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
        assert_ne!(fingerprint(&["ab", ""]), fingerprint(&["a", "b"]));
        // Pinned: the journal outlives the binary that wrote it.
        assert_eq!(fingerprint(&[""]), "af64724c8602eb6e");
    }
}
