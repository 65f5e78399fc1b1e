//! [`JournalStore::apply`](concerto_vm::host::JournalStore::apply) for [`SqliteStore`]:
//! every write is checked and encoded first, then the writes and the journal record run as
//! one job of the SQLite thread, inside one transaction (its own savepoint), so a write that
//! fails rolls all of them back.

use std::sync::Arc;

use concerto_vm::host::{HostError, JournalRecord, Write};

use crate::worker::Db;
use crate::{SqliteStore, encode, key_what, ledger_what, ops};

/// One write, encoded, ready to run on the SQLite thread.
pub(crate) enum Op {
    HashmapPut {
        name: Arc<str>,
        label: Arc<str>,
        key: String,
        text: String,
    },
    HashmapDelete {
        name: Arc<str>,
        label: Arc<str>,
        key: String,
    },
    HashmapClear {
        name: Arc<str>,
        label: Arc<str>,
    },
    LedgerPut {
        ledger: String,
        identifier: String,
        keys: String,
        value: String,
    },
    LedgerValue {
        ledger: String,
        identifier: String,
        text: String,
    },
    LedgerKeys {
        ledger: String,
        identifier: String,
        text: String,
    },
    LedgerDelete {
        ledger: String,
        identifier: String,
    },
    LedgerClear {
        ledger: String,
    },
    MemoryPush {
        memory: String,
        text: String,
        keep: Option<u64>,
    },
    MemoryClear {
        memory: String,
    },
}

fn keys_text(keys: &[String], what: impl Fn() -> String) -> Result<String, HostError> {
    serde_json::to_string(keys)
        .map_err(|e| HostError::failed(format!("{}: cannot encode the keys: {e}", what())))
}

impl SqliteStore {
    /// `write`, checked (its hashmap exists) and encoded.
    fn prepare(&self, write: Write) -> Result<Op, HostError> {
        Ok(match write {
            Write::HashmapSet { map, key, value } => {
                let h = self.hashmap(map)?;
                let text = encode(&value, || key_what(&h.label, &key))?;
                Op::HashmapPut {
                    name: h.name.clone(),
                    label: h.label.clone(),
                    key: key.to_string(),
                    text,
                }
            }
            Write::HashmapDelete { map, key } => {
                let h = self.hashmap(map)?;
                Op::HashmapDelete {
                    name: h.name.clone(),
                    label: h.label.clone(),
                    key: key.to_string(),
                }
            }
            Write::HashmapClear { map } => {
                let h = self.hashmap(map)?;
                Op::HashmapClear {
                    name: h.name.clone(),
                    label: h.label.clone(),
                }
            }
            Write::LedgerInsert { ledger, entry } => {
                let what = || ledger_what(&ledger, &entry.identifier);
                Op::LedgerPut {
                    value: encode(&entry.value, what)?,
                    keys: keys_text(&entry.keys, what)?,
                    ledger,
                    identifier: entry.identifier,
                }
            }
            Write::LedgerUpdate {
                ledger,
                identifier,
                value,
            } => Op::LedgerValue {
                text: encode(&value, || ledger_what(&ledger, &identifier))?,
                ledger,
                identifier,
            },
            Write::LedgerUpdateKeys {
                ledger,
                identifier,
                keys,
            } => Op::LedgerKeys {
                text: keys_text(&keys, || ledger_what(&ledger, &identifier))?,
                ledger,
                identifier,
            },
            Write::LedgerDelete { ledger, identifier } => Op::LedgerDelete { ledger, identifier },
            Write::LedgerClear { ledger } => Op::LedgerClear { ledger },
            Write::MemoryAppend {
                memory,
                max_messages,
                message,
            } => Op::MemoryPush {
                text: serde_json::to_string(&message).map_err(|e| {
                    HostError::failed(format!("memory '{memory}': cannot encode the message: {e}"))
                })?,
                memory,
                keep: max_messages,
            },
            Write::MemoryClear { memory } => Op::MemoryClear { memory },
        })
    }

    /// The writes, checked and encoded; the first that cannot be stored fails them all.
    pub(crate) fn prepare_all(&self, writes: Vec<Write>) -> Result<Vec<Op>, HostError> {
        writes.into_iter().map(|w| self.prepare(w)).collect()
    }
}

impl Op {
    /// Runs the write inside the open transaction.
    fn run(&self, db: &Db) -> Result<(), HostError> {
        match self {
            Op::HashmapPut {
                name,
                label,
                key,
                text,
            } => ops::hashmap_put(db, name, key, text)
                .map_err(|e| db.fail(&format!("{}: cannot set", key_what(label, key)), e)),
            Op::HashmapDelete { name, label, key } => ops::hashmap_take(db, name, key)
                .map(|_| ())
                .map_err(|e| db.fail(&format!("{}: cannot delete", key_what(label, key)), e)),
            Op::HashmapClear { name, label } => ops::hashmap_clear(db, name)
                .map_err(|e| db.fail(&format!("{label}: cannot clear"), e)),
            Op::LedgerPut {
                ledger,
                identifier,
                keys,
                value,
            } => ops::ledger_put(db, ledger, identifier, keys, value).map_err(|e| {
                db.fail(
                    &format!("{}: cannot insert", ledger_what(ledger, identifier)),
                    e,
                )
            }),
            Op::LedgerValue {
                ledger,
                identifier,
                text,
            } => ops::ledger_set_value(db, ledger, identifier, text)
                .map(|_| ())
                .map_err(|e| {
                    db.fail(
                        &format!("{}: cannot update", ledger_what(ledger, identifier)),
                        e,
                    )
                }),
            Op::LedgerKeys {
                ledger,
                identifier,
                text,
            } => ops::ledger_set_keys(db, ledger, identifier, text)
                .map(|_| ())
                .map_err(|e| {
                    let what = ledger_what(ledger, identifier);
                    db.fail(&format!("{what}: cannot update the keys"), e)
                }),
            Op::LedgerDelete { ledger, identifier } => ops::ledger_remove(db, ledger, identifier)
                .map(|_| ())
                .map_err(|e| {
                    db.fail(
                        &format!("{}: cannot delete", ledger_what(ledger, identifier)),
                        e,
                    )
                }),
            Op::LedgerClear { ledger } => ops::ledger_clear(db, ledger)
                .map_err(|e| db.fail(&format!("ledger '{ledger}': cannot clear"), e)),
            Op::MemoryPush { memory, text, keep } => ops::memory_push(db, memory, text, *keep)
                .map_err(|e| db.fail(&format!("memory '{memory}': cannot append"), e)),
            Op::MemoryClear { memory } => ops::memory_clear(db, memory)
                .map_err(|e| db.fail(&format!("memory '{memory}': cannot clear"), e)),
        }
    }
}

/// Runs `ops` and appends `journal`, in the job's transaction; the first failure returns
/// (and the worker rolls the job back to its savepoint).
pub(crate) fn run_all(
    db: &Db,
    ops: &[Op],
    journal: Option<&JournalRecord>,
) -> Result<(), HostError> {
    if let Some(JournalRecord {
        run,
        epoch: Some(epoch),
        ..
    }) = journal
    {
        let stands = ops::fence_of(db, run)
            .map_err(|e| db.fail(&format!("journal of run '{run}': cannot read its fence"), e))?;
        if stands != Some(*epoch) {
            return Err(crate::fenced(run, *epoch, stands));
        }
    }
    for op in ops {
        op.run(db)?;
    }
    if let Some(j) = journal {
        ops::journal_push(db, &j.run, &j.record)
            .map_err(|e| db.fail(&format!("journal of run '{}': cannot append", j.run), e))?;
    }
    Ok(())
}
