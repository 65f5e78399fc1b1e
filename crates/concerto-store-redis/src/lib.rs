//! A shared store on Redis for the VM's [`MemoryStore`](concerto_vm::host::MemoryStore): hashmaps, ledgers and
//! conversation memories that every process pointing at the same server (and program key)
//! sees, with atomic operations and change events across processes.
//!
//! ```no_run
//! use concerto_store_redis::RedisStore;
//! let store = RedisStore::connect("redis://127.0.0.1:6379/0", "my-app", vec!["store".into()])?;
//! # Ok::<(), concerto_vm::host::HostError>(())
//! ```
//!
//! # Behaviour
//!
//! The store behaves as `concerto-memory`'s in-memory store does, seen from a program:
//!
//! - **Hashmaps** keep insertion order: an updated key keeps its place, a deleted and
//!   re-inserted key goes last. `set_many` writes all of its entries or none (every value is
//!   encoded before anything is sent, and one script writes them); `get_many` reads one
//!   consistent snapshot (`HMGET`); `replace` and `remove` return the value they replaced or
//!   removed, atomically.
//! - **Ledgers** upsert by identifier (an existing identifier keeps its place); queries use
//!   the same matching rules.
//! - **Memories** keep at most `max_messages` (the newest) after each append.
//! - **Values** are stored with `concerto-memory`'s lossless JSON codec
//!   ([`concerto_memory::codec`]). Values that have no meaning outside the process
//!   (functions, references to declared entities, native objects) cannot be stored: the
//!   write fails with an error naming the key, and nothing is written.
//! - The in-memory store's byte limit (`with_max_bytes`) has no equivalent here: the
//!   server's own `maxmemory` applies.
//!
//! Every operation answers [`Reply::Pending`]: the work runs on the store's own small tokio
//! runtime (one worker thread), so the store can be used from any executor — a tokio
//! runtime of either flavour or none — and never blocks the caller's threads.
//! [`RedisStore::connect`] and the first [`RedisStore::on_change`] /
//! [`RedisStore::on_any_change`] do wait (bounded by the timeouts of [`RedisOptions`]):
//! call them while setting up, or use [`RedisStore::connect_async`].
//!
//! Errors name the operation, the hashmap, ledger or memory, and the server (its URL with
//! any user name and password replaced by `***`); they never contain credentials. An
//! operation that fails on the connection (or times out) may or may not have been applied
//! by the server; nothing is retried automatically, so nothing is applied twice. The
//! connection is re-established in the background after it breaks.
//!
//! # Keys
//!
//! Every key of a program starts with `concerto:<program_key>:` (names escaped: `%` →
//! `%25`, `:` → `%3A`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:hm:<hashmap>:data` | hash | key → encoded value |
//! | `…:hm:<hashmap>:order` | sorted set | key → insertion number |
//! | `…:hm:<hashmap>:seq` | string | the last insertion number given |
//! | `…:lg:<ledger>:value` | hash | identifier → encoded value |
//! | `…:lg:<ledger>:keys` | hash | identifier → JSON array of the entry's keys |
//! | `…:lg:<ledger>:order` | sorted set | identifier → insertion number |
//! | `…:lg:<ledger>:seq` | string | the last insertion number given |
//! | `…:mem:<memory>` | list | JSON chat messages, oldest first |
//! | `…:changes` | pub/sub channel | hashmap change events |
//!
//! Hashmaps are addressed by their program name, so processes of the same program share
//! them. Scoped views (`a:result`) are key prefixes inside a hashmap, so they stay inside
//! the hashmap's keys. Every multi-step operation is one Lua script (sent with `EVALSHA`).
//!
//! # Change events
//!
//! Every hashmap write publishes its changes on `concerto:<program_key>:changes`, from
//! inside the script that makes them (so the messages of one program come in the order of
//! its writes). A message is a JSON array of changes, one per changed key (`set_many` and
//! `clear` send one message with all their changes, in order):
//!
//! ```json
//! [{"map": "store", "index": 0, "key": "a:result", "old": 1, "new": {"$some": 2}}]
//! ```
//!
//! `map` is the hashmap's name, `index` its index in the writer's program, `old` and `new`
//! the encoded values before and after; a member is absent when the key was absent before
//! (`old`) or was deleted (`new`). Nothing is published while nobody is subscribed.
//!
//! [`RedisStore::on_change`] and [`RedisStore::on_any_change`] subscribe (one pub/sub
//! connection per store, started by the first listener) and call the listeners with
//! `concerto-memory`'s [`HashMapChange`], the hashmap resolved by name in the listening
//! store. Guarantees:
//!
//! - **Every process**: listeners in every subscribed process see every change, the
//!   writer's own process included (its listeners are called when the server's message
//!   arrives, usually just after the write's future completes — not before the write
//!   returns, as the in-memory store does).
//! - **At most once**: Redis pub/sub does not store messages. Changes made while a
//!   subscriber is disconnected (it reconnects by itself, with growing delays) or before
//!   the first listener was registered are never delivered to it; a subscriber too slow for
//!   the server's `client-output-buffer-limit pubsub` is disconnected and misses messages.
//! - **Order**: listeners see the changes of one message in order, and messages in the
//!   order the server ran the writes.
//! - Listeners run on one thread of the store (`concerto-redis-events`), one change at a
//!   time; a panicking listener is caught and the others still run. A message that cannot
//!   be decoded is skipped and counted ([`RedisStore::malformed_events`]).
#![warn(missing_docs)]

