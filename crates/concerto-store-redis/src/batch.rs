//! [`JournalStore::apply`](concerto_vm::host::JournalStore::apply) for [`RedisStore`]: every
//! write is checked and encoded in Rust first, then the writes (the same scripts as the
//! single operations, sent with `EVAL`) and the journal's `RPUSH` go to the server as one
//! `MULTI`/`EXEC` transaction. Redis runs a transaction with no other command in between, and
//! discards all of it when a command is refused while it is queued; the steps are the ones
//! the single operations make, which cannot fail once their arguments are checked.

use concerto_vm::host::{HostError, JournalRecord, Write};

use crate::{Inner, RedisStore, encode, ledger_label, memory_label, scripts, shorten, window};

/// One write, checked and encoded.
pub(crate) enum Op {
    HashmapSet {
        map: u32,
        key: String,
        json: String,
    },
    HashmapDelete {
        map: u32,
        key: String,
    },
    HashmapClear {
        map: u32,
    },
    LedgerInsert {
        ledger: String,
        identifier: String,
        keys: String,
        value: String,
    },
    LedgerUpdate {
        ledger: String,
        identifier: String,
        text: String,
        keys_field: bool,
    },
    LedgerDelete {
        ledger: String,
        identifier: String,
    },
    LedgerClear {
        ledger: String,
    },
    MemoryAppend {
        memory: String,
        json: String,
        max: String,
    },
    MemoryClear {
        memory: String,
    },
}

impl RedisStore {
    fn prepare(&self, write: Write) -> Result<Op, HostError> {
        Ok(match write {
            Write::HashmapSet { map, key, value } => {
                let info = self.map_info(map.0)?;
                let json = encode(&value).map_err(|e| {
                    HostError::failed(format!(
                        "{}: cannot store key '{}': {e}",
                        info.label,
                        shorten(&key)
                    ))
                })?;
                Op::HashmapSet {
                    map: map.0,
                    key: key.to_string(),
                    json,
                }
            }
            Write::HashmapDelete { map, key } => {
                self.map_info(map.0)?;
                Op::HashmapDelete {
                    map: map.0,
                    key: key.to_string(),
                }
            }
            Write::HashmapClear { map } => {
                self.map_info(map.0)?;
                Op::HashmapClear { map: map.0 }
            }
            Write::LedgerInsert { ledger, entry } => {
                let what = || {
                    format!(
                        "{}: entry '{}'",
                        ledger_label(&ledger),
                        shorten(&entry.identifier)
                    )
                };
                let value = encode(&entry.value)
                    .map_err(|e| HostError::failed(format!("{}: {e}", what())))?;
                let keys = serde_json::to_string(&entry.keys)
                    .map_err(|e| HostError::failed(format!("{}: {e}", what())))?;
                Op::LedgerInsert {
                    ledger,
                    identifier: entry.identifier,
                    keys,
                    value,
                }
            }
            Write::LedgerUpdate {
                ledger,
                identifier,
                value,
            } => {
                let text = encode(&value).map_err(|e| {
                    HostError::failed(format!(
                        "{}: cannot store the value of entry '{}': {e}",
                        ledger_label(&ledger),
                        shorten(&identifier)
                    ))
                })?;
                Op::LedgerUpdate {
                    ledger,
                    identifier,
                    text,
                    keys_field: false,
                }
            }
            Write::LedgerUpdateKeys {
                ledger,
                identifier,
                keys,
            } => {
                let text = serde_json::to_string(&keys).map_err(|e| {
                    let what = format!(
                        "{}: the keys of entry '{}'",
                        ledger_label(&ledger),
                        shorten(&identifier)
                    );
                    HostError::failed(format!("{what}: {e}"))
                })?;
                Op::LedgerUpdate {
                    ledger,
                    identifier,
                    text,
                    keys_field: true,
                }
            }
            Write::LedgerDelete { ledger, identifier } => Op::LedgerDelete { ledger, identifier },
            Write::LedgerClear { ledger } => Op::LedgerClear { ledger },
            Write::MemoryAppend {
                memory,
                max_messages,
                message,
            } => {
                let json = serde_json::to_string(&message).map_err(|e| {
                    HostError::failed(format!("{}: a message: {e}", memory_label(&memory)))
                })?;
                Op::MemoryAppend {
                    memory,
                    json,
                    max: window(max_messages),
                }
            }
            Write::MemoryClear { memory } => Op::MemoryClear { memory },
        })
    }

    /// The writes, checked and encoded; the first that cannot be stored fails them all.
    pub(crate) fn prepare_all(&self, writes: Vec<Write>) -> Result<Vec<Op>, HostError> {
        writes.into_iter().map(|w| self.prepare(w)).collect()
    }
}

/// How the commands of one batch are built: plain, or fenced (each command checks the
/// run's fence first: [`scripts::FENCE_PRELUDE`]).
struct Builder {
    /// The fence key and the epoch, for a fenced batch.
    fence: Option<(String, String)>,
}

impl Builder {
    /// `EVAL source numkeys keys… args…`; the caller adds the arguments, then [`Builder::end`].
    fn eval(&self, source: &str, keys: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        match &self.fence {
            Some((fence, _)) => {
                cmd.arg(format!("{}{source}", scripts::FENCE_PRELUDE))
                    .arg(keys.len() + 1);
                for key in keys {
                    cmd.arg(*key);
                }
                cmd.arg(fence);
            }
            None => {
                cmd.arg(source).arg(keys.len());
                for key in keys {
                    cmd.arg(*key);
                }
            }
        }
        cmd
    }

