//! Resumable runs: the journal of every effect a run has on the world and every value it
//! reads from it, kept in the durable state store, and the layers that write and replay it.
//!
//! # What is journaled
//! Agent calls, external tool calls (MCP servers, host agents, host tools; a model's and the
//! program's own), exchanges with host agents, emit-await answers, `std::fs` and
//! `std::http` operations, hashmap, ledger and memory reads and writes, the clock
//! (`std::time::now_ms`), randomness (each execution's seed and `std::crypto`), and emits.
//!
//! # Keys
//! An effect is keyed by its *position*: the task that made it (`main`, then `main/0` for
//! the first task `main` spawned, `main/0/1`, …) and how many effects that task made before
//! it, e.g. `main/0#3`. Its *site* — what it was (`agent call \`Clerk\``,
//! `hashmap \`counts\`.set("a")`, …) — is recorded beside it. Tasks are counted per parent in
//! spawn order, so positions do not depend on how tasks interleave, and nothing in a key
//! depends on request content (an agent's memory history may differ on resume).
//!
//! # Rows and commits
//! The journal is a list of rows `{"v": 2, "effects": [{"at", "site", "result"}, …]}`. A
//! completed effect on the world is committed as one row before the program sees its
//! result: a store write together with its row in one transaction (SQLite) or one script
//! (Redis), through [`JournalStore::apply`]; other effects through
//! [`JournalStore::journal_append`]. Reads, emits and failed effects are buffered and go
//! into the next row (an emit instruction waits for its row: the VM's emit barrier,
//! [`EmitSink::settle`]). Rows are submitted one after another, each after the previous one
//! committed, so they become durable in order.
//!
//! # Replay
//! A resumed run looks each effect's position up: a recorded effect whose site matches is
//! answered from the journal (a write is not applied again, an emit is not delivered again
//! unless `replay_emits`); a different site is a divergence (the program or its inputs
//! changed) and stops the run naming the position and both sites; an unrecorded position
//! runs live and is journaled. The effect in flight when a run stopped was performed but
//! not journaled, and is performed again: at least once for it (an LLM call, an HTTP request,
//! a `std::fs` write, an MCP or tool call, a host-agent exchange, an emit), exactly once for
//! every other; a store write is never applied twice (it commits with its row or not at all).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use concerto_vm::Value as VmValue;
use concerto_vm::host::{
    BoxFuture, ChatMessage, ChatRequest, ChatResponse, ConnectionId, Connections,
    ConversationStore, EmitSink, FsReply, FsRequest, HashmapStore, HostError, HostErrorKind,
    HostSession, HttpReply, HttpRequest, ImagePart, JournalRecord, JournalStore, LedgerEntry,
    LedgerQuery, LedgerStore, LogLevel, MapId, MemoryStore, OutsideError, OutsideFailureKind,
    Program, ProviderFailure, ProviderFailureKind, Reply, Spawned, System, ToolHost, ToolOutput,
    ToolSpec, Write,
};
use concerto_vm::{Host, Str, TaskScope};
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// The version of the journal's row format.
const ROW_VERSION: u64 = 2;

/// A recorded effect, found by its position.
struct Recorded {
    /// The row it was committed in (from 1).
    row: usize,
    site: String,
    result: Json,
}

/// A run's journal: the recorded effects to replay, and where new ones go.
pub(crate) struct Journal {
    store: Arc<dyn MemoryStore>,
    program: Arc<Program>,
    run: String,
    recorded: Mutex<HashMap<String, Recorded>>,
    /// Records waiting for the next row: reads, emits, failed effects.
    pending: Mutex<Vec<Json>>,
    /// Held while a row is submitted and committed: rows become durable in order.
    order: Arc<tokio::sync::Mutex<()>>,
    /// The first divergence found where it could not be returned (a clock read, an emit);
    /// the next effect fails with it.
    diverged: Mutex<Option<HostError>>,
    replay_emits: bool,
    /// The lease epoch of a leased run (a queue worker's): every row commits through
    /// [`JournalStore::apply`] carrying it, and is refused once a newer epoch holds the run.
    epoch: Option<u64>,
    /// Effects answered from the journal in this run.
    replayed: AtomicU64,
    /// Rows this process committed.
    commits: AtomicU64,
    #[cfg(feature = "fault-injection")]
    fault: Option<fault::Fault>,
}

async fn reply<T: Send + 'static>(r: Reply<Result<T, HostError>>) -> Result<T, HostError> {
    match r {
        Reply::Ready(r) => r,
        Reply::Pending(fut) => fut.await,
    }
}

impl Journal {
    /// The journal of run `run` in `store`, with its recorded effects loaded for replay.
    /// A leased run (`epoch`) raises the run's fence first, so that once its journal is
    /// read here no older holder can add to it.
    pub(crate) async fn open(
        store: Arc<dyn MemoryStore>,
        program: Arc<Program>,
        run: &str,
        replay_emits: bool,
        epoch: Option<u64>,
    ) -> Result<Arc<Journal>, HostError> {
        if let Some(epoch) = epoch {
            reply(store.journal_fence(run, epoch)).await?;
        }
        let rows = reply(store.journal_records(run)).await?;
        let mut recorded = HashMap::new();
        for (index, text) in rows.iter().enumerate() {
            let row_no = index + 1;
            let unreadable = |why: &str| {
                HostError::failed(format!(
                    "run `{run}`: journal entry {row_no} is unreadable: {why}"
                ))
            };
            let row: Json = serde_json::from_str(text).map_err(|e| unreadable(&e.to_string()))?;
            if row.get("fp").is_some() {
                return Err(HostError::failed(format!(
                    "run `{run}`: its journal was written by an earlier version of the runtime \
                     (entries by fingerprint) and cannot be resumed; start a new run"
                )));
            }
            if row["v"].as_u64() != Some(ROW_VERSION) {
                return Err(unreadable(&format!("not a version {ROW_VERSION} row")));
            }
            let Some(effects) = row["effects"].as_array() else {
                return Err(unreadable("it has no effects"));
            };
            for effect in effects {
                let (Some(at), Some(site)) = (effect["at"].as_str(), effect["site"].as_str())
                else {
                    return Err(unreadable("an effect without a position or a site"));
                };
                let previous = recorded.insert(
                    at.to_string(),
                    Recorded {
                        row: row_no,
                        site: site.to_string(),
                        result: effect["result"].clone(),
                    },
                );
                if previous.is_some() {
                    return Err(unreadable(&format!(
                        "effect {at} is recorded twice (two processes ran this run at once; \
                         only one may run a run id at a time)"
                    )));
                }
            }
        }
        Ok(Arc::new(Journal {
            store,
            program,
            run: run.to_string(),
            recorded: Mutex::new(recorded),
            pending: Mutex::new(Vec::new()),
            order: Arc::new(tokio::sync::Mutex::new(())),
            diverged: Mutex::new(None),
            replay_emits,
            epoch,
            replayed: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            fault: fault::Fault::from_env(),
        }))
    }

