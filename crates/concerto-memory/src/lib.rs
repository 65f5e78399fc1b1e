//! In-memory implementation of the VM's [`MemoryStore`]: hashmaps, ledgers and conversation
//! memories, thread-safe with `parking_lot` locks.
//!
//! ```
//! use concerto_memory::InMemoryStore;
//! use concerto_vm::host::{MemoryStore, Reply};
//! use concerto_vm::{Str, Value};
//! let store = InMemoryStore::new(1);
//! let _ = store.hashmap_set(0, Str::from("k"), Value::Int(1));
//! match store.hashmap_get(0, "k") {
//!     Reply::Ready(Ok(Some(v))) => assert_eq!(v, Value::Int(1)),
//!     _ => unreachable!(),
//! }
//! ```
//!
//! # Source layout
//! - `lib.rs`: [`InMemoryStore`] and the hashmap part.
//! - `ledger`: ledger entries and their queries.
#![warn(missing_docs)]

mod ledger;

use std::collections::VecDeque;

use concerto_vm::host::{ChatMessage, HostError, LedgerEntry, LedgerQuery, MemoryStore, Reply};
use concerto_vm::{Str, Value};
use hashlink::LinkedHashMap;
use parking_lot::Mutex;
use rustc_hash::{FxBuildHasher, FxHashMap};

/// A hashmap's entries, in insertion order (a deleted and re-inserted key moves to the end).
type Entries = LinkedHashMap<Str, Value, FxBuildHasher>;

/// Hashmaps (one per declared hashmap, by index), ledgers and memories (by name, created on
/// first use), all in process memory.
pub struct InMemoryStore {
    hashmaps: Vec<Mutex<Entries>>,
    ledgers: Mutex<FxHashMap<String, ledger::Ledger>>,
    memories: Mutex<FxHashMap<String, VecDeque<ChatMessage>>>,
}

impl InMemoryStore {
    /// A store for a program that declares `hashmaps` hashmaps.
    pub fn new(hashmaps: usize) -> InMemoryStore {
        InMemoryStore {
            hashmaps: (0..hashmaps)
                .map(|_| Mutex::new(Entries::default()))
                .collect(),
            ledgers: Mutex::new(FxHashMap::default()),
            memories: Mutex::new(FxHashMap::default()),
        }
    }

    #[inline]
    fn map(&self, map: u32) -> Result<&Mutex<Entries>, HostError> {
        self.hashmaps.get(map as usize).ok_or_else(|| {
            HostError::failed(format!("hashmap #{map} does not exist in this store"))
        })
    }
}

fn ready<T>(r: Result<T, HostError>) -> Reply<Result<T, HostError>> {
    Reply::Ready(r)
}

impl MemoryStore for InMemoryStore {
    #[inline]
    fn hashmap_set(&self, map: u32, key: Str, value: Value) -> Reply<Result<(), HostError>> {
        ready(self.map(map).map(|m| {
            let mut entries = m.lock();
            // Updating an existing key keeps its position (replace, not re-insert).
            match entries.get_mut(key.as_str()) {
                Some(slot) => *slot = value,
                None => {
                    entries.insert(key, value);
                }
            }
        }))
    }

    #[inline]
    fn hashmap_get(&self, map: u32, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        ready(self.map(map).map(|m| m.lock().get(key).cloned()))
    }

    #[inline]
    fn hashmap_has(&self, map: u32, key: &str) -> Reply<Result<bool, HostError>> {
        ready(self.map(map).map(|m| m.lock().contains_key(key)))
    }

    fn hashmap_delete(&self, map: u32, key: &str) -> Reply<Result<bool, HostError>> {
        ready(self.map(map).map(|m| m.lock().remove(key).is_some()))
    }

    fn hashmap_entries(&self, map: u32) -> Reply<Result<Vec<(Str, Value)>, HostError>> {
        ready(self.map(map).map(|m| {
            m.lock()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn hashmap_len(&self, map: u32) -> Reply<Result<usize, HostError>> {
        ready(self.map(map).map(|m| m.lock().len()))
    }

    fn hashmap_clear(&self, map: u32) -> Reply<Result<(), HostError>> {
        ready(self.map(map).map(|m| m.lock().clear()))
    }

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

    fn memory_append(
        &self,
        name: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>> {
        let mut memories = self.memories.lock();
        let messages = memories.entry(name.to_string()).or_default();
        messages.push_back(message);
        if let Some(max) = max_messages {
            while messages.len() as u64 > max {
                messages.pop_front();
            }
        }
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
