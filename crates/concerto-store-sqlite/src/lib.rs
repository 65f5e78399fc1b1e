//! A durable [`MemoryStore`](concerto_vm::host::MemoryStore) on SQLite: hashmaps, ledgers and conversation memories in one
//! database file that survives restarts and crashes, and that several processes may share.
//!
//! ```
//! use concerto_store_sqlite::SqliteStore;
//! use concerto_vm::host::{HashmapStore, MapId, Reply};
//! use concerto_vm::{Str, Value};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("state.db");
//! let store = SqliteStore::open(&path, vec!["store".to_string()]).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let Reply::Pending(write) = store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1)) else {
//!     unreachable!("every operation of this store answers later")
//! };
//! rt.block_on(write).unwrap(); // committed (and on disk) once this returns
//! drop(store);
//!
//! let store = SqliteStore::open(&path, vec!["store".to_string()]).unwrap();
//! let Reply::Pending(read) = store.hashmap_get(MapId(0), "k") else { unreachable!() };
//! assert_eq!(rt.block_on(read).unwrap(), Some(Value::Int(1)));
//! ```
//!
//! # Behaviour
//!
//! Every operation gives the same observable result as `concerto_memory::InMemoryStore`:
//! hashmap entries keep their insertion order (an updated key keeps its position, a deleted
//! and re-inserted key goes last), ledgers upsert by identifier and answer the same queries,
//! memories keep a sliding window of the newest messages. `set_many`, `replace` and `remove`
//! are atomic (one transaction each) and `get_many` reads one snapshot. It also keeps the
//! journals of resumable runs (`journal_append` / `journal_records`), which the in-memory
//! store refuses.
//!
//! Differences from the in-memory store, all inherent to keeping state outside the process:
//! - Values are stored by their JSON encoding ([`concerto_memory::codec`]), so a value read
//!   back is a copy: changing an array in place after storing it does not change the stored
//!   one, and a struct read back has its type name and fields but no program type key.
//!   Functions, references to declared entities and host objects cannot be stored; such a
//!   write fails naming the key and changes nothing.
//! - There is no memory limit (`InMemoryStore::with_max_bytes`) and no in-process change
//!   listeners; file persistence is what this store is.
//!
//! # Durability
//!
//! Each operation runs in a transaction, and its [`Reply`] completes only after that
//! transaction has committed. The database is in WAL mode with `synchronous=FULL`: a commit
//! returns after the write-ahead log is flushed to stable storage (`fsync`), so an
//! acknowledged write survives `kill -9` of the process **and** an operating-system crash or
//! power loss. With [`Synchronous::Normal`] the log is synced only at checkpoints: an
//! acknowledged write still survives the process being killed (the log is already in the
//! operating system's cache) but the last commits may be lost to a power cut; it is faster
//! on disks with slow flushes. The default is `Full` because the promise is "nothing
//! acknowledged is lost".
//!
//! The price is one flush per acknowledged write. On a development machine (virtual disk,
//! release build, `examples/throughput.rs`) one task writing and awaiting each `set` did
//! about 300–4,500 sets/s with `Full`, depending on how busy the disk was, and 30,000–44,000
//! with `Normal`; reads, which flush nothing, 50,000–120,000 gets/s. Concurrent tasks share
//! flushes (8 tasks: 8,000–20,000 sets/s with `Full`).
//!
//! # Threads
//!
//! SQLite calls block, so none runs on the caller's thread (typically a tokio worker): the
//! store owns one connection on a dedicated thread that takes jobs from a channel, and every
//! method returns [`Reply::Pending`] with a future that a `tokio::sync::oneshot` channel
//! completes. Values are encoded before the job is queued and decoded by the awaiting future,
//! so the thread does only SQL. Jobs that queue up while a transaction commits are committed
//! together (group commit, each in its own savepoint), so concurrent tasks share flushes.
//! Dropping the store finishes the queued jobs, closes the connection and joins the thread.
//!
//! # Sharing
//!
//! Several stores, in one process or many, may open the same file: WAL lets readers work
//! while one writer commits, writers take the lock in turn (waiting up to
//! [`SqliteOptions::busy_timeout`], then failing with
//! [`concerto_vm::host::HostErrorKind::Timeout`]), and every read sees the latest commit.
//! Nothing is cached in the process. Hashmaps are stored by their program **name** (not
//! index), ledgers and memories by theirs, so programs that open one file and declare a
//! hashmap of the same name share it.
//!
//! # Schema
//!
//! `PRAGMA application_id` marks the file as a Concerto state database and
//! `PRAGMA user_version` holds [`SCHEMA_VERSION`]; opening a file of another application
//! or another schema version fails with a message that says so. Tables: see
//! `schema.rs` (`hashmap_entries (map, key, ord, value)`,
//! `ledger_entries (ledger, identifier, ord, keys, value)`,
//! `memory_messages (memory, seq, message)`, `journal_records (run, seq, record)` for the
//! journals of resumable runs, `journal_fences (run, epoch)` for the fences of leased runs).
//!
//! # Source layout
//! - `lib.rs`: [`SqliteStore`], its options and its implementations of the store traits that
//!   make up [`MemoryStore`](concerto_vm::host::MemoryStore) (encoding
//!   and decoding of values, ledger query matching).
//! - `batch`: write batches committed with a journal record (`JournalStore::apply`).
//! - `worker`: the SQLite thread, transactions and group commit.
//! - `schema`: opening a file, connection settings, schema creation and checks.
//! - `ops`: the SQL of each operation.
#![warn(missing_docs)]