    /// How many effects were answered from the journal.
    pub(crate) fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::SeqCst)
    }

    /// Commits what is still buffered once the run has ended. After a failed run, each
    /// task's buffered records from its first failed effect on are left out: a failure
    /// that ended the run is not made permanent (resuming tries that effect again).
    pub(crate) async fn finish(self: &Arc<Self>, failed: bool) -> Result<(), HostError> {
        if failed {
            let mut failed_tasks: Vec<String> = Vec::new();
            self.pending.lock().retain(|record| {
                let task = record["at"]
                    .as_str()
                    .and_then(|at| at.split('#').next())
                    .unwrap_or_default();
                if failed_tasks.iter().any(|t| t == task) {
                    return false;
                }
                if record["result"].get("err").is_some() {
                    failed_tasks.push(task.to_string());
                    return false;
                }
                true
            });
        }
        if !self.pending.lock().is_empty() {
            self.clone().commit_row(None, Vec::new()).await?;
        }
        #[cfg(feature = "fault-injection")]
        fault::report(self.commits.load(Ordering::SeqCst));
        Ok(())
    }

    /// Buffers `record` for the next row.
    fn buffer(&self, record: Json) {
        self.pending.lock().push(record);
    }

    /// Commits one row: what is buffered, then `record` (when given), with `writes` in the
    /// same transaction (when any). The row is submitted after the previous one committed.
    async fn commit_row(
        self: Arc<Self>,
        record: Option<Json>,
        writes: Vec<Write>,
    ) -> Result<(), HostError> {
        let _turn = self.order.clone().lock_owned().await;
        let mut effects = std::mem::take(&mut *self.pending.lock());
        effects.extend(record);
        let row = json!({"v": ROW_VERSION, "effects": effects}).to_string();
        let number = self.commits.load(Ordering::SeqCst) + 1;
        #[cfg(feature = "fault-injection")]
        fault::before(self.fault, number);
        let committed = if writes.is_empty() && self.epoch.is_none() {
            reply(self.store.journal_append(&self.run, row)).await
        } else {
            reply(self.store.apply(
                writes,
                Some(JournalRecord {
                    run: self.run.clone(),
                    record: row,
                    epoch: self.epoch,
                }),
            ))
            .await
        };
        committed.map_err(|e| HostError {
            message: format!("run `{}`: cannot journal: {}", self.run, e.message),
            ..e
        })?;
        self.commits.store(number, Ordering::SeqCst);
        #[cfg(feature = "fault-injection")]
        fault::after(self.fault, number);
        Ok(())
    }
}

/// A task's view of the journal: its path and how many effects it has made.
pub(crate) struct Task {
    journal: Arc<Journal>,
    path: String,
    next: AtomicU32,
}

/// What to do with an effect: answer it from the journal, or perform it.
enum Step {
    Replay(Replayed),
    Live(Effect),
}

/// A live effect: its position and site, for its record.
struct Effect {
    at: String,
    site: String,
}

impl Effect {
    fn record(&self, result: Json) -> Json {
        json!({"at": self.at, "site": self.site, "result": result})
    }
}

/// A recorded effect found for replay.
struct Replayed {
    run: String,
    at: String,
    recorded: Recorded,
    journal: Arc<Journal>,
}

impl Replayed {
    /// The recorded outcome: `{"ok": …}` read by `read`, or `{"err": …}` (a failure
    /// the program saw). An unreadable one is an error naming the run and the entry, never
    /// a call made again behind the program's back.
    fn outcome<T>(
        self,
        read: impl FnOnce(&Json) -> Result<T, String>,
    ) -> Result<Result<T, HostError>, HostError> {
        let result = &self.recorded.result;
        let outcome = if let Some(err) = result.get("err") {
            decode_error(err).map(Err)
        } else if let Some(ok) = result.get("ok") {
            read(ok).map(Ok)
        } else {
            Err("neither a result nor a failure".to_string())
        };
        match outcome {
            Ok(outcome) => {
                self.journal.replayed.fetch_add(1, Ordering::SeqCst);
                Ok(outcome)
            }
            Err(why) => Err(HostError::failed(format!(
                "run `{}`: journal entry {} ({} at {}) cannot be replayed: {why}",
                self.run, self.recorded.row, self.recorded.site, self.at
            ))),
        }
    }
}

impl Task {
    fn new(journal: Arc<Journal>, path: String) -> Arc<Task> {
        Arc::new(Task {
            journal,
            path,
            next: AtomicU32::new(0),
        })
    }

    /// The next effect of this task, at `site`: replayed, or live.
    fn begin(&self, site: String) -> Result<Step, HostError> {
        let journal = &self.journal;
        if let Some(err) = journal.diverged.lock().clone() {
            return Err(err);
        }
        let at = format!("{}#{}", self.path, self.next.fetch_add(1, Ordering::SeqCst));
        let Some(recorded) = journal.recorded.lock().remove(&at) else {
            return Ok(Step::Live(Effect { at, site }));
        };
        if recorded.site != site {
            let err = HostError::failed(format!(
                "run `{}` diverges from its journal at effect {at} (journal entry {}): the \
                 journal has {}, the program now makes {site}; the program or its inputs \
                 changed since the run was journaled (start a new run)",
                journal.run, recorded.row, recorded.site
            ));
            *journal.diverged.lock() = Some(err.clone());
            return Err(err);
        }
        Ok(Step::Replay(Replayed {
            run: journal.run.clone(),
            at,
            recorded,
            journal: journal.clone(),
        }))
    }

