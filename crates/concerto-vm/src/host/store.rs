//! The memory layer: [`MemoryStore`], made of [`HashmapStore`], [`LedgerStore`],
//! [`ConversationStore`] and [`JournalStore`], and the ledger types.

use super::{ChatMessage, HostError, MapId, Reply};
use crate::value::{Str, Value};

/// One ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    /// Identifier text.
    pub identifier: String,
    /// Keys.
    pub keys: Vec<String>,
    /// Stored value.
    pub value: Value,
}

/// A ledger query.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerQuery {
    /// Word-containment search on identifiers.
    Identifier(String),
    /// Entries having the key (case-insensitive).
    Key(String),
    /// Entries having any of the keys.
    AnyKeys(Vec<String>),
    /// Entries having all of the keys.
    ExactKeys(Vec<String>),
}

/// Hashmaps, addressed by their index in the program. Keys are the display strings of the
/// program's keys.
pub trait HashmapStore: Send + Sync {
    /// `map.set(k, v)`
    fn hashmap_set(&self, map: MapId, key: Str, value: Value) -> Reply<Result<(), HostError>>;
    /// `map.get(k)`
    fn hashmap_get(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>>;
    /// `map.has(k)`
    fn hashmap_has(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>>;
    /// `map.delete(k)`, whether the key was present.
    fn hashmap_delete(&self, map: MapId, key: &str) -> Reply<Result<bool, HostError>>;
    /// Every entry, in insertion order.
    fn hashmap_entries(&self, map: MapId) -> Reply<Result<Vec<(Str, Value)>, HostError>>;
    /// A number that changes whenever hashmap `map` changes, answered at once; `None` when
    /// the store cannot tell (the default). With it, the VM keeps the entries it read for
    /// `map[i]` (how `for (k, v) in map` walks a hashmap) until the hashmap changes,
    /// instead of reading them all again for every index.
    fn hashmap_version(&self, map: MapId) -> Option<u64> {
        let _ = map;
        None
    }
    /// Number of entries.
    fn hashmap_len(&self, map: MapId) -> Reply<Result<usize, HostError>>;
    /// Removes every entry.
    fn hashmap_clear(&self, map: MapId) -> Reply<Result<(), HostError>>;

    /// by one and is **not** atomic; stores shared between executions should override it.
    fn hashmap_set_many(
        &self,
        map: MapId,
        entries: Vec<(Str, Value)>,
    ) -> Reply<Result<(), HostError>> {
        let mut pending = Vec::new();
        for (key, value) in entries {
            match self.hashmap_set(map, key, value) {
                Reply::Ready(Ok(())) => {}
                Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
                Reply::Pending(fut) => pending.push(fut),
            }
        }
        if pending.is_empty() {
            return Reply::Ready(Ok(()));
        }
        Reply::Pending(Box::pin(async move {
            for fut in pending {
                fut.await?;
            }
            Ok(())
        }))
    }

    /// `map.get_many([..])`: the value of each key, read together. The default reads them
    /// one by one (not a consistent snapshot); shared stores should override it.
    fn hashmap_get_many(
        &self,
        map: MapId,
        keys: Vec<Str>,
    ) -> Reply<Result<Vec<Option<Value>>, HostError>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.hashmap_get(map, key.as_str()) {
                Reply::Ready(Ok(v)) => out.push(v),
                Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
                Reply::Pending(_) => {
                    return Reply::Ready(Err(HostError::unsupported(
                        "get_many on a store that answers later without its own get_many",
                    )));
                }
            }
        }
        Reply::Ready(Ok(out))
    }