mod batch;
mod ops;
mod schema;
mod worker;

use concerto_vm::host::MapId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use concerto_memory::{decode_value, encode_value};
use concerto_vm::host::{
    BoxFuture, ChatMessage, ConversationStore, HashmapStore, HostError, JournalRecord,
    JournalStore, LedgerEntry, LedgerQuery, LedgerStore, Reply, Write,
};
use concerto_vm::{Str, Value};

pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

use crate::ops::RawLedgerEntry;
use crate::worker::Worker;

/// How hard each commit works to reach stable storage (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit flushes the write-ahead log: acknowledged writes survive process kills,
    /// operating-system crashes and power loss. The default.
    #[default]
    Full,
    /// The log is flushed at checkpoints only: acknowledged writes survive process kills,
    /// the newest may be lost to an operating-system crash or power loss.
    Normal,
}

/// Settings of [`SqliteStore::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Durability of each commit (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// How long a write waits for another connection's write lock before failing with a
    /// timeout (default 10 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of a store's SQLite thread ([`SqliteStore::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteStats {
    /// Operations that reached the thread (reads and writes, failed ones included).
    pub operations: u64,
    /// Transactions committed; each commit of a write is one flush of the log.
    pub transactions: u64,
}

/// One declared hashmap: its name in the database and in messages.
struct Hashmap {
    /// The program name (`#<index>` when the program gave none).
    name: Arc<str>,
    /// `hashmap 'store'`.
    label: Arc<str>,
}