    /// A read (or another effect whose result is only buffered): replayed, or performed and
    /// its outcome buffered for the next row.
    fn read<T: Send + 'static>(
        &self,
        site: String,
        live: impl FnOnce() -> Reply<Result<T, HostError>>,
        encode: fn(&T) -> Result<Json, String>,
        decode: fn(&Json) -> Result<T, String>,
    ) -> Reply<Result<T, HostError>> {
        match self.begin(site) {
            Err(e) => Reply::Ready(Err(e)),
            Ok(Step::Replay(replayed)) => Reply::Ready(replayed.read_outcome(decode)),
            Ok(Step::Live(effect)) => {
                let journal = self.journal.clone();
                match live() {
                    Reply::Ready(r) => Reply::Ready(buffer_outcome(&journal, &effect, r, encode)),
                    Reply::Pending(fut) => Reply::Pending(Box::pin(async move {
                        let r = fut.await;
                        buffer_outcome(&journal, &effect, r, encode)
                    })),
                }
            }
        }
    }

    /// An effect on the world outside the stores: replayed, or performed and committed
    /// before the program sees its result (a failure is buffered instead).
    fn effect<T: Send + 'static>(
        &self,
        site: String,
        live: impl FnOnce() -> BoxFuture<Result<T, HostError>>,
        encode: impl FnOnce(&T) -> Result<Json, String> + Send + 'static,
        decode: impl FnOnce(&Json) -> Result<T, String>,
    ) -> BoxFuture<Result<T, HostError>> {
        match self.begin(site) {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(Step::Replay(replayed)) => {
                let r = replayed.read_outcome(decode);
                Box::pin(async move { r })
            }
            Ok(Step::Live(effect)) => {
                let journal = self.journal.clone();
                let call = live();
                Box::pin(async move {
                    match call.await {
                        Ok(value) => {
                            let encoded = encode(&value)
                                .map_err(|why| cannot_journal(&journal, &effect, &why))?;
                            let record = effect.record(json!({ "ok": encoded }));
                            journal.commit_row(Some(record), Vec::new()).await?;
                            Ok(value)
                        }
                        Err(err) => {
                            journal.buffer(effect.record(json!({ "err": encode_error(&err) })));
                            Err(err)
                        }
                    }
                })
            }
        }
    }

    /// A store write: replayed (not applied again), or `pre` (a read the write's result
    /// needs, not journaled on its own) then `writes` applied with the effect's row, all
    /// or nothing.
    fn write<T: Send + 'static>(
        &self,
        site: String,
        writes: Vec<Write>,
        pre: impl FnOnce() -> Reply<Result<T, HostError>>,
        encode: fn(&T) -> Result<Json, String>,
        decode: fn(&Json) -> Result<T, String>,
    ) -> Reply<Result<T, HostError>> {
        match self.begin(site) {
            Err(e) => Reply::Ready(Err(e)),
            Ok(Step::Replay(replayed)) => Reply::Ready(replayed.read_outcome(decode)),
            Ok(Step::Live(effect)) => {
                let journal = self.journal.clone();
                let pre = pre();
                Reply::Pending(Box::pin(async move {
                    let value = match reply(pre).await {
                        Ok(value) => value,
                        Err(err) => {
                            journal.buffer(effect.record(json!({ "err": encode_error(&err) })));
                            return Err(err);
                        }
                    };
                    let encoded =
                        encode(&value).map_err(|why| cannot_journal(&journal, &effect, &why))?;
                    let record = effect.record(json!({ "ok": encoded }));
                    match journal.clone().commit_row(Some(record), writes).await {
                        Ok(()) => Ok(value),
                        Err(err) => {
                            journal.buffer(effect.record(json!({ "err": encode_error(&err) })));
                            Err(err)
                        }
                    }
                }))
            }
        }
    }
}

impl Task {
    /// A store write with no result (`set`, `clear`, `insert`, `append`, …).
    fn write_unit(&self, site: String, writes: Vec<Write>) -> Reply<Result<(), HostError>> {
        self.write(
            site,
            writes,
            || Reply::Ready(Ok(())),
            encode_unit,
            decode_unit,
        )
    }
}

impl Replayed {
    /// [`Replayed::outcome`], flattened.
    fn read_outcome<T>(
        self,
        read: impl FnOnce(&Json) -> Result<T, String>,
    ) -> Result<T, HostError> {
        self.outcome(read).and_then(|r| r)
    }
}

fn cannot_journal(journal: &Journal, effect: &Effect, why: &str) -> HostError {
    HostError::failed(format!(
        "run `{}`: the result of {} (effect {}) cannot be journaled: {why}",
        journal.run, effect.site, effect.at
    ))
}

/// Buffers the outcome of a live read; an unencodable result is an error.
fn buffer_outcome<T>(
    journal: &Journal,
    effect: &Effect,
    outcome: Result<T, HostError>,
    encode: fn(&T) -> Result<Json, String>,
) -> Result<T, HostError> {
    let result = match &outcome {
        Ok(value) => json!({
            "ok": encode(value).map_err(|why| cannot_journal(journal, effect, &why))?
        }),
        Err(err) => json!({ "err": encode_error(err) }),
    };
    journal.buffer(effect.record(result));
    outcome
}

fn encode_error(err: &HostError) -> Json {
    let kind = match err.kind {
        HostErrorKind::Unsupported => "unsupported",
        HostErrorKind::NotEnabled => "not_enabled",
        HostErrorKind::Timeout => "timeout",
        HostErrorKind::Limit => "limit",
        HostErrorKind::Type => "type",
        _ => "failed",
    };
    let provider = err.provider.as_ref().map(|p| {
        json!({
            "kind": match p.kind {
                ProviderFailureKind::RateLimited => "rate_limited",
                ProviderFailureKind::Connection => "connection",
                ProviderFailureKind::Timeout => "timeout",
                _ => "provider",
            },
            "status": p.status,
            "retry_after_ms": p.retry_after_ms,
        })
    });
    json!({"kind": kind, "message": err.message, "provider": provider})
}

