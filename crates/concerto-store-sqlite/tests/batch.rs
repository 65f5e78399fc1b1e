//! `JournalStore::apply` on the SQLite store, in a real file: the writes and the journal
//! record commit together or not at all, and what committed is there after reopening.

use std::path::Path;
use std::sync::Arc;

use concerto_store_sqlite::SqliteStore;
use concerto_vm::host::MemoryStore;
use concerto_vm::testing;

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, vec!["store".to_string(), "other".to_string()]).unwrap()
}

#[test]
fn a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&path)) };
    testing::a_batch_with_a_failing_write_leaves_neither_the_writes_nor_the_record(&open);
}

#[test]
fn a_good_batch_lands_with_its_journal_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&path)) };
    testing::a_good_batch_lands_with_its_journal_record(&open);
}

#[test]
fn a_batch_of_an_older_epoch_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let open = || -> Arc<dyn MemoryStore> { Arc::new(open(&path)) };
    testing::a_batch_of_an_older_epoch_is_refused_and_writes_nothing(&open);
}
