//! Change events for the host.

use concerto_vm::host::MapId;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::ready;
use concerto_memory::{HashMapChange, InMemoryStore};
use concerto_vm::host::HashmapStore;
use concerto_vm::{Str, Value};
use parking_lot::Mutex;

fn s(text: &str) -> Str {
    Str::from(text)
}

/// A compact form of a change: `map name key old -> new`.
fn show(c: &HashMapChange) -> String {
    let v = |v: &Option<Value>| v.as_ref().map_or("-".to_string(), |v| v.to_display());
    format!(
        "{} {} {} {} -> {}",
        c.map,
        c.name,
        c.key,
        v(&c.old),
        v(&c.new)
    )
}

/// Records every change of the store.
fn recorder(store: &InMemoryStore) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    store.on_any_change(Arc::new(move |c| sink.lock().push(show(c))));
    seen
}

#[test]
fn set_replace_and_delete_are_reported_in_order_with_old_and_new_values() {
    let store = InMemoryStore::with_names(["state"]);
    let seen = recorder(&store);
    ready(store.hashmap_set(MapId(0), s("status"), Value::str("new"))).unwrap();
    ready(store.hashmap_replace(MapId(0), s("status"), Value::str("running"))).unwrap();
    ready(store.hashmap_set(MapId(0), s("n"), Value::Int(1))).unwrap();
    ready(store.hashmap_delete(MapId(0), "status")).unwrap();
    ready(store.hashmap_remove(MapId(0), "n")).unwrap();
    assert_eq!(
        *seen.lock(),
        [
            "0 state status - -> new",
            "0 state status new -> running",
            "0 state n - -> 1",
            "0 state status running -> -",
            "0 state n 1 -> -",
        ]
    );
}

#[test]
fn set_many_reports_each_entry_and_clear_each_removed_key() {
    let store = InMemoryStore::new(1);
    let seen = recorder(&store);
    ready(store.hashmap_set(MapId(0), s("a"), Value::Int(0))).unwrap();
    ready(store.hashmap_set_many(
        MapId(0),
        vec![
            (s("b"), Value::Int(1)),
            (s("a"), Value::Int(2)),
            (s("b"), Value::Int(3)),
        ],
    ))
    .unwrap();
    ready(store.hashmap_clear(MapId(0))).unwrap();
    // Clearing an empty hashmap changes nothing.
    ready(store.hashmap_clear(MapId(0))).unwrap();
    assert_eq!(
        *seen.lock(),
        [
            "0 #0 a - -> 0",
            "0 #0 b - -> 1",
            "0 #0 a 0 -> 2",
            "0 #0 b 1 -> 3",
            "0 #0 a 2 -> -",
            "0 #0 b 3 -> -",
        ]
    );
}

#[test]
fn nothing_is_reported_for_writes_that_change_nothing() {
    let store = InMemoryStore::new(1).with_max_bytes(Some(50));
    let seen = recorder(&store);
    assert!(ready(store.hashmap_set(MapId(0), s("k"), Value::str("x".repeat(100)))).is_err());
    assert!(
        ready(store.hashmap_set_many(
            MapId(0),
            vec![
                (s("a"), Value::Int(1)),
                (s("b"), Value::str("x".repeat(100)))
            ]
        ))
        .is_err()
    );
    assert!(!ready(store.hashmap_delete(MapId(0), "missing")).unwrap());
    assert!(seen.lock().is_empty());
}

#[test]
fn on_change_sees_one_hashmap_and_on_any_change_all() {
    let store = InMemoryStore::with_names(["a", "b"]);
    let only_b = Arc::new(Mutex::new(Vec::new()));
    let sink = only_b.clone();
    store
        .on_change(1, Arc::new(move |c| sink.lock().push(show(c))))
        .unwrap();
    let all = recorder(&store);
    ready(store.hashmap_set(MapId(0), s("x"), Value::Int(1))).unwrap();
    ready(store.hashmap_set(MapId(1), s("y"), Value::Int(2))).unwrap();
    assert_eq!(*only_b.lock(), ["1 b y - -> 2"]);
    assert_eq!(*all.lock(), ["0 a x - -> 1", "1 b y - -> 2"]);
}