fn decode_error(json: &Json) -> Result<HostError, String> {
    let kind = match json["kind"].as_str() {
        Some("unsupported") => HostErrorKind::Unsupported,
        Some("not_enabled") => HostErrorKind::NotEnabled,
        Some("timeout") => HostErrorKind::Timeout,
        Some("limit") => HostErrorKind::Limit,
        Some("type") => HostErrorKind::Type,
        Some("failed") => HostErrorKind::Failed,
        other => return Err(format!("unknown failure kind {other:?}")),
    };
    let message = json["message"]
        .as_str()
        .ok_or("a failure without a message")?
        .to_string();
    let provider = match &json["provider"] {
        Json::Null => None,
        p => Some(Box::new(ProviderFailure {
            kind: match p["kind"].as_str() {
                Some("rate_limited") => ProviderFailureKind::RateLimited,
                Some("connection") => ProviderFailureKind::Connection,
                Some("timeout") => ProviderFailureKind::Timeout,
                _ => ProviderFailureKind::Provider,
            },
            status: p["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
            retry_after_ms: p["retry_after_ms"].as_u64(),
        })),
    };
    Ok(HostError {
        kind,
        message,
        provider,
    })
}

fn encode_value(value: &VmValue) -> Result<Json, String> {
    concerto_memory::codec::encode_value(value).map_err(|e| e.message)
}

fn decode_value(json: &Json) -> Result<VmValue, String> {
    concerto_memory::codec::decode_value(json).map_err(|e| e.message)
}

fn encode_unit(_: &()) -> Result<Json, String> {
    Ok(Json::Null)
}

fn decode_unit(_: &Json) -> Result<(), String> {
    Ok(())
}

fn encode_bool(b: &bool) -> Result<Json, String> {
    Ok(Json::Bool(*b))
}

fn decode_bool(json: &Json) -> Result<bool, String> {
    json.as_bool()
        .ok_or_else(|| format!("expected a boolean, not {json}"))
}

fn encode_option(value: &Option<VmValue>) -> Result<Json, String> {
    Ok(match value {
        Some(v) => json!([encode_value(v)?]),
        None => Json::Null,
    })
}

fn decode_option(json: &Json) -> Result<Option<VmValue>, String> {
    match json {
        Json::Null => Ok(None),
        Json::Array(one) if one.len() == 1 => decode_value(&one[0]).map(Some),
        other => Err(format!("expected an optional value, not {other}")),
    }
}

fn encode_serde<T: serde::Serialize>(value: &T) -> Result<Json, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn decode_serde<T: serde::de::DeserializeOwned>(json: &Json) -> Result<T, String> {
    serde_json::from_value(json.clone()).map_err(|e| e.to_string())
}

#[expect(
    clippy::ptr_arg,
    reason = "encoders are `fn(&T)` of the store's result type"
)]
fn encode_entries(entries: &Vec<(Str, VmValue)>) -> Result<Json, String> {
    entries
        .iter()
        .map(|(k, v)| Ok(json!([k.as_str(), encode_value(v)?])))
        .collect::<Result<Vec<_>, String>>()
        .map(Json::Array)
}

fn decode_entries(json: &Json) -> Result<Vec<(Str, VmValue)>, String> {
    json.as_array()
        .ok_or("expected entries")?
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().ok_or("expected a key")?;
            Ok((Str::from(key), decode_value(&pair[1])?))
        })
        .collect()
}

#[expect(
    clippy::ptr_arg,
    reason = "encoders are `fn(&T)` of the store's result type"
)]
fn encode_ledger(entries: &Vec<LedgerEntry>) -> Result<Json, String> {
    entries
        .iter()
        .map(|e| {
            Ok(json!({"identifier": e.identifier, "keys": e.keys,
                      "value": encode_value(&e.value)?}))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Json::Array)
}

fn decode_ledger(json: &Json) -> Result<Vec<LedgerEntry>, String> {
    json.as_array()
        .ok_or("expected ledger entries")?
        .iter()
        .map(|e| {
            Ok(LedgerEntry {
                identifier: e["identifier"]
                    .as_str()
                    .ok_or("expected an identifier")?
                    .to_string(),
                keys: decode_serde(&e["keys"])?,
                value: decode_value(&e["value"])?,
            })
        })
        .collect()
}

/// The components of a journaled task: each effect goes through `task`.
fn task_host(inner: &Host, task: Arc<Task>) -> Host {
    Host {
        emit: Arc::new(JournaledEmits {
            inner: inner.emit.clone(),
            task: task.clone(),
        }),
        connections: Arc::new(JournaledConnections {
            inner: inner.connections.clone(),
            task: task.clone(),
        }),
        memory: Arc::new(JournaledStore {
            inner: inner.memory.clone(),
            task: task.clone(),
        }),
        schema: inner.schema.clone(),
        tools: Arc::new(JournaledTools {
            inner: inner.tools.clone(),
            task: task.clone(),
        }),
        system: Arc::new(JournaledSystem {
            inner: inner.system.clone(),
            task: task.clone(),
        }),
        tasks: Some(Arc::new(JournaledTasks {
            inner: inner.clone(),
            task,
        })),
    }
}

/// `host` with every effect of the run going through `journal`, keyed by task.
pub(crate) fn journaled(host: Host, journal: &Arc<Journal>) -> Host {
    let task = Task::new(journal.clone(), "main".to_string());
    task_host(&host, task)
}

/// Spawned tasks of a journaled run: each gets its own path.
struct JournaledTasks {
    /// The components without the journal.
    inner: Host,
    task: Arc<Task>,
}

impl TaskScope for JournaledTasks {
    fn child(&self, _parent: &Host, index: u32) -> Host {
        let path = format!("{}/{index}", self.task.path);
        task_host(&self.inner, Task::new(self.task.journal.clone(), path))
    }
}

/// Agent calls through the journal.
struct JournaledConnections {
    inner: Arc<dyn Connections>,
    task: Arc<Task>,
}

impl Connections for JournaledConnections {
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let site = format!("agent call `{}`", request.agent);
        let inner = self.inner.clone();
        let program = program.clone();
        self.task.effect(
            site,
            move || inner.chat(&program, connection, request),
            encode_serde,
            decode_serde,
        )
    }
}

/// Emits and emit-await answers through the journal.
struct JournaledEmits {
    inner: Arc<dyn EmitSink>,
    task: Arc<Task>,
}

impl EmitSink for JournaledEmits {
    /// A recorded emit was delivered by the run that recorded it: it is delivered again only
    /// with `replay_emits`. A new one is delivered, then recorded (the emit barrier commits
    /// the record before the program goes on).
    fn emit(&self, channel: &str, payload: &VmValue) -> Result<(), HostError> {
        match self.task.begin(format!("emit `{channel}`"))? {
            Step::Replay(replayed) => {
                replayed.read_outcome(|_| Ok(()))?;
                if self.task.journal.replay_emits {
                    self.inner.emit(channel, payload)?;
                }
                Ok(())
            }
            Step::Live(effect) => {
                self.inner.emit_keyed(&effect.at, channel, payload)?;
                self.task.journal.buffer(effect.record(json!({"ok": null})));
                Ok(())
            }
        }
    }

    fn settles(&self) -> bool {
        true
    }

    /// The sink's own settling first (an emit it delivers later is delivered before the
    /// journal says it was), then the journal's row.
    fn settle(&self) -> Option<BoxFuture<Result<(), HostError>>> {
        let delivered = self.inner.settle();
        if delivered.is_none() && self.task.journal.pending.lock().is_empty() {
            return None;
        }
        let journal = self.task.journal.clone();
        Some(Box::pin(async move {
            if let Some(delivered) = delivered {
                delivered.await?;
            }
            if journal.pending.lock().is_empty() {
                return Ok(());
            }
            journal.commit_row(None, Vec::new()).await
        }))
    }