/// Hashmaps (by their index in the program, stored under their names), ledgers and memories
/// (by name) in an SQLite database file. See the [crate documentation](crate).
pub struct SqliteStore {
    hashmaps: Vec<Hashmap>,
    path: PathBuf,
    worker: Worker,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field(
                "hashmaps",
                &self.hashmaps.iter().map(|h| &*h.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SqliteStore {
    /// Opens the database at `path` (created when missing; its directory must exist) with
    /// the default [`SqliteOptions`], for a program whose hashmaps are `hashmap_names` in
    /// program order (index `i` is `hashmap_names[i]`).
    ///
    /// Fails, naming the file, when it cannot be opened or created, is not an SQLite
    /// database, belongs to another application, or has another schema version.
    pub fn open(path: &Path, hashmap_names: Vec<String>) -> Result<SqliteStore, HostError> {
        SqliteStore::open_with(path, hashmap_names, SqliteOptions::default())
    }

    /// [`SqliteStore::open`] with explicit settings.
    pub fn open_with(
        path: &Path,
        hashmap_names: Vec<String>,
        options: SqliteOptions,
    ) -> Result<SqliteStore, HostError> {
        let db = schema::open(path, &options)?;
        let worker = Worker::start(db)?;
        let hashmaps = hashmap_names
            .into_iter()
            .enumerate()
            .map(|(idx, name)| {
                let name = if name.is_empty() {
                    format!("#{idx}")
                } else {
                    name
                };
                let label = if name.starts_with('#') {
                    format!("hashmap {name}")
                } else {
                    format!("hashmap '{name}'")
                };
                Hashmap {
                    name: Arc::from(name),
                    label: Arc::from(label),
                }
            })
            .collect();
        Ok(SqliteStore {
            hashmaps,
            path: path.to_path_buf(),
            worker,
        })
    }

    /// How the store's thread has worked so far (group commit shows as fewer transactions
    /// than operations).
    pub fn stats(&self) -> SqliteStats {
        let (operations, transactions) = self.worker.counts();
        SqliteStats {
            operations,
            transactions,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of hashmaps.
    pub fn hashmap_count(&self) -> usize {
        self.hashmaps.len()
    }

    /// The name hashmap `map` is stored under (`#<index>` when the program gave none).
    pub fn hashmap_name(&self, map: MapId) -> Option<&str> {
        self.hashmaps.get(map.index()).map(|h| &*h.name)
    }

    fn hashmap(&self, map: MapId) -> Result<&Hashmap, HostError> {
        self.hashmaps.get(map.index()).ok_or_else(|| {
            HostError::failed(format!(
                "hashmap #{map} does not exist in this store (it holds {} hashmaps)",
                self.hashmaps.len()
            ))
        })
    }

    /// Runs `op` on the SQLite thread with hashmap `map`'s table name and label (`writes`:
    /// the job writes); an unknown hashmap fails at once.
    fn on_hashmap<T, F>(&self, map: MapId, writes: bool, op: F) -> Reply<Result<T, HostError>>
    where
        T: Send + 'static,
        F: FnOnce(&worker::Db, &str, &str) -> Result<T, HostError> + Send + 'static,
    {
        match self.hashmap(map) {
            Ok(h) => {
                let (name, label) = (h.name.clone(), h.label.clone());
                later(self.worker.call(writes, move |db| op(db, &name, &label)))
            }
            Err(e) => ready(Err(e)),
        }
    }
}

/// A stored text (or none) with its key and the hashmap's label, as read on the SQLite thread.
type StoredText = (Option<String>, String, String);

/// The value stored text decodes to (`None` stays `None`), decoded off the SQLite thread.
fn decoded(reply: Reply<Result<StoredText, HostError>>) -> Reply<Result<Option<Value>, HostError>> {
    fn finish((text, key, label): StoredText) -> Result<Option<Value>, HostError> {
        text.map(|t| decode(&t, || key_what(&label, &key)))
            .transpose()
    }
    match reply {
        Reply::Ready(r) => ready(r.and_then(finish)),
        Reply::Pending(fut) => later(Box::pin(async move { fut.await.and_then(finish) })),
    }
}

/// A key or identifier for a message: at most 80 characters.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let mut s: String = text.chars().take(MAX).collect();
    s.push('…');
    s
}

/// The stored text of a value; the error names `what` (`hashmap 'm': key 'k'`).
fn encode(value: &Value, what: impl Fn() -> String) -> Result<String, HostError> {
    let json = encode_value(value).map_err(|e| HostError::failed(format!("{}: {e}", what())))?;
    serde_json::to_string(&json)
        .map_err(|e| HostError::failed(format!("{}: cannot encode value: {e}", what())))
}

/// A value from its stored text.
fn decode(text: &str, what: impl Fn() -> String) -> Result<Value, HostError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        HostError::failed(format!(
            "{}: the stored value is not valid JSON: {e}",
            what()
        ))
    })?;
    decode_value(&json).map_err(|e| HostError::failed(format!("{}: {e}", what())))
}

fn key_what(label: &str, key: &str) -> String {
    format!("{label}: key '{}'", shorten(key))
}

fn ledger_what(ledger: &str, identifier: &str) -> String {
    format!("ledger '{ledger}': entry '{}'", shorten(identifier))
}

fn ready<T>(result: Result<T, HostError>) -> Reply<Result<T, HostError>> {
    Reply::Ready(result)
}

fn later<T>(fut: BoxFuture<Result<T, HostError>>) -> Reply<Result<T, HostError>> {
    Reply::Pending(fut)
}

fn decode_entry(ledger: &str, raw: RawLedgerEntry) -> Result<LedgerEntry, HostError> {
    let (identifier, keys, value) = raw;
    let keys: Vec<String> = serde_json::from_str(&keys).map_err(|e| {
        HostError::failed(format!(
            "{}: the stored keys are not a JSON array of strings: {e}",
            ledger_what(ledger, &identifier)
        ))
    })?;
    let value = decode(&value, || ledger_what(ledger, &identifier))?;
    Ok(LedgerEntry {
        identifier,
        keys,
        value,
    })
}

fn decode_entries(ledger: &str, raw: Vec<RawLedgerEntry>) -> Result<Vec<LedgerEntry>, HostError> {
    raw.into_iter().map(|r| decode_entry(ledger, r)).collect()
}

/// The entries of `raw` that match `query`, decoded (only the matches' values are).
fn select(
    ledger: &str,
    query: &LedgerQuery,
    raw: Vec<RawLedgerEntry>,
) -> Result<Vec<LedgerEntry>, HostError> {
    let matcher = concerto_memory::query::Matcher::new(query);
    if matcher.matches_nothing() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (identifier, keys_text, value) in raw {
        let keys: Vec<String> = serde_json::from_str(&keys_text).map_err(|e| {
            HostError::failed(format!(
                "{}: the stored keys are not a JSON array of strings: {e}",
                ledger_what(ledger, &identifier)
            ))
        })?;
        if matcher.matches(&identifier, &keys) {
            let value = decode(&value, || ledger_what(ledger, &identifier))?;
            out.push(LedgerEntry {
                identifier,
                keys,
                value,
            });
        }
    }
    Ok(out)
}

impl HashmapStore for SqliteStore {
    fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> Reply<Result<(), HostError>> {
        let h = match self.hashmap(map) {
            Ok(h) => h,
            Err(e) => return ready(Err(e)),
        };
        let text = match encode(&value, || key_what(&h.label, &key)) {
            Ok(text) => text,
            Err(e) => return ready(Err(e)),
        };
        let (name, label) = (h.name.clone(), h.label.clone());
        later(self.worker.call(true, move |db| {
            ops::hashmap_put(db, &name, &key, &text)
                .map_err(|e| db.fail(&format!("{}: cannot set", key_what(&label, &key)), e))
        }))
    }

    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let key = key.to_string();
        decoded(self.on_hashmap(map, false, move |db, name, label| {
            let text = ops::hashmap_value(db, name, &key)
                .map_err(|e| db.fail(&format!("{}: cannot read", key_what(label, &key)), e))?;
            Ok((text, key, label.to_string()))
        }))
    }

    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let key = key.to_string();
        self.on_hashmap(map, false, move |db, name, label| {
            ops::hashmap_contains(db, name, &key)
                .map_err(|e| db.fail(&format!("{}: cannot read", key_what(label, &key)), e))
        })
    }

    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let key = key.to_string();
        self.on_hashmap(map, true, move |db, name, label| {
            ops::hashmap_take(db, name, &key)
                .map(|old| old.is_some())
                .map_err(|e| db.fail(&format!("{}: cannot delete", key_what(label, &key)), e))
        })
    }

    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
        let h = match self.hashmap(map) {
            Ok(h) => h,
            Err(e) => return ready(Err(e)),
        };
        let (name, label) = (h.name.clone(), h.label.clone());
        let read = self.worker.call(false, move |db| {
            let rows = ops::hashmap_all(db, &name)
                .map_err(|e| db.fail(&format!("{label}: cannot read the entries"), e))?;
            Ok((rows, label))
        });
        later(Box::pin(async move {
            let (rows, label) = read.await?;
            rows.into_iter()
                .map(|(key, text)| {
                    let value = decode(&text, || key_what(&label, &key))?;
                    Ok((Str::from(key), value))
                })
                .collect()
        }))
    }

    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>> {
        self.on_hashmap(map, false, |db, name, label| {
            ops::hashmap_count(db, name)
                .map_err(|e| db.fail(&format!("{label}: cannot count the entries"), e))
        })
    }

    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>> {
        self.on_hashmap(map, true, |db, name, label| {
            ops::hashmap_clear(db, name).map_err(|e| db.fail(&format!("{label}: cannot clear"), e))
        })
    }

    fn hashmap_set_many(
        &self,
        map: MapId,
        entries: Vec<(Str, Value)>,
    ) -> Reply<Result<(), HostError>> {
        let h = match self.hashmap(map) {
            Ok(h) => h,
            Err(e) => return ready(Err(e)),
        };
        if entries.is_empty() {
            return ready(Ok(()));
        }
        // Every value is encoded before anything is written, so a value that cannot be
        // stored fails the whole batch.
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, value) in &entries {
            match encode(value, || key_what(&h.label, key)) {
                Ok(text) => encoded.push((key.clone(), text)),
                Err(e) => return ready(Err(e)),
            }
        }
        drop(entries);
        let (name, label) = (h.name.clone(), h.label.clone());
        let count = encoded.len();
        later(self.worker.call(true, move |db| {
            for (key, text) in &encoded {
                ops::hashmap_put(db, &name, key, text).map_err(|e| {
                    db.fail(
                        &format!(
                            "{label}: set_many of {count} entries failed at key '{}', \
                             nothing was written",
                            shorten(key)
                        ),
                        e,
                    )
                })?;
            }
            Ok(())
        }))
    }

    fn hashmap_get_many(
        &self,
        map: MapId,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<Value>>, HostError>> {
        let h = match self.hashmap(map) {
            Ok(h) => h,
            Err(e) => return ready(Err(e)),
        };
        let (name, label) = (h.name.clone(), h.label.clone());
        let read = self.worker.call(false, move |db| {
            let mut texts = Vec::with_capacity(keys.len());
            for key in &keys {
                let text = ops::hashmap_value(db, &name, key)
                    .map_err(|e| db.fail(&format!("{}: cannot read", key_what(&label, key)), e))?;
                texts.push(text);
            }
            Ok((keys, texts, label))
        });
        later(Box::pin(async move {
            let (keys, texts, label) = read.await?;
            keys.iter()
                .zip(texts)
                .map(|(key, text)| {
                    text.map(|t| decode(&t, || key_what(&label, key)))
                        .transpose()
                })
                .collect()
        }))
    }

    fn hashmap_replace(
        &self,
        map: MapId,
        key: Str,
        value: Value,
    ) -> Reply<Result<Option<Value>, HostError>> {
        let h = match self.hashmap(map) {
            Ok(h) => h,
            Err(e) => return ready(Err(e)),
        };
        let text = match encode(&value, || key_what(&h.label, &key)) {
            Ok(text) => text,
            Err(e) => return ready(Err(e)),
        };
        decoded(self.on_hashmap(map, true, move |db, name, label| {
            let fail = |e| db.fail(&format!("{}: cannot set", key_what(label, &key)), e);
            let old = ops::hashmap_value(db, name, &key).map_err(fail)?;
            ops::hashmap_put(db, name, &key, &text).map_err(fail)?;
            Ok((old, key.to_string(), label.to_string()))
        }))
    }

    fn hashmap_remove(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let key = key.to_string();
        decoded(self.on_hashmap(map, true, move |db, name, label| {
            let old = ops::hashmap_take(db, name, &key)
                .map_err(|e| db.fail(&format!("{}: cannot delete", key_what(label, &key)), e))?;
            Ok((old, key, label.to_string()))
        }))
    }
}

