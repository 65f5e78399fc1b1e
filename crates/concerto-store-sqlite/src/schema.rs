//! Opening a database file: connection settings, the schema and its version.

use std::path::Path;

use concerto_vm::host::HostError;
use rusqlite::{Connection, OpenFlags};

use crate::worker::{Db, failure};
use crate::{SqliteOptions, Synchronous};

/// The schema version this build reads and writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i32 = 1;

/// `PRAGMA application_id` of a Concerto state database ("Conc" in ASCII), so that a file
/// of another application is recognised and refused.
pub const APPLICATION_ID: i32 = 0x436F_6E63;

/// The tables of schema version 1.
///
/// - `hashmap_entries`: one row per hashmap entry. `map` is the hashmap's program name,
///   `ord` its insertion position (an update keeps it, a new key takes the largest plus
///   one), `value` the value's JSON encoding ([`concerto_memory::codec`]).
/// - `ledger_entries`: one row per ledger entry, upserted by `(ledger, identifier)`; `keys`
///   is a JSON array of strings, `ord` the insertion position.
/// - `memory_messages`: the messages of each conversation memory, `seq` counting up from 1
///   (contiguous: the window removes the oldest), `message` a JSON chat message.
/// - `journal_records`: the journal of each resumable run, `seq` counting up from 1, `record`
///   the text the runtime appended.
const CREATE_V1: &str = "
CREATE TABLE hashmap_entries (
    map   TEXT    NOT NULL,
    key   TEXT    NOT NULL,
    ord   INTEGER NOT NULL,
    value TEXT    NOT NULL,
    PRIMARY KEY (map, key)
) WITHOUT ROWID;
CREATE UNIQUE INDEX hashmap_entries_order ON hashmap_entries (map, ord);

CREATE TABLE ledger_entries (
    ledger     TEXT    NOT NULL,
    identifier TEXT    NOT NULL,
    ord        INTEGER NOT NULL,
    keys       TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    PRIMARY KEY (ledger, identifier)
) WITHOUT ROWID;
CREATE UNIQUE INDEX ledger_entries_order ON ledger_entries (ledger, ord);

CREATE TABLE memory_messages (
    memory  TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    message TEXT    NOT NULL,
    PRIMARY KEY (memory, seq)
) WITHOUT ROWID;

CREATE TABLE journal_records (
    run    TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    record TEXT    NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
";

/// Added to schema version 1 (a table older builds never read): each leased run's fence,
/// the newest lease epoch ([`JournalStore::journal_fence`](concerto_vm::host::JournalStore::journal_fence)).
const FENCES: &str = "
CREATE TABLE IF NOT EXISTS journal_fences (
    run   TEXT    NOT NULL PRIMARY KEY,
    epoch INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Opens (creating when missing) the database at `path`, sets up the connection and
/// creates or checks the schema.
pub(crate) fn open(path: &Path, options: &SqliteOptions) -> Result<Db, HostError> {
    let opening = |e| failure(path, "cannot open the database", e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(options.busy_timeout).map_err(opening)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|e| failure(path, "cannot switch the database to WAL mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(HostError::failed(format!(
            "SQLite store {}: the database stays in journal mode '{mode}' instead of WAL \
             (is it on a file system without shared memory support?)",
            path.display()
        )));
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| failure(path, "cannot set synchronous", e))?;
    conn.set_prepared_statement_cache_capacity(64);
    let db = Db {
        conn,
        path: path.to_path_buf(),
    };
    prepare_schema(&db)?;
    Ok(db)
}

/// Creates the tables in a new database, or checks that an existing one is a Concerto state
/// database of [`SCHEMA_VERSION`]. One transaction, so two processes opening a new file at
/// once create the tables once.
fn prepare_schema(db: &Db) -> Result<(), HostError> {
    let conn = &db.conn;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| db.fail("cannot read the schema", e))?;
    let result = check_or_create(db);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.execute_batch(end);
    result?;
    ended.map_err(|e| db.fail("cannot create the schema", e))
}

fn check_or_create(db: &Db) -> Result<(), HostError> {
    let conn = &db.conn;
    let read = |e| db.fail("cannot read the schema", e);
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(read)?;
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(read)?;
    let path = db.path.display();
    if app != APPLICATION_ID && (app != 0 || version != 0) {
        return Err(HostError::failed(format!(
            "SQLite store {path}: the file is an SQLite database of another application \
             (application_id {app:#x}, user_version {version}), not a Concerto state database"
        )));
    }
    if version == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                [],
                |row| row.get(0),
            )
            .map_err(read)?;
        if tables > 0 {
            return Err(HostError::failed(format!(
                "SQLite store {path}: the database already holds {tables} tables or indexes \
                 of something else and no Concerto schema version; refusing to add Concerto's \
                 tables to it (use a new file)"
            )));
        }
        let create = |e| db.fail("cannot create the schema", e);
        conn.execute_batch(CREATE_V1).map_err(create)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(create)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(create)?;
        conn.execute_batch(FENCES).map_err(create)?;
        return Ok(());
    }
    if version != SCHEMA_VERSION {
        let hint = if version > SCHEMA_VERSION {
            "it was written by a newer Concerto; use that version or a new file"
        } else {
            "it was written by an older Concerto and this build has no migration for it"
        };
        return Err(HostError::failed(format!(
            "SQLite store {path}: the database has schema version {version}, this build reads \
             version {SCHEMA_VERSION}: {hint}"
        )));
    }
    conn.execute_batch(FENCES)
        .map_err(|e| db.fail("cannot create the fence table", e))
}