    fn emit_await(&self, channel: &str, payload: VmValue) -> BoxFuture<Result<VmValue, HostError>> {
        let inner = self.inner.clone();
        let channel_owned = channel.to_string();
        self.task.effect(
            format!("emit_await `{channel}`"),
            move || inner.emit_await(&channel_owned, payload),
            encode_value,
            decode_value,
        )
    }
}

/// External tool calls (MCP servers, host agents, host tools) through the journal; the
/// program's own tools are its own code and are simply run again.
struct JournaledTools {
    inner: Arc<dyn ToolHost>,
    task: Arc<Task>,
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
        let inner = self.inner.clone();
        let program = program.clone();
        let (tool, method) = (tool.to_string(), method.to_string());
        self.task.effect(
            format!("tool call `{tool}.{method}`"),
            move || inner.call(&program, &tool, &method, args),
            encode_value,
            decode_value,
        )
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
        let inner = self.inner.clone();
        let program = program.clone();
        let (tool, method) = (tool.to_string(), method.to_string());
        self.task.effect(
            format!("model's tool call `{tool}.{method}`"),
            move || inner.call_for_model(&program, &tool, &method, args),
            |output| Ok(json!({"value": encode_value(&output.value)?, "images": output.images})),
            |recorded| {
                let images: Vec<ImagePart> = decode_serde(&recorded["images"])?;
                Ok(ToolOutput {
                    value: decode_value(&recorded["value"])?,
                    images,
                })
            },
        )
    }

    fn host_exchange(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<String, HostError>> {
        let name = program
            .hosts
            .get(host as usize)
            .map_or_else(|| format!("#{host}"), |h| h.name.clone());
        let inner = self.inner.clone();
        let program = program.clone();
        self.task.effect(
            format!("exchange with agent `{name}`"),
            move || inner.host_exchange(&program, host, input),
            |text| Ok(Json::String(text.clone())),
            |recorded| match recorded {
                Json::String(text) => Ok(text.clone()),
                other => Err(format!("an agent's answer is text, not {other}")),
            },
        )
    }

    /// Streaming sessions (`listen`) are not journaled: a resumed run opens them again.
    fn host_listen(
        &self,
        program: &Arc<Program>,
        host: u32,
        input: String,
    ) -> BoxFuture<Result<Arc<dyn HostSession>, HostError>> {
        self.inner.host_listen(program, host, input)
    }

    /// `std::fs` through the journal: a resumed run gets what the first run read and does
    /// not write again what it wrote.
    fn fs(&self, request: FsRequest) -> BoxFuture<Result<FsReply, OutsideError>> {
        let (op, path) = match &request {
            FsRequest::Read(p) => ("read", p),
            FsRequest::Write(p, _) => ("write", p),
            FsRequest::Append(p, _) => ("append", p),
            FsRequest::Exists(p) => ("exists", p),
            FsRequest::ListDir(p) => ("list_dir", p),
            FsRequest::Remove(p) => ("remove", p),
            FsRequest::Size(p) => ("size", p),
        };
        let site = format!("std::fs {op} `{path}`");
        let inner = self.inner.clone();
        outside(
            &self.task,
            site,
            move || inner.fs(request),
            |reply| match reply {
                FsReply::Text(text) => json!(text),
                FsReply::Done => Json::Null,
                FsReply::Bool(b) => json!(b),
                FsReply::Names(names) => json!(names),
                FsReply::Size(n) => json!(n),
            },
            |ok| {
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
                    _ => return Err("not an fs reply".to_string()),
                })
            },
        )
    }

    /// `std::http` through the journal: a resumed run gets the reply the first run got and
    /// does not send the request again.
    fn http(&self, request: HttpRequest) -> BoxFuture<Result<HttpReply, OutsideError>> {
        let site = format!("std::http {} `{}`", request.method, request.url);
        let inner = self.inner.clone();
        outside(
            &self.task,
            site,
            move || inner.http(request),
            |reply| json!({"status": reply.status, "headers": reply.headers, "body": reply.body}),
            |ok| {
                Ok(HttpReply {
                    status: ok["status"]
                        .as_u64()
                        .and_then(|s| u16::try_from(s).ok())
                        .ok_or("a status")?,
                    headers: decode_serde(&ok["headers"])?,
                    body: ok["body"].as_str().ok_or("a body")?.to_string(),
                })
            },
        )
    }
}

/// A `std::fs` / `std::http` operation through the journal. Its outcome is
/// `{"ok": reply}`, `{"ok": {"failed": message}}` (a permitted operation that failed: the
/// program gets `Err(message)`, a value) or `{"err": …}` (a refusal or host failure).
fn outside<T: Send + 'static>(
    task: &Task,
    site: String,
    live: impl FnOnce() -> BoxFuture<Result<T, OutsideError>>,
    encode: fn(&T) -> Json,
    decode: fn(&Json) -> Result<T, String>,
) -> BoxFuture<Result<T, OutsideError>> {
    let call = task.effect(
        site,
        move || {
            let call = live();
            Box::pin(async move {
                Ok(match call.await {
                    Ok(reply) => Ok(reply),
                    Err(OutsideError::Failed(failure)) => Err(failure.message),
                    Err(OutsideError::Refused(text)) => return Err(HostError::not_enabled(text)),
                    Err(OutsideError::Host(err)) => return Err(err),
                })
            })
        },
        move |outcome: &Result<T, String>| {
            Ok(match outcome {
                Ok(reply) => encode(reply),
                Err(message) => json!({ "failed": message }),
            })
        },
        move |recorded| match recorded.get("failed").and_then(Json::as_str) {
            Some(message) => Ok(Err(message.to_string())),
            None => decode(recorded).map(Ok),
        },
    );
    Box::pin(async move {
        match call.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(message)) => Err(OutsideError::failed(
                OutsideFailureKind::Connection,
                message,
            )),
            Err(err) if err.kind == HostErrorKind::NotEnabled => {
                Err(OutsideError::Refused(err.message))
            }
            Err(err) => Err(OutsideError::Host(err)),
        }
    })
}

/// Hashmaps, ledgers and memories through the journal: reads are recorded (a resumed run
/// sees what the first run saw), writes are applied with their row (and not again).
struct JournaledStore {
    inner: Arc<dyn MemoryStore>,
    task: Arc<Task>,
}

impl JournaledStore {
    fn map_name(&self, map: MapId) -> String {
        self.task
            .journal
            .program
            .hashmaps
            .get(map.0 as usize)
            .map_or_else(|| format!("#{}", map.0), |h| h.name.clone())
    }