    /// `map.set(k, v)` returning the previous value (for change callbacks). The default
    /// reads, then writes (not atomic); shared stores should override it.
    fn hashmap_replace(
        &self,
        map: MapId,
        key: Str,
        value: Value,
    ) -> Reply<Result<Option<Value>, HostError>> {
        let old = match self.hashmap_get(map, key.as_str()) {
            Reply::Ready(Ok(v)) => v,
            Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
            Reply::Pending(_) => {
                return Reply::Ready(Err(HostError::unsupported(
                    "change callbacks on a store that answers later without its own replace",
                )));
            }
        };
        match self.hashmap_set(map, key, value) {
            Reply::Ready(r) => Reply::Ready(r.map(|()| old)),
            Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(|()| old) })),
        }
    }

    /// `map.delete(k)` returning the removed value (for change callbacks). The default reads,
    /// then deletes (not atomic); shared stores should override it.
    fn hashmap_remove(&self, map: MapId, key: &str) -> Reply<Result<Option<Value>, HostError>> {
        let old = match self.hashmap_get(map, key) {
            Reply::Ready(Ok(v)) => v,
            Reply::Ready(Err(e)) => return Reply::Ready(Err(e)),
            Reply::Pending(_) => {
                return Reply::Ready(Err(HostError::unsupported(
                    "change callbacks on a store that answers later without its own remove",
                )));
            }
        };
        match self.hashmap_delete(map, key) {
            Reply::Ready(r) => Reply::Ready(r.map(|_| old)),
            Reply::Pending(fut) => Reply::Pending(Box::pin(async move { fut.await.map(|_| old) })),
        }
    }
}

/// Ledgers, addressed by their name in the program.
pub trait LedgerStore: Send + Sync {
    /// Upserts an entry by identifier.
    fn ledger_insert(&self, ledger: &str, entry: LedgerEntry) -> Reply<Result<(), HostError>>;
    /// Replaces the value of an entry; whether it existed.
    fn ledger_update(
        &self,
        ledger: &str,
        identifier: &str,
        value: Value,
    ) -> Reply<Result<bool, HostError>>;
    /// Replaces the keys of an entry; whether it existed.
    fn ledger_update_keys(
        &self,
        ledger: &str,
        identifier: &str,
        keys: Vec<String>,
    ) -> Reply<Result<bool, HostError>>;
    /// Removes an entry; whether it existed.
    fn ledger_delete(&self, ledger: &str, identifier: &str) -> Reply<Result<bool, HostError>>;
    /// Entries matching a query, in insertion order.
    fn ledger_query(
        &self,
        ledger: &str,
        query: LedgerQuery,
    ) -> Reply<Result<Vec<LedgerEntry>, HostError>>;
    /// Every entry, in insertion order.
    fn ledger_entries(&self, ledger: &str) -> Reply<Result<Vec<LedgerEntry>, HostError>>;
    /// Removes every entry.
    fn ledger_clear(&self, ledger: &str) -> Reply<Result<(), HostError>>;
}

/// Conversation memories, addressed by their name in the program.
pub trait ConversationStore: Send + Sync {
    /// Appends a message; the store keeps at most `max_messages` (newest).
    fn memory_append(
        &self,
        memory: &str,
        max_messages: Option<u64>,
        message: ChatMessage,
    ) -> Reply<Result<(), HostError>>;
    /// Every stored message, oldest first.
    fn memory_messages(&self, memory: &str) -> Reply<Result<Vec<ChatMessage>, HostError>>;
    /// Removes every message.
    fn memory_clear(&self, memory: &str) -> Reply<Result<(), HostError>>;
}

/// One write of a batch given to [`JournalStore::apply`]; each variant has the arguments of
/// the store method of the same name.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// [`HashmapStore::hashmap_set`]
    HashmapSet {
        /// The hashmap's index in the program.
        map: MapId,
        /// The key.
        key: Str,
        /// The value.
        value: Value,
    },
    /// [`HashmapStore::hashmap_delete`]
    HashmapDelete {
        /// The hashmap's index in the program.
        map: MapId,
        /// The key.
        key: Str,
    },
    /// [`HashmapStore::hashmap_clear`]
    HashmapClear {
        /// The hashmap's index in the program.
        map: MapId,
    },
    /// [`LedgerStore::ledger_insert`]
    LedgerInsert {
        /// The ledger's name.
        ledger: String,
        /// The entry.
        entry: LedgerEntry,
    },
    /// [`LedgerStore::ledger_update`]
    LedgerUpdate {
        /// The ledger's name.
        ledger: String,
        /// The entry's identifier.
        identifier: String,
        /// The new value.
        value: Value,
    },
    /// [`LedgerStore::ledger_update_keys`]
    LedgerUpdateKeys {
        /// The ledger's name.
        ledger: String,
        /// The entry's identifier.
        identifier: String,
        /// The new keys.
        keys: Vec<String>,
    },
    /// [`LedgerStore::ledger_delete`]
    LedgerDelete {
        /// The ledger's name.
        ledger: String,
        /// The entry's identifier.
        identifier: String,
    },
    /// [`LedgerStore::ledger_clear`]
    LedgerClear {
        /// The ledger's name.
        ledger: String,
    },
    /// [`ConversationStore::memory_append`]
    MemoryAppend {
        /// The memory's name.
        memory: String,
        /// How many messages the memory keeps at most (newest).
        max_messages: Option<u64>,
        /// The message.
        message: ChatMessage,
    },
    /// [`ConversationStore::memory_clear`]
    MemoryClear {
        /// The memory's name.
        memory: String,
    },
}

