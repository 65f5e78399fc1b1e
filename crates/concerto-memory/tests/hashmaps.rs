//! Atomic operations, names and the memory limit.

use concerto_vm::host::MapId;
use std::sync::Arc;

use crate::common::ready;
use concerto_memory::{InMemoryStore, entry_size};
use concerto_vm::host::{HashmapStore, HostErrorKind};
use concerto_vm::{Str, Value};

fn s(text: &str) -> Str {
    Str::from(text)
}

fn big(n: usize) -> Value {
    Value::str("x".repeat(n))
}

fn keys(store: &InMemoryStore, map: u32) -> Vec<String> {
    ready(store.hashmap_entries(MapId(map)))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

/// What the store's total must be: the sum of its entries' sizes.
fn expected_bytes(store: &InMemoryStore) -> usize {
    (0..store.hashmap_count() as u32)
        .flat_map(|m| ready(store.hashmap_entries(MapId(m))).unwrap())
        .map(|(k, v)| entry_size(&k, &v))
        .sum()
}

#[test]
fn set_many_writes_everything_or_nothing_under_the_limit() {
    let store = InMemoryStore::with_names(["store"]).with_max_bytes(Some(1000));
    ready(store.hashmap_set(MapId(0), s("keep"), Value::Int(1))).unwrap();
    let before = store.bytes_used();

    // Three entries of 347 bytes each do not fit next to `keep`.
    let batch = vec![
        (s("a"), big(330)),
        (s("keep"), Value::Int(2)),
        (s("b"), big(330)),
        (s("c"), big(330)),
    ];
    let err = ready(store.hashmap_set_many(MapId(0), batch)).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    assert!(err.message.contains("key 'c'"), "{}", err.message);
    assert_eq!(keys(&store, 0), ["keep"]);
    assert_eq!(
        ready(store.hashmap_get(MapId(0), "keep")).unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(store.bytes_used(), before);

    // Two of them fit; both are written, `keep` is updated in place.
    let batch = vec![
        (s("a"), big(330)),
        (s("keep"), Value::Int(2)),
        (s("b"), big(330)),
    ];
    ready(store.hashmap_set_many(MapId(0), batch)).unwrap();
    assert_eq!(keys(&store, 0), ["keep", "a", "b"]);
    assert_eq!(
        ready(store.hashmap_get(MapId(0), "keep")).unwrap(),
        Some(Value::Int(2))
    );
    assert_eq!(store.bytes_used(), expected_bytes(&store));
}

#[test]
fn set_many_with_a_repeated_key_counts_only_the_last_value() {
    let store = InMemoryStore::new(1).with_max_bytes(Some(400));
    // Alone, each value fits; both counted would not.
    let batch = vec![(s("k"), big(300)), (s("k"), big(310))];
    ready(store.hashmap_set_many(MapId(0), batch)).unwrap();
    assert_eq!(store.bytes_used(), entry_size("k", &big(310)));
    assert_eq!(store.bytes_used(), expected_bytes(&store));
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 1);
}

#[test]
fn get_many_reads_one_consistent_snapshot() {
    let store = Arc::new(InMemoryStore::new(1));
    ready(store.hashmap_set_many(
        MapId(0),
        vec![(s("a"), Value::Int(0)), (s("b"), Value::Int(0))],
    ))
    .unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 1..20_000i64 {
                let batch = vec![(s("a"), Value::Int(i)), (s("b"), Value::Int(i))];
                ready(store.hashmap_set_many(MapId(0), batch)).unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads < 1000 {
        let got =
            ready(store.hashmap_get_many(MapId(0), vec![s("a"), s("missing"), s("b")])).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], None);
        assert_eq!(got[0], got[2], "get_many saw half of a set_many");
        reads += 1;
    }
    writer.join().unwrap();
}

#[test]
fn replace_and_remove_return_the_previous_values() {
    let store = InMemoryStore::new(1);
    assert_eq!(
        ready(store.hashmap_replace(MapId(0), s("k"), Value::Int(1))).unwrap(),
        None
    );
    assert_eq!(
        ready(store.hashmap_replace(MapId(0), s("k"), Value::str("two"))).unwrap(),
        Some(Value::Int(1))
    );
    assert_eq!(
        ready(store.hashmap_remove(MapId(0), "k")).unwrap(),
        Some(Value::str("two"))
    );
    assert_eq!(ready(store.hashmap_remove(MapId(0), "k")).unwrap(), None);
    assert!(!ready(store.hashmap_delete(MapId(0), "k")).unwrap());
    assert_eq!(store.bytes_used(), 0);
}

#[test]
fn updating_a_key_keeps_its_position_and_reinserting_moves_it_last() {
    let store = InMemoryStore::new(1);
    for k in ["a", "b", "c"] {
        ready(store.hashmap_set(MapId(0), s(k), Value::Int(1))).unwrap();
    }
    ready(store.hashmap_set(MapId(0), s("a"), Value::Int(2))).unwrap();
    assert_eq!(keys(&store, 0), ["a", "b", "c"]);
    ready(store.hashmap_delete(MapId(0), "a")).unwrap();
    ready(store.hashmap_set(MapId(0), s("a"), Value::Int(3))).unwrap();
    assert_eq!(keys(&store, 0), ["b", "c", "a"]);
}