    /// A ledger write whose result is whether entry `identifier` existed (read just before).
    fn ledger_write(
        &self,
        site: String,
        write: Write,
        ledger: &str,
        identifier: &str,
    ) -> Reply<Result<bool, HostError>> {
        self.task.write(
            site,
            vec![write],
            || ledger_has(&self.inner, ledger, identifier),
            encode_bool,
            decode_bool,
        )
    }
}

impl HashmapStore for JournaledStore {
    fn hashmap_set(&self, map: MapId, key: Str, value: VmValue) -> Reply<Result<(), HostError>> {
        let site = format!("hashmap `{}`.set({key:?})", self.map_name(map));
        let write = Write::HashmapSet { map, key, value };
        self.task.write_unit(site, vec![write])
    }

    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<VmValue>, HostError>> {
        let site = format!("hashmap `{}`.get({key:?})", self.map_name(map));
        self.task.read(
            site,
            || self.inner.hashmap_get(map, key),
            encode_option,
            decode_option,
        )
    }

    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let site = format!("hashmap `{}`.has({key:?})", self.map_name(map));
        self.task.read(
            site,
            || self.inner.hashmap_has(map, key),
            encode_bool,
            decode_bool,
        )
    }

    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let site = format!("hashmap `{}`.delete({key:?})", self.map_name(map));
        let write = Write::HashmapDelete {
            map,
            key: Str::from(key),
        };
        self.task.write(
            site,
            vec![write],
            || self.inner.hashmap_has(map, key),
            encode_bool,
            decode_bool,
        )
    }

    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, VmValue)>, HostError>> {
        let site = format!("hashmap `{}`.entries()", self.map_name(map));
        self.task.read(
            site,
            || self.inner.hashmap_entries(map),
            encode_entries,
            decode_entries,
        )
    }

    /// None: a replayed write leaves the store unchanged, so the store's version cannot
    /// tell the program's view of the hashmap.
    fn hashmap_version(&self, _map: MapId) -> Option<u64> {
        None
    }

    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>> {
        let site = format!("hashmap `{}`.len()", self.map_name(map));
        self.task.read(
            site,
            || self.inner.hashmap_len(map),
            |n| Ok(json!(n)),
            |j| {
                j.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| format!("expected a length, not {j}"))
            },
        )
    }

    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>> {
        let site = format!("hashmap `{}`.clear()", self.map_name(map));
        let write = Write::HashmapClear { map };
        self.task.write_unit(site, vec![write])
    }

    fn hashmap_set_many(
        &self,
        map: MapId,
        entries: Vec<(Str, VmValue)>,
    ) -> Reply<Result<(), HostError>> {
        let site = format!(
            "hashmap `{}`.set_many({})",
            self.map_name(map),
            entries.len()
        );
        let writes = entries
            .into_iter()
            .map(|(key, value)| Write::HashmapSet { map, key, value })
            .collect();
        self.task.write_unit(site, writes)
    }

    fn hashmap_get_many(
        &self,
        map: MapId,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<VmValue>>, HostError>> {
        let site = format!("hashmap `{}`.get_many({})", self.map_name(map), keys.len());
        self.task.read(
            site,
            || self.inner.hashmap_get_many(map, keys),
            |values| {
                values
                    .iter()
                    .map(encode_option)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Json::Array)
            },
            |j| {
                j.as_array()
                    .ok_or("expected values")?
                    .iter()
                    .map(decode_option)
                    .collect()
            },
        )
    }

    fn hashmap_replace(
        &self,
        map: MapId,
        key: Str,
        value: VmValue,
    ) -> Reply<Result<Option<VmValue>, HostError>> {
        let site = format!("hashmap `{}`.set({key:?})", self.map_name(map));
        let pre = self.inner.clone();
        let read_key = key.clone();
        let write = Write::HashmapSet { map, key, value };
        self.task.write(
            site,
            vec![write],
            move || pre.hashmap_get(map, read_key.as_str()),
            encode_option,
            decode_option,
        )
    }

    fn hashmap_remove(&self, map: MapId, key: &str) -> Reply<Result<Option<VmValue>, HostError>> {
        let site = format!("hashmap `{}`.delete({key:?})", self.map_name(map));
        let write = Write::HashmapDelete {
            map,
            key: Str::from(key),
        };
        self.task.write(
            site,
            vec![write],
            || self.inner.hashmap_get(map, key),
            encode_option,
            decode_option,
        )
    }
}

/// Whether ledger `ledger` has an entry `identifier` (for the result of an update or a
/// delete, read before it).
fn ledger_has(
    inner: &Arc<dyn MemoryStore>,
    ledger: &str,
    identifier: &str,
) -> Reply<Result<bool, HostError>> {
    let entries = inner.ledger_entries(ledger);
    let identifier = identifier.to_string();
    let has = move |entries: Vec<LedgerEntry>| entries.iter().any(|e| e.identifier == identifier);
    match entries {
        Reply::Ready(r) => Reply::Ready(r.map(has)),
        Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(has) })),
    }
}