#[test]
fn a_listener_may_use_the_store_again_without_deadlock() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let store = Arc::new(InMemoryStore::with_names(["source", "mirror"]));
        let weak = Arc::downgrade(&store);
        store
            .on_change(
                0,
                Arc::new(move |c| {
                    let Some(store) = weak.upgrade() else { return };
                    // Read the hashmap that changed, write another, register a listener.
                    let now = ready(store.hashmap_get(MapId(0), &c.key)).unwrap();
                    assert_eq!(now, c.new);
                    let count = ready(store.hashmap_len(MapId(0))).unwrap() as i64;
                    ready(store.hashmap_set(MapId(1), c.key.clone(), Value::Int(count))).unwrap();
                    store.on_any_change(Arc::new(|_| {}));
                    // Writing the same hashmap from its own listener works too (once).
                    if c.key.as_str() == "a" {
                        ready(store.hashmap_set(MapId(0), s("from-listener"), Value::Nil)).unwrap();
                    }
                }),
            )
            .unwrap();
        ready(store.hashmap_set(MapId(0), s("a"), Value::Int(1))).unwrap();
        ready(store.hashmap_set(MapId(0), s("b"), Value::Int(2))).unwrap();
        let mirror: Vec<String> = ready(store.hashmap_entries(MapId(1)))
            .unwrap()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = done_tx.send(mirror);
    });
    let mirror = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a listener that uses the store deadlocked");
    assert_eq!(mirror, ["a=1", "from-listener=2", "b=3"]);
}

#[test]
fn a_panicking_listener_is_caught_and_the_others_still_run() {
    let store = InMemoryStore::new(1);
    store.on_any_change(Arc::new(|c| {
        if c.key.as_str() == "boom" {
            panic!("listener failure (expected by this test)");
        }
    }));
    let seen = recorder(&store);
    ready(store.hashmap_set(MapId(0), s("boom"), Value::Int(1))).unwrap();
    ready(store.hashmap_set(MapId(0), s("after"), Value::Int(2))).unwrap();
    assert_eq!(*seen.lock(), ["0 #0 boom - -> 1", "0 #0 after - -> 2"]);
    // The store is fully usable: nothing is poisoned, the change stands.
    assert_eq!(
        ready(store.hashmap_get(MapId(0), "boom")).unwrap(),
        Some(Value::Int(1))
    );
    ready(store.hashmap_clear(MapId(0))).unwrap();
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 0);
}

#[test]
fn changes_of_one_writer_arrive_in_order_while_others_write_concurrently() {
    let store = Arc::new(InMemoryStore::new(1));
    let per_writer: Arc<Mutex<Vec<Vec<i64>>>> = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    let sink = per_writer.clone();
    store.on_any_change(Arc::new(move |c| {
        if let (Some(w), Some(Value::Int(i))) = (c.key.strip_prefix('w'), &c.new) {
            let w: usize = w.parse().unwrap();
            sink.lock()[w].push(*i);
        }
    }));
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    ready(store.hashmap_set(MapId(0), s(&format!("w{w}")), Value::Int(i))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for seen in per_writer.lock().iter() {
        assert_eq!(*seen, (0..500).collect::<Vec<_>>());
    }
}

#[test]
fn loading_a_file_reports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(&path, r#"{"a": 1, "b": [2]}"#).unwrap();
    let store = InMemoryStore::new(1);
    let seen = recorder(&store);
    store.persist(0, &path).unwrap();
    assert_eq!(ready(store.hashmap_len(MapId(0))).unwrap(), 2);
    assert!(seen.lock().is_empty());
}