impl LedgerStore for SqliteStore {
    fn ledger_insert(&self, ledger: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>> {
        let what = || ledger_what(ledger, &entry.identifier);
        let value = match encode(&entry.value, what) {
            Ok(text) => text,
            Err(e) => return ready(Err(e)),
        };
        let keys = match serde_json::to_string(&entry.keys) {
            Ok(text) => text,
            Err(e) => {
                return ready(Err(HostError::failed(format!(
                    "{}: cannot encode the keys: {e}",
                    what()
                ))));
            }
        };
        let (ledger, identifier) = (ledger.to_string(), entry.identifier);
        later(self.worker.call(true, move |db| {
            ops::ledger_put(db, &ledger, &identifier, &keys, &value).map_err(|e| {
                db.fail(
                    &format!("{}: cannot insert", ledger_what(&ledger, &identifier)),
                    e,
                )
            })
        }))
    }

    fn ledger_update(
        &self,
        ledger: &str,
        identifier: &str,
        value: Value,
    ) -> Reply<Result<bool, HostError>> {
        let text = match encode(&value, || ledger_what(ledger, identifier)) {
            Ok(text) => text,
            Err(e) => return ready(Err(e)),
        };
        let (ledger, identifier) = (ledger.to_string(), identifier.to_string());
        later(self.worker.call(true, move |db| {
            ops::ledger_set_value(db, &ledger, &identifier, &text).map_err(|e| {
                db.fail(
                    &format!("{}: cannot update", ledger_what(&ledger, &identifier)),
                    e,
                )
            })
        }))
    }

    fn ledger_update_keys(
        &self,
        ledger: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>> {
        let text = match serde_json::to_string(&keys) {
            Ok(text) => text,
            Err(e) => {
                return ready(Err(HostError::failed(format!(
                    "{}: cannot encode the keys: {e}",
                    ledger_what(ledger, identifier)
                ))));
            }
        };
        let (ledger, identifier) = (ledger.to_string(), identifier.to_string());
        later(self.worker.call(true, move |db| {
            ops::ledger_set_keys(db, &ledger, &identifier, &text).map_err(|e| {
                db.fail(
                    &format!(
                        "{}: cannot update the keys",
                        ledger_what(&ledger, &identifier)
                    ),
                    e,
                )
            })
        }))
    }

    fn ledger_delete(&self, ledger: &str, identifier: &str) -> Reply<Result<bool, HostError>> {
        let (ledger, identifier) = (ledger.to_string(), identifier.to_string());
        later(self.worker.call(true, move |db| {
            ops::ledger_remove(db, &ledger, &identifier).map_err(|e| {
                db.fail(
                    &format!("{}: cannot delete", ledger_what(&ledger, &identifier)),
                    e,
                )
            })
        }))
    }

    fn ledger_query(
        &self,
        ledger: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let ledger = ledger.to_string();
        let read = self.worker.call(false, move |db| {
            let rows = ops::ledger_all(db, &ledger)
                .map_err(|e| db.fail(&format!("ledger '{ledger}': cannot query"), e))?;
            Ok((rows, ledger))
        });
        later(Box::pin(async move {
            let (rows, ledger) = read.await?;
            select(&ledger, &query, rows)
        }))
    }

    fn ledger_entries(&self, ledger: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let ledger = ledger.to_string();
        let read = self.worker.call(false, move |db| {
            let rows = ops::ledger_all(db, &ledger)
                .map_err(|e| db.fail(&format!("ledger '{ledger}': cannot read the entries"), e))?;
            Ok((rows, ledger))
        });
        later(Box::pin(async move {
            let (rows, ledger) = read.await?;
            decode_entries(&ledger, rows)
        }))
    }

    fn ledger_clear(&self, ledger: &str) -> Reply<Result<(), HostError>> {
        let ledger = ledger.to_string();
        later(self.worker.call(true, move |db| {
            ops::ledger_clear(db, &ledger)
                .map_err(|e| db.fail(&format!("ledger '{ledger}': cannot clear"), e))
        }))
    }
}

impl ConversationStore for SqliteStore {
    fn memory_append(
        &self,
        memory: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        let text = match serde_json::to_string(&message) {
            Ok(text) => text,
            Err(e) => {
                return ready(Err(HostError::failed(format!(
                    "memory '{memory}': cannot encode the message: {e}"
                ))));
            }
        };
        let memory = memory.to_string();
        later(self.worker.call(true, move |db| {
            ops::memory_push(db, &memory, &text, max_messages)
                .map_err(|e| db.fail(&format!("memory '{memory}': cannot append"), e))
        }))
    }

    fn memory_messages(&self, memory: &str) -> Reply<Result<Vec<ChatMessage>, HostError>> {
        let memory = memory.to_string();
        let read = self.worker.call(false, move |db| {
            let rows = ops::memory_all(db, &memory)
                .map_err(|e| db.fail(&format!("memory '{memory}': cannot read"), e))?;
            Ok((rows, memory))
        });
        later(Box::pin(async move {
            let (rows, memory) = read.await?;
            rows.iter()
                .map(|text| {
                    serde_json::from_str(text).map_err(|e| {
                        HostError::failed(format!(
                            "memory '{memory}': a stored message is not valid: {e}"
                        ))
                    })
                })
                .collect()
        }))
    }

    fn memory_clear(&self, memory: &str) -> Reply<Result<(), HostError>> {
        let memory = memory.to_string();
        later(self.worker.call(true, move |db| {
            ops::memory_clear(db, &memory)
                .map_err(|e| db.fail(&format!("memory '{memory}': cannot clear"), e))
        }))
    }
}

/// The refusal of a write at `epoch` to run `run`, whose fence stands at `stands`.
pub(crate) fn fenced(run: &str, epoch: u64, stands: Option<u64>) -> HostError {
    let stands = stands.map_or_else(
        || "was never raised".to_string(),
        |s| format!("stands at {s}"),
    );
    HostError::fenced(format!(
        "run '{run}': a write of lease epoch {epoch} was refused: the run's fence {stands} \
         (another worker holds the run)"
    ))
}

impl JournalStore for SqliteStore {
    /// All or none: every write is checked (its hashmap exists) and encoded first, then the
    /// writes and the journal record run in one transaction, which a failing write rolls
    /// back.
    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        let ops = match self.prepare_all(writes) {
            Ok(ops) => ops,
            Err(e) => return ready(Err(e)),
        };
        later(
            self.worker
                .call(true, move |db| batch::run_all(db, &ops, journal.as_ref())),
        )
    }

    /// One transaction: the fence is read and raised together, so of two processes raising
    /// it at once the one with the older epoch is refused.
    fn journal_fence(&self, run: &str, epoch: u64) -> Reply<Result<(), HostError>> {
        let run = run.to_string();
        later(self.worker.call(true, move |db| {
            let what = format!("journal of run '{run}': cannot raise its fence");
            let stands = ops::fence_of(db, &run).map_err(|e| db.fail(&what, e))?;
            if stands.is_some_and(|s| s > epoch) {
                return Err(fenced(&run, epoch, stands));
            }
            ops::fence_raise(db, &run, epoch).map_err(|e| db.fail(&what, e))
        }))
    }

    fn journal_append(&self, run: &str, record: String) -> Reply<Result<(), HostError>> {
        let run = run.to_string();
        later(self.worker.call(true, move |db| {
            ops::journal_push(db, &run, &record)
                .map_err(|e| db.fail(&format!("journal of run '{run}': cannot append"), e))
        }))
    }

    fn journal_records(&self, run: &str) -> Reply<Result<Vec<String>, HostError>> {
        let run = run.to_string();
        later(self.worker.call(false, move |db| {
            ops::journal_all(db, &run)
                .map_err(|e| db.fail(&format!("journal of run '{run}': cannot read"), e))
        }))
    }
}
