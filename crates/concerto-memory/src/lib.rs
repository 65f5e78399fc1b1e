//! In-memory implementation of the VM's [`MemoryStore`](concerto_vm::host::MemoryStore): hashmaps, ledgers and conversation
//! memories, thread-safe with `parking_lot` locks.
//!
//! ```
//! use concerto_memory::InMemoryStore;
//! use concerto_vm::host::{HashmapStore, MapId, Reply};
//! use concerto_vm::{Str, Value};
//! let store = InMemoryStore::with_names(["store"]).with_max_bytes(Some(1 << 20));
//! let _ = store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1));
//! match store.hashmap_get(MapId(0), "k") {
//!     Reply::Ready(Ok(Some(v))) => assert_eq!(v, Value::Int(1)),
//!     _ => unreachable!(),
//! }
//! assert_eq!(store.bytes_used(), 1 + 16); // key bytes + one scalar
//! ```
//!
//! # Hashmaps
//!
//! - **Atomicity.** Every operation takes the hashmap's lock once: `set_many` writes all of
//!   its entries or none, `get_many` reads a consistent snapshot, `replace` and `remove`
//!   return the value they replaced or removed.
//! - **Names.** [`InMemoryStore::with_names`] gives the hashmaps their program names, so
//!   messages say `hashmap 'store'` (`hashmap #0` without names).
//! - **Memory limit.** [`InMemoryStore::with_max_bytes`] bounds the estimated bytes held by
//!   all hashmaps of the store together (the formula is in [`size`]); a write that would
//!   exceed it fails with [`concerto_vm::host::HostErrorKind::Limit`] and changes nothing.
//!   Each entry's size is measured when it is written and subtracted exactly when it is
//!   overwritten, deleted or cleared, so the total never drifts. (A value changed in place
//!   through another reference after it was stored is re-measured only when its key is
//!   written again.)
//! - **Change events.** [`InMemoryStore::on_change`] and [`InMemoryStore::on_any_change`]
//!   register host listeners that see every change as a [`HashMapChange`].
//! - **Persistence.** [`InMemoryStore::persist`] binds a hashmap to a JSON file (encoding in
//!   [`codec`]) and loads it; [`InMemoryStore::save`] and [`InMemoryStore::save_all`]
//!   replace the file atomically (temporary file in the same directory, `sync_all`, rename,
//!   directory fsync), so a crash at any moment leaves the old file or the new one. With
//!   [`PersistMode::OnChange`] every change is saved before the write returns. Nothing is
//!   saved implicitly on drop: a host that wants the final state on disk calls
//!   [`InMemoryStore::save_all`].
//!
//! # Source layout
//! - `lib.rs`: [`InMemoryStore`], its construction and its implementations of the store traits
//!   that make up [`MemoryStore`](concerto_vm::host::MemoryStore).
//! - `hashmap`: hashmap entries, the memory limit, change events and persistence.
//! - [`size`]: the size estimate. [`codec`]: the file encoding. `persist`: file I/O.
//! - `events`: [`HashMapChange`] and listener dispatch.
//! - `ledger`: ledger entries and their queries.
#![warn(missing_docs)]

pub mod codec;
mod events;
mod hashmap;
mod ledger;
mod persist;
pub mod query;
pub mod size;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use concerto_vm::host::{
    ChatMessage, ConversationStore, HashmapStore, HostError, JournalRecord, JournalStore,
    LedgerEntry, LedgerQuery, LedgerStore, MapId, Reply, Write,
};
use concerto_vm::{Str, Value};
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;

use hashmap::MapWrite;

pub use codec::{decode_value, encode_value};
pub use events::{ChangeListener, HashMapChange};
pub use hashmap::PersistMode;
pub use persist::temp_files;
pub use size::{entry_size, value_size};

/// `max_bytes` when there is no limit.
const NO_LIMIT: usize = usize::MAX;

/// Hashmaps (one per declared hashmap, by index), ledgers and memories (by name, created on
/// first use), all in process memory; hashmaps can be bound to files.
pub struct InMemoryStore {
    hashmaps: Vec<hashmap::Slot>,
    /// The memory limit of all hashmaps together (`NO_LIMIT`: none); it may change while the
    /// store is in use ([`InMemoryStore::set_max_bytes`]).
    max_bytes: AtomicUsize,
    /// Σ bytes of all hashmaps.
    used: AtomicUsize,
    listeners: RwLock<events::Listeners>,
    has_listeners: AtomicBool,
    ledgers: Mutex<FxHashMap<String, ledger::Ledger>>,
    memories: Mutex<FxHashMap<String, VecDeque<ChatMessage>>>,
}

impl InMemoryStore {
    /// A store for a program that declares `hashmaps` hashmaps (named `#0`, `#1`, … in
    /// messages).
    pub fn new(hashmaps: usize) -> InMemoryStore {
        InMemoryStore::build((0..hashmaps).map(|_| None).collect())
    }

