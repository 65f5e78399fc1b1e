//! What is particular to the SQLite store: opening files (schema version, foreign files),
//! sharing one file between stores, group commit under concurrency, values that cannot be
//! stored. The behaviour shared with the other stores is in the workspace suite
//! (`tests/stores.rs`).

use concerto_vm::host::MapId;
use std::path::Path;
use std::sync::Arc;

use concerto_store_sqlite::{SCHEMA_VERSION, SqliteOptions, SqliteStore, Synchronous};
use concerto_vm::host::{
    ConversationStore, HashmapStore, HostErrorKind, LedgerEntry, LedgerStore, Reply,
};
use concerto_vm::{Str, Value};

fn wait<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ready(v) => v,
        Reply::Pending(fut) => tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, names(&["store", "other"])).unwrap()
}

#[test]
fn every_operation_answers_later_so_no_caller_thread_blocks_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("s.db"));
    assert!(matches!(
        store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1)),
        Reply::Pending(_)
    ));
    assert!(matches!(
        store.hashmap_get(MapId(0), "k"),
        Reply::Pending(_)
    ));
    assert!(matches!(store.ledger_entries("l"), Reply::Pending(_)));
    assert!(matches!(store.memory_messages("m"), Reply::Pending(_)));
}

#[test]
fn two_stores_on_one_file_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = open(&path);
    let b = open(&path);
    wait(a.hashmap_set(MapId(0), Str::from("from-a"), Value::Int(1))).unwrap();
    assert_eq!(
        wait(b.hashmap_get(MapId(0), "from-a")).unwrap(),
        Some(Value::Int(1))
    );
    wait(b.hashmap_set(MapId(0), Str::from("from-b"), Value::Int(2))).unwrap();
    wait(b.hashmap_set(MapId(0), Str::from("from-a"), Value::Int(3))).unwrap();
    let entries = wait(a.hashmap_entries(MapId(0))).unwrap();
    assert_eq!(
        entries,
        vec![
            (Str::from("from-a"), Value::Int(3)),
            (Str::from("from-b"), Value::Int(2))
        ]
    );
    wait(a.ledger_insert(
        "notes",
        LedgerEntry {
            identifier: "x".into(),
            keys: vec!["k".into()],
            value: Value::Int(9),
        },
    ))
    .unwrap();
    assert_eq!(wait(b.ledger_entries("notes")).unwrap().len(), 1);
    // Hashmaps are stored by name: a store whose hashmap 0 is `other` does not see `store`.
    let c = SqliteStore::open(&path, names(&["other", "store"])).unwrap();
    assert_eq!(wait(c.hashmap_len(MapId(0))).unwrap(), 0);
    assert_eq!(wait(c.hashmap_len(MapId(1))).unwrap(), 2);
}

#[test]
fn concurrent_writers_on_one_file_lose_nothing_and_keep_a_single_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("concurrent.db");
    let stores: Vec<Arc<SqliteStore>> = (0..3).map(|_| Arc::new(open(&path))).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            for t in 0..8 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..25 {
                        let key = Str::from(format!("s{s}-t{t}-{i}"));
                        match store.hashmap_set(MapId(0), key, Value::Int(i)) {
                            Reply::Pending(fut) => fut.await.unwrap(),
                            Reply::Ready(r) => r.unwrap(),
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let entries = wait(stores[0].hashmap_entries(MapId(0))).unwrap();
    assert_eq!(entries.len(), 3 * 8 * 25);
    // Each writer's keys appear in the order it wrote them.
    for s in 0..3 {
        for t in 0..8 {
            let prefix = format!("s{s}-t{t}-");
            let mine: Vec<i64> = entries
                .iter()
                .filter(|(k, _)| k.as_str().starts_with(&prefix))
                .map(|(_, v)| match v {
                    Value::Int(i) => *i,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(mine, (0..25).collect::<Vec<_>>(), "{prefix}");
        }
    }
}

/// Makes every insert of a key starting with `bad` fail inside SQLite.
fn refuse_bad_keys(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON hashmap_entries \
         WHEN NEW.key LIKE 'bad%' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
}

#[test]
fn set_many_that_fails_inside_sqlite_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atomic.db");
    let store = open(&path);
    wait(store.hashmap_set(MapId(0), Str::from("a"), Value::Int(0))).unwrap();
    refuse_bad_keys(&path);
    let err = wait(store.hashmap_set_many(
        MapId(0),
        vec![
            (Str::from("a"), Value::Int(1)),
            (Str::from("b"), Value::Int(2)),
            (Str::from("bad"), Value::Int(3)),
        ],
    ))
    .unwrap_err();
    assert!(err.message.contains("refused by the test"), "{err}");
    assert!(err.message.contains("key 'bad'"), "{err}");
    assert!(err.message.contains("nothing was written"), "{err}");
    assert_eq!(
        wait(store.hashmap_entries(MapId(0))).unwrap(),
        vec![(Str::from("a"), Value::Int(0))]
    );
}

#[test]
fn a_failing_job_in_a_group_commit_changes_nothing_and_the_others_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    let store = Arc::new(open(&path));
    refuse_bad_keys(&path);
    // Queue many operations before awaiting any, so that they share transactions; every
    // tenth is a set_many whose second key SQLite refuses.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut futs = Vec::new();
        for i in 0..300 {
            let reply = if i % 10 == 0 {
                store.hashmap_set_many(
                    MapId(0),
                    vec![
                        (Str::from(format!("lost{i}")), Value::Int(i)),
                        (Str::from(format!("bad{i}")), Value::Int(i)),
                    ],
                )
            } else {
                store.hashmap_set(MapId(0), Str::from(format!("k{i}")), Value::Int(i))
            };
            futs.push((i, reply));
        }
        for (i, reply) in futs {
            let result = match reply {
                Reply::Pending(fut) => fut.await,
                Reply::Ready(r) => r,
            };
            assert_eq!(result.is_err(), i % 10 == 0, "write {i}: {result:?}");
        }
    });
    let stats = store.stats();
    assert_eq!(stats.operations, 300);
    assert!(
        stats.transactions < 300,
        "operations queued together were not committed together: {stats:?}"
    );
    let entries = wait(store.hashmap_entries(MapId(0))).unwrap();
    assert_eq!(entries.len(), 270);
    assert!(
        entries.iter().all(|(k, _)| k.as_str().starts_with('k')),
        "a refused set_many left some of its entries"
    );
}