/// A record for a run's journal, committed with a batch by [`JournalStore::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// The run's id.
    pub run: String,
    /// The record (what [`JournalStore::journal_append`] takes).
    pub record: String,
    /// The lease epoch (fencing token) of the process writing it, when the run is leased
    /// (a queue worker's run): the batch commits only while the run's fence, raised with
    /// [`JournalStore::journal_fence`], is still at this epoch; a newer one refuses it with
    /// [`HostErrorKind::Fenced`](super::HostErrorKind::Fenced) and nothing is written.
    pub epoch: Option<u64>,
}

/// Run journals (resumable runs), addressed by the run's id, and write batches committed
/// with a journal record ([`JournalStore::apply`]): the journal is what such a batch must
/// agree with, and the stores that keep journals are the ones that can commit atomically.
pub trait JournalStore: Send + Sync {
    /// Appends `record` to the journal of run `run` (resumable runs). Only durable stores
    /// keep journals; the default refuses.
    fn journal_append(&self, run: &str, record: String) -> Reply<Result<(), HostError>> {
        let _ = (run, record);
        Reply::Ready(Err(HostError::unsupported(
            "run journals (resumable runs) need a durable state store (--state FILE.db or redis://…)",
        )))
    }

    /// The records of run `run`'s journal, oldest first (empty for an unknown run).
    fn journal_records(&self, run: &str) -> Reply<Result<Vec<String>, HostError>> {
        let _ = run;
        Reply::Ready(Err(HostError::unsupported(
            "run journals (resumable runs) need a durable state store (--state FILE.db or redis://…)",
        )))
    }

    /// Raises run `run`'s fence to `epoch`: from now on a batch whose record carries an
    /// older epoch is refused ([`JournalStore::apply`]). Refused with
    /// [`HostErrorKind::Fenced`](super::HostErrorKind::Fenced) when the fence already stands
    /// at a newer epoch (another process took the run over since). A leased run raises its
    /// fence before it reads its journal, so once the new holder has read it the old one can
    /// no longer add to it. The default refuses, as for journals.
    fn journal_fence(&self, run: &str, epoch: u64) -> Reply<Result<(), HostError>> {
        let _ = (run, epoch);
        Reply::Ready(Err(HostError::unsupported(
            "fenced runs (queue workers) need a durable state store (--state FILE.db or redis://…)",
        )))
    }

    /// Commits `writes`, in order, and appends `journal` (when given) to its run's journal,
    /// all together or not at all: when this fails, none of the writes and no record were
    /// made. Resumable runs need this to commit a write with the journal record that says it
    /// was made (the runtime's run journal commits every store write of a journaled run so).
    ///
    /// A record with an [`epoch`](JournalRecord::epoch) commits only while the run's fence
    /// stands at that epoch (else [`HostErrorKind::Fenced`](super::HostErrorKind::Fenced),
    /// nothing written).
    ///
    /// The default refuses without writing anything, as writing one by one would not be
    /// atomic.
    fn apply(
        &self,
        writes: Vec<Write>,
        journal: Option<JournalRecord>,
    ) -> Reply<Result<(), HostError>> {
        let _ = (writes, journal);
        Reply::Ready(Err(HostError::unsupported(
            "atomic write batches (JournalStore::apply) in this state store",
        )))
    }
}

/// The memory layer: hashmaps ([`HashmapStore`]), ledgers ([`LedgerStore`]), conversation
/// memories ([`ConversationStore`]) and run journals ([`JournalStore`]). It has no methods of
/// its own; every type that implements the four implements it.
pub trait MemoryStore: HashmapStore + LedgerStore + ConversationStore + JournalStore {}

impl<T> MemoryStore for T where T: HashmapStore + LedgerStore + ConversationStore + JournalStore {}