mod batch;
mod events;
mod keys;
pub mod queue;
mod redact;
mod scripts;

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use concerto_memory::{decode_value, encode_value};
use concerto_vm::host::{
    ChatMessage, ConversationStore, HashmapStore, HostError, HostErrorKind, JournalRecord,
    JournalStore, LedgerEntry, LedgerQuery, LedgerStore, MapId, Reply, Write,
};
use concerto_vm::{Str, Value};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, RedisError};

pub use concerto_memory::{ChangeListener, HashMapChange};

use keys::{HashMapKeys, Layout};
use redact::Redactor;
use scripts::Scripts;

/// Connection settings of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// The longest wait for a connection to the server (default 5 s).
    pub connection_timeout: Duration,
    /// The longest wait for the answer to one operation (default 30 s). An operation that
    /// times out fails with [`HostErrorKind::Timeout`]; the server may still apply it.
    pub response_timeout: Duration,
    /// How many times a broken connection is re-established before operations fail
    /// (default 6, with growing delays from 100 ms).
    pub reconnect_attempts: usize,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            reconnect_attempts: 6,
        }
    }
}

/// Owns the store's runtime; shutting it down never blocks (so a store may be dropped
/// anywhere, inside an async task included).
struct RuntimeHolder(Option<tokio::runtime::Runtime>);

impl RuntimeHolder {
    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for RuntimeHolder {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One hashmap of the program.
struct MapInfo {
    /// `store`, or `#3` when the program gave no name.
    name: String,
    /// `hashmap 'store'`, or `hashmap #3`.
    label: String,
    keys: HashMapKeys,
    /// `{"map":"store","index":0,"key":` — the start of each change event.
    event_prefix: String,
}

/// What the operations' tasks share.
struct Inner {
    conn: ConnectionManager,
    layout: Layout,
    maps: Vec<MapInfo>,
    scripts: Scripts,
    redactor: Redactor,
}

impl Inner {
    /// Hashmap `map`'s keys and label.
    fn map(&self, map: u32) -> Result<&MapInfo, HostError> {
        self.maps.get(map as usize).ok_or_else(|| {
            HostError::failed(format!(
                "hashmap #{map} does not exist in this store (it holds {} hashmaps)",
                self.maps.len()
            ))
        })
    }

    /// `<what> failed on the redis store at <url>: <error>` (credentials scrubbed).
    fn fail(&self, what: &str, err: &RedisError) -> HostError {
        let kind = if err.is_timeout() {
            HostErrorKind::Timeout
        } else {
            HostErrorKind::Failed
        };
        HostError {
            kind,
            message: format!(
                "{what} failed on the redis store at {}: {}",
                self.redactor.url(),
                self.redactor.scrub(&err.to_string())
            ),
            provider: None,
        }
    }
}

/// A [`MemoryStore`](concerto_vm::host::MemoryStore) on a Redis server, shared by every process that connects with the
/// same program key. See the [crate documentation](crate).
pub struct RedisStore {
    inner: Arc<Inner>,
    runtime: Arc<RuntimeHolder>,
    client: redis::Client,
    options: RedisOptions,
    program_key: String,
    hub: events::Hub,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.redactor.url())
            .field("program_key", &self.program_key)
            .field("hashmaps", &self.inner.maps.len())
            .finish()
    }
}

/// What `connect` prepares before it talks to the server.
struct Plan {
    client: redis::Client,
    runtime: Arc<RuntimeHolder>,
    layout: Layout,
    maps: Vec<MapInfo>,
    redactor: Redactor,
    options: RedisOptions,
    program_key: String,
}

impl RedisStore {
    /// Connects to the server at `url` (`redis://[user:password@]host:port/db`,
    /// `rediss://…`, `redis+unix:///path?db=N`) for the program `program_key`, whose
    /// hashmaps are `hashmap_names` in program order (index `i` is `hashmap_names[i]`; an
    /// empty name stands for `#i`). Waits until the connection is up and the scripts are
    /// loaded (at most about twice [`RedisOptions::connection_timeout`] plus
    /// [`RedisOptions::response_timeout`]) with the default [`RedisOptions`].
    pub fn connect(
        url: &str,
        program_key: &str,
        hashmap_names: Vec<String>,
    ) -> Result<RedisStore, HostError> {
        RedisStore::connect_with(url, program_key, hashmap_names, RedisOptions::default())
    }