impl LedgerStore for JournaledStore {
    fn ledger_insert(&self, ledger: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>> {
        let site = format!("ledger `{ledger}`.insert({:?})", entry.identifier);
        let write = Write::LedgerInsert {
            ledger: ledger.to_string(),
            entry,
        };
        self.task.write_unit(site, vec![write])
    }

    fn ledger_update(
        &self,
        ledger: &str,
        identifier: &str,
        value: VmValue,
    ) -> Reply<Result<bool, HostError>> {
        let site = format!("ledger `{ledger}`.update({identifier:?})");
        let write = Write::LedgerUpdate {
            ledger: ledger.to_string(),
            identifier: identifier.to_string(),
            value,
        };
        self.ledger_write(site, write, ledger, identifier)
    }

    fn ledger_update_keys(
        &self,
        ledger: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>> {
        let site = format!("ledger `{ledger}`.update_keys({identifier:?})");
        let write = Write::LedgerUpdateKeys {
            ledger: ledger.to_string(),
            identifier: identifier.to_string(),
            keys,
        };
        self.ledger_write(site, write, ledger, identifier)
    }

    fn ledger_delete(&self, ledger: &str, identifier: &str) -> Reply<Result<bool, HostError>> {
        let site = format!("ledger `{ledger}`.delete({identifier:?})");
        let write = Write::LedgerDelete {
            ledger: ledger.to_string(),
            identifier: identifier.to_string(),
        };
        self.ledger_write(site, write, ledger, identifier)
    }

    fn ledger_query(
        &self,
        ledger: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let site = format!("ledger `{ledger}`.query({query:?})");
        self.task.read(
            site,
            || self.inner.ledger_query(ledger, query),
            encode_ledger,
            decode_ledger,
        )
    }

    fn ledger_entries(&self, ledger: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let site = format!("ledger `{ledger}`.entries()");
        self.task.read(
            site,
            || self.inner.ledger_entries(ledger),
            encode_ledger,
            decode_ledger,
        )
    }

    fn ledger_clear(&self, ledger: &str) -> Reply<Result<(), HostError>> {
        let site = format!("ledger `{ledger}`.clear()");
        let write = Write::LedgerClear {
            ledger: ledger.to_string(),
        };
        self.task.write_unit(site, vec![write])
    }
}

impl ConversationStore for JournaledStore {
    fn memory_append(
        &self,
        memory: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        let site = format!("memory `{memory}`.append({})", message.role);
        let write = Write::MemoryAppend {
            memory: memory.to_string(),
            max_messages,
            message,
        };
        self.task.write_unit(site, vec![write])
    }

    fn memory_messages(&self, memory: &str) -> Reply<Result<Vec<ChatMessage>, HostError>> {
        let site = format!("memory `{memory}`.messages()");
        self.task.read(
            site,
            || self.inner.memory_messages(memory),
            encode_serde,
            decode_serde,
        )
    }

    fn memory_clear(&self, memory: &str) -> Reply<Result<(), HostError>> {
        let site = format!("memory `{memory}`.clear()");
        let write = Write::MemoryClear {
            memory: memory.to_string(),
        };
        self.task.write_unit(site, vec![write])
    }
}

/// The program never reaches journals or batches itself: these pass through.
impl JournalStore for JournaledStore {
    fn journal_append(&self, run: &str, record: String) -> Reply<Result<(), HostError>> {
        self.inner.journal_append(run, record)
    }

    fn journal_records(&self, run: &str) -> Reply<Result<Vec<String>, HostError>> {
        self.inner.journal_records(run)
    }

    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        self.inner.apply(writes, journal)
    }
}

/// The clock and randomness through the journal (reads); the rest passes through.
struct JournaledSystem {
    inner: Arc<dyn System>,
    task: Arc<Task>,
}

impl JournaledSystem {
    /// Keeps `err` to fail the task's next effect (a clock read cannot fail), saying so.
    fn poison(&self, err: HostError) {
        let err = HostError {
            message: format!(
                "{} (found at a clock read or a random draw, which cannot fail: the run stops \
                 at its next effect)",
                err.message
            ),
            ..err
        };
        let mut kept = self.task.journal.diverged.lock();
        // `begin` keeps a divergence it finds as it is: this one says where it was found.
        if kept
            .as_ref()
            .is_none_or(|k| err.message.starts_with(&k.message))
        {
            *kept = Some(err);
        }
    }

    /// A value the program observes and that cannot fail: replayed, or read and buffered.
    /// A divergence or an unreadable entry is kept and fails the next effect.
    fn observe<T>(
        &self,
        site: &str,
        live: impl Fn() -> T,
        encode: impl FnOnce(&T) -> Json,
        decode: impl FnOnce(&Json) -> Result<T, String>,
    ) -> T {
        match self.task.begin(site.to_string()) {
            Ok(Step::Replay(replayed)) => match replayed.read_outcome(decode) {
                Ok(value) => value,
                Err(err) => {
                    self.poison(err);
                    live()
                }
            },
            Ok(Step::Live(effect)) => {
                let value = live();
                let record = effect.record(json!({ "ok": encode(&value) }));
                self.task.journal.buffer(record);
                value
            }
            Err(err) => {
                self.poison(err);
                live()
            }
        }
    }
}

impl System for JournaledSystem {
    fn print(&self, text: &str) {
        self.inner.print(text);
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message);
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.inner.env_var(name)
    }

    fn env_vars(&self) -> Vec<(String, String)> {
        self.inner.env_vars()
    }

    fn now_ms(&self) -> i64 {
        self.observe(
            "the clock",
            || self.inner.now_ms(),
            |ms| json!(ms),
            |j| {
                j.as_i64()
                    .ok_or_else(|| format!("expected a time, not {j}"))
            },
        )
    }

    fn monotonic(&self) -> std::time::Instant {
        self.inner.monotonic()
    }

    fn sleep(&self, duration: std::time::Duration) -> BoxFuture<()> {
        self.inner.sleep(duration)
    }

    fn spawn(&self, task: BoxFuture<()>) -> Result<Spawned, BoxFuture<()>> {
        self.inner.spawn(task)
    }

    fn random_bytes(&self, buf: &mut [u8]) {
        let len = buf.len();
        let bytes = self.observe(
            &format!("random bytes ({len})"),
            || {
                let mut fresh = vec![0u8; len];
                self.inner.random_bytes(&mut fresh);
                fresh
            },
            |bytes| json!(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            |j| {
                let hex = j.as_str().ok_or("expected hex")?;
                (0..hex.len())
                    .step_by(2)
                    .map(|i| {
                        hex.get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or_else(|| "expected hex".to_string())
                    })
                    .collect()
            },
        );
        if bytes.len() == len {
            buf.copy_from_slice(&bytes);
        } else {
            self.poison(HostError::failed(format!(
                "run `{}`: the journal recorded {} random bytes where the program now asks {len}",
                self.task.journal.run,
                bytes.len()
            )));
            self.inner.random_bytes(buf);
        }
    }
}

#[cfg(feature = "fault-injection")]
mod fault {
    //! Test builds only (`--features fault-injection`): `CONCERTO_FAULT=before:K` stops the
    //! process at once right before its K-th journal row is sent to the store (the effect
    //! was performed, not journaled), `after:K` right after the K-th row committed (before
    //! the program sees the effect's result); `count` prints `journal commits: N` on
    //! stderr when the run ends.

    #[derive(Clone, Copy)]
    pub(super) enum Fault {
        Before(u64),
        After(u64),
        Count,
    }

    impl Fault {
        pub(super) fn from_env() -> Option<Fault> {
            let spec = std::env::var("CONCERTO_FAULT").ok()?;
            if spec == "count" {
                return Some(Fault::Count);
            }
            let (when, k) = spec.split_once(':')?;
            let k = k.parse().ok()?;
            match when {
                "before" => Some(Fault::Before(k)),
                "after" => Some(Fault::After(k)),
                _ => None,
            }
        }
    }

    fn die() -> ! {
        // No destructors, no flushing: as close to a power cut as a process can get.
        std::process::abort()
    }

    pub(super) fn before(fault: Option<Fault>, number: u64) {
        if let Some(Fault::Before(k)) = fault
            && k == number
        {
            die();
        }
    }