    /// A store with one hashmap per name, in program order (index `i` is `names[i]`);
    /// messages and change events use the names.
    pub fn with_names<I, S>(names: I) -> InMemoryStore
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        InMemoryStore::build(names.into_iter().map(|n| Some(n.into())).collect())
    }

    fn build(names: Vec<Option<String>>) -> InMemoryStore {
        InMemoryStore {
            hashmaps: names
                .into_iter()
                .enumerate()
                .map(|(idx, name)| hashmap::Slot::new(idx as u32, name))
                .collect(),
            max_bytes: AtomicUsize::new(NO_LIMIT),
            used: AtomicUsize::new(0),
            listeners: RwLock::new(Vec::new()),
            has_listeners: AtomicBool::new(false),
            ledgers: Mutex::new(FxHashMap::default()),
            memories: Mutex::new(FxHashMap::default()),
        }
    }

    /// Limits the estimated bytes all hashmaps of the store hold together (`None`: no
    /// limit). See [`size`] for the estimate.
    pub fn with_max_bytes(self, max_bytes: Option<usize>) -> InMemoryStore {
        self.set_max_bytes(max_bytes);
        self
    }

    /// Changes the limit of a store in use; writes after it are checked against the new
    /// limit (what is held already stays, even above it).
    pub fn set_max_bytes(&self, max_bytes: Option<usize>) {
        // The running total is kept only under a limit: start it from what is held now.
        self.used.store(self.held_bytes(), Ordering::Release);
        self.max_bytes
            .store(max_bytes.unwrap_or(NO_LIMIT), Ordering::Release);
    }

    /// The memory limit.
    pub fn max_bytes(&self) -> Option<usize> {
        match self.max_bytes.load(Ordering::Acquire) {
            NO_LIMIT => None,
            max => Some(max),
        }
    }

    /// The estimated bytes all hashmaps hold now.
    pub fn bytes_used(&self) -> usize {
        match self.max_bytes() {
            Some(_) => self.used.load(Ordering::Acquire),
            None => self.held_bytes(),
        }
    }

    /// Number of hashmaps.
    pub fn hashmap_count(&self) -> usize {
        self.hashmaps.len()
    }

    /// The name of hashmap `map` (`#<index>` when the store has no names).
    pub fn hashmap_name(&self, map: u32) -> Option<&str> {
        self.hashmaps.get(map as usize).map(hashmap::Slot::name)
    }
}

fn ready<T>(r: Result<T, HostError>) -> Reply<Result<T, HostError>> {
    Reply::Ready(r)
}

impl HashmapStore for InMemoryStore {
    #[inline]
    fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> Reply<Result<(), HostError>> {
        ready(self.write_one(map.0, key, value).map(|_| ()))
    }

    #[inline]
    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        ready(self.read_one(map.0, key))
    }

    #[inline]
    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        ready(self.contains(map.0, key))
    }

    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>> {
        ready(self.remove_one(map.0, key).map(|old| old.is_some()))
    }

    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
        ready(self.snapshot(map.0))
    }

    fn hashmap_version(&self, map: MapId) -> Option<u64> {
        self.version(map.0)
    }

    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>> {
        ready(self.count(map.0))
    }

    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>> {
        ready(self.clear_all(map.0))
    }

    fn hashmap_set_many(
        &self,
        map: MapId,
        entries: Vec<(Str, Value)>,
    ) -> Reply<Result<(), HostError>> {
        ready(self.write_many(map.0, entries))
    }

    fn hashmap_get_many(
        &self,
        map: MapId,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<Value>>, HostError>> {
        ready(self.read_many(map.0, &keys))
    }

    fn hashmap_replace(
        &self,
        map: MapId,
        key: Str,
        value: Value,
    ) -> Reply<Result<Option<Value>, HostError>> {
        ready(self.write_one(map.0, key, value))
    }

    fn hashmap_remove(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        ready(self.remove_one(map.0, key))
    }
}