    /// [`RedisStore::connect`] with settings.
    pub fn connect_with(
        url: &str,
        program_key: &str,
        hashmap_names: Vec<String>,
        options: RedisOptions,
    ) -> Result<RedisStore, HostError> {
        let plan = RedisStore::plan(url, program_key, hashmap_names, options)?;
        let (tx, rx) = mpsc::sync_channel(1);
        RedisStore::spawn_connect(&plan, move |r| {
            let _ = tx.send(r);
        })?;
        let inner = rx.recv().map_err(|_| {
            HostError::failed(format!(
                "redis store at {}: the connection task ended without an answer",
                plan.redactor.url()
            ))
        })??;
        Ok(RedisStore::finish(plan, inner))
    }

    /// [`RedisStore::connect_with`] without blocking the calling thread.
    pub async fn connect_async(
        url: &str,
        program_key: &str,
        hashmap_names: Vec<String>,
        options: RedisOptions,
    ) -> Result<RedisStore, HostError> {
        let plan = RedisStore::plan(url, program_key, hashmap_names, options)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        RedisStore::spawn_connect(&plan, move |r| {
            let _ = tx.send(r);
        })?;
        let inner = rx.await.map_err(|_| {
            HostError::failed(format!(
                "redis store at {}: the connection task ended without an answer",
                plan.redactor.url()
            ))
        })??;
        Ok(RedisStore::finish(plan, inner))
    }

