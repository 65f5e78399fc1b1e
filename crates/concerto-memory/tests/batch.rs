//! `JournalStore::apply` on the in-memory store: a batch is checked whole before anything
//! is written, so a write that fails leaves the others unmade.

use concerto_memory::InMemoryStore;
use concerto_vm::host::MapId;
use concerto_vm::host::{
    ConversationStore, HashmapStore, HostErrorKind, JournalStore, LedgerStore, Write,
};
use concerto_vm::testing;
use concerto_vm::{Str, Value};

use crate::common::ready;

fn set(map: u32, key: &str, value: Value) -> Write {
    Write::HashmapSet {
        map: MapId(map),
        key: Str::from(key),
        value,
    }
}

fn nothing_written(store: &InMemoryStore) {
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 0);
    assert!(ready(store.ledger_entries("facts")).unwrap().is_empty());
    assert!(ready(store.memory_messages("chat")).unwrap().is_empty());
}

#[test]
fn a_batch_over_the_memory_limit_writes_nothing() {
    let store = InMemoryStore::new(2).with_max_bytes(Some(100));
    let big = set(1, "big", Value::from("x".repeat(200)));
    let err = ready(store.apply(testing::sample_batch(Some(big)), None)).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit, "{err}");
    nothing_written(&store);
    assert_eq!(store.bytes_used(), 0);
}

#[test]
fn a_batch_naming_an_unknown_hashmap_writes_nothing() {
    let store = InMemoryStore::new(2);
    let unknown = set(7, "b", Value::Int(2));
    assert!(ready(store.apply(testing::sample_batch(Some(unknown)), None)).is_err());
    nothing_written(&store);
}

#[test]
fn a_batch_with_a_journal_record_is_refused_as_this_store_keeps_no_journals() {
    let store = InMemoryStore::new(2);
    let batch = testing::sample_batch(None);
    let err = ready(store.apply(batch, Some(testing::sample_record()))).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Unsupported, "{err}");
    nothing_written(&store);
}

#[test]
fn a_good_batch_lands_in_order_within_the_limit() {
    let store = InMemoryStore::new(2).with_max_bytes(Some(100));
    ready(store.hashmap_set(MapId(1), Str::from("old"), Value::Int(0))).unwrap();
    let mut writes = testing::sample_batch(Some(set(0, "a", Value::Int(2))));
    writes.push(set(1, "b", Value::Int(3)));
    ready(store.apply(writes, None)).unwrap();
    assert_eq!(
        ready(store.hashmap_get(MapId(0), "a")).unwrap(),
        Some(Value::Int(2))
    );
    assert_eq!(ready(store.hashmap_get(MapId(1), "old")).unwrap(), None);
    assert_eq!(
        ready(store.hashmap_get(MapId(1), "b")).unwrap(),
        Some(Value::Int(3))
    );
    assert_eq!(ready(store.ledger_entries("facts")).unwrap().len(), 1);
    assert_eq!(ready(store.memory_messages("chat")).unwrap().len(), 1);
    // The running total follows the batch: two one-key entries of one scalar each.
    assert_eq!(store.bytes_used(), 2 * (1 + 16));
}