impl LedgerStore for InMemoryStore {
    fn ledger_insert(&self, name: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>> {
        self.ledgers
            .lock()
            .entry(name.to_string())
            .or_default()
            .insert(entry);
        ready(Ok(()))
    }

    fn ledger_update(
        &self,
        name: &str,
        identifier: &str,
        value: Value,
    ) -> Reply<Result<bool, HostError>> {
        let mut ledgers = self.ledgers.lock();
        ready(Ok(ledgers
            .get_mut(name)
            .is_some_and(|l| l.update(identifier, value))))
    }

    fn ledger_update_keys(
        &self,
        name: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>> {
        let mut ledgers = self.ledgers.lock();
        ready(Ok(ledgers
            .get_mut(name)
            .is_some_and(|l| l.update_keys(identifier, keys))))
    }

    fn ledger_delete(&self, name: &str, identifier: &str) -> Reply<Result<bool, HostError>> {
        let mut ledgers = self.ledgers.lock();
        ready(Ok(ledgers
            .get_mut(name)
            .is_some_and(|l| l.delete(identifier))))
    }

    fn ledger_query(
        &self,
        name: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let ledgers = self.ledgers.lock();
        ready(Ok(ledgers
            .get(name)
            .map(|l| l.query(&query))
            .unwrap_or_default()))
    }

    fn ledger_entries(&self, name: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>> {
        let ledgers = self.ledgers.lock();
        ready(Ok(ledgers
            .get(name)
            .map(|l| l.entries().to_vec())
            .unwrap_or_default()))
    }

    fn ledger_clear(&self, name: &str) -> Reply<Result<(), HostError>> {
        if let Some(l) = self.ledgers.lock().get_mut(name) {
            l.clear();
        }
        ready(Ok(()))
    }
}

impl ConversationStore for InMemoryStore {
    fn memory_append(
        &self,
        name: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        let mut memories = self.memories.lock();
        push_message(
            memories.entry(name.to_string()).or_default(),
            max_messages,
            message,
        );
        ready(Ok(()))
    }

    fn memory_messages(&self, name: &str) -> Reply<Result<Vec<ChatMessage>, HostError>> {
        let memories = self.memories.lock();
        ready(Ok(memories
            .get(name)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()))
    }

    fn memory_clear(&self, name: &str) -> Reply<Result<(), HostError>> {
        self.memories.lock().remove(name);
        ready(Ok(()))
    }
}

/// Appends `message`, keeping at most `max_messages` (newest).
fn push_message(
    messages: &mut VecDeque<ChatMessage>,
    max_messages: Option<u64>,
    message: ChatMessage,
) {
    messages.push_back(message);
    if let Some(max) = max_messages {
        while messages.len() as u64 > max {
            messages.pop_front();
        }
    }
}

/// Keeps no journals (`journal_append` and `journal_records` refuse, as by default).
impl JournalStore for InMemoryStore {
    /// All or none, under the locks of every hashmap the batch writes (and of the ledgers
    /// and memories): the batch is checked whole (every hashmap exists, the memory limit
    /// holds after the last write) before anything is written. A batch with a journal record
    /// is refused and nothing is written, as this store keeps no journals.
    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        ready(self.apply_batch(writes, journal))
    }
}

impl InMemoryStore {
    fn apply_batch(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Result<(), HostError> {
        if let Some(record) = journal {
            return Err(HostError::unsupported(format!(
                "a write batch with a record for the journal of run '{}': run journals \
                 (resumable runs) need a durable state store (--state FILE.db or redis://…); \
                 nothing was written",
                record.run
            )));
        }
        let mut maps = Vec::new();
        let mut others = Vec::new();
        for write in writes {
            match write {
                Write::HashmapSet { map, key, value } => {
                    maps.push((map.0, MapWrite::Set(key, value)))
                }
                Write::HashmapDelete { map, key } => maps.push((map.0, MapWrite::Delete(key))),
                Write::HashmapClear { map } => maps.push((map.0, MapWrite::Clear)),
                other => others.push(other),
            }
        }
        self.write_batch(maps, || {
            let mut ledgers = self.ledgers.lock();
            let mut memories = self.memories.lock();
            for write in others {
                match write {
                    Write::LedgerInsert { ledger, entry } => {
                        ledgers.entry(ledger).or_default().insert(entry);
                    }
                    Write::LedgerUpdate {
                        ledger,
                        identifier,
                        value,
                    } => {
                        if let Some(l) = ledgers.get_mut(&ledger) {
                            l.update(&identifier, value);
                        }
                    }
                    Write::LedgerUpdateKeys {
                        ledger,
                        identifier,
                        keys,
                    } => {
                        if let Some(l) = ledgers.get_mut(&ledger) {
                            l.update_keys(&identifier, keys);
                        }
                    }
                    Write::LedgerDelete { ledger, identifier } => {
                        if let Some(l) = ledgers.get_mut(&ledger) {
                            l.delete(&identifier);
                        }
                    }
                    Write::LedgerClear { ledger } => {
                        if let Some(l) = ledgers.get_mut(&ledger) {
                            l.clear();
                        }
                    }
                    Write::MemoryAppend {
                        memory,
                        max_messages,
                        message,
                    } => {
                        push_message(memories.entry(memory).or_default(), max_messages, message);
                    }
                    Write::MemoryClear { memory } => {
                        memories.remove(&memory);
                    }
                    // Hashmap writes went to `write_batch`.
                    _ => {}
                }
            }
        })
    }
}