    fn plan(
        url: &str,
        program_key: &str,
        hashmap_names: Vec<String>,
        options: RedisOptions,
    ) -> Result<Plan, HostError> {
        let redactor = Redactor::new(url);
        if program_key.is_empty() {
            return Err(HostError::failed(format!(
                "redis store at {}: the program key is empty; give each program a key (its \
                 keys are prefixed with `concerto:<program key>:`)",
                redactor.url()
            )));
        }
        let client = redis::Client::open(url).map_err(|e| {
            HostError::failed(format!(
                "redis store: invalid URL {}: {}",
                redactor.url(),
                redactor.scrub(&e.to_string())
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("concerto-redis")
            .enable_all()
            .build()
            .map_err(|e| {
                HostError::failed(format!(
                    "redis store at {}: cannot start its runtime: {e}",
                    redactor.url()
                ))
            })?;
        let layout = Layout::new(program_key);
        let maps = hashmap_names
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let (name, label) = if name.is_empty() {
                    (format!("#{index}"), format!("hashmap #{index}"))
                } else {
                    let label = format!("hashmap '{name}'");
                    (name, label)
                };
                let event_prefix = format!(
                    "{{\"map\":{},\"index\":{index},\"key\":",
                    serde_json::Value::String(name.clone())
                );
                MapInfo {
                    keys: layout.hashmap(&name),
                    name,
                    label,
                    event_prefix,
                }
            })
            .collect();
        Ok(Plan {
            client,
            runtime: Arc::new(RuntimeHolder(Some(runtime))),
            layout,
            maps,
            redactor,
            options,
            program_key: program_key.to_string(),
        })
    }

    /// Starts the connection on the store's runtime; `done` gets the connection and the
    /// loaded scripts.
    fn spawn_connect(
        plan: &Plan,
        done: impl FnOnce(Result<(ConnectionManager, Scripts), HostError>) + Send + 'static,
    ) -> Result<(), HostError> {
        let Some(handle) = plan.runtime.handle() else {
            return Err(HostError::failed("redis store: its runtime is gone"));
        };
        let client = plan.client.clone();
        let redactor = plan.redactor.clone();
        let options = plan.options.clone();
        handle.spawn(async move {
            done(establish(client, &redactor, &options).await);
        });
        Ok(())
    }

    fn finish(plan: Plan, (conn, scripts): (ConnectionManager, Scripts)) -> RedisStore {
        let inner = Inner {
            conn,
            layout: plan.layout,
            maps: plan.maps,
            scripts,
            redactor: plan.redactor,
        };
        RedisStore {
            inner: Arc::new(inner),
            runtime: plan.runtime,
            client: plan.client,
            options: plan.options,
            program_key: plan.program_key,
            hub: events::Hub::new(),
        }
    }

    /// The program key the store's keys are prefixed with.
    pub fn program_key(&self) -> &str {
        &self.program_key
    }

    /// The server's URL with its credentials replaced by `***`.
    pub fn url(&self) -> &str {
        self.inner.redactor.url()
    }

    /// Number of hashmaps.
    pub fn hashmap_count(&self) -> usize {
        self.inner.maps.len()
    }

    /// The name of hashmap `map` (`#<index>` when it has none).
    pub fn hashmap_name(&self, map: u32) -> Option<&str> {
        self.inner.maps.get(map as usize).map(|m| m.name.as_str())
    }

    /// The pub/sub channel the store's change events are published on.
    pub fn change_channel(&self) -> &str {
        &self.inner.layout.channel
    }

    /// Calls `listener` for every change of hashmap `map` made by any process of this
    /// program (this one included), as the [crate documentation](crate#change-events)
    /// describes. The first listener of the store subscribes and waits until the
    /// subscription is confirmed: changes made after this returns are delivered (at most
    /// once).
    pub fn on_change(&self, map: u32, listener: ChangeListener) -> Result<(), HostError> {
        self.map_info(map)?;
        self.add_listener(Some(map), listener)
    }

    /// Calls `listener` for every change of any hashmap of this program, as
    /// [`RedisStore::on_change`] describes.
    pub fn on_any_change(&self, listener: ChangeListener) -> Result<(), HostError> {
        self.add_listener(None, listener)
    }

    /// Change messages received that could not be decoded (and were skipped).
    pub fn malformed_events(&self) -> u64 {
        self.hub
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add_listener(&self, filter: Option<u32>, listener: ChangeListener) -> Result<(), HostError> {
        let Some(handle) = self.runtime.handle() else {
            return Err(HostError::failed("redis store: its runtime is gone"));
        };
        self.hub
            .add(filter, listener, handle, || events::SubscriberConfig {
                client: self.client.clone(),
                channel: self.inner.layout.channel.clone(),
                names: self.inner.maps.iter().map(|m| m.name.clone()).collect(),
                connection_timeout: self.options.connection_timeout,
                response_timeout: self.options.response_timeout,
                redactor: self.inner.redactor.clone(),
            })
    }

    fn map_info(&self, map: u32) -> Result<&MapInfo, HostError> {
        self.inner.map(map)
    }

    /// Runs `work` on the store's runtime; the reply completes with its result.
    fn run<T, F, Fut>(&self, work: F) -> Reply<Result<T, HostError>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, HostError>> + Send + 'static,
    {
        let Some(handle) = self.runtime.handle() else {
            return Reply::Ready(Err(HostError::failed("redis store: its runtime is gone")));
        };
        let task = handle.spawn(work(self.inner.clone()));
        // The reply keeps the runtime alive until it completes, even if the store is
        // dropped meanwhile.
        let runtime = self.runtime.clone();
        Reply::Pending(Box::pin(async move {
            let out = task.await;
            drop(runtime);
            out.unwrap_or_else(|e| {
                Err(HostError::failed(format!(
                    "redis store: the operation ended abnormally: {e}"
                )))
            })
        }))
    }
}

/// Connects once (failing fast when the server is unreachable or refuses the
/// credentials), then hands over to a reconnecting [`ConnectionManager`] and loads every
/// script.
async fn establish(
    client: redis::Client,
    redactor: &Redactor,
    options: &RedisOptions,
) -> Result<(ConnectionManager, Scripts), HostError> {
    let fail = |what: &str, e: &RedisError| {
        let kind = if e.is_timeout() {
            HostErrorKind::Timeout
        } else {
            HostErrorKind::Failed
        };
        HostError {
            kind,
            message: format!(
                "redis store at {}: {what}: {}",
                redactor.url(),
                redactor.scrub(&e.to_string())
            ),
            provider: None,
        }
    };
    let timeout = |what: &str, d: Duration| HostError {
        kind: HostErrorKind::Timeout,
        message: format!(
            "redis store at {}: {what}: no answer within {} ms",
            redactor.url(),
            d.as_millis()
        ),
        provider: None,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(options.connection_timeout))
        .set_response_timeout(Some(options.response_timeout));
    let whole = options.connection_timeout + options.response_timeout;
    let probe = tokio::time::timeout(
        whole,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| timeout("cannot connect", whole))?
    .map_err(|e| fail("cannot connect", &e))?;
    drop(probe);
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connection_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(options.reconnect_attempts);
    let mut conn = tokio::time::timeout(
        whole,
        ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| timeout("cannot connect", whole))?
    .map_err(|e| fail("cannot connect", &e))?;
    let scripts = Scripts::new();
    for (name, script) in scripts.all() {
        script
            .load_async(&mut conn)
            .await
            .map_err(|e| fail(&format!("cannot load the {name} script"), &e))?;
    }
    Ok((conn, scripts))
}

/// A key for a message: at most 80 characters.
fn shorten(key: &str) -> String {
    const MAX: usize = 80;
    if key.chars().count() <= MAX {
        return key.to_string();
    }
    let mut s: String = key.chars().take(MAX).collect();
    s.push('…');
    s
}

/// The stored text of a value.
fn encode(value: &Value) -> Result<String, String> {
    let json = encode_value(value).map_err(|e| e.message)?;
    serde_json::to_string(&json).map_err(|e| format!("cannot encode value: {e}"))
}

/// A value from its stored text.
fn decode(bytes: &[u8]) -> Result<Value, String> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    decode_value(&json).map_err(|e| e.message)
}

/// The error for a stored value that cannot be decoded.
fn corrupt(label: &str, what: &str, e: &str) -> HostError {
    HostError::failed(format!(
        "{label}: {what} holds data this store cannot read (written by something else?): {e}"
    ))
}

fn decode_old(label: &str, key: &str, old: Option<Vec<u8>>) -> Result<Option<Value>, HostError> {
    old.map(|bytes| {
        decode(&bytes).map_err(|e| corrupt(label, &format!("key '{}'", shorten(key)), &e))
    })
    .transpose()
}

fn ledger_label(name: &str) -> String {
    format!("ledger '{name}'")
}

/// The `max messages` argument of the memory-append script (empty: no limit).
fn window(max_messages: Option<u64>) -> String {
    // Redis list indices are signed 64-bit; a larger window keeps everything anyway.
    max_messages
        .map(|m| m.min(i64::MAX as u64).to_string())
        .unwrap_or_default()
}

fn memory_label(name: &str) -> String {
    format!("memory '{name}'")
}

impl RedisStore {
    /// `set` and `replace`: one entry, the previous value when `want_old`.
    fn write_one(
        &self,
        map: u32,
        key: Str,
        value: &Value,
        want_old: bool,
    ) -> Reply<Result<Option<Value>, HostError>> {
        let info = match self.map_info(map) {
            Ok(info) => info,
            Err(e) => return Reply::Ready(Err(e)),
        };
        let json = match encode(value) {
            Ok(json) => json,
            Err(e) => {
                return Reply::Ready(Err(HostError::failed(format!(
                    "{}: cannot store key '{}': {e}",
                    info.label,
                    shorten(&key)
                ))));
            }
        };
        self.run(move |inner| async move {
            let info = inner.map(map)?;
            let mut conn = inner.conn.clone();
            let olds: Vec<Option<Vec<u8>>> = inner
                .scripts
                .hashmap_set
                .key(&info.keys.data)
                .key(&info.keys.order)
                .key(&info.keys.seq)
                .arg(&inner.layout.channel)
                .arg(&info.event_prefix)
                .arg(if want_old { "1" } else { "0" })
                .arg(key.as_str())
                .arg(json)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    let what = format!("{}: set of key '{}'", info.label, shorten(&key));
                    inner.fail(&what, &e)
                })?;
            decode_old(&info.label, &key, olds.into_iter().next().flatten())
        })
    }