#[test]
fn a_value_that_cannot_be_stored_fails_naming_the_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("v.db"));
    let bad = Value::array(vec![Value::Int(1), Value::Builtin(3)]);
    let err = wait(store.hashmap_set(MapId(0), Str::from("fn"), bad.clone())).unwrap_err();
    assert!(err.message.contains("hashmap 'store': key 'fn'"), "{err}");
    assert!(err.message.contains("cannot be saved"), "{err}");
    let err = wait(store.hashmap_set_many(
        MapId(0),
        vec![(Str::from("ok"), Value::Int(1)), (Str::from("bad"), bad)],
    ))
    .unwrap_err();
    assert!(err.message.contains("key 'bad'"), "{err}");
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 0);
}

#[test]
fn a_file_of_another_schema_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    drop(open(&path));
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SqliteStore::open(&path, names(&["store"])).unwrap_err();
    assert!(
        err.message
            .contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
        "{err}"
    );
    assert!(
        err.message
            .contains(&format!("this build reads version {SCHEMA_VERSION}")),
        "{err}"
    );
    assert!(err.message.contains("v.db"), "{err}");
}

#[test]
fn a_database_of_another_application_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    }
    let err = SqliteStore::open(&path, names(&["store"])).unwrap_err();
    assert!(err.message.contains("of something else"), "{err}");
    // Nothing was added to it.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);

    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "application_id", 1234).unwrap();
    }
    let err = SqliteStore::open(&path, names(&["store"])).unwrap_err();
    assert!(err.message.contains("another application"), "{err}");
}

#[test]
fn a_file_that_is_not_a_database_or_cannot_be_created_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.db");
    std::fs::write(
        &path,
        "this is not an SQLite database, just some text to fill a page",
    )
    .unwrap();
    let err = SqliteStore::open(&path, names(&["store"])).unwrap_err();
    assert!(err.message.contains("text.db"), "{err}");
    assert!(err.message.contains("not a database"), "{err}");

    let missing = dir.path().join("no-such-dir").join("s.db");
    let err = SqliteStore::open(&missing, names(&["store"])).unwrap_err();
    assert!(err.message.contains("no-such-dir"), "{err}");
    assert!(err.message.contains("cannot open"), "{err}");
}

#[test]
fn a_held_write_lock_turns_into_a_timeout_error_after_the_busy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let store = SqliteStore::open_with(
        &path,
        names(&["store"]),
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: std::time::Duration::from_millis(100),
        },
    )
    .unwrap();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = wait(store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1))).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Timeout, "{err}");
    assert!(err.message.contains("busy.db"), "{err}");
    // Reads still work while another connection writes (WAL).
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 0);
    holder.execute_batch("COMMIT").unwrap();
    wait(store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1))).unwrap();
    assert_eq!(wait(store.hashmap_len(MapId(0))).unwrap(), 1);
}

#[test]
fn the_database_is_in_wal_mode_with_the_schema_marked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = open(&path);
    wait(store.hashmap_set(MapId(0), Str::from("k"), Value::Int(1))).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let value: String = conn
        .query_row(
            "SELECT value FROM hashmap_entries WHERE map = 'store' AND key = 'k'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(value, "1");
}
