//! The SQL of each operation, run on the SQLite thread inside the job's transaction. Values
//! arrive encoded and leave encoded; encoding and decoding happen on the caller's side.

use rusqlite::{OptionalExtension, params};

use crate::worker::Db;

/// An encoded ledger entry: identifier, keys (JSON array), value (JSON).
pub(crate) type RawLedgerEntry = (String, String, String);

// ---- hashmaps ----------------------------------------------------------------------------

/// Sets `key`: an existing key keeps its position, a new one goes last.
pub(crate) fn hashmap_put(db: &Db, map: &str, key: &str, value: &str) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached(
            "INSERT INTO hashmap_entries (map, key, ord, value) VALUES (?1, ?2, \
             (SELECT COALESCE(MAX(ord), 0) + 1 FROM hashmap_entries WHERE map = ?1), ?3) \
             ON CONFLICT (map, key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![map, key, value])?;
    Ok(())
}

pub(crate) fn hashmap_value(db: &Db, map: &str, key: &str) -> rusqlite::Result<Option<String>> {
    db.conn
        .prepare_cached("SELECT value FROM hashmap_entries WHERE map = ?1 AND key = ?2")?
        .query_row(params![map, key], |row| row.get(0))
        .optional()
}

pub(crate) fn hashmap_contains(db: &Db, map: &str, key: &str) -> rusqlite::Result<bool> {
    db.conn
        .prepare_cached("SELECT 1 FROM hashmap_entries WHERE map = ?1 AND key = ?2")?
        .exists(params![map, key])
}

/// Deletes `key`; its value when it was present.
pub(crate) fn hashmap_take(db: &Db, map: &str, key: &str) -> rusqlite::Result<Option<String>> {
    db.conn
        .prepare_cached("DELETE FROM hashmap_entries WHERE map = ?1 AND key = ?2 RETURNING value")?
        .query_row(params![map, key], |row| row.get(0))
        .optional()
}