    /// `delete` and `remove`: the removed value.
    fn remove_one(&self, map: u32, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        if let Err(e) = self.map_info(map) {
            return Reply::Ready(Err(e));
        }
        let key = key.to_string();
        self.run(move |inner| async move {
            let info = inner.map(map)?;
            let mut conn = inner.conn.clone();
            let old: Option<Vec<u8>> = inner
                .scripts
                .hashmap_delete
                .key(&info.keys.data)
                .key(&info.keys.order)
                .arg(&inner.layout.channel)
                .arg(&info.event_prefix)
                .arg(key.as_str())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    let what = format!("{}: delete of key '{}'", info.label, shorten(&key));
                    inner.fail(&what, &e)
                })?;
            decode_old(&info.label, &key, old)
        })
    }

    /// A plain command on one hashmap's data hash.
    fn hashmap_command<T, F>(&self, map: u32, what: String, build: F) -> Reply<Result<T, HostError>>
    where
        T: redis::FromRedisValue + Send + 'static,
        F: FnOnce(&HashMapKeys) -> redis::Cmd + Send + 'static,
    {
        if let Err(e) = self.map_info(map) {
            return Reply::Ready(Err(e));
        }
        self.run(move |inner| async move {
            let info = inner.map(map)?;
            let mut conn = inner.conn.clone();
            build(&info.keys)
                .query_async::<T>(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: {what}", info.label), &e))
        })
    }

    /// Every entry of a ledger, in insertion order.
    async fn ledger_all(inner: &Inner, name: &str) -> Result<Vec<LedgerEntry>, HostError> {
        let label = ledger_label(name);
        let keys = inner.layout.ledger(name);
        let mut conn = inner.conn.clone();
        let flat: Vec<Vec<u8>> = inner
            .scripts
            .ledger_entries
            .key(&keys.value)
            .key(&keys.keys)
            .key(&keys.order)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| inner.fail(&format!("{label}: reading the entries"), &e))?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        let mut parts = flat.into_iter();
        while let (Some(id), Some(entry_keys), Some(value)) =
            (parts.next(), parts.next(), parts.next())
        {
            let identifier =
                String::from_utf8(id).map_err(|_| corrupt(&label, "an identifier", "not UTF-8"))?;
            let what = format!("entry '{}'", shorten(&identifier));
            let keys: Vec<String> = serde_json::from_slice(&entry_keys)
                .map_err(|e| corrupt(&label, &what, &format!("keys: {e}")))?;
            let value = decode(&value).map_err(|e| corrupt(&label, &what, &e))?;
            out.push(LedgerEntry {
                identifier,
                keys,
                value,
            });
        }
        Ok(out)
    }

    /// A ledger update (value or keys) of an existing entry; whether it existed.
    fn ledger_update_field(
        &self,
        name: &str,
        identifier: &str,
        text: String,
        keys_field: bool,
    ) -> Reply<Result<bool, HostError>> {
        let name = name.to_string();
        let identifier = identifier.to_string();
        self.run(move |inner| async move {
            let keys = inner.layout.ledger(&name);
            let target = if keys_field { &keys.keys } else { &keys.value };
            let mut conn = inner.conn.clone();
            let updated: i64 = inner
                .scripts
                .ledger_update
                .key(&keys.value)
                .key(target)
                .arg(identifier.as_str())
                .arg(text)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    let field = if keys_field { "keys" } else { "value" };
                    let what = format!(
                        "{}: update of the {field} of entry '{}'",
                        ledger_label(&name),
                        shorten(&identifier)
                    );
                    inner.fail(&what, &e)
                })?;
            Ok(updated == 1)
        })
    }
}