    /// The command's last argument: the epoch, when fenced.
    fn end(&self, mut cmd: redis::Cmd) -> redis::Cmd {
        if let Some((_, epoch)) = &self.fence {
            cmd.arg(epoch);
        }
        cmd
    }

    /// `DEL keys…`
    fn delete(&self, keys: &[&str]) -> redis::Cmd {
        if self.fence.is_some() {
            return self.end(self.eval(scripts::DELETE_KEYS, keys));
        }
        let mut cmd = redis::cmd("DEL");
        for key in keys {
            cmd.arg(*key);
        }
        cmd
    }

    /// `RPUSH key record`
    fn push(&self, key: &str, record: &str) -> redis::Cmd {
        if self.fence.is_some() {
            let mut cmd = self.eval(scripts::PUSH_RECORD, &[key]);
            cmd.arg(record);
            return self.end(cmd);
        }
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(key).arg(record);
        cmd
    }
}

/// Sends `ops` and the journal record as one `MULTI`/`EXEC` transaction; with a record of a
/// lease epoch, every command checks the run's fence and the transaction is refused
/// ([`HostErrorKind::Fenced`](concerto_vm::host::HostErrorKind::Fenced)) when it stands
/// elsewhere.
pub(crate) async fn commit(
    inner: &Inner,
    ops: Vec<Op>,
    journal: Option<JournalRecord>,
) -> Result<(), HostError> {
    let src = &inner.scripts.sources;
    let channel = inner.layout.channel.as_str();
    let fence = journal.as_ref().and_then(|j| {
        j.epoch
            .map(|epoch| (inner.layout.fence(&j.run), epoch.to_string()))
    });
    let b = Builder { fence };
    let mut pipe = redis::pipe();
    pipe.atomic();
    for op in &ops {
        let cmd = match op {
            Op::HashmapSet { map, key, json } => {
                let info = inner.map(*map)?;
                let k = &info.keys;
                let mut cmd = b.eval(&src.hashmap_set, &[&k.data, &k.order, &k.seq]);
                cmd.arg(channel)
                    .arg(&info.event_prefix)
                    .arg("0")
                    .arg(key)
                    .arg(json);
                b.end(cmd)
            }
            Op::HashmapDelete { map, key } => {
                let info = inner.map(*map)?;
                let mut cmd = b.eval(&src.hashmap_delete, &[&info.keys.data, &info.keys.order]);
                cmd.arg(channel).arg(&info.event_prefix).arg(key);
                b.end(cmd)
            }
            Op::HashmapClear { map } => {
                let info = inner.map(*map)?;
                let mut cmd = b.eval(&src.hashmap_clear, &[&info.keys.data, &info.keys.order]);
                cmd.arg(channel).arg(&info.event_prefix);
                b.end(cmd)
            }
            Op::LedgerInsert {
                ledger,
                identifier,
                keys,
                value,
            } => {
                let l = inner.layout.ledger(ledger);
                let mut cmd = b.eval(&src.ledger_insert, &[&l.value, &l.keys, &l.order, &l.seq]);
                cmd.arg(identifier).arg(keys).arg(value);
                b.end(cmd)
            }
            Op::LedgerUpdate {
                ledger,
                identifier,
                text,
                keys_field,
            } => {
                let l = inner.layout.ledger(ledger);
                let target = if *keys_field { &l.keys } else { &l.value };
                let mut cmd = b.eval(&src.ledger_update, &[&l.value, target]);
                cmd.arg(identifier).arg(text);
                b.end(cmd)
            }
            Op::LedgerDelete { ledger, identifier } => {
                let l = inner.layout.ledger(ledger);
                let mut cmd = b.eval(&src.ledger_delete, &[&l.value, &l.keys, &l.order]);
                cmd.arg(identifier);
                b.end(cmd)
            }
            Op::LedgerClear { ledger } => {
                let l = inner.layout.ledger(ledger);
                b.delete(&[&l.value, &l.keys, &l.order, &l.seq])
            }
            Op::MemoryAppend { memory, json, max } => {
                let key = inner.layout.memory(memory);
                let mut cmd = b.eval(&src.memory_append, &[&key]);
                cmd.arg(json).arg(max);
                b.end(cmd)
            }
            Op::MemoryClear { memory } => b.delete(&[&inner.layout.memory(memory)]),
        };
        pipe.add_command(cmd).ignore();
    }
    if let Some(j) = &journal {
        pipe.add_command(b.push(&inner.layout.journal(&j.run), &j.record))
            .ignore();
    }
    let mut conn = inner.conn.clone();
    let what = format!("a write batch of {} writes", ops.len());
    let result: Result<(), redis::RedisError> = pipe.query_async(&mut conn).await;
    match (result, &journal) {
        (Ok(()), _) => Ok(()),
        (Err(e), Some(j)) if e.to_string().contains("FENCED") => {
            let stands = fence_stands(&e.to_string());
            Err(HostError::fenced(format!(
                "run '{}': a write of lease epoch {} was refused: the run's fence {stands} \
                 (another worker holds the run)",
                j.run,
                j.epoch.unwrap_or_default()
            )))
        }
        (Err(e), _) => Err(inner.fail(&what, &e)),
    }
}

/// `stands at N` / `was never raised`, from a refusal's `FENCED N` / `FENCED never` (as the
/// client shows it: `FENCED: N`, inside other text).
pub(crate) fn fence_stands(error: &str) -> String {
    let after = error.split("FENCED").nth(1).unwrap_or_default();
    let word: String = after
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    match word.as_str() {
        "never" | "" => "was never raised".to_string(),
        n => format!("stands at {n}"),
    }
}