#[test]
fn the_limit_message_names_the_hashmap_key_limit_size_and_the_way_to_raise_it() {
    let store = InMemoryStore::with_names(["cache", "store"]).with_max_bytes(Some(500));
    let value = big(600);
    let would_be = entry_size("report", &value);
    let err = ready(store.hashmap_set(MapId(1), s("report"), value)).unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Limit);
    for part in [
        "hashmap 'store'".to_string(),
        "key 'report'".to_string(),
        "limit of 500 bytes".to_string(),
        format!("to {would_be} bytes"),
        "Limits::max_hashmap_bytes".to_string(),
        "--max-hashmap-bytes".to_string(),
    ] {
        assert!(
            err.message.contains(&part),
            "{part:?} missing: {}",
            err.message
        );
    }
    assert_eq!(ready(store.hashmap_len(MapId(1))).unwrap(), 0);
    assert_eq!(store.bytes_used(), 0);

    // Without names, the index.
    let store = InMemoryStore::new(2).with_max_bytes(Some(10));
    let err = ready(store.hashmap_set(MapId(1), s("k"), big(20))).unwrap_err();
    assert!(err.message.starts_with("hashmap #1:"), "{}", err.message);
}

#[test]
fn overwrites_deletes_and_clears_keep_the_total_exact() {
    let limit = 10_000;
    let store = InMemoryStore::with_names(["a", "b"]).with_max_bytes(Some(limit));
    for round in 0..5 {
        // Fill up: 25 entries of 400 bytes reach the limit exactly.
        let mut i = 0;
        loop {
            let key = s(&format!("k{i:03}"));
            match ready(store.hashmap_set(MapId(i % 2), key, big(396 - 16))) {
                Ok(()) => i += 1,
                Err(e) => {
                    assert_eq!(e.kind, HostErrorKind::Limit);
                    break;
                }
            }
        }
        assert_eq!(
            i, 25,
            "round {round}: the same number of entries fit each time"
        );
        assert_eq!(store.bytes_used(), expected_bytes(&store));
        assert!(store.bytes_used() <= limit);

        // Overwrite with smaller and larger values.
        ready(store.hashmap_set(MapId(0), s("k000"), Value::Int(1))).unwrap();
        ready(store.hashmap_set(MapId(0), s("k000"), big(380))).unwrap();
        assert_eq!(store.bytes_used(), expected_bytes(&store));

        // Delete some, remove some, clear one hashmap.
        ready(store.hashmap_delete(MapId(0), "k002")).unwrap();
        ready(store.hashmap_remove(MapId(1), "k003")).unwrap();
        assert_eq!(store.bytes_used(), expected_bytes(&store));
        ready(store.hashmap_clear(MapId(1))).unwrap();
        assert_eq!(store.bytes_used(), expected_bytes(&store));
        assert_eq!(store.hashmap_bytes(1).unwrap(), 0);
        ready(store.hashmap_clear(MapId(0))).unwrap();
        assert_eq!(
            store.bytes_used(),
            0,
            "round {round}: clear resets the total"
        );
    }
}

#[test]
fn a_shrinking_write_is_allowed_even_when_the_store_is_full() {
    let store = InMemoryStore::new(1).with_max_bytes(Some(100));
    ready(store.hashmap_set(MapId(0), s("k"), big(80))).unwrap();
    assert!(ready(store.hashmap_set(MapId(0), s("other"), big(10))).is_err());
    ready(store.hashmap_set(MapId(0), s("k"), big(79))).unwrap();
    ready(store.hashmap_set(MapId(0), s("k"), Value::Nil)).unwrap();
    assert_eq!(store.bytes_used(), 17);
}

#[test]
fn the_limit_holds_across_hashmaps_written_concurrently() {
    let limit = 50_000;
    let store = Arc::new(InMemoryStore::new(4).with_max_bytes(Some(limit)));
    let threads: Vec<_> = (0..4u32)
        .map(|m| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let key = s(&format!("k{}", i % 300));
                    let _ = ready(store.hashmap_set(MapId(m), key, big(50 + (i * 7) % 150)));
                    assert!(store.bytes_used() <= limit);
                    if i % 5 == 0 {
                        ready(store.hashmap_delete(MapId(m), &format!("k{}", (i * 3) % 300)))
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.bytes_used() <= limit);
    assert_eq!(store.bytes_used(), expected_bytes(&store));
    let per_map: usize = (0..4).map(|m| store.hashmap_bytes(m).unwrap()).sum();
    assert_eq!(per_map, store.bytes_used());
}

#[test]
fn an_unknown_hashmap_is_an_error_naming_its_index() {
    let store = InMemoryStore::new(1);
    let err = ready(store.hashmap_set(MapId(3), s("k"), Value::Nil)).unwrap_err();
    assert!(
        err.message.contains("hashmap #3 does not exist"),
        "{}",
        err.message
    );
    assert!(ready(store.hashmap_get_many(MapId(3), vec![s("k")])).is_err());
    assert!(ready(store.hashmap_set_many(MapId(3), vec![])).is_err());
    assert!(store.save(3).is_err());
    assert!(store.on_change(3, Arc::new(|_| {})).is_err());
}

#[test]
fn names_are_reported() {
    let store = InMemoryStore::with_names(["a", "b"]);
    assert_eq!(store.hashmap_count(), 2);
    assert_eq!(store.hashmap_name(1), Some("b"));
    assert_eq!(InMemoryStore::new(1).hashmap_name(0), Some("#0"));
    assert_eq!(store.max_bytes(), None);
}