impl HashmapStore for RedisStore {
    fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> Reply<Result<(), HostError>> {
        match self.write_one(map.0, key, &value, false) {
            Reply::Ready(r) => Reply::Ready(r.map(|_| ())),
            Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(|_| ()) })),
        }
    }

    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let key = key.to_string();
        if let Err(e) = self.map_info(map.0) {
            return Reply::Ready(Err(e));
        }
        self.run(move |inner| async move {
            let info = inner.map(map.0)?;
            let mut conn = inner.conn.clone();
            let raw: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(&info.keys.data)
                .arg(key.as_str())
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    let what = format!("{}: get of key '{}'", info.label, shorten(&key));
                    inner.fail(&what, &e)
                })?;
            decode_old(&info.label, &key, raw)
        })
    }

    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        let what = format!("has of key '{}'", shorten(key));
        let key = key.to_string();
        self.hashmap_command(map.0, what, move |keys| {
            let mut cmd = redis::cmd("HEXISTS");
            cmd.arg(&keys.data).arg(key);
            cmd
        })
    }

    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        match self.remove_one(map.0, key) {
            Reply::Ready(r) => Reply::Ready(r.map(|old| old.is_some())),
            Reply::Pending(fut) => {
                Reply::Pending(Box::pin(async move { fut.await.map(|old| old.is_some()) }))
            }
        }
    }

    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
        if let Err(e) = self.map_info(map.0) {
            return Reply::Ready(Err(e));
        }
        self.run(move |inner| async move {
            let info = inner.map(map.0)?;
            let mut conn = inner.conn.clone();
            let flat: Vec<Vec<u8>> = inner
                .scripts
                .hashmap_entries
                .key(&info.keys.data)
                .key(&info.keys.order)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: reading the entries", info.label), &e))?;
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut parts = flat.into_iter();
            while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
                let key = String::from_utf8(key)
                    .map_err(|_| corrupt(&info.label, "a key", "not UTF-8"))?;
                let value = decode(&value)
                    .map_err(|e| corrupt(&info.label, &format!("key '{}'", shorten(&key)), &e))?;
                out.push((Str::from(key), value));
            }
            Ok(out)
        })
    }

    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>> {
        self.hashmap_command(map.0, "len".to_string(), |keys| {
            let mut cmd = redis::cmd("HLEN");
            cmd.arg(&keys.data);
            cmd
        })
    }

    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>> {
        if let Err(e) = self.map_info(map.0) {
            return Reply::Ready(Err(e));
        }
        self.run(move |inner| async move {
            let info = inner.map(map.0)?;
            let mut conn = inner.conn.clone();
            let _removed: i64 = inner
                .scripts
                .hashmap_clear
                .key(&info.keys.data)
                .key(&info.keys.order)
                .arg(&inner.layout.channel)
                .arg(&info.event_prefix)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: clear", info.label), &e))?;
            Ok(())
        })
    }

    fn hashmap_set_many(
        &self,
        map: MapId,
        entries: Vec<(Str, Value)>,
    ) -> Reply<Result<(), HostError>> {
        let info = match self.map_info(map.0) {
            Ok(info) => info,
            Err(e) => return Reply::Ready(Err(e)),
        };
        if entries.is_empty() {
            return Reply::Ready(Ok(()));
        }
        // Everything is encoded before anything is sent: a value that cannot be stored
        // fails the whole batch and nothing is written.
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, value) in &entries {
            match encode(value) {
                Ok(json) => encoded.push((key.clone(), json)),
                Err(e) => {
                    return Reply::Ready(Err(HostError::failed(format!(
                        "{}: set_many of {} entries: cannot store key '{}': {e}; nothing was \
                         written",
                        info.label,
                        entries.len(),
                        shorten(key)
                    ))));
                }
            }
        }
        drop(entries);
        self.run(move |inner| async move {
            let info = inner.map(map.0)?;
            let count = encoded.len();
            let mut conn = inner.conn.clone();
            let mut call = inner.scripts.hashmap_set.key(&info.keys.data);
            call.key(&info.keys.order)
                .key(&info.keys.seq)
                .arg(&inner.layout.channel)
                .arg(&info.event_prefix)
                .arg("0");
            for (key, json) in &encoded {
                call.arg(key.as_str()).arg(json.as_str());
            }
            let _: redis::Value = call.invoke_async(&mut conn).await.map_err(|e| {
                inner.fail(&format!("{}: set_many of {count} entries", info.label), &e)
            })?;
            Ok(())
        })
    }

    fn hashmap_get_many(
        &self,
        map: MapId,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<Value>>, HostError>> {
        if let Err(e) = self.map_info(map.0) {
            return Reply::Ready(Err(e));
        }
        if keys.is_empty() {
            return Reply::Ready(Ok(Vec::new()));
        }
        self.run(move |inner| async move {
            let info = inner.map(map.0)?;
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&info.keys.data);
            for key in &keys {
                cmd.arg(key.as_str());
            }
            let raw: Vec<Option<Vec<u8>>> = cmd.query_async(&mut conn).await.map_err(|e| {
                inner.fail(
                    &format!("{}: get_many of {} keys", info.label, keys.len()),
                    &e,
                )
            })?;
            if raw.len() != keys.len() {
                return Err(HostError::failed(format!(
                    "{}: get_many of {} keys: the server answered {} values",
                    info.label,
                    keys.len(),
                    raw.len()
                )));
            }
            raw.into_iter()
                .zip(&keys)
                .map(|(value, key)| decode_old(&info.label, key, value))
                .collect()
        })
    }

    fn hashmap_replace(
        &self,
        map: MapId,
        key: Str,
        value: Value,
    ) -> Reply<Result<Option<Value>, HostError>> {
        self.write_one(map.0, key, &value, true)
    }

    fn hashmap_remove(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        self.remove_one(map.0, key)
    }
}