    pub(super) fn after(fault: Option<Fault>, number: u64) {
        if let Some(Fault::After(k)) = fault
            && k == number
        {
            die();
        }
    }

    #[expect(
        clippy::print_stderr,
        reason = "what the harness reads, in test builds"
    )]
    pub(super) fn report(commits: u64) {
        if matches!(Fault::from_env(), Some(Fault::Count)) {
            eprintln!("journal commits: {commits}");
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::{Journal, JournaledConnections, Task, reply};
    use concerto_vm::host::{
        BoxFuture, ChatMessage, ChatRequest, ChatResponse, ConnectionId, Connections, HostError,
        MemoryStore, Program,
    };
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection layer that counts the calls it gets and answers none.
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

    fn program() -> Arc<Program> {
        Arc::new(
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
        )
    }

    /// Run `r1`'s journal holding `row`, in a fresh SQLite file (removed with the folder
    /// `name` names), opened on a current-thread tokio runtime.
    fn journal_with_row(
        name: &str,
        row: &serde_json::Value,
    ) -> (
        tokio::runtime::Runtime,
        Result<Arc<Journal>, HostError>,
        std::path::PathBuf,
    ) {
        let dir =
            std::env::temp_dir().join(format!("concerto-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn MemoryStore> =
            Arc::new(concerto_store_sqlite::SqliteStore::open(&dir.join("j.db"), vec![]).unwrap());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio
            .block_on(reply(store.journal_append("r1", row.to_string())))
            .unwrap();
        let journal = tokio.block_on(Journal::open(store, program(), "r1", false, None));
        (tokio, journal, dir)
    }

    /// Asks agent `Agent` once through a journal holding `row` for run `r1`: the error, the
    /// calls the connection layer got, and how many effects were replayed.
    fn ask_with_row(
        name: &str,
        row: serde_json::Value,
    ) -> (Result<ChatResponse, HostError>, usize, u64) {
        let (tokio, opened, dir) = journal_with_row(name, &row);
        let journal = match opened {
            Ok(journal) => journal,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return (Err(err), 0, 0);
            }
        };
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let conns = JournaledConnections {
            inner: inner.clone(),
            task: Task::new(journal.clone(), "main".to_string()),
        };
        let request = ChatRequest::new("Agent", None, vec![ChatMessage::new("user", "hi")]);
        let outcome = tokio.block_on(conns.chat(&program(), ConnectionId(0), request));
        let _ = std::fs::remove_dir_all(&dir);
        (outcome, inner.0.load(Ordering::SeqCst), journal.replayed())
    }

    /// A recorded reply that does not read as a reply is an error naming the run and the
    /// entry; the call is not made again behind the program's back, nor counted replayed.
    #[test]
    fn an_unreadable_entry_is_an_error_naming_the_run_and_the_entry() {
        let row = json!({"v": 2, "effects": [{"at": "main#0", "site": "agent call `Agent`",
            "result": {"ok": {"text": 5}}}]});
        let (outcome, calls, replayed) = ask_with_row("unreadable", row);
        let err = outcome.unwrap_err();
        assert!(
            err.message.contains(
                "run `r1`: journal entry 1 (agent call `Agent` at main#0) cannot be replayed"
            ),
            "{}",
            err.message
        );
        assert_eq!(calls, 0, "the call was made again");
        assert_eq!(replayed, 0);
    }

    /// A program that now makes another effect where the journal has one stops, naming the
    /// position and both effects; nothing is asked.
    #[test]
    fn a_divergent_effect_is_an_error_naming_both() {
        let row = json!({"v": 2, "effects": [{"at": "main#0", "site": "agent call `Other`",
            "result": {"ok": null}}]});
        let (outcome, calls, _) = ask_with_row("diverge", row);
        let err = outcome.unwrap_err();
        assert!(
            err.message
                .contains("run `r1` diverges from its journal at effect main#0")
                && err.message.contains(
                    "the journal has agent call `Other`, the program now makes agent call `Agent`"
                ),
            "{}",
            err.message
        );
        assert_eq!(calls, 0);
    }

    /// A clock read that diverges cannot fail where it is made: the task's next effect fails,
    /// saying where the divergence was found; the clock still answers, and nothing is asked.
    #[test]
    fn a_divergent_clock_read_fails_the_next_effect_saying_so() {
        use super::JournaledSystem;
        use concerto_vm::host::System;
        let row = json!({"v": 2, "effects": [{"at": "main#0", "site": "random bytes (8)",
            "result": {"ok": "0102030405060708"}}]});
        let (tokio, journal, dir) = journal_with_row("clock", &row);
        let journal = journal.unwrap();
        let task = Task::new(journal, "main".to_string());
        let clock = JournaledSystem {
            inner: Arc::new(crate::system::ProcessSystem::default()),
            task: task.clone(),
        };
        assert!(clock.now_ms() > 0, "the clock answers");
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let conns = JournaledConnections {
            inner: inner.clone(),
            task,
        };
        let request = ChatRequest::new("Agent", None, vec![ChatMessage::new("user", "hi")]);
        let err = tokio
            .block_on(conns.chat(&program(), ConnectionId(0), request))
            .unwrap_err();
        assert!(
            err.message
                .contains("the journal has random bytes (8), the program now makes the clock")
                && err
                    .message
                    .contains("found at a clock read or a random draw"),
            "{}",
            err.message
        );
        assert_eq!(inner.0.load(Ordering::SeqCst), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The same position twice (two processes ran the run at once) is named as that.
    #[test]
    fn an_effect_recorded_twice_names_two_processes() {
        let effect = json!({"at": "main#0", "site": "agent call `Agent`", "result": {"ok": null}});
        let row = json!({"v": 2, "effects": [effect, effect]});
        let (outcome, calls, _) = ask_with_row("twice", row);
        let err = outcome.unwrap_err();
        assert!(
            err.message
                .contains("effect main#0 is recorded twice (two processes ran this run at once"),
            "{}",
            err.message
        );
        assert_eq!(calls, 0);
    }

    /// A journal of the fingerprint format (before positions) is refused when it opens.
    #[test]
    fn a_journal_of_the_earlier_format_is_refused() {
        let row = json!({"kind": "agent", "fp": "af64724c8602eb6e", "n": 0, "result": {}});
        let (outcome, calls, _) = ask_with_row("old", row);
        let err = outcome.unwrap_err();
        assert!(
            err.message.contains("written by an earlier version"),
            "{}",
            err.message
        );
        assert_eq!(calls, 0);
    }
}