/// Every entry in insertion order.
pub(crate) fn hashmap_all(db: &Db, map: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = db
        .conn
        .prepare_cached("SELECT key, value FROM hashmap_entries WHERE map = ?1 ORDER BY ord")?;
    let rows = stmt.query_map(params![map], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

pub(crate) fn hashmap_count(db: &Db, map: &str) -> rusqlite::Result<usize> {
    let n: i64 = db
        .conn
        .prepare_cached("SELECT COUNT(*) FROM hashmap_entries WHERE map = ?1")?
        .query_row(params![map], |row| row.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

pub(crate) fn hashmap_clear(db: &Db, map: &str) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached("DELETE FROM hashmap_entries WHERE map = ?1")?
        .execute(params![map])?;
    Ok(())
}

// ---- ledgers -----------------------------------------------------------------------------

/// Upserts by identifier: an existing entry keeps its position and takes the new keys and
/// value.
pub(crate) fn ledger_put(
    db: &Db,
    ledger: &str,
    identifier: &str,
    keys: &str,
    value: &str,
) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached(
            "INSERT INTO ledger_entries (ledger, identifier, ord, keys, value) VALUES (?1, ?2, \
             (SELECT COALESCE(MAX(ord), 0) + 1 FROM ledger_entries WHERE ledger = ?1), ?3, ?4) \
             ON CONFLICT (ledger, identifier) DO UPDATE \
             SET keys = excluded.keys, value = excluded.value",
        )?
        .execute(params![ledger, identifier, keys, value])?;
    Ok(())
}

/// Replaces the value of an entry; whether it existed.
pub(crate) fn ledger_set_value(
    db: &Db,
    ledger: &str,
    identifier: &str,
    value: &str,
) -> rusqlite::Result<bool> {
    let n = db
        .conn
        .prepare_cached(
            "UPDATE ledger_entries SET value = ?3 WHERE ledger = ?1 AND identifier = ?2",
        )?
        .execute(params![ledger, identifier, value])?;
    Ok(n > 0)
}

/// Replaces the keys of an entry; whether it existed.
pub(crate) fn ledger_set_keys(
    db: &Db,
    ledger: &str,
    identifier: &str,
    keys: &str,
) -> rusqlite::Result<bool> {
    let n = db
        .conn
        .prepare_cached(
            "UPDATE ledger_entries SET keys = ?3 WHERE ledger = ?1 AND identifier = ?2",
        )?
        .execute(params![ledger, identifier, keys])?;
    Ok(n > 0)
}

pub(crate) fn ledger_remove(db: &Db, ledger: &str, identifier: &str) -> rusqlite::Result<bool> {
    let n = db
        .conn
        .prepare_cached("DELETE FROM ledger_entries WHERE ledger = ?1 AND identifier = ?2")?
        .execute(params![ledger, identifier])?;
    Ok(n > 0)
}

/// Every entry in insertion order.
pub(crate) fn ledger_all(db: &Db, ledger: &str) -> rusqlite::Result<Vec<RawLedgerEntry>> {
    let mut stmt = db.conn.prepare_cached(
        "SELECT identifier, keys, value FROM ledger_entries WHERE ledger = ?1 ORDER BY ord",
    )?;
    let rows = stmt.query_map(params![ledger], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?;
    rows.collect()
}

pub(crate) fn ledger_clear(db: &Db, ledger: &str) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached("DELETE FROM ledger_entries WHERE ledger = ?1")?
        .execute(params![ledger])?;
    Ok(())
}

// ---- memories ----------------------------------------------------------------------------

/// Appends a message, then keeps the newest `keep` (all when `None`).
pub(crate) fn memory_push(
    db: &Db,
    memory: &str,
    message: &str,
    keep: Option<u64>,
) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached(
            "INSERT INTO memory_messages (memory, seq, message) VALUES (?1, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM memory_messages WHERE memory = ?1), ?2)",
        )?
        .execute(params![memory, message])?;
    if let Some(keep) = keep {
        // Sequence numbers are contiguous (appends at the end, the window trims the start),
        // so the newest `keep` are those above `MAX(seq) - keep`.
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        db.conn
            .prepare_cached(
                "DELETE FROM memory_messages WHERE memory = ?1 AND seq <= \
                 (SELECT MAX(seq) FROM memory_messages WHERE memory = ?1) - ?2",
            )?
            .execute(params![memory, keep])?;
    }
    Ok(())
}

/// Every message, oldest first.
pub(crate) fn memory_all(db: &Db, memory: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db
        .conn
        .prepare_cached("SELECT message FROM memory_messages WHERE memory = ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![memory], |row| row.get(0))?;
    rows.collect()
}

pub(crate) fn memory_clear(db: &Db, memory: &str) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached("DELETE FROM memory_messages WHERE memory = ?1")?
        .execute(params![memory])?;
    Ok(())
}

// ---- run journals ------------------------------------------------------------------------

pub(crate) fn journal_push(db: &Db, run: &str, record: &str) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached(
            "INSERT INTO journal_records (run, seq, record) VALUES (?1, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal_records WHERE run = ?1), ?2)",
        )?
        .execute(params![run, record])?;
    Ok(())
}

/// Every record of a run, oldest first.
pub(crate) fn journal_all(db: &Db, run: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db
        .conn
        .prepare_cached("SELECT record FROM journal_records WHERE run = ?1 ORDER BY seq")?;
    let rows = stmt.query_map(params![run], |row| row.get(0))?;
    rows.collect()
}

/// Where run `run`'s fence stands (`None`: never raised).
pub(crate) fn fence_of(db: &Db, run: &str) -> rusqlite::Result<Option<u64>> {
    use rusqlite::OptionalExtension;
    db.conn
        .prepare_cached("SELECT epoch FROM journal_fences WHERE run = ?1")?
        .query_row(params![run], |row| row.get::<_, i64>(0))
        .optional()
        .map(|e| e.map(|e| e as u64))
}

/// Raises run `run`'s fence to `epoch` (the caller checked it is not lower).
pub(crate) fn fence_raise(db: &Db, run: &str, epoch: u64) -> rusqlite::Result<()> {
    db.conn
        .prepare_cached(
            "INSERT INTO journal_fences (run, epoch) VALUES (?1, ?2) \
             ON CONFLICT (run) DO UPDATE SET epoch = excluded.epoch",
        )?
        .execute(params![run, epoch as i64])?;
    Ok(())
}