impl LedgerStore for RedisStore {
    fn ledger_insert(&self, name: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>> {
        let label = ledger_label(name);
        let value = match encode(&entry.value) {
            Ok(json) => json,
            Err(e) => {
                return Reply::Ready(Err(HostError::failed(format!(
                    "{label}: cannot store entry '{}': {e}",
                    shorten(&entry.identifier)
                ))));
            }
        };
        let keys_json = match serde_json::to_string(&entry.keys) {
            Ok(json) => json,
            Err(e) => {
                return Reply::Ready(Err(HostError::failed(format!(
                    "{label}: cannot store the keys of entry '{}': {e}",
                    shorten(&entry.identifier)
                ))));
            }
        };
        let name = name.to_string();
        let identifier = entry.identifier;
        self.run(move |inner| async move {
            let keys = inner.layout.ledger(&name);
            let mut conn = inner.conn.clone();
            let _: i64 = inner
                .scripts
                .ledger_insert
                .key(&keys.value)
                .key(&keys.keys)
                .key(&keys.order)
                .key(&keys.seq)
                .arg(identifier.as_str())
                .arg(keys_json)
                .arg(value)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    let what = format!("{label}: insert of entry '{}'", shorten(&identifier));
                    inner.fail(&what, &e)
                })?;
            Ok(())
        })
    }

    fn ledger_update(
        &self,
        name: &str,
        identifier: &str,
        value: Value,
    ) -> Reply<Result<bool, HostError>> {
        match encode(&value) {
            Ok(json) => self.ledger_update_field(name, identifier, json, false),
            Err(e) => Reply::Ready(Err(HostError::failed(format!(
                "{}: cannot store the value of entry '{}': {e}",
                ledger_label(name),
                shorten(identifier)
            )))),
        }
    }

    fn ledger_update_keys(
        &self,
        name: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>> {
        match serde_json::to_string(&keys) {
            Ok(json) => self.ledger_update_field(name, identifier, json, true),
            Err(e) => Reply::Ready(Err(HostError::failed(format!(
                "{}: cannot store the keys of entry '{}': {e}",
                ledger_label(name),
                shorten(identifier)
            )))),
        }
    }

    fn ledger_delete(&self, name: &str, identifier: &str) -> Reply<Result<bool, HostError>> {
        let name = name.to_string();
        let identifier = identifier.to_string();
        self.run(move |inner| async move {
            let keys = inner.layout.ledger(&name);
            let mut conn = inner.conn.clone();
            let removed: i64 = inner
                .scripts
                .ledger_delete
                .key(&keys.value)
                .key(&keys.keys)
                .key(&keys.order)
                .arg(identifier.as_str())
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    let what = format!(
                        "{}: delete of entry '{}'",
                        ledger_label(&name),
                        shorten(&identifier)
                    );
                    inner.fail(&what, &e)
                })?;
            Ok(removed > 0)
        })
    }

    fn ledger_query(
        &self,
        name: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let name = name.to_string();
        self.run(move |inner| async move {
            let entries = RedisStore::ledger_all(&inner, &name).await?;
            Ok(concerto_memory::query::filter(entries, &query))
        })
    }

    fn ledger_entries(&self, name: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let name = name.to_string();
        self.run(move |inner| async move { RedisStore::ledger_all(&inner, &name).await })
    }

    fn ledger_clear(&self, name: &str) -> Reply<Result<(), HostError>> {
        let name = name.to_string();
        self.run(move |inner| async move {
            let keys = inner.layout.ledger(&name);
            let mut conn = inner.conn.clone();
            let _: i64 = redis::cmd("DEL")
                .arg(&keys.value)
                .arg(&keys.keys)
                .arg(&keys.order)
                .arg(&keys.seq)
                .query_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: clear", ledger_label(&name)), &e))?;
            Ok(())
        })
    }
}

impl ConversationStore for RedisStore {
    fn memory_append(
        &self,
        name: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        let json = match serde_json::to_string(&message) {
            Ok(json) => json,
            Err(e) => {
                return Reply::Ready(Err(HostError::failed(format!(
                    "{}: cannot store a message: {e}",
                    memory_label(name)
                ))));
            }
        };
        let max = window(max_messages);
        let name = name.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.memory(&name);
            let mut conn = inner.conn.clone();
            let _: i64 = inner
                .scripts
                .memory_append
                .key(&key)
                .arg(json)
                .arg(max)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: append", memory_label(&name)), &e))?;
            Ok(())
        })
    }

    fn memory_messages(&self, name: &str) -> Reply<Result<Vec<ChatMessage>, HostError>> {
        let name = name.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.memory(&name);
            let mut conn = inner.conn.clone();
            let raw: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    inner.fail(
                        &format!("{}: reading the messages", memory_label(&name)),
                        &e,
                    )
                })?;
            raw.iter()
                .enumerate()
                .map(|(i, bytes)| {
                    serde_json::from_slice::<ChatMessage>(bytes).map_err(|e| {
                        corrupt(
                            &memory_label(&name),
                            &format!("message {i}"),
                            &e.to_string(),
                        )
                    })
                })
                .collect()
        })
    }

    fn memory_clear(&self, name: &str) -> Reply<Result<(), HostError>> {
        let name = name.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.memory(&name);
            let mut conn = inner.conn.clone();
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("{}: clear", memory_label(&name)), &e))?;
            Ok(())
        })
    }
}

impl JournalStore for RedisStore {
    /// All or none: every write is checked (its hashmap exists) and encoded first, then the
    /// writes and the journal's `RPUSH` go to the server as one `MULTI`/`EXEC` transaction.
    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        let ops = match self.prepare_all(writes) {
            Ok(ops) => ops,
            Err(e) => return Reply::Ready(Err(e)),
        };
        self.run(move |inner| async move { batch::commit(&inner, ops, journal).await })
    }

    /// One script: the fence is read and raised together.
    fn journal_fence(&self, run: &str, epoch: u64) -> Reply<Result<(), HostError>> {
        let run = run.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.fence(&run);
            let mut conn = inner.conn.clone();
            let raised: Result<i64, RedisError> = redis::cmd("EVAL")
                .arg(scripts::RAISE_FENCE)
                .arg(1)
                .arg(&key)
                .arg(epoch)
                .query_async(&mut conn)
                .await;
            match raised {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("FENCED") => Err(HostError::fenced(format!(
                    "run '{run}': cannot take the run at lease epoch {epoch}: its fence {} \
                     (another worker holds the run)",
                    batch::fence_stands(&e.to_string())
                ))),
                Err(e) => Err(inner.fail(&format!("run '{run}': raising its fence"), &e)),
            }
        })
    }

    /// One RPUSH: the record is stored (and visible to every process) before the reply.
    fn journal_append(&self, run: &str, record: String) -> Reply<Result<(), HostError>> {
        let run = run.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.journal(&run);
            let mut conn = inner.conn.clone();
            let _: i64 = redis::cmd("RPUSH")
                .arg(&key)
                .arg(record)
                .query_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("run '{run}': journal append"), &e))?;
            Ok(())
        })
    }

    fn journal_records(&self, run: &str) -> Reply<Result<Vec<String>, HostError>> {
        let run = run.to_string();
        self.run(move |inner| async move {
            let key = inner.layout.journal(&run);
            let mut conn = inner.conn.clone();
            let records: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .map_err(|e| inner.fail(&format!("run '{run}': reading the journal"), &e))?;
            Ok(records)
        })
    }
}
